//! The 512-byte verity superblock at the start of the hash area.

use crate::{Error, Params};

const SIGNATURE: &[u8; 8] = b"verity\0\0";

/// The verity superblock (`struct verity_sb` of cryptsetup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Format version (1).
    pub version: u32,
    /// Hash type (1 = salt before data).
    pub hash_type: u32,
    /// UUID.
    pub uuid: [u8; 16],
    /// Hash algorithm name.
    pub algorithm: String,
    /// Data block size in bytes.
    pub data_block_size: u32,
    /// Hash block size in bytes.
    pub hash_block_size: u32,
    /// Number of data blocks.
    pub data_blocks: u64,
    /// The salt.
    pub salt: Vec<u8>,
}

impl Superblock {
    /// The superblock for `params` over `data_blocks` blocks.
    pub fn new(params: &Params, data_blocks: u64) -> Self {
        Superblock {
            version: 1,
            hash_type: 1,
            uuid: params.uuid,
            algorithm: "sha256".into(),
            data_block_size: params.data_block_size,
            hash_block_size: params.hash_block_size,
            data_blocks,
            salt: params.salt.to_vec(),
        }
    }

    /// Serialises to the 512-byte on-disk form.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.hash_type.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        let alg = self.algorithm.as_bytes();
        b[32..32 + alg.len().min(31)].copy_from_slice(&alg[..alg.len().min(31)]);
        b[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        let n = self.salt.len().min(256);
        b[80..82].copy_from_slice(&(n as u16).to_le_bytes());
        b[88..88 + n].copy_from_slice(&self.salt[..n]);
        b
    }

    /// Parses and checks the on-disk form.
    pub fn parse(b: &[u8]) -> Result<Superblock, Error> {
        let bad = |m: String| Error::BadSuperblock(m);
        if b.len() < 512 {
            return Err(bad(format!("{} bytes, need 512", b.len())));
        }
        if &b[0..8] != SIGNATURE {
            return Err(bad("no \"verity\" signature: not a verity hash area".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != 1 {
            return Err(bad(format!("version {version}, only 1 is supported")));
        }
        let alg_end = b[32..64].iter().position(|&c| c == 0).unwrap_or(32);
        let algorithm = String::from_utf8_lossy(&b[32..32 + alg_end]).into_owned();
        let salt_size = u16::from_le_bytes([b[80], b[81]]) as usize;
        if salt_size > 256 {
            return Err(bad(format!("salt size {salt_size} > 256")));
        }
        let sb = Superblock {
            version,
            hash_type: u32_at(12),
            uuid: b[16..32].try_into().unwrap(),
            algorithm,
            data_block_size: u32_at(64),
            hash_block_size: u32_at(68),
            data_blocks: u64::from_le_bytes(b[72..80].try_into().unwrap()),
            salt: b[88..88 + salt_size].to_vec(),
        };
        if sb.algorithm != "sha256" || sb.hash_type != 1 {
            return Err(bad(format!(
                "hash {} type {}: herd reads sha256 type 1 only",
                sb.algorithm, sb.hash_type
            )));
        }
        Ok(sb)
    }
}
