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
//! - **Inherited orphans**: crun's own helper processes (`crun run
//!   --detach` leaves one per container start, re-parented to the agent
//!   when it exits: measured by bench/agent.sh) and processes a timed-out
//!   `crun exec` probe left inside a container. [`Sweeper::sweep`], called
//!   from the agent's main loop, reads `/proc/self/task/*/children` and
//!   reaps, each by its PID with `waitid(P_PID, pid, WNOHANG)` (never
//!   `-1`), only zombies that are (a) in a deeper PID namespace than the
//!   agent and not PID 1 there (container inits are PID 1 of theirs), or
//!   (b) in the agent's namespace and already zombies, with the same PID
//!   and start time, for [`LINGER`]: the agent's own commands are reaped
//!   by their spawners within milliseconds of their end, so a zombie that
//!   stays is an orphan nobody else will wait for. A zombie cannot vanish
//!   or be replaced under the sweeper, since it holds its PID until reaped.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

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

/// How long a zombie of the agent's own PID namespace must stay one
/// before [`Sweeper::sweep`] takes it for an orphan.
pub const LINGER: Duration = Duration::from_secs(5);

/// Whether `/proc/PID/status` text describes an orphan from a container:
/// a zombie in a PID namespace deeper than `levels` (the agent's count of
/// `NSpid` entries) where it is not PID 1.
fn is_stray_zombie(status: &str, levels: usize) -> bool {
    zombie_levels(status).is_some_and(|(n, init)| n > levels && !init)
}

/// For a zombie's status text: its count of `NSpid` entries and whether
/// it is PID 1 of its namespace.
fn zombie_levels(status: &str) -> Option<(usize, bool)> {
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
    };
    if !field("State:")?.starts_with('Z') {
        return None;
    }
    let nspid: Vec<&str> = field("NSpid:")?.split_whitespace().collect();
    Some((nspid.len(), nspid.last() == Some(&"1")))
}

fn nspid_levels(status: &str) -> usize {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map_or(1, |s| s.split_whitespace().count())
}

/// A process's start time (`/proc/PID/stat` field 22).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Reaps the orphans the agent inherits as subreaper (see the module doc).
#[derive(Debug, Default)]
pub struct Sweeper {
    /// Zombies of the agent's own namespace: (PID, start time) → first seen.
    seen: HashMap<(i32, u64), Instant>,
}

impl Sweeper {
    /// One pass; returns how many it reaped.
    pub fn sweep(&mut self) -> usize {
        let Ok(me) = std::fs::read_to_string("/proc/self/status") else {
            return 0;
        };
        let levels = nspid_levels(&me);
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0;
        };
        let now = Instant::now();
        let mut seen = HashMap::new();
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
                let reap = match zombie_levels(&status) {
                    None => false,
                    Some(_) if is_stray_zombie(&status, levels) => true,
                    Some((n, _)) if n == levels => {
                        let Some(key) = start_time(pid).map(|t| (pid, t)) else {
                            continue;
                        };
                        let first = *self.seen.get(&key).unwrap_or(&now);
                        seen.insert(key, first);
                        now.duration_since(first) >= LINGER
                    }
                    Some(_) => false,
                };
                let Some(p) = Pid::from_raw(pid) else {
                    continue;
                };
                if reap
                    && matches!(
                        waitid(
                            WaitId::Pid(p),
                            WaitIdOptions::EXITED | WaitIdOptions::NOHANG
                        ),
                        Ok(Some(_))
                    )
                {
                    reaped += 1;
                }
            }
        }
        self.seen = seen;
        reaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Being a subreaper is process-wide: the test that needs it holds this
    /// lock and clears it again, so the stranger test (which needs not to be
    /// one) cannot run beside it.
    static SUBREAPER: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    fn the_sweeper_reaps_orphans_that_stay_zombies_and_leaves_fresh_ones() {
        let _only = SUBREAPER.lock().unwrap_or_else(|e| e.into_inner());
        become_subreaper().unwrap();
        // An orphan re-parented to us (its parent exits first) that ends.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 0.1 >/dev/null & echo $!"])
            .output()
            .unwrap();
        let orphan: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let is_zombie = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").unwrap().1.starts_with('Z'))
        };
        std::thread::sleep(Duration::from_millis(400));
        assert!(is_zombie(orphan), "the orphan is our zombie");
        let mut sw = Sweeper::default();
        // Fresh: it could be a command whose spawner is about to wait.
        sw.sweep();
        assert!(is_zombie(orphan), "reaped before LINGER");
        std::thread::sleep(LINGER + Duration::from_millis(200));
        assert!(sw.sweep() >= 1);
        assert!(!is_zombie(orphan), "still a zombie after LINGER");
        rustix::process::set_child_subreaper(None).unwrap();
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
        let _not_a_subreaper = SUBREAPER.lock().unwrap_or_else(|e| e.into_inner());
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
