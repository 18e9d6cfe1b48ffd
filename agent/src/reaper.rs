//! Who collects which exit status, now that no runtime process waits on a
//! container (issue 20).
//!
//! herd-agent starts containers detached (`crun run --detach`): crun sets
//! the container up and exits, and its container init — orphaned — is
//! re-parented to the nearest *child subreaper* among its ancestors. The
//! agent makes itself one ([`become_subreaper`]), so every container it
//! starts is its child and it alone learns how the container ended.
//!
//! A subreaper also inherits orphans it never asked for, and the agent has
//! children of its own (`crun run`/`kill`/`delete`/`exec`, the user
//! namespace helper of [`crate::userns`]). A global `waitpid(-1)` reaper
//! would steal their statuses (std's `Child::wait` would then fail with
//! ECHILD), so there is none. Each status has exactly one collector:
//!
//! - **Container inits**: the pod worker opens a pidfd on the init (its
//!   PID from crun's `--pid-file`, read once crun returned, so the init is
//!   already the agent's child or zombie and cannot be reaped by anyone
//!   else meanwhile) and one thread per container blocks in
//!   `waitid(P_PIDFD)` ([`wait`]): the status is that process's, whatever
//!   else exits. A container adopted after an agent restart is not the
//!   new agent's child (it was re-parented to init or the next subreaper
//!   up when the old agent died): `waitid` says ECHILD, and [`wait`] then
//!   waits for the pidfd to become readable (the process ended) and
//!   reports [`Exit::Unknown`] — its status went to its new parent.
//! - **The agent's own commands**: whoever spawned them waits for that PID
//!   (std's `Child::wait`/`status`, `waitpid(pid)` in userns).
//! - **Inherited orphans**: a process that `crun exec` (a liveness probe)
//!   left inside a container when the probe timed out and crun was killed
//!   is re-parented to the agent, the subreaper of crun's PID namespace.
//!   [`sweep`], called from the agent's main loop, reaps those only: a
//!   zombie child that lives in a deeper PID namespace than the agent and
//!   is not PID 1 there. The agent's own commands share its PID namespace
//!   and container inits are PID 1 of theirs, so neither is ever touched;
//!   it reads `/proc/self/task/*/children` and reaps each such PID with
//!   `waitid(P_PID, pid, WNOHANG)`, never `-1`. A zombie cannot vanish or
//!   be replaced under it, since nobody else waits for these PIDs.

use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{pidfd_open, waitid, Pid, PidfdFlags, WaitId, WaitIdOptions, WaitIdStatus};

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It was not the agent's child (adopted after an agent restart), so
    /// its status went elsewhere.
    Unknown,
}

impl Exit {
    /// Whether it succeeded (exit code 0). An unknown status counts as a
    /// failure, so `restartPolicy: OnFailure` restarts the pod.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }

    /// In words: "exit code 3", "signal 9".
    pub fn describe(&self) -> String {
        match self {
            Exit::Code(c) => format!("exit code {c}"),
            Exit::Signal(s) => format!("signal {s}"),
            Exit::Unknown => {
                "an unknown status (adopted after an agent restart, it was not the agent's child)"
                    .into()
            }
        }
    }

    fn of(s: WaitIdStatus) -> Exit {
        match (s.exit_status(), s.terminating_signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Unknown,
        }
    }
}

/// Makes this process the child subreaper of its descendants
/// (`PR_SET_CHILD_SUBREAPER`): orphans below it are re-parented to it.
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// A pidfd on process `pid` (which must be alive or an unreaped zombie).
pub fn open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid as i32).ok_or(Errno::INVAL)?;
    Ok(pidfd_open(pid, PidfdFlags::empty())?)
}

/// Waits until the process of `pidfd` ends; reaps it when it is this
/// process's child (its exit status), else reports [`Exit::Unknown`].
pub fn wait(pidfd: &OwnedFd) -> Exit {
    loop {
        match waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
            Ok(Some(s)) => return Exit::of(s),
            Ok(None) | Err(Errno::INTR) => continue,
            // Not our child: wait for its end without its status.
            Err(_) => break,
        }
    }
    loop {
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        match poll(&mut fds, None) {
            Ok(n) if n > 0 => return Exit::Unknown,
            Ok(_) | Err(Errno::INTR) => continue,
            Err(_) => return Exit::Unknown,
        }
    }
}

/// Whether `/proc/PID/status` text describes an orphan [`sweep`] may
/// reap: a zombie in a PID namespace deeper than `levels` (the agent's
/// count of `NSpid` entries) where it is not PID 1.
fn is_stray_zombie(status: &str, levels: usize) -> bool {
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
    };
    let zombie = field("State:").is_some_and(|s| s.starts_with('Z'));
    let nspid: Vec<&str> = field("NSpid:")
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    zombie && nspid.len() > levels && nspid.last() != Some(&"1")
}

fn nspid_levels(status: &str) -> usize {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map_or(1, |s| s.split_whitespace().count())
}

/// Reaps the orphans the agent inherited as subreaper (see the module
/// doc); returns how many.
pub fn sweep() -> usize {
    let Ok(me) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    let levels = nspid_levels(&me);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut reaped = 0;
    for t in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(t.path().join("children")) else {
            continue;
        };
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            if !is_stray_zombie(&status, levels) {
                continue;
            }
            let Some(pid) = Pid::from_raw(pid) else {
                continue;
            };
            if let Ok(Some(_)) = waitid(
                WaitId::Pid(pid),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                reaped += 1;
            }
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_zombies_of_deeper_namespaces_that_are_not_their_init_are_strays() {
        let st = |state: &str, nspid: &str| format!("Name:\tx\nState:\t{state}\nNSpid:\t{nspid}\n");
        assert!(is_stray_zombie(&st("Z (zombie)", "4242 7"), 1));
        // A container's init: its status belongs to its pod worker.
        assert!(!is_stray_zombie(&st("Z (zombie)", "4242 1"), 1));
        // The agent's own commands (same namespace): their spawner's.
        assert!(!is_stray_zombie(&st("Z (zombie)", "4242"), 1));
        // Alive.
        assert!(!is_stray_zombie(&st("S (sleeping)", "4242 7"), 1));
        // The agent itself in a container (two levels): same rule, one deeper.
        assert!(!is_stray_zombie(&st("Z (zombie)", "4242 7"), 2));
        assert!(is_stray_zombie(&st("Z (zombie)", "4242 77 7"), 2));
    }

    #[test]
    fn a_child_is_reaped_with_its_status_and_a_stranger_without() {
        // Our child: its exact status.
        // Reaped by `wait` below, through its pidfd.
        let pid = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap()
            .id();
        let fd = open(pid).unwrap();
        assert_eq!(wait(&fd), Exit::Code(3));
        // Reaped by `wait` below, through its pidfd.
        let pid = std::process::Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .unwrap()
            .id();
        let fd = open(pid).unwrap();
        assert_eq!(wait(&fd), Exit::Signal(9));
        assert_eq!(Exit::Signal(9).describe(), "signal 9");
        assert!(!Exit::Unknown.success() && Exit::Code(0).success());

        // A grandchild (not ours): its end is seen, its status is not.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 0.5 >/dev/null & echo $!"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(sh.stdout.as_mut().unwrap(), &mut out).unwrap();
        let pid: u32 = out.trim().parse().unwrap();
        let fd = open(pid).unwrap();
        let began = std::time::Instant::now();
        assert_eq!(wait(&fd), Exit::Unknown);
        assert!(began.elapsed() >= std::time::Duration::from_millis(100));
        let _ = sh.wait();
    }
}
