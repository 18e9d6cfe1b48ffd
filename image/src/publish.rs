//! `herd release publish`: a built image's update payload into a release
//! repository.

use std::path::Path;

use anyhow::{bail, Context, Result};
use herd_contract::payload;
use herd_release::{Release, Repo, Rollout, SigningKey, Wave};

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

/// Publishes the build in `image_out` on `channel`.
pub fn publish(
    image_out: &Path,
    repo: &Repo,
    channel: &str,
    keys: &[&SigningKey],
    now: u64,
    expires: u64,
    rollout: Option<Rollout>,
) -> Result<herd_release::Channel> {
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
    Ok(repo.publish(channel, release, keys, now, expires)?)
}
