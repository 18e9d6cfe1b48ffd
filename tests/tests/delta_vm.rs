//! Delta updates in QEMU (issue 17): a node running 0.1.0 from slot A takes
//! 0.2.0, in which one herd binary changed, from a repository served by
//! `herd serve` on the host's loopback (through a guestfwd). The updater
//! assembles slot B from the running slot's chunks plus Range requests; its
//! log says how many bytes came from each; the node boots 0.2.0 from slot B
//! and blesses it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herd_tests::update::*;
use herd_tests::*;

const BOOT: Duration = Duration::from_secs(180);

/// The probe image plus the updater at `version`, built from the node
/// binaries in `bins`, with `extra` (a host file) carried as
/// /usr/aa-ballast: first in the image's order.
fn build(d: &Path, version: &str, root: &Path, bins: &Path, extra: Option<&Path>) -> PathBuf {
    let mut t = updater_image(version, root);
    if let Some(x) = extra {
        t.push_str(&usr_file("aa-ballast", x));
    }
    let out = d.join(format!("out-{version}"));
    build_image(&write_image(d, version, &t), &out, bins);
    out
}

/// The node binaries with herd-init changed: another ELF section of
/// `kib` KiB of incompressible bytes (the same every run), so the binary
/// still runs but its file differs from the original from that section on.
fn changed_bins(d: &Path, kib: usize) -> PathBuf {
    let bins = d.join("bins-0.2.0");
    std::fs::create_dir_all(&bins).unwrap();
    for b in ["herd-init", "herd-update"] {
        std::fs::copy(bin_dir().join(b), bins.join(b)).unwrap();
    }
    let extra = d.join("extra-section");
    noise(&extra, kib, 0x9e37_79b9_7f4a_7c15);
    run_ok(
        Command::new("objcopy")
            .arg("--add-section")
            .arg(format!(".herd_test={}", extra.display()))
            .arg(bins.join("herd-init")),
    );
    bins
}

/// The figure before `what` in a delta line ("N bytes from the local slot").
fn figure(line: &str, what: &str) -> u64 {
    let head = line
        .split(what)
        .next()
        .unwrap_or_else(|| panic!("no {what:?} in {line}"));
    head.split_whitespace()
        .last()
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no figure before {what:?} in {line}"))
}

#[test]
fn updates_by_delta_when_one_binary_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let r = Repo::new(d, "repo");
    let root = r.root();
    let v1 = build(d, "0.1.0", &root, &bin_dir(), None);
    let v2 = build(d, "0.2.0", &root, &changed_bins(d, 256), None);
    r.publish(&v1, &[]);
    let (_srv, port) = herd_serve(&r.dir);
    let disk = copy_disk(&v1, d);
    let vm = boot_node(&disk, port, &d.join("console.log"));
    vm.wait_for("ready slot=a version=0.1.0", BOOT).unwrap();
    vm.wait_for("updater: 0.1.0 is the newest release on stable", BOOT)
        .unwrap();

    r.publish(&v2, &[]);
    let usr = vm
        .wait_for("updater: delta usr.img of 0.2.0:", BOOT)
        .unwrap();
    let total = vm.wait_for("updater: delta update 0.2.0:", BOOT).unwrap();
    vm.wait_for("updater: slot b verified against usrhash", BOOT)
        .unwrap();
    for line in [&usr, &total] {
        let local = figure(line, "bytes from the local slot");
        let network = figure(line, "from the network");
        let size = figure(line, "bytes)");
        // The changed section is 256 KiB of incompressible bytes: the
        // network carries that and little more (the index, the squashfs
        // blocks around it), the rest of the slot is copied locally.
        assert!(network >= 256 << 10, "{line}");
        assert!(
            network * 5 < size,
            "network much smaller than the payload: {line}"
        );
        assert!(
            local * 10 > size * 7,
            "most bytes from the local slot: {line}"
        );
    }
    let ready = vm.wait_for("ready slot=b version=0.2.0", BOOT).unwrap();
    assert!(ready.contains("herd-init: ready"), "{ready}");
    vm.wait_for("updater: now running 0.2.0 from slot b", BOOT)
        .unwrap();
    vm.wait_for("blessed boot entry herd-b+", BOOT).unwrap();
    vm.kill();
}

/// A TCP proxy from 127.0.0.1 to `upstream` that, once `slow` is set,
/// passes the server's answers at about 256 KiB/s, and counts the bytes
/// it passed: a slow link, so a power cut lands while a delta is written.
struct SlowLink {
    port: u16,
    slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    passed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SlowLink {
    fn new(upstream: u16) -> SlowLink {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering::Relaxed;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let passed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, p) = (slow.clone(), passed.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut down) = conn else { continue };
                let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (s, p) = (s.clone(), p.clone());
                let (mut down2, mut up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut down2, &mut up2);
                    let _ = up2.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let mut b = [0u8; 4096];
                    loop {
                        let n = match up.read(&mut b) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if down.write_all(&b[..n]).is_err() {
                            break;
                        }
                        p.fetch_add(n as u64, Relaxed);
                        if s.load(Relaxed) {
                            std::thread::sleep(Duration::from_micros(n as u64 * 4));
                        }
                    }
                    let _ = down.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        SlowLink { port, slow, passed }
    }

    fn passed(&self) -> u64 {
        self.passed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Power cut while the delta writes slot B: QEMU is killed once the slow
/// link has passed part of what the delta fetches. On the next boot 0.1.0
/// comes up, the update starts again over what slot B holds, finishes, and
/// 0.2.0 boots from slot B, blessed; what the cut left written in slot B
/// is reused in place (this caught scan_in_place taking a block device's
/// size from its metadata, 0, so nothing was ever found in place on a
/// node).
#[test]
fn a_power_cut_mid_delta_resumes_and_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let r = Repo::new(d, "repo");
    let root = r.root();
    // 12 MiB the same in both releases, ahead of the changed binary: the
    // updater starts writeback every 8 MiB it writes, so what it wrote
    // before the cut is on the disk when the power goes.
    let ballast = d.join("ballast");
    noise(&ballast, 12 << 10, 0x2545_f491_4f6c_dd1d);
    let v1 = build(d, "0.1.0", &root, &bin_dir(), Some(&ballast));
    // 2 MiB changed: about 8 s through the slow link.
    let v2 = build(d, "0.2.0", &root, &changed_bins(d, 2048), Some(&ballast));
    r.publish(&v1, &[]);
    let (_srv, port) = herd_serve(&r.dir);
    let link = SlowLink::new(port);
    let disk = copy_disk(&v1, d);
    let vm = boot_node(&disk, link.port, &d.join("console-1.log"));
    vm.wait_for("ready slot=a version=0.1.0", BOOT).unwrap();
    vm.wait_for("updater: 0.1.0 is the newest release on stable", BOOT)
        .unwrap();

    link.slow.store(true, std::sync::atomic::Ordering::Relaxed);
    let before = link.passed();
    r.publish(&v2, &[]);
    vm.wait_for("updater: installing herd 0.2.0 into slot b", BOOT)
        .unwrap();
    // The channel, the indexes and usr.verity's delta are well under
    // 1 MiB; usr.img's fetch is over 2 MiB: the cut lands inside it.
    let t0 = std::time::Instant::now();
    while link.passed() - before < 1 << 20 {
        assert!(t0.elapsed() < BOOT, "the delta never fetched 1 MiB");
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = vm.lines();
    assert!(
        !lines.iter().any(|l| l.contains("delta usr.img of 0.2.0")),
        "the cut came after usr.img was complete: {lines:?}"
    );
    vm.kill();
    let e = esp_entries(&disk);
    assert!(
        !e.iter().any(|n| n.starts_with("herd-b")),
        "no boot entry for a half-written slot: {e:?}"
    );

    // Power back on, full speed: 0.1.0 boots, the delta runs again over
    // the partly written slot and finishes.
    link.slow.store(false, std::sync::atomic::Ordering::Relaxed);
    let vm = boot_node(&disk, link.port, &d.join("console-2.log"));
    vm.wait_for("ready slot=a version=0.1.0", BOOT).unwrap();
    let usr = vm
        .wait_for("updater: delta usr.img of 0.2.0:", BOOT)
        .unwrap();
    eprintln!("after the power cut: {usr}");
    let network = figure(&usr, "from the network");
    let size = figure(&usr, "bytes)");
    assert!(network < size / 2, "{usr}");
    // The partly written slot was a source: chunks the cut left in place.
    assert!(figure(&usr, "already in place") >= 8 << 20, "{usr}");
    vm.wait_for("updater: slot b verified against usrhash", BOOT)
        .unwrap();
    vm.wait_for("ready slot=b version=0.2.0", BOOT).unwrap();
    vm.wait_for("updater: now running 0.2.0 from slot b", BOOT)
        .unwrap();
    vm.wait_for("blessed boot entry herd-b+", BOOT).unwrap();
    vm.kill();
}
