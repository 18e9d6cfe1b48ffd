//! herd's signed release metadata (see docs/UPDATES.md).
//!
//! A repository is plain files: `root/N.json` (key sets, each signed by its
//! own keys and by the previous set's, so keys rotate), `channels/C.json`
//! (the current release of channel C, with a sequence number and an expiry,
//! signed by the root keys) and `payloads/<sha256>` (content-addressed
//! payload files). Signed files are envelopes: the exact JSON text that was
//! signed, plus ed25519 signatures over its bytes, so no canonical-JSON
//! rules are needed.

mod chunks;
mod envelope;
mod key;
mod metadata;
mod repo;
mod verify;

pub use chunks::{
    chunk_reader, delta_worth, Chunk, ChunkIndex, ExpectedDownload, AVG_CHUNK, MAX_CHUNK,
    MAX_INDEX_BYTES, MIN_CHUNK, MIN_REUSE_PERCENT,
};
pub use envelope::{Envelope, Signature};
pub use key::{KeyId, PublicKey, SigningKey};
pub use metadata::{
    Channel, Halt, IndexRef, Payload, Release, Rollout, Root, SlotPcrs, Wave, BASE_SPEC, SPEC,
    SPEC_HALT,
};
pub use repo::Repo;
pub use verify::{
    check_channel_keys, compare_versions, in_wave, parse_trusted_root, update_root, verify_channel,
    verify_root_chain, walk_root_chain, wave_of, NodeState, PayloadCheck, MAX_METADATA_BYTES,
    MAX_ROOT_STEPS,
};

/// What can go wrong with keys and metadata. Every variant names one attack
/// or mistake, so logs and tests can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key file problem.
    #[error("key file {path}: {message}")]
    KeyFile {
        /// the file
        path: String,
        /// what is wrong
        message: String,
    },
    /// Metadata that does not parse.
    #[error("malformed {what}: {message}")]
    Malformed {
        /// which document
        what: &'static str,
        /// parser message
        message: String,
    },
    /// Metadata that follows a newer spec than this herd implements: it may
    /// carry rules this node would not enforce.
    #[error(
        "{what} follows metadata spec {spec}, but this herd implements spec {known}: refusing it rather than skipping rules it does not know; update this node first with a release published for spec {known}"
    )]
    NewerSpec {
        /// which document
        what: &'static str,
        /// the document's spec
        spec: u64,
        /// the spec this herd implements
        known: u64,
    },
    /// Metadata larger than any real one: refused before parsing.
    #[error("{what} is {size} bytes, more than the {limit}-byte limit: refusing it")]
    TooLarge {
        /// which document
        what: &'static str,
        /// its size
        size: u64,
        /// the limit
        limit: u64,
    },
    /// Not enough valid signatures from trusted keys.
    #[error(
        "{what} has {valid} valid signature(s) from trusted keys, {threshold} needed{unknown}"
    )]
    Signatures {
        /// which document
        what: &'static str,
        /// valid signatures from trusted keys
        valid: usize,
        /// required
        threshold: u32,
        /// ", signed by unknown key(s) ..." when that is the case
        unknown: String,
    },
    /// Past its expiry: a frozen or replayed repository.
    #[error("{what} expired at {expires} (now {now}): the repository is stale or frozen")]
    Expired {
        /// which document
        what: &'static str,
        /// its expiry (unix seconds)
        expires: u64,
        /// now
        now: u64,
    },
    /// Metadata older than what this node has seen: a rollback attack.
    #[error("{what} has sequence {got}, older than {seen} already seen: refusing a rollback")]
    Rollback {
        /// which document
        what: &'static str,
        /// offered sequence
        got: u64,
        /// highest seen
        seen: u64,
    },
    /// The repository answers with an older key set than one this node has
    /// already verified: someone undoes a key rotation (the old keys may
    /// have leaked).
    #[error(
        "the repository offers key set (root) {served}, but this node already trusts root {trusted}: refusing a rollback of keys (the rotated-out keys may have leaked); if the repository was rebuilt on purpose, re-provision the node with the new repository's keys"
    )]
    KeyRollback {
        /// newest root this node verified before
        trusted: u64,
        /// the newest root the repository serves, or whose keys signed the channel
        served: u64,
    },
    /// The document is of another type or channel than expected.
    #[error("{0}")]
    Mismatch(String),
    /// The release is older than the installed one.
    #[error("release {offered} is older than the installed {installed}: refusing a downgrade")]
    Downgrade {
        /// offered version
        offered: String,
        /// installed version
        installed: String,
    },
    /// The publisher halted the rollout of this release (`herd release halt`).
    #[error("rollout of {version} halted by the publisher: {reason}")]
    Halted {
        /// the halted release
        version: String,
        /// the publisher's reason
        reason: String,
    },
    /// `herd release halt` on a channel that is halted already.
    #[error("channel {channel} is already halted (rollout of {version}: {reason}): nothing to do; `herd release resume` continues it")]
    AlreadyHalted {
        /// the channel
        channel: String,
        /// its release
        version: String,
        /// the reason given when it was halted
        reason: String,
    },
    /// `herd release resume` on a channel that is not halted.
    #[error("channel {channel} is not halted (release {version} rolls out as published): nothing to resume")]
    NotHalted {
        /// the channel
        channel: String,
        /// its release
        version: String,
    },
    /// The release failed to boot here before.
    #[error("release {0} failed to boot on this node before and is marked bad")]
    KnownBad(String),
    /// A payload longer or shorter than signed (endless or cut download).
    #[error("payload {role}: {size} bytes, the signed size is {expected}")]
    PayloadSize {
        /// payload role
        role: String,
        /// bytes seen
        size: u64,
        /// signed size
        expected: u64,
    },
    /// A payload whose hash is not the signed one (tampered or mixed).
    #[error("payload {role}: sha256 {got} is not the signed {expected}: tampered, or from another release")]
    PayloadHash {
        /// payload role
        role: String,
        /// computed
        got: String,
        /// signed
        expected: String,
    },
    /// I/O.
    #[error("{what}: {source}")]
    Io {
        /// what was being done
        what: String,
        /// the cause
        source: std::io::Error,
    },
}
