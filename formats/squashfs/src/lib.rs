//! A deterministic, parallel squashfs 4.0 writer.
//!
//! Input is an in-memory [`herd_fstree::Tree`]; output is a squashfs image
//! the Linux kernel mounts and `unsquashfs` reads, padded to a multiple of
//! 4096 bytes (it becomes dm-verity data). Data blocks and fragment blocks
//! are compressed in parallel (rayon); everything else is laid out in a
//! fixed order, so the same tree and options always give the same bytes.
//!
//! Layout, as mksquashfs writes it: superblock, data and fragment blocks,
//! inode table, directory table, fragment table, id table. Files with the
//! same content are stored once; all-zero blocks are stored sparse; file
//! tails are packed into shared fragment blocks. No xattrs, no export table.
//!
//! [`write_cached`] takes compressed blocks from a [`BlockCache`] (checked
//! by decompressing before use), so a rebuild compresses only what changed.

mod cache;
mod data;
mod metadata;
mod superblock;
mod write;

pub use cache::BlockCache;
pub use write::{write, write_cached};

/// Compression of data and metadata blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd at `level` (mksquashfs's default is 15).
    Zstd {
        /// zstd compression level, 1–22
        level: i32,
    },
}

/// How to write the image.
#[derive(Debug, Clone)]
pub struct Options {
    /// Compressor.
    pub compression: Compression,
    /// Data block size: a power of two from 4 KiB to 1 MiB (default 128 KiB).
    pub block_size: u32,
    /// The superblock's modification time.
    pub mkfs_time: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compression: Compression::Zstd { level: 15 },
            block_size: 128 * 1024,
            mkfs_time: 0,
        }
    }
}

/// Figures about a written image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Bytes written, including the padding to 4096.
    pub bytes_written: u64,
    /// The superblock's `bytes_used` (without padding).
    pub bytes_used: u64,
    /// Number of inodes.
    pub inodes: u32,
    /// Number of fragment blocks.
    pub fragments: u32,
    /// Regular files whose content duplicated an earlier file's.
    pub duplicates: u32,
    /// Data and fragment blocks taken from the block cache.
    pub cache_hits: u32,
    /// Blocks compressed because the cache did not hold them (0 without a cache).
    pub cache_misses: u32,
    /// Cache entries that did not hold the block they were stored under
    /// (compressed again and overwritten); counted among the misses.
    pub cache_rejected: u32,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The block size is not supported.
    #[error("block size {0} is not a power of two between 4096 and 1048576")]
    BlockSize(u32),
    /// The compression level is out of range.
    #[error("zstd level {0} is out of range (1-22)")]
    Level(i32),
    /// The compressor failed.
    #[error("compression failed: {0}")]
    Compress(std::io::Error),
    /// More uids/gids or inodes than the format allows.
    #[error("too many {0} for squashfs")]
    TooMany(&'static str),
    /// Writing the output failed.
    #[error("writing the squashfs image: {0}")]
    Io(#[from] std::io::Error),
}
