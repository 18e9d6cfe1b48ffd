//! What a node checks before it takes a release.

use std::cmp::Ordering;

use sha2::{Digest, Sha256};

use crate::{Channel, Envelope, Error, Root};

/// Larger metadata files are refused unread.
pub const MAX_METADATA_BYTES: u64 = 1 << 20;

/// What a node remembers between checks (persisted in /var).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeState {
    /// Highest channel sequence seen.
    pub highest_seq: u64,
    /// Installed (running) version.
    pub installed: String,
    /// Versions that failed to boot here.
    pub bad: Vec<String>,
}

fn size_ok(bytes: &[u8], what: &'static str) -> Result<(), Error> {
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(Error::TooLarge {
            what,
            size: bytes.len() as u64,
            limit: MAX_METADATA_BYTES,
        });
    }
    Ok(())
}

/// Compares dotted numeric versions (`0.10.0` > `0.9.1`); non-numeric parts
/// compare as text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| {
        s.split(['.', '-', '+'])
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let (x, y) = (
            pa.get(i).map(String::as_str).unwrap_or("0"),
            pb.get(i).map(String::as_str).unwrap_or("0"),
        );
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Parses a self-signed root key set (`root/1.json`, the start of a node's
/// chain): signed by a threshold of its own keys.
pub fn parse_trusted_root(bytes: &[u8]) -> Result<Root, Error> {
    let env = Envelope::parse(bytes, "trusted root")?;
    let root: Root = env.document("trusted root")?;
    env.check(&root.keys, root.threshold, "trusted root")?;
    Ok(root)
}

/// How many newer roots a node follows in one check.
pub const MAX_ROOT_STEPS: u64 = 100;

/// Walks from the trusted root through newer roots (`root/N.json`, in
/// order): each must be signed by a threshold of the previous root's keys
/// and of its own, and carry the next version. Returns the newest root,
/// expired or not (for re-checking a chain a node kept).
pub fn walk_root_chain(trusted: &Root, newer: &[Vec<u8>]) -> Result<Root, Error> {
    let mut cur = trusted.clone();
    for bytes in newer {
        size_ok(bytes, "root")?;
        let env = Envelope::parse(bytes, "root")?;
        env.check(&cur.keys, cur.threshold, "root (by the previous key set)")?;
        let next: Root = env.document("root")?;
        env.check(&next.keys, next.threshold, "root (by its own key set)")?;
        if next.kind != "root" {
            return Err(Error::Mismatch(format!(
                "expected a root document, got type {:?}",
                next.kind
            )));
        }
        if next.version != cur.version + 1 {
            return Err(Error::Mismatch(format!(
                "root version {} does not follow version {}",
                next.version, cur.version
            )));
        }
        cur = next;
    }
    Ok(cur)
}

/// [`walk_root_chain`], and the newest root must not be expired at `now`.
pub fn verify_root_chain(trusted: &Root, newer: &[Vec<u8>], now: u64) -> Result<Root, Error> {
    let cur = walk_root_chain(trusted, newer)?;
    if cur.expires <= now {
        return Err(Error::Expired {
            what: "root",
            expires: cur.expires,
            now,
        });
    }
    Ok(cur)
}

/// The root document inside root file bytes, unverified (only to name
/// the key set that signed something already refused).
fn root_document(bytes: &[u8]) -> Option<Root> {
    size_ok(bytes, "root").ok()?;
    Envelope::parse(bytes, "root").ok()?.document("root").ok()
}

/// The newest version below `below` that `fetch` serves (0: none).
fn newest_served_below<E>(
    below: u64,
    fetch: &mut dyn FnMut(u64) -> Result<Option<Vec<u8>>, E>,
) -> Result<u64, E> {
    for n in (1..below).rev() {
        if fetch(n)?.is_some() {
            return Ok(n);
        }
    }
    Ok(0)
}

/// Brings the node's trusted root up to date from a repository whose
/// `root/N.json` files `fetch(N)` returns (`None`: not served). The
/// repository must still serve the trusted root itself, unchanged: one
/// that serves only older key sets is refused with [`Error::KeyRollback`],
/// so answering 404 cannot undo a rotation. Returns the newest root (not
/// expired at `now`) and the files of the roots past `trusted`, in order.
pub fn update_root<E: From<Error>>(
    trusted: &Root,
    now: u64,
    fetch: &mut dyn FnMut(u64) -> Result<Option<Vec<u8>>, E>,
) -> Result<(Root, Vec<Vec<u8>>), E> {
    let Some(same) = fetch(trusted.version)? else {
        let served = newest_served_below(trusted.version, fetch)?;
        return Err(Error::KeyRollback {
            trusted: trusted.version,
            served,
        }
        .into());
    };
    if root_document(&same).as_ref() != Some(trusted) {
        return Err(Error::Mismatch(format!(
            "the repository's root/{v}.json is not the key set this node verified as root {v}: a forked or altered repository",
            v = trusted.version
        ))
        .into());
    }
    let mut newer = Vec::new();
    for n in trusted.version + 1..=trusted.version + MAX_ROOT_STEPS {
        match fetch(n)? {
            Some(b) => newer.push(b),
            None => break,
        }
    }
    let root = verify_root_chain(trusted, &newer, now)?;
    Ok((root, newer))
}

/// Checks that channel metadata `bytes` carry a threshold of `root`'s
/// signatures. When they do not, but the keys of an older root the
/// repository serves (`fetch`) did sign them, that is a rollback of keys:
/// [`Error::KeyRollback`] instead of a plain [`Error::Signatures`].
pub fn check_channel_keys<E: From<Error>>(
    root: &Root,
    bytes: &[u8],
    fetch: &mut dyn FnMut(u64) -> Result<Option<Vec<u8>>, E>,
) -> Result<(), E> {
    size_ok(bytes, "channel metadata")?;
    let env = Envelope::parse(bytes, "channel metadata")?;
    let Err(refused) = env.check(&root.keys, root.threshold, "channel metadata") else {
        return Ok(());
    };
    for n in (1..root.version).rev() {
        let Some(old) = fetch(n)?.as_deref().and_then(root_document) else {
            continue;
        };
        if env
            .check(&old.keys, old.threshold, "channel metadata")
            .is_ok()
        {
            return Err(Error::KeyRollback {
                trusted: root.version,
                served: n,
            }
            .into());
        }
    }
    Err(refused.into())
}

/// Verifies channel metadata against `root` and the node's state; returns
/// the document and whether the node should take its release now (false:
/// nothing newer, not this node's wave yet, or the publisher halted the
/// rollout: [`crate::Channel::halted`]).
pub fn verify_channel(
    root: &Root,
    bytes: &[u8],
    channel: &str,
    state: &NodeState,
    node_id: &str,
    now: u64,
) -> Result<(Channel, bool), Error> {
    size_ok(bytes, "channel metadata")?;
    let env = Envelope::parse(bytes, "channel metadata")?;
    env.check(&root.keys, root.threshold, "channel metadata")?;
    let c: Channel = env.document("channel metadata")?;
    if c.kind != "channel" || c.channel != channel {
        return Err(Error::Mismatch(format!(
            "expected metadata for channel {channel:?}, got {:?} of type {:?}",
            c.channel, c.kind
        )));
    }
    if c.expires <= now {
        return Err(Error::Expired {
            what: "channel metadata",
            expires: c.expires,
            now,
        });
    }
    if c.seq < state.highest_seq {
        return Err(Error::Rollback {
            what: "channel metadata",
            got: c.seq,
            seen: state.highest_seq,
        });
    }
    let v = &c.release.version;
    if state.bad.contains(v) {
        return Err(Error::KnownBad(v.clone()));
    }
    match compare_versions(v, &state.installed) {
        Ordering::Less => {
            return Err(Error::Downgrade {
                offered: v.clone(),
                installed: state.installed.clone(),
            })
        }
        Ordering::Equal => return Ok((c, false)),
        Ordering::Greater => {}
    }
    for role in herd_contract::payload::REQUIRED {
        let p = c
            .release
            .payloads
            .get(role)
            .ok_or_else(|| Error::Mismatch(format!("release {v} has no {role} payload")))?;
        if p.sha256.len() != 64 || hex::decode(&p.sha256).is_err() {
            return Err(Error::Mismatch(format!(
                "release {v}: {role} has a malformed sha256"
            )));
        }
    }
    let take = c.halted.is_none()
        && c.release
            .rollout
            .as_ref()
            .is_none_or(|r| in_wave(r, node_id, v, now));
    Ok((c, take))
}

/// Whether this node's stable bucket (from its id and the version) is inside
/// the share the rollout allows at `now`.
pub fn in_wave(r: &crate::Rollout, node_id: &str, version: &str, now: u64) -> bool {
    let elapsed = now.saturating_sub(r.start);
    if now < r.start {
        return false;
    }
    let percent = r
        .waves
        .iter()
        .filter(|w| w.after_secs <= elapsed)
        .map(|w| w.percent)
        .max()
        .unwrap_or(0);
    bucket(node_id, version) < u64::from(percent.min(100)) * 100
}

/// Which wave of `r` (its index in [`crate::Rollout::waves`]) first lets
/// this node take `version`: the earliest-opening wave whose share covers
/// the node's bucket; None when no wave reaches it. The same bucket as
/// [`in_wave`], so a node is in its wave exactly from that wave's time on.
pub fn wave_of(r: &crate::Rollout, node_id: &str, version: &str) -> Option<usize> {
    let b = bucket(node_id, version);
    r.waves
        .iter()
        .enumerate()
        .filter(|(_, w)| b < u64::from(w.percent.min(100)) * 100)
        .min_by_key(|(i, w)| (w.after_secs, *i))
        .map(|(i, _)| i)
}

/// A stable bucket in 0..10000 per node and version.
fn bucket(node_id: &str, version: &str) -> u64 {
    let h = Sha256::new()
        .chain_update(node_id)
        .chain_update([0])
        .chain_update(version)
        .finalize();
    u64::from_be_bytes(h[..8].try_into().unwrap()) % 10_000
}

/// Checks a payload while it streams: never more than its signed size,
/// and its sha256 must match at the end.
pub struct PayloadCheck {
    role: String,
    expected: crate::Payload,
    hasher: Sha256,
    seen: u64,
}

impl PayloadCheck {
    /// Starts checking the payload `role` expected to be `expected`.
    pub fn new(role: &str, expected: &crate::Payload) -> Self {
        PayloadCheck {
            role: role.to_string(),
            expected: expected.clone(),
            hasher: Sha256::new(),
            seen: 0,
        }
    }

    /// Feeds the next bytes; errors as soon as the payload is too long.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.seen += chunk.len() as u64;
        if self.seen > self.expected.size {
            return Err(Error::PayloadSize {
                role: self.role.clone(),
                size: self.seen,
                expected: self.expected.size,
            });
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Ends the check: size and sha256 must match the signed metadata.
    pub fn finish(self) -> Result<(), Error> {
        if self.seen != self.expected.size {
            return Err(Error::PayloadSize {
                role: self.role,
                size: self.seen,
                expected: self.expected.size,
            });
        }
        let got = hex::encode(self.hasher.finalize());
        if got != self.expected.sha256 {
            return Err(Error::PayloadHash {
                role: self.role,
                got,
                expected: self.expected.sha256,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Rollout, Wave};

    #[test]
    fn a_nodes_wave_is_the_first_that_lets_it_in() {
        let r = Rollout {
            start: 1000,
            waves: vec![
                Wave {
                    after_secs: 0,
                    percent: 5,
                },
                Wave {
                    after_secs: 60,
                    percent: 25,
                },
                Wave {
                    after_secs: 120,
                    percent: 100,
                },
            ],
        };
        let mut per_wave = [0usize; 3];
        for i in 0..4000 {
            let id = format!("n{i}");
            let w = wave_of(&r, &id, "0.2.0").expect("the last wave takes everyone");
            per_wave[w] += 1;
            // Consistent with in_wave: out before its wave's time, in from it.
            let opens = 1000 + r.waves[w].after_secs;
            assert!(in_wave(&r, &id, "0.2.0", opens), "{id} wave {w}");
            if w > 0 {
                assert!(!in_wave(&r, &id, "0.2.0", opens - 1), "{id} wave {w}");
            }
        }
        // 5 %, 20 %, 75 % of 4000, give or take sampling.
        assert!((140..260).contains(&per_wave[0]), "{per_wave:?}");
        assert!((680..920).contains(&per_wave[1]), "{per_wave:?}");
        assert!((2850..3150).contains(&per_wave[2]), "{per_wave:?}");
        let none = Rollout {
            start: 0,
            waves: vec![Wave {
                after_secs: 0,
                percent: 0,
            }],
        };
        assert_eq!(wave_of(&none, "n1", "0.2.0"), None);
    }
}
