//! The system calls herd-init makes, through `rustix` (safe wrappers, no C
//! dependency of their own). The one thing rustix does not offer stays on
//! libc with `unsafe`: the signal mask and `sigtimedwait` (rustix has them
//! only in its hidden, unstable `runtime` module, meant for libc
//! implementations). The ioctls (device-mapper in `dm`, BLKPG and ext4
//! resize in `grow`) go through `rustix::ioctl` with their `#[repr(C)]`
//! argument structs next to their callers.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

pub use rustix::mount::MountFlags;
pub use rustix::process::{Signal, WaitStatus};
pub use rustix::system::RebootCommand;

/// mount(2) of a file system; an empty `data` passes no options.
pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> io::Result<()> {
    let data = (!data.is_empty())
        .then(|| std::ffi::CString::new(data))
        .transpose()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount options"))?;
    Ok(rustix::mount::mount(
        src,
        target,
        fstype,
        flags,
        data.as_deref(),
    )?)
}

/// mount(2) with MS_MOVE: moves the mount at `from` to `to`.
pub fn mount_move(from: &str, to: &str) -> io::Result<()> {
    Ok(rustix::mount::mount_move(from, to)?)
}

/// mount(2) with MS_BIND: `from` appears at `to` as well.
pub fn mount_bind(from: &str, to: &str) -> io::Result<()> {
    Ok(rustix::mount::mount_bind(from, to)?)
}

/// mount(2) with MS_REMOUNT: changes the flags of the mount at `target`
/// (MS_BIND in `flags` changes only the per-mount flags, not the file
/// system's).
pub fn remount(target: &str, flags: MountFlags) -> io::Result<()> {
    Ok(rustix::mount::mount_remount(target, flags, "")?)
}

/// umount2(2) without flags.
pub fn umount(target: &str) -> io::Result<()> {
    Ok(rustix::mount::unmount(
        target,
        rustix::mount::UnmountFlags::empty(),
    )?)
}

/// chroot(2).
pub fn chroot(path: &str) -> io::Result<()> {
    Ok(rustix::process::chroot(path)?)
}

/// finit_module(2) on an open module file, without parameters.
pub fn finit_module(file: &std::fs::File) -> io::Result<()> {
    Ok(rustix::system::finit_module(file.as_fd(), c"", 0)?)
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    Ok(rustix::system::sethostname(name.as_bytes())?)
}

/// reboot(2): power off, restart, or turn Ctrl-Alt-Del into SIGINT.
pub fn reboot(cmd: RebootCommand) -> io::Result<()> {
    Ok(rustix::system::reboot(cmd)?)
}

/// sync(2).
pub fn sync() {
    rustix::fs::sync()
}

/// kill(2) to a process, or to its process group when `group`.
pub fn kill(pid: i32, sig: Signal, group: bool) -> io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
    if group {
        Ok(rustix::process::kill_process_group(pid, sig)?)
    } else {
        Ok(rustix::process::kill_process(pid, sig)?)
    }
}

/// The signals PID 1 handles synchronously.
pub fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            Signal::CHILD,
            Signal::TERM,
            Signal::INT,
            Signal::POWER,
            Signal::USR1,
            Signal::USR2,
            Signal::HUP,
        ] {
            libc::sigaddset(&mut set, s.as_raw());
        }
        set
    }
}

/// Blocks (or unblocks) the handled signals for the calling thread.
pub fn block_signals(block: bool) -> io::Result<()> {
    let set = handled_signals();
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: set is initialised; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Makes `cmd`'s child start with the handled signals unblocked (std's
/// spawn keeps the parent's signal mask, so a child of PID 1 would start
/// with SIGTERM and the others blocked) and, with `new_session`, in a
/// session and process group of its own (setsid).
pub fn child_setup(cmd: &mut Command, new_session: bool) {
    // SAFETY: between fork and exec the closure makes only async-signal-safe
    // calls (setsid; sigemptyset, sigaddset and pthread_sigmask on the
    // child's one thread) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if new_session {
                let _ = rustix::process::setsid();
            }
            block_signals(false)
        });
    }
}

/// Waits up to `timeout` for one of the handled signals.
pub fn wait_signal(timeout: Duration) -> Option<Signal> {
    let set = handled_signals();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: set and ts are initialised locals; siginfo is not requested.
    let r = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    Signal::from_named_raw(r)
}

/// Reaps one exited child without blocking: (pid, status). Any child:
/// waitpid(-1), which rustix calls `wait` (its `waitpid(None)` is pid 0,
/// the caller's process group only, and services run in their own).
pub fn reap() -> Option<(i32, WaitStatus)> {
    let r = rustix::process::wait(rustix::process::WaitOptions::NOHANG);
    r.ok()
        .flatten()
        .map(|(pid, status)| (pid.as_raw_nonzero().get(), status))
}

/// Seconds since the kernel started (CLOCK_BOOTTIME).
pub fn boottime() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// statvfs(2): the fundamental block size of the file system at `path`.
pub fn block_size(path: &str) -> io::Result<u64> {
    Ok(rustix::fs::statvfs(path)?.f_bsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a `cat` run from `cmd` (`Command::new("cat")`) sees of itself in
    /// `/proc/self/stat` and `/proc/self/status`: (pid, session, blocked
    /// signals). Not a shell: dash clears its signal mask when it starts.
    fn child_view(mut cmd: Command) -> (u32, u32, u64) {
        let out = cmd
            .args(["/proc/self/stat", "/proc/self/status"])
            .output()
            .expect("cat runs");
        let text = String::from_utf8(out.stdout).unwrap();
        // pid (comm) state ppid pgrp session ...
        let stat: Vec<&str> = text.lines().next().unwrap().split(' ').collect();
        let blocked = text
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .unwrap()
            .trim();
        (
            stat[0].parse().unwrap(),
            stat[5].parse().unwrap(),
            u64::from_str_radix(blocked, 16).unwrap(),
        )
    }

    #[test]
    fn children_start_with_pid1s_signals_unblocked_and_services_in_their_own_session() {
        // On a thread of its own, which blocks the signals as PID 1 does.
        std::thread::spawn(|| {
            block_signals(true).unwrap();
            let term = 1u64 << (Signal::TERM.as_raw() - 1);
            let chld = 1u64 << (Signal::CHILD.as_raw() - 1);
            let (_, _, plain) = child_view(Command::new("cat"));
            assert_eq!(plain & (term | chld), term | chld, "std keeps the mask");
            let mut cmd = Command::new("cat");
            child_setup(&mut cmd, false);
            let (pid, sid, blocked) = child_view(cmd);
            assert_eq!(blocked & (term | chld), 0, "{blocked:x}");
            assert_ne!(pid, sid);
            let mut cmd = Command::new("cat");
            child_setup(&mut cmd, true);
            let (pid, sid, blocked) = child_view(cmd);
            assert_eq!(blocked & (term | chld), 0, "{blocked:x}");
            assert_eq!(pid, sid, "a service leads a session of its own");
        })
        .join()
        .unwrap();
    }
}
