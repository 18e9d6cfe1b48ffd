//! A compressed-block cache: a rebuild compresses only the blocks whose
//! content changed.
//!
//! Entries are keyed by the SHA-256 of the raw block, the zstd library
//! version and the level, so a key names exactly one compressor output. A
//! hit is never trusted: it is decompressed and compared with the raw block
//! before use, and a mismatch (a corrupted or planted entry) is compressed
//! again and overwritten. The image's content is therefore the same with or
//! without a cache, and a corrupted cache can only cost time. One gap is
//! known: a raw entry ("this block did not shrink") cannot be checked
//! without compressing the block, so an entry planted as raw stores a
//! compressible block uncompressed: the same content, other bytes. A
//! reference build uses `herd build --recompress`.

use std::sync::atomic::{AtomicU32, Ordering};

use sha2::{Digest, Sha256};

use crate::data::UNCOMPRESSED;
use crate::Error;

/// Where compressed blocks are kept between builds.
pub trait BlockCache: Sync {
    /// The entry stored under `key`, if any.
    fn get(&self, key: &[u8; 32]) -> Option<Vec<u8>>;
    /// Stores `entry` under `key` (best effort: a failure only costs time).
    fn put(&self, key: &[u8; 32], entry: &[u8]);
}

/// First byte of an entry: the block compressed with zstd follows.
const ZSTD: u8 = b'z';
/// First byte of an entry: the block did not shrink and is stored raw.
const RAW: u8 = b'r';

/// How the cache did during one image write.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub hits: AtomicU32,
    pub misses: AtomicU32,
    pub rejected: AtomicU32,
}

fn key(block: &[u8], level: i32) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"herd-squashfs block\0zstd ")
        .chain_update(zstd::zstd_safe::version_number().to_le_bytes())
        .chain_update(level.to_le_bytes())
        .chain_update((block.len() as u64).to_le_bytes())
        .chain_update(block)
        .finalize()
        .into()
}

/// The entry, checked against the raw block it claims to hold.
fn check(entry: &[u8], block: &[u8]) -> Option<(Vec<u8>, u32)> {
    let (&kind, body) = entry.split_first()?;
    match kind {
        RAW if body.is_empty() => Some((block.to_vec(), block.len() as u32 | UNCOMPRESSED)),
        ZSTD if body.len() < block.len() => {
            let plain = zstd::bulk::decompress(body, block.len()).ok()?;
            (plain == block).then(|| (body.to_vec(), body.len() as u32))
        }
        _ => None,
    }
}

/// Compresses `block` at `level`: the stored bytes and their squashfs size
/// word (bit 24 set when stored uncompressed because zstd did not shrink it).
pub(crate) fn compress(
    block: &[u8],
    level: i32,
    cache: Option<(&dyn BlockCache, &Counters)>,
) -> Result<(Vec<u8>, u32), Error> {
    let key = cache.map(|_| key(block, level));
    if let (Some((cache, counters)), Some(key)) = (cache, &key) {
        if let Some(entry) = cache.get(key) {
            if let Some(hit) = check(&entry, block) {
                counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hit);
            }
            counters.rejected.fetch_add(1, Ordering::Relaxed);
        }
        counters.misses.fetch_add(1, Ordering::Relaxed);
    }
    let c = zstd::bulk::compress(block, level).map_err(Error::Compress)?;
    let done = if c.len() < block.len() {
        let n = c.len() as u32;
        (c, n)
    } else {
        (block.to_vec(), block.len() as u32 | UNCOMPRESSED)
    };
    if let (Some((cache, _)), Some(key)) = (cache, &key) {
        let mut entry = Vec::with_capacity(done.0.len() + 1);
        if done.1 & UNCOMPRESSED != 0 {
            entry.push(RAW);
        } else {
            entry.push(ZSTD);
            entry.extend_from_slice(&done.0);
        }
        cache.put(key, &entry);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked_against_the_block() {
        let block: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        let z = zstd::bulk::compress(&block, 3).unwrap();
        let mut good = vec![ZSTD];
        good.extend_from_slice(&z);
        assert_eq!(check(&good, &block), Some((z.clone(), z.len() as u32)));
        // Another block's entry, a flipped byte, junk, a wrong kind: refused.
        let other: Vec<u8> = block.iter().map(|b| b ^ 1).collect();
        assert_eq!(check(&good, &other), None);
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert_eq!(check(&flipped, &block), None);
        assert_eq!(check(b"zjunk", &block), None);
        assert_eq!(check(b"", &block), None);
        assert_eq!(check(b"q", &block), None);
        assert_eq!(check(b"rx", &block), None);
        // A raw entry holds no bytes: the block itself is stored.
        assert_eq!(
            check(b"r", &block),
            Some((block.clone(), block.len() as u32 | UNCOMPRESSED))
        );
    }
}
