//! Checking the repository and writing a release into the inactive slot.

use std::fs::OpenOptions;
use std::path::Path;

use herd_gpt::{Guid, Table};
use herd_release::{
    verify_channel, verify_root_chain, Envelope, NodeState, PayloadCheck, Release, Root,
    MAX_METADATA_BYTES,
};

use crate::config::UpdateConfig;
use crate::esp::{Esp, UKIS};
use crate::slots::Slots;
use crate::state::{boot_id, Pending, State};
use crate::{http, io, now, Error};

/// What a check found.
#[derive(Debug)]
pub enum Found {
    /// Nothing newer for this node (or already installed and pending).
    Nothing(String),
    /// A release to install now.
    Release(Release),
}

/// Fetches the root chain (`root/N.json` past the trusted one) and the
/// channel metadata; verifies both.
fn fetch_channel(
    cfg: &UpdateConfig,
    trusted: &Root,
    ns: &NodeState,
    node_id: &str,
) -> Result<(herd_release::Channel, bool), Error> {
    let base = cfg.repository.trim_end_matches('/');
    let mut newer = Vec::new();
    for n in trusted.version + 1..trusted.version + 100 {
        match http::get_small(&format!("{base}/root/{n}.json"), MAX_METADATA_BYTES)? {
            Some(b) => newer.push(b),
            None => break,
        }
    }
    let t = now();
    let root = verify_root_chain(trusted, &newer, t)?;
    let url = format!("{base}/channels/{}.json", cfg.channel);
    let bytes = http::get_small(&url, MAX_METADATA_BYTES)?.ok_or_else(|| Error::Http {
        url: url.clone(),
        message: format!(
            "the repository has no channel {:?} (404): check `channel` in the update configuration",
            cfg.channel
        ),
    })?;
    Ok(verify_channel(&root, &bytes, &cfg.channel, ns, node_id, t)?)
}

/// The newest release on the channel, verified, whatever this node runs
/// (for `herd-update write-slot`).
pub fn newest(cfg: &UpdateConfig, trusted: &Root, state: &mut State) -> Result<Release, Error> {
    let ns = NodeState {
        highest_seq: state.highest_seq,
        installed: "0".into(),
        bad: Vec::new(),
    };
    let (c, _) = fetch_channel(cfg, trusted, &ns, "write-slot")?;
    state.highest_seq = state.highest_seq.max(c.seq);
    Ok(c.release)
}

/// Checks the repository: what, if anything, this node should install.
pub fn check(
    cfg: &UpdateConfig,
    trusted: &Root,
    slots: &Slots,
    state: &mut State,
    node_id: &str,
) -> Result<Found, Error> {
    let t = now();
    let ns = NodeState {
        highest_seq: state.highest_seq,
        installed: slots.version.clone(),
        bad: state.bad.clone(),
    };
    let (c, take) = match fetch_channel(cfg, trusted, &ns, node_id) {
        Err(Error::Release(herd_release::Error::KnownBad(v))) => {
            return Ok(Found::Nothing(format!(
                "{v} is the newest release on {} but failed to boot here before: staying on {}",
                cfg.channel, slots.version
            )))
        }
        other => other?,
    };
    state.highest_seq = state.highest_seq.max(c.seq);
    state.last_check = t;
    if state
        .pending
        .as_ref()
        .is_some_and(|p| p.version == c.release.version)
    {
        return Ok(Found::Nothing(format!(
            "{} is installed in slot {} and waits for a reboot",
            c.release.version, slots.other
        )));
    }
    if !take {
        return Ok(Found::Nothing(if c.release.version == slots.version {
            format!("{} is the newest release on {}", slots.version, cfg.channel)
        } else {
            format!(
                "{} is rolling out; this node's wave has not come yet",
                c.release.version
            )
        }));
    }
    Ok(Found::Release(c.release))
}

fn fetch_small_payload(base: &str, rel: &Release, role: &str) -> Result<Vec<u8>, Error> {
    let p = &rel.payloads[role];
    let mut check = PayloadCheck::new(role, p);
    let mut out = Vec::with_capacity(p.size as usize);
    http::stream(
        &format!("{base}/payloads/{}", p.sha256),
        0,
        p.size,
        &mut |c| {
            check.update(&c)?;
            out.extend_from_slice(&c);
            Ok(Some(c))
        },
    )?;
    check.finish()?;
    Ok(out)
}

/// Writes `rel` into the inactive slot and installs its boot entry.
pub fn install(
    cfg: &UpdateConfig,
    rel: &Release,
    slots: &Slots,
    state: &mut State,
    state_dir: &Path,
    log: &dyn Fn(&str),
) -> Result<(), Error> {
    let base = cfg.repository.trim_end_matches('/');
    let slot = &slots.other;
    let usr = slots.part(&format!("usr-{slot}"))?;
    let verity = slots.part(&format!("usr-{slot}-verity"))?;
    log(&format!(
        "installing {} {} into slot {slot} ({}, {})",
        rel.image, rel.version, usr.dev, verity.dev
    ));
    // Nothing may boot the slot while it is being written: drop its entries.
    {
        let esp = Esp::mount(&slots.disk)?;
        for e in esp.entries() {
            if e.name.starts_with(&format!("{}-{slot}", slots.image)) {
                esp.remove_entry(&e)?;
            }
        }
        esp.remove_partial(&format!("{}-{slot}", slots.image))?;
    }
    crate::download::write_slot(base, rel, &usr.dev, &verity.dev, state, state_dir, log)?;
    log(&format!(
        "slot {slot} verified against usrhash {}",
        rel.usrhash
    ));
    let root = rel
        .root_hash()
        .ok_or_else(|| Error::Disk(format!("release {} has a malformed usrhash", rel.version)))?;
    let role = format!("uki-{slot}");
    if !rel.payloads.contains_key(&role) {
        return Err(Error::Disk(format!(
            "release {} has no {role} payload: publish it with a herd that builds UKIs",
            rel.version
        )));
    }
    let uki = fetch_small_payload(base, rel, &role)?;
    check_uki(&uki, rel, slot)?;

    // The slot's partitions carry the root hash halves as PARTUUIDs (DPS).
    let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
    a.copy_from_slice(&root[..16]);
    b.copy_from_slice(&root[16..]);
    let dev = format!("/dev/{}", slots.disk);
    let mut d = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .map_err(io(format!("opening {dev}")))?;
    let mut table = Table::read_from(&mut d, 512)
        .map_err(|e| Error::Disk(format!("reading the GPT of {dev}: {e}")))?;
    for p in table.partitions.iter_mut() {
        if p.name == usr.entry.name {
            p.part_guid = Guid(a);
        } else if p.name == verity.entry.name {
            p.part_guid = Guid(b);
        }
    }
    // Backup copy first, synced, then the primary: a power cut leaves one valid table.
    table
        .write_durably(&mut d)
        .map_err(|e| Error::Disk(format!("writing the GPT of {dev}: {e}")))?;

    let esp = Esp::mount(&slots.disk)?;
    let (img, v) = (&slots.image, &rel.version);
    esp.write(&format!("{UKIS}/{img}-{slot}+{}-0.efi", cfg.tries), &uki)?;
    drop(esp);
    state.pending = Some(Pending {
        version: rel.version.clone(),
        slot: slot.clone(),
        boot_id: boot_id(),
    });
    state.last_error = None;
    state.save(state_dir)?;
    log(&format!(
        "{} {v} is ready in slot {slot} with {} boot tries",
        img, cfg.tries
    ));
    Ok(())
}

/// The UKI must be for this release and this slot: its command line carries
/// the release's `usrhash=` and `herd.slot=<slot>`.
fn check_uki(uki: &[u8], rel: &Release, slot: &str) -> Result<(), Error> {
    let parts = herd_uki::UkiParts::from_uki(uki).map_err(|e| {
        Error::Disk(format!(
            "the uki-{slot} payload of {} is not a UKI: {e}",
            rel.version
        ))
    })?;
    let c = herd_init::cmdline::Cmdline::parse(&String::from_utf8_lossy(parts.cmdline));
    if c.usrhash.as_deref() != Some(rel.usrhash.as_str()) || c.slot.as_deref() != Some(slot) {
        return Err(Error::Disk(format!(
            "the uki-{slot} payload of {} boots usrhash={} slot {} instead of usrhash={} slot {slot}: the release is inconsistent",
            rel.version,
            c.usrhash.as_deref().unwrap_or("(none)"),
            c.slot.as_deref().unwrap_or("(none)"),
            rel.usrhash
        )));
    }
    Ok(())
}

/// Run at start: settles a pending slot. Returns a line for the log.
pub fn reconcile(slots: &Slots, state: &mut State) -> Option<String> {
    let p = state.pending.clone()?;
    if p.boot_id == boot_id() {
        return None;
    }
    state.pending = None;
    if p.slot == slots.running && p.version == slots.version {
        Some(format!("now running {} from slot {}", p.version, p.slot))
    } else {
        if !state.bad.contains(&p.version) {
            state.bad.push(p.version.clone());
        }
        state.last_error = Some(format!(
            "release {} did not boot from slot {}; rolled back",
            p.version, p.slot
        ));
        Some(format!(
            "release {} failed to boot from slot {}; the boot loader fell back to {} in slot {}; {} is marked bad",
            p.version, p.slot, slots.version, slots.running, p.version
        ))
    }
}

/// Loads the trusted root baked into `/usr`.
pub fn trusted_root(path: &Path) -> Result<Root, Error> {
    let bytes =
        std::fs::read(path).map_err(io(format!("reading the trusted keys {}", path.display())))?;
    check_root_bytes(&bytes)
}

/// Parses a self-signed root key set (`root/1.json`).
pub fn check_root_bytes(bytes: &[u8]) -> Result<Root, Error> {
    let env = Envelope::parse(bytes, "trusted root")?;
    let root: Root = env.document("trusted root")?;
    env.check(&root.keys, root.threshold, "trusted root")?;
    Ok(root)
}
