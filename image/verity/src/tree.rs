//! Building and checking the hash tree.

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::{Error, Params, Superblock};

/// A built hash tree.
#[derive(Debug, Clone)]
pub struct Tree {
    /// The root hash (goes on the kernel command line).
    pub root_hash: [u8; 32],
    /// Superblock block followed by the tree, top level first.
    pub hash_area: Vec<u8>,
    /// Number of data blocks covered.
    pub data_blocks: u64,
}

/// Blocks per level, lowest level first (what the kernel and cryptsetup
/// compute: the number of levels is the smallest L with fanout^L >= blocks).
fn level_blocks(data_blocks: u64, fanout: u64) -> Vec<u64> {
    let mut levels = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(fanout);
        levels.push(n);
    }
    levels
}

fn check(params: &Params) -> Result<(), Error> {
    for bs in [params.data_block_size, params.hash_block_size] {
        if bs != 4096 {
            return Err(Error::BlockSize(bs));
        }
    }
    Ok(())
}

/// Size in bytes of the hash area (superblock block + tree) for `data_len`
/// bytes of data — for sizing a verity partition.
pub fn hash_area_size(data_len: u64, params: &Params) -> u64 {
    let hb = params.hash_block_size as u64;
    let blocks = data_len.div_ceil(params.data_block_size as u64);
    hb * (1 + level_blocks(blocks, hb / 32).iter().sum::<u64>())
}

fn digest(salt: &[u8], block: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(salt)
        .chain_update(block)
        .finalize()
        .into()
}

/// Hashes `blocks` (each `bs` bytes) into hash blocks of `hb` bytes.
fn hash_level(input: &[u8], bs: usize, hb: usize, salt: &[u8]) -> Vec<u8> {
    let per = hb / 32;
    let nblocks = input.len() / bs;
    let out_blocks = nblocks.div_ceil(per);
    let mut out = vec![0u8; out_blocks * hb];
    out.par_chunks_mut(hb).enumerate().for_each(|(i, hblock)| {
        let first = i * per;
        let last = (first + per).min(nblocks);
        for (k, b) in (first..last).enumerate() {
            hblock[k * 32..k * 32 + 32]
                .copy_from_slice(&digest(salt, &input[b * bs..(b + 1) * bs]));
        }
    });
    out
}

/// Builds the tree over `data`, whose length must be a multiple of the
/// data block size. Level hashing runs in parallel.
pub fn build(data: &[u8], params: &Params) -> Result<Tree, Error> {
    check(params)?;
    let bs = params.data_block_size as usize;
    let hb = params.hash_block_size as usize;
    if !data.len().is_multiple_of(bs) {
        return Err(Error::NotAligned {
            len: data.len() as u64,
            block: params.data_block_size,
        });
    }
    let data_blocks = (data.len() / bs) as u64;
    let mut levels: Vec<Vec<u8>> = Vec::new();
    let mut input: &[u8] = data;
    let mut input_bs = bs;
    while input.len() / input_bs > 1 {
        let next = hash_level(input, input_bs, hb, &params.salt);
        levels.push(next);
        input = levels.last().unwrap();
        input_bs = hb;
    }
    let root_hash = if input.is_empty() {
        [0; 32]
    } else {
        digest(&params.salt, input)
    };
    let mut hash_area = vec![0u8; hb];
    hash_area[..512].copy_from_slice(&Superblock::new(params, data_blocks).to_bytes());
    for level in levels.iter().rev() {
        hash_area.extend_from_slice(level);
    }
    Ok(Tree {
        root_hash,
        hash_area,
        data_blocks,
    })
}

/// Checks `data` against a hash area (superblock + tree) and a root hash;
/// the error names the first bad data block or tree block.
pub fn verify(data: &[u8], hash_area: &[u8], root_hash: &[u8; 32]) -> Result<(), Error> {
    let sb = Superblock::parse(hash_area)?;
    let params = Params {
        salt: sb.salt.as_slice().try_into().map_err(|_| {
            Error::BadSuperblock(format!("salt of {} bytes, herd uses 32", sb.salt.len()))
        })?,
        uuid: sb.uuid,
        data_block_size: sb.data_block_size,
        hash_block_size: sb.hash_block_size,
    };
    check(&params)?;
    let bs = params.data_block_size as usize;
    let hb = params.hash_block_size as usize;
    let need_data = sb.data_blocks as usize * bs;
    if data.len() < need_data {
        return Err(Error::NotAligned {
            len: data.len() as u64,
            block: params.data_block_size,
        });
    }
    let data = &data[..need_data];
    let sizes = level_blocks(sb.data_blocks, (hb / 32) as u64);
    let need = hash_area_size(need_data as u64, &params);
    if (hash_area.len() as u64) < need {
        return Err(Error::HashAreaTooShort {
            have: hash_area.len() as u64,
            need,
        });
    }
    // Stored levels, lowest first.
    let mut stored: Vec<&[u8]> = Vec::new();
    let mut pos = hb;
    for n in sizes.iter().rev() {
        stored.push(&hash_area[pos..pos + *n as usize * hb]);
        pos += *n as usize * hb;
    }
    stored.reverse();
    let mut input = data;
    let mut input_bs = bs;
    for (level, want) in stored.iter().enumerate() {
        let got = hash_level(input, input_bs, hb, &params.salt);
        if let Some(i) =
            (0..got.len() / 32).find(|&i| got[i * 32..i * 32 + 32] != want[i * 32..i * 32 + 32])
        {
            return Err(if level == 0 {
                Error::DataMismatch(i as u64)
            } else {
                Error::TreeMismatch {
                    level: level - 1,
                    block: i as u64,
                    what: "its parent level",
                }
            });
        }
        input = want;
        input_bs = hb;
    }
    if input.is_empty() || &digest(&params.salt, input) != root_hash {
        return Err(if stored.is_empty() {
            Error::DataMismatch(0)
        } else {
            Error::TreeMismatch {
                level: stored.len() - 1,
                block: 0,
                what: "the root hash",
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_sizes() {
        assert_eq!(level_blocks(1, 128), Vec::<u64>::new());
        assert_eq!(level_blocks(2, 128), vec![1]);
        assert_eq!(level_blocks(128, 128), vec![1]);
        assert_eq!(level_blocks(129, 128), vec![2, 1]);
        assert_eq!(level_blocks(128 * 128 + 1, 128), vec![129, 2, 1]);
    }
}
