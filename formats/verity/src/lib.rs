//! dm-verity hash trees in the on-disk format `veritysetup` writes and the
//! kernel's dm-verity target reads (format version 1, sha256).
//!
//! The hash area starts with a 512-byte superblock padded to one hash
//! block; the tree follows, top level first, each level a run of hash
//! blocks holding `hash_block_size / 32` digests padded with zeros. Every
//! digest is `sha256(salt || block)`.

mod superblock;
mod tree;

pub use superblock::Superblock;
pub use tree::{build, hash_area_size, verify, StreamVerifier, Tree};

/// Parameters of a hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Salt hashed before every block.
    pub salt: [u8; 32],
    /// UUID stored in the superblock.
    pub uuid: [u8; 16],
    /// Data block size (4096).
    pub data_block_size: u32,
    /// Hash block size (4096).
    pub hash_block_size: u32,
}

impl Params {
    /// 4096-byte data and hash blocks with this salt and uuid.
    pub fn new(salt: [u8; 32], uuid: [u8; 16]) -> Self {
        Params {
            salt,
            uuid,
            data_block_size: 4096,
            hash_block_size: 4096,
        }
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data is not a whole number of data blocks.
    #[error("data length {len} is not a multiple of the {block}-byte data block size: pad it")]
    NotAligned {
        /// data length
        len: u64,
        /// block size
        block: u32,
    },
    /// Only 4096-byte blocks are supported.
    #[error("unsupported block size {0}: herd uses 4096-byte data and hash blocks")]
    BlockSize(u32),
    /// The superblock could not be parsed.
    #[error("bad verity superblock: {0}")]
    BadSuperblock(String),
    /// A data block does not match the tree.
    #[error(
        "data block {0} does not match the verity hash tree (the data was changed or damaged)"
    )]
    DataMismatch(u64),
    /// A hash block does not match its parent or the root hash.
    #[error("hash tree level {level} block {block} does not match {what}")]
    TreeMismatch {
        /// tree level (0 = lowest)
        level: usize,
        /// block index within the level
        block: u64,
        /// the parent level or the root hash
        what: &'static str,
    },
    /// The hash area is shorter than the tree needs.
    #[error("hash area is {have} bytes, the tree needs {need}")]
    HashAreaTooShort {
        /// bytes present
        have: u64,
        /// bytes needed
        need: u64,
    },
}

/// The device-mapper `verity` target parameters (format 1, sha256), hash
/// tree starting one block into the hash device (after the superblock).
pub fn dm_table_params(
    data_dev: &str,
    hash_dev: &str,
    data_blocks: u64,
    root_hash: &[u8; 32],
    salt: &[u8],
) -> String {
    format!(
        "1 {data_dev} {hash_dev} 4096 4096 {data_blocks} 1 sha256 {} {}",
        hex::encode(root_hash),
        if salt.is_empty() {
            "-".to_string()
        } else {
            hex::encode(salt)
        }
    )
}
