//! Boot health after `ready`: blessing the boot once every service has run
//! long enough, and the deadline after which an unblessed boot reboots so
//! the boot loader counts the try.

use std::fs;
use std::time::{Duration, Instant};

use herd_init::config::{self, BOOT_GOOD};

use crate::supervise::Supervisor;
use crate::{bless, info};

/// Where the boot stands between `ready` and blessed (or overdue).
pub struct Health {
    bless_after: Duration,
    deadline: Duration,
    start: Instant,
    /// A failed bless (say the ESP could not be mounted for a moment) is
    /// tried again with a growing pause, until the health deadline.
    bless_failures: u32,
    bless_again: Instant,
    good: bool,
    overdue: bool,
}

impl Health {
    /// Starts the clock: now is `ready`.
    pub fn new(cfg: &config::Health) -> Health {
        let now = Instant::now();
        Health {
            bless_after: Duration::from_secs(cfg.bless_after_secs),
            deadline: Duration::from_secs(cfg.deadline_secs),
            start: now,
            bless_failures: 0,
            bless_again: now,
            good: false,
            overdue: false,
        }
    }

    /// Blesses the boot when it is due and healthy; says whether the
    /// deadline passed on a boot whose tries the boot loader counts, so
    /// PID 1 must reboot.
    pub fn check(&mut self, sup: &Supervisor) -> bool {
        if self.bless_due(sup) {
            self.try_bless();
        }
        if !self.good
            && !self.overdue
            && !self.deadline.is_zero()
            && self.start.elapsed() >= self.deadline
        {
            self.overdue = true;
            return self.deadline_passed(sup);
        }
        false
    }

    fn bless_due(&self, sup: &Supervisor) -> bool {
        !self.good
            && !self.overdue
            && Instant::now() >= self.bless_again
            && sup.healthy()
            && sup.last_change.elapsed() >= self.bless_after
            && self.start.elapsed() >= self.bless_after
    }

    fn try_bless(&mut self) {
        match bless::bless() {
            Ok(m) => {
                self.good = true;
                info!("boot is good: {m}");
                if let Err(e) = fs::create_dir_all("/run/herd")
                    .and_then(|_| fs::write(BOOT_GOOD, format!("{m}\n")))
                {
                    info!("cannot write {BOOT_GOOD} ({e}): the updater will wait for it");
                }
            }
            Err(e) => {
                self.bless_failures += 1;
                let pause = bless_pause(self.bless_failures);
                self.bless_again = Instant::now() + pause;
                info!(
                    "could not bless this boot (try {}): {e}; trying again in {} s",
                    self.bless_failures,
                    pause.as_secs()
                );
            }
        }
        if self.good || self.bless_failures == 1 {
            info!("memory: {}", crate::root::own_memory());
        }
    }

    /// Says why the boot is not good and whether a reboot would make the
    /// boot loader count the try (then it is due).
    fn deadline_passed(&self, sup: &Supervisor) -> bool {
        let why = sup.unhealthy(self.bless_after);
        let why = if why.is_empty() {
            "it could not be blessed".to_string()
        } else {
            format!("unhealthy: {}", why.join(", "))
        };
        let secs = self.deadline.as_secs();
        match bless::counted_entry() {
            Ok(Some(entry)) => {
                info!(
                    "boot is not good {secs} s after ready ({why}): rebooting, so the boot loader counts the try of {entry} and boots the other slot once its tries run out"
                );
                true
            }
            Ok(None) => {
                info!(
                    "boot is not good {secs} s after ready ({why}); the boot loader counts no tries for this entry, so a reboot would not fall back: staying up"
                );
                false
            }
            Err(e) => {
                info!(
                    "boot is not good {secs} s after ready ({why}); cannot tell whether the boot loader counts tries ({e}): staying up"
                );
                false
            }
        }
    }
}

/// The pause before bless try `failures + 1`: 2, 4, 8, ... s, at most 60 s.
fn bless_pause(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.min(6)).min(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bless_retries_back_off_to_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|n| bless_pause(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
