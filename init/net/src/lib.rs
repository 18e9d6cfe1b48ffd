//! Network bring-up for herd-init: interface state through ioctls on an
//! AF_INET datagram socket, static addresses, and a DHCPv4 client ([`dhcp`]).

use std::ffi::{c_char, c_short, c_ulong, c_ushort, c_void};
use std::io;
use std::os::fd::OwnedFd;

use rustix::io::Errno;
use rustix::ioctl::{ioctl, Opcode, Setter, Updater};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

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

/// `struct ifreq` (linux/if.h) with its `ifr_flags` member.
#[repr(C)]
struct IfReqFlags {
    name: [u8; IFNAMSIZ],
    flags: c_short,
    _pad: [u8; 22],
}

const IFNAMSIZ: usize = 16;
const IFF_UP: c_short = 0x1;
// The socket ioctls of linux/sockios.h, numbered before _IOC existed.
const SIOCADDRT: Opcode = 0x890b;
const SIOCGIFFLAGS: Opcode = 0x8913;
const SIOCSIFFLAGS: Opcode = 0x8914;
const SIOCSIFADDR: Opcode = 0x8916;
const SIOCSIFNETMASK: Opcode = 0x891c;

const _: () = assert!(std::mem::size_of::<IfReqFlags>() == 40);

/// An AF_INET datagram socket, the handle the interface ioctls take.
fn socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// `iface` as `ifr_name`: at most 15 bytes and a NUL.
fn ifname(iface: &str) -> [u8; IFNAMSIZ] {
    let mut name = [0; IFNAMSIZ];
    let n = iface.len().min(IFNAMSIZ - 1);
    name[..n].copy_from_slice(&iface.as_bytes()[..n]);
    name
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
        name: ifname(iface),
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: SIOCGIFFLAGS on an AF_INET socket reads and writes a struct
    // ifreq; `req` is one (repr(C), 40 bytes, the name NUL-terminated).
    unsafe { ioctl(&s, Updater::<SIOCGIFFLAGS, IfReqFlags>::new(&mut req)) }
        .map_err(|e| err("reading flags", e.into()))?;
    req.flags |= IFF_UP;
    // SAFETY: as above; SIOCSIFFLAGS only reads the struct ifreq.
    unsafe { ioctl(&s, Setter::<SIOCSIFFLAGS, IfReqFlags>::new(req)) }
        .map_err(|e| err("setting IFF_UP", e.into()))?;
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

/// `struct sockaddr_in` (linux/in.h), the same size as `struct sockaddr`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrIn {
    family: u16,
    /// Network byte order.
    port: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}

const AF_INET: u16 = 2;

fn sockaddr(a: std::net::Ipv4Addr) -> SockaddrIn {
    SockaddrIn {
        family: AF_INET,
        port: 0,
        addr: a.octets(),
        zero: [0; 8],
    }
}

/// `struct ifreq` with its `ifr_addr` member.
#[repr(C)]
struct IfReqAddr {
    name: [u8; IFNAMSIZ],
    addr: SockaddrIn,
    _pad: [u8; 8],
}

/// `struct rtentry` (linux/route.h), for SIOCADDRT.
#[repr(C)]
struct RtEntry {
    pad1: c_ulong,
    dst: SockaddrIn,
    gateway: SockaddrIn,
    genmask: SockaddrIn,
    flags: c_ushort,
    pad2: c_short,
    pad3: c_ulong,
    pad4: *mut c_void,
    metric: c_short,
    dev: *const c_char,
    mtu: c_ulong,
    window: c_ulong,
    irtt: c_ushort,
}

const RTF_UP: c_ushort = 0x1;
const RTF_GATEWAY: c_ushort = 0x2;

const _: () = assert!(std::mem::size_of::<SockaddrIn>() == 16);
const _: () = assert!(std::mem::size_of::<IfReqAddr>() == 40);
const _: () = assert!(std::mem::size_of::<RtEntry>() == 120);

/// SIOCSIFADDR or SIOCSIFNETMASK: sets address `a` on `iface`.
fn set_addr<const REQ: Opcode>(s: &OwnedFd, iface: &str, a: std::net::Ipv4Addr) -> io::Result<()> {
    let r = IfReqAddr {
        name: ifname(iface),
        addr: sockaddr(a),
        _pad: [0; 8],
    };
    // SAFETY: REQ is SIOCSIFADDR or SIOCSIFNETMASK, which read a struct
    // ifreq holding a sockaddr_in; `r` is one (repr(C), 40 bytes).
    unsafe { ioctl(s, Setter::<REQ, IfReqAddr>::new(r)) }?;
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
    set_addr::<SIOCSIFADDR>(&s, iface, cfg.address).map_err(|e| err("setting the address", e))?;
    let mask = if cfg.prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(cfg.prefix_len.min(32)))
    };
    set_addr::<SIOCSIFNETMASK>(&s, iface, std::net::Ipv4Addr::from(mask))
        .map_err(|e| err("setting the netmask", e))?;
    link_up(iface)?;
    if let Some(gw) = cfg.gateway {
        add_default_route(&s, iface, gw).map_err(|e| err("adding the default route", e))?;
    }
    Ok(())
}

/// SIOCADDRT: the default route through `gw` on `iface`; one already there
/// is fine.
fn add_default_route(s: &OwnedFd, iface: &str, gw: std::net::Ipv4Addr) -> io::Result<()> {
    let name = std::ffi::CString::new(iface).map_err(io::Error::other)?;
    let any = sockaddr(std::net::Ipv4Addr::UNSPECIFIED);
    let rt = RtEntry {
        pad1: 0,
        dst: any,
        gateway: sockaddr(gw),
        genmask: any,
        flags: RTF_UP | RTF_GATEWAY,
        pad2: 0,
        pad3: 0,
        pad4: std::ptr::null_mut(),
        metric: 0,
        dev: name.as_ptr(),
        mtu: 0,
        window: 0,
        irtt: 0,
    };
    // SAFETY: SIOCADDRT reads a struct rtentry; `rt` is one (repr(C), 120
    // bytes) whose rt_dev points to `name`, a C string alive during the call.
    match unsafe { ioctl(s, Setter::<SIOCADDRT, RtEntry>::new(rt)) } {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes a resolv.conf naming `dns` (temporary file + rename).
pub fn write_resolv_conf(path: &std::path::Path, dns: &[std::net::Ipv4Addr]) -> io::Result<()> {
    let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    let tmp = path.with_extension("herd-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_and_layouts_are_the_c_librarys() {
        let ours = [
            SIOCADDRT,
            SIOCGIFFLAGS,
            SIOCSIFFLAGS,
            SIOCSIFADDR,
            SIOCSIFNETMASK,
        ]
        .map(u64::from);
        let libc = [
            libc::SIOCADDRT,
            libc::SIOCGIFFLAGS,
            libc::SIOCSIFFLAGS,
            libc::SIOCSIFADDR,
            libc::SIOCSIFNETMASK,
        ];
        assert_eq!(ours, libc);
        assert_eq!(IFF_UP as i32, libc::IFF_UP);
        assert_eq!([RTF_UP, RTF_GATEWAY], [libc::RTF_UP, libc::RTF_GATEWAY]);
        assert_eq!(
            std::mem::size_of::<RtEntry>(),
            std::mem::size_of::<libc::rtentry>()
        );
        assert_eq!(
            std::mem::size_of::<IfReqAddr>(),
            std::mem::size_of::<libc::ifreq>()
        );
        assert_eq!(
            std::mem::size_of::<SockaddrIn>(),
            std::mem::size_of::<libc::sockaddr_in>()
        );
        assert_eq!(i32::from(AF_INET), libc::AF_INET);
    }
}
