//! The compressed-block cache on disk: one file per squashfs block, named
//! by its key, in `<package cache>/squashfs-blocks/`. herd-squashfs checks
//! every entry against its raw block before use, so this store only has to
//! be fast; a damaged entry costs a recompression, never a wrong image.
//!
//! Entries used by a build get their modification time refreshed; after the
//! build the least recently used go until the store is under its bound.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What the store may hold before the least recently used entries go.
pub const DEFAULT_LIMIT: u64 = 256 << 20;

/// A directory of compressed blocks.
pub struct DirCache {
    dir: PathBuf,
}

impl DirCache {
    /// The store in `dir` (created on the first entry written).
    pub fn new(dir: PathBuf) -> Self {
        DirCache { dir }
    }

    fn path(&self, key: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(key))
    }

    /// Removes the least recently used entries until the entries take at
    /// most `limit` bytes. Returns how many went.
    pub fn prune(&self, limit: u64) -> std::io::Result<usize> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for e in rd {
            let e = e?;
            let name = e.file_name();
            // Only entries (64 hex digits); temporary files are left alone.
            if name.len() != 64 {
                continue;
            }
            let m = e.metadata()?;
            entries.push((m.modified()?, m.len(), e.path()));
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        let mut removed = 0;
        for (_, len, path) in entries {
            if total <= limit {
                break;
            }
            std::fs::remove_file(&path)?;
            total -= len;
            removed += 1;
        }
        Ok(removed)
    }

    fn store(&self, key: &[u8; 32], entry: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut t = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::io::Write::write_all(&mut t, entry)?;
        t.persist(self.path(key)).map_err(|e| e.error)?;
        Ok(())
    }
}

impl herd_squashfs::BlockCache for DirCache {
    fn get(&self, key: &[u8; 32]) -> Option<Vec<u8>> {
        let mut f = std::fs::File::open(self.path(key)).ok()?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut bytes).ok()?;
        // Mark it used, for pruning.
        let _ = f.set_modified(SystemTime::now());
        Some(bytes)
    }

    fn put(&self, key: &[u8; 32], entry: &[u8]) {
        if let Err(e) = self.store(key, entry) {
            tracing::debug!(
                "not caching a compressed block in {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// The block store inside a package cache directory.
pub fn in_package_cache(cache_dir: &Path) -> DirCache {
    DirCache::new(cache_dir.join("squashfs-blocks"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_squashfs::BlockCache;
    use std::time::Duration;

    #[test]
    fn stores_reads_and_prunes_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let c = DirCache::new(dir.path().join("blocks"));
        assert_eq!(c.prune(0).unwrap(), 0, "a missing store is empty");
        assert_eq!(c.get(&[1; 32]), None);
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        for k in 1..=4u8 {
            c.put(&[k; 32], &vec![k; 1000]);
            let f = std::fs::File::open(c.path(&[k; 32])).unwrap();
            f.set_modified(t0 + Duration::from_secs(u64::from(k)))
                .unwrap();
        }
        std::fs::write(dir.path().join("blocks/.tmp-in-flight"), [0u8; 5000]).unwrap();
        // Reading entry 1 makes it the most recently used.
        assert_eq!(c.get(&[1; 32]), Some(vec![1; 1000]));
        assert_eq!(c.prune(2500).unwrap(), 2);
        assert_eq!(c.get(&[2; 32]), None);
        assert_eq!(c.get(&[3; 32]), None);
        assert_eq!(c.get(&[4; 32]), Some(vec![4; 1000]));
        assert_eq!(c.get(&[1; 32]), Some(vec![1; 1000]));
        assert!(dir.path().join("blocks/.tmp-in-flight").exists());
    }
}
