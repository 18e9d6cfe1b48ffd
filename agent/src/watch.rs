//! The static-pod directory: which manifests appeared, changed or went
//! since the last look. A manifest is identified by its file name and
//! versioned by the sha256 of its bytes, so an edit (even one that keeps
//! the modification time) replaces the pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A change in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new manifest file.
    Added(PathBuf),
    /// A manifest whose bytes changed.
    Changed(PathBuf),
    /// A manifest that is gone.
    Removed(PathBuf),
}

/// What was seen last time.
#[derive(Debug, Default)]
pub struct Watch {
    seen: BTreeMap<PathBuf, [u8; 32]>,
}

fn is_manifest(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && p.is_file()
}

impl Watch {
    /// Looks at `dir` and returns the changes since the last call (a
    /// missing directory holds no pods).
    pub fn scan(&mut self, dir: &Path) -> Vec<Change> {
        let mut now = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if !is_manifest(&p) {
                    continue;
                }
                if let Ok(bytes) = std::fs::read(&p) {
                    now.insert(p, Sha256::digest(&bytes).into());
                }
            }
        }
        let mut changes = Vec::new();
        for (p, h) in &now {
            match self.seen.get(p) {
                None => changes.push(Change::Added(p.clone())),
                Some(old) if old != h => changes.push(Change::Changed(p.clone())),
                Some(_) => {}
            }
        }
        for p in self.seen.keys() {
            if !now.contains_key(p) {
                changes.push(Change::Removed(p.clone()));
            }
        }
        self.seen = now;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_changed_removed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let mut w = Watch::default();
        assert!(w.scan(&d.join("missing")).is_empty());
        std::fs::write(d.join("a.yaml"), "1").unwrap();
        std::fs::write(d.join(".hidden.yaml"), "x").unwrap();
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        assert_eq!(w.scan(d), [Change::Added(d.join("a.yaml"))]);
        assert!(w.scan(d).is_empty());
        std::fs::write(d.join("a.yaml"), "2").unwrap();
        std::fs::write(d.join("b.yml"), "1").unwrap();
        assert_eq!(
            w.scan(d),
            [
                Change::Changed(d.join("a.yaml")),
                Change::Added(d.join("b.yml"))
            ]
        );
        std::fs::remove_file(d.join("a.yaml")).unwrap();
        assert_eq!(w.scan(d), [Change::Removed(d.join("a.yaml"))]);
    }
}
