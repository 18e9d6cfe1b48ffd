//! A FAT32 writer for a fixed tree: contiguous allocation, long file names,
//! one timestamp everywhere. (fatfs 0.3 writes long-name entries even for
//! "." and "..", which fsck.fat rejects, so herd lays FAT32 out itself.)

use herd_fstree::{Dir, Node, Tree};

use crate::{clock, Error, EspOptions};

const SECTOR: u64 = 512;
const RESERVED: u64 = 32;
const FATS: u64 = 2;
const ENTRY: usize = 32;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LFN: u8 = 0x0F;
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;

/// FAT32 needs at least this many clusters.
pub(crate) const MIN_CLUSTERS: u64 = 65525;

pub(crate) struct Geometry {
    pub cluster: u64,
    pub fat_sectors: u64,
    pub clusters: u64,
    pub total_sectors: u64,
}

impl Geometry {
    pub fn new(size: u64) -> Option<Geometry> {
        let total_sectors = size / SECTOR;
        for cluster in [4096u64, 2048, 1024, 512] {
            let spc = cluster / SECTOR;
            let mut fat_sectors = 1;
            loop {
                let data = total_sectors.checked_sub(RESERVED + FATS * fat_sectors)?;
                let clusters = data / spc;
                let need = ((clusters + 2) * 4).div_ceil(SECTOR);
                if need <= fat_sectors {
                    if clusters >= MIN_CLUSTERS + 16 {
                        return Some(Geometry {
                            cluster,
                            fat_sectors,
                            clusters,
                            total_sectors,
                        });
                    }
                    break;
                }
                fat_sectors = need;
            }
        }
        None
    }

    fn data_offset(&self) -> u64 {
        (RESERVED + FATS * self.fat_sectors) * SECTOR
    }

    fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset() + (u64::from(c) - 2) * self.cluster
    }
}

/// One directory entry to write: short name, long name, attributes, extent.
struct Entry {
    short: [u8; 11],
    long: Option<String>,
    attr: u8,
    first: u32,
    size: u32,
}

fn short_char(c: char) -> Option<u8> {
    match c {
        'A'..='Z' | '0'..='9' => Some(c as u8),
        '!' | '#' | '$' | '%' | '&' | '\'' | '(' | ')' | '-' | '@' | '^' | '_' | '`' | '{'
        | '}' | '~' => Some(c as u8),
        _ => None,
    }
}

/// The 8.3 name if `name` is one exactly (upper case, valid characters).
fn exact_short(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) => (b, e),
        None => (name, ""),
    };
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || (name.contains('.') && ext.is_empty())
    {
        return None;
    }
    let mut out = [b' '; 11];
    for (i, c) in base.chars().enumerate() {
        out[i] = short_char(c)?;
    }
    for (i, c) in ext.chars().enumerate() {
        out[8 + i] = short_char(c)?;
    }
    Some(out)
}

/// A `BASE~N.EXT` alias for a long name, unique among `taken`.
fn alias(name: &str, taken: &[[u8; 11]]) -> [u8; 11] {
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (b, e),
        _ => (name, ""),
    };
    let clean = |s: &str| -> Vec<u8> {
        s.chars()
            .filter_map(|c| short_char(c.to_ascii_uppercase()))
            .collect()
    };
    let b = clean(base);
    let e = clean(ext);
    for n in 1u32.. {
        let tail = format!("~{n}");
        let keep = (8 - tail.len()).min(b.len());
        let mut out = [b' '; 11];
        out[..keep].copy_from_slice(&b[..keep]);
        out[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        for (i, c) in e.iter().take(3).enumerate() {
            out[8 + i] = *c;
        }
        if !taken.contains(&out) {
            return out;
        }
    }
    unreachable!()
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |s, &c| s.rotate_right(1).wrapping_add(c))
}

fn entries_needed(name: &str) -> u64 {
    if exact_short(name).is_some() {
        1
    } else {
        1 + (name.encode_utf16().count() as u64).div_ceil(13)
    }
}

struct Writer<'a> {
    geo: &'a Geometry,
    img: Vec<u8>,
    fat: Vec<u32>,
    next: u32,
    date: u16,
    time: u16,
}

impl Writer<'_> {
    fn alloc(&mut self, bytes: u64) -> Result<u32, Error> {
        if bytes == 0 {
            return Ok(0);
        }
        let n = bytes.div_ceil(self.geo.cluster) as u32;
        let first = self.next;
        if u64::from(first - 2 + n) > self.geo.clusters {
            return Err(Error::Full {
                files: 0,
                size: self.geo.total_sectors * SECTOR,
            });
        }
        for c in first..first + n - 1 {
            self.fat[c as usize] = c + 1;
        }
        self.fat[(first + n - 1) as usize] = END_OF_CHAIN;
        self.next += n;
        Ok(first)
    }

    fn put(&mut self, cluster: u32, data: &[u8]) {
        let off = self.geo.cluster_offset(cluster) as usize;
        self.img[off..off + data.len()].copy_from_slice(data);
    }

    fn raw_entry(&self, e: &Entry) -> [u8; ENTRY] {
        let mut r = [0u8; ENTRY];
        r[0..11].copy_from_slice(&e.short);
        r[11] = e.attr;
        r[14..16].copy_from_slice(&self.time.to_le_bytes());
        r[16..18].copy_from_slice(&self.date.to_le_bytes());
        r[18..20].copy_from_slice(&self.date.to_le_bytes());
        r[20..22].copy_from_slice(&((e.first >> 16) as u16).to_le_bytes());
        r[22..24].copy_from_slice(&self.time.to_le_bytes());
        r[24..26].copy_from_slice(&self.date.to_le_bytes());
        r[26..28].copy_from_slice(&(e.first as u16).to_le_bytes());
        r[28..32].copy_from_slice(&e.size.to_le_bytes());
        r
    }

    fn serialize(&self, entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            if let Some(long) = &e.long {
                let units: Vec<u16> = long.encode_utf16().collect();
                let parts = units.len().div_ceil(13);
                let sum = lfn_checksum(&e.short);
                for p in (0..parts).rev() {
                    let mut r = [0u8; ENTRY];
                    r[0] = (p as u8 + 1) | if p + 1 == parts { 0x40 } else { 0 };
                    r[11] = ATTR_LFN;
                    r[13] = sum;
                    let chunk: Vec<u16> = (0..13)
                        .map(|k| match units.get(p * 13 + k) {
                            Some(&u) => u,
                            None if p * 13 + k == units.len() => 0,
                            None => 0xFFFF,
                        })
                        .collect();
                    let slots = (1..11)
                        .step_by(2)
                        .chain((14..26).step_by(2))
                        .chain((28..32).step_by(2));
                    for (u, off) in chunk.iter().zip(slots) {
                        r[off..off + 2].copy_from_slice(&u.to_le_bytes());
                    }
                    out.extend_from_slice(&r);
                }
            }
            out.extend_from_slice(&self.raw_entry(e));
        }
        out
    }

    /// Writes `dir` (whose clusters start at `me`, parent at `parent`,
    /// 0 for the root) and everything below it.
    fn dir(
        &mut self,
        dir: &Dir,
        path: &str,
        me: u32,
        parent: u32,
        is_root: bool,
    ) -> Result<(), Error> {
        let mut entries = Vec::new();
        if !is_root {
            let mut dot = [b' '; 11];
            dot[0] = b'.';
            entries.push(Entry {
                short: dot,
                long: None,
                attr: ATTR_DIR,
                first: me,
                size: 0,
            });
            dot[1] = b'.';
            entries.push(Entry {
                short: dot,
                long: None,
                attr: ATTR_DIR,
                first: parent,
                size: 0,
            });
        }
        let mut subdirs = Vec::new();
        let mut taken: Vec<[u8; 11]> = dir.children.keys().filter_map(|n| exact_short(n)).collect();
        for (name, node) in &dir.children {
            let child_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            let (short, long) = match exact_short(name) {
                Some(s) => (s, None),
                None => {
                    let s = alias(name, &taken);
                    taken.push(s);
                    (s, Some(name.clone()))
                }
            };
            match node {
                Node::Dir(d) => {
                    let first = self.alloc(dir_bytes(d, false))?;
                    entries.push(Entry {
                        short,
                        long,
                        attr: ATTR_DIR,
                        first,
                        size: 0,
                    });
                    subdirs.push((d, child_path, first));
                }
                Node::File { data, .. } => {
                    let size = u32::try_from(data.len())
                        .map_err(|_| Error::Unsupported(child_path.clone()))?;
                    let first = self.alloc(data.len() as u64)?;
                    if first != 0 {
                        self.put(first, data);
                    }
                    entries.push(Entry {
                        short,
                        long,
                        attr: ATTR_ARCHIVE,
                        first,
                        size,
                    });
                }
                _ => return Err(Error::Unsupported(child_path)),
            }
        }
        let bytes = self.serialize(&entries);
        self.put(me, &bytes);
        for (d, p, first) in subdirs {
            self.dir(d, &p, first, if is_root { 0 } else { me }, false)?;
        }
        Ok(())
    }
}

fn dir_bytes(d: &Dir, is_root: bool) -> u64 {
    let n: u64 =
        d.children.keys().map(|k| entries_needed(k)).sum::<u64>() + if is_root { 1 } else { 2 };
    n.max(1) * ENTRY as u64
}

/// Lays out `tree` as a FAT32 image of `opts.size_bytes`.
pub(crate) fn image(tree: &Tree, opts: &EspOptions) -> Result<Vec<u8>, Error> {
    let size = opts.size_bytes;
    let geo = Geometry::new(size).ok_or(Error::TooSmall {
        size,
        min: (MIN_CLUSTERS + 2200) * SECTOR,
    })?;
    let (date, time, _) = clock::to_fat(opts.mtime).encode();
    let mut w = Writer {
        geo: &geo,
        img: vec![0u8; (geo.total_sectors * SECTOR) as usize],
        fat: vec![0u32; geo.clusters as usize + 2],
        next: 2,
        date,
        time,
    };
    w.fat[0] = 0x0FFF_FFF8;
    w.fat[1] = END_OF_CHAIN;
    let root_bytes = dir_bytes(&tree.root, true);
    let root = w.alloc(root_bytes).map_err(|_| Error::Full {
        files: tree.file_bytes(),
        size,
    })?;
    // The volume label lives in the root directory too.
    w.dir(&tree.root, "", root, 0, true).map_err(|e| match e {
        Error::Full { .. } => Error::Full {
            files: tree.file_bytes(),
            size,
        },
        e => e,
    })?;
    // Root: prepend the volume label entry by rewriting the root directory.
    let mut label = [0u8; ENTRY];
    label[0..11].copy_from_slice(&opts.label);
    label[11] = 0x08;
    label[22..24].copy_from_slice(&time.to_le_bytes());
    label[24..26].copy_from_slice(&date.to_le_bytes());
    let off = geo.cluster_offset(root) as usize;
    let existing = w.img[off..off + root_bytes as usize - ENTRY].to_vec();
    w.img[off..off + ENTRY].copy_from_slice(&label);
    w.img[off + ENTRY..off + root_bytes as usize].copy_from_slice(&existing);

    let used = u64::from(w.next - 2);
    let Writer { mut img, fat, .. } = w;
    boot_sector(&mut img, &geo, opts, used);
    let fat_bytes: Vec<u8> = fat.iter().flat_map(|v| v.to_le_bytes()).collect();
    for k in 0..FATS {
        let off = ((RESERVED + k * geo.fat_sectors) * SECTOR) as usize;
        img[off..off + fat_bytes.len()].copy_from_slice(&fat_bytes);
    }
    Ok(img)
}

fn boot_sector(img: &mut [u8], geo: &Geometry, opts: &EspOptions, used: u64) {
    let mut b = [0u8; 512];
    b[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"herd    ");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = (geo.cluster / SECTOR) as u8;
    b[14..16].copy_from_slice(&(RESERVED as u16).to_le_bytes());
    b[16] = FATS as u8;
    b[21] = 0xF8;
    b[24..26].copy_from_slice(&32u16.to_le_bytes());
    b[26..28].copy_from_slice(&64u16.to_le_bytes());
    b[32..36].copy_from_slice(&(geo.total_sectors as u32).to_le_bytes());
    b[36..40].copy_from_slice(&(geo.fat_sectors as u32).to_le_bytes());
    b[44..48].copy_from_slice(&2u32.to_le_bytes());
    b[48..50].copy_from_slice(&1u16.to_le_bytes());
    b[50..52].copy_from_slice(&6u16.to_le_bytes());
    b[64] = 0x80;
    b[66] = 0x29;
    b[67..71].copy_from_slice(&opts.volume_id.to_le_bytes());
    b[71..82].copy_from_slice(&opts.label);
    b[82..90].copy_from_slice(b"FAT32   ");
    b[510] = 0x55;
    b[511] = 0xAA;
    let mut fsinfo = [0u8; 512];
    fsinfo[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    fsinfo[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    fsinfo[488..492].copy_from_slice(&((geo.clusters - used) as u32).to_le_bytes());
    fsinfo[492..496].copy_from_slice(&((used + 2) as u32).to_le_bytes());
    fsinfo[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    for (sector, data) in [(0, &b), (1, &fsinfo), (6, &b), (7, &fsinfo)] {
        img[sector * 512..sector * 512 + 512].copy_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        assert_eq!(&exact_short("BOOTX64.EFI").unwrap(), b"BOOTX64 EFI");
        assert_eq!(&exact_short("EFI").unwrap(), b"EFI        ");
        assert!(exact_short("linux").is_none());
        assert!(exact_short("herd-a+3-0.conf").is_none());
        let a = alias("herd-a+3-0.conf", &[]);
        assert_eq!(&a, b"HERD-A~1CON");
        assert_eq!(&alias("herd-a+2-1.conf", &[a]), b"HERD-A~2CON");
    }

    #[test]
    fn geometry_64m() {
        let g = Geometry::new(64 << 20).unwrap();
        assert_eq!(g.cluster, 512);
        assert!(g.clusters >= MIN_CLUSTERS);
        assert!(Geometry::new(16 << 20).is_none());
    }
}
