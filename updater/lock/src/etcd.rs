//! A counting semaphore in etcd v3, spoken through etcd's JSON gateway
//! (`POST /v3/...`, keys and values base64, 64-bit numbers as strings).
//!
//! Keys of group `G`, all under `/herd/reboot/G/`:
//! - `holders/<node-id>` and `slots/<k>` (k < max, value the node id): one
//!   each per slot taken, attached to the holder's lease, so a node that
//!   dies holding a slot loses it when its lease expires;
//! - `waiting/<node-id>` and `queue/<R>`: a node that wants a slot joins the
//!   queue once, on its lease: `R` is the revision that created its
//!   `waiting` key (20 digits, so keys sort as revisions do);
//! - `sem`: rewritten by every acquisition (its value lists the holders, for
//!   people reading etcd, and so that herd-update releases before the queue
//!   -- which compare `sem` -- still see every acquisition).
//!
//! The queue is etcd's ordered-waiters pattern: nodes take slots in the
//! order they joined, so a freed slot is not raced for by every waiting node
//! (with one compare-and-swap on `sem`, 97 % of 10,000 nodes' transactions
//! were lost, and nodes polling at the back-off cap starved; see
//! bench/fleet.sh). A poll is one read-only transaction: how many queue keys
//! sort before mine (a count: etcd walks its in-memory index, no values),
//! the holders and slot keys, and my own queue key. With
//! `holders + ahead < max` it is my turn: the n-th waiting node (n = ahead)
//! takes the n-th free slot index `k` in one transaction: *if `slots/<k>`
//! does not exist and my queue key does, put `slots/<k>` and
//! `holders/<me>` with my lease and delete my queue keys*. Safety does not
//! rest on the queue: there are only `max` slot keys, created only if
//! absent, and every holder key comes with one (holders that leave only
//! free slots). The queue decides who tries, and nodes whose turn comes at
//! once pick different slots rather than race for one key. [`Acquire::Busy`] says how many slots must be freed
//! before this node's turn, so callers poll the front of the queue often and
//! the back rarely.
//!
//! The waiting node keeps its lease alive from a thread ([`Keeper`]), so a
//! node that dies while waiting leaves the queue within its TTL; one that
//! stops wanting a slot (its maintenance window closed) leaves it at once
//! ([`RebootLock::withdraw`]). Releasing deletes the holder key and revokes
//! the lease, and is idempotent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use crate::tls::{self, Tls};
use crate::{b64, Acquire, Error, RebootLock};

const BACKEND: &str = "etcd";

/// How many lost races (another node took a slot between this node's poll
/// and its transaction) one [`RebootLock::acquire`] retries.
const RACES: u32 = 20;

/// A 64-bit number as the gateway writes it: a string (or a plain number).
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("not a 64-bit integer")),
        Value::Null => Ok(0),
        v => Err(serde::de::Error::custom(format!("not a number: {v}"))),
    }
}

/// A response header.
#[derive(Debug, Default, Deserialize)]
pub struct Header {
    /// The store's revision when the request was served.
    #[serde(default, deserialize_with = "int64")]
    pub revision: i64,
}

/// One key-value pair, decoded.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct KeyValue {
    /// The key, base64 on the wire.
    #[serde(default)]
    pub key: String,
    /// The value, base64 on the wire.
    #[serde(default)]
    pub value: String,
    /// The revision that created it.
    #[serde(default, deserialize_with = "int64")]
    pub create_revision: i64,
    /// The revision of its last change.
    #[serde(default, deserialize_with = "int64")]
    pub mod_revision: i64,
    /// How many times it was written since it was created.
    #[serde(default, deserialize_with = "int64")]
    pub version: i64,
    /// The lease it is attached to (0 for none).
    #[serde(default, deserialize_with = "int64")]
    pub lease: i64,
}

impl KeyValue {
    /// The key as text.
    pub fn key_text(&self) -> String {
        String::from_utf8_lossy(&b64::decode(&self.key).unwrap_or_default()).into_owned()
    }
    /// The value as text.
    pub fn value_text(&self) -> String {
        String::from_utf8_lossy(&b64::decode(&self.value).unwrap_or_default()).into_owned()
    }
}

/// A range answer.
#[derive(Debug, Default, Deserialize)]
pub struct Range {
    /// Its header.
    #[serde(default)]
    pub header: Header,
    /// The pairs (none with `count_only`).
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    /// How many keys matched.
    #[serde(default, deserialize_with = "int64")]
    pub count: i64,
}

/// The end of the range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The body of a range request over `prefix` (at `revision`, 0 = newest).
pub fn range_body(prefix: &str, revision: i64, count_only: bool) -> Value {
    let mut b = json!({
        "key": b64::encode(prefix.as_bytes()),
        "range_end": b64::encode(&prefix_end(prefix)),
    });
    if revision > 0 {
        b["revision"] = json!(revision.to_string());
    }
    if count_only {
        b["count_only"] = json!(true);
    }
    b
}

/// The key `/herd/reboot/<group>/queue/<rev>` of a node that joined the
/// queue at revision `rev` (zero-padded: keys sort as revisions do).
pub fn queue_key(group: &str, rev: i64) -> String {
    format!("{}queue/{rev:020}", Etcd::prefix(group))
}

/// The read-only transaction of one poll: (0) how many queue keys sort
/// before `mine`, (1) the holders, (2) `mine` itself, (3) `sem`, (4) the
/// slot keys.
pub fn poll_txn(
    queue_prefix: &str,
    mine: &str,
    [holders_prefix, slots_prefix]: [&str; 2],
    sem: &str,
) -> Value {
    let k = |s: &str| b64::encode(s.as_bytes());
    let all =
        |p: &str| json!({"request_range": {"key": k(p), "range_end": b64::encode(&prefix_end(p))}});
    json!({
        "success": [
            {"request_range": {"key": k(queue_prefix), "range_end": k(mine), "count_only": true}},
            all(holders_prefix),
            {"request_range": {"key": k(mine)}},
            {"request_range": {"key": k(sem)}},
            all(slots_prefix),
        ],
    })
}

/// The read-only transaction of a cheap poll (two keys): `sem` (its version
/// counts acquisitions) and `mine`.
pub fn peek_txn(mine: &str, sem: &str) -> Value {
    let k = |s: &str| b64::encode(s.as_bytes());
    json!({
        "success": [
            {"request_range": {"key": k(sem)}},
            {"request_range": {"key": k(mine)}},
        ],
    })
}

/// The transaction that takes slot `slot` (its key `slots/<k>`): if that key
/// does not exist and `queued` (this node's queue key) is still there, put
/// the slot key and `holder` on `lease`, delete the queue keys and rewrite
/// `sem` with `holders` (the list, for people reading etcd; its version
/// counts acquisitions).
pub fn acquire_txn(
    (slot, id): (&str, &str),
    queued: [&str; 2],
    (sem, holders): (&str, &str),
    (holder, since): (&str, &str),
    lease: i64,
) -> Value {
    let k = |s: &str| b64::encode(s.as_bytes());
    let lease = lease.to_string();
    json!({
        "compare": [
            {"key": k(slot), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
            {"key": k(queued[0]), "target": "CREATE", "result": "GREATER", "create_revision": "0"},
        ],
        "success": [
            {"request_put": {"key": k(holder), "value": k(since), "lease": lease}},
            {"request_put": {"key": k(slot), "value": k(id), "lease": lease}},
            {"request_delete_range": {"key": k(queued[0])}},
            {"request_delete_range": {"key": k(queued[1])}},
            {"request_put": {"key": k(sem), "value": k(holders)}},
        ],
    })
}

/// The TTL in a keepalive answer. A streaming call through the gateway
/// answers `{"result": {...}}`, leaving out a TTL of 0 (the lease is gone),
/// or `{"error": ...}` when etcd failed the call (overloaded, no leader):
/// that says nothing about the lease, so it is an error, not "expired".
pub fn keepalive_ttl(v: &Value) -> Result<i64, Error> {
    let Some(r) = v.get("result") else {
        let text: String = v.to_string().chars().take(300).collect();
        return Err(Error::Protocol {
            backend: BACKEND,
            what: "/v3/lease/keepalive".into(),
            message: format!("no result: {text}"),
        });
    };
    Ok(match r.get("TTL") {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    })
}

/// Told of every request a [`Client`] made: its path and how long it took
/// (answered or not).
pub type Observer = Arc<dyn Fn(&str, Duration) + Send + Sync>;

/// An etcd v3 JSON-gateway client (tries the endpoints in order). Clones
/// share their connections.
#[derive(Clone)]
pub struct Client {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    tls: Option<Tls>,
    observer: Option<Observer>,
}

impl Client {
    /// A client for `endpoints` (`http://host:port`).
    pub fn new(endpoints: &[String]) -> Client {
        Self::with_tls(endpoints, None)
    }

    /// A client for `endpoints`, `https://host:port` ones with `tls`.
    pub fn with_tls(endpoints: &[String], tls: Option<Tls>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .max_idle_connections_per_host(64);
        Client {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            agent: match &tls {
                Some(t) => t.agent(agent),
                None => agent,
            }
            .build(),
            tls,
            observer: None,
        }
    }

    /// This client, telling `observer` of every request (for measuring
    /// request rates and latencies).
    pub fn observed(mut self, observer: Observer) -> Client {
        self.observer = Some(observer);
        self
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let t = std::time::Instant::now();
        let r = self.call_once(path, body);
        if let Some(o) = &self.observer {
            o(path, t.elapsed());
        }
        r
    }

    fn call_once(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let mut last = Error::Unreachable {
            backend: BACKEND,
            endpoint: "-".into(),
            message: "no endpoints configured".into(),
        };
        for ep in &self.endpoints {
            let url = format!("{ep}{path}");
            match self.agent.post(&url).send_string(&body.to_string()) {
                Ok(r) => {
                    let text = r.into_string().map_err(|e| Error::Unreachable {
                        backend: BACKEND,
                        endpoint: url.clone(),
                        message: format!("reading the answer: {e}"),
                    })?;
                    return serde_json::from_str(&text).map_err(|e| Error::Protocol {
                        backend: BACKEND,
                        what: path.into(),
                        message: format!("not JSON ({e}): {text:.200}"),
                    });
                }
                Err(ureq::Error::Status(code, r)) => {
                    let text = r.into_string().unwrap_or_default();
                    if let Some(message) = tls::plain_http_to_tls(ep, &text) {
                        return Err(Error::Tls {
                            backend: BACKEND,
                            endpoint: ep.clone(),
                            message,
                        });
                    }
                    return Err(Error::Protocol {
                        backend: BACKEND,
                        what: path.into(),
                        message: format!("HTTP {code}: {text:.300}"),
                    });
                }
                Err(e) => {
                    let tls = match &self.tls {
                        Some(t) => t.explain(&e, ep),
                        None => tls::plain_http_closed(&e, ep),
                    };
                    last = match tls {
                        Some(message) => Error::Tls {
                            backend: BACKEND,
                            endpoint: ep.clone(),
                            message,
                        },
                        None => Error::Unreachable {
                            backend: BACKEND,
                            endpoint: ep.clone(),
                            message: e.to_string(),
                        },
                    }
                }
            }
        }
        Err(last)
    }

    fn parse<T: for<'de> Deserialize<'de>>(path: &str, v: Value) -> Result<T, Error> {
        serde_json::from_value(v).map_err(|e| Error::Protocol {
            backend: BACKEND,
            what: path.into(),
            message: e.to_string(),
        })
    }

    /// The keys under `prefix` at `revision` (0 = newest).
    pub fn range(&self, prefix: &str, revision: i64, count_only: bool) -> Result<Range, Error> {
        let v = self.call("/v3/kv/range", &range_body(prefix, revision, count_only))?;
        Self::parse("/v3/kv/range", v)
    }

    /// Grants a lease of `ttl` seconds; its id.
    pub fn grant(&self, ttl: u64) -> Result<i64, Error> {
        #[derive(Deserialize)]
        struct Grant {
            #[serde(rename = "ID", default, deserialize_with = "int64")]
            id: i64,
        }
        let v = self.call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        let g: Grant = Self::parse("/v3/lease/grant", v)?;
        if g.id == 0 {
            return Err(Error::Protocol {
                backend: BACKEND,
                what: "/v3/lease/grant".into(),
                message: "no lease id in the answer".into(),
            });
        }
        Ok(g.id)
    }

    /// Refreshes `lease`; its remaining TTL (0 or less: the lease is gone).
    pub fn keepalive(&self, lease: i64) -> Result<i64, Error> {
        keepalive_ttl(&self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?)
    }

    /// Revokes `lease` (and so deletes its keys); a lease gone already is fine.
    pub fn revoke(&self, lease: i64) -> Result<(), Error> {
        match self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() })) {
            Ok(_) => Ok(()),
            Err(Error::Protocol { message, .. }) if message.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Puts `value` at `key` on `lease` (0: no lease).
    pub fn put(&self, key: &str, value: &str, lease: i64) -> Result<(), Error> {
        self.call("/v3/kv/put", &crate::status::put_body(key, value, lease))
            .map(|_| ())
    }

    /// Deletes one key.
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        self.call(
            "/v3/kv/deleterange",
            &json!({ "key": b64::encode(key.as_bytes()) }),
        )
        .map(|_| ())
    }

    /// Sends a transaction; whether its compares held.
    pub fn txn(&self, body: &Value) -> Result<bool, Error> {
        Ok(self.txn_ranges(body)?.0)
    }

    /// Sends a transaction; whether its compares held, and the answers of
    /// its range requests (in order; an empty range for other requests).
    pub fn txn_ranges(&self, body: &Value) -> Result<(bool, Vec<Range>), Error> {
        let v = self.call("/v3/kv/txn", body)?;
        let ok = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        let mut ranges = Vec::new();
        for r in v
            .get("responses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            ranges.push(match r.get("response_range") {
                Some(rr) => Self::parse("/v3/kv/txn", rr.clone())?,
                None => Range::default(),
            });
        }
        Ok((ok, ranges))
    }

    /// Puts `value` at `key` on `lease`; the revision that created the key
    /// (this put's, or the earlier one when the key existed).
    pub fn put_created(&self, key: &str, value: &str, lease: i64) -> Result<i64, Error> {
        #[derive(Deserialize)]
        struct Put {
            #[serde(default)]
            header: Header,
            prev_kv: Option<KeyValue>,
        }
        let mut body = crate::status::put_body(key, value, lease);
        body["prev_kv"] = json!(true);
        let p: Put = Self::parse("/v3/kv/put", self.call("/v3/kv/put", &body)?)?;
        Ok(p.prev_kv.map_or(p.header.revision, |kv| kv.create_revision))
    }
}

/// Keeps a lease alive from a thread until dropped.
pub struct Keeper {
    stop: Arc<AtomicBool>,
    expired: Arc<AtomicBool>,
    thread: std::thread::Thread,
}

impl Keeper {
    /// Refreshes `lease` every `ttl / 3` seconds (at least every second).
    pub fn start(client: Client, lease: i64, ttl: u64) -> Keeper {
        let stop = Arc::new(AtomicBool::new(false));
        let expired = Arc::new(AtomicBool::new(false));
        let (flag, gone) = (stop.clone(), expired.clone());
        let every = Duration::from_millis((ttl * 1000 / 3).clamp(300, 30_000));
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match client.keepalive(lease) {
                    Ok(t) if t <= 0 => {
                        gone.store(true, Ordering::Relaxed);
                        tracing::warn!("etcd lease {lease:x} expired (it was not refreshed within its TTL): the keys on it are gone (a reboot slot or a place in its queue, a fleet status record)");
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("keeping the reboot lock's lease alive: {e}"),
                }
                // Parked, not polling: thousands of waiting nodes in one
                // process (bench/fleet.sh) each keep a lease.
                let until = std::time::Instant::now() + every;
                while !flag.load(Ordering::Relaxed) {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::park_timeout(left);
                }
            }
        })
        .thread()
        .clone();
        Keeper {
            stop,
            expired,
            thread,
        }
    }

    /// Whether etcd said the lease is gone (it was not refreshed in time).
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.unpark();
    }
}

/// The reboot semaphore of one group, as seen by one node.
pub struct Etcd {
    client: Client,
    group: String,
    id: String,
    max: u32,
    ttl: u64,
    lease: Option<i64>,
    keeper: Option<Keeper>,
    /// The revision this node joined the queue at (its `queue/` key).
    queued: Option<i64>,
    /// A lease someone else keeps alive for the queue keys (see
    /// [`RebootLock::queue_on_lease`]); else they go on `lease`.
    queue_lease: Option<i64>,
    /// From the last full poll that found it was not this node's turn:
    /// (acquisitions so far, slots to be freed before its turn), and the
    /// acquisitions seen at the last poll of any kind.
    estimate: Option<(i64, u32, i64)>,
}

/// What one poll read (one revision).
struct Poll {
    /// Queue keys before this node's.
    ahead: u32,
    /// (node id, lease) of each holder.
    holders: Vec<(String, i64)>,
    /// Whether this node's queue key is there, on its lease.
    queued: bool,
    /// `sem`'s version: acquisitions so far.
    taken: i64,
    /// The slot indices held.
    slots: std::collections::BTreeSet<u32>,
}

impl Etcd {
    /// Node `id`'s view of `group` with `max` slots and leases of `ttl` s.
    pub fn new(endpoints: &[String], group: &str, id: &str, max: u32, ttl: u64) -> Etcd {
        Self::with_client(Client::new(endpoints), group, id, max, ttl)
    }

    /// The same, over `client` (shared connections, an observer).
    pub fn with_client(client: Client, group: &str, id: &str, max: u32, ttl: u64) -> Etcd {
        Etcd {
            client,
            group: group.into(),
            id: id.into(),
            max,
            ttl,
            lease: None,
            keeper: None,
            queued: None,
            queue_lease: None,
            estimate: None,
        }
    }

    /// This lock with its queue keys on `lease`, which the caller keeps
    /// alive (see [`RebootLock::queue_on_lease`]).
    pub fn queue_on(mut self, lease: i64) -> Etcd {
        self.queue_on_lease(lease);
        self
    }

    /// `/herd/reboot/<group>/`.
    pub fn prefix(group: &str) -> String {
        format!("/herd/reboot/{group}/")
    }

    /// `/herd/reboot/<group>/holders/`: one key per slot held.
    pub fn holders_prefix(group: &str) -> String {
        format!("{}holders/", Self::prefix(group))
    }

    /// `/herd/reboot/<group>/queue/`: one key per waiting node, in order.
    pub fn queue_prefix(group: &str) -> String {
        format!("{}queue/", Self::prefix(group))
    }

    fn holder_key(&self) -> String {
        format!("{}{}", Self::holders_prefix(&self.group), self.id)
    }

    fn waiting_key(&self) -> String {
        format!("{}waiting/{}", Self::prefix(&self.group), self.id)
    }

    /// Revokes this node's lease (deleting any key on it), if it has one.
    /// The lease is forgotten (and no longer refreshed) even when the
    /// revoke fails, so it expires within its TTL at the latest: a lease
    /// kept alive after a failed release would hold its slot for ever.
    fn drop_lease(&mut self) -> Result<(), Error> {
        let revoked = self.lease.map_or(Ok(()), |l| self.client.revoke(l));
        self.keeper = None;
        self.lease = None;
        if self.queue_lease.is_none() {
            self.queued = None;
        }
        revoked
    }

    /// Leaves the queue: deletes the queue keys (on a lease of someone
    /// else's, they would outlive this node's wish to reboot).
    fn leave_queue(&mut self) -> Result<(), Error> {
        if let (Some(_), Some(rev)) = (self.queue_lease, self.queued) {
            self.client.delete(&queue_key(&self.group, rev))?;
            self.client.delete(&self.waiting_key())?;
        }
        self.queued = None;
        Ok(())
    }

    /// This node's lease: granted (and kept alive) on first use, granted
    /// anew when etcd let it expire.
    fn lease(&mut self) -> Result<i64, Error> {
        if self.keeper.as_ref().is_some_and(Keeper::expired) {
            self.keeper = None;
            self.lease = None;
            if self.queue_lease.is_none() {
                self.queued = None;
            }
        }
        if let Some(l) = self.lease {
            return Ok(l);
        }
        let l = self.client.grant(self.ttl)?;
        self.keeper = Some(Keeper::start(self.client.clone(), l, self.ttl));
        self.lease = Some(l);
        Ok(l)
    }

    /// Joins the queue on `lease` (keeping the place of an earlier run of
    /// this node, whose keys move to this lease); the revision joined at.
    fn join(&mut self, lease: i64) -> Result<i64, Error> {
        let since = json!({ "since": now() }).to_string();
        let rev = self
            .client
            .put_created(&self.waiting_key(), &since, lease)?;
        self.client
            .put(&queue_key(&self.group, rev), &self.id, lease)?;
        self.queued = Some(rev);
        self.estimate = None;
        Ok(rev)
    }

    /// One read of the queue and the holders.
    fn poll(&self, rev: i64, lease: i64) -> Result<Poll, Error> {
        let hp = Self::holders_prefix(&self.group);
        let mine = queue_key(&self.group, rev);
        let sp = self.slots_prefix();
        let (_, r) = self.client.txn_ranges(&poll_txn(
            &Self::queue_prefix(&self.group),
            &mine,
            [&hp, &sp],
            &self.sem_key(),
        ))?;
        let [ahead, holders, me, sem, slots] =
            <[Range; 5]>::try_from(r).map_err(|r| Error::Protocol {
                backend: BACKEND,
                what: "/v3/kv/txn".into(),
                message: format!("{} answers to a poll of 5 ranges", r.len()),
            })?;
        Ok(Poll {
            slots: slots
                .kvs
                .iter()
                .filter_map(|kv| kv.key_text().strip_prefix(&sp)?.parse().ok())
                .collect(),
            ahead: u32::try_from(ahead.count).unwrap_or(u32::MAX),
            holders: holders
                .kvs
                .iter()
                .filter_map(|kv| Some((kv.key_text().strip_prefix(&hp)?.to_string(), kv.lease)))
                .collect(),
            queued: me.kvs.iter().any(|kv| kv.lease == lease),
            taken: sem.kvs.first().map_or(0, |kv| kv.version),
        })
    }

    /// `/herd/reboot/<group>/slots/`: `slots/<k>` (k < max) per slot held,
    /// its value the holder's id.
    fn slots_prefix(&self) -> String {
        format!("{}slots/", Self::prefix(&self.group))
    }

    fn sem_key(&self) -> String {
        format!("{}sem", Self::prefix(&self.group))
    }

    /// A cheap poll of a node far back in the queue: the full poll counts
    /// the queue keys before this node's, which costs etcd a walk over
    /// them (thousands at the back of a big fleet's queue). Nodes only ever
    /// leave the queue ahead of this one, so the slots still to be freed
    /// before its turn are at most what the last full poll found less the
    /// acquisitions since (`sem`'s version counts them). While that is more
    /// than `max`, two point reads suffice; nearer the turn, or when nobody
    /// took a slot since the last poll (nodes ahead may have left: the
    /// estimate would never shrink), the full poll.
    /// `None`: do the full poll (or join again: `queued` was reset).
    fn peek(&mut self, rev: i64, lease: i64) -> Result<Option<u32>, Error> {
        let Some((taken0, slots0, seen)) = self.estimate else {
            return Ok(None);
        };
        if slots0 <= self.max {
            return Ok(None);
        }
        let (_, r) = self
            .client
            .txn_ranges(&peek_txn(&queue_key(&self.group, rev), &self.sem_key()))?;
        let [sem, me] = <[Range; 2]>::try_from(r).map_err(|r| Error::Protocol {
            backend: BACKEND,
            what: "/v3/kv/txn".into(),
            message: format!("{} answers to a peek of 2 ranges", r.len()),
        })?;
        if !me.kvs.iter().any(|kv| kv.lease == lease) {
            self.queued = None;
            self.estimate = None;
            return Ok(None);
        }
        let taken = sem.kvs.first().map_or(0, |kv| kv.version);
        if taken == seen {
            return Ok(None);
        }
        self.estimate = Some((taken0, slots0, taken));
        let since = u32::try_from((taken - taken0).max(0)).unwrap_or(u32::MAX);
        let slots = slots0.saturating_sub(since);
        Ok((slots > self.max).then_some(slots))
    }
}

impl RebootLock for Etcd {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn acquire(&mut self) -> Result<Acquire, Error> {
        for _ in 0..RACES {
            let qlease = match self.queue_lease {
                Some(l) => l,
                None => self.lease()?,
            };
            let rev = match self.queued {
                Some(r) => r,
                None => self.join(qlease)?,
            };
            if let Some(slots) = self.peek(rev, qlease)? {
                return Ok(Acquire::Busy {
                    why: format!(
                        "all {} reboot slots of group {:?} are held; about {slots} must be freed before this node's turn",
                        self.max, self.group
                    ),
                    ahead: Some(slots),
                });
            }
            if self.queued.is_none() {
                continue;
            }
            let p = self.poll(rev, qlease)?;
            if let Some((_, l)) = p.holders.iter().find(|(h, _)| *h == self.id) {
                if Some(*l) == self.lease {
                    return Ok(Acquire::Granted);
                }
                // Keys of an earlier run (another lease): this node's slot,
                // but on a lease nobody refreshes; free it and take one anew.
                self.client.revoke(*l)?;
                self.client.delete(&self.holder_key())?;
                continue;
            }
            if !p.queued {
                // The queue key is gone (its lease expired, or someone
                // deleted it): join again, at the back.
                self.queued = None;
                continue;
            }
            let held = u32::try_from(p.holders.len().max(p.slots.len())).unwrap_or(u32::MAX);
            // The free slots; the n-th waiting node takes the n-th, so the
            // nodes whose turn comes at once do not race for one key.
            // (With `held + ahead < max` there always is one.)
            let free: Vec<u32> = (0..self.max).filter(|k| !p.slots.contains(k)).collect();
            let turn = held.saturating_add(p.ahead) < self.max;
            let Some(&slot) = free.get(p.ahead as usize).filter(|_| turn) else {
                let names: Vec<&str> = p.holders.iter().map(|(h, _)| h.as_str()).collect();
                let ahead = held.saturating_add(p.ahead).saturating_sub(self.max) + 1;
                self.estimate = Some((p.taken, ahead, p.taken));
                return Ok(Acquire::Busy {
                    why: format!(
                        "all {} reboot slots of group {:?} are held (by {}); {} nodes queued before this one",
                        self.max,
                        self.group,
                        names.join(", "),
                        p.ahead
                    ),
                    ahead: Some(ahead),
                });
            };
            // My turn: the holder key goes on a lease of this node's own
            // (it must outlive the reboot: see `resume`).
            let lease = self.lease()?;
            let mut list: Vec<String> = p.holders.into_iter().map(|(h, _)| h).collect();
            list.push(self.id.clone());
            let txn = acquire_txn(
                (&format!("{}{slot}", self.slots_prefix()), &self.id),
                [&queue_key(&self.group, rev), &self.waiting_key()],
                (&self.sem_key(), &json!({ "holders": list }).to_string()),
                (&self.holder_key(), &json!({ "since": now() }).to_string()),
                lease,
            );
            if self.client.txn(&txn)? {
                self.queued = None;
                self.estimate = None;
                return Ok(Acquire::Granted);
            }
            // Another node took that slot since the poll: look again.
        }
        Ok(Acquire::Busy {
            why: format!(
                "lost {RACES} races in a row for a reboot slot of group {:?}",
                self.group
            ),
            ahead: None,
        })
    }

    fn release(&mut self) -> Result<(), Error> {
        // Both, whatever the first did: the revoke alone frees the slot.
        let deleted = self.client.delete(&self.holder_key());
        let dropped = self.drop_lease();
        deleted.and(dropped)
    }

    fn queue_on_lease(&mut self, lease: i64) {
        if self.queue_lease != Some(lease) {
            // Joined on another lease (or none): join again; the waiting
            // key keeps its creation revision, so the place is kept.
            self.queued = None;
        }
        self.queue_lease = Some(lease);
    }

    fn withdraw(&mut self) -> Result<(), Error> {
        // Waiting only: this node's own lease carries nothing but the queue
        // keys, when they are not on a shared lease.
        self.leave_queue()?;
        self.drop_lease()
    }

    fn token(&self) -> Option<String> {
        self.lease.map(|l| l.to_string())
    }

    fn resume(&mut self, token: Option<&str>) -> Result<bool, Error> {
        let Some(l) = token.and_then(|t| t.parse::<i64>().ok()) else {
            return Ok(false);
        };
        if self.client.keepalive(l)? <= 0 {
            return Ok(false);
        }
        self.keeper = Some(Keeper::start(self.client.clone(), l, self.ttl));
        self.lease = Some(l);
        Ok(true)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn requests_are_base64_with_string_numbers() {
        let b = range_body("/herd/reboot/g/", 7, true);
        assert_eq!(b["key"], b64::encode(b"/herd/reboot/g/"));
        assert_eq!(b["range_end"], b64::encode(b"/herd/reboot/g0"));
        assert_eq!(
            (b["revision"].as_str(), b["count_only"].as_bool()),
            (Some("7"), Some(true))
        );
        let t = acquire_txn(
            ("/s/3", "n1"),
            ["/q/1", "/w/n1"],
            ("/sem", "[]"),
            ("/h/n1", "{}"),
            42,
        );
        // Slot 3 only if nobody holds it, and only from the queue.
        assert_eq!(
            (
                t["compare"][0]["target"].as_str(),
                t["compare"][0]["result"].as_str(),
                t["compare"][0]["create_revision"].as_str()
            ),
            (Some("CREATE"), Some("EQUAL"), Some("0"))
        );
        assert_eq!(t["compare"][0]["key"], b64::encode(b"/s/3"));
        assert_eq!(t["compare"][1]["key"], b64::encode(b"/q/1"));
        assert_eq!(t["success"][0]["request_put"]["lease"], "42");
        assert_eq!(t["success"][1]["request_put"]["lease"], "42");
        assert_eq!(
            b64::decode(t["success"][0]["request_put"]["key"].as_str().unwrap()).unwrap(),
            b"/h/n1"
        );
        assert_eq!(
            queue_key("g", 42),
            "/herd/reboot/g/queue/00000000000000000042"
        );
    }

    #[test]
    fn responses_decode_string_numbers_and_missing_fields() {
        let r: Range = serde_json::from_str(
            r#"{"header":{"revision":"12"},"kvs":[{"key":"L2gvbjE=","value":"e30=","mod_revision":"9","lease":"7587"}],"count":"1"}"#,
        )
        .unwrap();
        assert_eq!(
            (
                r.header.revision,
                r.count,
                r.kvs[0].mod_revision,
                r.kvs[0].lease
            ),
            (12, 1, 9, 7587)
        );
        assert_eq!(
            (r.kvs[0].key_text().as_str(), r.kvs[0].value_text().as_str()),
            ("/h/n1", "{}")
        );
        // An empty range: the gateway leaves out zero and empty fields.
        let e: Range = serde_json::from_str(r#"{"header":{"revision":"3"}}"#).unwrap();
        assert_eq!((e.count, e.kvs.len()), (0, 0));
    }

    #[test]
    fn keepalive_tells_an_expired_lease_from_a_failed_call() {
        // As etcd 3.4.23's gateway answers (checked with curl).
        let live = json!({"result": {"ID": "7587", "TTL": "2"}});
        let gone = json!({"result": {"ID": "7587"}});
        let failed = json!({"error": "etcdserver: too many requests", "code": 14});
        assert_eq!(keepalive_ttl(&live).unwrap(), 2);
        assert_eq!(keepalive_ttl(&gone).unwrap(), 0);
        let e = keepalive_ttl(&failed).unwrap_err().to_string();
        assert!(e.contains("too many requests"), "{e}");
    }

    #[test]
    fn a_server_that_hangs_up_on_plain_http_is_taken_for_tls() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ep = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            // As etcd's TLS-only port does to plain HTTP: read what it
            // took for a ClientHello, then hang up without a byte.
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut b = [0u8; 4096];
                let _ = std::io::Read::read(&mut s, &mut b);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = std::io::Read::read(&mut s, &mut b);
            }
        });
        let e = Client::new(std::slice::from_ref(&ep)).grant(5).unwrap_err();
        assert!(matches!(e, Error::Tls { .. }), "{e}");
        assert!(e.to_string().contains("write https:// endpoints"), "{e}");
    }

    #[test]
    fn unreachable_endpoint_says_what_to_do() {
        let c = Client::new(&["http://127.0.0.1:1".to_string()]);
        let e = c.grant(5).unwrap_err().to_string();
        assert!(
            e.contains("127.0.0.1:1") && e.contains("does not reboot"),
            "{e}"
        );
    }
}
