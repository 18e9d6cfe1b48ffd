//! Console logging: one line per step, with the time since kernel start.

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

/// Logs a step.
#[macro_export]
macro_rules! info {
    ($($a:tt)*) => { $crate::log::line(&format!($($a)*)) };
}
