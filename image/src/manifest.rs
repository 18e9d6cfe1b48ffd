//! `build.json`: what a build produced, machine-readable. It is the basis of
//! the SBOM (exact package list) and of the update payload (usr image,
//! verity data, boot files, root hash).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub source_date_epoch: u64,
    pub kernel: KernelInfo,
    pub usr: UsrInfo,
    /// Kernel command line of slot A's boot entry.
    pub cmdline: String,
    pub partitions: Vec<PartitionInfo>,
    /// Every output file, by path relative to the output directory.
    pub outputs: Vec<OutputInfo>,
    pub packages: Vec<PackageInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelInfo {
    pub package: String,
    pub release: String,
    pub initrd_modules: Vec<String>,
    pub usr_modules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsrInfo {
    /// dm-verity root hash of the squashfs, hex.
    pub usrhash: String,
    pub verity_salt: String,
    pub verity_data_blocks: u64,
    pub squashfs_bytes: u64,
    pub verity_bytes: u64,
    pub files: u64,
    pub file_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionInfo {
    pub number: u32,
    pub name: String,
    pub type_guid: String,
    pub uuid: String,
    pub offset: u64,
    pub size: u64,
    pub attributes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputInfo {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
}
