//! The package cache: verified .debs, fetched with `apt-get download`, and
//! their decompressed data archives (so a warm build skips xz).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use rayon::prelude::*;

use crate::deb::Archive;
use crate::{io, Deb, Error, LockedPackage};

/// Whether missing packages may be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Only use what is in the cache.
    Never,
    /// Run `apt-get download` for what is missing.
    AptGet,
}

/// A directory of verified .deb files.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(io(format!("reading {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl Cache {
    /// A cache in `dir` (created when something is fetched).
    pub fn new(dir: PathBuf) -> Self {
        Cache { dir }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check(&self, pkg: &LockedPackage, file: &Path) -> Result<(), Error> {
        let actual = sha256_file(file)?;
        if actual == pkg.sha256 {
            return Ok(());
        }
        let moved_to = file.with_extension("deb.rejected");
        if std::fs::rename(file, &moved_to).is_err() {
            let _ = std::fs::remove_file(file);
        }
        Err(Error::Mismatch {
            name: pkg.name.clone(),
            file: file.to_path_buf(),
            expected: pkg.sha256.clone(),
            actual,
            moved_to,
        })
    }

    /// The path of the verified .deb for `pkg`, fetching it first when it
    /// is missing and `fetch` allows. A file that does not match the lock
    /// is moved aside and never used.
    pub fn ensure(
        &self,
        pkg: &LockedPackage,
        fetch: Fetch,
        progress: &dyn Fn(&str),
    ) -> Result<PathBuf, Error> {
        let file = self.dir.join(pkg.file_name());
        if file.exists() {
            self.check(pkg, &file)?;
            return Ok(file);
        }
        if fetch == Fetch::Never {
            return Err(Error::NotCached {
                name: pkg.name.clone(),
                version: pkg.version.clone(),
                file,
            });
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::CacheDir {
            dir: self.dir.clone(),
            source,
        })?;
        let tmp = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(&self.dir)
            .map_err(|source| Error::CacheDir {
                dir: self.dir.clone(),
                source,
            })?;
        let spec = format!("{}:{}={}", pkg.name, pkg.arch, pkg.version);
        progress(&format!("fetching {spec} with apt-get download"));
        let out = Command::new("apt-get")
            .args(["download", "-q", &spec])
            .current_dir(tmp.path())
            .output()
            .map_err(|e| Error::Fetch {
                spec: spec.clone(),
                detail: format!("cannot run apt-get: {e}"),
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().filter(|l| !l.contains("unsandboxed")).collect();
            let tail = tail[tail.len().saturating_sub(5)..].join("\n");
            return Err(Error::Fetch { spec, detail: tail });
        }
        let got = tmp.path().join(pkg.file_name());
        if !got.exists() {
            return Err(Error::Fetch {
                spec,
                detail: format!("apt-get did not produce {}", pkg.file_name()),
            });
        }
        self.check(pkg, &got)?;
        std::fs::rename(&got, &file)
            .map_err(io(format!("moving the download into {}", file.display())))?;
        progress(&format!(
            "fetched {} ({} bytes)",
            pkg.file_name(),
            file.metadata().map(|m| m.len()).unwrap_or(0)
        ));
        Ok(file)
    }

    /// Opens a verified .deb, reusing its decompressed data archive from
    /// `unpacked/<sha256>.tar` in the cache (made on first use). The archive
    /// is mapped, not read, and checked each time against the sha256 of
    /// every 8 MiB of it, recorded beside it when it was made; the chunks
    /// are hashed on all cores. A damaged archive is made again from the
    /// .deb. (The record guards against damage, not against someone who can
    /// write the cache: only the .deb is checked against the lock.)
    pub fn open_deb(&self, pkg: &LockedPackage, deb: &Path) -> Result<Deb, Error> {
        let dir = self.dir.join("unpacked");
        let tar = dir.join(format!("{}.tar", pkg.sha256));
        let sums = dir.join(format!("{}.tar.sums", pkg.sha256));
        if let (Ok(mapped), Ok(want)) = (map(&tar), std::fs::read_to_string(&sums)) {
            if want == chunk_sums(&mapped) {
                return Ok(Deb::from_archive(
                    deb.to_path_buf(),
                    Archive::Mapped(mapped),
                ));
            }
            tracing::warn!(
                "{} does not match its checksums; unpacking again",
                tar.display()
            );
        }
        let d = Deb::open(deb)?;
        // Best effort: a read-only cache only makes the next build slower.
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let t = tempfile::NamedTempFile::new_in(&dir)?;
            std::fs::write(t.path(), d.tar())?;
            t.persist(&tar).map_err(|e| e.error)?;
            let s = tempfile::NamedTempFile::new_in(&dir)?;
            std::fs::write(s.path(), chunk_sums(d.tar()))?;
            s.persist(&sums).map_err(|e| e.error)?;
            // The whole-file checksum of earlier herd versions.
            let _ = std::fs::remove_file(dir.join(format!("{}.tar.sha256", pkg.sha256)));
            Ok(())
        };
        if let Err(e) = write() {
            tracing::debug!("not caching the unpacked {}: {e}", pkg.name);
        }
        Ok(d)
    }
}

/// The bytes of each checksum in the record beside an unpacked archive.
const SUM_CHUNK: usize = 8 << 20;

/// The record: a header naming the format and length, then the sha256 of
/// each [`SUM_CHUNK`] bytes, one per line.
fn chunk_sums(bytes: &[u8]) -> String {
    let sums: Vec<String> = bytes
        .par_chunks(SUM_CHUNK)
        .map(|c| hex::encode(Sha256::digest(c)))
        .collect();
    let mut out = format!("herd unpacked archive v1 {SUM_CHUNK} {}\n", bytes.len());
    for s in sums {
        out.push_str(&s);
        out.push('\n');
    }
    out
}

fn map(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let f = std::fs::File::open(path)?;
    // SAFETY: the cache only ever replaces an archive by renaming a new file
    // over it, never by writing into it, so the mapped pages stay this
    // inode's; and every byte is checked against the record before use.
    unsafe { memmap2::Mmap::map(&f) }
}
