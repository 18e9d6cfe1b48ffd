//! Restart back-off for services.

use std::time::Duration;

/// Exponential back-off: 1 s doubling to 60 s; a run that lasted at least
/// `reset_after` starts again from 1 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
}

/// A run this long counts as healthy and resets the back-off.
pub const RESET_AFTER: Duration = Duration::from_secs(10);

impl Backoff {
    /// No failures yet.
    pub fn new() -> Self {
        Backoff { failures: 0 }
    }

    /// Records an exit after running `ran` and returns the delay before the
    /// next start.
    pub fn next_delay(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.failures = 0;
        }
        let d = Duration::from_secs(1u64 << self.failures.min(6)).min(Duration::from_secs(60));
        self.failures += 1;
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Backoff::new();
        let short = Duration::from_millis(10);
        let ds: Vec<u64> = (0..9).map(|_| b.next_delay(short).as_secs()).collect();
        assert_eq!(ds, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.next_delay(Duration::from_secs(30)).as_secs(), 1);
        assert_eq!(b.next_delay(short).as_secs(), 2);
    }
}
