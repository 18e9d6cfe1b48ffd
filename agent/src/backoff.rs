//! The kubelet's restart back-off: 10 s, doubling up to 5 min; a container
//! that ran for 10 min without exiting starts again from 10 s.

use std::time::Duration;

/// First delay.
pub const INITIAL: Duration = Duration::from_secs(10);
/// Largest delay.
pub const MAX: Duration = Duration::from_secs(300);
/// Running this long resets the back-off.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// Back-off state of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    next: Option<Duration>,
    /// Restarts so far.
    pub restarts: u32,
}

impl Backoff {
    /// The container exited after running for `ran`: how long to wait
    /// before starting it again.
    pub fn exited(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.next = None;
        }
        let delay = self.next.unwrap_or(INITIAL);
        self.next = Some((delay * 2).min(MAX));
        self.restarts += 1;
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let quick = Duration::from_secs(1);
        let seq: Vec<u64> = (0..7).map(|_| b.exited(quick).as_secs()).collect();
        assert_eq!(seq, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.exited(Duration::from_secs(600)).as_secs(), 10);
        assert_eq!(b.exited(quick).as_secs(), 20);
        assert_eq!(b.restarts, 9);
    }
}
