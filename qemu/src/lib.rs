//! Booting herd disk images in QEMU: UEFI (OVMF with a private copy of its
//! variables), TCG unless KVM is asked for, the serial console captured,
//! an optional swtpm TPM started and stopped with the VM, and user-mode
//! networking with `restrict=on` plus only the forwards asked for.
//!
//! [`run`] is for people and supervisors (`herd vm run`): console on
//! stdout, exits with the VM; SIGTERM, SIGINT and SIGHUP press the guest's
//! power button and quit QEMU after a grace period (a second one at once);
//! QEMU and swtpm die with the runner even when it is killed by SIGKILL,
//! and a later run removes the private directory such a runner left. [`Vm`] is for tests: console lines collected and searchable,
//! ACPI power button through QMP, killed on drop.

mod command;
mod config;
pub mod libvirt;
mod qmp;
pub mod secureboot;
mod signals;
mod vm;

pub use config::{Accel, DiskFormat, Forward, GuestForward, OnReboot, VmConfig};
pub use signals::name as signal_name;
pub use vm::{run, Forced, Outcome, Vm};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program or firmware file is missing.
    #[error("{what} not found at {path}: install the Debian package {package}")]
    Missing {
        /// what is missing
        what: &'static str,
        /// where it was looked for
        path: String,
        /// the package that has it
        package: &'static str,
    },
    /// The disk image cannot be used.
    #[error("disk image {path}: {message}")]
    Disk {
        /// the disk
        path: String,
        /// what is wrong
        message: String,
    },
    /// Waiting for console output timed out or the VM ended first.
    #[error("{message}\n--- last console lines ---\n{tail}")]
    Console {
        /// what was waited for and why it failed
        message: String,
        /// the last lines of the console
        tail: String,
    },
    /// QMP failed.
    #[error("QMP: {0}")]
    Qmp(String),
    /// A firmware file is not what was expected.
    #[error("{0}")]
    Firmware(String),
    /// Process or file I/O.
    #[error("{what}: {source}")]
    Io {
        /// what was being done
        what: String,
        /// the cause
        source: std::io::Error,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
