//! GPT partition tables (UEFI specification, chapter 5): writer and reader.
//!
//! The writer lays partitions out deterministically and writes only the
//! table regions (protective MBR, primary header and entries, backup entries
//! and header), so a caller can fill partition contents in place. The reader
//! checks both CRCs and falls back to the backup header when the primary one
//! is damaged. Partition type GUIDs come from the Discoverable Partitions
//! Specification (see [`types`]).

mod guid;
mod table;

pub use guid::{guid_from_name, Guid};
pub use table::{Partition, PartitionSpec, SyncWrite, Table, Which};

/// Partition type GUIDs of the UAPI Discoverable Partitions Specification.
pub mod types {
    use crate::Guid;
    /// EFI system partition.
    pub const ESP: Guid = Guid::from_str_const("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    /// `/usr` for x86-64.
    pub const USR_X86_64: Guid = Guid::from_str_const("8484680c-9521-48c6-9c11-b0720656f69e");
    /// dm-verity data for `/usr` on x86-64.
    pub const USR_VERITY_X86_64: Guid =
        Guid::from_str_const("77ff5f63-e7b6-4633-acf4-1565b864c0e6");
    /// Signature of the `/usr` verity root hash on x86-64.
    pub const USR_VERITY_SIG_X86_64: Guid =
        Guid::from_str_const("e7bb33fb-06cf-4e81-8273-e543b413e2e2");
    /// `/var` (herd's STATE partition).
    pub const VAR: Guid = Guid::from_str_const("4d21b016-b534-45c2-a9fb-5c16e091fd2d");
}

/// Partition attribute bits (UEFI bits 0–2, DPS bits 59–63).
pub mod attrs {
    /// UEFI: required by the platform.
    pub const REQUIRED: u64 = 1 << 0;
    /// DPS: grow the file system to fill the partition on first boot.
    pub const GROWFS: u64 = 1 << 59;
    /// DPS: mount read-only.
    pub const READ_ONLY: u64 = 1 << 60;
    /// DPS: do not mount automatically.
    pub const NO_AUTO: u64 = 1 << 63;
}

/// What can go wrong with a partition table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A GUID string was not of the form 8-4-4-4-12 hex digits.
    #[error("invalid GUID {0:?}: expected 8-4-4-4-12 hex digits")]
    BadGuid(String),
    /// The requested partitions do not fit the disk.
    #[error("partitions need {needed} bytes but the disk has room for {available}: make the disk bigger or the partitions smaller")]
    DoesNotFit {
        /// bytes the layout needs
        needed: u64,
        /// bytes available
        available: u64,
    },
    /// A partition name is longer than the 36 UTF-16 units GPT allows.
    #[error("partition name {0:?} is longer than 36 UTF-16 code units")]
    NameTooLong(String),
    /// More partitions than the 128 entries.
    #[error("{0} partitions given, GPT has room for 128")]
    TooMany(usize),
    /// Neither header is valid.
    #[error("no valid GPT: primary header: {primary}; backup header: {backup}")]
    NoValidTable {
        /// why the primary header was rejected
        primary: String,
        /// why the backup header was rejected
        backup: String,
    },
    /// The disk cannot shrink below its partitions.
    #[error("cannot resize the table to {0} sectors: partitions end beyond it")]
    CannotShrink(u64),
    /// I/O on the underlying device.
    #[error("I/O error on the disk image: {0}")]
    Io(#[from] std::io::Error),
}
