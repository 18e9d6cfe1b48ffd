//! /usr: its two partitions on the boot disk, the dm-verity device over
//! them, its mount on /sysroot/usr and its measurement.

use std::fs::{self, File};
use std::io::Read;
use std::time::{Duration, Instant};

use herd_contract::partition::uuids_from_root_hash;
use herd_gpt::Guid;
use herd_init::cmdline::Cmdline;
use herd_init::disks::{self, BootDisk, BootDiskError, Part};

use super::usr_check::UsrCheck;
use super::PART_WAIT;
use crate::sys::{self, MountFlags};
use crate::{dm, fatal, info, tpm};

/// Waits for the /usr and /usr-verity partitions that `usrhash` names
/// (on the disk the boot loader ran from, when it said which) and checks
/// `mount.usr=` agrees with them.
pub fn find_partitions(
    cmdline: &Cmdline,
    root: &[u8; 32],
    slot: &str,
    esp: Option<Guid>,
) -> BootDisk {
    let (data, hash) = uuids_from_root_hash(root);
    let (data_uuid, hash_uuid) = (Guid(data), Guid(hash));
    if let Some(u) = &cmdline.usr_partuuid {
        if *u != data_uuid.to_string() {
            fatal(&format!(
                "mount.usr=PARTUUID={u} does not match usrhash (its data partition is {data_uuid}): the boot entry is inconsistent"
            ));
        }
    }
    let waited = Instant::now();
    let chosen = loop {
        let parts = disks::scan();
        match disks::boot_disk(&parts, data_uuid, hash_uuid, esp) {
            Ok(c) => break c,
            Err(e) if e.is_final() => fatal(&e.to_string()),
            Err(e) if waited.elapsed() >= PART_WAIT => not_found(e, &parts, slot),
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    };
    for other in &chosen.ignored {
        info!(
            "boot disk: ignoring {other}: it carries the /usr partitions of this usrhash too, but the node boots from {}",
            chosen.disk
        );
    }
    info!(
        "found usr {} and usr-verity {}",
        chosen.usr.dev, chosen.verity.dev
    );
    chosen
}

/// Ends the boot when the partitions did not appear in time, naming the
/// one missing and every partition that did appear.
fn not_found(e: BootDiskError, parts: &[Part], slot: &str) -> ! {
    let seen = parts
        .iter()
        .map(|p| format!("{}={}", p.name, p.entry.name))
        .collect::<Vec<_>>()
        .join(" ");
    let what = match e {
        BootDiskError::MissingUsr(u) => format!("USR partition of slot {slot} (PARTUUID {u})"),
        BootDiskError::MissingVerity(u) => {
            format!("USR-verity partition of slot {slot} (PARTUUID {u})")
        }
        other => fatal(&format!("{other} (waited {} s)", PART_WAIT.as_secs())),
    };
    fatal(&format!(
        "{what} did not appear within {} s; partitions seen: [{seen}]",
        PART_WAIT.as_secs()
    ))
}

/// The dm-verity device `usr` over the two partitions.
pub struct Verity {
    /// Its device node, `/dev/dm-N`.
    pub dev: String,
    /// Blocks of /usr it covers.
    pub data_blocks: u64,
    sectors: u64,
    params: String,
}

impl Verity {
    /// Creates the device from the verity superblock on `parts.verity` and
    /// the root hash, and waits (up to 2 s) for its device node.
    pub fn create(parts: &BootDisk, root: &[u8; 32]) -> Verity {
        let (data, hash) = (&parts.usr, &parts.verity);
        let mut sb = [0u8; 512];
        if let Err(e) = File::open(&hash.dev).and_then(|mut f| f.read_exact(&mut sb)) {
            fatal(&format!(
                "cannot read the verity superblock on {}: {e}",
                hash.dev
            ));
        }
        let sb = herd_verity::Superblock::parse(&sb)
            .unwrap_or_else(|e| fatal(&format!("{} holds no valid verity data: {e}", hash.dev)));
        let params = herd_verity::dm_table_params(
            &disks::devno(data).unwrap_or(data.dev.clone()),
            &disks::devno(hash).unwrap_or(hash.dev.clone()),
            sb.data_blocks,
            root,
            &sb.salt,
        );
        let sectors = sb.data_blocks * u64::from(sb.data_block_size) / 512;
        let (_, minor) = dm::create("usr", "verity", sectors, &params).unwrap_or_else(|e| {
            fatal(&format!("cannot create the dm-verity device for /usr: {e}"))
        });
        let dev = format!("/dev/dm-{minor}");
        for _ in 0..200 {
            if fs::metadata(&dev).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Verity {
            dev,
            data_blocks: sb.data_blocks,
            sectors,
            params,
        }
    }

    /// Once /usr was read in full: reloads the table with
    /// `restart_on_corruption`, so a block that changes under the running
    /// node reboots it (see [`dm::restart_on_corruption`]).
    pub fn restart_on_corruption(&self) {
        if let Err(e) = dm::reload(
            "usr",
            "verity",
            self.sectors,
            &dm::restart_on_corruption(&self.params),
        ) {
            fatal(&format!(
                "cannot reload /usr's dm-verity table with restart_on_corruption: {e}"
            ));
        }
    }
}

/// Mounts a tmpfs on /sysroot and the verity device's squashfs on
/// /sysroot/usr (creating the mount point when the first try finds none).
pub fn mount(dev: &str, check: &mut UsrCheck) {
    super::mount_or_die(
        "tmpfs",
        "/sysroot",
        "tmpfs",
        MountFlags::NOSUID,
        "mode=0755",
    );
    let mount = || {
        sys::mount(
            dev,
            "/sysroot/usr",
            "squashfs",
            MountFlags::RDONLY | MountFlags::NODEV,
            "",
        )
    };
    if let Err(e) = mount() {
        let _ = fs::create_dir_all("/sysroot/usr");
        if let Err(e2) = mount() {
            check.fatal(&format!(
                "cannot mount /usr (squashfs on {dev}): {e2} (first try: {e})"
            ));
        }
    }
}

/// Measures what was mounted: the root hash dm-verity checks /usr against
/// and the slot of the partition it came from.
pub fn measure(root: &[u8; 32], data: &Part, slot: &str) {
    let mounted_slot = data.entry.name.strip_prefix("usr-").unwrap_or(slot);
    let hex: String = root.iter().map(|x| format!("{x:02x}")).collect();
    for e in herd_init::measure::usr_events(&hex, mounted_slot) {
        tpm::extend(&e);
    }
}
