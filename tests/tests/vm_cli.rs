//! `herd vm run` as a user meets it: timeouts, bad input, no leftovers.

use std::process::Command;

use herd_tests::*;

fn qemu_processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("qemu-system") && c.contains(needle))
        .count()
}

#[test]
fn timeout_exits_124_and_leaves_no_qemu() {
    let image = default_image();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("timeout-disk.raw");
    std::fs::copy(image.join("disk.raw"), &disk).unwrap();
    let out = run(Command::new(herd()).args(["vm", "run"]).arg(&disk).args([
        "--snapshot",
        "--timeout",
        "3",
    ]));
    assert_eq!(
        out.status.code(),
        Some(124),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out after 3 s"));
    assert_eq!(
        qemu_processes_with(disk.to_str().unwrap()),
        0,
        "QEMU left running"
    );
}

#[test]
fn missing_disk_is_a_clear_error() {
    let out =
        run(Command::new(herd()).args(["vm", "run", "/nonexistent/disk.raw", "--timeout", "5"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/disk.raw") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn help_explains_the_options() {
    let out = run_ok(Command::new(herd()).args(["vm", "run", "--help"]));
    for opt in [
        "--tpm",
        "--forward",
        "--guest-forward",
        "--timeout",
        "--kvm",
        "--snapshot",
    ] {
        assert!(out.contains(opt), "{opt} missing from --help:\n{out}");
    }
}
