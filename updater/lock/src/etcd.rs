//! A counting semaphore in etcd v3, spoken through etcd's JSON gateway
//! (`POST /v3/...`, keys and values base64, 64-bit numbers as strings).
//!
//! Keys of group `G`, all under `/herd/reboot/G/`:
//! - `holders/<node-id>`: one per slot taken, attached to the holder's lease,
//!   so a node that dies holding a slot loses it when its lease expires;
//! - `sem`: bumped by every acquisition (its value lists the holders, for
//!   people reading etcd).
//!
//! Acquiring reads the whole prefix in one range (one revision: `sem`'s
//! `mod_revision` and the holders together). With a free slot it sends one
//! transaction: *if `sem`'s mod_revision is still the one read, put `sem`
//! and put `holders/<me>` with my lease*. Any other acquisition between the
//! read and the transaction changed `sem`, so the compare fails and this node
//! reads again: two nodes can never both take the last slot. Holders that
//! leave (release, lease expiry) only free slots, so they need no compare.
//! The holder keeps its lease alive from a thread ([`Keeper`]); releasing
//! deletes the holder key and revokes the lease, and is idempotent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use crate::tls::{self, Tls};
use crate::{b64, Acquire, Error, RebootLock};

const BACKEND: &str = "etcd";

/// How many lost compare-and-swap races one [`RebootLock::acquire`] retries.
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
    /// The revision of its last change.
    #[serde(default, deserialize_with = "int64")]
    pub mod_revision: i64,
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

/// The transaction that takes a slot: if `sem` is unchanged since
/// `sem_rev` (0: it does not exist yet), bump it and put the holder key on
/// `lease`.
pub fn acquire_txn(
    sem: &str,
    sem_rev: i64,
    holder: &str,
    since: &str,
    holders: &str,
    lease: i64,
) -> Value {
    json!({
        "compare": [{
            "key": b64::encode(sem.as_bytes()),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": sem_rev.to_string(),
        }],
        "success": [
            {"request_put": {"key": b64::encode(sem.as_bytes()), "value": b64::encode(holders.as_bytes())}},
            {"request_put": {
                "key": b64::encode(holder.as_bytes()),
                "value": b64::encode(since.as_bytes()),
                "lease": lease.to_string(),
            }},
        ],
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
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        // A streaming call through the gateway: `{"result": {...}}`.
        let r = v.get("result").cloned().unwrap_or(v);
        Ok(match r.get("TTL") {
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
            _ => 0,
        })
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
        let v = self.call("/v3/kv/txn", body)?;
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }
}

/// Keeps a lease alive from a thread until dropped.
pub struct Keeper {
    stop: Arc<AtomicBool>,
    expired: Arc<AtomicBool>,
}

impl Keeper {
    /// Refreshes `lease` every `ttl / 3` seconds (at least every second).
    pub fn start(client: Client, lease: i64, ttl: u64) -> Keeper {
        let stop = Arc::new(AtomicBool::new(false));
        let expired = Arc::new(AtomicBool::new(false));
        let (flag, gone) = (stop.clone(), expired.clone());
        let every = Duration::from_millis((ttl * 1000 / 3).clamp(300, 30_000));
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match client.keepalive(lease) {
                    Ok(t) if t <= 0 => {
                        gone.store(true, Ordering::Relaxed);
                        tracing::warn!("etcd lease {lease:x} expired (it was not refreshed within its TTL): the keys on it are gone (a reboot slot, a fleet status record)");
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("keeping the reboot slot's lease alive: {e}"),
                }
                let mut slept = Duration::ZERO;
                while slept < every && !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    slept += Duration::from_millis(100);
                }
            }
        });
        Keeper { stop, expired }
    }

    /// Whether etcd said the lease is gone (it was not refreshed in time).
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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
        }
    }

    /// `/herd/reboot/<group>/`.
    pub fn prefix(group: &str) -> String {
        format!("/herd/reboot/{group}/")
    }

    /// `/herd/reboot/<group>/holders/`: one key per slot held.
    pub fn holders_prefix(group: &str) -> String {
        format!("{}holders/", Self::prefix(group))
    }

    fn holder_key(&self) -> String {
        format!("{}{}", Self::holders_prefix(&self.group), self.id)
    }

    /// Revokes this node's lease (deleting any key on it), if it has one.
    fn drop_lease(&mut self) -> Result<(), Error> {
        if let Some(l) = self.lease {
            self.client.revoke(l)?;
        }
        self.keeper = None;
        self.lease = None;
        Ok(())
    }

    fn lease(&mut self) -> Result<i64, Error> {
        if let Some(l) = self.lease {
            return Ok(l);
        }
        let l = self.client.grant(self.ttl)?;
        self.keeper = Some(Keeper::start(self.client.clone(), l, self.ttl));
        self.lease = Some(l);
        Ok(l)
    }
}

impl RebootLock for Etcd {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn acquire(&mut self) -> Result<Acquire, Error> {
        let prefix = Self::prefix(&self.group);
        let sem = format!("{prefix}sem");
        let hp = Self::holders_prefix(&self.group);
        let me = self.holder_key();
        for _ in 0..RACES {
            let r = self.client.range(&prefix, 0, false)?;
            let sem_rev = r
                .kvs
                .iter()
                .find(|kv| kv.key_text() == sem)
                .map_or(0, |kv| kv.mod_revision);
            let holders: Vec<(String, i64)> = r
                .kvs
                .iter()
                .filter_map(|kv| Some((kv.key_text().strip_prefix(&hp)?.to_string(), kv.lease)))
                .collect();
            if let Some((_, lease)) = holders.iter().find(|(h, _)| *h == self.id) {
                if Some(*lease) == self.lease {
                    return Ok(Acquire::Granted);
                }
                // A key of an earlier run (another lease): it is this node's
                // slot, but on a lease nobody refreshes; take it anew.
                self.client.delete(&me)?;
                continue;
            }
            if holders.len() as u32 >= self.max {
                // A lease granted for a race this node lost holds nothing:
                // give it up rather than refresh it while waiting (10,000
                // waiting nodes refreshing idle leases swamp etcd: see
                // bench/fleet.sh).
                self.drop_lease()?;
                let names: Vec<&str> = holders.iter().map(|(h, _)| h.as_str()).collect();
                return Ok(Acquire::Busy(format!(
                    "all {} reboot slots of group {:?} are held (by {})",
                    self.max,
                    self.group,
                    names.join(", ")
                )));
            }
            let lease = self.lease()?;
            let mut list: Vec<String> = holders.into_iter().map(|(h, _)| h).collect();
            list.push(self.id.clone());
            let txn = acquire_txn(
                &sem,
                sem_rev,
                &me,
                &json!({ "since": now() }).to_string(),
                &json!({ "holders": list }).to_string(),
                lease,
            );
            if self.client.txn(&txn)? {
                return Ok(Acquire::Granted);
            }
        }
        self.drop_lease()?;
        Ok(Acquire::Busy(format!(
            "lost {RACES} races in a row for a reboot slot of group {:?}",
            self.group
        )))
    }

    fn release(&mut self) -> Result<(), Error> {
        self.client.delete(&self.holder_key())?;
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
        let t = acquire_txn("/s", 0, "/h/n1", "{}", "[]", 42);
        assert_eq!(t["compare"][0]["target"], "MOD");
        assert_eq!(t["compare"][0]["mod_revision"], "0");
        assert_eq!(t["success"][1]["request_put"]["lease"], "42");
        assert_eq!(
            b64::decode(t["success"][1]["request_put"]["key"].as_str().unwrap()).unwrap(),
            b"/h/n1"
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
