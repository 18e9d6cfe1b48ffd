//! herd-init: PID 1 of a herd node (initramfs stage, then real-root stage),
//! and `herd-init poweroff|reboot` to ask a running PID 1 to stop.
//!
//! Signals PID 1 acts on: SIGTERM, SIGPWR, SIGUSR2 → power off;
//! SIGINT (Ctrl-Alt-Del), SIGUSR1 → reboot.

mod bless;
mod dm;
mod grow;
mod initrd;
mod input;
mod log;
mod modules;
mod provision;
mod root;
mod supervise;
mod sys;
mod tpm;

use std::process::ExitCode;
use std::time::Duration;

/// Prints one FATAL line and reboots, so the boot loader counts the try.
pub fn fatal(msg: &str) -> ! {
    info!("FATAL: {msg}");
    info!("rebooting in 3 s so the boot loader can count this failed try");
    std::thread::sleep(Duration::from_secs(3));
    sys::sync();
    let _ = sys::reboot(libc::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

const USAGE: &str = "usage: herd-init [poweroff|reboot]\n\
    As PID 1 (the kernel starts it) it brings up the node. Run by hand it asks\n\
    PID 1 to power off (SIGUSR2) or reboot (SIGUSR1) cleanly.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if std::process::id() == 1 {
        if args.iter().any(|a| a == "--root-stage") {
            root::run();
        }
        initrd::run();
    }
    let sig = match args.get(1).map(String::as_str) {
        Some("poweroff") => libc::SIGUSR2,
        Some("reboot") => libc::SIGUSR1,
        Some("-h") | Some("--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match sys::kill(1, sig) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd-init: cannot signal PID 1: {e}");
            ExitCode::FAILURE
        }
    }
}
