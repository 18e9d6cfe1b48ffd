//! What goes into `/usr`: Debian packages pinned by a lock file, fetched
//! into a cache with the ordinary `apt-get download`, checked against their
//! sha256, unpacked in memory (ar + tar + xz/zstd/gzip, no dpkg), and the
//! kernel's modules selected by name with their dependencies.

mod cache;
mod deb;
mod elf;
mod kernel;
mod lock;

pub use cache::{Cache, Fetch};
pub use deb::Deb;
pub use kernel::{KernelPackage, ModuleFile, ModuleSet};
pub use lock::{Lock, LockedPackage};

use std::path::PathBuf;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lock file could not be read.
    #[error("cannot read lock file {path}: {source}")]
    LockRead {
        /// the file
        path: PathBuf,
        /// the cause
        source: std::io::Error,
    },
    /// The lock file is not valid.
    #[error("{path}: {message}")]
    LockParse {
        /// the file
        path: PathBuf,
        /// what is wrong, with line and column
        message: String,
    },
    /// A package is missing from the cache and fetching is off.
    #[error("package {name} {version} is not in the cache ({file}) and fetching is disabled (--offline): run without --offline to fetch it with apt-get, or copy the .deb there")]
    NotCached {
        /// package name
        name: String,
        /// package version
        version: String,
        /// expected cache file
        file: PathBuf,
    },
    /// apt-get failed.
    #[error("`apt-get download {spec}` failed: {detail}\nhint: run `apt-get update`; if the version has left the Debian archive, bump it in the lock file")]
    Fetch {
        /// what was asked for
        spec: String,
        /// why
        detail: String,
    },
    /// The file's hash does not match the lock.
    #[error("sha256 mismatch for {name} ({file}): the lock says {expected}, the file is {actual}; the file was moved to {moved_to} and not used")]
    Mismatch {
        /// package name
        name: String,
        /// the file checked
        file: PathBuf,
        /// hash from the lock
        expected: String,
        /// hash of the file
        actual: String,
        /// where the bad file went
        moved_to: PathBuf,
    },
    /// The .deb matches the lock but its data archive does not.
    #[error("package {name}: its decompressed data archive has sha256 {actual}, but the lock's data_sha256 says {expected}; the .deb itself matches the lock's sha256, so data_sha256 is wrong: set it to {actual} (`dpkg-deb --fsys-tarfile FILE | sha256sum` prints the same)")]
    DataMismatch {
        /// package name
        name: String,
        /// data_sha256 from the lock
        expected: String,
        /// sha256 of the decompressed data archive
        actual: String,
    },
    /// The cache directory cannot be used.
    #[error("cache directory {dir} is not usable: {source} (set --cache or HERD_CACHE to a writable directory)")]
    CacheDir {
        /// the directory
        dir: PathBuf,
        /// the cause
        source: std::io::Error,
    },
    /// A .deb is malformed.
    #[error("{file}: not a valid Debian package: {message}")]
    BadDeb {
        /// the file
        file: PathBuf,
        /// what is wrong
        message: String,
    },
    /// The kernel package lacks something.
    #[error("kernel package: {0}")]
    Kernel(String),
    /// A module name is unknown.
    #[error("kernel module {name:?} is not in kernel {version}{hint}")]
    UnknownModule {
        /// requested name
        name: String,
        /// kernel version
        version: String,
        /// "; did you mean ...?"
        hint: String,
    },
    /// Adding files to a tree failed.
    #[error(transparent)]
    Tree(#[from] herd_fstree::TreeError),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// what was being done
        what: String,
        /// the cause
        source: std::io::Error,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
