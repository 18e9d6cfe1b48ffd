//! qcow2 output, for hypervisors and clouds that want it: converted from
//! disk.raw by `qemu-img` (qemu-utils), which writes the same bytes for the
//! same input.

use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("cannot run qemu-img ({source}); install it with `apt-get install qemu-utils`")]
    Spawn { source: std::io::Error },
    #[error("qemu-img convert {from} -> {to} failed: {stderr}")]
    Failed {
        from: String,
        to: String,
        stderr: String,
    },
}

/// Convert a raw disk image to qcow2 (uncompressed, so it stays bootable
/// and fast; zero clusters are left unallocated).
pub fn convert(raw: &Path, qcow2: &Path) -> Result<(), Qcow2Error> {
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(qcow2)
        .output()
        .map_err(|source| Qcow2Error::Spawn { source })?;
    if !out.status.success() {
        return Err(Qcow2Error::Failed {
            from: raw.display().to_string(),
            to: qcow2.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
