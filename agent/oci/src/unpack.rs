//! Applying image layers to a root directory: gzip or plain tar, with
//! OCI whiteouts (`.wh.NAME` removes NAME, `.wh..wh..opq` empties the
//! directory of what lower layers put there), and no entry may reach
//! outside the root (no `..`, no absolute paths, no writing through
//! symlinks).

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::manifest::{DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_TAR};
use crate::{io, Digest, Error};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// A relative, normal path inside the root, or an error.
fn clean(p: &Path, layer: &Digest) -> Result<PathBuf, Error> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            _ => {
                return Err(Error::Layer {
                    layer: layer.to_string(),
                    message: format!("entry {} leaves the image root", p.display()),
                })
            }
        }
    }
    Ok(out)
}

/// Makes sure every directory on the way to `rel` is a real directory in
/// `root` (not a symlink that could lead out), creating missing ones.
fn real_parent(root: &Path, rel: &Path, layer: &Digest) -> Result<(), Error> {
    let mut cur = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::Layer {
                        layer: layer.to_string(),
                        message: format!(
                            "{} is not a directory (a symlink or file on the way to {})",
                            cur.display(),
                            rel.display()
                        ),
                    })
                }
                Err(_) => {
                    fs::create_dir(&cur).map_err(io(format!("creating {}", cur.display())))?
                }
            }
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies one layer (`media_type` tells gzip from plain tar) onto `root`.
pub fn apply(root: &Path, layer: &Digest, media_type: &str, data: impl Read) -> Result<(), Error> {
    let reader: Box<dyn Read> = match media_type {
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Box::new(flate2::read::GzDecoder::new(data)),
        OCI_LAYER_TAR => Box::new(data),
        other => {
            return Err(Error::Layer {
                layer: layer.to_string(),
                message: format!(
                    "unsupported layer media type {other:?} (gzip or plain tar layers only)"
                ),
            })
        }
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let entries = ar.entries().map_err(io(format!("reading layer {layer}")))?;
    for e in entries {
        let mut e = e.map_err(io(format!("reading layer {layer}")))?;
        let path = e
            .path()
            .map_err(io(format!("reading layer {layer}")))?
            .into_owned();
        let rel = clean(&path, layer)?;
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue; // the root itself
        };
        real_parent(root, &rel, layer)?;
        let dir = root.join(rel.parent().unwrap_or(Path::new("")));
        if name == OPAQUE {
            for c in fs::read_dir(&dir)
                .map_err(io(format!("listing {}", dir.display())))?
                .flatten()
            {
                remove_any(&c.path()).map_err(io(format!("removing {}", c.path().display())))?;
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let victim = dir.join(hidden);
            remove_any(&victim).map_err(io(format!("removing {}", victim.display())))?;
            continue;
        }
        let kind = e.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            continue; // devices come from the runtime, not from images
        }
        let dst = root.join(&rel);
        if kind.is_hard_link() {
            let target = e
                .link_name()
                .map_err(io(format!("reading layer {layer}")))?
                .ok_or_else(|| Error::Layer {
                    layer: layer.to_string(),
                    message: format!("hard link {} without a target", rel.display()),
                })?;
            let target = root.join(clean(&target, layer)?);
            remove_any(&dst).map_err(io(format!("replacing {}", dst.display())))?;
            fs::hard_link(&target, &dst).map_err(io(format!("linking {}", dst.display())))?;
            continue;
        }
        // A later layer replaces an entry of another kind.
        if let Ok(m) = fs::symlink_metadata(&dst) {
            if !(m.is_dir() && kind.is_dir()) {
                remove_any(&dst).map_err(io(format!("replacing {}", dst.display())))?;
            }
        }
        e.unpack(&dst).map_err(io(format!(
            "unpacking {} from layer {layer}",
            rel.display()
        )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn layers_with_whiteouts() {
        let t = tempfile::tempdir().unwrap();
        let d = Digest::of(b"l");
        let l1 = layer(&[
            ("etc/", None),
            ("etc/a", Some(b"1")),
            ("etc/b", Some(b"2")),
            ("opt/x/y", Some(b"3")),
        ]);
        apply(t.path(), &d, OCI_LAYER_TAR, &l1[..]).unwrap();
        let l2 = layer(&[
            ("etc/.wh.a", Some(b"")),
            ("opt/x/.wh..wh..opq", Some(b"")),
            ("opt/x/z", Some(b"4")),
        ]);
        apply(t.path(), &d, OCI_LAYER_TAR, &l2[..]).unwrap();
        assert!(!t.path().join("etc/a").exists());
        assert_eq!(fs::read(t.path().join("etc/b")).unwrap(), b"2");
        assert!(!t.path().join("opt/x/y").exists());
        assert_eq!(fs::read(t.path().join("opt/x/z")).unwrap(), b"4");
    }

    #[test]
    fn nothing_escapes_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let d = Digest::of(b"l");
        // `tar` refuses to build `..` paths, so write the header by hand.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[b'x'; 512]);
        raw.extend_from_slice(&[0; 1024]);
        let e = apply(&root, &d, OCI_LAYER_TAR, &raw[..]).unwrap_err();
        assert!(e.to_string().contains("leaves the image root"), "{e}");
        assert!(!t.path().join("escape").exists());
        // A symlink to outside, then a file through it.
        std::os::unix::fs::symlink(t.path(), root.join("link")).unwrap();
        let l = layer(&[("link/evil", Some(b"x"))]);
        let e = apply(&root, &d, OCI_LAYER_TAR, &l[..]).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(!t.path().join("evil").exists());
    }
}
