//! The kubelet's restart back-off for containers: 10 s, doubling up to
//! 5 min; a container that ran for 10 min starts again from 10 s. The
//! mechanism is herd-init's; only the numbers differ.

use std::time::Duration;

pub use herd_node::backoff::{Backoff, Policy};

/// The kubelet's numbers.
pub const KUBELET: Policy = Policy {
    initial: Duration::from_secs(10),
    max: Duration::from_secs(300),
    reset_after: Duration::from_secs(600),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_numbers() {
        let mut b = Backoff::with(KUBELET);
        let quick = Duration::from_secs(1);
        let seq: Vec<u64> = (0..7).map(|_| b.next_delay(quick).as_secs()).collect();
        assert_eq!(seq, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next_delay(Duration::from_secs(600)).as_secs(), 10);
        assert_eq!(b.next_delay(quick).as_secs(), 20);
        assert_eq!(b.restarts, 9);
    }
}
