//! Coordinated reboots against real lock services on 127.0.0.1: a real
//! etcd (Debian's etcd-server, started here with a temporary data dir and
//! free ports) and a minimal FleetLock server written below. Each node is a
//! real `herd-update lock-cycle` process (the updater's coordination code
//! with its own state dir and node id) whose reboot is a hook script.
//! etcd over TLS runs with `--client-cert-auth`, its certificates from
//! throwaway CAs made by rcgen.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_reboot_lock::etcd::{Client, Etcd};
use herd_reboot_lock::{Acquire, RebootLock};
use herd_tests::etcd::{lock_cycle, lock_cycle_log, CertFiles, EtcdServer, TestCa};
use herd_tests::*;

/// One node: its state dir (with node-id), config, hook and log.
struct Node {
    id: String,
    dir: PathBuf,
}

fn node(root: &Path, id: &str, lock: &str, hook: &str) -> Node {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("node-id"), id).unwrap();
    std::fs::write(
        dir.join("update.toml"),
        format!("repository = \"http://127.0.0.1:1\"\ninterval_secs = 1\nreboot = \"coordinated\"\n[lock]\n{lock}"),
    )
    .unwrap();
    let h = dir.join("hook");
    std::fs::write(
        &h,
        format!(
            "#!/bin/sh\necho \"$(date +%s.%N)\" >> {}/rebooted\n{hook}\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&h, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    Node { id: id.into(), dir }
}

impl Node {
    fn spawn(&self) -> Child {
        lock_cycle(&self.dir)
            .spawn()
            .expect("starting herd-update lock-cycle")
    }

    fn log(&self) -> String {
        lock_cycle_log(&self.dir)
    }

    fn rebooted(&self) -> bool {
        self.dir.join("rebooted").exists()
    }
}

/// Waits for every child; panics naming the node that failed or hung.
fn wait_all(nodes: &[Node], mut kids: Vec<Child>, within: Duration) {
    let t = Instant::now();
    for (n, k) in nodes.iter().zip(kids.iter_mut()) {
        loop {
            if let Some(st) = k.try_wait().unwrap() {
                assert!(st.success(), "{} failed: {}", n.id, n.log());
                break;
            }
            if t.elapsed() > within {
                for k in kids.iter_mut() {
                    let _ = k.kill();
                }
                panic!("{} did not finish within {within:?}: {}", n.id, n.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The holders of `group` at every revision of etcd's history:
/// (revision, holder ids).
fn history(c: &Client, group: &str) -> Vec<(i64, Vec<String>)> {
    let prefix = Etcd::holders_prefix(group);
    let newest = c.range("/", 0, true).unwrap().header.revision;
    (1..=newest)
        .map(|rev| {
            let r = c.range(&prefix, rev, false).unwrap();
            let ids = r
                .kvs
                .iter()
                .map(|kv| kv.key_text().trim_start_matches(&prefix).to_string())
                .collect();
            (rev, ids)
        })
        .collect()
}

#[test]
fn etcd_twenty_nodes_share_two_slots() {
    let etcd = EtcdServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let lock = format!(
        "backend = \"etcd\"\nendpoints = [\"{}\"]\ngroup = \"web\"\nmax_concurrent = 2\nttl_secs = 10\n",
        etcd.url
    );
    let nodes: Vec<Node> = (0..20)
        .map(|i| node(tmp.path(), &format!("node-{i:02}"), &lock, "sleep 0.4"))
        .collect();
    let kids = nodes.iter().map(Node::spawn).collect();
    wait_all(&nodes, kids, Duration::from_secs(180));

    let h = history(&etcd.client(), "web");
    let peak = h.iter().map(|(_, ids)| ids.len()).max().unwrap();
    let over: Vec<_> = h.iter().filter(|(_, ids)| ids.len() > 2).collect();
    assert!(over.is_empty(), "more than 2 slots held at: {over:?}");
    assert_eq!(peak, 2, "the two slots were never used together");
    let held: BTreeSet<&String> = h.iter().flat_map(|(_, ids)| ids).collect();
    assert_eq!(held.len(), 20, "not every node held a slot: {held:?}");
    for n in &nodes {
        assert!(n.rebooted(), "{} never ran its reboot hook", n.id);
        let state = std::fs::read_to_string(n.dir.join("state.json")).unwrap();
        assert!(
            !state.contains("\"lock\""),
            "{} still records a slot: {state}",
            n.id
        );
    }
    // Everything given back.
    assert_eq!(h.last().unwrap().1.len(), 0);
}

/// The slots-to-wait of a busy answer (panics on anything else).
fn ahead(r: Result<Acquire, herd_reboot_lock::Error>) -> u32 {
    match r.unwrap() {
        Acquire::Busy { ahead: Some(a), .. } => a,
        other => panic!("expected a queued busy answer, got {other:?}"),
    }
}

/// Slots go in the order nodes joined the queue, not to whoever polls
/// first after a release; a node that withdraws, or dies while waiting
/// (its lease expires), stops holding up the nodes behind it; nothing of the
/// queue stays behind in etcd.
#[test]
fn etcd_queue_hands_slots_out_in_join_order() {
    let etcd = EtcdServer::start();
    let lock = |id: &str| Etcd::new(std::slice::from_ref(&etcd.url), "q", id, 1, 3);
    let (mut a, mut b, mut c, mut d, mut e) =
        (lock("a"), lock("b"), lock("c"), lock("d"), lock("e"));
    assert_eq!(a.acquire().unwrap(), Acquire::Granted);
    // b, c, d, e join in this order.
    assert_eq!(ahead(b.acquire()), 1);
    assert_eq!(ahead(c.acquire()), 2);
    assert_eq!(ahead(d.acquire()), 3);
    assert_eq!(ahead(e.acquire()), 4);
    a.release().unwrap();
    // The slot is free, but e, d and c poll before b: not their turn.
    assert_eq!(ahead(e.acquire()), 3);
    assert_eq!(ahead(d.acquire()), 2);
    assert_eq!(ahead(c.acquire()), 1);
    // b leaves the queue (its window closed): c is next.
    b.withdraw().unwrap();
    assert_eq!(ahead(d.acquire()), 1);
    assert_eq!(c.acquire().unwrap(), Acquire::Granted);
    // c holds slot 0 (the only one), on the same lease as its holder key.
    let slots = etcd
        .client()
        .range("/herd/reboot/q/slots/", 0, false)
        .unwrap();
    let held: Vec<(String, String)> = slots
        .kvs
        .iter()
        .map(|kv| (kv.key_text(), kv.value_text()))
        .collect();
    assert_eq!(
        held,
        [("/herd/reboot/q/slots/0".to_string(), "c".to_string())]
    );
    // d dies while waiting: its lease (3 s) expires and e moves up.
    drop(d);
    c.release().unwrap();
    let t = Instant::now();
    loop {
        match e.acquire().unwrap() {
            Acquire::Granted => break,
            Acquire::Busy { ahead, .. } => {
                // 1, or 2 from e's estimate (b left the queue ahead of it).
                assert!(matches!(ahead, Some(1 | 2)), "{ahead:?}");
                assert!(
                    t.elapsed() < Duration::from_secs(15),
                    "d's place was never freed"
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    assert!(
        t.elapsed() > Duration::from_secs(1),
        "e overtook d while d's lease lived"
    );
    e.release().unwrap();
    let client = etcd.client();
    let left = client.range(&Etcd::prefix("q"), 0, false).unwrap();
    let keys: Vec<String> = left.kvs.iter().map(|kv| kv.key_text()).collect();
    assert_eq!(keys, ["/herd/reboot/q/sem"], "queue keys left behind");
}

#[test]
fn etcd_slot_of_a_killed_holder_frees_after_the_lease_ttl() {
    let etcd = EtcdServer::start();
    let c = etcd.client();
    let tmp = tempfile::tempdir().unwrap();
    let lock = format!(
        "backend = \"etcd\"\nendpoints = [\"{}\"]\ngroup = \"db\"\nmax_concurrent = 1\nttl_secs = 3\n",
        etcd.url
    );
    let a = node(
        tmp.path(),
        "holder",
        &lock,
        "echo $$ > \"$(dirname \"$0\")/hook.pid\"; exec sleep 60",
    );
    let b = node(tmp.path(), "next", &lock, "true");
    let mut ka = a.spawn();
    let holders = Etcd::holders_prefix("db");
    let t = Instant::now();
    while c.range(&holders, 0, true).unwrap().count == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "holder never took the slot: {}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = std::fs::read_to_string(a.dir.join("state.json")).unwrap();
    assert!(
        state.contains("holding_since"),
        "slot not recorded: {state}"
    );
    let kb = b.spawn();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !b.rebooted(),
        "second node rebooted while the slot was held"
    );
    // SIGKILL: no release, no more keepalives (the hook, a `sleep`, stays
    // orphaned until it is killed below).
    ka.kill().unwrap();
    ka.wait().unwrap();
    let killed = Instant::now();
    let mut freed = None;
    while killed.elapsed() < Duration::from_secs(15) {
        let r = c.range(&holders, 0, false).unwrap();
        if !r.kvs.iter().any(|kv| kv.key_text().ends_with("/holder")) {
            freed = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let freed = freed.expect("the killed holder's slot was not freed within 15 s");
    assert!(
        freed <= Duration::from_secs(5),
        "freed after {freed:?}, TTL is 3 s"
    );
    wait_all(std::slice::from_ref(&b), vec![kb], Duration::from_secs(30));
    let h = history(&c, "db");
    assert!(h.iter().all(|(_, ids)| ids.len() <= 1), "{h:?}");
    assert!(h.iter().any(|(_, ids)| ids == &["next".to_string()]));
    let pid = std::fs::read_to_string(a.dir.join("hook.pid")).unwrap_or_default();
    if let Ok(pid @ 1..) = pid.trim().parse::<i32>() {
        // SAFETY: kill(2) with plain integers, on the hook this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A minimal FleetLock server: a semaphore of `max` in memory.
#[derive(Default)]
struct Fleet {
    held: BTreeSet<String>,
    peak: usize,
    granted: BTreeMap<String, u32>,
    bad_requests: u32,
}

fn fleetlock_server(max: usize) -> (String, Arc<Mutex<Fleet>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let fleet = Arc::new(Mutex::new(Fleet::default()));
    let f = fleet.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (mut len, mut proto) = (0usize, false);
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                proto |= lower.starts_with("fleet-lock-protocol:") && lower.contains("true");
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let id = v["client_params"]["id"].as_str().unwrap_or("").to_string();
            let mut st = f.lock().unwrap();
            let (code, answer) = if !proto || id.is_empty() {
                st.bad_requests += 1;
                (
                    400,
                    r#"{"kind":"bad_request","value":"no fleet-lock-protocol header or id"}"#,
                )
            } else if path == "/v1/pre-reboot" {
                if st.held.contains(&id) || st.held.len() < max {
                    st.held.insert(id.clone());
                    st.peak = st.peak.max(st.held.len());
                    *st.granted.entry(id).or_default() += 1;
                    (200, "{}")
                } else {
                    (409, r#"{"kind":"failed_lock","value":"semaphore full"}"#)
                }
            } else if path == "/v1/steady-state" {
                st.held.remove(&id);
                (200, "{}")
            } else {
                (404, r#"{"kind":"not_found","value":"no such path"}"#)
            };
            drop(st);
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, fleet)
}

#[test]
fn fleetlock_six_nodes_share_two_slots() {
    let (url, fleet) = fleetlock_server(2);
    let tmp = tempfile::tempdir().unwrap();
    let lock = format!("backend = \"fleetlock\"\nurl = \"{url}\"\ngroup = \"edge\"\n");
    let nodes: Vec<Node> = (0..6)
        .map(|i| node(tmp.path(), &format!("f{i}"), &lock, "sleep 0.4"))
        .collect();
    let kids = nodes.iter().map(Node::spawn).collect();
    wait_all(&nodes, kids, Duration::from_secs(90));
    let st = fleet.lock().unwrap();
    assert_eq!(st.bad_requests, 0);
    assert_eq!(st.peak, 2, "peak holders {}", st.peak);
    assert!(st.held.is_empty(), "not given back: {:?}", st.held);
    assert_eq!(st.granted.len(), 6, "{:?}", st.granted);
    assert!(nodes.iter().all(Node::rebooted));
    assert!(nodes.iter().any(|n| n.log().contains("semaphore full")));
}

#[test]
fn unreachable_lock_means_no_reboot_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    for (name, lock) in [
        (
            "etcd-down",
            format!("backend = \"etcd\"\nendpoints = [\"http://127.0.0.1:{port}\"]\n"),
        ),
        (
            "fleet-down",
            format!("backend = \"fleetlock\"\nurl = \"http://127.0.0.1:{port}\"\n"),
        ),
    ] {
        let n = node(tmp.path(), name, &lock, "true");
        let mut k = n.spawn();
        std::thread::sleep(Duration::from_secs(3));
        let still = k.try_wait().unwrap().is_none();
        let _ = k.kill();
        let _ = k.wait();
        assert!(still, "{name} exited: {}", n.log());
        assert!(!n.rebooted(), "{name} rebooted without a slot");
        let log = n.log();
        assert!(
            log.contains("not rebooting") && log.contains(&format!("127.0.0.1:{port}")),
            "{name}: {log}"
        );
        let state = std::fs::read_to_string(n.dir.join("state.json")).unwrap();
        assert!(
            state.contains("waiting_since") && state.contains("does not reboot"),
            "{name}: {state}"
        );
    }
}

/// `[lock]` for a TLS etcd at `url` with these files (None: left out).
fn tls_lock(url: &str, ca: Option<&Path>, client: Option<&CertFiles>, extra: &str) -> String {
    let mut l = format!("backend = \"etcd\"\nendpoints = [\"{url}\"]\n{extra}");
    if let Some(ca) = ca {
        l += &format!("ca_file = \"{}\"\n", ca.display());
    }
    if let Some(c) = client {
        l += &format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            c.cert.display(),
            c.key.display()
        );
    }
    l
}

#[test]
fn etcd_over_tls_with_a_client_certificate_shares_slots_and_publishes_status() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "etcd");
    let etcd = EtcdServer::start_tls(&ca);
    assert!(etcd.url.starts_with("https://"), "{}", etcd.url);
    let nodes: Vec<Node> = (0..4)
        .map(|i| {
            let id = format!("tls-{i}");
            let client = ca.issue(&id, &[&id]);
            let lock = tls_lock(
                &etcd.url,
                Some(&ca.pem),
                Some(&client),
                "group = \"db\"\nmax_concurrent = 2\nttl_secs = 30\n",
            );
            node(tmp.path(), &id, &lock, "sleep 0.3")
        })
        .collect();
    let kids = nodes.iter().map(Node::spawn).collect();
    wait_all(&nodes, kids, Duration::from_secs(120));
    let c = etcd.client();
    let h = history(&c, "db");
    assert!(h.iter().all(|(_, ids)| ids.len() <= 2), "{h:?}");
    let held: BTreeSet<&String> = h.iter().flat_map(|(_, ids)| ids).collect();
    assert_eq!(held.len(), 4, "not every node held a slot: {held:?}");
    for n in &nodes {
        assert!(
            n.rebooted(),
            "{} never ran its reboot hook: {}",
            n.id,
            n.log()
        );
    }
    // The status publisher spoke TLS too: every node's record is there.
    let records = c
        .range(&herd_reboot_lock::status::nodes_prefix("db"), 0, false)
        .unwrap();
    let mut ids: Vec<String> = records
        .kvs
        .iter()
        .map(|kv| kv.key_text().rsplit('/').next().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["tls-0", "tls-1", "tls-2", "tls-3"], "{records:?}");
}

/// A node that must not reboot: it keeps running (waiting) for 3 s and its
/// log and state say `says`.
fn refuses_without_rebooting(n: &Node, says: &str) {
    let mut k = n.spawn();
    std::thread::sleep(Duration::from_secs(3));
    let still = k.try_wait().unwrap().is_none();
    let _ = k.kill();
    let _ = k.wait();
    let log = n.log();
    assert!(still, "{} exited: {log}", n.id);
    assert!(!n.rebooted(), "{} rebooted without a slot", n.id);
    assert!(
        log.contains("not rebooting") && log.contains(says),
        "{}: no {says:?} in {log}",
        n.id
    );
    let state = std::fs::read_to_string(n.dir.join("state.json")).unwrap();
    assert!(
        state.contains("waiting_since") && state.contains(says),
        "{}: {state}",
        n.id
    );
}

#[test]
fn etcd_over_tls_refusals_say_why_and_the_node_does_not_reboot() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, rogue) = (
        TestCa::new(tmp.path(), "etcd"),
        TestCa::new(tmp.path(), "rogue"),
    );
    let etcd = EtcdServer::start_tls(&ca);
    let good = ca.issue("good", &["good"]);
    let other = rogue.issue("other", &["other"]);
    let plain = etcd.url.replace("https://", "http://");
    for (id, lock, says) in [
        (
            "no-client-cert",
            tls_lock(&etcd.url, Some(&ca.pem), None, ""),
            "presents no client certificate",
        ),
        (
            "cert-from-another-ca",
            tls_lock(&etcd.url, Some(&ca.pem), Some(&other), ""),
            "refused this node's client certificate",
        ),
        (
            "server-not-from-the-ca",
            tls_lock(&etcd.url, Some(&rogue.pem), Some(&good), ""),
            "etcd's server certificate is not issued by a trusted CA",
        ),
        (
            "plain-http-to-tls",
            tls_lock(&plain, None, None, ""),
            "it speaks TLS, but the endpoint is plain http://",
        ),
    ] {
        let n = node(tmp.path(), id, &lock, "true");
        refuses_without_rebooting(&n, says);
    }
    // Nothing reached etcd's keys.
    let r = etcd.client().range("/herd/", 0, true).unwrap();
    assert_eq!(r.count, 0, "{r:?}");
}

#[test]
fn unusable_tls_files_stop_the_updater_with_what_to_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "clients");
    let (a, b) = (ca.issue("a", &["a"]), ca.issue("b", &["b"]));
    let url = "https://127.0.0.1:1";
    let missing = tmp.path().join("missing.pem");
    let crossed = CertFiles {
        cert: a.cert.clone(),
        key: b.key.clone(),
    };
    let swapped = CertFiles {
        cert: a.key.clone(),
        key: a.cert.clone(),
    };
    for (id, lock, says) in [
        (
            "missing-ca",
            tls_lock(url, Some(&missing), Some(&a), ""),
            "cannot read it",
        ),
        (
            "key-not-the-certs",
            tls_lock(url, Some(&ca.pem), Some(&crossed), ""),
            "does not belong to the certificate",
        ),
        (
            "swapped",
            tls_lock(url, Some(&ca.pem), Some(&swapped), ""),
            "holds no CERTIFICATE block",
        ),
        (
            "cert-without-key",
            format!(
                "backend = \"etcd\"\nendpoints = [\"{url}\"]\ncert_file = \"{}\"\n",
                a.cert.display()
            ),
            "cert_file needs key_file",
        ),
        (
            "files-on-http",
            tls_lock("http://127.0.0.1:1", Some(&ca.pem), None, ""),
            "write https:// endpoints",
        ),
    ] {
        let n = node(tmp.path(), id, &lock, "true");
        let st = n.spawn().wait().unwrap();
        let log = n.log();
        assert!(!st.success(), "{id} ran: {log}");
        assert!(!n.rebooted(), "{id} rebooted");
        assert!(log.contains(says), "{id}: no {says:?} in {log}");
        if id == "missing-ca" {
            assert!(
                log.contains(&format!("ca_file {}", missing.display())),
                "{log}"
            );
        }
    }
}
