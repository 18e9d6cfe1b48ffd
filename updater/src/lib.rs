//! herd-update: the node's updater. It polls a static release repository,
//! verifies the signed metadata against the keys baked into `/usr` and the
//! newer key sets it verified since (kept in its state),
//! streams the new `/usr` and its verity tree into the inactive slot while
//! hashing, checks the verity root hash, installs the slot's boot files and a
//! boot entry with tries left (each file written beside and renamed into
//! place), and reboots by policy. If the new slot is never blessed (it fails
//! before `ready`, or herd-init's health deadline reboots it), the boot loader
//! falls back after its tries and herd-update marks that version bad.

pub mod apply;
pub mod coordinate;
pub mod delta;
pub mod download;
pub mod esp;
pub mod http;
pub mod loader;
pub mod slots;
pub mod state;
pub mod tls;
pub mod trust;

/// The configuration schema lives in its own crate (the builder and
/// provisioning check configurations with it without linking the updater).
pub use herd_update_config as config;

/// What can go wrong; every variant is one clear log line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The repository could not be reached or answered wrongly.
    #[error("fetching {url}: {message}")]
    Http {
        /// the URL
        url: String,
        /// what happened
        message: String,
    },
    /// A transfer that did not finish in time (a slow or trickling server).
    #[error(
        "fetching {url}: not finished after {secs} s, the deadline for this transfer: the server or the network is too slow, or trickles bytes on purpose; the next check tries again (a payload resumes where it stopped)"
    )]
    Deadline {
        /// the URL
        url: String,
        /// the deadline, seconds
        secs: u64,
    },
    /// The key sets kept in the state do not follow from the baked keys.
    #[error(
        "the key sets this node verified before (\"roots\" in state.json of the updater's state directory, /var/lib/herd/update on a node) do not follow from the keys baked into the image: {cause}; if the image now trusts another repository on purpose, remove \"roots\" from that file, else the state was tampered with"
    )]
    KeptRoots {
        /// why they do not verify
        cause: herd_release::Error,
    },
    /// A chunk fetched for a delta update whose bytes are not the ones the
    /// signed chunk index names.
    #[error(
        "fetching {url}: bytes {offset}..{end} have sha256 {got}, the signed chunk index says {expected}: the server's payload is tampered or damaged; refusing it (nothing was marked good)"
    )]
    ChunkHash {
        /// the payload URL
        url: String,
        /// first byte of the chunk
        offset: u64,
        /// one past its last byte
        end: u64,
        /// computed sha256, hex
        got: String,
        /// the index's sha256, hex
        expected: String,
    },
    /// Metadata or payload refused.
    #[error(transparent)]
    Release(#[from] herd_release::Error),
    /// The slots or the disk are not as expected.
    #[error("{0}")]
    Disk(String),
    /// The written slot does not verify.
    #[error("the written slot does not verify against usrhash: {0}")]
    Verity(#[from] herd_verity::Error),
    /// I/O.
    #[error("{what}: {cause}")]
    Io {
        /// what was being done
        what: String,
        /// the cause
        cause: std::io::Error,
    },
}

impl From<config::Error> for Error {
    fn from(e: config::Error) -> Error {
        match e {
            config::Error::Config(m) => Error::Config(m),
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |cause| Error::Io { what, cause }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
