//! The on-disk contract of a herd node: every name, path and rule that the
//! builder writes and herd-init or herd-update read back, defined once.
//!
//! Pure data and small functions, no I/O and no dependencies, so PID 1, the
//! updater and the builder can all link it. When a fact of the disk layout
//! changes, it changes here; docs/ARCHITECTURE.md points here as the source
//! of truth.
//!
//! - [`Slot`]: the two /usr slots, `a` and `b`.
//! - [`partition`]: GPT partition names and the usrhash → PARTUUID rule.
//! - [`entry`]: boot entry file names with systemd-boot's tries counter.
//! - [`esp`]: paths on the EFI system partition.
//! - [`payload`]: the roles of a release's payload files.
//! - [`cmdline`]: the kernel command-line words herd writes and reads.
//! - [`pcr`]: herd-init's boot phases measured into PCR 11.
//! - [`paths`]: state files more than one program reads.

pub mod cmdline;
pub mod entry;
pub mod esp;
pub mod partition;
pub mod paths;
pub mod payload;
pub mod pcr;
mod slot;

pub use entry::{BootEntry, EntryKind, Tries};
pub use slot::Slot;
