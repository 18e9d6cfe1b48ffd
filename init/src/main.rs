//! herd-init: PID 1 of a herd node (initramfs stage, then real-root stage),
//! and `herd-init poweroff|reboot` to ask a running PID 1 to stop.
//!
//! Signals PID 1 acts on: SIGTERM, SIGPWR, SIGUSR2 → power off;
//! SIGINT (Ctrl-Alt-Del), SIGUSR1 → reboot.

mod bless;
mod dm;
mod grow;
mod health;
mod initrd;
mod input;
mod log;
mod modules;
mod provision;
mod root;
mod supervise;
mod sys;
mod tpm;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Prints one FATAL line and reboots, so the boot loader counts the try.
pub fn fatal(msg: &str) -> ! {
    info!("FATAL: {msg}");
    info!("rebooting in 3 s so the boot loader can count this failed try");
    std::thread::sleep(Duration::from_secs(3));
    sys::sync();
    let _ = sys::reboot(sys::RebootCommand::Restart);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The FATAL message for a panic: what it said and where. PID 1 must not
/// return or unwind out of a panic (the kernel would panic with "Attempted
/// to kill init" and count nothing), so the hook takes [`fatal`]'s path.
fn panic_message(payload: &dyn std::any::Any, at: Option<&std::panic::Location>) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    match at {
        Some(l) => format!(
            "herd-init panicked in thread {name} at {}:{}: {what} (a bug in herd-init: please report it with this line)",
            l.file(),
            l.line()
        ),
        None => format!(
            "herd-init panicked in thread {name}: {what} (a bug in herd-init: please report it with this line)"
        ),
    }
}

/// As PID 1, a panic on any thread logs one FATAL line and reboots, the
/// same path a fatal error takes (in the initramfs the boot loader counts
/// the try). It runs before the release profile's abort, on the panicking
/// thread, and never returns.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|p| {
        fatal(&panic_message(p.payload(), p.location()));
    }));
}

const USAGE: &str = "usage: herd-init [poweroff|reboot]\n\
    As PID 1 (the kernel starts it) it brings up the node. Run by hand it asks\n\
    PID 1 to power off (SIGUSR2) or reboot (SIGUSR1) cleanly.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if std::process::id() == 1 {
        install_panic_hook();
        initrd::run();
    }
    let sig = match args.get(1).map(String::as_str) {
        Some("poweroff") => sys::Signal::USR2,
        Some("reboot") => sys::Signal::USR1,
        Some("-h") | Some("--help") => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            let _ = writeln!(std::io::stderr(), "{USAGE}");
            return ExitCode::from(2);
        }
    };
    match sys::kill(1, sig, false) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "herd-init: cannot signal PID 1: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_message_names_the_message_and_the_place() {
        let at = std::panic::Location::caller();
        let m = panic_message(&"index out of bounds", Some(at));
        assert!(
            m.starts_with("herd-init panicked in thread ")
                && m.contains(&format!(
                    "at {}:{}: index out of bounds",
                    at.file(),
                    at.line()
                )),
            "{m}"
        );
        let owned: String = "usrhash went wrong".into();
        let m = panic_message(&owned, None);
        assert!(
            m.contains(": usrhash went wrong (a bug in herd-init"),
            "{m}"
        );
        assert!(panic_message(&42u32, None).contains("(no message)"));
    }
}
