//! `herd release publish`: a built image's update payload into a release
//! repository.

use std::path::Path;

use anyhow::{bail, Context, Result};
use herd_contract::payload;
use herd_release::{ChunkIndex, ExpectedDownload, Release, Repo, Rollout, SigningKey, Wave};

use crate::manifest::Manifest;

/// Payload roles and the build outputs they come from. The node installs
/// `uki-<slot>`; `linux` and `initrd` are there for tools and recovery.
pub const ROLES: [(&str, &str); 6] = [
    (payload::USR_IMG, crate::pipeline::names::USR),
    (payload::USR_VERITY, crate::pipeline::names::USR_VERITY),
    (payload::UKI_A, crate::pipeline::names::UKI_A),
    (payload::UKI_B, crate::pipeline::names::UKI_B),
    (payload::LINUX, crate::pipeline::names::KERNEL),
    (payload::INITRD, crate::pipeline::names::INITRD),
];

/// The payloads a node may update with a delta (see docs/UPDATES.md): each
/// gets a chunk index in the repository. `linux` and `initrd` are for tools
/// and recovery, never fetched by nodes.
pub const CHUNKED: [&str; 4] = [
    payload::USR_IMG,
    payload::USR_VERITY,
    payload::UKI_A,
    payload::UKI_B,
];

/// Parses `SECS:PERCENT,SECS:PERCENT` (e.g. `0:10,3600:100`).
pub fn parse_rollout(s: &str, start: u64) -> Result<Rollout> {
    let mut waves = Vec::new();
    for w in s.split(',') {
        let (a, p) = w
            .split_once(':')
            .with_context(|| format!("rollout wave {w:?}: write SECONDS:PERCENT"))?;
        let percent: u32 = p
            .trim()
            .parse()
            .with_context(|| format!("rollout wave {w:?}: bad percent"))?;
        if percent > 100 {
            bail!("rollout wave {w:?}: percent must be 0-100");
        }
        waves.push(Wave {
            after_secs: a
                .trim()
                .parse()
                .with_context(|| format!("rollout wave {w:?}: bad seconds"))?,
            percent,
        });
    }
    Ok(Rollout { start, waves })
}

/// The role whose chunks a node already has for `role`: its running slot's
/// copy. A node installs the UKI of the other slot, and has its own.
fn running_role(role: &str) -> &str {
    match role {
        payload::UKI_A => payload::UKI_B,
        payload::UKI_B => payload::UKI_A,
        r => r,
    }
}

/// What nodes on the channel's previous release download for the new one.
#[derive(Debug)]
pub struct Expected {
    /// The previous version.
    pub from: String,
    /// By payload role (those with chunk indexes in both releases).
    pub payloads: Vec<(String, ExpectedDownload)>,
}

impl Expected {
    /// A node fetches usr.img, usr.verity and one UKI (the other slot's):
    /// their sum, counting the larger UKI.
    pub fn node_total(&self) -> (u64, u64) {
        let get = |role: &str| {
            self.payloads
                .iter()
                .find(|(r, _)| r == role)
                .map_or((0, 0), |(_, e)| (e.bytes, e.full))
        };
        let (ua, ub) = (get(payload::UKI_A), get(payload::UKI_B));
        let uki = if ua.0 >= ub.0 { ua } else { ub };
        [get(payload::USR_IMG), get(payload::USR_VERITY), uki]
            .iter()
            .fold((0, 0), |(b, f), (x, y)| (b + x, f + y))
    }

    /// What `herd release publish` prints.
    pub fn lines(&self) -> Vec<String> {
        let pct = |a: u64, b: u64| a as f64 * 100.0 / b.max(1) as f64;
        let mut out = vec![format!(
            "expected download for nodes on {} (from the chunk indexes):",
            self.from
        )];
        for (role, e) in &self.payloads {
            out.push(format!(
                "  {role}: {} of {} bytes ({:.2} %){}",
                e.bytes,
                e.full,
                pct(e.bytes, e.full),
                if e.delta {
                    ""
                } else {
                    ", full download: too little in common"
                }
            ));
        }
        let (b, f) = self.node_total();
        out.push(format!(
            "  total per node (usr.img, usr.verity, one UKI): {b} of {f} bytes ({:.2} %)",
            pct(b, f)
        ));
        out
    }
}

/// The previous release on the channel and its chunk indexes by role, if
/// it is another version than `version`.
fn previous_indexes(
    repo: &Repo,
    channel: &str,
    version: &str,
    now: u64,
) -> Result<Option<(String, std::collections::BTreeMap<String, ChunkIndex>)>> {
    let Some(prev) = repo.channel(channel, now).ok().flatten() else {
        return Ok(None);
    };
    if prev.release.version == version {
        return Ok(None);
    }
    let mut out = std::collections::BTreeMap::new();
    for (role, p) in &prev.release.payloads {
        if let Some(r) = &p.chunks {
            if let Some(idx) = repo.chunk_index(r)? {
                out.insert(role.clone(), idx);
            }
        }
    }
    Ok(Some((prev.release.version, out)))
}

/// Publishes the build in `image_out` on `channel`; with what nodes on
/// the previous release are expected to download, when it had chunk
/// indexes.
pub fn publish(
    image_out: &Path,
    repo: &Repo,
    channel: &str,
    keys: &[&SigningKey],
    now: u64,
    expires: u64,
    rollout: Option<Rollout>,
) -> Result<(herd_release::Channel, Option<Expected>)> {
    // A missing or broken repository is the first thing to say.
    repo.current_root(now)?;
    let mpath = image_out.join("build.json");
    let text = std::fs::read_to_string(&mpath).with_context(|| {
        format!(
            "{} is not a finished build (no build.json): run `herd build` first",
            image_out.display()
        )
    })?;
    let m: Manifest =
        serde_json::from_str(&text).with_context(|| format!("reading {}", mpath.display()))?;
    let previous = previous_indexes(repo, channel, &m.version, now)?;
    let mut expected = previous.as_ref().map(|(v, _)| Expected {
        from: v.clone(),
        payloads: Vec::new(),
    });
    let mut payloads = std::collections::BTreeMap::new();
    for (role, file) in ROLES {
        let out = m.outputs.iter().find(|o| o.path == file).with_context(|| {
            format!("build.json lists no {file}: rebuild the image with this herd version")
        })?;
        let p = repo.add_payload(&image_out.join(file))?;
        if p.sha256 != out.sha256 {
            bail!(
                "{} changed since the build (sha256 {} but build.json says {}): rebuild",
                file,
                p.sha256,
                out.sha256
            );
        }
        let mut p = p;
        if CHUNKED.contains(&role) {
            let (r, idx) = repo.add_chunk_index(&image_out.join(file))?;
            tracing::info!(
                "{role}: {} chunks, index {} bytes ({:.3} % of {} bytes)",
                idx.chunks.len(),
                r.size,
                r.size as f64 * 100.0 / p.size.max(1) as f64,
                p.size
            );
            if let (Some(e), Some((_, old))) = (expected.as_mut(), previous.as_ref()) {
                if let Some(o) = old.get(running_role(role)) {
                    e.payloads
                        .push((role.to_string(), idx.expected_download(r.size, o)));
                }
            }
            p.chunks = Some(r);
        }
        payloads.insert(role.to_string(), p);
    }
    // The entry's extra command line: what the build added after herd's own words.
    let cmdline = m
        .cmdline
        .split_whitespace()
        .filter(|w| !herd_contract::cmdline::is_herd_word(w))
        .map(str::to_string)
        .collect();
    // The predicted PCR values, recomputed from the UKIs being published
    // (not taken from build.json, which is not signed).
    let mut pcrs = std::collections::BTreeMap::new();
    for (slot, p) in crate::pcr::predict(image_out)? {
        pcrs.insert(
            slot,
            herd_release::SlotPcrs {
                pcr11: p.pcr11,
                pcr15: p.pcr15,
            },
        );
    }
    let release = Release {
        image: m.name.clone(),
        version: m.version.clone(),
        usrhash: m.usr.usrhash.clone(),
        cmdline,
        payloads,
        rollout,
        pcrs,
    };
    let c = repo.publish(channel, release, keys, now, expires)?;
    Ok((c, expected.filter(|e| !e.payloads.is_empty())))
}
