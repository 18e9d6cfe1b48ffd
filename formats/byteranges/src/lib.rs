//! `multipart/byteranges` (RFC 9110 §14.6): the body a server sends for a
//! Range request that names several ranges. A delta update asks for all
//! its missing ranges of a payload in one request where the server can
//! answer that way (nginx, Apache, CloudFront and `herd serve` do; S3 and
//! some CDNs answer 200 and the whole file, and the updater then asks one
//! range per request).
//!
//! The body comes from the network: it is parsed by the byte counts its
//! parts declare (`Content-Range`), never by searching for the boundary in
//! the payload bytes (which may contain it), and every part must lie where
//! it says. What the parts hold is not trusted either: the caller hashes
//! every chunk against the signed index. Written by hand because it is a
//! few dozen lines over a byte slice and a parser of untrusted input is
//! easier to fuzz and bound when it allocates nothing.

/// One part: bytes `start..start + bytes.len()` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part<'a> {
    /// Where the bytes start in the file.
    pub start: u64,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// Why a multi-range answer could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ByterangesError {
    /// The Content-Type names no usable boundary.
    #[error("Content-Type {0:?} is not multipart/byteranges with a boundary")]
    NoBoundary(String),
    /// The body does not follow the multipart layout at byte `at`.
    #[error("malformed multipart body at byte {at}: {what}")]
    Malformed {
        /// Offset in the body.
        at: usize,
        /// What was expected there.
        what: &'static str,
    },
    /// More parts than any answer to our requests has.
    #[error("more than {0} parts")]
    TooManyParts(usize),
    /// A range that was asked for is in no part.
    #[error("bytes {start}-{end} were asked for and are in no part of the answer")]
    Missing {
        /// First byte asked for.
        start: u64,
        /// Last byte asked for.
        end: u64,
    },
}

/// Parts accepted in one answer (the updater asks for at most 32 ranges).
pub const MAX_PARTS: usize = 256;

/// The boundary of a `multipart/byteranges` Content-Type, unquoted.
pub fn boundary(content_type: &str) -> Result<&str, ByterangesError> {
    let no = || ByterangesError::NoBoundary(content_type.to_string());
    let mut params = content_type.split(';');
    let kind = params.next().unwrap_or("").trim();
    if !kind.eq_ignore_ascii_case("multipart/byteranges") {
        return Err(no());
    }
    let b = params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim())
        .ok_or_else(no)?;
    let b = b
        .strip_prefix('"')
        .and_then(|b| b.strip_suffix('"'))
        .unwrap_or(b);
    // RFC 2046: 1 to 70 characters.
    if b.is_empty() || b.len() > 70 || b.bytes().any(|c| c < 0x20 || c == 0x7f) {
        return Err(no());
    }
    Ok(b)
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`) → (first, last).
pub fn content_range(v: &str) -> Option<(u64, u64)> {
    let (range, _total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

/// Cursor over the body.
struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn bad(&self, what: &'static str) -> ByterangesError {
        ByterangesError::Malformed { at: self.at, what }
    }

    fn eat(&mut self, s: &[u8]) -> bool {
        let ok = self.b[self.at..].starts_with(s);
        if ok {
            self.at += s.len();
        }
        ok
    }

    /// One line without its CRLF (a bare LF is accepted too).
    fn line(&mut self) -> Result<&'a [u8], ByterangesError> {
        let rest = &self.b[self.at..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.bad("a line end"))?;
        self.at += n + 1;
        Ok(rest[..n].strip_suffix(b"\r").unwrap_or(&rest[..n]))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], ByterangesError> {
        let n = usize::try_from(n).map_err(|_| self.bad("a part that fits in memory"))?;
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| self.bad("as many bytes as the part's Content-Range says"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
}

/// The parts of a `multipart/byteranges` `body` with `boundary`, in the
/// order the server sent them.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, ByterangesError> {
    let delim = [b"--", boundary.as_bytes()].concat();
    let mut c = Cur { b: body, at: 0 };
    // The preamble (usually empty or one CRLF) ends at the first delimiter
    // at the start of a line.
    loop {
        if c.eat(&delim) {
            break;
        }
        c.line().map_err(|_| c.bad("the first boundary"))?;
    }
    let mut parts = Vec::new();
    loop {
        if c.eat(b"--") {
            return Ok(parts); // the close delimiter; the epilogue is ignored
        }
        // Transport padding, then the line end after the delimiter.
        if !c.line()?.iter().all(|&b| b == b' ' || b == b'\t') {
            return Err(c.bad("a line end after the boundary"));
        }
        let mut range = None;
        loop {
            let h = c.line()?;
            if h.is_empty() {
                break;
            }
            let h = std::str::from_utf8(h).map_err(|_| c.bad("a text header"))?;
            if let Some((k, v)) = h.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-range") {
                    range = Some(content_range(v).ok_or_else(|| c.bad("a Content-Range"))?);
                }
            }
        }
        let (first, last) = range.ok_or_else(|| c.bad("a Content-Range in every part"))?;
        if parts.len() == MAX_PARTS {
            return Err(ByterangesError::TooManyParts(MAX_PARTS));
        }
        let n = (last - first)
            .checked_add(1)
            .ok_or_else(|| c.bad("a part that fits in memory"))?;
        let bytes = c.take(n)?;
        parts.push(Part {
            start: first,
            bytes,
        });
        if !c.eat(b"\r\n") || !c.eat(&delim) {
            return Err(c.bad("the boundary right after the part's bytes"));
        }
    }
}

/// The bytes of each range `(start, len)` in `want`, in `want`'s order,
/// from whichever part holds all of it (a server may send parts in another
/// order, or coalesce ranges into one part).
pub fn pick(parts: &[Part<'_>], want: &[(u64, u64)]) -> Result<Vec<Vec<u8>>, ByterangesError> {
    want.iter()
        .map(|&(start, len)| {
            let end = start + len;
            parts
                .iter()
                .find(|p| p.start <= start && end <= p.start.saturating_add(p.bytes.len() as u64))
                .map(|p| p.bytes[(start - p.start) as usize..(end - p.start) as usize].to_vec())
                .ok_or(ByterangesError::Missing {
                    start,
                    end: end.saturating_sub(1),
                })
        })
        .collect()
}

/// Writes the `multipart/byteranges` body for `ranges` (first, last) of a
/// file of `total` bytes, reading each range with `read`; for servers (the
/// body a multi-range GET gets, and its length for Content-Length).
pub fn write_body(
    w: &mut dyn std::io::Write,
    boundary: &str,
    ranges: &[(u64, u64)],
    total: u64,
    read: &mut dyn FnMut(u64, u64, &mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    for &(a, b) in ranges {
        write!(w, "{}", part_head(boundary, a, b, total))?;
        read(a, b - a + 1, w)?;
        w.write_all(b"\r\n")?;
    }
    write!(w, "--{boundary}--\r\n")
}

fn part_head(boundary: &str, a: u64, b: u64, total: u64) -> String {
    format!(
        "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {a}-{b}/{total}\r\n\r\n"
    )
}

/// The length of [`write_body`]'s output.
pub fn body_len(boundary: &str, ranges: &[(u64, u64)], total: u64) -> u64 {
    ranges
        .iter()
        .map(|&(a, b)| part_head(boundary, a, b, total).len() as u64 + (b - a + 1) + 2)
        .sum::<u64>()
        + boundary.len() as u64
        + 6
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

    fn body(ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        write_body(
            &mut out,
            "SEP",
            ranges,
            FILE.len() as u64,
            &mut |a, n, w| w.write_all(&FILE[a as usize..(a + n) as usize]),
        )
        .unwrap();
        assert_eq!(out.len() as u64, body_len("SEP", ranges, FILE.len() as u64));
        out
    }

    #[test]
    fn a_body_written_is_parsed_back_and_ranges_are_picked_in_order() {
        let b = body(&[(2, 4), (10, 19), (30, 35)]);
        let parts = parse(&b, "SEP").unwrap();
        assert_eq!(
            parts,
            vec![
                Part {
                    start: 2,
                    bytes: b"234"
                },
                Part {
                    start: 10,
                    bytes: b"abcdefghij"
                },
                Part {
                    start: 30,
                    bytes: b"uvwxyz"
                },
            ]
        );
        let got = pick(&parts, &[(30, 6), (2, 3), (12, 2)]).unwrap();
        assert_eq!(
            got,
            vec![b"uvwxyz".to_vec(), b"234".to_vec(), b"cd".to_vec()]
        );
        assert_eq!(
            pick(&parts, &[(5, 2)]),
            Err(ByterangesError::Missing { start: 5, end: 6 })
        );
    }

    #[test]
    fn the_boundary_inside_the_bytes_does_not_end_a_part() {
        // A part whose bytes contain the delimiter: read by its length.
        let data = b"xx\r\n--SEP--\r\nyy";
        let mut b = format!(
            "\r\n--SEP\r\nContent-Range: bytes 100-{}/999\r\n\r\n",
            100 + data.len() - 1
        )
        .into_bytes();
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n--SEP--\r\n");
        let parts = parse(&b, "SEP").unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].bytes, data);
    }

    #[test]
    fn a_part_shorter_or_longer_than_its_content_range_is_refused() {
        let mut short = body(&[(2, 4), (10, 19)]);
        let at = short.windows(3).position(|w| w == b"abc").unwrap();
        short.remove(at);
        assert!(matches!(
            parse(&short, "SEP"),
            Err(ByterangesError::Malformed { .. })
        ));
        let mut long = body(&[(2, 4)]);
        long.insert(long.windows(3).position(|w| w == b"234").unwrap(), b'!');
        assert!(matches!(
            parse(&long, "SEP"),
            Err(ByterangesError::Malformed { .. })
        ));
    }

    #[test]
    fn parts_without_a_content_range_or_a_boundary_are_refused() {
        let b = b"--SEP\r\nContent-Type: text/plain\r\n\r\nabc\r\n--SEP--\r\n";
        assert!(matches!(
            parse(b, "SEP"),
            Err(ByterangesError::Malformed {
                what: "a Content-Range in every part",
                ..
            })
        ));
        assert!(parse(b"no boundary here", "SEP").is_err());
        assert!(parse(b"", "SEP").is_err());
        let huge = b"--SEP\r\nContent-Range: bytes 0-18446744073709551615/*\r\n\r\nabc";
        assert!(parse(huge, "SEP").is_err());
        let far = b"--SEP\r\nContent-Range: bytes 18446744073709551615-18446744073709551615/*\r\n\r\na\r\n--SEP--";
        let parts = parse(far, "SEP").unwrap();
        assert!(pick(&parts, &[(5, 2)]).is_err());
    }

    #[test]
    fn boundaries_and_content_ranges_are_read_as_servers_write_them() {
        assert_eq!(
            boundary("multipart/byteranges; boundary=3d6b6a416f9b5"),
            Ok("3d6b6a416f9b5")
        );
        assert_eq!(boundary("Multipart/Byteranges;boundary=\"a b\""), Ok("a b"));
        assert!(boundary("application/octet-stream").is_err());
        assert!(boundary("multipart/byteranges").is_err());
        assert!(boundary("multipart/byteranges; boundary=\"\"").is_err());
        assert_eq!(content_range("bytes 0-9/100"), Some((0, 9)));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, 9)));
        assert_eq!(content_range("bytes 9-5/100"), None);
        assert_eq!(content_range("bytes */100"), None);
    }
}
