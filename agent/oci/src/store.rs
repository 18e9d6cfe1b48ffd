//! A content-addressed blob store (`<root>/blobs/sha256/<hex>`), written
//! only through a digest check: a blob is in the store only if its bytes
//! have its name's digest.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{io, Digest, Error};

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store under `root` (created when missing).
    pub fn open(root: &Path) -> Result<Store, Error> {
        let blobs = root.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io(format!("creating {}", blobs.display())))?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// Where a blob lives.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Whether the store has the blob.
    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Stores a blob written by `fill`, which must check the digest itself
    /// (as [`crate::registry::Registry::blob`] does); the blob appears
    /// under its name only when `fill` succeeds.
    pub fn put_with(
        &self,
        d: &Digest,
        fill: impl FnOnce(&mut dyn Write) -> Result<u64, Error>,
    ) -> Result<PathBuf, Error> {
        let dst = self.path(d);
        if dst.is_file() {
            return Ok(dst);
        }
        // Unique per writer: two pods may pull the same blob at once.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dst.with_extension(format!("part-{}-{n}", std::process::id()));
        let f = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        let mut w = BufWriter::new(f);
        let r = fill(&mut w).and_then(|_| {
            let f = w
                .into_inner()
                .map_err(|e| io("writing a blob")(e.into_error()))?;
            f.sync_all().map_err(io("writing a blob"))
        });
        match r {
            Ok(()) => {
                std::fs::rename(&tmp, &dst).map_err(io(format!("storing {d}")))?;
                Ok(dst)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Stores bytes after checking them against `d`.
    pub fn put(&self, d: &Digest, bytes: &[u8]) -> Result<PathBuf, Error> {
        d.check(bytes, &format!("blob {d}"))?;
        self.put_with(d, |w| {
            w.write_all(bytes).map_err(io("writing a blob"))?;
            Ok(bytes.len() as u64)
        })
    }

    /// Reads a blob back, checking it (a store on disk can be damaged).
    pub fn get(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        let b = std::fs::read(self.path(d)).map_err(io(format!("reading blob {d}")))?;
        d.check(&b, &format!("stored blob {d}"))?;
        Ok(b)
    }

    /// Removes every blob not in `keep`; returns how many went.
    pub fn retain(&self, keep: &std::collections::BTreeSet<Digest>) -> Result<usize, Error> {
        let dir = self.root.join("blobs/sha256");
        let mut n = 0;
        for e in std::fs::read_dir(&dir)
            .map_err(io(format!("listing {}", dir.display())))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let gone = match Digest::parse(&format!("sha256:{name}")) {
                Ok(d) => !keep.contains(&d),
                Err(_) => true, // leftovers of interrupted writes
            };
            if gone {
                std::fs::remove_file(e.path())
                    .map_err(io(format!("removing {}", e.path().display())))?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_checked_content_gets_in() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let d = Digest::of(b"hello");
        assert!(s.put(&d, b"hellO").is_err());
        assert!(!s.has(&d));
        s.put(&d, b"hello").unwrap();
        assert_eq!(s.get(&d).unwrap(), b"hello");
        std::fs::write(s.path(&d), b"HELLO").unwrap();
        assert!(matches!(s.get(&d), Err(Error::DigestMismatch { .. })));
        let failed = s.put_with(&Digest::of(b"x"), |_| Err(Error::NotFound("x".into())));
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read_dir(t.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            1
        );
        assert_eq!(s.retain(&Default::default()).unwrap(), 1);
    }
}
