//! The container runtime: Debian's `crun`, shipped in the image's `/usr`.
//! herd-agent writes an OCI bundle (see [`crate::spec`]) and starts it
//! detached (`crun run --detach`): crun exits once the container runs, so
//! no runtime process stays beside a container; the agent, child
//! subreaper of its containers, collects their exits ([`crate::reaper`]).
//! crun's state (`--root`) outlives the agent, which finds its containers
//! there again after a restart ([`Runtime::list`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Why a container did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// crun could not be run at all.
    #[error("cannot run {bin}: {source}; check --runtime")]
    Spawn {
        /// the runtime binary
        bin: PathBuf,
        /// why
        source: std::io::Error,
    },
    /// crun ran and refused (its message is in the container's log).
    #[error("the runtime refused it ({status}); its message is in the container's log")]
    Refused {
        /// crun's exit status
        status: ExitStatus,
    },
    /// crun said it started the container but wrote no PID.
    #[error("the runtime wrote no PID to {path}: {source}")]
    NoPid {
        /// the PID file
        path: PathBuf,
        /// why
        source: std::io::Error,
    },
}

/// A container crun knows (`crun state`).
#[derive(Debug, Clone, Deserialize)]
pub struct State {
    /// The container's ID.
    pub id: String,
    /// Its init's PID (0 once stopped).
    #[serde(default)]
    pub pid: u32,
    /// `created`, `running`, `paused`, `stopped`.
    pub status: String,
    /// Its bundle.
    pub bundle: PathBuf,
}

impl State {
    /// Whether its init runs.
    pub fn running(&self) -> bool {
        self.status == "running" && self.pid > 0
    }
}

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

    /// Starts container `id` from `bundle`, detached: returns the PID of
    /// its init once it runs (crun has exited by then, and the init is
    /// this process's child when it is a child subreaper). The container's
    /// stdout and stderr, and crun's own messages, go to `output`.
    pub fn start(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        output: &File,
    ) -> Result<u32, StartError> {
        let spawn = |source| StartError::Spawn {
            bin: self.bin.clone(),
            source,
        };
        let status = self
            .command()
            .args(["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdout(output.try_clone().map_err(spawn)?)
            .stderr(output.try_clone().map_err(spawn)?)
            .status()
            .map_err(spawn)?;
        if !status.success() {
            return Err(StartError::Refused { status });
        }
        let no_pid = |source| StartError::NoPid {
            path: pid_file.to_path_buf(),
            source,
        };
        std::fs::read_to_string(pid_file)
            .map_err(no_pid)?
            .trim()
            .parse()
            .map_err(|e| no_pid(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }

    /// Every container crun knows under its `--root`, with its state.
    pub fn list(&self) -> Vec<State> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| self.state(&e.file_name().to_string_lossy()))
            .collect()
    }

    /// What crun knows of container `id` (None when it knows nothing).
    pub fn state(&self, id: &str) -> Option<State> {
        let out = self
            .command()
            .args(["state", id])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the container's first
    /// process (when it dies, the kernel ends the rest of its PID namespace).
    pub fn kill(&self, id: &str, signal: &str) {
        let _ = self
            .command()
            .args(["kill", id, signal])
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
