//! Fleet status records in etcd: each node whose lock backend is etcd
//! publishes one small JSON [`NodeStatus`] under
//! `/herd/nodes/<group>/<node-id>`, attached to a lease of its own that the
//! node keeps alive, so a node that dies (or stops its updater) drops out of
//! the fleet status when the lease expires. `herd fleet status` reads these
//! records together with the reboot-slot holders (`/herd/reboot/<group>/
//! holders/`, see [`crate::etcd`]) in one consistent pair of ranges.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::etcd::{Client, Etcd, Keeper};
use crate::{b64, Error};

/// What one node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node id (also the last part of its key).
    pub node: String,
    /// The version it runs.
    pub version: String,
    /// The slot it runs from (`a`, `b`; `-` when unknown).
    pub slot: String,
    /// Whether herd-init blessed this boot.
    pub blessed: bool,
    /// A release installed and waiting for its reboot or its blessing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// Versions that failed to boot here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad: Vec<String>,
    /// The updater's last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// "rollout of X halted by the publisher: why" when the channel's
    /// release is halted and this node is not on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// This node's wave of the channel's current rollout (index into its
    /// waves), when the release is phased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    /// Unix seconds of the change this record says.
    pub updated_at: u64,
    /// `idle`, `waiting` or `holding` (a reboot slot).
    pub lock: String,
}

impl NodeStatus {
    /// Whether `other` says the same, apart from when it was said.
    pub fn same_as(&self, other: &NodeStatus) -> bool {
        NodeStatus {
            updated_at: 0,
            ..self.clone()
        } == NodeStatus {
            updated_at: 0,
            ..other.clone()
        }
    }
}

/// `/herd/nodes/<group>/`.
pub fn nodes_prefix(group: &str) -> String {
    format!("/herd/nodes/{group}/")
}

/// `/herd/nodes/<group>/<node-id>`.
pub fn node_key(group: &str, id: &str) -> String {
    format!("{}{id}", nodes_prefix(group))
}

/// Publishes one node's record on a lease it keeps alive.
pub struct Publisher {
    client: Client,
    key: String,
    ttl: u64,
    lease: Option<(i64, Keeper)>,
    /// A lease someone else keeps alive (see [`Publisher::on_lease`]).
    shared: Option<i64>,
    last: Option<NodeStatus>,
}

impl Publisher {
    /// The publisher of node `id` in `group`; its record lives `ttl`
    /// seconds past the node's last lease refresh.
    pub fn new(endpoints: &[String], group: &str, id: &str, ttl: u64) -> Publisher {
        Self::with_client(Client::new(endpoints), group, id, ttl)
    }

    /// The same, over `client` (e.g. one speaking TLS, shared with the
    /// node's reboot lock).
    pub fn with_client(client: Client, group: &str, id: &str, ttl: u64) -> Publisher {
        Publisher {
            client,
            key: node_key(group, id),
            ttl,
            lease: None,
            shared: None,
            last: None,
        }
    }

    /// A publisher over `client` whose records live on `lease`, which the
    /// caller keeps alive (a simulation of many nodes in one process,
    /// which would otherwise refresh one lease per node).
    pub fn on_lease(client: Client, group: &str, id: &str, lease: i64) -> Publisher {
        Publisher {
            client,
            key: node_key(group, id),
            ttl: 0,
            lease: None,
            shared: Some(lease),
            last: None,
        }
    }

    /// The lease the record lives on (granted, and kept alive from a
    /// thread, on first use or when the last one expired). The etcd reboot
    /// lock puts this node's place in its queue on the same lease, so a
    /// waiting node refreshes one lease, not two.
    pub fn lease(&mut self) -> Result<i64, Error> {
        if let Some(l) = self.shared {
            return Ok(l);
        }
        if self.lease.as_ref().is_some_and(|(_, k)| k.expired()) {
            // The record went with its lease: write it again on a new one.
            self.lease = None;
            self.last = None;
        }
        if let Some((l, _)) = &self.lease {
            return Ok(*l);
        }
        let l = self.client.grant(self.ttl)?;
        self.lease = Some((l, Keeper::start(self.client.clone(), l, self.ttl)));
        self.last = None;
        Ok(l)
    }

    /// Writes `rec` unless the last record written says the same; whether
    /// it wrote. A lease that expired meanwhile (etcd unreachable for
    /// longer than its TTL) is replaced by a new one.
    pub fn publish(&mut self, rec: &NodeStatus) -> Result<bool, Error> {
        for _ in 0..2 {
            let lease = self.lease()?;
            if self.last.as_ref().is_some_and(|l| l.same_as(rec)) {
                return Ok(false);
            }
            let value = serde_json::to_string(rec).expect("a status record serialises");
            match self.client.put(&self.key, &value, lease) {
                Ok(()) => {
                    self.last = Some(rec.clone());
                    return Ok(true);
                }
                Err(Error::Protocol { message, .. })
                    if message.contains("lease not found") && self.shared.is_none() =>
                {
                    self.lease = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Protocol {
            backend: "etcd",
            what: "/v3/kv/put".into(),
            message: format!("{}: a fresh lease was not found either", self.key),
        })
    }
}

/// One holder of a reboot slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The node id.
    pub node: String,
    /// Unix seconds since when it holds the slot (0: unknown).
    pub since: u64,
}

/// What etcd says about one group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group name.
    pub group: String,
    /// The nodes' records, by node id.
    pub nodes: Vec<NodeStatus>,
    /// Who holds reboot slots.
    pub holders: Vec<Holder>,
    /// Records that did not parse (key, why): written by something else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<(String, String)>,
}

/// The status of `group` (None: every group found under `/herd/`), read at
/// one etcd revision.
pub fn read_fleet(client: &Client, group: Option<&str>) -> Result<Vec<Group>, Error> {
    let (nodes_p, reboot_p) = match group {
        Some(g) => (nodes_prefix(g), Etcd::prefix(g)),
        None => ("/herd/nodes/".to_string(), "/herd/reboot/".to_string()),
    };
    let nodes = client.range(&nodes_p, 0, false)?;
    let slots = client.range(&reboot_p, nodes.header.revision, false)?;
    let mut groups: std::collections::BTreeMap<String, Group> = Default::default();
    if let Some(g) = group {
        groups.insert(g.into(), Group::default());
    }
    for kv in &nodes.kvs {
        let key = kv.key_text();
        let Some((g, id)) = key
            .strip_prefix("/herd/nodes/")
            .and_then(|r| r.rsplit_once('/'))
        else {
            continue;
        };
        let entry = groups.entry(g.to_string()).or_default();
        match serde_json::from_str::<NodeStatus>(&kv.value_text()) {
            Ok(mut rec) => {
                rec.node = id.to_string();
                entry.nodes.push(rec);
            }
            Err(e) => entry.unreadable.push((key.clone(), e.to_string())),
        }
    }
    for kv in &slots.kvs {
        let key = kv.key_text();
        let Some((g, id)) = key
            .strip_prefix("/herd/reboot/")
            .and_then(|r| r.split_once("/holders/"))
        else {
            continue;
        };
        let since = serde_json::from_str::<serde_json::Value>(&kv.value_text())
            .ok()
            .and_then(|v| v.get("since")?.as_u64())
            .unwrap_or(0);
        groups
            .entry(g.to_string())
            .or_default()
            .holders
            .push(Holder {
                node: id.to_string(),
                since,
            });
    }
    Ok(groups
        .into_iter()
        .map(|(name, mut g)| {
            g.group = name;
            g
        })
        .collect())
}

/// The body of a put of `value` at `key` on `lease`.
pub fn put_body(key: &str, value: &str, lease: i64) -> serde_json::Value {
    json!({
        "key": b64::encode(key.as_bytes()),
        "value": b64::encode(value.as_bytes()),
        "lease": lease.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> NodeStatus {
        NodeStatus {
            node: "n1".into(),
            version: "0.2.0".into(),
            slot: "b".into(),
            blessed: true,
            pending: None,
            bad: vec![],
            last_error: None,
            halted: None,
            wave: Some(1),
            updated_at: 100,
            lock: "idle".into(),
        }
    }

    #[test]
    fn keys_and_records_have_the_documented_layout() {
        assert_eq!(node_key("web", "n1"), "/herd/nodes/web/n1");
        let v: serde_json::Value = serde_json::to_value(rec()).unwrap();
        assert_eq!(
            v,
            json!({"node": "n1", "version": "0.2.0", "slot": "b", "blessed": true,
                   "wave": 1, "updated_at": 100, "lock": "idle"})
        );
        let b = put_body("/k", "{}", 7);
        assert_eq!(
            (b["lease"].as_str(), b["key"].as_str()),
            (Some("7"), Some("L2s="))
        );
    }

    #[test]
    fn only_a_change_is_a_new_record() {
        let later = NodeStatus {
            updated_at: 200,
            ..rec()
        };
        assert!(rec().same_as(&later));
        let failed = NodeStatus {
            last_error: Some("x".into()),
            ..later
        };
        assert!(!rec().same_as(&failed));
    }

    #[test]
    fn an_unreachable_etcd_is_an_error_that_names_it() {
        let c = Client::new(&["http://127.0.0.1:1".to_string()]);
        let e = read_fleet(&c, Some("g")).unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:1"), "{e}");
        let mut p = Publisher::new(&["http://127.0.0.1:1".to_string()], "g", "n1", 10);
        assert!(p.publish(&rec()).is_err());
    }
}
