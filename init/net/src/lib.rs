//! Network bring-up for herd-init: interface state through ioctls on an
//! AF_INET datagram socket. (DHCP is not written yet; see the issue notes.)

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
