//! GUIDs: parsing, printing, the GPT's mixed-endian encoding, and
//! deterministic derivation from names.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::Error;

/// A GUID in RFC 4122 byte order (the order of its printed form).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

const fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

const fn parse_bytes(s: &[u8]) -> Option<[u8; 16]> {
    if s.len() != 36 || s[8] != b'-' || s[13] != b'-' || s[18] != b'-' || s[23] != b'-' {
        return None;
    }
    let mut out = [0u8; 16];
    let mut i = 0;
    let mut n = 0;
    while i < 36 {
        if i == 8 || i == 13 || i == 18 || i == 23 {
            i += 1;
            continue;
        }
        let (hi, lo) = match (hexval(s[i]), hexval(s[i + 1])) {
            (Some(h), Some(l)) => (h, l),
            _ => return None,
        };
        out[n] = hi << 4 | lo;
        n += 1;
        i += 2;
    }
    Some(out)
}

impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case).
    pub fn parse(s: &str) -> Result<Guid, Error> {
        parse_bytes(s.as_bytes())
            .map(Guid)
            .ok_or_else(|| Error::BadGuid(s.to_string()))
    }

    /// For constants; panics at compile time on a malformed literal.
    pub const fn from_str_const(s: &str) -> Guid {
        match parse_bytes(s.as_bytes()) {
            Some(b) => Guid(b),
            None => panic!("malformed GUID literal"),
        }
    }

    /// The on-disk GPT encoding: the first three fields little-endian.
    pub fn to_gpt_bytes(&self) -> [u8; 16] {
        let b = self.0;
        let mut o = b;
        o[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
        o[4..6].copy_from_slice(&[b[5], b[4]]);
        o[6..8].copy_from_slice(&[b[7], b[6]]);
        o
    }

    /// Inverse of [`Guid::to_gpt_bytes`].
    pub fn from_gpt_bytes(b: [u8; 16]) -> Guid {
        // The swap is its own inverse.
        Guid(Guid(b).to_gpt_bytes())
    }

    /// True for the all-zero GUID (an unused entry).
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// A GUID derived from a namespace and a name: the first 16 bytes of
/// `sha256(namespace || 0x00 || name)` with the RFC 4122 version set to 4
/// and the variant to RFC 4122, so it looks like any random UUID but is the
/// same on every build.
pub fn guid_from_name(namespace: &str, name: &str) -> Guid {
    let digest = Sha256::new()
        .chain_update(namespace.as_bytes())
        .chain_update([0u8])
        .chain_update(name.as_bytes())
        .finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Guid(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_print_roundtrip_and_gpt_encoding() {
        let s = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
        let g = Guid::parse(s).unwrap();
        assert_eq!(g.to_string(), s);
        // The ESP type as it appears on disk (UEFI spec).
        assert_eq!(
            g.to_gpt_bytes(),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert_eq!(Guid::from_gpt_bytes(g.to_gpt_bytes()), g);
        assert!(Guid::parse("c12a7328f81f11d2ba4b00a0c93ec93b").is_err());
        assert!(Guid::parse("g12a7328-f81f-11d2-ba4b-00a0c93ec93b").is_err());
    }

    #[test]
    fn derived_guids_are_stable_v4() {
        let a = guid_from_name("herd", "esp");
        assert_eq!(a, guid_from_name("herd", "esp"));
        assert_ne!(a, guid_from_name("herd", "state"));
        assert_ne!(guid_from_name("ab", "c"), guid_from_name("a", "bc"));
        assert_eq!(a.0[6] >> 4, 4);
        assert_eq!(a.0[8] >> 6, 2);
    }
}
