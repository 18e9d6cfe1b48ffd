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
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        // Next data at or after pos (ENXIO past the last data: the rest is a hole).
        let data = seek(&f, pos, libc::SEEK_DATA).unwrap_or(len).min(len);
        let mut zeros = data - pos;
        while zeros > 0 {
            let n = zeros.min(ZEROS.len() as u64) as usize;
            h.update(&ZEROS[..n]);
            zeros -= n as u64;
        }
        pos = data;
        if pos >= len {
            break;
        }
        let hole = seek(&f, pos, libc::SEEK_HOLE).unwrap_or(len).min(len);
        while pos < hole {
            let n = ((hole - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], pos)?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
    }
    Ok((hex::encode(h.finalize()), len))
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
}
