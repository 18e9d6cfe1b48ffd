//! `herd flash`: the default image written to a file and to a loop device
//! reads back byte for byte and passes `sfdisk --verify`; a qcow2 image,
//! the image itself, a mounted device, a device too small and an
//! unconfirmed run are refused, each with its own error and nothing written.

use std::path::Path;
use std::process::{Command, Stdio};

use herd_tests::*;

fn flash(args: &[&Path], extra: &[&str]) -> std::process::Output {
    run(Command::new(herd())
        .arg("flash")
        .args(args)
        .args(extra)
        .stdin(Stdio::null()))
}

fn refused(out: std::process::Output, msg: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(msg),
        "{msg:?} in {err}"
    );
}

/// A loop device over `file`, detached on drop.
struct Loop(String);
impl Loop {
    fn new(file: &Path) -> Loop {
        Loop(
            run_ok(Command::new("losetup").args(["--show", "-f"]).arg(file))
                .trim()
                .to_string(),
        )
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn flashes_and_verifies_and_refuses_what_it_must() {
    let image = default_image().join("disk.raw");
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("target.raw");

    // Unconfirmed: nothing written.
    refused(flash(&[&image, &file], &[]), "pass --yes");
    assert!(!file.exists() || std::fs::metadata(&file).unwrap().len() == 0);

    let out = flash(&[&image, &file], &["--yes", "--quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("read it back: sha256"));
    run_ok(Command::new("cmp").arg(&image).arg(&file));
    run_ok(Command::new("sfdisk").arg("--verify").arg(&file));

    refused(flash(&[&image, &image], &["--yes"]), "is the image itself");
    let qcow = t.path().join("disk.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow)
            .arg("1M"),
    );
    refused(
        flash(&[&qcow, &file], &["--yes"]),
        "qemu-img convert -O raw",
    );

    // Block devices (loop devices over files; CI runs as root).
    let size = std::fs::metadata(&image).unwrap().len();
    let small = t.path().join("small.img");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let small = Loop::new(&small);
    refused(
        flash(&[&image, Path::new(&small.0)], &["--yes"]),
        "the image needs",
    );

    let mounted = t.path().join("mounted.img");
    std::fs::File::create(&mounted)
        .unwrap()
        .set_len(size + (1 << 20))
        .unwrap();
    let mounted = Loop::new(&mounted);
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&mounted.0));
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(Command::new("mount").arg(&mounted.0).arg(&mnt));
    refused(
        flash(&[&image, Path::new(&mounted.0)], &["--yes"]),
        "is mounted at",
    );
    run_ok(Command::new("umount").arg(&mnt));

    // Unmounted, big enough: written and verified.
    let out = flash(&[&image, Path::new(&mounted.0)], &["--yes", "--quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(
        Command::new("cmp")
            .args(["-n", &size.to_string()])
            .arg(&image)
            .arg(&mounted.0),
    );
}
