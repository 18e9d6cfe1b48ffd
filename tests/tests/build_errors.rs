//! Bad input to `herd build`: each gets a clear error, and nothing
//! half-written is left looking like a finished build.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use herd_tests::*;

/// A copy of the default image description and lock in `dir`, with `edit`
/// applied to the description.
fn image_copy(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    fs::create_dir_all(dir.join("images")).unwrap();
    fs::create_dir_all(dir.join("buildroot")).unwrap();
    fs::copy(
        workspace().join("buildroot/debian.lock"),
        dir.join("buildroot/debian.lock"),
    )
    .unwrap();
    let text = fs::read_to_string(workspace().join("images/default.toml")).unwrap();
    let p = dir.join("images/default.toml");
    fs::write(&p, edit(text)).unwrap();
    p
}

fn build_fails(cmd: &mut Command) -> String {
    let o = run(cmd);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "build succeeded but should fail; stderr:\n{err}"
    );
    err
}

fn assert_no_build(out: &Path) {
    assert!(
        !out.join("build.json").exists(),
        "a failed build left build.json"
    );
    assert!(
        !out.join("disk.raw").exists(),
        "a failed build left disk.raw"
    );
    assert!(
        !out.join(".herd-build.partial").exists(),
        "a failed build left its staging directory"
    );
}

#[test]
fn unknown_key_is_reported_with_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image_copy(tmp.path(), |t| {
        t.replace("tries = 3", "tries = 3\ntimout = 5")
    });
    let line = fs::read_to_string(&img)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("timout"))
        .unwrap()
        + 1;
    let out = tmp.path().join("out");
    let err = build_fails(&mut herd_build(&img, &out, 0));
    assert!(
        err.contains(&format!("default.toml:{line}:1: unknown field `timout`")),
        "{err}"
    );
    assert_no_build(&out);
}

#[test]
fn missing_package_without_fetching_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image_copy(tmp.path(), |t| t);
    let out = tmp.path().join("out");
    let empty_cache = tmp.path().join("cache");
    fs::create_dir(&empty_cache).unwrap();
    let err = build_fails(
        herd_build(&img, &out, 0)
            .arg("--offline")
            .arg("--cache")
            .arg(&empty_cache),
    );
    // Packages are opened side by side: whichever is reported first, the
    // message names it, the cache and what to do.
    assert!(err.contains("getting package "), "{err}");
    assert!(err.contains("is not in the cache"), "{err}");
    assert!(err.contains("run without --offline"), "{err}");
    assert_no_build(&out);
}

#[test]
fn sha256_mismatch_against_the_lock_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image_copy(tmp.path(), |t| t);
    // Corrupt the lock's hash of systemd-boot-efi instead of the cached file,
    // so the shared cache is never touched.
    let lock_path = tmp.path().join("buildroot/debian.lock");
    let lock = fs::read_to_string(&lock_path).unwrap();
    let sd = lock.find("name = \"systemd-boot-efi\"").unwrap();
    let h = sd + lock[sd..].find("sha256 = \"").unwrap() + "sha256 = \"".len();
    let mut bad = lock.clone();
    bad.replace_range(h..h + 64, &"0".repeat(64));
    fs::write(&lock_path, bad).unwrap();
    // A private cache copy: the builder may move a mismatching file aside.
    let cache = tmp.path().join("cache");
    fs::create_dir(&cache).unwrap();
    for e in fs::read_dir(cache_dir()).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), cache.join(e.file_name())).ok();
    }
    let out = tmp.path().join("out");
    let err = build_fails(
        herd_build(&img, &out, 0)
            .arg("--offline")
            .arg("--cache")
            .arg(&cache),
    );
    assert!(err.contains("sha256"), "{err}");
    assert!(
        err.contains(&"0".repeat(64)),
        "the expected hash is shown: {err}"
    );
    assert_no_build(&out);
}

#[test]
fn usr_larger_than_its_slot_says_both_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    // Put the (already compressed, ~14 MiB) kernel into /usr against an 8 MiB slot.
    let img = image_copy(tmp.path(), |t| {
        let pkg = t
            .lines()
            .find_map(|l| l.strip_prefix("package = \"linux-image-"))
            .map(|rest| rest.trim_end_matches('"').to_string())
            .expect("kernel package in default.toml");
        let with_pkg = t.replacen(
            "[partitions]",
            &format!(
                "[[usr.package]]\nname = \"linux-image-{pkg}\"\nfiles = {{ \"boot/vmlinuz-{kver}\" = \"lib/vmlinuz\" }}\n\n[partitions]",
                kver = pkg
            ),
            1,
        );
        with_pkg.replace("usr = \"128M\"", "usr = \"8M\"")
    });
    let out = tmp.path().join("out");
    let err = build_fails(&mut herd_build(&img, &out, 0));
    assert!(err.contains("does not fit its slot"), "{err}");
    assert!(err.contains("8.0 MiB (8388608 bytes)"), "{err}");
    assert_no_build(&out);
}

#[test]
fn unwritable_output_directory_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image_copy(tmp.path(), |t| t);
    let file = tmp.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let err = build_fails(&mut herd_build(&img, &file.join("out"), 0));
    assert!(err.contains("cannot use output directory"), "{err}");
}

#[test]
fn a_failed_build_leaves_the_previous_one_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let good = image_copy(tmp.path(), |t| t);
    let out = tmp.path().join("out");
    run_ok(herd_build(&good, &out, 0).arg("--quiet"));
    let before = fs::read(out.join("build.json")).unwrap();
    let bad = image_copy(&tmp.path().join("bad"), |t| {
        t.replace("dm-verity", "dm-verityy")
    });
    let err = build_fails(&mut herd_build(&bad, &out, 0));
    assert!(err.contains("dm-verityy"), "{err}");
    assert_eq!(fs::read(out.join("build.json")).unwrap(), before);
    assert!(out.join("disk.raw").exists());
    assert!(!out.join(".herd-build.partial").exists());
}

#[test]
fn help_explains_every_option() {
    let help = run_ok(Command::new(herd()).args(["build", "--help"]));
    for opt in [
        "--out",
        "--bin-dir",
        "--cache",
        "--offline",
        "--format",
        "--quiet",
    ] {
        assert!(help.contains(opt), "herd build --help lacks {opt}:\n{help}");
    }
}
