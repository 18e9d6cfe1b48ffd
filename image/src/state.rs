//! The STATE partition: an empty ext4 filesystem labelled `herd-state`, made
//! in place inside the disk image by `mke2fs` (e2fsprogs) on a regular file,
//! which needs no privileges. Fixed UUID, hash seed and time make it
//! reproducible. herd-init creates `etc/` and `var/` on first boot and grows
//! the partition and the filesystem to fill the disk it finds itself on.

use std::path::Path;
use std::process::Command;

/// The filesystem label herd-init looks for.
pub const LABEL: &str = "herd-state";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot run mke2fs ({source}); install e2fsprogs (apt-get install e2fsprogs)")]
    Spawn { source: std::io::Error },
    #[error("mke2fs failed making STATE in {disk}: {stderr}")]
    Failed { disk: String, stderr: String },
}

/// Make an ext4 filesystem of `len` bytes at byte `offset` of `disk`.
pub fn make_ext4(
    disk: &Path,
    offset: u64,
    len: u64,
    uuid: &str,
    epoch: u64,
) -> Result<(), StateError> {
    let blocks = len / 4096;
    let out = Command::new("mke2fs")
        .env("E2FSPROGS_FAKE_TIME", epoch.max(1).to_string())
        .env("MKE2FS_CONFIG", "/dev/null")
        .args(["-t", "ext4", "-F", "-q", "-b", "4096", "-L", LABEL, "-U", uuid])
        // 64-bit and metadata checksums so the kernel can grow it online.
        .args(["-O", "64bit,metadata_csum,extent,huge_file,flex_bg,dir_nlink,extra_isize,has_journal,resize_inode"])
        .args([
            "-E",
            &format!("offset={offset},hash_seed={uuid},root_owner=0:0,lazy_itable_init=1,nodiscard"),
        ])
        .arg(disk)
        .arg(blocks.to_string())
        .output()
        .map_err(|source| StateError::Spawn { source })?;
    if !out.status.success() {
        return Err(StateError::Failed {
            disk: disk.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
