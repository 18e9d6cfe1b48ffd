//! Boot the built image in QEMU (OVMF -> systemd-boot -> kernel -> herd-init)
//! and check, from the console and from the disk afterwards: verity is active
//! for /usr, /usr refuses writes, /var survives a reboot, a good boot is
//! blessed, poweroff ends QEMU cleanly, and a corrupted /usr fails loudly
//! with each failed try counted by the boot loader. A second disk carrying
//! the same /usr partitions (a stick with a copy of the release and a STATE
//! of its own), attached so that it sorts first, never provides /etc and
//! /var: the node takes the disk systemd-boot ran from, and refuses to boot
//! when it cannot tell (a byte copy of the boot disk; a direct kernel boot).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herd_qemu::{OnReboot, Vm, VmConfig};
use herd_tests::*;

const BOOT: Duration = Duration::from_secs(120);

/// The boot-test image: the default image plus busybox and a probe service
/// that reports what it sees on the console.
fn probe_image() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = target_dir()
            .join("e2e")
            .join(format!("probe-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        run_ok(
            herd_build(
                &workspace().join("tests/images/probe.toml"),
                &dir,
                1_700_000_000,
            )
            .arg("--quiet"),
        );
        dir
    })
}

/// A private, writable copy of an image's disk.
fn disk_copy(image: &Path, dir: &Path) -> PathBuf {
    disk_copy_named(image, dir, "disk.raw")
}

/// A private, writable copy of an image's disk, named `name` in `dir`.
fn disk_copy_named(image: &Path, dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    // cp --sparse keeps the copy quick and small.
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(image.join("disk.raw"))
            .arg(&d),
    );
    d
}

fn vm(disk: &Path, log: &Path, on_reboot: OnReboot) -> Vm {
    vm_with(disk, log, on_reboot, |_| {})
}

fn vm_with(disk: &Path, log: &Path, on_reboot: OnReboot, tweak: impl FnOnce(&mut VmConfig)) -> Vm {
    let mut cfg = VmConfig::new(disk.to_path_buf());
    cfg.on_reboot = on_reboot;
    cfg.memory_mib = 512;
    tweak(&mut cfg);
    Vm::start(&cfg, log).expect("start QEMU")
}

/// GET / from 127.0.0.1:port, retrying while the forward comes up.
fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if !out.is_empty() {
                return out;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("nothing answered on 127.0.0.1:{port}")
}

#[test]
fn boots_verified_persists_state_blesses_and_powers_off() {
    let image = probe_image();
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(image, tmp.path());
    let m = manifest(image);
    let usrhash = m["usr"]["usrhash"].as_str().unwrap();
    assert_eq!(esp_entries(&disk), ["herd-a+3-0.efi"]);
    // A bigger disk than the image: STATE must grow to fill it on first boot.
    let grown = fs::metadata(&disk).unwrap().len() + (512 << 20);
    fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(grown)
        .unwrap();

    // First boot, with a TPM and a forward from the host to the guest's httpd.
    let port = free_port();
    let vm1 = vm_with(&disk, &tmp.path().join("boot1.log"), OnReboot::Exit, |c| {
        c.tpm = true;
        c.forwards.push(herd_qemu::Forward {
            host: port,
            guest: 8080,
        });
    });
    let ready = vm1.wait_for("herd-init: ready", BOOT).unwrap();
    assert!(ready.contains("slot=a"), "{ready}");
    assert!(ready.contains(&format!("usrhash={usrhash}")), "{ready}");
    assert!(ready.contains("version=0.1.0"), "{ready}");
    vm1.wait_for("probe: dm-name usr", BOOT).unwrap();
    let mounts = vm1.wait_for("probe: usr-mount", BOOT).unwrap();
    assert!(
        mounts.contains("squashfs") && mounts.contains(" ro"),
        "{mounts}"
    );
    vm1.wait_for("probe: dm-verity users 1", BOOT).unwrap();
    vm1.wait_for("probe: usr-write refused", BOOT).unwrap();
    vm1.wait_for("probe: var first boot", BOOT).unwrap();
    vm1.wait_for("probe: wrote /var", BOOT).unwrap();
    vm1.wait_for("herd-init: STATE grown to fill the disk", BOOT)
        .unwrap();
    let df = vm1.wait_for("probe: var-size", BOOT).unwrap();
    // "... var-size /dev/vda6 <1K-blocks> <used> <available> ..."
    let kib: u64 = df
        .split_whitespace()
        .skip_while(|w| !w.starts_with("/dev/"))
        .nth(1)
        .and_then(|k| k.parse().ok())
        .unwrap_or(0);
    assert!(kib > 500_000, "/var did not grow: {df}");
    // DHCP from QEMU's user network, the TPM is visible, a forward works.
    vm1.wait_for("probe: dhcp 10.0.2.15/24", BOOT).unwrap();
    vm1.wait_for("probe: tpm [tpm0]", BOOT).unwrap();
    vm1.wait_for("probe: httpd on 8080", BOOT).unwrap();
    assert!(http_get(port).contains("herd probe page"));
    vm1.wait_for("blessed boot entry herd-a+2-1.efi -> herd-a.efi", BOOT)
        .unwrap();
    // ACPI power button -> clean shutdown -> QEMU exits by itself.
    vm1.wait_for("herd-init: watching the power button", BOOT)
        .unwrap();
    vm1.powerdown().unwrap();
    vm1.wait_for("herd-init: powering off", Duration::from_secs(60))
        .unwrap();
    let status = vm1.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "QEMU exit status {status:?}");

    // The boot loader counted the try, herd-init blessed it: no counter left.
    assert_eq!(esp_entries(&disk), ["herd-a.efi"]);
    // The grown partition table is valid, backup header at the new end.
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&disk));
    assert!(v.contains("No problems found"), "{v}");

    // Second boot: /var kept what the first boot wrote.
    let vm2 = vm(&disk, &tmp.path().join("boot2.log"), OnReboot::Exit);
    vm2.wait_for("herd-init: ready", BOOT).unwrap();
    vm2.wait_for("probe: var kept boot-1", BOOT).unwrap();
    // A press before the button driver is loaded is lost, as on hardware.
    vm2.wait_for("herd-init: watching the power button", BOOT)
        .unwrap();
    vm2.powerdown().unwrap();
    assert!(vm2.wait_exit(Duration::from_secs(60)).unwrap().success());
}

#[test]
fn corrupted_usr_fails_loudly_and_each_try_is_counted() {
    let image = probe_image();
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(image, tmp.path());
    let m = manifest(image);
    let (off, _) = partition(&m, "usr-a");
    let len = m["usr"]["squashfs_bytes"].as_u64().unwrap();
    // Flip one byte in the middle of USR-A's squashfs.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        let at = off + len / 2;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x01;
        f.write_all_at(&b, at).unwrap();
    }
    for (tries_left, done) in [(2, 1), (1, 2)] {
        let vm = vm(
            &disk,
            &tmp.path().join(format!("bad{done}.log")),
            OnReboot::Exit,
        );
        let line = vm.wait_for("herd-init: FATAL", BOOT).unwrap();
        assert!(
            line.to_lowercase().contains("verity") || line.contains("I/O error"),
            "the fatal line names the cause: {line}"
        );
        // herd-init reboots by itself; QEMU exits on the reboot.
        vm.wait_exit(Duration::from_secs(60)).unwrap();
        assert_eq!(
            esp_entries(&disk),
            [format!("herd-a+{tries_left}-{done}.efi")],
            "systemd-boot counted the failed try"
        );
    }
}

/// A block of /usr that changes while the node runs (after herd-init read
/// all of /usr at boot): dm-verity finds it on the next read, which
/// reboots the node (`restart_on_corruption`, loaded once the boot-time
/// read passed) instead of handing the reader an I/O error and running on;
/// the next boot's full read then refuses the slot with a FATAL line. The
/// reader reads the block with O_DIRECT, as any later read of a block not
/// in the page cache would.
#[test]
fn usr_corrupted_after_boot_reboots_the_node_on_the_next_read() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = fs::read_to_string(workspace().join("tests/images/probe.toml")).unwrap();
    let lock = workspace().join("buildroot/debian.lock");
    let toml = probe.replace(
        "lock = \"../../buildroot/debian.lock\"",
        &format!("lock = {:?}", lock.to_str().unwrap()),
    ) + r#"
[[usr.file]]
path = "lib/herd/reader.sh"
mode = 0o755
content = '''
bb=/usr/bin/busybox
b=$(( $($bb cat /sys/block/dm-0/size) / 16 ))
while true; do
  if $bb dd if=/dev/dm-0 of=/dev/null bs=4096 skip=$b count=1 iflag=direct 2>/dev/null; then
    echo "reader: block $b read"
  else
    echo "reader: block $b read failed"
  fi
  $bb sleep 1
done
'''

[[init.service]]
name = "reader"
exec = ["/usr/bin/busybox", "sh", "/usr/lib/herd/reader.sh"]
"#;
    let image_toml = tmp.path().join("reader.toml");
    fs::write(&image_toml, toml).unwrap();
    let out = tmp.path().join("out");
    run_ok(herd_build(&image_toml, &out, 1_700_000_000).arg("--quiet"));
    let disk = disk_copy(&out, tmp.path());
    let (off, _) = partition(&manifest(&out), "usr-a");

    let vm1 = vm(&disk, &tmp.path().join("run.log"), OnReboot::Exit);
    let read = vm1.wait_for("reader: block ", BOOT).unwrap();
    assert!(read.contains(" read") && !read.contains("failed"), "{read}");
    let block: u64 = read
        .split("reader: block ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no block number in {read:?}"));
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        let at = off + block * 4096 + 100;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x01;
        f.write_all_at(&b, at).unwrap();
    }
    let found = vm1
        .wait_for(&format!("data block {block} is corrupted"), BOOT)
        .unwrap();
    assert!(found.contains("verity"), "{found}");
    // The kernel restarts the machine; QEMU exits on the reboot.
    vm1.wait_exit(Duration::from_secs(60)).unwrap();
    let lines = vm1.lines();
    assert!(
        !lines.iter().any(|l| l.contains("read failed")),
        "the corrupted read returned an error to the reader and the node ran on"
    );

    let vm2 = vm(&disk, &tmp.path().join("next.log"), OnReboot::Exit);
    let fatal = vm2.wait_for("herd-init: FATAL", BOOT).unwrap();
    assert!(
        fatal.contains("dm-verity rejected /usr of slot a"),
        "the next boot names the corrupted slot: {fatal}"
    );
    vm2.wait_exit(Duration::from_secs(60)).unwrap();
}

#[test]
fn wrong_root_hash_names_the_missing_partition_and_reboots() {
    let image = probe_image();
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(image, tmp.path());
    // Point the UKI's command line at a root hash no partition belongs to.
    let usrhash = manifest(image)["usr"]["usrhash"]
        .as_str()
        .unwrap()
        .to_string();
    let wrong = "0123456789abcdef".repeat(4);
    let (old_uuid, _) = usrhash.split_at(32);
    let old_uuid = format!(
        "{}-{}-{}-{}-{}",
        &old_uuid[0..8],
        &old_uuid[8..12],
        &old_uuid[12..16],
        &old_uuid[16..20],
        &old_uuid[20..32]
    );
    let local = tmp.path().join("uki.efi");
    let edited = uki_with_cmdline(&image.join("boot/uki-a.efi"), |c| {
        c.replace(&usrhash, &wrong)
            .replace(&old_uuid, "01234567-89ab-cdef-0123-456789abcdef")
    });
    fs::write(&local, edited).unwrap();
    put_uki(&disk, &local, "herd-a+3-0.efi");
    let vm = vm(&disk, &tmp.path().join("wrong.log"), OnReboot::Exit);
    let line = vm.wait_for("herd-init: FATAL", BOOT).unwrap();
    assert!(
        line.contains("USR partition") && line.contains("01234567-89ab-cdef-0123-456789abcdef"),
        "the fatal line names what is missing: {line}"
    );
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(
        esp_entries(&disk),
        ["herd-a+2-1.efi"],
        "the failed try was counted"
    );
}

/// A copy of the image's disk as an attacker's stick: its ESP cannot boot
/// (so the firmware goes on to the real disk), its STATE holds
/// `/var/probe` = `stick`, which the probe prints as `var kept stick`.
/// With `new_esp_uuid`, its ESP gets a PARTUUID of its own (a stick made
/// from another image); without, it is a byte copy with every PARTUUID the
/// boot disk has.
fn stick(image: &Path, dir: &Path, new_esp_uuid: bool) -> PathBuf {
    let stick = disk_copy_named(image, dir, "stick.raw");
    run_ok(
        Command::new("mdel")
            .arg("-i")
            .arg(format!("{}@@1M", stick.display()))
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
    );
    let m = manifest(image);
    let (off, len) = partition(&m, "state");
    let state = dir.join("stick-state.img");
    extract(&stick, off, len, &state);
    let marker = dir.join("probe");
    fs::write(&marker, "stick\n").unwrap();
    for req in [
        "mkdir var".to_string(),
        format!("write {} var/probe", marker.display()),
    ] {
        run_ok(
            Command::new("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(&req)
                .arg(&state),
        );
    }
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", state.display()))
            .arg(format!("of={}", stick.display()))
            .args(["bs=1M", &format!("seek={}", off >> 20), "conv=notrunc"])
            .arg("status=none"),
    );
    if new_esp_uuid {
        run_ok(
            Command::new("sgdisk")
                .args(["--partition-guid=1:R"])
                .arg(&stick),
        );
    }
    stick
}

#[test]
fn a_second_disk_with_the_same_usr_never_provides_etc_and_var() {
    let image = probe_image();
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(image, tmp.path());
    let stick = stick(image, tmp.path(), true);
    let vm = vm_with(&disk, &tmp.path().join("stick.log"), OnReboot::Exit, |c| {
        c.disks_before.push(stick.clone())
    });
    vm.wait_for(
        "herd-init: boot disk: the boot loader ran from the ESP with PARTUUID",
        BOOT,
    )
    .unwrap();
    vm.wait_for(
        "herd-init: boot disk: ignoring vda: it carries the /usr partitions of this usrhash too, but the node boots from vdb",
        BOOT,
    )
    .unwrap();
    vm.wait_for("herd-init: STATE /dev/vdb6 mounted", BOOT)
        .unwrap();
    vm.wait_for("herd-init: ready", BOOT).unwrap();
    // The boot disk's fresh STATE, not the stick's.
    vm.wait_for("probe: var first boot", BOOT).unwrap();
    assert!(
        !vm.lines().iter().any(|l| l.contains("var kept stick")),
        "the stick's STATE was used"
    );
    vm.kill();
}

#[test]
fn a_byte_copy_of_the_boot_disk_is_refused_and_the_try_counted() {
    let image = probe_image();
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(image, tmp.path());
    let stick = stick(image, tmp.path(), false);
    let vm = vm_with(&disk, &tmp.path().join("copy.log"), OnReboot::Exit, |c| {
        c.disks_before.push(stick.clone())
    });
    let line = vm.wait_for("herd-init: FATAL", BOOT).unwrap();
    assert!(
        line.contains("the ESP the boot loader ran from (LoaderDevicePartUUID ")
            && line.contains(
                "is on more than one disk (vda, vdb): herd-init cannot tell which one booted"
            ),
        "{line}"
    );
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(!vm.lines().iter().any(|l| l.contains("var kept stick")));
    assert_eq!(
        esp_entries(&disk),
        ["herd-a+2-1.efi"],
        "the failed try was counted"
    );
}

#[test]
fn direct_kernel_boot_with_two_carrying_disks_is_refused() {
    // No boot loader, so no LoaderDevicePartUUID: exactly one disk may
    // carry the /usr partitions.
    let image = probe_image();
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(image, tmp.path());
    let stick = stick(image, tmp.path(), true);
    let cmdline = manifest(image)["cmdline"].as_str().unwrap().to_string();
    let vm = vm_with(&disk, &tmp.path().join("direct.log"), OnReboot::Exit, |c| {
        c.disks_before.push(stick.clone());
        c.extra_args.extend([
            "-kernel".into(),
            image.join("boot/linux").display().to_string(),
            "-initrd".into(),
            image.join("boot/initrd").display().to_string(),
            "-append".into(),
            cmdline,
        ]);
    });
    vm.wait_for(
        "herd-init: boot disk: the boot loader set no LoaderDevicePartUUID",
        BOOT,
    )
    .unwrap();
    let line = vm.wait_for("herd-init: FATAL", BOOT).unwrap();
    assert!(
        line.contains("the boot loader did not say which disk it ran from")
            && line.contains(
                "more than one disk carries the /usr partitions of this usrhash (vda, vdb)"
            ),
        "{line}"
    );
    // The fatal path reboots (QEMU exits with -no-reboot).
    vm.wait_for("herd-init: rebooting in 3 s", BOOT).unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(!vm.lines().iter().any(|l| l.contains("var kept stick")));
}
