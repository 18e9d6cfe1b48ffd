//! The package cache: verified .debs, fetched with `apt-get download`, and
//! their decompressed data archives (so a warm build skips xz).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

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

    /// The verified .deb for `pkg` ([`Cache::ensure`]) and its data archive:
    /// the cache's decompressed copy ([`Cache::open_unpacked`], checked at
    /// the same time as the .deb), else decompressed now ([`Cache::unpack`],
    /// said through `progress`).
    pub fn open(
        &self,
        pkg: &LockedPackage,
        fetch: Fetch,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(PathBuf, Deb), Error> {
        let (path, unpacked) = rayon::join(
            || self.ensure(pkg, fetch, progress),
            || self.open_unpacked(pkg),
        );
        let path = path?;
        let deb = match unpacked {
            Some(d) => d,
            None => {
                progress(&format!(
                    "decompressing {} (its data archive is not in the cache yet)",
                    pkg.name
                ));
                self.unpack(pkg, &path)?
            }
        };
        Ok((path, deb))
    }

    /// The package's decompressed data archive from `unpacked/<sha256>.tar`
    /// in the cache, mapped (not read), when the lock pins its sha256
    /// (`data_sha256`) and the copy matches it. A copy that does not match
    /// is reported and left for [`Cache::unpack`] to replace.
    pub fn open_unpacked(&self, pkg: &LockedPackage) -> Option<Deb> {
        let want = pkg.data_sha256.as_deref()?;
        let tar = self.unpacked_path(pkg);
        let mapped = map(&tar).ok()?;
        if hex::encode(Sha256::digest(&mapped[..])) != want {
            tracing::warn!(
                "{} does not match the lock's data_sha256 for {}; unpacking the package again",
                tar.display(),
                pkg.name
            );
            return None;
        }
        Some(Deb::from_archive(
            self.dir.join(pkg.file_name()),
            Archive::Mapped(mapped),
        ))
    }

    /// Decompresses the verified .deb at `deb`, checks its data archive
    /// against the lock's `data_sha256`, and keeps a copy in the cache for
    /// the next build (when the lock pins it; best effort).
    pub fn unpack(&self, pkg: &LockedPackage, deb: &Path) -> Result<Deb, Error> {
        let d = Deb::open(deb)?;
        let actual = hex::encode(Sha256::digest(d.tar()));
        let Some(want) = pkg.data_sha256.as_deref() else {
            tracing::warn!(
                "the lock pins no data_sha256 for {}, so it is decompressed on every build: \
                 add data_sha256 = \"{actual}\" to its entry",
                pkg.name
            );
            return Ok(d);
        };
        if want != actual {
            return Err(Error::DataMismatch {
                name: pkg.name.clone(),
                expected: want.to_string(),
                actual,
            });
        }
        let dir = self.dir.join("unpacked");
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let t = tempfile::NamedTempFile::new_in(&dir)?;
            std::fs::write(t.path(), d.tar())?;
            t.persist(self.unpacked_path(pkg)).map_err(|e| e.error)?;
            // Checksum files of earlier herd versions, no longer trusted.
            for old in ["sha256", "sums"] {
                let _ = std::fs::remove_file(dir.join(format!("{}.tar.{old}", pkg.sha256)));
            }
            Ok(())
        };
        if let Err(e) = write() {
            tracing::debug!("not caching the unpacked {}: {e}", pkg.name);
        }
        Ok(d)
    }

    fn unpacked_path(&self, pkg: &LockedPackage) -> PathBuf {
        self.dir.join(format!("unpacked/{}.tar", pkg.sha256))
    }
}

fn map(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let f = std::fs::File::open(path)?;
    // SAFETY: the cache only ever replaces an archive by renaming a new file
    // over it, never by writing into it, so the mapped pages stay this
    // inode's; and every byte is checked against the lock before use.
    unsafe { memmap2::Mmap::map(&f) }
}
