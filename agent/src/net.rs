//! The pod network: each pod (unless `hostNetwork`) has its own network
//! namespace holding only loopback, created by the runtime with the pod's
//! first container. A container port with a `hostPort` is reached through
//! the node: the agent listens on the node's port and carries each TCP
//! connection to `127.0.0.1:<containerPort>` inside the pod's namespace
//! (it connects from a thread that entered that namespace), so no bridge,
//! veth or NAT rules are needed.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A handle on a network namespace (keeps it alive while open).
#[derive(Debug)]
pub struct NetNs(File);

impl NetNs {
    /// The network namespace of process `pid`.
    pub fn of_pid(pid: u32) -> std::io::Result<NetNs> {
        File::open(format!("/proc/{pid}/ns/net")).map(NetNs)
    }

    /// Moves the calling thread (only it) into the namespace.
    pub fn enter(&self) -> std::io::Result<()> {
        use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
        // setns(2) affects only the calling thread's network namespace.
        move_into_link_name_space(self.0.as_fd(), Some(LinkNameSpaceType::Network))?;
        Ok(())
    }
}

/// Connects to `127.0.0.1:port` in `ns` (or the node's namespace when
/// None). Enters the namespace on the calling thread: call it from a
/// thread of its own.
pub fn connect_in(ns: Option<&NetNs>, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    if let Some(ns) = ns {
        ns.enter()?;
    }
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout)
}

/// A node port carried into a pod; stops when dropped.
pub struct PortForward {
    stop: Arc<AtomicBool>,
    wake: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

fn splice(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl PortForward {
    /// Listens on the node's `host:host_port` and carries each
    /// connection to `container_port` in `ns`.
    pub fn start(
        host: std::net::IpAddr,
        host_port: u16,
        ns: Arc<NetNs>,
        container_port: u16,
        label: String,
    ) -> std::io::Result<PortForward> {
        let listener = TcpListener::bind((host, host_port))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("port-{host_port}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = conn else { continue };
                    let ns = ns.clone();
                    let label = label.clone();
                    let _ = std::thread::Builder::new()
                        .name("port-conn".into())
                        .spawn(move || {
                            match connect_in(Some(&ns), container_port, Duration::from_secs(5)) {
                                Ok(server) => {
                                    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                                        (Ok(c), Ok(s)) => (c, s),
                                        _ => return,
                                    };
                                    let up = std::thread::spawn(move || splice(c2, s2));
                                    splice(server, client);
                                    let _ = up.join();
                                }
                                Err(e) => {
                                    println!("{label}: hostPort {host_port}: cannot reach port {container_port} in the pod: {e}");
                                }
                            }
                        });
                }
            })?;
        let wake = match host {
            h if h.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], host_port)),
            h => SocketAddr::new(h, host_port),
        };
        Ok(PortForward {
            stop,
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.wake, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One HTTP GET of `path` on `127.0.0.1:port` in `ns`: Ok(status code).
/// Enters the namespace on the calling thread.
pub fn http_get(
    ns: Option<&NetNs>,
    port: u16,
    path: &str,
    timeout: Duration,
) -> std::io::Result<u16> {
    let mut s = connect_in(ns, port, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: herd-agent-probe\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_get_reads_the_status() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut b = Vec::new();
            let mut chunk = [0u8; 256];
            while !b.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut chunk).unwrap();
                assert!(n > 0);
                b.extend_from_slice(&chunk[..n]);
            }
            assert!(b.starts_with(b"GET /healthz HTTP/1.0\r\n"));
            c.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                .unwrap();
        });
        assert_eq!(
            http_get(None, port, "/healthz", Duration::from_secs(2)).unwrap(),
            503
        );
        t.join().unwrap();
    }
}
