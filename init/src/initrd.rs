//! The initramfs stage: from the kernel's hand-off to the real root.
//!
//! [`run`] is the whole sequence; each step lives in a module of its own:
//! [`usr`] (partitions, dm-verity, mount, measurement), [`usr_check`] (the
//! full read of /usr beside the rest), [`state`] (STATE, /etc and /var),
//! [`warm`] (page cache and the fw_cfg driver on the side) and
//! [`loader_esp`] (the boot disk from the boot loader's EFI variables).

mod loader_esp;
mod state;
mod usr;
mod usr_check;
mod warm;

use std::fs;
use std::time::Duration;

use herd_contract::pcr;
use herd_gpt::Guid;
use herd_init::cmdline::Cmdline;

use crate::sys::{self, MountFlags};
use crate::{fatal, info, modules, tpm};
use state::State;
use usr::Verity;
use usr_check::UsrCheck;
use warm::Warm;

/// How long partitions may take to appear.
const PART_WAIT: Duration = Duration::from_secs(15);
const INITRD_MODULES: &str = "/etc/herd/initrd-modules";

/// Runs the initramfs stage, switches to the real root and runs the root
/// stage in this same process.
pub fn run() -> ! {
    mount_api_filesystems();
    tpm::phase(pcr::ENTER_INITRD);
    let cmdline = Cmdline::parse(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let slot = cmdline.slot.clone().unwrap_or_else(|| "a".into());
    info!(
        "initramfs: slot={slot} usrhash={}",
        cmdline.usrhash.as_deref().unwrap_or("(none)")
    );
    let esp = load_modules_and_find_esp();
    let root = cmdline.root_hash().unwrap_or_else(|e| fatal(&e));
    let parts = usr::find_partitions(&cmdline, &root, &slot, esp);
    let verity = Verity::create(&parts, &root);
    let mut check = UsrCheck::start(&verity.dev, &slot);
    info!(
        "dm-verity device {} set up ({} blocks); reading it in full while STATE is mounted",
        verity.dev, verity.data_blocks
    );
    usr::mount(&verity.dev, &mut check);
    let warm = Warm::start();
    usr::measure(&root, &parts.usr, &slot);
    let state = State::mount(&parts.usr.disk);
    warm.provisioning_open(state.provisioning_open());
    state.resize_fs();
    state.bind_etc_var(&mut check);
    make_root_skeleton();
    check.finish();
    warm.join();
    // /usr is verified in full: a corrupted block from now on means the disk
    // changed under the node, which reboots it.
    verity.restart_on_corruption();
    tpm::phase(pcr::LEAVE_INITRD);
    switch_root();
    // The root stage runs on in this process: the initramfs copy of
    // herd-init (from the signed, measured UKI of this slot, built with this
    // /usr) stays PID 1, so nothing from /usr ever runs as PID 1 and the
    // exec (reading and decompressing /usr/bin/herd-init from the squashfs
    // through dm-verity, ~0.15 s under TCG) is saved.
    info!("switched root; herd-init goes on as PID 1 from the initramfs");
    crate::root::run()
}

fn mount_or_die(src: &str, target: &str, fstype: &str, flags: MountFlags, data: &str) {
    let _ = fs::create_dir_all(target);
    if let Err(e) = sys::mount(src, target, fstype, flags, data) {
        fatal(&format!("cannot mount {fstype} {src} on {target}: {e}"));
    }
}

/// /proc, /sys, /dev and /run.
fn mount_api_filesystems() {
    let hidden = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_or_die("proc", "/proc", "proc", hidden, "");
    mount_or_die("sysfs", "/sys", "sysfs", hidden, "");
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
}

/// Loads the initramfs modules. Which disk the boot loader ran from
/// (efivarfs: mounting it reads every EFI variable through the firmware,
/// ~40 ms under TCG) is found while the other modules load and probe their
/// devices.
fn load_modules_and_find_esp() -> Option<Guid> {
    let esp = std::thread::Builder::new()
        .name("loader-esp".into())
        .spawn(|| {
            (
                modules::load_group_of(INITRD_MODULES, "efivarfs"),
                loader_esp::loader_esp(),
            )
        })
        .unwrap_or_else(|e| fatal(&format!("cannot start the boot disk lookup: {e}")));
    let n = modules::load_list(INITRD_MODULES, true);
    let (m, esp) = esp
        .join()
        .unwrap_or_else(|_| fatal("the boot disk lookup panicked"));
    info!("loaded {} initramfs modules", n + m);
    esp
}

/// The mount points and the /usr-merge links of the real root.
fn make_root_skeleton() {
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
}

/// Moves the API file systems into /sysroot, frees the initramfs and makes
/// /sysroot the root.
fn switch_root() {
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
}
