//! A coordinated reboot in QEMU (issue 18): a node whose image says
//! `reboot = "coordinated"` with `[update.lock]` on etcd reaches the test's
//! real etcd on 127.0.0.1 only through QEMU user networking (`restrict=on`,
//! a guestfwd to 10.0.2.100:2379), as it reaches the repository. While
//! another holder has the group's one reboot slot, the node downloads and
//! verifies 0.2.0 into slot B and then waits, saying so in its console and
//! in its fleet status record; once the slot is free it takes it, reboots
//! into slot B, keeps the slot (the same etcd lease) through the reboot,
//! and gives it back only after herd-init blessed the new boot.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use herd_qemu::{GuestForward, Vm};
use herd_reboot_lock::etcd::{Client, Etcd, KeyValue};
use herd_reboot_lock::status::{nodes_prefix, NodeStatus};
use herd_reboot_lock::{Acquire, RebootLock};
use herd_tests::etcd::EtcdServer;
use herd_tests::update::*;
use herd_tests::*;

const BOOT: Duration = Duration::from_secs(180);
const GROUP: &str = "web";

/// `[update]` keys for a coordinated reboot with one slot in group web,
/// on the etcd the guest reaches at 10.0.2.100:2379. The lease outlives a
/// TCG reboot (well under 120 s).
const COORDINATED: &str = "reboot = \"coordinated\"\n\n[update.lock]\nbackend = \"etcd\"\n\
     endpoints = [\"http://10.0.2.100:2379\"]\ngroup = \"web\"\nmax_concurrent = 1\nttl_secs = 120\n";

/// The fleet status records of group web.
fn records(c: &Client) -> Vec<NodeStatus> {
    c.range(&nodes_prefix(GROUP), 0, false)
        .expect("reading the status records")
        .kvs
        .iter()
        .map(|kv| serde_json::from_str(&kv.value_text()).expect("a status record"))
        .collect()
}

/// Polls the one status record of group web until `ok` holds (at most
/// `within`); the record.
fn record_until(c: &Client, within: Duration, ok: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
    let t = Instant::now();
    loop {
        let r = records(c);
        if let [one] = r.as_slice() {
            if ok(one) {
                return one.clone();
            }
        }
        assert!(
            t.elapsed() < within,
            "no status record as expected within {within:?}: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The holder keys of group web now: (node id, lease).
fn holders(c: &Client) -> Vec<(String, i64)> {
    holders_at(c, 0)
}

fn holders_at(c: &Client, rev: i64) -> Vec<(String, i64)> {
    let prefix = Etcd::holders_prefix(GROUP);
    let kvs: Vec<KeyValue> = c.range(&prefix, rev, false).unwrap().kvs;
    kvs.iter()
        .map(|kv| {
            (
                kv.key_text().trim_start_matches(&prefix).to_string(),
                kv.lease,
            )
        })
        .collect()
}

/// Index of the first console line holding `needle`.
fn line_of(vm: &Vm, needle: &str) -> usize {
    vm.lines()
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no console line with {needle:?}"))
}

#[test]
fn waits_for_a_free_slot_then_reboots_and_gives_it_back_once_blessed() {
    let etcd = EtcdServer::start();
    let c = etcd.client();
    let etcd_port: u16 = etcd.url.rsplit(':').next().unwrap().parse().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let r = Repo::new(d, "repo");
    let (_srv, port) = herd_serve(&r.dir);
    let out = |v: &str| {
        let mut t = updater_image(v, &r.root());
        t.push_str(COORDINATED);
        build_version(d, v, &t)
    };
    let (v1, v2) = (out("0.1.0"), out("0.2.0"));
    r.publish(&v1, &[]);
    let disk = copy_disk(&v1, d);
    let mut cfg = node_vm(&disk, port);
    cfg.guest_forwards.push(GuestForward {
        guest: 2379,
        host: etcd_port,
    });
    let vm = Vm::start(&cfg, &d.join("console.log")).unwrap();
    vm.wait_for("ready slot=a version=0.1.0", BOOT).unwrap();
    vm.wait_for("reboot policy coordinated (etcd group web)", BOOT)
        .unwrap();
    vm.wait_for("updater: 0.1.0 is the newest release on stable", BOOT)
        .unwrap();
    // The node speaks to etcd through the guestfwd: its record is there.
    let rec = record_until(&c, Duration::from_secs(30), |r| {
        r.version == "0.1.0" && r.slot == "a"
    });
    assert_eq!(rec.lock, "idle", "{rec:?}");
    let node = rec.node.clone();

    // Someone else holds the group's only slot (with a lease kept alive
    // from this process).
    let mut other = Etcd::new(std::slice::from_ref(&etcd.url), GROUP, "maintenance", 1, 10);
    assert_eq!(other.acquire().unwrap(), Acquire::Granted);

    r.publish(&v2, &[]);
    vm.wait_for("updater: slot b verified against usrhash", BOOT)
        .unwrap();
    vm.wait_for("updater: herd 0.2.0 is ready in slot b", BOOT)
        .unwrap();
    vm.wait_for(
        "waiting for a reboot slot (etcd): all 1 reboot slots of group \"web\" are held (by maintenance)",
        Duration::from_secs(60),
    )
    .unwrap();
    let rec = record_until(&c, Duration::from_secs(30), |r| r.lock == "waiting");
    assert_eq!(
        (
            rec.version.as_str(),
            rec.slot.as_str(),
            rec.pending.as_deref()
        ),
        ("0.1.0", "a", Some("0.2.0")),
        "{rec:?}"
    );
    // It keeps waiting (retrying every 2 s or so) and does not reboot.
    std::thread::sleep(Duration::from_secs(15));
    let lines = vm.lines();
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count("rebooting into the new slot"),
        0,
        "rebooted without a slot"
    );
    assert_eq!(count("herd-init: ready"), 1, "{lines:?}");
    let h = holders(&c);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0].0, "maintenance");
    assert_eq!(records(&c)[0].lock, "waiting");

    // The slot is free: the node takes it and reboots into slot B.
    other.release().unwrap();
    vm.wait_for(
        "updater: rebooting into the new slot",
        Duration::from_secs(60),
    )
    .unwrap();
    vm.wait_for("ready slot=b version=0.2.0", BOOT).unwrap();
    // herd-init blesses 3 s after ready at the earliest: the slot taken
    // before the reboot is still this node's, on the same lease.
    let h = holders(&c);
    assert_eq!(
        h.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [node.as_str()],
        "the slot was not held through the reboot"
    );
    let lease = h[0].1;
    vm.wait_for("blessed boot entry herd-b+", BOOT).unwrap();
    vm.wait_for(
        "updater: gave the reboot slot of group web back (etcd)",
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        line_of(&vm, "blessed boot entry herd-b+")
            < line_of(&vm, "gave the reboot slot of group web back"),
        "the slot was given back before the boot was blessed"
    );
    let h = holders(&c);
    assert!(h.is_empty(), "{h:?}");
    // The record follows at the end of that round of the updater (after
    // its repository check).
    let rec = record_until(&c, Duration::from_secs(30), |r| {
        r.version == "0.2.0" && r.lock == "idle"
    });
    assert_eq!(
        (
            rec.slot.as_str(),
            rec.blessed,
            rec.lock.as_str(),
            rec.pending.as_deref()
        ),
        ("b", true, "idle", None),
        "{rec:?}"
    );
    vm.kill();

    // etcd's history: never two holders; maintenance, then the node, each
    // once; the node's key on one lease from taking the slot (before the
    // reboot) to giving it back (after the blessing).
    let newest = c.range("/", 0, true).unwrap().header.revision;
    let history: Vec<Vec<(String, i64)>> = (1..=newest).map(|rev| holders_at(&c, rev)).collect();
    assert!(history.iter().all(|h| h.len() <= 1), "{history:?}");
    let mut runs: Vec<&str> = Vec::new();
    for h in &history {
        let now = h.first().map_or("", |(n, _)| n.as_str());
        if runs.last() != Some(&now) {
            runs.push(now);
        }
    }
    assert_eq!(
        runs,
        ["", "maintenance", "", node.as_str(), ""],
        "{history:?}"
    );
    let leases: BTreeSet<i64> = history
        .iter()
        .flatten()
        .filter(|(n, _)| *n == node)
        .map(|(_, l)| *l)
        .collect();
    assert_eq!(leases, BTreeSet::from([lease]), "{history:?}");
}
