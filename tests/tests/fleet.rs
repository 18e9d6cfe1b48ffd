//! Fleet status records against a real etcd on 127.0.0.1: real
//! `herd-update lock-cycle` processes (the node build) publish their
//! records while they take turns for one reboot slot, and `herd fleet
//! status` (the real CLI) reads them back, as a table and as JSON.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use herd_reboot_lock::status::{node_key, NodeStatus, Publisher};
use herd_tests::etcd::{lock_cycle, lock_cycle_log, EtcdServer, TestCa};
use herd_tests::*;

/// One simulated node: a state dir with its id, config and reboot hook.
struct Node {
    dir: PathBuf,
}

impl Node {
    fn new(root: &Path, id: &str, etcd: &str) -> Node {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("node-id"), id).unwrap();
        std::fs::write(
            dir.join("update.toml"),
            format!(
                "repository = \"http://127.0.0.1:1\"\ninterval_secs = 1\nreboot = \"coordinated\"\n\
                 [lock]\nbackend = \"etcd\"\nendpoints = [\"{etcd}\"]\ngroup = \"web\"\n\
                 max_concurrent = 1\nttl_secs = 3\n"
            ),
        )
        .unwrap();
        let hook = dir.join("hook");
        std::fs::write(
            &hook,
            format!("#!/bin/sh\nsleep 1\ntouch {}/rebooted\n", dir.display()),
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Node { dir }
    }

    fn spawn(&self, linger: u64) -> KillOnDrop {
        let child: Child = lock_cycle(&self.dir)
            .args(["--from-version", "0.1.0", "--to-version", "0.2.0"])
            .args(["--linger-secs", &linger.to_string()])
            .spawn()
            .expect("starting herd-update lock-cycle");
        KillOnDrop(child)
    }

    fn log(&self) -> String {
        lock_cycle_log(&self.dir)
    }
}

/// `herd fleet status --etcd URL ARGS...`: (success, stdout, stderr).
fn fleet_status(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = run(Command::new(herd())
        .args(["fleet", "status", "--etcd", url])
        .args(args));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON groups `herd fleet status --json --group web` prints.
fn web(url: &str) -> serde_json::Value {
    let (ok, out, err) = fleet_status(url, &["--group", "web", "--json"]);
    assert!(ok, "herd fleet status failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    v[0].clone()
}

#[test]
fn fleet_status_shows_what_real_nodes_publish() {
    let etcd = EtcdServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = (0..4)
        .map(|i| Node::new(tmp.path(), &format!("n{i}"), &etcd.url))
        .collect();
    // n3 remembers a release that failed to boot there and its wave of
    // the last rollout it saw (as `herd-update check` leaves them).
    std::fs::write(
        nodes[3].dir.join("state.json"),
        r#"{"highest_seq":3,"bad":["0.1.5"],"pending":null,"partial":null,"last_error":null,"last_check":0,"wave":2}"#,
    )
    .unwrap();
    let mut kids: Vec<KillOnDrop> = nodes.iter().map(|n| n.spawn(12)).collect();

    // While they take turns: never more than one holder, and a holder's
    // own record says so (it publishes right after taking the slot).
    let t = Instant::now();
    let mut seen_holding = std::collections::BTreeSet::new();
    while !nodes.iter().all(|n| n.dir.join("rebooted").exists()) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the nodes did not all reboot within 60 s: {}",
            nodes.iter().map(Node::log).collect::<String>()
        );
        let g = web(&etcd.url);
        let holders = g["holders"].as_array().unwrap();
        assert!(holders.len() <= 1, "two holders of one slot: {g}");
        for h in holders {
            let id = h["node"].as_str().unwrap();
            let rec = g["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["node"] == id);
            if rec.is_some_and(|r| r["lock"] == "holding" && r["version"] == "0.1.0") {
                seen_holding.insert(id.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !seen_holding.is_empty(),
        "no status read showed a holder whose record says holding"
    );

    // All four rebooted and linger: four records, all on 0.2.0, idle.
    let t = Instant::now();
    let g = loop {
        let g = web(&etcd.url);
        let recs: Vec<NodeStatus> = serde_json::from_value(g["nodes"].clone()).unwrap();
        if recs.len() == 4 && recs.iter().all(|r| r.version == "0.2.0") {
            break g;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{g}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let recs: Vec<NodeStatus> = serde_json::from_value(g["nodes"].clone()).unwrap();
    let ids: Vec<&str> = recs.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(ids, ["n0", "n1", "n2", "n3"]);
    assert!(recs.iter().all(|r| r.lock == "idle" && r.blessed), "{g}");
    assert_eq!(recs[3].bad, ["0.1.5"]);
    assert_eq!(recs[3].wave, Some(2));
    assert_eq!(g["holders"].as_array().map(Vec::len), Some(0), "{g}");

    let (ok, table, err) = fleet_status(&etcd.url, &[]);
    assert!(ok, "{err}");
    assert!(
        table.contains("group web: 4 nodes, 1 failing, 0 reboot slots held"),
        "{table}"
    );
    assert!(table.contains("versions:  0.2.0 ×4"), "{table}");
    assert!(table.contains("waves:     - ×3, 2 ×1"), "{table}");
    assert!(table.contains("failed to boot: 0.1.5"), "{table}");

    // A node that dies drops out when its record's lease (ttl_secs = 3)
    // runs out; the others stay while they keep theirs alive.
    let mut dead = kids.remove(0);
    dead.0.kill().unwrap();
    dead.0.wait().unwrap();
    let killed = Instant::now();
    loop {
        let g = web(&etcd.url);
        let ids: Vec<String> = g["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_str().unwrap().to_string())
            .collect();
        if ids == ["n1", "n2", "n3"] {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(6),
            "n0's record outlived its 3 s lease: {ids:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for k in kids.iter_mut() {
        assert!(k.0.try_wait().unwrap().is_none(), "a node exited early");
    }
}

#[test]
fn fleet_status_says_what_to_do_when_etcd_is_unreachable() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (ok, out, err) = fleet_status(&url, &["--group", "web"]);
    assert!(!ok, "succeeded without an etcd: {out}");
    assert!(err.contains(&url) && err.contains("--etcd"), "{err}");
}

#[test]
fn an_empty_group_and_a_record_whose_lease_was_revoked() {
    let etcd = EtcdServer::start();
    let (ok, table, err) = fleet_status(&etcd.url, &["--group", "db"]);
    assert!(ok, "{err}");
    assert!(
        table.contains("group db: 0 nodes, 0 failing, 0 reboot slots held"),
        "{table}"
    );

    let c = etcd.client();
    let rec = NodeStatus {
        node: "d1".into(),
        version: "0.3.0".into(),
        slot: "a".into(),
        blessed: true,
        pending: None,
        bad: vec![],
        last_error: None,
        halted: Some("rollout of 0.4.0 halted by the publisher: bad disk driver".into()),
        wave: Some(0),
        updated_at: 1,
        lock: "idle".into(),
    };
    let mut p = Publisher::new(std::slice::from_ref(&etcd.url), "db", "d1", 3);
    assert!(p.publish(&rec).unwrap(), "the first record is written");
    assert!(!p.publish(&rec).unwrap(), "an unchanged record is not");
    let key = node_key("db", "d1");
    let kv = c.range(&key, 0, false).unwrap().kvs[0].clone();
    assert_ne!(kv.lease, 0, "the record is not on a lease");
    let (_, table, _) = fleet_status(&etcd.url, &["--group", "db"]);
    assert!(
        table.contains("halted:    rollout of 0.4.0 halted by the publisher: bad disk driver ×1"),
        "{table}"
    );
    // Someone (or an etcd outage longer than the TTL) ends the lease: the
    // record goes with it, and the next publish writes it on a new one.
    c.revoke(kv.lease).unwrap();
    assert_eq!(c.range(&key, 0, true).unwrap().count, 0);
    let t = Instant::now();
    while !p.publish(&rec).unwrap() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the lost record was never written again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let again = c.range(&key, 0, false).unwrap();
    assert_eq!(again.count, 1);
    assert_ne!(again.kvs[0].lease, kv.lease);
}

#[test]
fn fleet_status_over_tls_with_a_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "etcd");
    let etcd = EtcdServer::start_tls(&ca);
    let rec = NodeStatus {
        node: "t1".into(),
        version: "0.5.0".into(),
        slot: "b".into(),
        blessed: true,
        pending: None,
        bad: vec![],
        last_error: None,
        halted: None,
        wave: None,
        updated_at: 1,
        lock: "idle".into(),
    };
    let mut p = Publisher::with_client(etcd.client(), "sec", "t1", 30);
    assert!(p.publish(&rec).unwrap());
    let me = ca.issue("operator", &["operator"]);
    let (ca_pem, cert, key) = (
        ca.pem.display().to_string(),
        me.cert.display().to_string(),
        me.key.display().to_string(),
    );
    let tls = [
        "--ca-file",
        &ca_pem,
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--group",
        "sec",
        "--json",
    ];
    let (ok, out, err) = fleet_status(&etcd.url, &tls);
    assert!(ok, "{err}");
    assert!(out.contains("\"t1\"") && out.contains("0.5.0"), "{out}");
    // Without a client certificate etcd refuses, and the message says
    // which flags to give.
    let (ok, out, err) = fleet_status(&etcd.url, &["--ca-file", &ca_pem, "--group", "sec"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("presents no client certificate")
            && err.contains("--cert-file and --key-file"),
        "{err}"
    );
    // Files with a plain http:// URL are a mistake said before anything is sent.
    let plain = etcd.url.replace("https://", "http://");
    let (ok, _, err) = fleet_status(&plain, &tls);
    assert!(!ok && err.contains("write https://HOST:2379"), "{err}");
}
