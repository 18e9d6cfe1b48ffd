//! `herd build` end to end, checked by independent tools: sfdisk, sgdisk,
//! fsck.vfat, mtools, unsquashfs, veritysetup, e2fsck.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use herd_tests::*;

fn sha(out: &Path, name: &str) -> String {
    manifest(out)["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"] == name)
        .unwrap_or_else(|| panic!("{name} not in build.json"))["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A package cache in `dir`/cache holding only the test cache's .debs
/// (no unpacked archives, no compressed blocks).
fn fresh_cache(dir: &Path) -> std::path::PathBuf {
    // The shared cache is filled by the first build (on a fresh machine this
    // test may run before any other).
    default_image();
    let cache = dir.join("cache");
    fs::create_dir(&cache).unwrap();
    for e in fs::read_dir(cache_dir()).unwrap() {
        let e = e.unwrap();
        if e.path().extension().is_some_and(|x| x == "deb") {
            fs::copy(e.path(), cache.join(e.file_name())).unwrap();
        }
    }
    cache
}

#[test]
fn disk_passes_gpt_referees() {
    let out = default_image();
    let disk = out.join("disk.raw");
    let v = run_ok(Command::new("sfdisk").arg("--verify").arg(&disk));
    assert!(!v.contains("problem"), "sfdisk --verify: {v}");
    let sg = run_ok(Command::new("sgdisk").arg("-v").arg(&disk));
    assert!(sg.contains("No problems found"), "sgdisk -v: {sg}");

    let json: serde_json::Value =
        serde_json::from_str(&run_ok(Command::new("sfdisk").arg("--json").arg(&disk))).unwrap();
    let parts = json["partitiontable"]["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "esp",
            "usr-a",
            "usr-a-verity",
            "usr-b",
            "usr-b-verity",
            "state"
        ]
    );
    let types: Vec<String> = parts
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_lowercase())
        .collect();
    assert_eq!(types[0], "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    assert_eq!(types[1], "8484680c-9521-48c6-9c11-b0720656f69e");
    assert_eq!(types[2], "77ff5f63-e7b6-4633-acf4-1565b864c0e6");

    // DPS: USR-A's UUID is the first half of the root hash, its verity
    // partition's the second half.
    let m = manifest(out);
    let hash = m["usr"]["usrhash"].as_str().unwrap();
    let uuid = |i: usize| {
        parts[i]["uuid"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .replace('-', "")
    };
    assert_eq!(uuid(1), hash[..32]);
    assert_eq!(uuid(2), hash[32..]);
    assert!(m["cmdline"]
        .as_str()
        .unwrap()
        .contains(&format!("usrhash={hash} ")));
}

#[test]
fn esp_passes_fsck_and_holds_the_boot_files() {
    let out = default_image();
    let m = manifest(out);
    let (off, len) = partition(&m, "esp");
    let tmp = tempfile::tempdir().unwrap();
    let esp = tmp.path().join("esp.img");
    extract(&out.join("disk.raw"), off, len, &esp);
    let fsck = run_ok(Command::new("fsck.vfat").arg("-n").arg("-v").arg(&esp));
    assert!(fsck.contains("32 bit entries"), "not FAT32: {fsck}");
    let ukis = run_ok(
        Command::new("mdir")
            .args(["-b", "-i"])
            .arg(&esp)
            .arg("::/EFI/Linux"),
    );
    assert!(ukis.contains("herd-a+3-0.efi"), "EFI/Linux: {ukis}");
    // Slot A's UKI on the ESP is byte-identical to the payload's, binutils
    // reads it as a PE image with the four sections, and its sections are
    // the kernel, the initramfs and the command line of build.json.
    let uki = tmp.path().join("uki.efi");
    run_ok(
        Command::new("mcopy")
            .arg("-i")
            .arg(&esp)
            .arg("::/EFI/Linux/herd-a+3-0.efi")
            .arg(&uki),
    );
    let bytes = fs::read(&uki).unwrap();
    assert_eq!(bytes, fs::read(out.join("boot/uki-a.efi")).unwrap());
    let od = run_ok(Command::new("objdump").arg("-h").arg(&uki));
    for s in [".osrel", ".cmdline", ".linux", ".initrd", ".sdmagic"] {
        assert!(od.contains(s), "no {s} in\n{od}");
    }
    let parts = herd_uki::UkiParts::from_uki(&bytes).unwrap();
    assert_eq!(parts.linux, fs::read(out.join("boot/linux")).unwrap());
    assert_eq!(parts.initrd, fs::read(out.join("boot/initrd")).unwrap());
    assert_eq!(parts.cmdline, m["cmdline"].as_str().unwrap().as_bytes());
    assert!(String::from_utf8_lossy(parts.osrel).contains("IMAGE_VERSION=0.1.0"));
    let b = herd_uki::UkiParts::from_uki(&fs::read(out.join("boot/uki-b.efi")).unwrap())
        .unwrap()
        .cmdline
        .to_vec();
    assert_eq!(
        String::from_utf8(b).unwrap(),
        m["cmdline"]
            .as_str()
            .unwrap()
            .replace("herd.slot=a", "herd.slot=b")
    );
    // build.json's predictions are `herd pcr predict`'s.
    let p: serde_json::Value = serde_json::from_str(&run_ok(
        Command::new(herd())
            .args(["pcr", "predict", "--json"])
            .arg(out),
    ))
    .unwrap();
    for slot in ["a", "b"] {
        assert_eq!(p[slot], m["measured"]["slots"][slot], "slot {slot}");
    }
    let bl = tmp.path().join("boot.efi");
    run_ok(
        Command::new("mcopy")
            .arg("-i")
            .arg(&esp)
            .arg("::/EFI/BOOT/BOOTX64.EFI")
            .arg(&bl),
    );
    assert_eq!(
        fs::read(&bl).unwrap(),
        fs::read("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").unwrap(),
        "BOOTX64.EFI is Debian's systemd-boot"
    );
}

#[test]
fn usr_is_squashfs_with_the_expected_files() {
    let out = default_image();
    let list = run_ok(
        Command::new("unsquashfs")
            .arg("-lls")
            .arg(out.join("usr.img")),
    );
    let m = manifest(out);
    let kver = m["kernel"]["release"].as_str().unwrap();
    for want in [
        "squashfs-root/bin/herd-init".to_string(),
        "squashfs-root/lib/os-release".to_string(),
        "squashfs-root/lib/herd/init.toml".to_string(),
        format!("squashfs-root/lib/modules/{kver}/herd-modules"),
        format!("squashfs-root/lib/modules/{kver}/kernel/drivers/net/virtio_net.ko"),
        format!("squashfs-root/lib/modules/{kver}/kernel/fs/fat/vfat.ko"),
    ] {
        assert!(
            list.contains(&want),
            "unsquashfs -lls lacks {want}:\n{list}"
        );
    }
    // Only what was asked for: no unrelated modules.
    assert!(!list.contains("kernel/sound/"), "{list}");
    assert!(list.contains("-rwxr-xr-x root/root"), "{list}");
    let sb = run_ok(
        Command::new("unsquashfs")
            .arg("-s")
            .arg(out.join("usr.img")),
    );
    assert!(sb.contains("Compression zstd"), "{sb}");
}

#[test]
fn veritysetup_accepts_the_tree_and_rejects_a_flipped_byte() {
    let out = default_image();
    let m = manifest(out);
    let hash = m["usr"]["usrhash"].as_str().unwrap();
    let data = out.join("usr.img");
    let tree = out.join("usr.verity");
    run_ok(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&data)
            .arg(&tree)
            .arg(hash),
    );
    let dump = run_ok(Command::new("veritysetup").arg("dump").arg(&tree));
    assert!(
        dump.contains(m["usr"]["verity_salt"].as_str().unwrap()),
        "{dump}"
    );

    // The same check on the partitions inside disk.raw.
    let tmp = tempfile::tempdir().unwrap();
    let (doff, dlen) = partition(&m, "usr-a");
    let (voff, vlen) = partition(&m, "usr-a-verity");
    let d = tmp.path().join("usr-a");
    let v = tmp.path().join("usr-a-verity");
    let squash_len = m["usr"]["squashfs_bytes"].as_u64().unwrap();
    assert!(squash_len <= dlen);
    extract(&out.join("disk.raw"), doff, squash_len, &d);
    extract(&out.join("disk.raw"), voff, vlen, &v);
    run_ok(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&d)
            .arg(&v)
            .arg(hash),
    );

    // One flipped byte in the middle of the squashfs: rejected.
    let mut bytes = fs::read(&d).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&d, bytes).unwrap();
    let bad = run(Command::new("veritysetup")
        .arg("verify")
        .arg(&d)
        .arg(&v)
        .arg(hash));
    assert!(
        !bad.status.success(),
        "veritysetup accepted a corrupted /usr"
    );
}

#[test]
fn state_is_a_clean_ext4() {
    let out = default_image();
    let m = manifest(out);
    let (off, len) = partition(&m, "state");
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("state.img");
    extract(&out.join("disk.raw"), off, len, &st);
    run_ok(Command::new("e2fsck").args(["-f", "-n"]).arg(&st));
    let label = run_ok(Command::new("e2label").arg(&st));
    assert_eq!(label.trim(), "herd-state");
}

#[test]
fn build_json_describes_outputs_and_packages() {
    let out = default_image();
    let m = manifest(out);
    // Every size and sha256 as the files have them, by sha256sum (disk.raw's
    // is taken from its pieces in memory while it is written).
    for o in m["outputs"].as_array().unwrap() {
        let path = out.join(o["path"].as_str().unwrap());
        assert_eq!(
            o["size"].as_u64().unwrap(),
            fs::metadata(&path).unwrap().len(),
            "{path:?}"
        );
        let sum = run_ok(Command::new("sha256sum").arg(&path));
        assert_eq!(
            Some(o["sha256"].as_str().unwrap()),
            sum.split_whitespace().next(),
            "{path:?}"
        );
    }
    let pkgs: Vec<&str> = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(pkgs.contains(&"systemd-boot-efi"));
    assert!(pkgs.iter().any(|p| p.starts_with("linux-image-")));
    for p in m["packages"].as_array().unwrap() {
        assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
        assert!(!p["version"].as_str().unwrap().is_empty());
    }
    // The /usr payload target: squashfs + verity <= 40 MiB.
    let payload =
        m["usr"]["squashfs_bytes"].as_u64().unwrap() + m["usr"]["verity_bytes"].as_u64().unwrap();
    assert!(payload <= 40 << 20, "/usr payload is {payload} bytes");
}

#[test]
fn two_builds_are_byte_identical_and_unprivileged() {
    let first = default_image();
    // Second build as an unprivileged user (nobody), from a cache and into a
    // directory that user can use, with the same SOURCE_DATE_EPOCH.
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let cache = fresh_cache(tmp.path());
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).unwrap();
    // Everything the build reads is copied somewhere `nobody` can read it:
    // the checkout itself may sit in a private directory.
    let root = tmp.path();
    // The node binaries an image may list (the default image's among them).
    fs::create_dir_all(root.join("bin")).unwrap();
    for b in ["herd-init", "herd-provision", "herd-update", "herd-agent"] {
        if bin_dir().join(b).exists() {
            fs::copy(bin_dir().join(b), root.join("bin").join(b)).unwrap();
        }
    }
    for (from, to) in [
        (herd(), root.join("herd")),
        (
            workspace().join("images/default.toml"),
            root.join("images/default.toml"),
        ),
        (
            workspace().join("buildroot/debian.lock"),
            root.join("buildroot/debian.lock"),
        ),
    ] {
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&from, &to).unwrap();
        fs::set_permissions(to.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o777)).unwrap();
    let out = root.join("out");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    cmd.arg(root.join("herd"))
        .arg("build")
        .arg(root.join("images/default.toml"));
    cmd.arg("--out")
        .arg(&out)
        .arg("--bin-dir")
        .arg(root.join("bin"));
    cmd.arg("--cache")
        .arg(&cache)
        .arg("--offline")
        .arg("--quiet");
    cmd.env("SOURCE_DATE_EPOCH", "1700000000").env("HOME", root);
    let o = run(&mut cmd);
    assert!(
        o.status.success(),
        "unprivileged build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let uid = run_ok(
        Command::new("stat")
            .args(["-c", "%u"])
            .arg(out.join("disk.raw")),
    );
    assert_eq!(uid.trim(), "65534", "the build really ran as nobody");
    for name in [
        "disk.raw",
        "usr.img",
        "usr.verity",
        "boot/linux",
        "boot/initrd",
        "boot/BOOTX64.EFI",
        "sbom.spdx.json",
        "boot/uki-a.efi",
        "boot/uki-b.efi",
    ] {
        assert_eq!(
            sha(first, name),
            sha(&out, name),
            "{name} differs between two builds"
        );
    }
    assert_eq!(
        fs::read(first.join("build.json")).unwrap(),
        fs::read(out.join("build.json")).unwrap()
    );
}

#[test]
fn a_damaged_block_cache_is_caught_and_never_changes_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = fresh_cache(tmp.path());
    let image = workspace().join("images/default.toml");
    let build = |out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let o = run(herd_build(&image, &out, 1_700_000_000)
            .arg("--cache")
            .arg(&cache)
            .arg("--offline")
            .args(extra));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "build failed: {err}");
        (out, err)
    };
    let (first, err) = build("first", &[]);
    assert!(err.contains(" 0 from the block cache"), "{err}");
    let blocks = cache.join("squashfs-blocks");
    let entries: Vec<_> = fs::read_dir(&blocks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(entries.len() > 10, "{} cached blocks", entries.len());

    let (warm, err) = build("warm", &[]);
    assert!(err.contains(" 0 blocks compressed"), "{err}");
    assert_eq!(sha(&warm, "usr.img"), sha(&first, "usr.img"));

    // Damage every compressed entry: one flipped byte at its end.
    let mut damaged = 0;
    for p in &entries {
        let mut b = fs::read(p).unwrap();
        if b.len() > 1 {
            *b.last_mut().unwrap() ^= 0x20;
            fs::write(p, b).unwrap();
            damaged += 1;
        }
    }
    let (after, err) = build("after", &[]);
    assert!(
        err.contains(&format!(
            "{damaged} cached blocks did not match their content and were compressed again"
        )),
        "{err}"
    );
    for name in ["usr.img", "disk.raw"] {
        assert_eq!(sha(&after, name), sha(&first, name), "{name}");
    }
    // --recompress neither reads nor fills the cache, and gives the same bytes.
    let (fresh, err) = build("fresh", &["--recompress"]);
    assert!(!err.contains("block cache"), "{err}");
    assert_eq!(sha(&fresh, "disk.raw"), sha(&first, "disk.raw"));
}
