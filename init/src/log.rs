//! Console logging: one line per step, with the time since kernel start.
//! Write errors are ignored everywhere: PID 1 must not panic on a console.

use std::io::Write;

/// Prints `[  s.mmm] herd-init: msg` to the console (stdout).
pub fn line(msg: &str) {
    let t = crate::sys::boottime();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "[{:5}.{:03}] herd-init: {msg}",
        t.as_secs(),
        t.subsec_millis()
    );
    let _ = out.flush();
}

/// Prints a service's output line as `name: line`. A failed console write
/// (a hung-up or full serial line) is dropped: `println!` would panic PID 1.
pub fn service_line(name: &str, line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{name}: {line}");
    let _ = out.flush();
}

/// Logs a step.
#[macro_export]
macro_rules! info {
    ($($a:tt)*) => { $crate::log::line(&format!($($a)*)) };
}
