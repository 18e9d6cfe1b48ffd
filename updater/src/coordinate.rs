//! Coordinated reboots (`reboot = "coordinated"`): a verified, installed
//! release waits for one of its group's reboot slots ([`herd_reboot_lock`]);
//! the slot is recorded in the state before the reboot and given back only
//! once the new boot is blessed or the node fell back to the old slot (no
//! release pending any more). A node that cannot reach the lock service
//! does not reboot: it keeps running and tries again next round.

use std::path::Path;
use std::time::Duration;

use herd_reboot_lock::etcd::{Client, Etcd};
use herd_reboot_lock::status::{NodeStatus, Publisher};
use herd_reboot_lock::tls::Tls;
use herd_reboot_lock::{fleetlock::FleetLock, Acquire, RebootLock};
use herd_update_config::{Backend, LockConfig};

use crate::state::{LockState, State};

/// The reboot-slot side of the updater for one node.
pub struct Coordinator {
    lock: Box<dyn RebootLock>,
    group: String,
    resumed: bool,
    /// The fleet status record's writer (etcd backends only).
    publisher: Option<Publisher>,
    /// The spacing of polls while queued, at most `cap_secs` apart.
    pace: Pace,
    cap_secs: u64,
    /// Spreads nodes' polls (from the node id).
    salt: u64,
}

/// What one try to take a slot came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// This node holds a slot: reboot now.
    Holding,
    /// Not this round.
    Wait {
        /// The line to log (busy, or why the lock is unreachable).
        line: String,
        /// When to try again, when the backend keeps a queue ([`Pace`]);
        /// else the caller backs off.
        after: Option<Duration>,
    },
}

impl Coordinator {
    /// The coordinator of node `id` for `[lock]`. An etcd backend over TLS
    /// reads its CA, client certificate and key now: one that is missing,
    /// not PEM, or not a pair is an error saying which.
    pub fn new(cfg: &LockConfig, id: &str) -> Result<Coordinator, herd_reboot_lock::Error> {
        let (lock, publisher): (Box<dyn RebootLock>, _) = match cfg.backend {
            Backend::Etcd => {
                let client = etcd_client(cfg)?;
                (
                    Box::new(Etcd::with_client(
                        client.clone(),
                        &cfg.group,
                        id,
                        cfg.max_concurrent,
                        cfg.ttl_secs,
                    )),
                    Some(Publisher::with_client(client, &cfg.group, id, cfg.ttl_secs)),
                )
            }
            Backend::Fleetlock => (
                Box::new(FleetLock::new(
                    cfg.url.as_deref().unwrap_or_default(),
                    &cfg.group,
                    id,
                )),
                None,
            ),
        };
        Ok(Coordinator {
            lock,
            group: cfg.group.clone(),
            resumed: false,
            publisher,
            pace: Pace::default(),
            cap_secs: 600,
            salt: id
                .bytes()
                .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b))),
        })
    }

    /// Polls while queued at most `cap_secs` apart (the update interval).
    pub fn paced(mut self, cap_secs: u64) -> Coordinator {
        self.cap_secs = cap_secs;
        self
    }

    /// Publishes this node's status record when it changed (etcd only);
    /// the line to log when that failed.
    pub fn publish(&mut self, rec: &NodeStatus) -> Option<String> {
        let p = self.publisher.as_mut()?;
        p.publish(rec)
            .err()
            .map(|e| format!("publishing this node's fleet status record: {e}"))
    }

    fn entry<'a>(&self, state: &'a mut State) -> &'a mut LockState {
        state.lock.get_or_insert_with(|| LockState {
            backend: self.lock.backend().into(),
            group: self.group.clone(),
            ..LockState::default()
        })
    }

    /// One try to take a slot at `now`; the outcome is recorded in `state`
    /// (the caller saves it before rebooting).
    pub fn take(&mut self, state: &mut State, now: u64) -> Take {
        if state
            .lock
            .as_ref()
            .is_some_and(|l| l.holding_since.is_some())
        {
            // Held since before a restart of the updater: reboot only once
            // the backend confirms the slot is still this node's.
            let line = self.resume(state);
            let holding = state
                .lock
                .as_ref()
                .is_some_and(|l| l.holding_since.is_some());
            match line {
                None if holding => return Take::Holding,
                Some(line) if holding => {
                    return Take::Wait {
                        line: format!("not rebooting: {line}"),
                        after: None,
                    }
                }
                _ => {}
            }
        }
        let backend = self.lock.backend();
        // The place in the queue lives on the status record's lease: one
        // lease refreshed per waiting node (without it, the lock's own).
        if let Some(l) = self.publisher.as_mut().and_then(|p| p.lease().ok()) {
            self.lock.queue_on_lease(l);
        }
        let result = self.lock.acquire();
        let token = self.lock.token();
        let l = self.entry(state);
        match result {
            Ok(Acquire::Granted) => {
                self.pace.reset();
                l.waiting_since = None;
                l.holding_since = Some(now);
                l.token = token;
                l.last_error = None;
                self.resumed = true;
                Take::Holding
            }
            Ok(Acquire::Busy { why, ahead }) => {
                l.waiting_since.get_or_insert(now);
                l.last_error = Some(why.clone());
                let salt = self.salt ^ now;
                Take::Wait {
                    line: format!("waiting for a reboot slot ({backend}): {why}"),
                    after: ahead.map(|a| self.pace.next(now as f64, a, self.cap_secs, salt)),
                }
            }
            Err(e) => {
                l.waiting_since.get_or_insert(now);
                l.last_error = Some(e.to_string());
                Take::Wait {
                    line: format!("not rebooting: {e}"),
                    after: None,
                }
            }
        }
    }

    /// After a reboot: keeps refreshing the slot held from before it. A
    /// slot the backend dropped meanwhile (lease expired) is forgotten.
    pub fn resume(&mut self, state: &mut State) -> Option<String> {
        if self.resumed {
            return None;
        }
        let l = state.lock.as_mut()?;
        l.holding_since?;
        match self.lock.resume(l.token.as_deref()) {
            Ok(true) => {
                self.resumed = true;
                None
            }
            Ok(false) => {
                l.holding_since = None;
                l.token = None;
                let line = "the reboot slot held before the reboot is gone (its lease expired: raise [lock] ttl_secs above the time a reboot takes)".to_string();
                l.last_error = Some(line.clone());
                Some(line)
            }
            Err(e) => {
                l.last_error = Some(e.to_string());
                Some(format!("keeping the reboot slot: {e}"))
            }
        }
    }

    /// Stops waiting for a slot (the maintenance window closed, or nothing
    /// is pending any more): leaves the backend's queue so that nodes
    /// behind this one are not held up. The line to log when it did.
    pub fn withdraw(&mut self, state: &mut State) -> Option<String> {
        let l = state.lock.as_mut()?;
        if l.holding_since.is_some() || l.waiting_since.is_none() {
            return None;
        }
        self.pace.reset();
        Some(match self.lock.withdraw() {
            Ok(()) => {
                state.lock = None;
                format!(
                    "stopped waiting for a reboot slot of group {}; the node queues again when it may reboot",
                    self.group
                )
            }
            Err(e) => {
                l.last_error = Some(e.to_string());
                format!("leaving the reboot slot queue: {e}")
            }
        })
    }

    /// Gives the slot back once no release is pending (the new boot is
    /// blessed, or the node fell back). The line to log when it did.
    pub fn release_if_settled(&mut self, state: &mut State) -> Option<String> {
        if state.pending.is_some() || state.lock.as_ref()?.holding_since.is_none() {
            return None;
        }
        Some(self.release(state))
    }

    /// Gives the slot back now; the line to log.
    pub fn release(&mut self, state: &mut State) -> String {
        let backend = self.lock.backend();
        match self.lock.release() {
            Ok(()) => {
                state.lock = None;
                format!(
                    "gave the reboot slot of group {} back ({backend})",
                    self.group
                )
            }
            Err(e) => {
                if let Some(l) = state.lock.as_mut() {
                    l.last_error = Some(e.to_string());
                }
                format!("giving the reboot slot back: {e}")
            }
        }
    }
}

/// The etcd client of `[lock]`: over TLS (its `ca_file`, `cert_file`,
/// `key_file`) when the endpoints are `https://`. The reboot lock and the
/// status publisher share it.
pub fn etcd_client(cfg: &LockConfig) -> Result<Client, herd_reboot_lock::Error> {
    let tls = if cfg.tls() {
        Some(Tls::from_files(
            cfg.ca_file.as_deref().map(Path::new),
            cfg.cert_file.as_deref().map(Path::new),
            cfg.key_file.as_deref().map(Path::new),
        )?)
    } else {
        None
    };
    Ok(Client::with_tls(&cfg.endpoints, tls))
}

/// How long to wait before the next try for a slot: doubling from 1 s up
/// to `cap_secs`, with up to 25 % added so waiting nodes spread out.
pub fn backoff(attempt: u32, cap_secs: u64, salt: u64) -> Duration {
    let base_ms = 1000u64
        .saturating_mul(1 << attempt.min(16))
        .min(cap_secs.max(1) * 1000);
    let jitter = (salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % (base_ms / 4 + 1);
    Duration::from_millis(base_ms + jitter)
}

/// When a node queued for a slot polls again. It learns how fast the
/// queue moves (slots freed per second, from its place at two polls) and
/// comes back after half the time its place should take, so the front of
/// the queue polls often and the back rarely: about log2(place) polls per
/// node instead of one per interval (10,000 nodes polling every interval
/// swamped etcd in bench/fleet.sh). Before it knows a rate it guesses one
/// slot per second; a queue that did not move doubles the spacing. Never
/// more than a second per slot ahead (a queue measured slow would otherwise
/// leave freed slots idle: bench/fleet.sh), always between 1 s and
/// `cap_secs` (so the node still checks its repository every interval),
/// plus up to 25 % jitter.
#[derive(Debug, Default, Clone)]
pub struct Pace {
    /// (time, place) at the last poll.
    last: Option<(f64, u32)>,
    /// Slots freed per second, smoothed.
    rate: Option<f64>,
    /// The last spacing chosen (s).
    spacing: f64,
}

impl Pace {
    /// The wait after a poll at `now` (seconds, any epoch) that found
    /// `ahead` slots to be freed before this node's turn.
    pub fn next(&mut self, now: f64, ahead: u32, cap_secs: u64, salt: u64) -> Duration {
        if let Some((t, was)) = self.last {
            if now > t {
                let moved = f64::from(was.saturating_sub(ahead)) / (now - t);
                self.rate = Some(self.rate.map_or(moved, |r| (r + moved) / 2.0));
            }
        }
        self.last = Some((now, ahead));
        let secs = match self.rate {
            None => f64::from(ahead),
            Some(r) if r > 0.0 => f64::from(ahead) / r / 2.0,
            Some(_) => self.spacing * 2.0,
        };
        // Never more than a second per slot ahead: a slow queue measured
        // slow must not make the nodes near the front poll so rarely that
        // freed slots stay idle (and the queue then measures slower still).
        let secs = secs.min(f64::from(ahead.max(1)));
        self.spacing = secs.clamp(1.0, cap_secs.max(1) as f64);
        let ms = (self.spacing * 1000.0) as u64;
        let jitter = (salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % (ms / 4 + 1);
        Duration::from_millis(ms + jitter)
    }

    /// Forgets what it learned (the node got its slot or left the queue).
    pub fn reset(&mut self) {
        *self = Pace::default();
    }
}

/// The fleet status record of a node running `version` from `slot`.
pub fn record(
    id: &str,
    version: &str,
    slot: &str,
    blessed: bool,
    state: &State,
    now: u64,
) -> NodeStatus {
    let lock = match state.lock.as_ref() {
        Some(l) if l.holding_since.is_some() => "holding",
        Some(l) if l.waiting_since.is_some() => "waiting",
        _ => "idle",
    };
    NodeStatus {
        node: id.into(),
        version: version.into(),
        slot: slot.into(),
        blessed,
        pending: state.pending.as_ref().map(|p| p.version.clone()),
        bad: state.bad.clone(),
        last_error: state.last_error.clone(),
        halted: state.halted.clone(),
        wave: state.wave,
        updated_at: now,
        lock: lock.into(),
    }
}

/// A line for `status`.
pub fn status_line(l: Option<&LockState>) -> String {
    let Some(l) = l else {
        return "-".into();
    };
    let what = match (l.holding_since, l.waiting_since) {
        (Some(t), _) => format!("holding a slot since {t}"),
        (None, Some(t)) => format!("waiting for a slot since {t}"),
        _ => "idle".into(),
    };
    format!(
        "{what} ({} group {}); last backend error: {}",
        l.backend,
        l.group,
        l.last_error.as_deref().unwrap_or("-")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_nodes_poll_by_how_fast_the_queue_moves() {
        let secs = |d: Duration| d.as_secs_f64();
        let mut p = Pace::default();
        // No rate known yet: one slot per second.
        assert!((40.0..=50.0).contains(&secs(p.next(0.0, 40, 600, 7))));
        // 40 -> 20 places in 40 s: 0.5 slot/s; 20 places take 40 s: back in 20.
        assert!((20.0..=25.0).contains(&secs(p.next(40.0, 20, 600, 7))));
        // A queue that stopped moving: the rate halves, the wait would
        // double, but never more than a second per slot ahead.
        assert!((20.0..=25.0).contains(&secs(p.next(60.0, 20, 600, 7))));
        // It moved again (19 places in 40 s): about 1.4 s for the last one;
        // never under 1 s nor over the cap.
        assert!((1.0..=2.0).contains(&secs(p.next(100.0, 1, 600, 7))));
        assert!((1.0..=1.25).contains(&secs(p.next(101.0, 0, 600, 7))));
        let mut back = Pace::default();
        assert!((600.0..=750.0).contains(&secs(back.next(0.0, 5000, 600, 7))));
        back.reset();
        assert!(back.last.is_none() && back.rate.is_none());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert!((1000..=1250).contains(&backoff(0, 60, 7).as_millis()));
        assert!((4000..=5000).contains(&backoff(2, 60, 7).as_millis()));
        assert!((60_000..=75_000).contains(&backoff(30, 60, 7).as_millis()));
    }

    #[test]
    fn unreachable_lock_waits_and_says_why() {
        let cfg = herd_update_config::UpdateConfig::parse(
            "repository = \"http://x\"\nreboot = \"coordinated\"\n[lock]\nbackend = \"fleetlock\"\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        let mut c = Coordinator::new(cfg.lock.as_ref().unwrap(), "n1").unwrap();
        let mut st = State::default();
        let Take::Wait { line, .. } = c.take(&mut st, 100) else {
            panic!("took a slot from nothing")
        };
        assert!(
            line.starts_with("not rebooting") && line.contains("127.0.0.1:1"),
            "{line}"
        );
        let l = st.lock.unwrap();
        assert_eq!((l.waiting_since, l.holding_since), (Some(100), None));
    }
}
