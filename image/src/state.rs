//! The STATE partition: an empty ext4 filesystem labelled `herd-state`, made
//! in place inside the disk image by `mke2fs` (e2fsprogs) on a regular file,
//! which needs no privileges. Fixed UUID, hash seed and time make it
//! reproducible. herd-init creates `etc/` and `var/` on first boot and grows
//! the partition and the filesystem to fill the disk it finds itself on.

use std::path::Path;
use std::process::{Command, Stdio};

/// The filesystem label herd-init looks for.
pub const LABEL: &str = "herd-state";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot run mke2fs ({source}); install e2fsprogs (apt-get install e2fsprogs)")]
    Spawn { source: std::io::Error },
    #[error("mke2fs failed making STATE in {disk}: {stderr}")]
    Failed { disk: String, stderr: String },
}

/// `mke2fs` making STATE in the background (it needs nothing the rest of
/// the build makes, so it runs while /usr is compressed).
pub struct MakeExt4 {
    /// Taken by `wait`; a build that fails before then stops mke2fs.
    child: Option<std::process::Child>,
    disk: String,
}

impl Drop for MakeExt4 {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts making an ext4 filesystem of `len` bytes at byte `offset` of
/// `disk`; [`MakeExt4::wait`] for it before reading that range.
pub fn start_ext4(
    disk: &Path,
    offset: u64,
    len: u64,
    uuid: &str,
    epoch: u64,
) -> Result<MakeExt4, StateError> {
    let blocks = len / 4096;
    let child = Command::new("mke2fs")
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
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| StateError::Spawn { source })?;
    Ok(MakeExt4 {
        child: Some(child),
        disk: disk.display().to_string(),
    })
}

impl MakeExt4 {
    /// Waits for `mke2fs` to finish, with its error if it failed.
    pub fn wait(mut self) -> Result<(), StateError> {
        let Some(child) = self.child.take() else {
            return Ok(());
        };
        let out = child
            .wait_with_output()
            .map_err(|source| StateError::Spawn { source })?;
        if !out.status.success() {
            return Err(StateError::Failed {
                disk: std::mem::take(&mut self.disk),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}
