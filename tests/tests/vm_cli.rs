//! `herd vm run` as a user or a supervisor meets it: timeouts, bad input,
//! signals, no leftovers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herd_tests::*;

const BOOT: Duration = Duration::from_secs(180);

/// Command lines of live processes that contain `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
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
        .filter(|c| c.contains(needle))
        .collect()
}

fn qemu_processes_with(needle: &str) -> usize {
    processes_naming(needle)
        .iter()
        .filter(|c| c.contains("qemu-system"))
        .count()
}

/// The runner's private directories (`herd-vm-*`) in `tmp`.
fn private_dirs(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("herd-vm-"))
        .map(|e| e.path())
        .collect()
}

/// A `herd vm run` of a copy of the default image's disk (`NAME-disk.raw`),
/// started in the background with its own TMPDIR (so the leftover check is
/// exact), console to `console.log`, stderr to `stderr.log`.
struct Runner {
    child: Child,
    disk: PathBuf,
    tmpdir: PathBuf,
    console: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Runner {
    fn start(name: &str, args: &[&str]) -> Runner {
        let image = default_image();
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let disk = dir.join(format!("{name}-disk.raw"));
        std::fs::copy(image.join("disk.raw"), &disk).unwrap();
        let tmpdir = dir.join("tmpdir");
        std::fs::create_dir_all(&tmpdir).unwrap();
        let console = dir.join("console.log");
        let stderr = dir.join("stderr.log");
        let child = Command::new(herd())
            .args(["vm", "run"])
            .arg(&disk)
            .args(args)
            .env("TMPDIR", &tmpdir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Runner {
            child,
            disk,
            tmpdir,
            console,
            stderr,
            _dir: d,
        }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap()
    }

    /// Waits until `ok` holds, failing if herd exits first or time runs out.
    fn wait_until(&mut self, what: &str, timeout: Duration, ok: impl Fn(&Runner) -> bool) {
        let t0 = Instant::now();
        while !ok(self) {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "herd vm run exited ({st}) before {what}\nstderr:\n{}\nconsole:\n{}",
                    self.stderr(),
                    self.console()
                );
            }
            assert!(
                t0.elapsed() < timeout,
                "no {what} within {timeout:?}\nconsole:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until QEMU runs with its private directory in our TMPDIR.
    fn wait_for_qemu(&mut self) {
        let tmp = self.tmpdir.display().to_string();
        self.wait_until("QEMU running", Duration::from_secs(30), |_| {
            qemu_processes_with(&tmp) == 1
        });
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain integer arguments; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// herd's exit code, waiting at most `timeout`.
    fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "herd vm run still running {timeout:?} after the signal\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// No QEMU or swtpm naming our TMPDIR, no private directory in it.
    fn assert_nothing_left(&self) {
        let left = processes_naming(&self.tmpdir.display().to_string());
        assert!(left.is_empty(), "processes left running: {left:?}");
        let dirs = private_dirs(&self.tmpdir);
        assert!(dirs.is_empty(), "private directories left: {dirs:?}");
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_shuts_the_guest_down_cleanly_and_leaves_nothing() {
    let mut r = Runner::start("sigterm", &["--grace", "90"]);
    r.wait_until("herd-init watching the power button", BOOT, |r| {
        r.console().contains("herd-init: watching the power button")
    });
    assert_eq!(private_dirs(&r.tmpdir).len(), 1, "no private directory");
    r.signal(libc::SIGTERM);
    let code = r.exit_code(Duration::from_secs(120));
    let console = r.console();
    assert_eq!(
        code,
        Some(0),
        "stderr:\n{}\nconsole:\n{console}",
        r.stderr()
    );
    assert!(r.stderr().contains("got SIGTERM; the guest powered off"));
    assert!(
        console.contains("herd-init: STATE unmounted"),
        "no clean unmount of STATE:\n{console}"
    );
    assert!(console.contains("herd-init: powering off"));
    assert_eq!(qemu_processes_with(r.disk.to_str().unwrap()), 0);
    r.assert_nothing_left();
}

#[test]
fn grace_running_out_quits_qemu_with_128_plus_the_signal() {
    let mut r = Runner::start("grace", &["--snapshot", "--grace", "2"]);
    r.wait_for_qemu();
    // Still in the firmware: nothing in the guest hears the button yet.
    r.signal(libc::SIGHUP);
    assert_eq!(
        r.exit_code(Duration::from_secs(30)),
        Some(128 + libc::SIGHUP)
    );
    let err = r.stderr();
    assert!(
        err.contains("got SIGHUP, and the guest did not power off within 2 s (--grace)"),
        "{err}"
    );
    assert!(!r.console().contains("herd-init: powering off"));
    r.assert_nothing_left();
}

#[test]
fn a_second_signal_quits_qemu_at_once() {
    let mut r = Runner::start("second", &["--snapshot", "--tpm"]);
    r.wait_for_qemu();
    r.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    r.signal(libc::SIGINT);
    // The default grace is 20 s; the second signal does not wait for it.
    assert_eq!(
        r.exit_code(Duration::from_secs(8)),
        Some(128 + libc::SIGTERM)
    );
    assert!(t0.elapsed() < Duration::from_secs(8));
    let err = r.stderr();
    assert!(
        err.contains("got SIGTERM, and a second signal (SIGINT) came"),
        "{err}"
    );
    r.assert_nothing_left();
}

#[test]
fn sigkill_to_herd_takes_qemu_and_swtpm_down_and_the_next_run_cleans_up() {
    let mut r = Runner::start("sigkill", &["--snapshot", "--tpm"]);
    r.wait_for_qemu();
    let tmpdir = r.tmpdir.display().to_string();
    assert_eq!(processes_naming(&tmpdir).len(), 2, "QEMU and swtpm");
    r.signal(libc::SIGKILL);
    r.child.wait().unwrap();
    let t0 = Instant::now();
    while !processes_naming(&tmpdir).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "still running 1 s after herd was killed: {:?}",
            processes_naming(&tmpdir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nothing in a process killed by SIGKILL can clean up: the directory
    // stays until the next run, which removes it because its owner is gone.
    let left = private_dirs(&r.tmpdir);
    assert_eq!(left.len(), 1);
    let out = run(Command::new(herd())
        .args(["vm", "run"])
        .arg(&r.disk)
        .args(["--snapshot", "--timeout", "1", "-v"])
        .env("TMPDIR", &r.tmpdir));
    assert_eq!(out.status.code(), Some(124));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "removed {}, left by herd process",
            left[0].display()
        )),
        "{err}"
    );
    r.assert_nothing_left();
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
