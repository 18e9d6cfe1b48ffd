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

/// The parameters a hash area's superblock records.
fn params_of(hash_area: &[u8]) -> Result<(Superblock, Params), Error> {
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
    Ok((sb, params))
}

/// Checks `data` against a hash area (superblock + tree) and a root hash;
/// the error names the first bad data block or tree block.
pub fn verify(data: &[u8], hash_area: &[u8], root_hash: &[u8; 32]) -> Result<(), Error> {
    let (sb, params) = params_of(hash_area)?;
    let bs = params.data_block_size as usize;
    let hb = params.hash_block_size as usize;
    let need_data = sb.data_blocks as usize * bs;
    if data.len() < need_data {
        return Err(Error::NotAligned {
            len: data.len() as u64,
            block: params.data_block_size,
        });
    }
    let lowest = hash_level(&data[..need_data], bs, hb, &params.salt);
    check_tree(&sb, &params, &lowest, hash_area, root_hash)
}

/// Checks the lowest level computed from the data (`lowest`, in the
/// on-disk layout) against the stored tree, each stored level against its
/// parent, and the top against `root_hash`.
fn check_tree(
    sb: &Superblock,
    params: &Params,
    lowest: &[u8],
    hash_area: &[u8],
    root_hash: &[u8; 32],
) -> Result<(), Error> {
    let hb = params.hash_block_size as usize;
    let need_data = sb.data_blocks * params.data_block_size as u64;
    let sizes = level_blocks(sb.data_blocks, (hb / 32) as u64);
    let need = hash_area_size(need_data, params);
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
    let mut got = lowest.to_vec();
    let mut top: &[u8] = lowest;
    for (level, want) in stored.iter().enumerate() {
        if let Some(i) = (0..got.len() / 32).find(|&i| {
            want.len() < i * 32 + 32 || got[i * 32..i * 32 + 32] != want[i * 32..i * 32 + 32]
        }) {
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
        got = hash_level(want, hb, hb, &params.salt);
        top = want;
    }
    if stored.is_empty() {
        // One data block: its digest is the root.
        if sb.data_blocks != 1 || lowest.len() < 32 || &lowest[..32] != root_hash {
            return Err(Error::DataMismatch(0));
        }
        return Ok(());
    }
    if &digest(&params.salt, top) != root_hash {
        return Err(Error::TreeMismatch {
            level: stored.len() - 1,
            block: 0,
            what: "the root hash",
        });
    }
    Ok(())
}

/// Verifies data as it streams past, holding only the lowest level of
/// digests (32 bytes per 4 KiB block) and the hash area in memory.
#[derive(Debug)]
pub struct StreamVerifier {
    sb: Superblock,
    params: Params,
    hash_area: Vec<u8>,
    partial: Vec<u8>,
    lowest: Vec<u8>,
    blocks: u64,
}

impl StreamVerifier {
    /// Starts a check of data against `hash_area` (superblock + tree).
    pub fn new(hash_area: Vec<u8>) -> Result<Self, Error> {
        let (sb, params) = params_of(&hash_area)?;
        let hb = params.hash_block_size as usize;
        let per = hb / 32;
        let lowest = Vec::with_capacity((sb.data_blocks as usize).div_ceil(per) * hb);
        Ok(StreamVerifier {
            sb,
            params,
            hash_area,
            partial: Vec::new(),
            lowest,
            blocks: 0,
        })
    }

    /// Bytes of data the tree covers.
    pub fn data_len(&self) -> u64 {
        self.sb.data_blocks * self.params.data_block_size as u64
    }

    fn push_block(&mut self, block: &[u8]) {
        if self.blocks >= self.sb.data_blocks {
            return; // past the covered data (slot padding): not part of the tree
        }
        let hb = self.params.hash_block_size as usize;
        let per = (hb / 32) as u64;
        let at = (self.blocks / per) as usize * hb + (self.blocks % per) as usize * 32;
        if at >= self.lowest.len() {
            self.lowest.resize(self.lowest.len() + hb, 0);
        }
        self.lowest[at..at + 32].copy_from_slice(&digest(&self.params.salt, block));
        self.blocks += 1;
    }

    /// Feeds the next bytes of data.
    pub fn update(&mut self, mut data: &[u8]) {
        let bs = self.params.data_block_size as usize;
        if !self.partial.is_empty() {
            let take = (bs - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == bs {
                let block = std::mem::take(&mut self.partial);
                self.push_block(&block);
            }
        }
        let whole = data.len() / bs * bs;
        for block in data[..whole].chunks_exact(bs) {
            self.push_block(block);
        }
        self.partial.extend_from_slice(&data[whole..]);
    }

    /// Checks everything fed so far against the tree and `root_hash`.
    pub fn finish(self, root_hash: &[u8; 32]) -> Result<(), Error> {
        if self.blocks < self.sb.data_blocks {
            return Err(Error::NotAligned {
                len: self.blocks * self.params.data_block_size as u64 + self.partial.len() as u64,
                block: self.params.data_block_size,
            });
        }
        check_tree(
            &self.sb,
            &self.params,
            &self.lowest,
            &self.hash_area,
            root_hash,
        )
    }
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

    fn sample(blocks: usize) -> (Vec<u8>, Tree) {
        let data: Vec<u8> = (0..blocks * 4096).map(|i| (i * 7 % 251) as u8).collect();
        let tree = build(&data, &Params::new([3; 32], [4; 16])).unwrap();
        (data, tree)
    }

    #[test]
    fn stream_agrees_with_verify_for_any_chunking() {
        for blocks in [1, 2, 129, 300] {
            let (data, tree) = sample(blocks);
            verify(&data, &tree.hash_area, &tree.root_hash).unwrap();
            for chunk in [1000, 4096, 65536] {
                let mut v = StreamVerifier::new(tree.hash_area.clone()).unwrap();
                for c in data.chunks(chunk) {
                    v.update(c);
                }
                // Bytes past the covered data (a slot's padding) are ignored.
                v.update(&[0xff; 5000]);
                v.finish(&tree.root_hash).unwrap();
            }
        }
    }

    #[test]
    fn stream_finds_a_changed_byte_a_short_stream_and_a_wrong_root() {
        let (mut data, tree) = sample(300);
        let mut v = StreamVerifier::new(tree.hash_area.clone()).unwrap();
        v.update(&data[..4096 * 299]);
        assert!(matches!(
            v.finish(&tree.root_hash),
            Err(Error::NotAligned { .. })
        ));
        data[4096 * 200 + 5] ^= 1;
        let mut v = StreamVerifier::new(tree.hash_area.clone()).unwrap();
        v.update(&data);
        assert!(matches!(
            v.finish(&tree.root_hash),
            Err(Error::DataMismatch(200))
        ));
        data[4096 * 200 + 5] ^= 1;
        let mut v = StreamVerifier::new(tree.hash_area.clone()).unwrap();
        v.update(&data);
        assert!(matches!(
            v.finish(&[0; 32]),
            Err(Error::TreeMismatch { .. })
        ));
        let (one, t1) = sample(1);
        let mut v = StreamVerifier::new(t1.hash_area.clone()).unwrap();
        v.update(&one);
        assert!(v.finish(&[0; 32]).is_err());
    }
}
