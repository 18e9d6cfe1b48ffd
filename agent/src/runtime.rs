//! The container runtime: Debian's `crun`, shipped in the image's `/usr`.
//! herd-agent writes an OCI bundle (see [`crate::spec`]) and runs
//! `crun run` in the foreground, one process per container, so the exit
//! status of that process is the container's.

use std::io::PipeWriter;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How crun is run.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The crun binary.
    pub bin: PathBuf,
    /// crun's state directory (`--root`).
    pub root: PathBuf,
    /// Whether crun manages cgroups (off only for hosts that mix cgroup
    /// v1 and v2, where crun refuses them; limits are then not enforced).
    pub cgroups: bool,
}

impl Runtime {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        if !self.cgroups {
            c.arg("--cgroup-manager=disabled");
        }
        c.stdin(Stdio::null());
        c
    }

    /// Starts container `id` from `bundle`; its output (stdout and stderr
    /// both) goes to `out`; crun writes the container's PID to `pid_file`.
    pub fn run(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        out: PipeWriter,
    ) -> std::io::Result<Child> {
        let err = out.try_clone()?;
        self.command()
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdout(out)
            .stderr(err)
            .spawn()
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the container's processes.
    pub fn kill(&self, id: &str, signal: &str) {
        let _ = self
            .command()
            .args(["kill", "--all", id, signal])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Removes what crun keeps of a container (after it stopped).
    pub fn delete(&self, id: &str) {
        let _ = self
            .command()
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Runs `argv` inside the running container `id`, for at most
    /// `timeout`; Ok(true) when it exits 0.
    pub fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> std::io::Result<bool> {
        let mut child = self
            .command()
            .arg("exec")
            .arg(id)
            .args(argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_timeout(&mut child, timeout).map(|s| s.is_some_and(|s| s.success()))
    }
}

/// Waits for `child` at most `timeout`; kills it and returns None when the
/// time runs out.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A container's exit status in words: "exit code 3", "signal 9".
pub fn describe(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        // crun reports a container killed by signal N as 128+N.
        (Some(c), _) if c > 128 && c < 128 + 65 => format!("signal {}", c - 128),
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "unknown status".into(),
    }
}
