//! `herd fleet status`: what the nodes of a fleet say about themselves in
//! etcd (their status records, `/herd/nodes/<group>/<node-id>`) and who
//! holds reboot slots (`/herd/reboot/<group>/holders/`), as a table or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use herd_reboot_lock::etcd::Client;
use herd_reboot_lock::status::{read_fleet, Group, NodeStatus};
use herd_reboot_lock::tls::Tls;
use herd_reboot_lock::Error;

/// etcd over TLS for `herd fleet status`: `--ca-file`, `--cert-file`,
/// `--key-file`, as the nodes' `[update.lock]` `ca_file`, `cert_file`,
/// `key_file`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// The only CA trusted for etcd (else the built-in Mozilla roots).
    pub ca: Option<&'a Path>,
    /// The client certificate.
    pub cert: Option<&'a Path>,
    /// Its key.
    pub key: Option<&'a Path>,
}

/// The etcd client for `endpoints`: TLS with `files` for https:// ones.
fn client(endpoints: &[String], files: TlsFiles) -> Result<Client> {
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    let given = files.ca.is_some() || files.cert.is_some() || files.key.is_some();
    if https != 0 && https != endpoints.len() {
        bail!("--etcd URLs mix http:// and https://: give one cluster's client URLs, all https:// for a TLS cluster");
    }
    if https == 0 {
        if given {
            bail!("--ca-file, --cert-file and --key-file are for etcd over TLS, but --etcd is http://: write https://HOST:2379, or leave them out");
        }
        return Ok(Client::new(endpoints));
    }
    if files.cert.is_some() != files.key.is_some() {
        bail!("--cert-file and --key-file go together: give both (the client certificate and its key), or neither");
    }
    let tls = Tls::from_files(files.ca, files.cert, files.key).map_err(|e| {
        anyhow!(
            "{}",
            e.to_string()
                .replace("[lock] ca_file", "--ca-file")
                .replace("[lock] cert_file", "--cert-file")
                .replace("[lock] key_file", "--key-file")
        )
    })?;
    Ok(Client::with_tls(endpoints, Some(tls)))
}

/// Reads the fleet status of `group` (None: every group) from etcd.
pub fn read(endpoints: &[String], files: TlsFiles, group: Option<&str>) -> Result<Vec<Group>> {
    let c = client(endpoints, files)?;
    read_fleet(&c, group).map_err(|e| match e {
        Error::Unreachable {
            endpoint, message, ..
        } => anyhow!(
            "etcd at {endpoint} does not answer ({message}): check that etcd runs there and that --etcd is its client URL (http://HOST:2379), as in the nodes' [update.lock] endpoints"
        ),
        Error::Tls {
            endpoint, message, ..
        } => anyhow!(
            "etcd at {endpoint}: {}",
            message
                .replace("[lock] ca_file", "--ca-file")
                .replace("[lock] cert_file and key_file", "--cert-file and --key-file")
                .replace("[lock] endpoints", "--etcd")
        ),
        e => anyhow::Error::new(e).context(format!(
            "reading the fleet status from etcd at {}",
            endpoints.join(", ")
        )),
    })
}

/// Whether a node reports a failure: a version that failed to boot, or an
/// updater error.
pub fn failed(n: &NodeStatus) -> bool {
    !n.bad.is_empty() || n.last_error.is_some()
}

fn counts<'a>(items: impl Iterator<Item = String> + 'a) -> String {
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table `herd fleet status` prints.
pub fn render(groups: &[Group]) -> String {
    let mut out = String::new();
    if groups.is_empty() {
        out.push_str("no herd nodes publish a status record in this etcd (nodes publish one when their [lock] backend is etcd)\n");
    }
    for g in groups {
        let failures: Vec<&NodeStatus> = g.nodes.iter().filter(|n| failed(n)).collect();
        let _ = writeln!(
            out,
            "group {}: {} nodes, {} failing, {} reboot slots held",
            g.group,
            g.nodes.len(),
            failures.len(),
            g.holders.len()
        );
        let _ = writeln!(
            out,
            "  versions:  {}",
            counts(g.nodes.iter().map(|n| n.version.clone()))
        );
        let _ = writeln!(
            out,
            "  waves:     {}",
            counts(
                g.nodes
                    .iter()
                    .map(|n| n.wave.map_or("-".into(), |w| w.to_string()))
            )
        );
        let _ = writeln!(
            out,
            "  slots:     {}",
            if g.holders.is_empty() {
                "-".to_string()
            } else {
                g.holders
                    .iter()
                    .map(|h| format!("{} (since {})", h.node, h.since))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let halted: Vec<String> = g.nodes.iter().filter_map(|n| n.halted.clone()).collect();
        if !halted.is_empty() {
            let _ = writeln!(out, "  halted:    {}", counts(halted.into_iter()));
        }
        for (key, why) in &g.unreadable {
            let _ = writeln!(out, "  unreadable record {key}: {why}");
        }
        if g.nodes.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<24} {:<10} {:<4} {:<7} {:<4} {:<7} {:<10} {:<10} PROBLEM",
            "NODE", "VERSION", "SLOT", "BLESSED", "WAVE", "LOCK", "PENDING", "UPDATED"
        );
        for n in &g.nodes {
            let problem = match (&n.bad[..], &n.last_error) {
                ([], None) => "-".to_string(),
                (bad, e) => {
                    let mut p = Vec::new();
                    if !bad.is_empty() {
                        p.push(format!("failed to boot: {}", bad.join(", ")));
                    }
                    if let Some(e) = e {
                        p.push(e.clone());
                    }
                    p.join("; ")
                }
            };
            let _ = writeln!(
                out,
                "  {:<24} {:<10} {:<4} {:<7} {:<4} {:<7} {:<10} {:<10} {problem}",
                n.node,
                n.version,
                n.slot,
                if n.blessed { "yes" } else { "no" },
                n.wave.map_or("-".into(), |w| w.to_string()),
                n.lock,
                n.pending.as_deref().unwrap_or("-"),
                n.updated_at,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_reboot_lock::status::Holder;

    #[test]
    fn the_table_counts_versions_waves_failures_and_slots() {
        let n = |id: &str, v: &str, wave, bad: &[&str]| NodeStatus {
            node: id.into(),
            version: v.into(),
            slot: "a".into(),
            blessed: true,
            pending: None,
            bad: bad.iter().map(|s| s.to_string()).collect(),
            last_error: None,
            halted: None,
            wave,
            updated_at: 5,
            lock: "idle".into(),
        };
        let g = Group {
            group: "web".into(),
            nodes: vec![
                n("n1", "0.1.0", Some(0), &["0.2.0"]),
                n("n2", "0.2.0", Some(0), &[]),
                NodeStatus {
                    halted: Some("rollout of 0.2.0 halted".into()),
                    ..n("n3", "0.1.0", None, &[])
                },
            ],
            holders: vec![Holder {
                node: "n3".into(),
                since: 9,
            }],
            unreadable: vec![],
        };
        let t = render(&[g]);
        assert!(
            t.contains("group web: 3 nodes, 1 failing, 1 reboot slots held"),
            "{t}"
        );
        assert!(t.contains("versions:  0.1.0 ×2, 0.2.0 ×1"), "{t}");
        assert!(t.contains("waves:     - ×1, 0 ×2"), "{t}");
        assert!(t.contains("slots:     n3 (since 9)"), "{t}");
        assert!(t.contains("failed to boot: 0.2.0"), "{t}");
        assert!(t.contains("halted:    rollout of 0.2.0 halted ×1"), "{t}");
        assert!(render(&[]).contains("no herd nodes"));
    }
}
