//! An in-memory filesystem tree: the content of a filesystem image before it
//! is written in some on-disk format (squashfs for `/usr`, newc cpio for the
//! initramfs, FAT for the ESP).
//!
//! Children are kept in byte order of their names, so every walk is
//! deterministic and matches the order squashfs and cpio readers expect.
//! Ownership and timestamps are explicit values, never read from the build
//! host, which keeps images reproducible and the builder unprivileged.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Errors from building a tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("path {path:?} is not absolute-free and clean: use names separated by '/', without '.', '..' or empty parts")]
    BadPath { path: String },
    #[error("cannot create {path:?}: {parent:?} exists and is not a directory")]
    NotADirectory { path: String, parent: String },
    #[error("{path:?} already exists as a different kind of entry")]
    Exists { path: String },
}

/// Ownership, permissions and modification time of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits only (e.g. `0o755`), without the file-type bits.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the Unix epoch.
    pub mtime: u32,
}

impl Meta {
    pub const fn new(mode: u16) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }
}

/// One entry in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir(Dir),
    File { meta: Meta, data: Arc<[u8]> },
    Symlink { meta: Meta, target: String },
    CharDev { meta: Meta, major: u32, minor: u32 },
    BlockDev { meta: Meta, major: u32, minor: u32 },
}

impl Node {
    pub fn meta(&self) -> &Meta {
        match self {
            Node::Dir(d) => &d.meta,
            Node::File { meta, .. }
            | Node::Symlink { meta, .. }
            | Node::CharDev { meta, .. }
            | Node::BlockDev { meta, .. } => meta,
        }
    }

    pub fn meta_mut(&mut self) -> &mut Meta {
        match self {
            Node::Dir(d) => &mut d.meta,
            Node::File { meta, .. }
            | Node::Symlink { meta, .. }
            | Node::CharDev { meta, .. }
            | Node::BlockDev { meta, .. } => meta,
        }
    }

    /// The POSIX file-type bits for this entry (`S_IFDIR`, `S_IFREG`, ...).
    pub fn type_bits(&self) -> u32 {
        match self {
            Node::Dir(_) => 0o040000,
            Node::File { .. } => 0o100000,
            Node::Symlink { .. } => 0o120000,
            Node::CharDev { .. } => 0o020000,
            Node::BlockDev { .. } => 0o060000,
        }
    }

    /// Full `st_mode`: type bits plus permission bits.
    pub fn st_mode(&self) -> u32 {
        self.type_bits() | u32::from(self.meta().mode)
    }
}

/// A directory and its children, sorted by name (byte order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    pub meta: Meta,
    pub children: BTreeMap<String, Node>,
}

impl Dir {
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            children: BTreeMap::new(),
        }
    }
}

/// A whole filesystem tree, rooted at a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub root: Dir,
    /// Metadata given to parent directories created implicitly.
    pub default_dir: Meta,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

fn split(path: &str) -> Result<Vec<&str>, TreeError> {
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = trimmed.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(TreeError::BadPath {
            path: path.to_string(),
        });
    }
    Ok(parts)
}

impl Tree {
    /// An empty tree whose root and implicit directories are `0755 root:root`.
    pub fn new() -> Self {
        Self {
            root: Dir::new(Meta::new(0o755)),
            default_dir: Meta::new(0o755),
        }
    }

    /// The directory at `path`, created with its parents if missing.
    pub fn mkdir_p(&mut self, path: &str) -> Result<&mut Dir, TreeError> {
        let parts = split(path)?;
        let default = self.default_dir;
        let mut dir = &mut self.root;
        let mut so_far = String::new();
        for part in parts {
            so_far.push('/');
            so_far.push_str(part);
            let node = dir
                .children
                .entry(part.to_string())
                .or_insert_with(|| Node::Dir(Dir::new(default)));
            dir = match node {
                Node::Dir(d) => d,
                _ => {
                    return Err(TreeError::NotADirectory {
                        path: path.to_string(),
                        parent: so_far,
                    })
                }
            };
        }
        Ok(dir)
    }

    /// Insert `node` at `path`, creating parent directories. An existing
    /// entry is replaced, except that inserting a directory over a directory
    /// keeps the existing children and only updates its metadata.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<(), TreeError> {
        let parts = split(path)?;
        let Some((name, parents)) = parts.split_last() else {
            // The root itself.
            return match node {
                Node::Dir(d) => {
                    self.root.meta = d.meta;
                    Ok(())
                }
                _ => Err(TreeError::Exists {
                    path: path.to_string(),
                }),
            };
        };
        let parent = self.mkdir_p(&parents.join("/"))?;
        match (parent.children.get_mut(*name), node) {
            (Some(Node::Dir(existing)), Node::Dir(new)) => {
                existing.meta = new.meta;
                for (k, v) in new.children {
                    existing.children.insert(k, v);
                }
            }
            (_, node) => {
                parent.children.insert((*name).to_string(), node);
            }
        }
        Ok(())
    }

    pub fn insert_file(
        &mut self,
        path: &str,
        data: impl Into<Arc<[u8]>>,
        mode: u16,
    ) -> Result<(), TreeError> {
        self.insert(
            path,
            Node::File {
                meta: Meta::new(mode),
                data: data.into(),
            },
        )
    }

    pub fn insert_symlink(&mut self, path: &str, target: &str) -> Result<(), TreeError> {
        self.insert(
            path,
            Node::Symlink {
                meta: Meta::new(0o777),
                target: target.to_string(),
            },
        )
    }

    /// The entry at `path`, if any. The empty path or "/" is the root.
    pub fn get(&self, path: &str) -> Option<&Node> {
        let parts = split(path).ok()?;
        let mut dir = &self.root;
        let (last, parents) = parts.split_last()?;
        for part in parents {
            match dir.children.get(*part)? {
                Node::Dir(d) => dir = d,
                _ => return None,
            }
        }
        dir.children.get(*last)
    }

    /// Remove the entry at `path`, returning it.
    pub fn remove(&mut self, path: &str) -> Option<Node> {
        let parts = split(path).ok()?;
        let (last, parents) = parts.split_last()?;
        let mut dir = &mut self.root;
        for part in parents {
            match dir.children.get_mut(*part)? {
                Node::Dir(d) => dir = d,
                _ => return None,
            }
        }
        dir.children.remove(*last)
    }

    /// Set every entry's modification time, e.g. to `SOURCE_DATE_EPOCH`.
    pub fn set_mtime_all(&mut self, mtime: u32) {
        fn walk(dir: &mut Dir, mtime: u32) {
            dir.meta.mtime = mtime;
            for child in dir.children.values_mut() {
                match child {
                    Node::Dir(d) => walk(d, mtime),
                    other => other.meta_mut().mtime = mtime,
                }
            }
        }
        self.default_dir.mtime = mtime;
        walk(&mut self.root, mtime);
    }

    /// Every entry below the root, parents before children, siblings in name
    /// order, with its path relative to the root (no leading '/').
    pub fn walk(&self) -> Vec<(String, &Node)> {
        fn go<'a>(dir: &'a Dir, prefix: &str, out: &mut Vec<(String, &'a Node)>) {
            for (name, node) in &dir.children {
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                out.push((path.clone(), node));
                if let Node::Dir(d) = node {
                    go(d, &path, out);
                }
            }
        }
        let mut out = Vec::new();
        go(&self.root, "", &mut out);
        out
    }

    /// Sum of the sizes of all regular files' contents.
    pub fn file_bytes(&self) -> u64 {
        self.walk()
            .iter()
            .map(|(_, n)| match n {
                Node::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_creates_parents_and_walks_in_order() {
        let mut t = Tree::new();
        t.insert_file("usr/bin/b", &b"bb"[..], 0o755).unwrap();
        t.insert_file("usr/bin/a", &b"a"[..], 0o644).unwrap();
        t.insert_symlink("bin", "usr/bin").unwrap();
        let paths: Vec<String> = t.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["bin", "usr", "usr/bin", "usr/bin/a", "usr/bin/b"]);
        assert_eq!(t.file_bytes(), 3);
        assert!(matches!(t.get("usr/bin/a"), Some(Node::File { .. })));
        assert_eq!(t.get("usr/bin/a").unwrap().st_mode(), 0o100644);
    }

    #[test]
    fn rejects_bad_paths_and_files_as_parents() {
        let mut t = Tree::new();
        assert!(matches!(
            t.insert_file("a/../b", &b""[..], 0o644),
            Err(TreeError::BadPath { .. })
        ));
        t.insert_file("f", &b""[..], 0o644).unwrap();
        assert!(matches!(
            t.insert_file("f/g", &b""[..], 0o644),
            Err(TreeError::NotADirectory { .. })
        ));
    }

    #[test]
    fn set_mtime_all_reaches_every_entry() {
        let mut t = Tree::new();
        t.insert_file("a/b/c", &b"x"[..], 0o644).unwrap();
        t.set_mtime_all(42);
        assert!(t.walk().iter().all(|(_, n)| n.meta().mtime == 42));
        assert_eq!(t.root.meta.mtime, 42);
    }

    #[test]
    fn dir_over_dir_keeps_children() {
        let mut t = Tree::new();
        t.insert_file("d/x", &b""[..], 0o644).unwrap();
        t.insert("d", Node::Dir(Dir::new(Meta::new(0o700))))
            .unwrap();
        assert!(t.get("d/x").is_some());
        assert_eq!(t.get("d").unwrap().meta().mode, 0o700);
    }
}
