//! `herd flash`: the default image written to a file and to a loop device
//! reads back byte for byte and passes `sfdisk --verify`; a qcow2 image,
//! the image itself, a mounted device (whole or by a partition), a device
//! too small and an unconfirmed run are refused, each with its own error
//! and nothing written. The loop-device cases need root and `losetup`;
//! without them they are skipped with the reason printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use herd_tests::*;

fn flash(image: &Path, target: &Path, extra: &[&str]) -> Output {
    run(Command::new(herd())
        .arg("flash")
        .arg(image)
        .arg(target)
        .args(extra)
        .stdin(Stdio::null()))
}

fn refused(out: Output, msg: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(msg),
        "expected a refusal with {msg:?}, got {} and:\n{err}",
        out.status
    );
}

fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "herd flash failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("read it back: sha256"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn sha256(p: &Path, len: u64) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut (&mut f).take(len), &mut h).unwrap();
    hex::encode(h.finalize())
}

/// A loop device over `file`, unmounted and detached on drop.
struct Loop {
    dev: String,
    mounts: Vec<PathBuf>,
}

impl Loop {
    /// `losetup --partscan`, or why not.
    fn new(file: &Path) -> Result<Loop, String> {
        let out = Command::new("losetup")
            .args(["--show", "-f", "-P"])
            .arg(file)
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed (not root, or no loop devices here): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Loop {
            dev: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            mounts: Vec::new(),
        })
    }

    fn path(&self) -> &Path {
        Path::new(&self.dev)
    }

    fn mount(&mut self, dev: &str, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        run_ok(Command::new("mount").arg(dev).arg(at));
        self.mounts.push(at.to_path_buf());
    }

    fn umount_all(&mut self) {
        for m in self.mounts.drain(..) {
            run_ok(Command::new("umount").arg(&m));
        }
    }

    /// Partition device nodes the kernel knows for this device.
    fn partitions(&self) -> Vec<String> {
        let name = self.dev.trim_start_matches("/dev/");
        let mut v: Vec<String> = std::fs::read_dir(format!("/sys/class/block/{name}"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join("partition").exists())
                    .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn flashes_files_and_verifies() {
    let image = default_image().join("disk.raw");
    let size = std::fs::metadata(&image).unwrap().len();
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("target.raw");

    // Unconfirmed (stdin not a terminal, no --yes): nothing written.
    refused(
        flash(&image, &file, &[]),
        "stdin is not a terminal, pass --yes",
    );
    assert!(!file.exists(), "an unconfirmed flash created the target");

    // A new file, with progress (bytes, percent, MB/s) on stderr.
    let out = flash(&image, &file, &["--yes"]);
    succeeded(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MB/s") && err.contains("(100%)") && err.contains("MiB"),
        "no progress line in:\n{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&sha256(&image, size)),
        "the printed sha256 is not the image's"
    );
    run_ok(Command::new("cmp").arg(&image).arg(&file));
    run_ok(Command::new("sfdisk").arg("--verify").arg(&file));

    // An existing, longer file of other bytes: replaced exactly; --quiet
    // leaves stderr empty.
    std::fs::write(&file, vec![0x5au8; size as usize + 4096]).unwrap();
    let out = flash(&image, &file, &["--yes", "--quiet"]);
    succeeded(&out);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(Command::new("cmp").arg(&image).arg(&file));

    // The image itself, also through a symlink.
    refused(flash(&image, &image, &["--yes"]), "is the image itself");
    let link = t.path().join("link.raw");
    std::os::unix::fs::symlink(&image, &link).unwrap();
    refused(flash(&image, &link, &["--yes"]), "is the image itself");

    // A qcow2 image: told how to convert it, nothing written.
    let qcow = t.path().join("disk.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow)
            .arg("1M"),
    );
    let q = t.path().join("q.raw");
    refused(flash(&qcow, &q, &["--yes"]), "qemu-img convert -O raw");
    assert!(!q.exists());

    // A missing image names it.
    refused(
        flash(&t.path().join("nope.raw"), &q, &["--yes"]),
        "nope.raw",
    );
}

#[test]
fn flashes_block_devices_and_refuses_busy_or_small_ones() {
    let image = default_image().join("disk.raw");
    let size = std::fs::metadata(&image).unwrap().len();
    let t = tempfile::tempdir().unwrap();

    let small = t.path().join("small.img");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let small = match Loop::new(&small) {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIPPED flashes_block_devices_and_refuses_busy_or_small_ones: {why}");
            return;
        }
    };
    refused(
        flash(&image, small.path(), &["--yes"]),
        &format!(
            "{} holds {} bytes, the image needs {size}",
            small.dev,
            size / 2
        ),
    );
    drop(small);

    // A device with a mounted filesystem.
    let backing = t.path().join("disk.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(size + (8 << 20))
        .unwrap();
    let mut dev = Loop::new(&backing).expect("losetup worked a moment ago");
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&dev.dev));
    let d = dev.dev.clone();
    dev.mount(&d, &t.path().join("mnt"));
    refused(
        flash(&image, dev.path(), &["--yes"]),
        &format!("{d} is mounted at {}", t.path().join("mnt").display()),
    );
    dev.umount_all();

    // Unmounted and big enough: written, read back, and a valid GPT disk.
    let out = flash(&image, dev.path(), &["--yes", "--quiet"]);
    succeeded(&out);
    run_ok(
        Command::new("cmp")
            .args(["-n", &size.to_string()])
            .arg(&image)
            .arg(&dev.dev),
    );
    run_ok(Command::new("sfdisk").arg("--verify").arg(&dev.dev));

    // A mounted partition makes the whole disk busy.
    let _ = Command::new("partx").args(["-u", &d]).status();
    let _ = Command::new("partx").args(["-a", &d]).status();
    let parts = dev.partitions();
    let state = parts.last().cloned();
    match state.filter(|p| Path::new(p).exists()) {
        None => eprintln!(
            "SKIPPED the mounted-partition case: the kernel shows no partition nodes for {d} ({parts:?})"
        ),
        Some(state) => {
            dev.mount(&state, &t.path().join("state"));
            refused(
                flash(&image, dev.path(), &["--yes"]),
                &format!("{state} is mounted at"),
            );
            dev.umount_all();
        }
    }
}
