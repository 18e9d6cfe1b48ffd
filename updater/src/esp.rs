//! Installing a slot's UKI on the ESP, crash-safely: every file is written
//! beside its final name, synced, then renamed.

use std::io::Write;
use std::path::Path;

use herd_gpt::types;
use herd_node::disks;

use crate::{io, Error};

const MNT: &str = "/run/herd/update-esp";

/// The ESP, mounted for as long as this lives.
pub struct Esp;

impl Esp {
    /// Mounts the disk's ESP.
    pub fn mount(disk: &str) -> Result<Esp, Error> {
        let esp = disks::scan()
            .into_iter()
            .find(|p| p.disk == disk && p.entry.type_guid == types::ESP)
            .ok_or_else(|| Error::Disk(format!("no ESP on {disk}")))?;
        std::fs::create_dir_all(MNT).map_err(io(format!("creating {MNT}")))?;
        use rustix::mount::MountFlags;
        let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        rustix::mount::mount(esp.dev.as_str(), MNT, "vfat", flags, None)
            .map_err(|e| io(format!("mounting the ESP {}", esp.dev))(e.into()))?;
        Ok(Esp)
    }

    /// A path on the mounted ESP.
    pub fn path(&self, rel: &str) -> std::path::PathBuf {
        Path::new(MNT).join(rel)
    }

    /// Writes `rel` atomically. Refuses when the ESP lacks the room (and
    /// says how much there is); a failed write removes its partial file.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), Error> {
        let dst = self.path(rel);
        let dir = dst.parent().expect("ESP paths have a directory");
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let free = free_bytes(MNT)?;
        if free < bytes.len() as u64 + (64 << 10) {
            return Err(Error::Disk(format!(
                "the ESP has {} KiB free but {rel} needs {} KiB: remove stray files from the ESP \
                 or give it a bigger partitions.esp",
                free >> 10,
                bytes.len() >> 10
            )));
        }
        let tmp = dst.with_extension("new");
        let mut f =
            std::fs::File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
        if let Err(e) = f.write_all(bytes).and_then(|_| f.sync_all()) {
            drop(f);
            let _ = std::fs::remove_file(&tmp);
            return Err(io(format!("writing {}", tmp.display()))(e));
        }
        std::fs::rename(&tmp, &dst)
            .map_err(io(format!("renaming {} into place", dst.display())))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the ESP"))
    }

    /// Boot entries ([`herd_contract::esp::ENTRIES_DIR`]`/*.conf`) and UKIs
    /// ([`herd_contract::esp::UKI_DIR`]`/*.efi`),
    /// sorted by directory and name.
    pub fn entries(&self) -> Vec<Entry> {
        let mut v = Vec::new();
        for (dir, ext) in [(ENTRIES, ".conf"), (UKIS, ".efi")] {
            if let Ok(rd) = std::fs::read_dir(self.path(dir)) {
                for e in rd.flatten() {
                    if let Ok(name) = e.file_name().into_string() {
                        if name.to_ascii_lowercase().ends_with(ext) {
                            v.push(Entry { dir, name });
                        }
                    }
                }
            }
        }
        v.sort_by(|a, b| (a.dir, &a.name).cmp(&(b.dir, &b.name)));
        v
    }

    /// Renames an entry in its directory (e.g. to mark a slot bad or blessed).
    pub fn rename_entry(&self, e: &Entry, to: &str) -> Result<(), Error> {
        let dir = self.path(e.dir);
        std::fs::rename(dir.join(&e.name), dir.join(to))
            .map_err(io(format!("renaming {}/{} to {to}", e.dir, e.name)))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the ESP"))
    }

    /// Removes files a power cut left half-written (`*.new`, written
    /// beside an entry of `slot` of `image`), in both entry directories.
    pub fn remove_partial(&self, image: &str, slot: herd_contract::Slot) -> Result<(), Error> {
        for dir in [ENTRIES, UKIS] {
            let Ok(rd) = std::fs::read_dir(self.path(dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let partial = name
                    .strip_suffix(".new")
                    .and_then(|stem| herd_contract::BootEntry::parse(&format!("{stem}.efi")))
                    .is_some_and(|b| b.boots(image, slot));
                if partial {
                    std::fs::remove_file(e.path())
                        .map_err(io(format!("removing the partial file {dir}/{name}")))?;
                }
            }
        }
        Ok(())
    }

    /// The release a UKI on the ESP boots (`IMAGE_VERSION` of its
    /// `.osrel`); `None` for a type #1 entry or an unreadable UKI.
    pub fn uki_version(&self, e: &Entry) -> Option<String> {
        if e.dir != UKIS {
            return None;
        }
        let bytes = std::fs::read(self.path(e.dir).join(&e.name)).ok()?;
        let parts = herd_uki::UkiParts::from_uki(&bytes).ok()?;
        herd_node::os_release::parse(&String::from_utf8_lossy(parts.osrel), "IMAGE_VERSION")
    }

    /// Removes an entry.
    pub fn remove_entry(&self, e: &Entry) -> Result<(), Error> {
        let dir = self.path(e.dir);
        std::fs::remove_file(dir.join(&e.name))
            .map_err(io(format!("removing {}/{}", e.dir, e.name)))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the ESP"))
    }
}

/// Boot Loader Specification type #1 entries.
pub const ENTRIES: &str = herd_contract::esp::ENTRIES_DIR;
/// Unified Kernel Images (type #2 entries).
pub const UKIS: &str = herd_contract::esp::UKI_DIR;

/// A boot entry or UKI on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// [`ENTRIES`] or [`UKIS`].
    pub dir: &'static str,
    /// The file name, with its tries counter if any.
    pub name: String,
}

impl Entry {
    /// The herd slot entry this file is, if it is one.
    pub fn boot_entry(&self) -> Option<herd_contract::BootEntry> {
        herd_contract::BootEntry::parse(&self.name)
    }

    /// `.conf` or `.efi`.
    pub fn ext(&self) -> &'static str {
        if self.dir == UKIS {
            ".efi"
        } else {
            ".conf"
        }
    }
}

/// Free bytes on the file system at `path` (statvfs).
fn free_bytes(path: &str) -> Result<u64, Error> {
    let st = rustix::fs::statvfs(path).map_err(|e| io(format!("statvfs {path}"))(e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

impl Drop for Esp {
    fn drop(&mut self) {
        rustix::fs::sync();
        // Best effort: the next mount of the ESP reports what is wrong.
        let _ = rustix::mount::unmount(MNT, rustix::mount::UnmountFlags::empty());
    }
}
