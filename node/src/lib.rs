//! herd-node: what herd's node programs (herd-init, herd-update, herd-agent,
//! herd-provision) share, so that PID 1 depends on small libraries and is
//! not itself one.
//!
//! - [`disks`]: finding herd's partitions on the node's disks (by GPT).
//! - [`config`]: the node configuration schema (`/etc/herd/node.toml` and
//!   the image's defaults), and [`config_source`]: where provisioning finds
//!   it (fw_cfg, a CONFIG disk).
//! - [`os_release`]: reading os-release fields.
//! - [`efivar`]: the EFI variables systemd-boot leaves for the OS.
//! - [`backoff`]: restart back-off policies.
//! - [`tree`]: copying a directory tree.
//! - [`measure`]: what herd-init extends into the TPM, and its log.
//!
//! The on-disk names and rules are in `herd-contract`; this crate does the
//! I/O around them.

pub mod backoff;
pub mod config;
pub mod config_source;
pub mod disks;
pub mod efivar;
pub mod measure;
pub mod os_release;
pub mod tree;
