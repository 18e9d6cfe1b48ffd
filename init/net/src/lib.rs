//! Network bring-up for herd-init: interface state through ioctls on an
//! AF_INET datagram socket, static addresses, and a DHCPv4 client ([`dhcp`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An interface operation failed.
    #[error("{iface}: {what}: {source}")]
    Iface {
        /// interface name
        iface: String,
        /// what was attempted
        what: &'static str,
        /// the cause
        source: io::Error,
    },
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets IFF_UP on `iface`.
pub fn link_up(iface: &str) -> Result<(), Error> {
    let err = |what, source| Error::Iface {
        iface: iface.to_string(),
        what,
        source,
    };
    let s = socket().map_err(|e| err("socket", e))?;
    let mut req = IfReqFlags {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    let n = iface.len().min(15);
    req.name[..n].copy_from_slice(&iface.as_bytes()[..n]);
    // SAFETY: req is a struct ifreq-compatible buffer for SIOCGIFFLAGS.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(err("reading flags", io::Error::last_os_error()));
    }
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: as above, for SIOCSIFFLAGS.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(err("setting IFF_UP", io::Error::last_os_error()));
    }
    Ok(())
}

/// Brings up loopback (the kernel adds 127.0.0.1/8 when it goes up).
pub fn loopback_up() -> Result<(), Error> {
    link_up("lo")
}

/// The first Ethernet interface (ARPHRD_ETHER, by ifindex), if any.
pub fn first_ethernet() -> Option<String> {
    let mut found: Vec<(u32, String)> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
            let kind: u32 = read("type")?.trim().parse().ok()?;
            let index: u32 = read("ifindex")?.trim().parse().ok()?;
            (kind == 1 && name != "lo").then_some((index, name))
        })
        .collect();
    found.sort();
    found.into_iter().next().map(|(_, n)| n)
}

pub mod dhcp;

/// A fixed IPv4 configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    /// Address.
    pub address: std::net::Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Default gateway.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Name servers (for resolv.conf).
    pub dns: Vec<std::net::Ipv4Addr>,
}

#[repr(C)]
struct IfReqAddr {
    name: [u8; 16],
    addr: libc::sockaddr_in,
    _pad: [u8; 8],
}

fn sockaddr(a: std::net::Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    }
}

fn set_addr(s: &OwnedFd, iface: &str, req: libc::c_ulong, a: std::net::Ipv4Addr) -> io::Result<()> {
    let mut r = IfReqAddr {
        name: [0; 16],
        addr: sockaddr(a),
        _pad: [0; 8],
    };
    let n = iface.len().min(15);
    r.name[..n].copy_from_slice(&iface.as_bytes()[..n]);
    // SAFETY: r has the layout of struct ifreq with a sockaddr_in member.
    if unsafe { libc::ioctl(s.as_raw_fd(), req as _, &r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the address, netmask and default route of `iface` (and brings it up).
pub fn configure_static(iface: &str, cfg: &StaticConfig) -> Result<(), Error> {
    let err = |what, source| Error::Iface {
        iface: iface.to_string(),
        what,
        source,
    };
    let s = socket().map_err(|e| err("socket", e))?;
    set_addr(&s, iface, libc::SIOCSIFADDR, cfg.address)
        .map_err(|e| err("setting the address", e))?;
    let mask = if cfg.prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(cfg.prefix_len.min(32)))
    };
    set_addr(
        &s,
        iface,
        libc::SIOCSIFNETMASK,
        std::net::Ipv4Addr::from(mask),
    )
    .map_err(|e| err("setting the netmask", e))?;
    link_up(iface)?;
    if let Some(gw) = cfg.gateway {
        // SAFETY: rtentry is a plain C struct; all-zero is a valid starting value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        let put = |dst: &mut libc::sockaddr, a| {
            let sin = sockaddr(a);
            // SAFETY: sockaddr_in fits in sockaddr (both 16 bytes).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&sin as *const libc::sockaddr_in).cast::<u8>(),
                    (dst as *mut libc::sockaddr).cast::<u8>(),
                    16,
                )
            };
        };
        put(&mut rt.rt_dst, std::net::Ipv4Addr::UNSPECIFIED);
        put(&mut rt.rt_genmask, std::net::Ipv4Addr::UNSPECIFIED);
        put(&mut rt.rt_gateway, gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        let name = std::ffi::CString::new(iface)
            .map_err(|e| err("interface name", io::Error::other(e)))?;
        rt.rt_dev = name.as_ptr() as *mut libc::c_char;
        // SAFETY: rt is a filled-in struct rtentry; rt_dev points to `name`, alive here.
        if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCADDRT, &rt) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(err("adding the default route", e));
            }
        }
    }
    Ok(())
}

/// Writes a resolv.conf naming `dns` (temporary file + rename).
pub fn write_resolv_conf(path: &std::path::Path, dns: &[std::net::Ipv4Addr]) -> io::Result<()> {
    let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    let tmp = path.with_extension("herd-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
