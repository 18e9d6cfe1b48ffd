//! DHCPv4 messages (RFC 2131/2132): building requests and parsing replies.
//! The parser takes untrusted bytes: every length is checked.

use std::net::Ipv4Addr;

/// Message types (option 53).
pub mod kind {
    /// DHCPDISCOVER
    pub const DISCOVER: u8 = 1;
    /// DHCPOFFER
    pub const OFFER: u8 = 2;
    /// DHCPREQUEST
    pub const REQUEST: u8 = 3;
    /// DHCPACK
    pub const ACK: u8 = 5;
    /// DHCPNAK
    pub const NAK: u8 = 6;
}

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const FIXED: usize = 236;

/// A parsed server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Transaction id.
    pub xid: u32,
    /// Client hardware address.
    pub chaddr: [u8; 6],
    /// Offered address.
    pub yiaddr: Ipv4Addr,
    /// Message type (option 53).
    pub kind: u8,
    /// Server identifier (54).
    pub server: Option<Ipv4Addr>,
    /// Subnet mask (1).
    pub mask: Option<Ipv4Addr>,
    /// First router (3).
    pub router: Option<Ipv4Addr>,
    /// Name servers (6).
    pub dns: Vec<Ipv4Addr>,
    /// Lease time in seconds (51).
    pub lease_secs: Option<u32>,
    /// Renewal time T1 (58).
    pub t1: Option<u32>,
    /// Rebinding time T2 (59).
    pub t2: Option<u32>,
}

/// Why a packet was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the fixed header plus the magic cookie.
    #[error("packet of {0} bytes is too short for DHCP")]
    Short(usize),
    /// Not a BOOTREPLY.
    #[error("not a BOOTREPLY (op {0})")]
    NotReply(u8),
    /// Wrong hardware type/length.
    #[error("not Ethernet hardware addresses")]
    Hardware,
    /// The magic cookie is missing.
    #[error("no DHCP magic cookie")]
    NoMagic,
    /// An option runs past the end.
    #[error("option {0} is truncated")]
    Truncated(u8),
    /// An option has a length its type does not allow.
    #[error("option {code} has invalid length {len}")]
    BadLength {
        /// option code
        code: u8,
        /// its length
        len: usize,
    },
    /// No message type option.
    #[error("no DHCP message type")]
    NoKind,
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// Builds a client message of `kind`.
pub fn request(
    kind: u8,
    xid: u32,
    mac: [u8; 6],
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
    hostname: &str,
) -> Vec<u8> {
    let mut p = vec![0u8; FIXED];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // reply by broadcast
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[53, 1, kind]);
    let mut cid = vec![61, 7, 1];
    cid.extend_from_slice(&mac);
    p.extend_from_slice(&cid);
    if let Some(r) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&r.octets());
    }
    if let Some(s) = server {
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&s.octets());
    }
    let h = &hostname.as_bytes()[..hostname.len().min(63)];
    if !h.is_empty() {
        p.extend_from_slice(&[12, h.len() as u8]);
        p.extend_from_slice(h);
    }
    p.extend_from_slice(&[55, 6, 1, 3, 6, 51, 58, 59]);
    p.push(255);
    while p.len() < 300 {
        p.push(0);
    }
    p
}

/// Parses a server reply.
pub fn parse(p: &[u8]) -> Result<Reply, ParseError> {
    if p.len() < FIXED + 4 {
        return Err(ParseError::Short(p.len()));
    }
    if p[0] != 2 {
        return Err(ParseError::NotReply(p[0]));
    }
    if p[1] != 1 || p[2] != 6 {
        return Err(ParseError::Hardware);
    }
    if p[FIXED..FIXED + 4] != MAGIC {
        return Err(ParseError::NoMagic);
    }
    let mut r = Reply {
        xid: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        chaddr: [0; 6],
        yiaddr: ip(&p[16..20]),
        kind: 0,
        server: None,
        mask: None,
        router: None,
        dns: Vec::new(),
        lease_secs: None,
        t1: None,
        t2: None,
    };
    r.chaddr.copy_from_slice(&p[28..34]);
    let mut kind = None;
    let mut i = FIXED + 4;
    while i < p.len() {
        let code = p[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let len = *p.get(i + 1).ok_or(ParseError::Truncated(code))? as usize;
        let v = p
            .get(i + 2..i + 2 + len)
            .ok_or(ParseError::Truncated(code))?;
        let bad = || ParseError::BadLength { code, len };
        let addr = || if len == 4 { Ok(ip(v)) } else { Err(bad()) };
        let secs = || {
            if len == 4 {
                Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            } else {
                Err(bad())
            }
        };
        match code {
            53 => kind = Some(*v.first().filter(|_| len == 1).ok_or_else(bad)?),
            54 => r.server = Some(addr()?),
            1 => r.mask = Some(addr()?),
            3 => {
                if len == 0 || !len.is_multiple_of(4) {
                    return Err(bad());
                }
                r.router = Some(ip(v));
            }
            6 => {
                if len == 0 || !len.is_multiple_of(4) {
                    return Err(bad());
                }
                r.dns = v.chunks_exact(4).map(ip).collect();
            }
            51 => r.lease_secs = Some(secs()?),
            58 => r.t1 = Some(secs()?),
            59 => r.t2 = Some(secs()?),
            _ => {}
        }
        i += 2 + len;
    }
    r.kind = kind.ok_or(ParseError::NoKind)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(opts: &[u8]) -> Vec<u8> {
        let mut p = request(kind::OFFER, 0x1234, [2, 0, 0, 0, 0, 1], None, None, "");
        p.truncate(FIXED + 4);
        p[0] = 2;
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p.extend_from_slice(opts);
        p
    }

    #[test]
    fn roundtrip_offer() {
        let p = reply(&[
            53, 1, 2, 54, 4, 10, 0, 2, 2, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 8, 10, 0,
            2, 3, 1, 1, 1, 1, 51, 4, 0, 0, 0x0e, 0x10, 0, 255,
        ]);
        let r = parse(&p).unwrap();
        assert_eq!(r.kind, kind::OFFER);
        assert_eq!(r.xid, 0x1234);
        assert_eq!(r.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.server, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.dns.len(), 2);
        assert_eq!(r.lease_secs, Some(3600));
    }

    #[test]
    fn malformed_packets_are_rejected() {
        assert_eq!(parse(&[2; 10]), Err(ParseError::Short(10)));
        let mut p = reply(&[53, 1, 2, 255]);
        p[FIXED] = 0;
        assert_eq!(parse(&p), Err(ParseError::NoMagic));
        assert_eq!(
            parse(&reply(&[53, 1, 2, 54, 9, 1])),
            Err(ParseError::Truncated(54))
        );
        assert_eq!(
            parse(&reply(&[53, 1, 2, 1, 3, 1, 2, 3])),
            Err(ParseError::BadLength { code: 1, len: 3 })
        );
        assert_eq!(parse(&reply(&[53])), Err(ParseError::Truncated(53)));
        assert_eq!(
            parse(&reply(&[1, 4, 255, 0, 0, 0, 255])),
            Err(ParseError::NoKind)
        );
        let mut q = reply(&[53, 1, 2, 255]);
        q[0] = 1;
        assert_eq!(parse(&q), Err(ParseError::NotReply(1)));
        // Option overload (52) is ignored, not followed into sname/file.
        assert!(parse(&reply(&[52, 1, 3, 53, 1, 5, 255])).is_ok());
    }
}
