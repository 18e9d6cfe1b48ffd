//! The documents: root key sets and channel releases.
//!
//! Compatibility across herd versions: a node ignores fields it does not
//! know (the signature covers the exact text, so nobody can add one without
//! the keys), which lets a newer publisher add fields an older node may
//! safely pass over. A change an older node must not pass over (a field
//! that restricts what it may install) raises `spec`, and a node refuses a
//! document whose `spec` is above the [`SPEC`] it implements
//! ([`crate::Error::NewerSpec`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{KeyId, PublicKey};

/// The metadata spec this herd implements: documents with a higher `spec`
/// are refused.
pub const SPEC: u64 = 2;

/// The spec of documents that use nothing newer than the first one: what
/// roots and channels are written with, so nodes from before `spec` (and
/// nodes of spec 1) read them.
pub const BASE_SPEC: u64 = 1;

/// The spec of a halted channel document ([`Channel::halted`]): the halt
/// restricts what a node may install, so nodes of spec 1, which would pass
/// over the field and install, refuse the whole document instead.
pub const SPEC_HALT: u64 = 2;

fn spec_one() -> u64 {
    1
}

fn is_spec_one(s: &u64) -> bool {
    *s == 1
}

/// A key set: who may sign roots and channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// The metadata spec the document follows (absent: 1); see [`SPEC`].
    #[serde(default = "spec_one", skip_serializing_if = "is_spec_one")]
    pub spec: u64,
    /// Always "root".
    #[serde(rename = "type")]
    pub kind: String,
    /// 1, 2, ...: each new root is signed by its own keys and the previous root's.
    pub version: u64,
    /// Unix seconds after which this root is not trusted for anything new.
    pub expires: u64,
    /// Signatures needed.
    pub threshold: u32,
    /// Trusted keys by id.
    pub keys: BTreeMap<KeyId, PublicKey>,
    /// Unix seconds when it was signed: once verified, a node's idea of
    /// "now" never goes below it (absent in repositories made before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<u64>,
}

/// A payload file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// sha256, hex; also its file name under `payloads/`.
    pub sha256: String,
    /// Exact size in bytes: downloads stop there.
    pub size: u64,
    /// Its chunk index (see [`crate::ChunkIndex`]), for delta updates;
    /// absent in repositories made before them and for small payloads.
    /// Nodes that do not know the field pass over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<IndexRef>,
}

/// Where a payload's chunk index is: a content-addressed file under
/// `payloads/` like the payloads themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRef {
    /// sha256, hex; also its file name under `payloads/`.
    pub sha256: String,
    /// Exact size in bytes.
    pub size: u64,
}

/// One wave of a phased rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// Seconds after the rollout start.
    pub after_secs: u64,
    /// Percent of nodes (0–100) that may take the release from then on.
    pub percent: u32,
}

/// A phased rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Unix seconds.
    pub start: u64,
    /// Waves, by time.
    pub waves: Vec<Wave>,
}

/// A release of the OS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Image name.
    pub image: String,
    /// Version, dotted numbers (`0.2.0`).
    pub version: String,
    /// dm-verity root hash of `usr.img`.
    pub usrhash: String,
    /// Kernel command line words herd adds besides usrhash/mount.usr/slot.
    pub cmdline: Vec<String>,
    /// Payloads by role ([`herd_contract::payload`]): the usr image, its
    /// verity tree, the Unified Kernel Image of each slot, the kernel and
    /// the initrd.
    pub payloads: BTreeMap<String, Payload>,
    /// Phased rollout; absent = everyone at once.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// What a good node running this release reports from its TPM, by slot
    /// (`a`, `b`): see docs/MEASURED-BOOT.md.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pcrs: BTreeMap<String, SlotPcrs>,
}

/// Expected PCR values (SHA-256 bank, hex) of a node that booted a release
/// from one slot and reached `ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPcrs {
    /// PCR 11: the UKI as systemd-stub measured it, then herd-init's boot phases.
    pub pcr11: String,
    /// PCR 15: herd-init's measurement of the mounted /usr and the slot.
    pub pcr15: String,
}

impl Release {
    /// The dm-verity root hash as bytes; None when `usrhash` is not 64 hex digits.
    pub fn root_hash(&self) -> Option<[u8; 32]> {
        hex::decode(&self.usrhash).ok()?.try_into().ok()
    }
}

/// The current release of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// The metadata spec the document follows (absent: 1); see [`SPEC`].
    #[serde(default = "spec_one", skip_serializing_if = "is_spec_one")]
    pub spec: u64,
    /// Always "channel".
    #[serde(rename = "type")]
    pub kind: String,
    /// Channel name.
    pub channel: String,
    /// Increases with every publication; nodes refuse to go back.
    pub seq: u64,
    /// Unix seconds; stale metadata is refused.
    pub expires: u64,
    /// The release.
    pub release: Release,
    /// Unix seconds when it was signed (see [`Root::signed_at`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<u64>,
    /// Set by `herd release halt`: nodes that do not run this release yet
    /// do not take it; nodes already on it are unaffected. Cleared by
    /// `herd release resume` (the waves keep their original schedule) or by
    /// publishing another release. A halted document has spec
    /// [`SPEC_HALT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<Halt>,
}

/// Why and when the publisher halted a channel's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    /// The publisher's words, shown by nodes that do not take the release.
    pub reason: String,
    /// Unix seconds when it was halted.
    pub at: u64,
}

impl Channel {
    /// The lowest spec that expresses this document: what it is written with.
    pub fn needed_spec(&self) -> u64 {
        if self.halted.is_some() {
            SPEC_HALT
        } else {
            BASE_SPEC
        }
    }
}
