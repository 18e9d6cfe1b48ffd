//! herd-update: the node's updater. It polls a static release repository,
//! verifies the signed metadata against the keys baked into `/usr`,
//! streams the new `/usr` and its verity tree into the inactive slot while
//! hashing, checks the verity root hash, installs the slot's boot files and a
//! boot entry with tries left (each file written beside and renamed into
//! place), and reboots by policy. If the new slot never reaches `ready`, the
//! boot loader falls back after its tries and herd-update marks that version
//! bad.

pub mod apply;
pub mod config;
pub mod download;
pub mod esp;
pub mod http;
pub mod slots;
pub mod state;

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
