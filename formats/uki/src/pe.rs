//! Just enough PE/COFF to append sections to systemd-stub and read them back.
//!
//! Layout facts used (PE/COFF specification): the PE header offset is at
//! 0x3c; the COFF header (20 bytes) follows the "PE\0\0" signature; the
//! optional header (PE32+, magic 0x20b) holds SectionAlignment (+32),
//! FileAlignment (+36), SizeOfImage (+56), SizeOfHeaders (+60) and CheckSum
//! (+64); the 40-byte section headers follow the optional header.

use crate::{Error, UkiParts};

/// A section of a PE image.
#[derive(Debug, Clone)]
pub struct Section<'a> {
    /// Its name (up to 8 bytes, without padding NULs).
    pub name: String,
    /// RVA where the loader puts it.
    pub virtual_address: u32,
    /// Its bytes as the loader maps them (VirtualSize bytes, or the raw
    /// data when that is shorter).
    pub data: &'a [u8],
}

const SCN_INITIALIZED_DATA: u32 = 0x0000_0040;
const SCN_MEM_READ: u32 = 0x4000_0000;

fn u16_at(b: &[u8], o: usize) -> Result<u16, Error> {
    b.get(o..o + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| Error::NotPe(format!("truncated at byte {o}")))
}

fn u32_at(b: &[u8], o: usize) -> Result<u32, Error> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| Error::NotPe(format!("truncated at byte {o}")))
}

fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

fn align(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

struct Header {
    /// Offset of the optional header.
    opt: usize,
    /// Offset of the first section header.
    table: usize,
    count: usize,
    section_alignment: u32,
    file_alignment: u32,
    size_of_headers: u32,
}

fn header(b: &[u8]) -> Result<Header, Error> {
    if b.get(..2) != Some(b"MZ") {
        return Err(Error::NotPe("no MZ signature".into()));
    }
    let pe = u32_at(b, 0x3c)? as usize;
    if b.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(Error::NotPe("no PE signature".into()));
    }
    let coff = pe + 4;
    let count = u16_at(b, coff + 2)? as usize;
    let opt_size = u16_at(b, coff + 16)? as usize;
    let opt = coff + 20;
    if u16_at(b, opt)? != 0x20b {
        return Err(Error::NotPe("not PE32+ (64-bit)".into()));
    }
    let h = Header {
        opt,
        table: opt + opt_size,
        count,
        section_alignment: u32_at(b, opt + 32)?,
        file_alignment: u32_at(b, opt + 36)?,
        size_of_headers: u32_at(b, opt + 60)?,
    };
    if h.section_alignment == 0 || h.file_alignment == 0 {
        return Err(Error::NotPe("zero section or file alignment".into()));
    }
    if b.len() < h.table + 40 * count {
        return Err(Error::NotPe(
            "section table past the end of the file".into(),
        ));
    }
    Ok(h)
}

struct Raw {
    name: String,
    vsize: u32,
    va: u32,
    raw_size: u32,
    raw_ptr: u32,
}

fn raw_sections(b: &[u8], h: &Header) -> Result<Vec<Raw>, Error> {
    (0..h.count)
        .map(|i| {
            let o = h.table + 40 * i;
            let name = &b[o..o + 8];
            let end = name.iter().position(|&c| c == 0).unwrap_or(8);
            Ok(Raw {
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
                vsize: u32_at(b, o + 8)?,
                va: u32_at(b, o + 12)?,
                raw_size: u32_at(b, o + 16)?,
                raw_ptr: u32_at(b, o + 20)?,
            })
        })
        .collect()
}

/// The sections of a PE image.
pub fn sections(b: &[u8]) -> Result<Vec<Section<'_>>, Error> {
    let h = header(b)?;
    raw_sections(b, &h)?
        .into_iter()
        .map(|r| {
            let len = r.vsize.min(r.raw_size) as usize;
            let start = r.raw_ptr as usize;
            let data = b.get(start..start + len).ok_or_else(|| {
                Error::NotPe(format!("section {} runs past the end of the file", r.name))
            })?;
            Ok(Section {
                name: r.name,
                virtual_address: r.va,
                data,
            })
        })
        .collect()
}

/// The PE checksum (the algorithm of Windows' CheckSumMappedFile): 16-bit
/// one's-complement-style sum of the file with the CheckSum field taken as
/// zero, plus the file length.
fn pe_checksum(b: &[u8], field: usize) -> u32 {
    let word = |o: usize| match b.get(o..o + 2) {
        Some(w) => u16::from_le_bytes([w[0], w[1]]) as u64,
        None => b.get(o).copied().unwrap_or(0) as u64,
    };
    // Summed wide and folded once at the end: folding after every word (as
    // the reference does) keeps the same value modulo 0xffff, and both
    // results lie in 1..=0xffff unless every word is zero. A u64 holds the
    // sum of 2^48 words, far beyond any PE file.
    let words = b.chunks_exact(2);
    let odd = words.remainder().first().copied().unwrap_or(0) as u64;
    let mut sum: u64 = words
        .map(|w| u16::from_le_bytes([w[0], w[1]]) as u64)
        .sum::<u64>()
        + odd;
    // The CheckSum field's two words count as zero (it is word-aligned in
    // any real header; an odd offset matches no word, as in the reference).
    if field.is_multiple_of(2) {
        sum -= word(field) + word(field + 2);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (sum as u32).wrapping_add(b.len() as u32)
}

/// Builds a UKI: the stub with `.osrel`, `.cmdline`, `.linux` and `.initrd`
/// appended, each at the next SectionAlignment boundary after the stub's
/// own sections, VirtualSize = the exact data length (what the stub
/// measures), raw data padded to FileAlignment; SizeOfImage and CheckSum
/// updated. Anything after the stub's last section (e.g. a signature) is
/// dropped: sign the UKI afterwards.
pub fn assemble(stub: &[u8], parts: &UkiParts<'_>) -> Result<Vec<u8>, Error> {
    let h = header(stub)?;
    let existing = raw_sections(stub, &h)?;
    let new: [(&str, &[u8]); 4] = [
        (".osrel", parts.osrel),
        (".cmdline", parts.cmdline),
        (".linux", parts.linux),
        (".initrd", parts.initrd),
    ];
    for (n, _) in &new {
        if existing.iter().any(|s| s.name == *n) {
            return Err(Error::Duplicate(n.to_string()));
        }
    }
    let first_raw = existing
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| s.raw_ptr as usize)
        .min()
        .unwrap_or(h.size_of_headers as usize);
    let limit = first_raw.min(h.size_of_headers as usize);
    let table_end = h.table + 40 * h.count;
    let room = limit.saturating_sub(table_end) / 40;
    if room < new.len() {
        return Err(Error::NoRoom {
            room,
            need: new.len(),
        });
    }
    let (fa, sa) = (h.file_alignment as u64, h.section_alignment as u64);
    let file_end = existing
        .iter()
        .map(|s| s.raw_ptr as u64 + s.raw_size as u64)
        .max()
        .unwrap_or(h.size_of_headers as u64);
    let mut out = stub[..file_end as usize].to_vec();
    let mut next_va = existing
        .iter()
        .map(|s| s.va as u64 + s.vsize.max(s.raw_size) as u64)
        .max()
        .unwrap_or(0);
    for (i, (name, data)) in new.iter().enumerate() {
        let va = align(next_va, sa);
        let ptr = align(out.len() as u64, fa);
        out.resize(ptr as usize, 0);
        out.extend_from_slice(data);
        let raw = align(data.len() as u64, fa);
        out.resize((ptr + raw) as usize, 0);
        let too_big = |_| Error::NotPe(format!("section {name} makes the image exceed 4 GiB"));
        let mut sh = [0u8; 40];
        sh[..name.len()].copy_from_slice(name.as_bytes());
        put_u32(&mut sh, 8, u32::try_from(data.len()).map_err(too_big)?);
        put_u32(&mut sh, 12, u32::try_from(va).map_err(too_big)?);
        put_u32(&mut sh, 16, u32::try_from(raw).map_err(too_big)?);
        put_u32(&mut sh, 20, u32::try_from(ptr).map_err(too_big)?);
        put_u32(&mut sh, 36, SCN_INITIALIZED_DATA | SCN_MEM_READ);
        let o = table_end + 40 * i;
        out[o..o + 40].copy_from_slice(&sh);
        next_va = va + data.len() as u64;
    }
    let coff = h.opt - 20;
    let count = (h.count + new.len()) as u16;
    out[coff + 2..coff + 4].copy_from_slice(&count.to_le_bytes());
    let size_of_image = u32::try_from(align(next_va, sa))
        .map_err(|_| Error::NotPe("the image exceeds 4 GiB".into()))?;
    put_u32(&mut out, h.opt + 56, size_of_image);
    let field = h.opt + 64;
    put_u32(&mut out, field, 0);
    let sum = pe_checksum(&out, field);
    put_u32(&mut out, field, sum);
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// Windows' algorithm word by word, folding after each one.
    fn reference_checksum(b: &[u8], field: usize) -> u32 {
        let mut sum: u64 = 0;
        for (i, c) in b.chunks(2).enumerate() {
            let o = i * 2;
            if o == field || o == field + 2 {
                continue;
            }
            let w = if c.len() == 2 {
                u16::from_le_bytes([c[0], c[1]])
            } else {
                c[0] as u16
            };
            sum += w as u64;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum = (sum & 0xffff) + (sum >> 16);
        (sum as u32).wrapping_add(b.len() as u32)
    }

    #[test]
    fn checksum_matches_the_word_by_word_algorithm() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in [0usize, 1, 2, 3, 64, 65, 4097, 1 << 20] {
            for fill in [None, Some(0u8), Some(0xff)] {
                let b: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        fill.unwrap_or(x as u8)
                    })
                    .collect();
                for field in [0, 2, 7, len.saturating_sub(3), len + 10] {
                    assert_eq!(
                        super::pe_checksum(&b, field),
                        reference_checksum(&b, field),
                        "len {len} fill {fill:?} field {field}"
                    );
                }
            }
        }
    }

    use super::*;

    #[test]
    fn rejects_non_pe() {
        assert!(matches!(
            assemble(b"not a PE file at all, clearly", &parts()),
            Err(Error::NotPe(_))
        ));
    }

    fn parts() -> UkiParts<'static> {
        UkiParts {
            osrel: b"ID=herd\n",
            cmdline: b"console=ttyS0",
            linux: b"kernel",
            initrd: b"initrd",
        }
    }
}
