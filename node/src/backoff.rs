//! Restart back-off: exponential from `initial`, doubling up to `max`; a
//! run that lasted at least `reset_after` starts again from `initial`.
//! herd-init's services use [`Policy::SERVICE`]; herd-agent's containers
//! use the kubelet's numbers.

use std::time::Duration;

/// The numbers of a back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// A run this long counts as healthy and resets the back-off.
    pub reset_after: Duration,
}

impl Policy {
    /// herd-init's services: 1 s doubling to 60 s, reset after 10 s.
    pub const SERVICE: Policy = Policy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
        reset_after: Duration::from_secs(10),
    };
}

/// Back-off state.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: Policy,
    next: Option<Duration>,
    /// Restarts so far.
    pub restarts: u32,
}

/// A run this long counts as healthy for services (see [`Policy::SERVICE`]).
pub const RESET_AFTER: Duration = Policy::SERVICE.reset_after;

impl Backoff {
    /// No failures yet, service numbers.
    pub fn new() -> Self {
        Self::with(Policy::SERVICE)
    }

    /// No failures yet, with `policy`.
    pub fn with(policy: Policy) -> Self {
        Backoff {
            policy,
            next: None,
            restarts: 0,
        }
    }

    /// Records an exit after running `ran` and returns the delay before the
    /// next start.
    pub fn next_delay(&mut self, ran: Duration) -> Duration {
        if ran >= self.policy.reset_after {
            self.next = None;
        }
        let d = self.next.unwrap_or(self.policy.initial);
        self.next = Some((d * 2).min(self.policy.max));
        self.restarts += 1;
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
        assert_eq!(b.restarts, 11);
    }
}
