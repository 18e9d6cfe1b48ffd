//! The real Debian packages: fetch, verify, unpack, resolve modules.
//! Packages come from the test cache ($HERD_CACHE or <workspace>/.cache/debs),
//! fetched with apt-get when missing.

use std::path::PathBuf;
use std::process::Command;

use herd_buildroot::{Cache, Deb, Fetch, KernelPackage, Lock};
use sha2::Digest;

fn lock() -> Lock {
    Lock::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("debian.lock")).unwrap()
}

fn cache_dir() -> PathBuf {
    std::env::var_os("HERD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/debs"))
}

fn deb(name: &str) -> PathBuf {
    let l = lock();
    Cache::new(cache_dir())
        .ensure(l.get(name).unwrap(), Fetch::AptGet, &|m| eprintln!("{m}"))
        .unwrap()
}

#[test]
fn tampered_deb_is_rejected_and_moved_aside() {
    let real = deb("systemd-boot-efi");
    let l = lock();
    let pkg = l.get("systemd-boot-efi").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(&real).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x20;
    let target = dir.path().join(pkg.file_name());
    std::fs::write(&target, bytes).unwrap();
    let e = Cache::new(dir.path().to_path_buf())
        .ensure(pkg, Fetch::Never, &|_| {})
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("sha256 mismatch") && msg.contains(&pkg.sha256),
        "{msg}"
    );
    assert!(!target.exists(), "the bad file stayed under its name");
    assert!(dir
        .path()
        .join(format!("{}.rejected", pkg.file_name()))
        .exists());
}

#[test]
fn missing_and_offline_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let l = lock();
    let e = Cache::new(dir.path().into())
        .ensure(l.get("busybox-static").unwrap(), Fetch::Never, &|_| {})
        .unwrap_err();
    assert!(
        e.to_string().contains("not in the cache") && e.to_string().contains("--offline"),
        "{e}"
    );
}

#[test]
fn fetches_a_real_package_with_apt_get() {
    let dir = tempfile::tempdir().unwrap();
    let l = lock();
    let pkg = l.get("busybox-static").unwrap();
    let msgs = std::cell::RefCell::new(Vec::new());
    let p = Cache::new(dir.path().into())
        .ensure(pkg, Fetch::AptGet, &|m| {
            msgs.borrow_mut().push(m.to_string())
        })
        .unwrap();
    assert!(p.ends_with(pkg.file_name()));
    assert!(
        msgs.borrow().iter().any(|m| m.contains("apt-get")),
        "{:?}",
        msgs.borrow()
    );
    // Nothing else left behind (no temp dirs, no partial files).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn unpack_matches_dpkg_deb() {
    let p = deb("systemd-boot-efi");
    let want = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
    let t = Deb::open(&p).unwrap().unpack(&|x| x == want).unwrap();
    let herd_fstree::Node::File { data, meta } = t.get(want).unwrap() else {
        panic!("not a file")
    };
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&p)
        .arg(dir.path())
        .status()
        .expect("dpkg-deb");
    assert!(st.success());
    assert!(std::fs::read(dir.path().join(want)).unwrap() == data[..]);
    assert_eq!(meta.mode, 0o755, "mode as in the package");
}

#[test]
fn kernel_modules_resolve_with_dependencies() {
    let p = deb("linux-image-6.1.0-56-cloud-amd64");
    let cache = Cache::new(cache_dir());
    let l = lock();
    let kernel = l.get("linux-image-6.1.0-56-cloud-amd64").unwrap();
    let (path, opened) = cache.open(kernel, Fetch::Never, &|_| {}).unwrap();
    assert_eq!(path, p);
    let k = KernelPackage::from_deb(&opened).unwrap();
    assert_eq!(k.version, "6.1.0-56-cloud-amd64");
    assert!(k.vmlinuz.len() > 1_000_000);
    assert!(k.config.contains("CONFIG_DM_VERITY=m"));
    let names = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let set = k
        .resolve(&names(&["dm-verity", "virtio_pci", "vfat", "ext4"]))
        .unwrap();
    let order: Vec<&str> = set.load_order.iter().map(|m| m.name.as_str()).collect();
    let pos = |n: &str| {
        order
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} missing from {order:?}"))
    };
    for dep in ["reed_solomon", "dm_mod", "dm_bufio"] {
        assert!(pos(dep) < pos("dm_verity"), "{order:?}");
    }
    for dep in [
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio",
        "virtio_ring",
    ] {
        assert!(pos(dep) < pos("virtio_pci"), "{order:?}");
    }
    assert!(pos("fat") < pos("vfat"));
    assert_eq!(set.builtin, vec!["ext4"]);
    assert!(set
        .load_list("/lib/modules/x/")
        .contains("/lib/modules/x/kernel/drivers/md/dm-verity.ko\n"));
    // Independent groups: the device-mapper chain, the virtio chain and the
    // FAT chain share no module, and each keeps its dependencies first.
    let groups: Vec<Vec<&str>> = set
        .groups()
        .iter()
        .map(|g| g.iter().map(|m| m.name.as_str()).collect())
        .collect();
    let group_of = |n: &str| groups.iter().position(|g| g.contains(&n)).unwrap();
    assert_eq!(group_of("dm_mod"), group_of("dm_verity"), "{groups:?}");
    assert_eq!(
        group_of("virtio_ring"),
        group_of("virtio_pci"),
        "{groups:?}"
    );
    assert_ne!(group_of("dm_verity"), group_of("virtio_pci"), "{groups:?}");
    assert_ne!(group_of("vfat"), group_of("virtio_pci"), "{groups:?}");
    assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), order.len());
    for g in &groups {
        let mut seen = Vec::new();
        for m in set
            .load_order
            .iter()
            .filter(|m| g.contains(&m.name.as_str()))
        {
            for d in &m.deps {
                assert!(
                    seen.contains(&d.as_str()),
                    "{} before its dependency {d}",
                    m.name
                );
            }
            seen.push(m.name.as_str());
        }
        for w in g.windows(2) {
            assert!(pos(w[0]) < pos(w[1]), "group {g:?} keeps the load order");
        }
    }
    let list = set.load_list("/");
    assert_eq!(list.split("\n\n").count(), groups.len(), "{list}");
    let e = k.resolve(&names(&["dm-verty"])).unwrap_err();
    assert!(e.to_string().contains("did you mean \"dm_verity\""), "{e}");
    // The second open comes from the unpacked cache and gives the same bytes.
    let (_, again) = cache.open(kernel, Fetch::Never, &|_| {}).unwrap();
    assert_eq!(KernelPackage::from_deb(&again).unwrap().vmlinuz, k.vmlinuz);
}

#[test]
fn the_unpacked_archive_is_used_only_as_the_lock_pins_it() {
    let real = deb("systemd-boot-efi");
    let pkg = lock().get("systemd-boot-efi").unwrap().clone();
    assert!(pkg.data_sha256.is_some(), "the lock pins data_sha256");
    let dir = tempfile::tempdir().unwrap();
    let cached = dir.path().join(pkg.file_name());
    std::fs::copy(&real, &cached).unwrap();
    let cache = Cache::new(dir.path().to_path_buf());
    let fresh = Deb::open(&cached).unwrap().tar().to_vec();
    // The lock's value is what dpkg-deb gives, an independent referee.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | sha256sum",
            cached.display()
        ))
        .output()
        .unwrap();
    let dpkg = String::from_utf8_lossy(&out.stdout);
    assert_eq!(dpkg.split_whitespace().next(), pkg.data_sha256.as_deref());
    // First open: decompressed from the .deb and kept in the cache.
    assert!(cache.open_unpacked(&pkg).is_none());
    assert_eq!(
        cache.open(&pkg, Fetch::Never, &|_| {}).unwrap().1.tar(),
        &fresh[..]
    );
    let tar = dir.path().join(format!("unpacked/{}.tar", pkg.sha256));
    assert_eq!(std::fs::read(&tar).unwrap(), fresh);
    assert_eq!(cache.open_unpacked(&pkg).unwrap().tar(), &fresh[..]);
    // A changed copy (a flipped byte, a truncation, a forged archive with
    // a checksum file beside it) is never used: the .deb is unpacked again
    // and the copy replaced.
    let mut bad = fresh.clone();
    bad[fresh.len() / 2] ^= 1;
    for damaged in [bad, fresh[..fresh.len() - 512].to_vec()] {
        std::fs::write(&tar, &damaged).unwrap();
        let sum = format!("{:x}", sha2::Sha256::digest(&damaged));
        std::fs::write(tar.with_extension("tar.sha256"), &sum).unwrap();
        assert!(cache.open_unpacked(&pkg).is_none());
        assert_eq!(
            cache.open(&pkg, Fetch::Never, &|_| {}).unwrap().1.tar(),
            &fresh[..]
        );
        assert_eq!(std::fs::read(&tar).unwrap(), fresh, "replaced in the cache");
    }
    // Without data_sha256 the copy is never trusted, not even a good one.
    let unpinned = herd_buildroot::LockedPackage {
        data_sha256: None,
        ..pkg.clone()
    };
    assert!(cache.open_unpacked(&unpinned).is_none());
    let mut forged = fresh.clone();
    forged[fresh.len() / 3] ^= 1;
    std::fs::write(&tar, &forged).unwrap();
    assert_eq!(
        cache
            .open(&unpinned, Fetch::Never, &|_| {})
            .unwrap()
            .1
            .tar(),
        &fresh[..]
    );
    // A wrong pin is an error that names the right value.
    let wrong = herd_buildroot::LockedPackage {
        data_sha256: Some("0".repeat(64)),
        ..pkg.clone()
    };
    let e = cache
        .open(&wrong, Fetch::Never, &|_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(pkg.data_sha256.as_deref().unwrap()) && e.contains("data_sha256 is wrong"),
        "{e}"
    );
}
