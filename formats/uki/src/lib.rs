//! Unified Kernel Images (UKI) for herd: systemd-stub with the kernel, the
//! initramfs, the command line and os-release appended as PE sections, and
//! the PCR 11 value that stub will leave in the TPM.
//!
//! [`assemble`] writes a UKI; [`predict_pcr11`] computes, from the same
//! section contents, what systemd-stub 252 extends into PCR 11 (each
//! section's name with its NUL, then its data, in the stub's fixed order)
//! and the values after each boot phase that systemd-pcrphase (and herd-init)
//! extend — the numbers `systemd-measure calculate` prints.

mod pcr;
mod pe;

pub use pcr::{extend, predict_pcr11, Pcr11, PHASES};
pub use pe::{assemble, sections, Section};

/// What went wrong reading a stub or a UKI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not the PE/COFF image expected.
    #[error("not a PE32+ EFI image: {0}")]
    NotPe(String),
    /// The stub already has a section herd would add.
    #[error("the stub already has a {0} section: give herd a bare systemd-stub (linuxx64.efi.stub), not a UKI")]
    Duplicate(String),
    /// No room for more section headers.
    #[error("the stub's headers have room for {room} more section(s), {need} needed")]
    NoRoom { room: usize, need: usize },
    /// A UKI lacks a section the prediction needs.
    #[error("the UKI has no {0} section")]
    Missing(&'static str),
}

/// The contents of the sections herd puts into a UKI.
#[derive(Debug, Clone, Copy)]
pub struct UkiParts<'a> {
    /// `.osrel`: os-release text (systemd-boot shows its name and version).
    pub osrel: &'a [u8],
    /// `.cmdline`: the kernel command line, as measured (no trailing NUL).
    pub cmdline: &'a [u8],
    /// `.linux`: the kernel (an EFI-stub bzImage).
    pub linux: &'a [u8],
    /// `.initrd`: the initramfs.
    pub initrd: &'a [u8],
}
