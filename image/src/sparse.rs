//! Hashing sparse files (disk images are mostly holes) without reading the
//! holes: data ranges are read, holes hashed from a zero buffer.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

fn seek(f: &File, from: u64, whence: libc::c_int) -> Option<u64> {
    // SAFETY: lseek on an open descriptor; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, whence) };
    (r >= 0).then_some(r as u64)
}

/// sha256 (hex) and size of the file at `path`.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    hash_file_range(&mut h, &f, 0, len)?;
    Ok((hex::encode(h.finalize()), len))
}

fn hash_zeros(h: &mut Sha256, mut n: u64) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// Feeds bytes `pos..end` of `f` to `h`: data ranges read, holes as zeros.
fn hash_file_range(h: &mut Sha256, f: &File, mut pos: u64, end: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while pos < end {
        // Next data at or after pos (ENXIO past the last data: the rest is a hole).
        let data = seek(f, pos, libc::SEEK_DATA).unwrap_or(end).min(end);
        hash_zeros(h, data - pos);
        pos = data;
        if pos >= end {
            break;
        }
        let hole = seek(f, pos, libc::SEEK_HOLE).unwrap_or(end).min(end);
        while pos < hole {
            let n = ((hole - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], pos)?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
    }
    Ok(())
}

/// What a stretch of an image holds, for hashing the image from memory
/// while (or before) it is written.
pub enum Region<'a> {
    /// These bytes at this offset.
    Bytes(u64, &'a [u8]),
    /// Whatever the file holds from this offset for this many bytes (made
    /// there by another program).
    File(u64, u64),
}

impl Region<'_> {
    fn span(&self) -> (u64, u64) {
        match self {
            Region::Bytes(o, b) => (*o, *o + b.len() as u64),
            Region::File(o, l) => (*o, *o + l),
        }
    }
}

/// sha256 (hex) of a `len`-byte image that holds `regions` (in any order;
/// they must not overlap) and zeros everywhere else; `File` regions are read
/// from `file`.
pub fn sha256_regions(
    file: &File,
    len: u64,
    regions: &mut [Region<'_>],
) -> std::io::Result<String> {
    regions.sort_by_key(|r| r.span().0);
    let mut h = Sha256::new();
    let mut pos = 0;
    for r in regions.iter() {
        let (start, end) = r.span();
        if start < pos || end > len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("image region {start}..{end} overlaps another or ends past {len}"),
            ));
        }
        hash_zeros(&mut h, start - pos);
        match r {
            Region::Bytes(_, b) => h.update(b),
            Region::File(..) => hash_file_range(&mut h, file, start, end)?,
        }
        pos = end;
    }
    hash_zeros(&mut h, len - pos);
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_as_reading_everything() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(10 << 20).unwrap();
        f.write_all_at(b"hello", 3 << 20).unwrap();
        f.write_all_at(&[7u8; 70000], (5 << 20) + 17).unwrap();
        drop(f);
        let all = std::fs::read(&p).unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            (hex::encode(Sha256::digest(&all)), all.len() as u64)
        );
    }

    #[test]
    fn regions_hash_like_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let len = 9 << 20;
        f.set_len(len).unwrap();
        let a = vec![3u8; 100_000];
        let b = b"tail".to_vec();
        f.write_all_at(&a, 1 << 20).unwrap();
        f.write_all_at(b"from another program", (6 << 20) + 5)
            .unwrap();
        f.write_all_at(&b, len - 4).unwrap();
        let mut regions = [
            Region::Bytes(len - 4, &b),
            Region::File(6 << 20, 1 << 20),
            Region::Bytes(1 << 20, &a),
        ];
        let whole = hex::encode(Sha256::digest(std::fs::read(&p).unwrap()));
        assert_eq!(sha256_regions(&f, len, &mut regions).unwrap(), whole);
        let mut overlapping = [Region::Bytes(0, &a), Region::Bytes(10, &b)];
        assert!(sha256_regions(&f, len, &mut overlapping).is_err());
    }
}
