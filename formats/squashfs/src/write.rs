//! Putting an image together: data, inodes, directories, tables.

use std::collections::HashMap;
use std::io::Write;

use herd_fstree::{Dir, Meta, Node, Tree};

use crate::cache::{BlockCache, Counters};
use crate::data::{self, Data};
use crate::metadata::{MetaRef, MetaWriter};
use crate::superblock::{self, Superblock};
use crate::{Compression, Error, Options, Summary};

const NO_FRAGMENT: u32 = u32::MAX;
const NO_XATTR: u32 = u32::MAX;

mod kind {
    pub const DIR: u16 = 1;
    pub const FILE: u16 = 2;
    pub const SYMLINK: u16 = 3;
    pub const BLKDEV: u16 = 4;
    pub const CHRDEV: u16 = 5;
    pub const EXT_DIR: u16 = 8;
    pub const EXT_FILE: u16 = 9;
}

struct Writer<'a> {
    bs: usize,
    data: Data<'a>,
    ids: Vec<u32>,
    sizes: HashMap<*const Dir, u32>,
    inodes: MetaWriter,
    dirs: MetaWriter,
}

struct Listed<'n> {
    name: &'n str,
    at: MetaRef,
    number: u32,
    kind: u16,
}

/// Inodes in a directory's subtree, itself included.
fn subtree_sizes(dir: &Dir, out: &mut HashMap<*const Dir, u32>) -> u32 {
    let mut n = 1;
    for child in dir.children.values() {
        n += match child {
            Node::Dir(d) => subtree_sizes(d, out),
            _ => 1,
        };
    }
    out.insert(dir as *const Dir, n);
    n
}

impl<'a> Writer<'a> {
    fn id(&self, v: u32) -> u16 {
        // Every uid/gid was collected up front, so the search succeeds.
        self.ids.binary_search(&v).unwrap_or(0) as u16
    }

    fn header(&mut self, kind: u16, meta: &Meta, number: u32) -> Result<MetaRef, Error> {
        let at = self.inodes.pos();
        let mut h = Vec::with_capacity(16);
        h.extend_from_slice(&kind.to_le_bytes());
        h.extend_from_slice(&(meta.mode & 0o7777).to_le_bytes());
        h.extend_from_slice(&self.id(meta.uid).to_le_bytes());
        h.extend_from_slice(&self.id(meta.gid).to_le_bytes());
        h.extend_from_slice(&meta.mtime.to_le_bytes());
        h.extend_from_slice(&number.to_le_bytes());
        self.inodes.write(&h)?;
        Ok(at)
    }

    fn leaf(&mut self, node: &'a Node, number: u32) -> Result<(MetaRef, u16), Error> {
        let mut body = Vec::new();
        let (at, listed_kind) = match node {
            Node::File { meta, data } => {
                let l =
                    self.data.layouts[self.data.index[&crate::data::Content(&data[..])]].clone();
                let (frag, frag_off) = l.fragment.unwrap_or((NO_FRAGMENT, 0));
                let size = data.len() as u64;
                let at = if l.blocks_start <= u64::from(u32::MAX) && size <= u64::from(u32::MAX) {
                    let at = self.header(kind::FILE, meta, number)?;
                    body.extend_from_slice(&(l.blocks_start as u32).to_le_bytes());
                    body.extend_from_slice(&frag.to_le_bytes());
                    body.extend_from_slice(&frag_off.to_le_bytes());
                    body.extend_from_slice(&(size as u32).to_le_bytes());
                    at
                } else {
                    let at = self.header(kind::EXT_FILE, meta, number)?;
                    body.extend_from_slice(&l.blocks_start.to_le_bytes());
                    body.extend_from_slice(&size.to_le_bytes());
                    let sparse: u64 =
                        l.block_sizes.iter().filter(|&&s| s == 0).count() as u64 * self.bs as u64;
                    body.extend_from_slice(&sparse.to_le_bytes());
                    body.extend_from_slice(&1u32.to_le_bytes());
                    body.extend_from_slice(&frag.to_le_bytes());
                    body.extend_from_slice(&frag_off.to_le_bytes());
                    body.extend_from_slice(&NO_XATTR.to_le_bytes());
                    at
                };
                for s in &l.block_sizes {
                    body.extend_from_slice(&s.to_le_bytes());
                }
                (at, kind::FILE)
            }
            Node::Symlink { meta, target } => {
                let at = self.header(kind::SYMLINK, meta, number)?;
                body.extend_from_slice(&1u32.to_le_bytes());
                body.extend_from_slice(&(target.len() as u32).to_le_bytes());
                body.extend_from_slice(target.as_bytes());
                (at, kind::SYMLINK)
            }
            Node::CharDev { meta, major, minor } | Node::BlockDev { meta, major, minor } => {
                let k = if matches!(node, Node::CharDev { .. }) {
                    kind::CHRDEV
                } else {
                    kind::BLKDEV
                };
                let at = self.header(k, meta, number)?;
                // The kernel's new_decode_dev() layout.
                let rdev = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                body.extend_from_slice(&1u32.to_le_bytes());
                body.extend_from_slice(&rdev.to_le_bytes());
                (at, k)
            }
            Node::Dir(_) => unreachable!("directories are written by dir()"),
        };
        self.inodes.write(&body)?;
        Ok((at, listed_kind))
    }

    /// Writes the subtree of `dir` (inode numbers from `base`); returns the
    /// directory's inode position and number.
    fn dir(&mut self, dir: &'a Dir, base: u32, parent: u32) -> Result<(MetaRef, u32), Error> {
        let me = base + self.sizes[&(dir as *const Dir)] - 1;
        let mut next = base;
        let mut listed = Vec::with_capacity(dir.children.len());
        let mut subdirs = 0u32;
        for (name, node) in &dir.children {
            if let Node::Dir(d) = node {
                let (at, number) = self.dir(d, next, me)?;
                next = number + 1;
                subdirs += 1;
                listed.push(Listed {
                    name,
                    at,
                    number,
                    kind: kind::DIR,
                });
            } else {
                let (at, kind) = self.leaf(node, next)?;
                listed.push(Listed {
                    name,
                    at,
                    number: next,
                    kind,
                });
                next += 1;
            }
        }
        debug_assert_eq!(next, me);

        let start = self.dirs.pos();
        let listing = listing(&listed);
        self.dirs.write(&listing)?;
        let file_size = listing.len() as u32 + 3;
        let nlink = 2 + subdirs;
        let mut body = Vec::new();
        let at = if file_size <= 0xFFFF {
            let at = self.header(kind::DIR, &dir.meta, me)?;
            body.extend_from_slice(&start.block.to_le_bytes());
            body.extend_from_slice(&nlink.to_le_bytes());
            body.extend_from_slice(&(file_size as u16).to_le_bytes());
            body.extend_from_slice(&start.offset.to_le_bytes());
            body.extend_from_slice(&parent.to_le_bytes());
            at
        } else {
            let at = self.header(kind::EXT_DIR, &dir.meta, me)?;
            body.extend_from_slice(&nlink.to_le_bytes());
            body.extend_from_slice(&file_size.to_le_bytes());
            body.extend_from_slice(&start.block.to_le_bytes());
            body.extend_from_slice(&parent.to_le_bytes());
            body.extend_from_slice(&0u16.to_le_bytes()); // no index
            body.extend_from_slice(&start.offset.to_le_bytes());
            body.extend_from_slice(&NO_XATTR.to_le_bytes());
            at
        };
        self.inodes.write(&body)?;
        Ok((at, me))
    }
}

/// A directory listing: runs of at most 256 entries whose inodes share one
/// metadata block and whose numbers are within ±32767 of the run's base.
fn listing(entries: &[Listed]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let first = &entries[i];
        let mut j = i + 1;
        while j < entries.len()
            && j - i < 256
            && entries[j].at.block == first.at.block
            && (i64::from(entries[j].number) - i64::from(first.number)).abs() <= 32767
        {
            j += 1;
        }
        out.extend_from_slice(&((j - i - 1) as u32).to_le_bytes());
        out.extend_from_slice(&first.at.block.to_le_bytes());
        out.extend_from_slice(&first.number.to_le_bytes());
        for e in &entries[i..j] {
            out.extend_from_slice(&e.at.offset.to_le_bytes());
            out.extend_from_slice(&((e.number as i64 - first.number as i64) as i16).to_le_bytes());
            out.extend_from_slice(&e.kind.to_le_bytes());
            out.extend_from_slice(&((e.name.len() - 1) as u16).to_le_bytes());
            out.extend_from_slice(e.name.as_bytes());
        }
        i = j;
    }
    out
}

/// Writes a metadata-block table followed by its lookup array of absolute
/// block positions; returns the array's position.
fn table(img: &mut Vec<u8>, entries: &[u8], level: i32) -> Result<u64, Error> {
    let mut w = MetaWriter::new(level);
    w.write(entries)?;
    let (bytes, starts) = w.finish()?;
    let base = img.len() as u64;
    img.extend_from_slice(&bytes);
    let at = img.len() as u64;
    for s in starts {
        img.extend_from_slice(&(base + s).to_le_bytes());
    }
    Ok(at)
}

/// Writes `tree` as a squashfs image to `out`, padded to 4096 bytes.
pub fn write<W: Write>(tree: &Tree, opts: &Options, out: W) -> Result<Summary, Error> {
    write_cached(tree, opts, None, out)
}

/// [`write`], taking compressed data blocks from `cache` when it holds them
/// (each checked before use) and storing the ones it compresses there. The
/// output is the same bytes as without a cache.
pub fn write_cached<W: Write>(
    tree: &Tree,
    opts: &Options,
    cache: Option<&dyn BlockCache>,
    mut out: W,
) -> Result<Summary, Error> {
    let bs = opts.block_size;
    if !bs.is_power_of_two() || !(4096..=1 << 20).contains(&bs) {
        return Err(Error::BlockSize(bs));
    }
    let Compression::Zstd { level } = opts.compression;
    if !(1..=22).contains(&level) {
        return Err(Error::Level(level));
    }
    let walk = tree.walk();
    let inodes = u32::try_from(walk.len() + 1).map_err(|_| Error::TooMany("inodes"))?;
    let contents: Vec<&[u8]> = walk
        .iter()
        .filter_map(|(_, n)| match n {
            Node::File { data, .. } => Some(&data[..]),
            _ => None,
        })
        .collect();
    let mut ids: Vec<u32> = walk
        .iter()
        .flat_map(|(_, n)| [n.meta().uid, n.meta().gid])
        .chain([tree.root.meta.uid, tree.root.meta.gid])
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > 65535 {
        return Err(Error::TooMany("distinct uids and gids"));
    }

    let counters = Counters::default();
    let data = data::layout(
        &contents,
        superblock::SIZE as u64,
        bs as usize,
        level,
        cache.map(|c| (c, &counters)),
    )?;
    let mut sizes = HashMap::new();
    subtree_sizes(&tree.root, &mut sizes);
    let mut w = Writer {
        bs: bs as usize,
        data,
        ids,
        sizes,
        inodes: MetaWriter::new(level),
        dirs: MetaWriter::new(level),
    };
    let (root, root_number) = w.dir(&tree.root, 1, inodes + 1)?;
    debug_assert_eq!(root_number, inodes);

    let Writer {
        data,
        ids,
        inodes: inode_table,
        dirs,
        ..
    } = w;
    let mut img = vec![0u8; superblock::SIZE];
    img.extend_from_slice(&data.bytes);
    let inode_table_start = img.len() as u64;
    img.extend_from_slice(&inode_table.finish()?.0);
    let directory_table_start = img.len() as u64;
    img.extend_from_slice(&dirs.finish()?.0);
    let frag_entries: Vec<u8> = data
        .fragments
        .iter()
        .flat_map(|f| {
            let mut e = [0u8; 16];
            e[0..8].copy_from_slice(&f.start.to_le_bytes());
            e[8..12].copy_from_slice(&f.size.to_le_bytes());
            e
        })
        .collect();
    let fragment_table = table(&mut img, &frag_entries, level)?;
    let id_bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let id_table = table(&mut img, &id_bytes, level)?;
    let bytes_used = img.len() as u64;

    let mut flags = superblock::FLAG_NO_XATTRS;
    if data.duplicates > 0 {
        flags |= superblock::FLAG_DUPLICATES;
    }
    let sb = Superblock {
        inodes,
        mkfs_time: opts.mkfs_time,
        block_size: bs,
        fragments: data.fragments.len() as u32,
        flags,
        ids: ids.len() as u16,
        root_inode: root.inode_ref(),
        bytes_used,
        id_table,
        inode_table: inode_table_start,
        directory_table: directory_table_start,
        fragment_table,
    };
    img[..superblock::SIZE].copy_from_slice(&sb.to_bytes());
    img.resize(bytes_used.div_ceil(4096) as usize * 4096, 0);
    out.write_all(&img)?;
    out.flush()?;
    Ok(Summary {
        bytes_written: img.len() as u64,
        bytes_used,
        inodes,
        fragments: data.fragments.len() as u32,
        duplicates: data.duplicates,
        cache_hits: counters.hits.into_inner(),
        cache_misses: counters.misses.into_inner(),
        cache_rejected: counters.rejected.into_inner(),
    })
}
