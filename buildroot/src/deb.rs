//! Debian packages: an `ar` archive holding `data.tar.{xz,zst,gz}`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use herd_fstree::{Meta, Node, Tree};

use crate::Error;

/// A package with its decompressed data archive in memory.
pub struct Deb {
    path: PathBuf,
    tar: Arc<Archive>,
}

/// A decompressed data archive: decompressed in memory, or mapped from the
/// package cache (no copy of the kernel's ~100 MiB on a warm build).
pub(crate) enum Archive {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Archive {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Archive::Owned(v) => v,
            Archive::Mapped(m) => m,
        }
    }
}

/// One entry of the data archive.
pub(crate) enum Entry<'a> {
    Dir { mode: u16 },
    File { mode: u16, data: &'a [u8] },
    Symlink { target: String },
    HardLink { target: String },
}

fn normalise(p: &str) -> String {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

impl Deb {
    /// Reads `path` and decompresses its data member.
    pub fn open(path: &Path) -> Result<Deb, Error> {
        let bad = |m: String| Error::BadDeb {
            file: path.to_path_buf(),
            message: m,
        };
        let bytes =
            std::fs::read(path).map_err(crate::io(format!("reading {}", path.display())))?;
        if !bytes.starts_with(b"!<arch>\n") {
            return Err(bad("no ar archive signature".into()));
        }
        let mut pos = 8;
        while pos + 60 <= bytes.len() {
            let h = &bytes[pos..pos + 60];
            let name = String::from_utf8_lossy(&h[0..16])
                .trim()
                .trim_end_matches('/')
                .to_string();
            let size: usize = String::from_utf8_lossy(&h[48..58])
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad ar member size for {name}")))?;
            let start = pos + 60;
            let end = start
                .checked_add(size)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| bad(format!("member {name} is truncated")))?;
            let member = &bytes[start..end];
            if let Some(kind) = name.strip_prefix("data.tar") {
                let mut tar = Vec::with_capacity(size * 4);
                let r: std::io::Result<usize> = match kind {
                    ".xz" => xz2::read::XzDecoder::new_multi_decoder(member).read_to_end(&mut tar),
                    ".zst" => zstd::stream::read::Decoder::new(member)
                        .and_then(|mut d| d.read_to_end(&mut tar)),
                    ".gz" => flate2::read::GzDecoder::new(member).read_to_end(&mut tar),
                    "" => {
                        tar.extend_from_slice(member);
                        Ok(tar.len())
                    }
                    other => return Err(bad(format!("unsupported compression data.tar{other}"))),
                };
                r.map_err(|e| bad(format!("decompressing {name}: {e}")))?;
                return Ok(Deb {
                    path: path.to_path_buf(),
                    tar: Arc::new(Archive::Owned(tar)),
                });
            }
            pos = end + (end % 2);
        }
        Err(bad("no data.tar member".into()))
    }

    /// A package whose data archive was decompressed before.
    pub(crate) fn from_archive(path: PathBuf, tar: Archive) -> Deb {
        Deb {
            path,
            tar: Arc::new(tar),
        }
    }

    /// The decompressed data archive.
    pub fn tar(&self) -> &[u8] {
        &self.tar
    }

    /// The decompressed data archive, shared (no copy).
    pub(crate) fn shared_tar(&self) -> Arc<Archive> {
        self.tar.clone()
    }

    /// The package file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry, normalised path first (no leading `./`), in archive order.
    pub(crate) fn entries(&self) -> Result<Vec<(String, Entry<'_>)>, Error> {
        let bad = |m: String| Error::BadDeb {
            file: self.path.clone(),
            message: m,
        };
        let mut a = tar::Archive::new(&self.tar[..]);
        let mut out = Vec::new();
        for e in a
            .entries()
            .map_err(|e| bad(format!("reading data.tar: {e}")))?
        {
            let e = e.map_err(|e| bad(format!("reading data.tar: {e}")))?;
            let path = normalise(&String::from_utf8_lossy(&e.path_bytes()));
            if path.is_empty() {
                continue;
            }
            let h = e.header();
            let mode = (h.mode().unwrap_or(0o644) & 0o7777) as u16;
            let link = || {
                e.link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default()
            };
            let entry = match h.entry_type() {
                tar::EntryType::Directory => Entry::Dir { mode },
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let start = e.raw_file_position() as usize;
                    let len = e.size() as usize;
                    let data = self
                        .tar
                        .get(start..start + len)
                        .ok_or_else(|| bad(format!("{path} is truncated")))?;
                    Entry::File { mode, data }
                }
                tar::EntryType::Symlink => Entry::Symlink { target: link() },
                tar::EntryType::Link => Entry::HardLink {
                    target: normalise(&link()),
                },
                other => {
                    tracing::debug!("{}: skipping {path} ({other:?})", self.path.display());
                    continue;
                }
            };
            out.push((path, entry));
        }
        Ok(out)
    }

    /// Unpacks the entries whose normalised path `select` accepts into a
    /// tree (owner root, modes kept; hard links become copies).
    pub fn unpack(&self, select: &dyn Fn(&str) -> bool) -> Result<Tree, Error> {
        let entries = self.entries()?;
        let files: HashMap<&str, &[u8]> = entries
            .iter()
            .filter_map(|(p, e)| match e {
                Entry::File { data, .. } => Some((p.as_str(), *data)),
                _ => None,
            })
            .collect();
        let mut t = Tree::new();
        for (path, e) in &entries {
            if !select(path) {
                continue;
            }
            match e {
                Entry::Dir { mode } => {
                    t.mkdir_p(path)?.meta = Meta::new(*mode);
                }
                Entry::File { mode, data } => {
                    t.insert(
                        path,
                        Node::File {
                            meta: Meta::new(*mode),
                            data: Arc::from(*data),
                        },
                    )?;
                }
                Entry::Symlink { target } => t.insert_symlink(path, target)?,
                Entry::HardLink { target } => {
                    let data = files.get(target.as_str()).ok_or_else(|| Error::BadDeb {
                        file: self.path.clone(),
                        message: format!("hard link {path} points to missing {target}"),
                    })?;
                    t.insert(
                        path,
                        Node::File {
                            meta: Meta::new(0o644),
                            data: Arc::from(*data),
                        },
                    )?;
                }
            }
        }
        Ok(t)
    }
}
