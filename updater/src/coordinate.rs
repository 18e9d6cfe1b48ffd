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
}

/// What one try to take a slot came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// This node holds a slot: reboot now.
    Holding,
    /// Not this round; the line to log (busy, or why the lock is unreachable).
    Wait(String),
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
        })
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
                Some(line) if holding => return Take::Wait(format!("not rebooting: {line}")),
                _ => {}
            }
        }
        let backend = self.lock.backend();
        let result = self.lock.acquire();
        let token = self.lock.token();
        let l = self.entry(state);
        match result {
            Ok(Acquire::Granted) => {
                l.waiting_since = None;
                l.holding_since = Some(now);
                l.token = token;
                l.last_error = None;
                self.resumed = true;
                Take::Holding
            }
            Ok(Acquire::Busy(why)) => {
                l.waiting_since.get_or_insert(now);
                l.last_error = Some(why.clone());
                Take::Wait(format!("waiting for a reboot slot ({backend}): {why}"))
            }
            Err(e) => {
                l.waiting_since.get_or_insert(now);
                l.last_error = Some(e.to_string());
                Take::Wait(format!("not rebooting: {e}"))
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
        let Take::Wait(line) = c.take(&mut st, 100) else {
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
