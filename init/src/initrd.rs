//! The initramfs stage: from the kernel's hand-off to the real root.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::time::Duration;

use herd_gpt::{types, Guid};
use herd_init::bootcount::{decode_efivar_utf16, LOADER_GUID};
use herd_init::cmdline::Cmdline;

use herd_init::disks;

use crate::sys::MountFlags;
use crate::{dm, fatal, grow, info, modules, sys, tpm};

const PART_WAIT: Duration = Duration::from_secs(15);
const INITRD_MODULES: &str = "/etc/herd/initrd-modules";

fn mount_or_die(src: &str, target: &str, fstype: &str, flags: MountFlags, data: &str) {
    let _ = fs::create_dir_all(target);
    if let Err(e) = sys::mount(src, target, fstype, flags, data) {
        fatal(&format!("cannot mount {fstype} {src} on {target}: {e}"));
    }
}

/// Reads all of /usr through dm-verity, so a corrupted partition fails this
/// boot now (one clear line, a counted try) rather than when some file is
/// first read. Runs on its own thread while STATE is mounted, as two
/// readers (one per half: dm-verity hashes each read's blocks on the
/// reading CPU's worker, so two readers use both CPUs); the message names
/// the slot and where the read failed.
fn check_usr(dev: &str, slot: &str) -> Result<u64, String> {
    let f = File::open(dev).map_err(|e| format!("cannot open the verity device {dev}: {e}"))?;
    let len = {
        use std::io::Seek;
        (&f).seek(std::io::SeekFrom::End(0))
            .map_err(|e| format!("cannot size the verity device {dev}: {e}"))?
    };
    // The halves meet on a 1 MiB boundary.
    let half = (len / 2) & !((1 << 20) - 1);
    std::thread::scope(|sc| {
        let second = sc.spawn(|| read_range(&f, half, len, slot));
        let first = read_range(&f, 0, half, slot);
        let second = second
            .join()
            .unwrap_or_else(|_| Err("the /usr check's second reader panicked".into()));
        Ok(first? + second?)
    })
}

/// Reads bytes `from..to` of `f`.
fn read_range(f: &File, from: u64, to: u64, slot: &str) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = from;
    while off < to {
        let want = buf.len().min((to - off) as usize);
        match f.read_at(&mut buf[..want], off) {
            Ok(0) => break,
            Ok(n) => off += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                "dm-verity rejected /usr of slot {slot} near byte {off} ({e}): the USR partition does not match usrhash \
                 (corrupted data or a wrong root hash); refusing to boot it"
            ))
            }
        }
    }
    Ok(off - from)
}

/// The whole-/usr check running beside the rest of the initramfs stage.
struct UsrCheck(Option<std::thread::JoinHandle<Result<u64, String>>>);

impl UsrCheck {
    fn start(dev: &str, slot: &str) -> UsrCheck {
        let (dev, slot) = (dev.to_string(), slot.to_string());
        let started = std::time::Instant::now();
        let h = std::thread::Builder::new()
            .name("usr-check".into())
            .spawn(move || {
                let r = check_usr(&dev, &slot);
                if let Ok(bytes) = r {
                    info!(
                        "dm-verity device {dev} read in full: {} MiB verified in {} ms",
                        bytes >> 20,
                        started.elapsed().as_millis()
                    );
                }
                r
            })
            .unwrap_or_else(|e| fatal(&format!("cannot start the /usr check: {e}")));
        UsrCheck(Some(h))
    }

    /// Waits for the check; a failure ends the boot.
    fn finish(&mut self) {
        if let Some(h) = self.0.take() {
            match h.join() {
                Ok(Ok(_)) => {}
                Ok(Err(m)) => fatal(&m),
                Err(_) => fatal("the /usr check panicked"),
            }
        }
    }

    /// Ends the boot with `msg`, or with the check's own failure when /usr
    /// turned out corrupted (the likelier cause of anything failing on it).
    fn fatal(&mut self, msg: &str) -> ! {
        self.finish();
        fatal(msg)
    }
}

/// Runs the initramfs stage, switches to the real root and runs the root
/// stage in this same process.
pub fn run() -> ! {
    mount_or_die(
        "proc",
        "/proc",
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    );
    mount_or_die(
        "sysfs",
        "/sys",
        "sysfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    );
    mount_or_die(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MountFlags::NOSUID,
        "mode=0755",
    );
    mount_or_die(
        "tmpfs",
        "/run",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=0755",
    );
    tpm::phase(herd_contract::pcr::ENTER_INITRD);
    let cmdline = Cmdline::parse(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let slot = cmdline.slot.clone().unwrap_or_else(|| "a".into());
    info!(
        "initramfs: slot={slot} usrhash={}",
        cmdline.usrhash.as_deref().unwrap_or("(none)")
    );

    // Which disk the boot loader ran from (efivarfs: mounting it reads every
    // EFI variable through the firmware, ~40 ms under TCG) is found while
    // the other modules load and probe their devices.
    let esp = std::thread::Builder::new()
        .name("loader-esp".into())
        .spawn(|| {
            (
                modules::load_group_of(INITRD_MODULES, "efivarfs"),
                loader_esp(),
            )
        })
        .unwrap_or_else(|e| fatal(&format!("cannot start the boot disk lookup: {e}")));
    let n = modules::load_list(INITRD_MODULES, true);
    let (m, esp) = esp
        .join()
        .unwrap_or_else(|_| fatal("the boot disk lookup panicked"));
    info!("loaded {} initramfs modules", n + m);

    let root = cmdline.root_hash().unwrap_or_else(|e| fatal(&e));
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    a.copy_from_slice(&root[..16]);
    b.copy_from_slice(&root[16..]);
    let (data_uuid, hash_uuid) = (Guid(a), Guid(b));
    if let Some(u) = &cmdline.usr_partuuid {
        if *u != data_uuid.to_string() {
            fatal(&format!(
                "mount.usr=PARTUUID={u} does not match usrhash (its data partition is {data_uuid}): the boot entry is inconsistent"
            ));
        }
    }
    let waited = std::time::Instant::now();
    let chosen = loop {
        let parts = disks::scan();
        match disks::boot_disk(&parts, data_uuid, hash_uuid, esp) {
            Ok(c) => break c,
            Err(e) if e.is_final() => fatal(&e.to_string()),
            Err(e) if waited.elapsed() >= PART_WAIT => {
                let seen = parts
                    .iter()
                    .map(|p| format!("{}={}", p.name, p.entry.name))
                    .collect::<Vec<_>>()
                    .join(" ");
                let what = match e {
                    disks::BootDiskError::MissingUsr(u) => {
                        format!("USR partition of slot {slot} (PARTUUID {u})")
                    }
                    disks::BootDiskError::MissingVerity(u) => {
                        format!("USR-verity partition of slot {slot} (PARTUUID {u})")
                    }
                    other => fatal(&format!("{other} (waited {} s)", PART_WAIT.as_secs())),
                };
                fatal(&format!(
                    "{what} did not appear within {} s; partitions seen: [{seen}]",
                    PART_WAIT.as_secs()
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    };
    for other in &chosen.ignored {
        info!(
            "boot disk: ignoring {other}: it carries the /usr partitions of this usrhash too, but the node boots from {}",
            chosen.disk
        );
    }
    let (data, hash) = (chosen.usr, chosen.verity);
    info!("found usr {} and usr-verity {}", data.dev, hash.dev);

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
        &disks::devno(&data).unwrap_or(data.dev.clone()),
        &disks::devno(&hash).unwrap_or(hash.dev.clone()),
        sb.data_blocks,
        &root,
        &sb.salt,
    );
    let sectors = sb.data_blocks * u64::from(sb.data_block_size) / 512;
    let (_, minor) = dm::create("usr", "verity", sectors, &params)
        .unwrap_or_else(|e| fatal(&format!("cannot create the dm-verity device for /usr: {e}")));
    let usr_dev = format!("/dev/dm-{minor}");
    for _ in 0..200 {
        if fs::metadata(&usr_dev).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut usr_check = UsrCheck::start(&usr_dev, &slot);
    info!(
        "dm-verity device {usr_dev} set up ({} blocks); reading it in full while STATE is mounted",
        sb.data_blocks
    );

    mount_or_die(
        "tmpfs",
        "/sysroot",
        "tmpfs",
        MountFlags::NOSUID,
        "mode=0755",
    );
    if let Err(e) = sys::mount(
        &usr_dev,
        "/sysroot/usr",
        "squashfs",
        MountFlags::RDONLY | MountFlags::NODEV,
        "",
    ) {
        let _ = fs::create_dir_all("/sysroot/usr");
        if let Err(e2) = sys::mount(
            &usr_dev,
            "/sysroot/usr",
            "squashfs",
            MountFlags::RDONLY | MountFlags::NODEV,
            "",
        ) {
            usr_check.fatal(&format!(
                "cannot mount /usr (squashfs on {usr_dev}): {e2} (first try: {e})"
            ));
        }
    }

    // While STATE is mounted: read the head of each service's program into
    // the page cache (exec reads it), then, once STATE says provisioning
    // may still run (a first boot), load the fw_cfg driver it looks for
    // first. A later boot does not wait for that module (it loads after
    // `ready` with the others). A read error is the /usr check's to report.
    let (fw_cfg_tx, fw_cfg_rx) = std::sync::mpsc::channel::<bool>();
    let warm = std::thread::spawn(move || {
        let services = fs::read_to_string("/sysroot/usr/lib/herd/init.toml")
            .ok()
            .and_then(|t| herd_init::config::Config::parse(&t).ok())
            .map(|c| c.services)
            .unwrap_or_default();
        for s in services {
            if let Some(prog) = s.exec.first().filter(|p| p.starts_with("/usr/")) {
                if let Ok(f) = File::open(format!("/sysroot{prog}")) {
                    let _ = std::io::copy(&mut f.take(256 * 1024), &mut std::io::sink());
                }
            }
        }
        if fw_cfg_rx.recv().unwrap_or(false) {
            modules::load_named("/sysroot", &crate::provision::FW_CFG_MODULE);
        }
    });

    // Measure what was mounted: the root hash dm-verity checks /usr against
    // and the slot of the partition it came from.
    let mounted_slot = data
        .entry
        .name
        .strip_prefix("usr-")
        .unwrap_or(&slot)
        .to_string();
    for e in herd_init::measure::usr_events(&hex_lower(&root), &mounted_slot) {
        tpm::extend(&e);
    }

    let disk = data.disk.clone();
    let state = disks::wait_for(
        &|p| p.disk == disk && p.entry.type_guid == types::VAR,
        PART_WAIT,
    )
    .unwrap_or_else(|| {
        fatal(&format!(
            "no STATE partition (type {}) on {disk}",
            types::VAR
        ))
    });
    let grown = match grow::grow_partition(&state) {
        Ok(g) => g,
        Err(e) => {
            info!("could not grow STATE ({e}); keeping its size");
            None
        }
    };
    mount_or_die(
        &state.dev,
        "/sysroot/.state",
        "ext4",
        MountFlags::NOSUID | MountFlags::NODEV,
        "",
    );
    // Provisioning runs only until a boot closed it (provision::run).
    let open = herd_init::config_source::closed(std::path::Path::new("/sysroot/.state")).is_none();
    let _ = fw_cfg_tx.send(open);
    if let Some((old, new)) = grown {
        match grow::resize_ext4("/sysroot/.state", new) {
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
    let first_boot = fs::metadata("/sysroot/.state/etc").is_err();
    for d in ["/sysroot/.state/var", "/sysroot/.state/etc"] {
        if let Err(e) = fs::create_dir_all(d) {
            fatal(&format!("cannot create {d} on STATE: {e}"));
        }
    }
    if first_boot {
        match herd_init::tree::copy(
            std::path::Path::new("/sysroot/usr/share/factory/etc"),
            std::path::Path::new("/sysroot/.state/etc"),
        ) {
            Ok(n) => info!("first boot: /etc seeded with {n} files from /usr/share/factory/etc"),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                info!("first boot: no /usr/share/factory/etc")
            }
            Err(e) => usr_check.fatal(&format!("cannot seed /etc on STATE: {e}")),
        }
    }
    for (from, to) in [
        ("/sysroot/.state/etc", "/sysroot/etc"),
        ("/sysroot/.state/var", "/sysroot/var"),
    ] {
        let _ = fs::create_dir_all(to);
        if let Err(e) = sys::mount_bind(from, to) {
            fatal(&format!("cannot bind {from} on {to}: {e}"));
        }
    }
    info!("STATE {} mounted: /etc and /var persist", state.dev);

    for d in ["proc", "sys", "dev", "run", "tmp"] {
        let _ = fs::create_dir_all(format!("/sysroot/{d}"));
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib"),
    ] {
        let _ = std::os::unix::fs::symlink(to, format!("/sysroot/{link}"));
    }
    usr_check.finish();
    let _ = warm.join();
    // /usr is verified in full: a corrupted block from now on means the disk
    // changed under the node, which reboots it (see dm::restart_on_corruption).
    if let Err(e) = dm::reload(
        "usr",
        "verity",
        sectors,
        &dm::restart_on_corruption(&params),
    ) {
        fatal(&format!(
            "cannot reload /usr's dm-verity table with restart_on_corruption: {e}"
        ));
    }
    tpm::phase(herd_contract::pcr::LEAVE_INITRD);
    for m in ["/dev", "/proc", "/sys", "/run"] {
        if let Err(e) = sys::mount_move(m, &format!("/sysroot{m}")) {
            fatal(&format!("cannot move {m} into the new root: {e}"));
        }
    }
    // Free the initramfs: its files live in memory until deleted (/init,
    // this program, stays as long as it runs).
    for p in ["/init", "/lib", "/etc"] {
        let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_file(p));
    }
    if let Err(e) = std::env::set_current_dir("/sysroot")
        .and_then(|_| sys::mount_move(".", "/"))
        .and_then(|_| sys::chroot("."))
        .and_then(|_| std::env::set_current_dir("/"))
    {
        fatal(&format!("cannot switch to the real root: {e}"));
    }
    // The root stage runs on in this process: the initramfs copy of
    // herd-init (from the signed, measured UKI of this slot, built with this
    // /usr) stays PID 1, so nothing from /usr ever runs as PID 1 and the
    // exec (reading and decompressing /usr/bin/herd-init from the squashfs
    // through dm-verity, ~0.15 s under TCG) is saved.
    info!("switched root; herd-init goes on as PID 1 from the initramfs");
    crate::root::run()
}

/// The PARTUUID of the ESP the boot loader ran from (systemd-boot's
/// `LoaderDevicePartUUID`), when booted through UEFI and the loader set it.
/// efivarfs is mounted here (the initramfs carries its module in the
/// shipped images); it stays mounted for the real root's blessing. Says in
/// one line which rule picks the boot disk.
fn loader_esp() -> Option<Guid> {
    const EFIVARS: &str = "/sys/firmware/efi/efivars";
    let var = format!("{EFIVARS}/LoaderDevicePartUUID-{LOADER_GUID}");
    let fallback = "exactly one disk may carry the /usr partitions of this usrhash";
    if fs::metadata("/sys/firmware/efi").is_err() {
        info!("boot disk: not booted through UEFI; {fallback}");
        return None;
    }
    let empty = fs::read_dir(EFIVARS)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true);
    if empty {
        if let Err(e) = sys::mount(
            "efivarfs",
            EFIVARS,
            "efivarfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "",
        ) {
            info!("boot disk: cannot mount efivarfs ({e}; is the efivarfs module in kernel.initrd_modules?); {fallback}");
            return None;
        }
    }
    let Some(raw) = fs::read(&var).ok().and_then(|r| decode_efivar_utf16(&r)) else {
        info!("boot disk: the boot loader set no LoaderDevicePartUUID (direct kernel boot, or a loader that does not set it); {fallback}");
        return None;
    };
    match Guid::parse(&raw.trim().to_ascii_lowercase()) {
        Ok(g) => {
            info!("boot disk: the boot loader ran from the ESP with PARTUUID {g}; /usr and STATE come from that disk only");
            Some(g)
        }
        Err(_) => fatal(&format!(
            "the boot loader's LoaderDevicePartUUID {raw:?} is not a GUID: refusing to guess the boot disk"
        )),
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
