//! The DHCP client against a real server: dnsmasq in a network namespace,
//! the client in another, joined by a veth pair. Needs root (CI runs as
//! root); skipped with a message otherwise.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Netns {
    names: Vec<String>,
    server: Option<Child>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) not runnable");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn leases_from_dnsmasq_in_a_namespace() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root to create network namespaces");
        return;
    }
    let id = std::process::id();
    let (s, c) = (format!("herd-dhcp-s{id}"), format!("herd-dhcp-c{id}"));
    let mut ns = Netns {
        names: vec![],
        server: None,
    };
    for n in [&s, &c] {
        ip(&["netns", "add", n]);
        ns.names.push(n.clone());
    }
    ip(&[
        "link", "add", "vs0", "netns", &s, "type", "veth", "peer", "name", "vc0", "netns", &c,
    ]);
    ip(&["-n", &s, "addr", "add", "192.168.77.1/24", "dev", "vs0"]);
    ip(&["-n", &s, "link", "set", "vs0", "up"]);
    let dir = tempfile::tempdir().unwrap();
    ns.server = Some(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &s,
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
            ])
            .arg("--interface=vs0")
            .arg("--bind-interfaces")
            .arg("--dhcp-range=192.168.77.50,192.168.77.60,255.255.255.0,1h")
            .arg("--dhcp-option=option:router,192.168.77.1")
            .arg("--dhcp-option=option:dns-server,192.168.77.1")
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.path().join("leases").display()
            ))
            .arg("--pid-file=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq not runnable: apt-get install dnsmasq-base"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("timeout")
        .args([
            "60",
            "ip",
            "netns",
            "exec",
            &c,
            env!("CARGO_BIN_EXE_herd-dhcp"),
            "vc0",
            "30",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("address=192.168.77.5") || text.contains("address=192.168.77.60"),
        "{text}"
    );
    assert!(
        text.contains("prefix=24") && text.contains("gateway=192.168.77.1"),
        "{text}"
    );
    assert!(text.contains("lease_secs=3600"), "{text}");
    let addrs = ip(&["-n", &c, "-j", "addr", "show", "vc0"]);
    assert!(addrs.contains("\"local\":\"192.168.77."), "{addrs}");
    let routes = ip(&["-n", &c, "-j", "route"]);
    assert!(
        routes.contains("\"dst\":\"default\"") && routes.contains("\"gateway\":\"192.168.77.1\""),
        "{routes}"
    );
    let leases = std::fs::read_to_string(dir.path().join("leases")).unwrap_or_default();
    assert!(
        leases.contains("192.168.77."),
        "dnsmasq recorded no lease: {leases}"
    );
}

#[test]
fn static_configuration_in_a_namespace() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root to create network namespaces");
        return;
    }
    let n = format!("herd-static-{}", std::process::id());
    let mut ns = Netns {
        names: vec![],
        server: None,
    };
    ip(&["netns", "add", &n]);
    ns.names.push(n.clone());
    ip(&[
        "-n", &n, "link", "add", "st0", "type", "veth", "peer", "name", "st1",
    ]);
    ip(&["-n", &n, "link", "set", "st1", "up"]);
    // Run the library in the namespace from a thread that joined it (setns
    // is per thread), then check the result with ip.
    let path = format!("/var/run/netns/{n}");
    let f = std::fs::File::open(&path).unwrap();
    let h = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd affects only this thread.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        herd_net::loopback_up().unwrap();
        let cfg = herd_net::StaticConfig {
            address: "10.9.8.7".parse().unwrap(),
            prefix_len: 16,
            gateway: Some("10.9.0.1".parse().unwrap()),
            dns: vec![],
        };
        herd_net::configure_static("st0", &cfg).unwrap();
        // Again (a DHCP renewal does this): the default route is there
        // already (EEXIST), which is no error.
        herd_net::configure_static("st0", &cfg).unwrap();
    });
    h.join().unwrap();
    let addrs = ip(&["-n", &n, "-j", "addr", "show", "st0"]);
    assert!(
        addrs.contains("\"local\":\"10.9.8.7\"") && addrs.contains("\"prefixlen\":16"),
        "{addrs}"
    );
    let routes = ip(&["-n", &n, "-j", "route"]);
    assert!(routes.contains("\"gateway\":\"10.9.0.1\""), "{routes}");
    let lo = ip(&["-n", &n, "-j", "addr", "show", "lo"]);
    assert!(lo.contains("127.0.0.1"), "{lo}");
}
