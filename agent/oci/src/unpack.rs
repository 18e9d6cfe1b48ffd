//! Applying image layers to a root directory: gzip or plain tar, with
//! OCI whiteouts (`.wh.NAME` removes NAME, `.wh..wh..opq` empties the
//! directory of what lower layers put there), and no entry may reach
//! outside the root: no `..`, no absolute paths, no writing through
//! symlinks, no hard link to a target whose way leaves the root, no
//! whiteout naming `.`, `..` or nothing. Caps ([`Limits`]) bound the
//! decompressed bytes per layer and per image, the entries per layer and
//! the length of entry paths, so a compression bomb stops at the cap.

use std::cell::Cell;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use crate::manifest::{DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_TAR};
use crate::{io, Digest, Error};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// The prefix OCI reserves for special whiteouts (only [`OPAQUE`] exists).
const SPECIAL_WHITEOUT: &str = ".wh..wh.";

/// What one image may hold once decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Decompressed tar bytes of one layer (headers included).
    pub layer_bytes: u64,
    /// Decompressed tar bytes of all the layers of one image.
    pub image_bytes: u64,
    /// Entries of one layer.
    pub entries: u64,
    /// Bytes of one entry path or link target.
    pub path_bytes: usize,
}

impl Default for Limits {
    /// 4 GiB per layer, 16 GiB per image, 1,000,000 entries per layer,
    /// 4096-byte paths (Linux's `PATH_MAX`).
    fn default() -> Self {
        Limits {
            layer_bytes: 4 << 30,
            image_bytes: 16 << 30,
            entries: 1_000_000,
            path_bytes: 4096,
        }
    }
}

/// Applies the layers of one image, bottom first, counting what they
/// decompress to against one [`Limits`].
#[derive(Debug, Clone)]
pub struct Unpacker {
    limits: Limits,
    image_bytes: u64,
}

/// A reader that counts what passes and fails once more than `limit` did.
struct Counted<R> {
    inner: R,
    count: Rc<Cell<u64>>,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let c = self.count.get() + n as u64;
        self.count.set(c);
        if c > self.limit {
            return Err(std::io::Error::other("decompressed size cap reached"));
        }
        Ok(n)
    }
}

/// A relative, normal path inside the root, or `None` if `p` leaves it.
fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Makes sure every directory on the way to `rel` is a real directory in
/// `root` (not a symlink that could lead out, nor a file); missing ones are
/// created if `create`, else refused. `refuse` makes the error.
fn real_parents(
    root: &Path,
    rel: &Path,
    create: bool,
    refuse: impl Fn(String) -> Error,
) -> Result<(), Error> {
    let mut cur = root.to_path_buf();
    for c in rel.parent().into_iter().flat_map(Path::components) {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(refuse(format!(
                    "{} is not a directory (a symlink or file on the way to {})",
                    cur.display(),
                    rel.display()
                )))
            }
            Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(io(format!("creating {}", cur.display())))?
            }
            Err(e) => return Err(refuse(format!("{}: {e}", cur.display()))),
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

/// Applies one layer (`media_type` tells gzip from plain tar) onto `root`,
/// with the default [`Limits`].
pub fn apply(root: &Path, layer: &Digest, media_type: &str, data: impl Read) -> Result<(), Error> {
    Unpacker::new(Limits::default()).apply(root, layer, media_type, data)
}

impl Unpacker {
    /// An unpacker for one image.
    pub fn new(limits: Limits) -> Self {
        Unpacker {
            limits,
            image_bytes: 0,
        }
    }

    /// Applies the next layer of the image (`media_type` tells gzip from
    /// plain tar) onto `root`.
    pub fn apply(
        &mut self,
        root: &Path,
        layer: &Digest,
        media_type: &str,
        data: impl Read,
    ) -> Result<(), Error> {
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
        let count = Rc::new(Cell::new(0));
        let image_left = self.limits.image_bytes.saturating_sub(self.image_bytes);
        let counted = Counted {
            inner: reader,
            count: count.clone(),
            limit: self.limits.layer_bytes.min(image_left),
        };
        let r = self.entries(root, layer, counted);
        self.image_bytes += count.get();
        match r {
            // Whatever failed, it failed because the cap cut the stream.
            Err(_) if count.get() > self.limits.layer_bytes => Err(Error::LayerTooLarge {
                layer: layer.to_string(),
                scope: "per-layer",
                limit: self.limits.layer_bytes,
            }),
            Err(_) if count.get() > image_left => Err(Error::LayerTooLarge {
                layer: layer.to_string(),
                scope: "per-image",
                limit: self.limits.image_bytes,
            }),
            r => r,
        }
    }

    fn entries(&self, root: &Path, layer: &Digest, data: impl Read) -> Result<(), Error> {
        let mut ar = tar::Archive::new(data);
        ar.set_preserve_permissions(true);
        ar.set_unpack_xattrs(false);
        ar.set_overwrite(true);
        let entries = ar.entries().map_err(io(format!("reading layer {layer}")))?;
        for (n, e) in entries.enumerate() {
            if n as u64 >= self.limits.entries {
                return Err(Error::LayerTooManyEntries {
                    layer: layer.to_string(),
                    limit: self.limits.entries,
                });
            }
            let e = e.map_err(io(format!("reading layer {layer}")))?;
            self.entry(root, layer, e)?;
        }
        Ok(())
    }

    fn entry<R: Read>(
        &self,
        root: &Path,
        layer: &Digest,
        mut e: tar::Entry<'_, R>,
    ) -> Result<(), Error> {
        let len = e
            .path_bytes()
            .len()
            .max(e.link_name_bytes().map_or(0, |l| l.len()));
        if len > self.limits.path_bytes {
            return Err(Error::LayerPathTooLong {
                layer: layer.to_string(),
                len,
                limit: self.limits.path_bytes,
            });
        }
        let path = e
            .path()
            .map_err(io(format!("reading layer {layer}")))?
            .into_owned();
        let rel = clean(&path).ok_or_else(|| Error::Layer {
            layer: layer.to_string(),
            message: format!("entry {} leaves the image root", path.display()),
        })?;
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Ok(()); // the root itself
        };
        let on_the_way = |message| Error::Layer {
            layer: layer.to_string(),
            message,
        };
        real_parents(root, &rel, true, on_the_way)?;
        let dir = root.join(rel.parent().unwrap_or(Path::new("")));
        if name == OPAQUE {
            for c in fs::read_dir(&dir)
                .map_err(io(format!("listing {}", dir.display())))?
                .flatten()
            {
                remove_any(&c.path()).map_err(io(format!("removing {}", c.path().display())))?;
            }
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if ["", ".", ".."].contains(&hidden) || name.starts_with(SPECIAL_WHITEOUT) {
                return Err(Error::LayerWhiteout {
                    layer: layer.to_string(),
                    entry: rel.display().to_string(),
                });
            }
            let victim = dir.join(hidden);
            remove_any(&victim).map_err(io(format!("removing {}", victim.display())))?;
            return Ok(());
        }
        let kind = e.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            return Ok(()); // devices come from the runtime, not from images
        }
        let dst = root.join(&rel);
        if kind.is_hard_link() {
            let written = e
                .link_name()
                .map_err(io(format!("reading layer {layer}")))?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let refuse = |message: String| Error::LayerHardLink {
                layer: layer.to_string(),
                entry: rel.display().to_string(),
                target: written.display().to_string(),
                message,
            };
            let target = clean(&written)
                .filter(|t| t.file_name().is_some())
                .ok_or_else(|| refuse("the target is not a path inside the image root".into()))?;
            real_parents(root, &target, false, refuse)?;
            let target = root.join(target);
            match fs::symlink_metadata(&target) {
                Ok(m) if !m.is_dir() => {}
                Ok(_) => return Err(refuse("the target is a directory".into())),
                Err(e) => {
                    return Err(refuse(format!(
                        "the target is not in the image so far ({e})"
                    )))
                }
            }
            remove_any(&dst).map_err(io(format!("replacing {}", dst.display())))?;
            fs::hard_link(&target, &dst).map_err(io(format!("linking {}", dst.display())))?;
            return Ok(());
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
        Ok(())
    }
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

    /// A tar entry written by hand (the `tar` crate refuses `..` and
    /// absolute paths): `kind` is the type flag, `link` the link target.
    fn raw_entry(out: &mut Vec<u8>, path: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }

    fn end(mut out: Vec<u8>) -> Vec<u8> {
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn small(layer_bytes: u64, image_bytes: u64, entries: u64, path_bytes: usize) -> Unpacker {
        Unpacker::new(Limits {
            layer_bytes,
            image_bytes,
            entries,
            path_bytes,
        })
    }

    #[test]
    fn hard_links_stay_in_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(t.path().join("secret"), "node key").unwrap();
        let d = Digest::of(b"l");
        let mut l = Vec::new();
        raw_entry(&mut l, "a", tar::EntryType::Regular, "", b"A");
        raw_entry(&mut l, "b", tar::EntryType::Link, "./a", b"");
        apply(&root, &d, OCI_LAYER_TAR, &end(l)[..]).unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
        assert_eq!(ino("a"), ino("b"), "a link inside the root is kept");

        let out = t.path().display().to_string();
        for (name, layer) in [
            // A symlink to outside, then a hard link through it.
            ("through a symlink", {
                let mut l = Vec::new();
                raw_entry(&mut l, "out", tar::EntryType::Symlink, &out, b"");
                raw_entry(&mut l, "stolen", tar::EntryType::Link, "out/secret", b"");
                l
            }),
            ("with ..", {
                let mut l = Vec::new();
                raw_entry(&mut l, "stolen", tar::EntryType::Link, "../secret", b"");
                l
            }),
            ("absolute", {
                let mut l = Vec::new();
                let abs = format!("{out}/secret");
                raw_entry(&mut l, "stolen", tar::EntryType::Link, &abs, b"");
                l
            }),
            ("through a file", {
                let mut l = Vec::new();
                raw_entry(&mut l, "stolen", tar::EntryType::Link, "a/secret", b"");
                l
            }),
        ] {
            let e = apply(&root, &d, OCI_LAYER_TAR, &end(layer)[..]).unwrap_err();
            assert!(
                matches!(&e, Error::LayerHardLink { entry, .. } if entry == "stolen"),
                "{name}: {e}"
            );
            assert!(!root.join("stolen").exists(), "{name}");
        }
        assert_eq!(fs::read(t.path().join("secret")).unwrap(), b"node key");
    }

    #[test]
    fn whiteouts_name_a_file_of_their_directory() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("etc/x")).unwrap();
        fs::write(t.path().join("beside"), "outside").unwrap();
        let d = Digest::of(b"l");
        for entry in [
            ".wh..",
            ".wh...",
            "etc/.wh.",
            "etc/x/.wh...",
            "etc/.wh..wh.plnk",
        ] {
            let l = layer(&[(entry, Some(b""))]);
            let e = apply(&root, &d, OCI_LAYER_TAR, &l[..]).unwrap_err();
            assert!(
                matches!(&e, Error::LayerWhiteout { entry: got, .. } if got == entry),
                "{entry}: {e}"
            );
        }
        assert!(root.join("etc/x").is_dir(), "nothing was removed");
        assert!(
            t.path().join("beside").exists(),
            "nothing outside was removed"
        );
        // The opaque marker still works, in the root too.
        let l = layer(&[(".wh..wh..opq", Some(b"")), ("new", Some(b"n"))]);
        apply(&root, &d, OCI_LAYER_TAR, &l[..]).unwrap();
        assert!(!root.join("etc").exists() && root.join("new").exists());
        assert!(t.path().join("beside").exists());
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_layer_cap() {
        use std::io::Write;
        // 1 GiB of zeros in one file, gzipped as it is written (about 1 MiB).
        let size = 1u64 << 30;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut h = tar::Header::new_gnu();
        h.set_path("bomb").unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        gz.write_all(h.as_bytes()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..size >> 20 {
            gz.write_all(&zeros).unwrap();
        }
        gz.write_all(&[0; 1024]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 8 << 20, "{}", bomb.len());

        let t = tempfile::tempdir().unwrap();
        let d = Digest::of(b"bomb");
        let cap = 16 << 20;
        let mut u = small(cap, 1 << 40, 1000, 4096);
        let e = u
            .apply(t.path(), &d, OCI_LAYER_GZIP, &bomb[..])
            .unwrap_err();
        assert!(
            matches!(e, Error::LayerTooLarge { scope: "per-layer", limit, .. } if limit == cap),
            "{e}"
        );
        let written = fs::metadata(t.path().join("bomb")).map_or(0, |m| m.len());
        assert!(written <= cap, "{written} bytes written");
    }

    #[test]
    fn layers_share_the_image_cap() {
        let t = tempfile::tempdir().unwrap();
        let d = Digest::of(b"l");
        let data = vec![7u8; 600 << 10];
        let l = layer(&[("f", Some(&data[..]))]);
        let mut u = small(1 << 20, 1536 << 10, 1000, 4096);
        u.apply(t.path(), &d, OCI_LAYER_TAR, &l[..]).unwrap();
        u.apply(t.path(), &d, OCI_LAYER_TAR, &l[..]).unwrap();
        let e = u.apply(t.path(), &d, OCI_LAYER_TAR, &l[..]).unwrap_err();
        assert!(
            matches!(e, Error::LayerTooLarge { scope: "per-image", limit, .. } if limit == 1536 << 10),
            "{e}"
        );
        // A fresh image starts from zero.
        small(1 << 20, 1536 << 10, 1000, 4096)
            .apply(t.path(), &d, OCI_LAYER_TAR, &l[..])
            .unwrap();
    }

    #[test]
    fn entries_and_paths_are_capped() {
        let t = tempfile::tempdir().unwrap();
        let d = Digest::of(b"l");
        let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
        let entries: Vec<(&str, Option<&[u8]>)> = names
            .iter()
            .map(|n| (n.as_str(), Some(&b"x"[..])))
            .collect();
        small(1 << 20, 1 << 20, 11, 4096)
            .apply(t.path(), &d, OCI_LAYER_TAR, &layer(&entries)[..])
            .unwrap();
        let e = small(1 << 20, 1 << 20, 10, 4096)
            .apply(t.path(), &d, OCI_LAYER_TAR, &layer(&entries)[..])
            .unwrap_err();
        assert!(
            matches!(e, Error::LayerTooManyEntries { limit: 10, .. }),
            "{e}"
        );

        let long = format!("{}/f", "d".repeat(200));
        let l = layer(&[(&long, Some(b"x"))]);
        let e = small(1 << 20, 1 << 20, 10, 128)
            .apply(t.path(), &d, OCI_LAYER_TAR, &l[..])
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::LayerPathTooLong {
                    len: 202,
                    limit: 128,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!t.path().join("d".repeat(200)).exists());
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
