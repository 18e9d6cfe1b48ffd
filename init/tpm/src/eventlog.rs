//! herd's measurement event log: one JSON object per line, one line per
//! PCR extend, in the order of the extends, so a verifier can replay it.
//!
//! ```text
//! {"pcr":11,"digest":"<sha256 hex>","kind":"phase","data":"enter-initrd"}
//! {"pcr":15,"digest":"<sha256 hex>","kind":"usrhash","data":"usrhash=<hex>"}
//! ```
//!
//! `digest` is SHA-256 of the UTF-8 bytes of `data`; the PCR's SHA-256 bank
//! was extended with it. Replaying (`PCR := SHA256(PCR || digest)` from the
//! PCR's value before herd-init, zero for PCR 15 and the stub's value for
//! PCR 11) must give the value the TPM reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The PCR extended.
    pub pcr: u32,
    /// SHA-256 of `data`, hex: what the PCR was extended with.
    pub digest: String,
    /// What kind of measurement: `phase`, `usrhash`, `slot`.
    pub kind: String,
    /// The measured text.
    pub data: String,
}

impl Event {
    /// An event measuring `data`.
    pub fn new(pcr: u32, kind: &str, data: &str) -> Event {
        Event {
            pcr,
            digest: hex::encode(Sha256::digest(data.as_bytes())),
            kind: kind.to_string(),
            data: data.to_string(),
        }
    }

    /// The digest as bytes (it is always 64 hex digits for events made here).
    pub fn digest_bytes(&self) -> Option<[u8; 32]> {
        hex::decode(&self.digest).ok()?.try_into().ok()
    }

    /// The log line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("events serialise")
    }
}

/// Why a log does not replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A line is not an event.
    #[error("event log line {line}: {err}")]
    Parse { line: usize, err: serde_json::Error },
    /// An event's digest is not SHA-256 of its data.
    #[error("event log line {0}: the digest is not the sha256 of the data")]
    Digest(usize),
}

/// Parses a log (JSON lines; blank lines ignored).
pub fn parse(text: &str) -> Result<Vec<Event>, ReplayError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|err| ReplayError::Parse { line: i + 1, err })
        })
        .collect()
}

/// Replays `events` onto `start` (PCR values before the events; absent PCRs
/// start at zero) and returns every PCR's final value. Each event's digest
/// is checked against its data, so a log cannot claim one thing and extend
/// another.
pub fn replay(
    start: &BTreeMap<u32, [u8; 32]>,
    events: &[Event],
) -> Result<BTreeMap<u32, [u8; 32]>, ReplayError> {
    let mut pcrs = start.clone();
    for (i, e) in events.iter().enumerate() {
        let d = e.digest_bytes().ok_or(ReplayError::Digest(i + 1))?;
        if d != <[u8; 32]>::from(Sha256::digest(e.data.as_bytes())) {
            return Err(ReplayError::Digest(i + 1));
        }
        let p = pcrs.entry(e.pcr).or_insert([0u8; 32]);
        let mut h = Sha256::new();
        h.update(&p[..]);
        h.update(d);
        *p = h.finalize().into();
    }
    Ok(pcrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_replay_checks_digests() {
        let e = Event::new(15, "slot", "slot=a");
        let text = format!(
            "{}\n\n{}\n",
            e.to_line(),
            Event::new(15, "x", "y").to_line()
        );
        let events = parse(&text).unwrap();
        assert_eq!(events[0], e);
        let pcrs = replay(&BTreeMap::new(), &events).unwrap();
        let mut want = [0u8; 32];
        for ev in &events {
            let mut h = Sha256::new();
            h.update(want);
            h.update(ev.digest_bytes().unwrap());
            want = h.finalize().into();
        }
        assert_eq!(pcrs[&15], want);
        let mut forged = events.clone();
        forged[0].data = "slot=b".into();
        assert!(matches!(
            replay(&BTreeMap::new(), &forged),
            Err(ReplayError::Digest(1))
        ));
    }
}
