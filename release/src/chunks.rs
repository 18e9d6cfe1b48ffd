//! Chunk indexes for delta updates (issue 17).
//!
//! A payload is cut into content-defined chunks (FastCDC 2020, the `fastcdc`
//! crate): a boundary depends only on the bytes around it, so bytes that did
//! not change between two releases cut into the same chunks even when
//! something before them grew or shrank. The index lists each chunk's length
//! and sha256 (offsets follow from the lengths); a node chunks its running
//! slot the same way, copies the chunks it has and fetches only the others
//! with HTTP Range requests.
//!
//! The index is a content-addressed payload whose sha256 and size are in the
//! signed channel document, so its bytes are as trusted as the metadata.
//!
//! Binary form (little endian), fixed-size records so an index is ~0.2 % of
//! its payload at 16 KiB average chunks (JSON with hex digests would be ~3x):
//!
//! ```text
//! "HERDCDC1" | min u32 | avg u32 | max u32 | payload size u64 | count u32
//! count x ( length u32 | sha256 [32] )
//! ```

use std::io::Read;

use sha2::{Digest, Sha256};

use crate::Error;

/// Smallest chunk (4 KiB, the squashfs and verity block size).
pub const MIN_CHUNK: u32 = 4 << 10;
/// Average chunk: 16 KiB. Measured on the default image (bench/delta.sh,
/// version-only change): at 64 KiB the delta was 1.20 % of the payloads,
/// at 16 KiB 0.9 % (a changed UKI command line costs ~78 KB of chunks
/// instead of ~151 KB; the index grows to ~0.2 % of its payload, still
/// far under 1 %); at 8 KiB the index grows faster than the chunks shrink.
pub const AVG_CHUNK: u32 = 16 << 10;
/// Largest chunk: bounds what one changed byte costs in incompressible data.
pub const MAX_CHUNK: u32 = 64 << 10;

const MAGIC: &[u8; 8] = b"HERDCDC1";
const HEADER: usize = 8 + 4 + 4 + 4 + 8 + 4;
const RECORD: usize = 4 + 32;

/// The largest index a node accepts (a 16 GiB payload at the smallest
/// average chunks allowed here): refused before parsing.
pub const MAX_INDEX_BYTES: u64 = 32 << 20;

/// Below this share of a payload found on the node (percent), a delta is
/// not worth its scans and Range requests: the node downloads in full.
pub const MIN_REUSE_PERCENT: u64 = 10;

/// Whether a delta that finds `reuse` of a payload's `size` bytes on the
/// node is worth doing (see [`MIN_REUSE_PERCENT`]).
pub fn delta_worth(reuse: u64, size: u64) -> bool {
    reuse.saturating_mul(100) >= size.saturating_mul(MIN_REUSE_PERCENT)
}

/// What a node downloads for one payload, predicted from chunk indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedDownload {
    /// Bytes fetched: the missing chunks and the index, or (when a delta
    /// is not worth it) the index and the whole payload.
    pub bytes: u64,
    /// The payload's full size.
    pub full: u64,
    /// Whether the node takes the delta path.
    pub delta: bool,
}

/// One chunk of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Where it starts in the payload.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u32,
    /// sha256 of its bytes.
    pub sha256: [u8; 32],
}

impl Chunk {
    /// One past its last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// A payload's chunk index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    /// FastCDC minimum chunk size used.
    pub min: u32,
    /// FastCDC average chunk size used.
    pub avg: u32,
    /// FastCDC maximum chunk size used.
    pub max: u32,
    /// The payload's size (the sum of the chunk lengths).
    pub size: u64,
    /// The chunks, in payload order, without gaps.
    pub chunks: Vec<Chunk>,
}

/// Cuts what `r` yields into chunks with the given FastCDC sizes.
pub fn chunk_reader(r: impl Read, min: u32, avg: u32, max: u32) -> std::io::Result<Vec<Chunk>> {
    let mut out = Vec::new();
    for c in fastcdc::v2020::StreamCDC::new(r, min, avg, max) {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => std::io::Error::other(other.to_string()),
        })?;
        out.push(Chunk {
            offset: c.offset,
            len: c.length as u32,
            sha256: Sha256::digest(&c.data).into(),
        });
    }
    Ok(out)
}

fn malformed(message: impl Into<String>) -> Error {
    Error::Malformed {
        what: "chunk index",
        message: message.into(),
    }
}

fn sizes_valid(min: u32, avg: u32, max: u32) -> bool {
    use fastcdc::v2020::*;
    (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
        && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
        && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
        && min <= avg
        && avg <= max
}

impl ChunkIndex {
    /// The index of what `r` yields, with herd's chunk sizes.
    pub fn of_reader(r: impl Read) -> std::io::Result<ChunkIndex> {
        let chunks = chunk_reader(r, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)?;
        Ok(ChunkIndex {
            min: MIN_CHUNK,
            avg: AVG_CHUNK,
            max: MAX_CHUNK,
            size: chunks.last().map_or(0, Chunk::end),
            chunks,
        })
    }

    /// What a node downloads for this payload (whose index is
    /// `index_size` bytes) when its running slot holds the payload `old`
    /// was cut from: the node chunks its slot the same way, so it finds
    /// exactly `old`'s chunks, and fetches the chunks of this index that
    /// are not among them (the planning of herd-update's delta path).
    pub fn expected_download(&self, index_size: u64, old: &ChunkIndex) -> ExpectedDownload {
        let have: std::collections::HashSet<&[u8; 32]> =
            old.chunks.iter().map(|c| &c.sha256).collect();
        let missing: u64 = self
            .chunks
            .iter()
            .filter(|c| !have.contains(&c.sha256))
            .map(|c| u64::from(c.len))
            .sum();
        let delta = delta_worth(self.size - missing, self.size);
        ExpectedDownload {
            bytes: index_size + if delta { missing } else { self.size },
            full: self.size,
            delta,
        }
    }

    /// The binary form (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + RECORD * self.chunks.len());
        b.extend_from_slice(MAGIC);
        for v in [self.min, self.avg, self.max] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            b.extend_from_slice(&c.len.to_le_bytes());
            b.extend_from_slice(&c.sha256);
        }
        b
    }

    /// Parses and checks the binary form: known magic, chunk sizes FastCDC
    /// accepts, every chunk 1..=max bytes, and lengths that add up to the
    /// payload size.
    pub fn parse(b: &[u8]) -> Result<ChunkIndex, Error> {
        if b.len() as u64 > MAX_INDEX_BYTES {
            return Err(Error::TooLarge {
                what: "chunk index",
                size: b.len() as u64,
                limit: MAX_INDEX_BYTES,
            });
        }
        if b.len() < HEADER || &b[..8] != MAGIC {
            return Err(malformed(
                "not a herd chunk index (no HERDCDC1 header): the repository serves another file under this hash",
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let (min, avg, max) = (u32_at(8), u32_at(12), u32_at(16));
        let size = u64::from_le_bytes(b[20..28].try_into().expect("8 bytes"));
        let count = u32_at(28) as usize;
        if !sizes_valid(min, avg, max) {
            return Err(malformed(format!(
                "chunk sizes {min}/{avg}/{max} are not valid FastCDC sizes"
            )));
        }
        let body = &b[HEADER..];
        if body.len() != count.saturating_mul(RECORD) {
            return Err(malformed(format!(
                "{count} chunks need {} bytes of records, the index has {}",
                count.saturating_mul(RECORD),
                body.len()
            )));
        }
        let mut chunks = Vec::with_capacity(count);
        let mut offset = 0u64;
        for r in body.chunks_exact(RECORD) {
            let len = u32::from_le_bytes(r[..4].try_into().expect("4 bytes"));
            if len == 0 || len > max {
                return Err(malformed(format!(
                    "chunk at byte {offset} is {len} bytes, outside 1..={max}"
                )));
            }
            chunks.push(Chunk {
                offset,
                len,
                sha256: r[4..].try_into().expect("32 bytes"),
            });
            offset += u64::from(len);
        }
        if offset != size {
            return Err(malformed(format!(
                "chunks add up to {offset} bytes, the index says the payload is {size}"
            )));
        }
        Ok(ChunkIndex {
            min,
            avg,
            max,
            size,
            chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes that do not repeat (a xorshift stream).
    pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn round_trip_and_sizes() {
        let data = noise(7, 3 << 20);
        let idx = ChunkIndex::of_reader(&data[..]).unwrap();
        assert_eq!(idx.size, data.len() as u64);
        assert!(idx.chunks.len() > 10);
        let b = idx.to_bytes();
        assert!(b.len() * 100 <= data.len(), "index {} bytes", b.len());
        assert_eq!(ChunkIndex::parse(&b).unwrap(), idx);
        for c in &idx.chunks {
            let bytes = &data[c.offset as usize..c.end() as usize];
            assert_eq!(<[u8; 32]>::from(Sha256::digest(bytes)), c.sha256);
        }
    }

    #[test]
    fn an_insertion_shifts_only_nearby_chunks() {
        let old = noise(9, 4 << 20);
        let mut new = old.clone();
        new.splice(1 << 20..1 << 20, noise(3, 5000));
        let a = ChunkIndex::of_reader(&old[..]).unwrap();
        let b = ChunkIndex::of_reader(&new[..]).unwrap();
        let e = b.expected_download(100, &a);
        assert!(e.delta && e.full == new.len() as u64, "{e:?}");
        let missing = e.bytes - 100;
        assert!(
            missing > 5000 && missing < 3 * u64::from(MAX_CHUNK),
            "{missing} bytes missing"
        );
    }

    #[test]
    fn expected_download_is_the_missing_chunks_or_everything() {
        let old = noise(11, 2 << 20);
        let a = ChunkIndex::of_reader(&old[..]).unwrap();
        // The same payload: only the index.
        assert_eq!(
            a.expected_download(77, &a),
            ExpectedDownload {
                bytes: 77,
                full: old.len() as u64,
                delta: true
            }
        );
        // Nothing in common: no delta, the index (already fetched) and all.
        let other = ChunkIndex::of_reader(&noise(12, 1 << 20)[..]).unwrap();
        let e = other.expected_download(77, &a);
        assert_eq!((e.bytes, e.delta), (77 + (1 << 20), false));
        // The threshold: 10 % found is worth it, just under is not.
        assert!(delta_worth(10, 100) && !delta_worth(9, 100));
    }

    #[test]
    fn malformed_indexes_are_refused() {
        let idx = ChunkIndex::of_reader(&noise(5, 1 << 20)[..]).unwrap();
        let good = idx.to_bytes();
        let refuse = |b: &[u8], what: &str| {
            let e = ChunkIndex::parse(b).unwrap_err();
            assert!(
                matches!(&e, Error::Malformed { what: "chunk index", message } if message.contains(what)),
                "{e}"
            );
        };
        refuse(b"{}", "no HERDCDC1 header");
        refuse(&good[..good.len() - 1], "bytes of records");
        let mut b = good.clone();
        b[20] ^= 1;
        refuse(&b, "add up to");
        let mut b = good.clone();
        b[HEADER..HEADER + 4].copy_from_slice(&0u32.to_le_bytes());
        refuse(&b, "outside 1..=");
        let mut b = good;
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        refuse(&b, "not valid FastCDC sizes");
    }
}
