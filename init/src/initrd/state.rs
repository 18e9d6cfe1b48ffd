//! STATE: found on the boot disk, grown to fill it, mounted on
//! /sysroot/.state, /etc seeded on the first boot, /etc and /var bound.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use herd_gpt::types;
use herd_init::disks::{self, Part};

use super::usr_check::UsrCheck;
use super::PART_WAIT;
use crate::sys::{self, MountFlags};
use crate::{fatal, grow, info};

const MOUNT: &str = "/sysroot/.state";

/// The mounted STATE partition.
pub struct State {
    part: Part,
    /// (old, new) partition size in bytes when it was grown this boot.
    grown: Option<(u64, u64)>,
}

impl State {
    /// Waits for STATE on `disk`, grows its partition to the end of the
    /// disk when there is room, and mounts it.
    pub fn mount(disk: &str) -> State {
        let part = disks::wait_for(
            &|p| p.disk == disk && p.entry.type_guid == types::VAR,
            PART_WAIT,
        )
        .unwrap_or_else(|| {
            fatal(&format!(
                "no STATE partition (type {}) on {disk}",
                types::VAR
            ))
        });
        let grown = match grow::grow_partition(&part) {
            Ok(g) => g,
            Err(e) => {
                info!("could not grow STATE ({e}); keeping its size");
                None
            }
        };
        super::mount_or_die(
            &part.dev,
            MOUNT,
            "ext4",
            MountFlags::NOSUID | MountFlags::NODEV,
            "",
        );
        State { part, grown }
    }

    /// Whether provisioning may still run: no boot closed it yet
    /// (provision::run).
    pub fn provisioning_open(&self) -> bool {
        herd_init::config_source::closed(Path::new(MOUNT)).is_none()
    }

    /// Grows the ext4 file system online when the partition grew.
    pub fn resize_fs(&self) {
        let Some((old, new)) = self.grown else {
            return;
        };
        match grow::resize_ext4(MOUNT, new) {
            Ok(()) => info!(
                "STATE grown to fill the disk: {} MiB -> {} MiB",
                old >> 20,
                new >> 20
            ),
            Err(e) => info!(
                "STATE partition grew to {} MiB but the file system did not: {e}",
                new >> 20
            ),
        }
    }

    /// Creates /etc and /var on STATE (seeding /etc from the factory copy
    /// on the first boot) and binds them on /sysroot/etc and /sysroot/var.
    pub fn bind_etc_var(&self, check: &mut UsrCheck) {
        let first_boot = fs::metadata(format!("{MOUNT}/etc")).is_err();
        for d in [format!("{MOUNT}/var"), format!("{MOUNT}/etc")] {
            if let Err(e) = fs::create_dir_all(&d) {
                fatal(&format!("cannot create {d} on STATE: {e}"));
            }
        }
        if first_boot {
            seed_etc(check);
        }
        for (from, to) in [
            (format!("{MOUNT}/etc"), "/sysroot/etc"),
            (format!("{MOUNT}/var"), "/sysroot/var"),
        ] {
            let _ = fs::create_dir_all(to);
            if let Err(e) = sys::mount_bind(&from, to) {
                fatal(&format!("cannot bind {from} on {to}: {e}"));
            }
        }
        info!("STATE {} mounted: /etc and /var persist", self.part.dev);
    }
}

/// First boot: copies /usr/share/factory/etc to STATE's /etc.
fn seed_etc(check: &mut UsrCheck) {
    match herd_init::tree::copy(
        Path::new("/sysroot/usr/share/factory/etc"),
        Path::new("/sysroot/.state/etc"),
    ) {
        Ok(n) => info!("first boot: /etc seeded with {n} files from /usr/share/factory/etc"),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            info!("first boot: no /usr/share/factory/etc")
        }
        Err(e) => check.fatal(&format!("cannot seed /etc on STATE: {e}")),
    }
}
