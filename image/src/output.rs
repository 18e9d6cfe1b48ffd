//! The output directory: everything is written into a staging directory
//! inside it and moved into place only when the whole build succeeded, with
//! `build.json` last. A directory without `build.json` is not a finished build.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The name of the manifest that marks a complete build.
pub const MANIFEST: &str = "build.json";
const STAGING: &str = ".herd-build.partial";

/// Errors around the output directory.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot use output directory {dir}: {source} (choose a directory you can write to with --out)")]
    NotWritable { dir: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// A staging area for one build's outputs.
pub struct Staging {
    out: PathBuf,
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    /// Create (or clean) `OUT/.herd-build.partial`, creating OUT if needed.
    pub fn create(out: &Path) -> Result<Staging, OutputError> {
        let not_writable = |source| OutputError::NotWritable {
            dir: out.to_path_buf(),
            source,
        };
        fs::create_dir_all(out).map_err(not_writable)?;
        let dir = out.join(STAGING);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(not_writable)?;
        }
        fs::create_dir(&dir).map_err(not_writable)?;
        Ok(Staging {
            out: out.to_path_buf(),
            dir,
            committed: false,
        })
    }

    /// Path of an output inside the staging directory (parents created).
    pub fn path(&self, name: &str) -> Result<PathBuf, OutputError> {
        let p = self.dir.join(name);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(|source| OutputError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        Ok(p)
    }

    /// Write a whole output file into staging.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<PathBuf, OutputError> {
        let p = self.path(name)?;
        fs::write(&p, data).map_err(|source| OutputError::Write {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    }

    /// Move every staged output into the output directory. The old manifest
    /// is removed first and the new one (`manifest`) written last, so a crash
    /// in between never leaves a manifest that describes other files.
    pub fn commit(mut self, names: &[String], manifest: &[u8]) -> Result<(), OutputError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutputError::Write { path, source }
        };
        let final_manifest = self.out.join(MANIFEST);
        match fs::remove_file(&final_manifest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&final_manifest)(e)),
        }
        for name in names {
            if let Some(parent) = self.out.join(name).parent() {
                fs::create_dir_all(parent).map_err(err(parent))?;
            }
        }
        // Side by side: a rename over an earlier build's file frees that
        // file's blocks and pages, the larger part of the time here.
        use rayon::prelude::*;
        names.par_iter().try_for_each(|name| {
            let to = self.out.join(name);
            fs::rename(self.dir.join(name), &to).map_err(err(&to))
        })?;
        let staged = self.dir.join(MANIFEST);
        fs::write(&staged, manifest).map_err(err(&staged))?;
        fs::File::open(&staged)
            .and_then(|f| f.sync_all())
            .map_err(err(&staged))?;
        fs::rename(&staged, &final_manifest).map_err(err(&final_manifest))?;
        fs::remove_dir_all(&self.dir).map_err(err(&self.dir))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // A failed build leaves nothing half-written behind.
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_build_leaves_nothing_and_commit_moves_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        {
            let s = Staging::create(&out).unwrap();
            s.write("disk.raw", b"half").unwrap();
            // dropped without commit
        }
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0);

        let s = Staging::create(&out).unwrap();
        s.write("disk.raw", b"disk").unwrap();
        s.write("boot/linux", b"k").unwrap();
        s.commit(&["disk.raw".into(), "boot/linux".into()], b"{}")
            .unwrap();
        assert_eq!(fs::read(out.join("disk.raw")).unwrap(), b"disk");
        assert_eq!(fs::read(out.join("boot/linux")).unwrap(), b"k");
        assert_eq!(fs::read(out.join(MANIFEST)).unwrap(), b"{}");
        assert!(!out.join(STAGING).exists());
    }
}
