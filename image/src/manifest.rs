//! `build.json`: what a build produced, machine-readable. It is the basis of
//! the SBOM (exact package list) and of the update payload (usr image,
//! verity data, boot files, root hash).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub source_date_epoch: u64,
    pub kernel: KernelInfo,
    pub usr: UsrInfo,
    /// Kernel command line of slot A's UKI.
    pub cmdline: String,
    /// What each slot's UKI and herd-init measure into the TPM.
    #[serde(default)]
    pub measured: Measured,
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

/// Predicted TPM PCR values (SHA-256 bank, hex) of a node booting this
/// build, per slot (`a`, `b`). See docs/MEASURED-BOOT.md.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Measured {
    pub slots: BTreeMap<String, SlotMeasurements>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotMeasurements {
    /// The UKI output file.
    pub uki: String,
    /// Its `.cmdline`.
    pub cmdline: String,
    /// PCR 11 after systemd-stub measured the UKI.
    pub pcr11_stub: String,
    /// PCR 11 after each boot phase herd-init measures, in order.
    pub pcr11_phases: Vec<(String, String)>,
    /// PCR 11 of a node that reached `ready`.
    pub pcr11: String,
    /// PCR 15 after herd-init measured the mounted /usr and the slot.
    pub pcr15: String,
}

impl SlotMeasurements {
    /// The predictions for one slot's UKI.
    pub fn new(
        uki: &str,
        cmdline: &str,
        parts: &herd_uki::UkiParts<'_>,
        usrhash: &str,
        slot: &str,
    ) -> Self {
        let p = herd_uki::predict_pcr11(parts);
        SlotMeasurements {
            uki: uki.to_string(),
            cmdline: cmdline.to_string(),
            pcr11_stub: hex::encode(p.stub),
            pcr11_phases: p
                .phases
                .iter()
                .map(|(n, v)| (n.to_string(), hex::encode(v)))
                .collect(),
            pcr11: hex::encode(p.ready()),
            pcr15: hex::encode(herd_node::measure::predict_pcr15(usrhash, slot)),
        }
    }
}
