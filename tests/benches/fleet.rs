//! Benchmark (issue 18), run by `bench/fleet.sh`: a fleet of simulated
//! nodes (10,000 by default) updating through one real etcd on 127.0.0.1.
//!
//! What is real: the release repository (`herd_release::Repo`: a signed
//! root, a channel document with a 4-wave rollout, payload files), each
//! node's decision (`verify_channel` on the channel file's bytes with the
//! node's id, state and the simulated "now": wave, halt, known-bad), the
//! reboot lock (`herd_reboot_lock::etcd::Etcd`, one per node, max 50
//! concurrent), the waiting nodes' retry spacing (`herd_update`'s
//! `Pace`: by how fast the queue moves), the status records (`status::Publisher`, `read_fleet`) and
//! the halt (`Repo::halt`: a new signed channel document the nodes read).
//! What is simulated: time (SCALE simulated seconds per real second), the
//! download (none) and the reboot (a delay); the nodes are state machines
//! run by a bounded pool of worker threads (simulated reboots by a pool of
//! their own), and their status records and
//! places in the lock's queue share one lease (one keepalive instead of one
//! per node; a real node refreshes one lease while it waits, the status
//! record's, and a second one while it holds a slot).
//!
//! Run 1 (good release): every node updates. Printed: share of nodes per
//! wave against the configured waves (±1 point), peak concurrent reboots
//! from etcd's own history (a watch from revision 1 over the holder keys),
//! etcd request rate and latency (per second, at the peak second, against
//! an idle etcd measured first), and the time to update the fleet against
//! the slot-limited lower bound of the same waves.
//! Run 2 (bad release): 2 % of the first wave's nodes fail to boot it and
//! fall back; a controller reads the fleet status every simulated 2 min
//! and halts the channel once HALT_AFTER nodes report it failed. Printed:
//! how many nodes took the bad release, when the halt came, and how many
//! nodes saw it.
//!
//! Usage: cargo bench -p herd-tests --bench fleet -- [NODES] [SCALE]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use herd_reboot_lock::etcd::{Client, Etcd, Keeper};
use herd_reboot_lock::status::{read_fleet, NodeStatus, Publisher};
use herd_reboot_lock::{Acquire, RebootLock};
use herd_release::{NodeState, Release, Repo, Rollout, Root, SigningKey, Wave};
use herd_tests::etcd::EtcdServer;
use herd_update::coordinate::Pace;

const GROUP: &str = "fleet";
const CHANNEL: &str = "stable";
const FROM: &str = "0.1.0";
const TO: &str = "0.2.0";
const MAX_CONCURRENT: u32 = 50;
/// Simulated seconds: between two checks of the channel; one reboot.
const CHECK_EVERY: f64 = 600.0;
const REBOOT: f64 = 30.0;
/// The waves: (seconds after the rollout start, percent).
const WAVES: [(u64, u32); 4] = [(0, 5), (900, 25), (1800, 50), (2700, 100)];
/// How often the controller reads the fleet status (simulated seconds).
const CONTROL_EVERY: f64 = 120.0;
/// Failed nodes after which the controller halts the rollout.
const HALT_AFTER: usize = 5;
/// One node in FAIL_EVERY of the first wave fails to boot the bad release.
const FAIL_EVERY: usize = 50;
const WORKERS: usize = 48;
/// Workers for the simulated reboots (nodes holding a slot) alone.
const REBOOT_WORKERS: usize = 8;
/// Real seconds a run may take at most (the slot-limited lower bound of a
/// 10,000-node rollout is 133 s at x50).
const LIMIT: Duration = Duration::from_secs(480);

/// Simulated time: unix seconds advancing SCALE times faster than real.
#[derive(Clone, Copy)]
struct Clock {
    t0: Instant,
    unix0: u64,
    scale: f64,
}

impl Clock {
    fn sim(&self) -> f64 {
        self.unix0 as f64 + self.t0.elapsed().as_secs_f64() * self.scale
    }
    fn now(&self) -> u64 {
        self.sim() as u64
    }
    /// The real instant of simulated unix time `s`.
    fn real(&self, s: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(((s - self.unix0 as f64) / self.scale).max(0.0))
    }
}

/// Every etcd request: count and latency per real second of the run.
#[derive(Default)]
struct Requests {
    per_sec: Mutex<Vec<Vec<u32>>>,
    by_path: Mutex<BTreeMap<String, usize>>,
}

impl Requests {
    fn observe(&self, t0: Instant, path: &str, took: Duration) {
        let sec = t0.elapsed().as_secs() as usize;
        let mut v = self.per_sec.lock().unwrap();
        if v.len() <= sec {
            v.resize(sec + 1, Vec::new());
        }
        v[sec].push(took.as_micros().min(u128::from(u32::MAX)) as u32);
        drop(v);
        *self.by_path.lock().unwrap().entry(path.into()).or_default() += 1;
    }
}

fn percentile(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    f64::from(v[i]) / 1000.0
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Waiting,
    Holding,
    Done,
}

struct Node {
    id: String,
    lock: Etcd,
    publisher: Publisher,
    version: String,
    bad: Vec<String>,
    highest_seq: u64,
    halted: Option<String>,
    wave: Option<u32>,
    last_error: Option<String>,
    phase: Phase,
    attempt: u32,
    pace: Pace,
    fails: bool,
    took: Option<f64>,
    done: Option<f64>,
}

impl Node {
    fn record(&self, now: u64) -> NodeStatus {
        NodeStatus {
            node: self.id.clone(),
            version: self.version.clone(),
            slot: if self.version == FROM { "a" } else { "b" }.into(),
            blessed: true,
            pending: matches!(self.phase, Phase::Waiting | Phase::Holding).then(|| TO.into()),
            bad: self.bad.clone(),
            last_error: self.last_error.clone(),
            halted: self.halted.clone(),
            wave: self.wave,
            updated_at: now,
            lock: match self.phase {
                Phase::Waiting => "waiting",
                Phase::Holding => "holding",
                _ => "idle",
            }
            .into(),
        }
    }

    fn publish(&mut self, now: u64) {
        let rec = self.record(now);
        if let Err(e) = self.publisher.publish(&rec) {
            self.last_error = Some(format!("publishing the status record: {e}"));
        }
    }

    /// One step at simulated time `now`: the simulated delay to the next.
    fn step(&mut self, sh: &Shared, now: u64) -> Option<f64> {
        let salt = self
            .id
            .bytes()
            .fold(now, |a, b| a.wrapping_mul(31) + u64::from(b));
        let next_check = CHECK_EVERY * (0.9 + (salt % 200) as f64 / 1000.0);
        match self.phase {
            Phase::Done => None,
            Phase::Idle => {
                let bytes = std::fs::read(&sh.channel_file).expect("reading the channel");
                let ns = NodeState {
                    highest_seq: self.highest_seq,
                    installed: self.version.clone(),
                    bad: self.bad.clone(),
                };
                match herd_release::verify_channel(&sh.root, &bytes, CHANNEL, &ns, &self.id, now) {
                    Err(herd_release::Error::KnownBad(_)) => {}
                    Err(e) => self.last_error = Some(e.to_string()),
                    Ok((c, take)) => {
                        self.highest_seq = self.highest_seq.max(c.seq);
                        self.wave = c
                            .release
                            .rollout
                            .as_ref()
                            .and_then(|r| herd_release::wave_of(r, &self.id, &c.release.version))
                            .map(|w| w as u32);
                        let taken = c.release.version == self.version;
                        self.halted = c.halted.as_ref().filter(|_| !taken).map(|h| {
                            herd_release::Error::Halted {
                                version: c.release.version.clone(),
                                reason: h.reason.clone(),
                            }
                            .to_string()
                        });
                        if take {
                            // Downloaded and installed: now a reboot slot.
                            self.took = Some(now as f64 - sh.rollout_start);
                            sh.took.fetch_add(1, Ordering::Relaxed);
                            self.phase = Phase::Waiting;
                            self.attempt = 0;
                            sh.inflight.fetch_add(1, Ordering::Relaxed);
                            self.publish(now);
                            return Some(0.0);
                        }
                    }
                }
                self.publish(now);
                Some(next_check)
            }
            Phase::Waiting => match self.lock.acquire() {
                Ok(Acquire::Granted) => {
                    self.phase = Phase::Holding;
                    let held = sh.holding.fetch_add(1, Ordering::Relaxed) + 1;
                    sh.peak_holding.fetch_max(held, Ordering::Relaxed);
                    self.publish(now);
                    Some(REBOOT)
                }
                r => {
                    let ahead = match r {
                        Ok(Acquire::Busy { ahead, .. }) => ahead,
                        Err(e) => {
                            self.last_error = Some(e.to_string());
                            None
                        }
                        Ok(Acquire::Granted) => None,
                    };
                    self.publish(now);
                    self.attempt += 1;
                    let wait = match ahead {
                        Some(a) => self.pace.next(now as f64, a, CHECK_EVERY as u64, salt),
                        None => {
                            herd_update::coordinate::backoff(self.attempt, CHECK_EVERY as u64, salt)
                        }
                    };
                    Some(wait.as_secs_f64())
                }
            },
            Phase::Holding => {
                // The reboot: the new boot is blessed, or it fails and the
                // node falls back to the old slot and marks the release bad.
                if self.fails {
                    self.bad.push(TO.into());
                } else {
                    self.version = TO.into();
                }
                sh.holding.fetch_sub(1, Ordering::Relaxed);
                if let Err(e) = self.lock.release() {
                    self.last_error = Some(e.to_string());
                }
                self.phase = Phase::Done;
                self.done = Some(now as f64 - sh.rollout_start);
                self.publish(now);
                sh.inflight.fetch_sub(1, Ordering::Relaxed);
                sh.done.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

struct Shared {
    root: Root,
    channel_file: std::path::PathBuf,
    rollout_start: f64,
    inflight: AtomicUsize,
    holding: AtomicUsize,
    peak_holding: AtomicUsize,
    done: AtomicUsize,
    took: AtomicUsize,
}

/// Due steps, earliest first.
struct Queue {
    heap: Mutex<BinaryHeap<Reverse<(Instant, usize)>>>,
    cv: Condvar,
    stop: AtomicBool,
}

impl Queue {
    fn push(&self, at: Instant, i: usize) {
        self.heap.lock().unwrap().push(Reverse((at, i)));
        self.cv.notify_one();
    }

    /// The next due node, or None once stopped.
    fn pop(&self) -> Option<usize> {
        let mut h = self.heap.lock().unwrap();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            let wait = match h.peek() {
                None => Duration::from_millis(100),
                Some(Reverse((at, i))) => {
                    let now = Instant::now();
                    if *at <= now {
                        let i = *i;
                        h.pop();
                        return Some(i);
                    }
                    *at - now
                }
            };
            h = self
                .cv
                .wait_timeout(h, wait.min(Duration::from_millis(100)))
                .unwrap()
                .0;
        }
    }
}

/// Watches the holder keys of GROUP from revision 1 (etcd's own history,
/// as it happens: etcd compacts its history during the run, see `run`)
/// until `stop`; then (peak concurrent holders, distinct holders,
/// acquisitions).
fn watch_holders(
    url: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize, usize)> {
    let prefix = Etcd::holders_prefix(GROUP);
    let body = serde_json::json!({"create_request": {
        "key": herd_reboot_lock::b64::encode(prefix.as_bytes()),
        "range_end": herd_reboot_lock::b64::encode(&herd_reboot_lock::etcd::prefix_end(&prefix)),
        "start_revision": "1",
    }});
    let agent = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_secs(2))
        .build();
    let r = agent
        .post(&format!("{url}/v3/watch"))
        .send_string(&body.to_string())
        .expect("watching etcd");
    std::thread::spawn(move || {
        let (mut held, mut peak, mut all, mut puts) = (BTreeSet::new(), 0, BTreeSet::new(), 0);
        let mut lines = std::io::BufReader::new(r.into_reader());
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                // A quiet stream: keep watching until told to stop.
                Err(_) if !stop.load(Ordering::Relaxed) => continue,
                Err(_) => break,
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            for ev in v["result"]["events"].as_array().into_iter().flatten() {
                let key = herd_reboot_lock::b64::decode(ev["kv"]["key"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                let id = String::from_utf8_lossy(&key)
                    .trim_start_matches(&prefix)
                    .to_string();
                if ev["type"].as_str() == Some("DELETE") {
                    held.remove(&id);
                } else {
                    puts += 1;
                    held.insert(id.clone());
                    all.insert(id);
                    peak = peak.max(held.len());
                }
            }
        }
        (peak, all.len(), puts)
    })
}

/// A repository with release TO on CHANNEL, its waves from `start`.
fn repository(dir: &Path, key: &SigningKey, now: u64, start: u64) -> Repo {
    let repo = Repo::at(&dir.join("repo"));
    repo.init(&[key], 1, now, now + 3650 * 86_400).unwrap();
    let mut payloads = BTreeMap::new();
    for role in herd_contract::payload::REQUIRED {
        let f = dir.join(role);
        std::fs::write(&f, format!("{role} of {TO}")).unwrap();
        payloads.insert(role.to_string(), repo.add_payload(&f).unwrap());
    }
    let release = Release {
        image: "default".into(),
        version: TO.into(),
        usrhash: "ab".repeat(32),
        cmdline: vec![],
        payloads,
        rollout: Some(Rollout {
            start,
            waves: WAVES
                .iter()
                .map(|&(after_secs, percent)| Wave {
                    after_secs,
                    percent,
                })
                .collect(),
        }),
        pcrs: BTreeMap::new(),
    };
    repo.publish(CHANNEL, release, &[key], now, now + 3650 * 86_400)
        .unwrap();
    repo
}

struct Outcome {
    real: Duration,
    nodes: Vec<Node>,
    halted_at: Option<(f64, usize)>,
    decided_at: f64,
    failures_seen: usize,
    requests: Arc<Requests>,
    t0: Instant,
    peak_etcd: (usize, usize, usize),
    peak_local: usize,
    records: Vec<NodeStatus>,
    rollout_start: f64,
    clock: Clock,
}

fn run(n: usize, scale: f64, bad: bool) -> Outcome {
    // Compacted every 30 s, as production etcds are (Kubernetes' API
    // server compacts every 5 min): etcd walks deleted keys in a range until
    // they are compacted, and 10,000 nodes leave 10,000 deleted queue and
    // holder keys behind. The peak of holders comes from a watch kept open
    // from the start instead.
    let etcd = EtcdServer::start_with(&[
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=30s",
    ]);
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watch = watch_holders(&etcd.url, watch_stop.clone());
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let t0 = Instant::now();
    let unix0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock = Clock { t0, unix0, scale };
    // Every node checks once before the rollout starts (and registers).
    let start = unix0 + CHECK_EVERY as u64;
    let repo = repository(tmp.path(), &key, unix0, start);
    let requests = Arc::new(Requests::default());
    let r2 = requests.clone();
    let client = Client::new(std::slice::from_ref(&etcd.url))
        .observed(Arc::new(move |p, d| r2.observe(t0, p, d)));
    let lease = client.grant(60).expect("a lease for the status records");
    let _keeper = Keeper::start(client.clone(), lease, 60);
    let sh = Arc::new(Shared {
        root: repo.current_root(unix0).unwrap(),
        channel_file: repo.channel_path(CHANNEL),
        rollout_start: start as f64,
        inflight: AtomicUsize::new(0),
        holding: AtomicUsize::new(0),
        peak_holding: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        took: AtomicUsize::new(0),
    });
    let wave0: Vec<bool> = (0..n)
        .map(|i| {
            let id = format!("node-{i:05}");
            let r = Rollout {
                start,
                waves: WAVES
                    .iter()
                    .map(|&(after_secs, percent)| Wave {
                        after_secs,
                        percent,
                    })
                    .collect(),
            };
            herd_release::wave_of(&r, &id, TO) == Some(0)
        })
        .collect();
    let mut first = 0;
    let nodes: Vec<Mutex<Node>> = (0..n)
        .map(|i| {
            let id = format!("node-{i:05}");
            let fails = bad && wave0[i] && {
                first += 1;
                first % FAIL_EVERY == 1
            };
            Mutex::new(Node {
                lock: Etcd::with_client(client.clone(), GROUP, &id, MAX_CONCURRENT, 30)
                    .queue_on(lease),
                publisher: Publisher::on_lease(client.clone(), GROUP, &id, lease),
                id,
                version: FROM.into(),
                bad: vec![],
                highest_seq: 0,
                halted: None,
                wave: None,
                last_error: None,
                phase: Phase::Idle,
                attempt: 0,
                pace: Pace::default(),
                fails,
                took: None,
                done: None,
            })
        })
        .collect();
    let nodes = Arc::new(nodes);
    let new_queue = || {
        Arc::new(Queue {
            heap: Mutex::new(BinaryHeap::new()),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
        })
    };
    // Reboots (a node holding a slot) get workers of their own: a real node
    // reboots whatever its neighbours do; in one pool, a backlog of polls
    // would hold the simulated reboots back and with them the slots.
    let (q, reboots) = (new_queue(), new_queue());
    for i in 0..n {
        let first = unix0 as f64 + CHECK_EVERY * (i as f64 / n as f64);
        q.push(clock.real(first), i);
    }
    let workers: Vec<_> = (0..WORKERS + REBOOT_WORKERS)
        .map(|w| {
            let (q, reboots, nodes, sh) = (q.clone(), reboots.clone(), nodes.clone(), sh.clone());
            std::thread::spawn(move || {
                let mine = if w < WORKERS { &q } else { &reboots };
                while let Some(i) = mine.pop() {
                    let mut node = nodes[i].lock().unwrap();
                    if let Some(d) = node.step(&sh, clock.now()) {
                        let to = if node.phase == Phase::Holding {
                            &reboots
                        } else {
                            &q
                        };
                        to.push(clock.real(clock.sim() + d), i);
                    }
                }
            })
        })
        .collect();

    // The controller: reads the fleet status; halts on HALT_AFTER failures.
    let mut halted_at = None;
    let mut failures_seen = 0;
    let mut decided_at = 0.0;
    let mut next_control = clock.sim() + CONTROL_EVERY;
    let mut next_progress = Duration::from_secs(15);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = clock.sim();
        if t0.elapsed() >= next_progress {
            next_progress += Duration::from_secs(15);
            let per_sec = requests.per_sec.lock().unwrap();
            let last: usize = per_sec.iter().rev().skip(1).take(15).map(Vec::len).sum();
            drop(per_sec);
            eprintln!(
                "  {:>4.0} s real ({:>6.0} s simulated after the rollout start): {} took the release, {} holding, {} updated; etcd {} requests/s",
                t0.elapsed().as_secs_f64(),
                now - start as f64,
                sh.took.load(Ordering::Relaxed),
                sh.holding.load(Ordering::Relaxed),
                sh.done.load(Ordering::Relaxed),
                last / 15
            );
        }
        if now >= next_control {
            next_control = now + CONTROL_EVERY;
            // A real controller retries a failed read next round.
            let groups = match read_fleet(&client, Some(GROUP)) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("controller: reading the fleet status failed, next round: {e}");
                    continue;
                }
            };
            failures_seen = groups[0]
                .nodes
                .iter()
                .filter(|r| r.bad.iter().any(|b| b == TO))
                .count();
            if halted_at.is_none() && failures_seen >= HALT_AFTER {
                // The controller's read started at `now`.
                decided_at = now - start as f64;
                repo.halt(
                    CHANNEL,
                    &format!("{failures_seen} nodes failed to boot {TO}"),
                    &[&key],
                    now as u64,
                    now as u64 + 30 * 86_400,
                )
                .expect("halting the channel");
                // When the new document is there (the fleet read above
                // took a while under load).
                halted_at = Some((clock.sim() - start as f64, sh.took.load(Ordering::Relaxed)));
            }
        }
        let finished = match halted_at {
            None => sh.done.load(Ordering::Relaxed) == n,
            // Every node checked since the halt, none mid-reboot.
            Some((h, _)) => {
                sh.inflight.load(Ordering::Relaxed) == 0
                    && now - start as f64 > h + CHECK_EVERY * 1.2
            }
        };
        if finished || t0.elapsed() > LIMIT {
            break;
        }
    }
    let real = t0.elapsed();
    for q in [&q, &reboots] {
        q.stop.store(true, Ordering::Relaxed);
        q.cv.notify_all();
    }
    for w in workers {
        w.join().unwrap();
    }
    let records = read_fleet(&etcd.client(), Some(GROUP)).unwrap()[0]
        .nodes
        .clone();
    watch_stop.store(true, Ordering::Relaxed);
    let peak_etcd = watch.join().expect("the holders' watch");
    let nodes = Arc::try_unwrap(nodes)
        .ok()
        .expect("the workers are gone")
        .into_iter()
        .map(|m| m.into_inner().unwrap())
        .collect();
    Outcome {
        real,
        nodes,
        halted_at,
        decided_at,
        failures_seen,
        requests,
        t0,
        peak_etcd,
        peak_local: sh.peak_holding.load(Ordering::Relaxed),
        records,
        rollout_start: start as f64,
        clock,
    }
}

/// Median latency (ms) of `k` sequential range requests to an idle etcd.
fn idle_latency(k: usize) -> f64 {
    let etcd = EtcdServer::start();
    let c = etcd.client();
    let mut v: Vec<u32> = (0..k)
        .map(|_| {
            let t = Instant::now();
            c.range(&Etcd::prefix(GROUP), 0, false).unwrap();
            t.elapsed().as_micros() as u32
        })
        .collect();
    percentile(&mut v, 0.5)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let scale: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50.0);
    println!(
        "fleet: {n} simulated nodes, group {GROUP:?}, max_concurrent {MAX_CONCURRENT}, waves {WAVES:?} (s after start, %), check every {CHECK_EVERY} s, reboot {REBOOT} s, simulated time x{scale}, {WORKERS} workers; load average {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let idle = idle_latency(200);
    println!("idle etcd: median range latency {idle:.2} ms (baseline)");

    // Run 1: a good release.
    let o = run(n, scale, false);
    let mut ok = true;
    let mut per_wave = [0usize; WAVES.len()];
    for node in &o.nodes {
        if let Some(w) = node.wave {
            per_wave[w as usize] += 1;
        }
    }
    println!(
        "\nrun 1 (good release): {:.1} s real{}",
        o.real.as_secs_f64(),
        if o.real >= LIMIT {
            " (STOPPED AT THE TIME LIMIT)"
        } else {
            ""
        }
    );
    let mut prev = 0;
    for (i, &(after, pct)) in WAVES.iter().enumerate() {
        let want = f64::from(pct - prev);
        prev = pct;
        let got = per_wave[i] as f64 * 100.0 / n as f64;
        let within = (got - want).abs() <= 1.0;
        ok &= within;
        let last = o
            .nodes
            .iter()
            .filter(|x| x.wave == Some(i as u32))
            .filter_map(|x| x.done)
            .fold(0.0, f64::max);
        println!(
            "  wave {i} (opens at {after:>4} s): {:>5} nodes = {got:5.2} % (configured {want:.0} %, {}), its last node done at {last:.0} s",
            per_wave[i],
            if within { "within ±1" } else { "OFF BY MORE THAN 1 POINT" }
        );
    }
    let updated = o.nodes.iter().filter(|x| x.version == TO).count();
    let recs_on = o.records.iter().filter(|r| r.version == TO).count();
    println!(
        "  updated: {updated}/{n} nodes; their status records in etcd: {} records, {recs_on} on {TO}",
        o.records.len()
    );
    ok &= updated == n && recs_on == n;
    let (peak, distinct, acquisitions) = o.peak_etcd;
    println!(
        "  peak concurrent reboots (etcd history, {acquisitions} acquisitions by {distinct} nodes): {peak} (limit {MAX_CONCURRENT}; counted by the nodes: {})",
        o.peak_local
    );
    ok &= peak <= MAX_CONCURRENT as usize && distinct == n;
    // Time to update: from the rollout start to the last node done, against
    // the lower bound of the same waves with 50 slots and no check delay.
    let end = o.nodes.iter().filter_map(|x| x.done).fold(0.0, f64::max);
    let mut bound: f64 = 0.0;
    for (i, &(after, _)) in WAVES.iter().enumerate() {
        let batches = per_wave[i].div_ceil(MAX_CONCURRENT as usize) as f64;
        bound = bound.max(after as f64) + batches * REBOOT;
    }
    if updated == n {
        println!(
            "  time to update the fleet: {end:.0} s simulated ({:.1} s real) from the rollout start; lower bound {bound:.0} s: ratio {:.2}x",
            end / scale,
            end / bound
        );
    } else {
        println!(
            "  time to update the fleet: NOT FINISHED, {updated} of {n} updated by {end:.0} s simulated ({:.1} s real); lower bound for all {bound:.0} s",
            end / scale
        );
    }
    report_requests(&o, idle, scale);

    // Run 2: a bad release, halted by the controller.
    let o = run(n, scale, true);
    println!("\nrun 2 (bad release: 1 in {FAIL_EVERY} of wave 0 fails to boot it; halt after {HALT_AFTER} failures): {:.1} s real", o.real.as_secs_f64());
    let failing = o.nodes.iter().filter(|x| x.fails).count();
    let took: Vec<&Node> = o.nodes.iter().filter(|x| x.took.is_some()).collect();
    let mut took_by_wave = [0usize; WAVES.len()];
    for x in &took {
        if let Some(w) = x.wave {
            took_by_wave[w as usize] += 1;
        }
    }
    let failed = o
        .nodes
        .iter()
        .filter(|x| x.bad.iter().any(|b| b == TO))
        .count();
    let saw_halt = o.records.iter().filter(|r| r.halted.is_some()).count();
    match o.halted_at {
        Some((at, took_then)) => println!(
            "  the controller's fleet read that saw {HALT_AFTER}+ failures started at {:.0} s simulated after the rollout start; the halted channel document was written at {at:.0} s ({:.1} s real into the run), when {took_then} nodes had taken {TO}",
            o.decided_at,
            o.clock.real(o.rollout_start + at).duration_since(o.t0).as_secs_f64()
        ),
        None => {
            ok = false;
            println!("  NEVER HALTED ({} failures seen)", o.failures_seen)
        }
    }
    println!(
        "  nodes that took the bad release: {} of {n} ({:.2} %), by wave {took_by_wave:?}; failed to boot it: {failed} (of {failing} that would); status records saying the rollout is halted: {saw_halt}",
        took.len(),
        took.len() as f64 * 100.0 / n as f64
    );
    let (peak, _, _) = o.peak_etcd;
    println!("  peak concurrent reboots (etcd history): {peak}");
    ok &= peak <= MAX_CONCURRENT as usize
        && o.halted_at.is_some()
        && took_by_wave[2..].iter().all(|&t| t == 0);
    report_requests(&o, idle, scale);
    println!(
        "\n{}",
        if ok {
            "all checks passed"
        } else {
            "SOME CHECKS FAILED"
        }
    );
    if !ok {
        std::process::exit(1);
    }
}

fn report_requests(o: &Outcome, idle: f64, scale: f64) {
    let mut secs = o.requests.per_sec.lock().unwrap().clone();
    let total: usize = secs.iter().map(Vec::len).sum();
    let Some((peak_sec, _)) = secs.iter().enumerate().max_by_key(|(_, v)| v.len()) else {
        return;
    };
    let mut all: Vec<u32> = secs.iter().flatten().copied().collect();
    let peak = &mut secs[peak_sec];
    let rate = peak.len();
    let (p50, p99) = (percentile(peak, 0.5), percentile(peak, 0.99));
    println!(
        "  etcd requests: {total} in {:.0} s ({:.0}/s on average, i.e. {:.1}/s at real speed; {:?}); peak {rate}/s in second {peak_sec}, latency there p50 {p50:.2} ms p99 {p99:.2} ms ({:.1}x idle p50); whole run p50 {:.2} ms p99 {:.2} ms",
        o.real.as_secs_f64(),
        total as f64 / o.real.as_secs_f64(),
        total as f64 / o.real.as_secs_f64() / scale,
        o.requests.by_path.lock().unwrap(),
        p50 / idle,
        percentile(&mut all, 0.5),
        percentile(&mut all, 0.99),
    );
}
