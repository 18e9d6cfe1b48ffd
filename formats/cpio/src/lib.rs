//! newc ("070701") cpio archives, the format the Linux kernel unpacks as an
//! initramfs. Deterministic: inode numbers follow the walk order, every
//! field comes from the tree, never from the host.

use std::io::Write;

use herd_fstree::{Node, Tree};

/// What can go wrong writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing to the output failed.
    #[error("writing the cpio archive: {0}")]
    Io(#[from] std::io::Error),
    /// A file is too large for newc's 32-bit size field.
    #[error("{path}: {size} bytes is too large for a newc cpio archive (4 GiB limit)")]
    TooLarge {
        /// entry path
        path: String,
        /// its size
        size: u64,
    },
}

struct Counter<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Counter<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(b)?;
        self.n += b.len() as u64;
        Ok(())
    }
    fn pad4(&mut self) -> std::io::Result<()> {
        let pad = (4 - (self.n % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

struct Header<'a> {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &'a str,
}

fn entry<W: Write>(out: &mut Counter<W>, h: &Header, data: &[u8]) -> std::io::Result<()> {
    let fields = [
        h.ino,
        h.mode,
        h.uid,
        h.gid,
        h.nlink,
        h.mtime,
        h.size,
        0,
        0,
        h.rdev.0,
        h.rdev.1,
        h.name.len() as u32 + 1,
        0,
    ];
    let mut hdr = String::with_capacity(110);
    hdr.push_str("070701");
    for f in fields {
        hdr.push_str(&format!("{f:08X}"));
    }
    out.put(hdr.as_bytes())?;
    out.put(h.name.as_bytes())?;
    out.put(&[0])?;
    out.pad4()?;
    out.put(data)?;
    out.pad4()
}

/// Writes every entry of `tree` (parents first, in tree order) and the
/// trailer; returns the number of bytes written.
pub fn write_newc<W: Write>(tree: &Tree, out: W) -> Result<u64, Error> {
    let mut out = Counter { inner: out, n: 0 };
    for (ino, (path, node)) in tree.walk().into_iter().enumerate() {
        let m = node.meta();
        let (data, rdev, nlink): (&[u8], _, _) = match node {
            Node::Dir(_) => (&[], (0, 0), 2),
            Node::File { data, .. } => (data, (0, 0), 1),
            Node::Symlink { target, .. } => (target.as_bytes(), (0, 0), 1),
            Node::CharDev { major, minor, .. } | Node::BlockDev { major, minor, .. } => {
                (&[], (*major, *minor), 1)
            }
        };
        let size = u32::try_from(data.len()).map_err(|_| Error::TooLarge {
            path: path.clone(),
            size: data.len() as u64,
        })?;
        let h = Header {
            ino: ino as u32 + 1,
            mode: node.st_mode(),
            uid: m.uid,
            gid: m.gid,
            nlink,
            mtime: m.mtime,
            size,
            rdev,
            name: &path,
        };
        entry(&mut out, &h, data)?;
    }
    let trailer = Header {
        ino: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 0,
        size: 0,
        rdev: (0, 0),
        name: "TRAILER!!!",
    };
    entry(&mut out, &trailer, &[])?;
    out.inner.flush()?;
    Ok(out.n)
}
