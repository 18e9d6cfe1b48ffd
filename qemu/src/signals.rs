//! Catching SIGTERM, SIGINT and SIGHUP while [`crate::run`] holds a VM, so
//! a supervisor's `kill` becomes a clean guest shutdown instead of an
//! orphaned QEMU.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use crate::{io, Error};

/// The signals `herd vm run` turns into a shutdown.
pub(crate) const STOP: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

static COUNT: AtomicU32 = AtomicU32::new(0);
static FIRST: AtomicI32 = AtomicI32::new(0);
static LAST: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only atomics: async-signal-safe.
    let _ = FIRST.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    LAST.store(sig, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

/// The handlers for [`STOP`], installed process-wide (any thread may take
/// the signal, so no thread's mask matters) and restored on drop. Caught
/// signals are reset to their default action across `execve`, so QEMU and
/// swtpm start with the usual dispositions. One `Catch` at a time.
pub(crate) struct Catch {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl Catch {
    pub(crate) fn install() -> Result<Catch, Error> {
        COUNT.store(0, Ordering::SeqCst);
        FIRST.store(0, Ordering::SeqCst);
        LAST.store(0, Ordering::SeqCst);
        let mut c = Catch { old: Vec::new() };
        for sig in STOP {
            // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
            // value; the fields are then set as sigaction(2) documents.
            let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
            new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            new.sa_flags = libc::SA_RESTART;
            // SAFETY: zeroed is valid storage for the old action.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are to live sigaction values; the
            // handler only touches atomics.
            if unsafe { libc::sigaction(sig, &new, &mut old) } != 0 {
                return Err(io("installing a signal handler")(
                    std::io::Error::last_os_error(),
                ));
            }
            c.old.push((sig, old));
        }
        Ok(c)
    }

    /// How many stop signals came since [`Catch::install`].
    pub(crate) fn count(&self) -> u32 {
        COUNT.load(Ordering::SeqCst)
    }

    /// The first stop signal (0 if none).
    pub(crate) fn first(&self) -> libc::c_int {
        FIRST.load(Ordering::SeqCst)
    }

    /// The latest stop signal (0 if none).
    pub(crate) fn last(&self) -> libc::c_int {
        LAST.load(Ordering::SeqCst)
    }
}

impl Drop for Catch {
    fn drop(&mut self) {
        for (sig, old) in &self.old {
            // SAFETY: restores the action saved by install.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}

/// `SIGTERM` for 15, and so on (for messages).
pub fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
