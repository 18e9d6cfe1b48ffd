//! A DHCPv4 client: DISCOVER/OFFER/REQUEST/ACK over a UDP socket bound to
//! the interface (SO_BINDTODEVICE + SO_BROADCAST, so it works before the
//! interface has an address), with retries, renewal and rebinding.

pub mod packet;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::{configure_static, Error, StaticConfig};
use packet::{kind, Reply};

/// An acquired lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// Prefix length from the subnet mask.
    pub prefix_len: u8,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
    /// The server that gave it.
    pub server: Ipv4Addr,
    /// Lease time.
    pub lease_secs: u32,
    /// Renew after (T1).
    pub renew_secs: u32,
}

fn mac_of(iface: &str) -> Result<[u8; 6], Error> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).map_err(|e| {
        Error::Iface {
            iface: iface.into(),
            what: "reading its MAC address",
            source: e,
        }
    })?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(Error::Iface {
            iface: iface.into(),
            what: "parsing its MAC address",
            source: io::Error::other(text),
        });
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    Ok(mac)
}

fn socket(iface: &str) -> io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind("0.0.0.0:68")?;
    s.set_broadcast(true)?;
    let name = std::ffi::CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: setsockopt with a valid fd and a NUL-terminated name of the given length.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.as_bytes_with_nul().len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

fn xid(mac: [u8; 6]) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ t.subsec_nanos() ^ (t.as_secs() as u32)
}

/// Sends `msg` and waits for a reply of one of `want` kinds with our xid;
/// retransmits at 1, 2, 4... s until `deadline`.
fn exchange(
    s: &UdpSocket,
    msg: &[u8],
    xid: u32,
    want: &[u8],
    deadline: Instant,
) -> io::Result<Reply> {
    let dest = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut wait = Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    loop {
        s.send_to(msg, dest)?;
        let resend = (Instant::now() + wait).min(deadline);
        loop {
            let now = Instant::now();
            if now >= resend {
                break;
            }
            s.set_read_timeout(Some(resend - now))?;
            match s.recv_from(&mut buf) {
                Ok((n, _)) => {
                    if let Ok(r) = packet::parse(&buf[..n]) {
                        if r.xid == xid && want.contains(&r.kind) {
                            return Ok(r);
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer from a DHCP server",
            ));
        }
        wait = (wait * 2).min(Duration::from_secs(16));
    }
}

/// Gets a lease on `iface` within `timeout`.
pub fn acquire(iface: &str, hostname: &str, timeout: Duration) -> Result<Lease, Error> {
    let e = |what: &'static str| {
        move |source| Error::Iface {
            iface: iface.into(),
            what,
            source,
        }
    };
    let mac = mac_of(iface)?;
    let s = socket(iface).map_err(e("opening the DHCP socket"))?;
    let deadline = Instant::now() + timeout;
    let x = xid(mac);
    let offer = exchange(
        &s,
        &packet::request(kind::DISCOVER, x, mac, None, None, hostname),
        x,
        &[kind::OFFER],
        deadline,
    )
    .map_err(e("DHCPDISCOVER"))?;
    let ack = exchange(
        &s,
        &packet::request(
            kind::REQUEST,
            x,
            mac,
            Some(offer.yiaddr),
            offer.server,
            hostname,
        ),
        x,
        &[kind::ACK, kind::NAK],
        deadline,
    )
    .map_err(e("DHCPREQUEST"))?;
    if ack.kind == kind::NAK {
        return Err(Error::Iface {
            iface: iface.into(),
            what: "DHCPREQUEST",
            source: io::Error::other("the server refused (NAK)"),
        });
    }
    let lease_secs = ack.lease_secs.unwrap_or(3600);
    Ok(Lease {
        address: ack.yiaddr,
        prefix_len: ack
            .mask
            .map(|m| u32::from(m).count_ones() as u8)
            .unwrap_or(24),
        gateway: ack.router,
        dns: ack.dns,
        server: ack.server.or(offer.server).unwrap_or(Ipv4Addr::UNSPECIFIED),
        lease_secs,
        renew_secs: ack.t1.unwrap_or(lease_secs / 2),
    })
}

/// Configures `iface` with the lease.
pub fn apply(iface: &str, lease: &Lease) -> Result<(), Error> {
    configure_static(
        iface,
        &StaticConfig {
            address: lease.address,
            prefix_len: lease.prefix_len,
            gateway: lease.gateway,
            dns: lease.dns.clone(),
        },
    )
}

/// Acquires and applies leases forever: renews at T1, starts over when a
/// renewal fails, backs off after failures. Reports through `on_event`.
pub fn run_forever(iface: &str, hostname: &str, on_event: &dyn Fn(&str)) -> ! {
    let mut backoff = Duration::from_secs(2);
    let mut current: Option<Lease> = None;
    loop {
        match acquire(iface, hostname, Duration::from_secs(30)) {
            Ok(lease) => {
                backoff = Duration::from_secs(2);
                if current.as_ref() != Some(&lease) {
                    match apply(iface, &lease) {
                        Ok(()) => on_event(&format!(
                            "dhcp: {iface} {}/{} gateway {} dns {:?} from {} for {} s",
                            lease.address,
                            lease.prefix_len,
                            lease.gateway.map(|g| g.to_string()).unwrap_or("-".into()),
                            lease.dns,
                            lease.server,
                            lease.lease_secs
                        )),
                        Err(e) => on_event(&format!("dhcp: cannot apply the lease: {e}")),
                    }
                    if let Err(e) = crate::write_resolv_conf(
                        std::path::Path::new("/etc/resolv.conf"),
                        &lease.dns,
                    ) {
                        on_event(&format!("dhcp: cannot write /etc/resolv.conf: {e}"));
                    }
                }
                std::thread::sleep(Duration::from_secs(u64::from(lease.renew_secs.max(10))));
                current = Some(lease);
            }
            Err(e) => {
                on_event(&format!("dhcp: {e}; retrying in {} s", backoff.as_secs()));
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}
