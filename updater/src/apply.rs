//! Checking the repository and writing a release into the inactive slot.

use std::fs::OpenOptions;
use std::path::Path;

use herd_gpt::{Guid, Table};
use herd_release::{NodeState, PayloadCheck, Release, Root, MAX_METADATA_BYTES};

use crate::config::UpdateConfig;
use crate::esp::Esp;
use crate::slots::Slots;
use crate::state::{boot_id, Pending, State};
use crate::{http, io, now, trust, Error};
use herd_contract::paths::BOOT_GOOD;
use herd_contract::{BootEntry, Slot};

/// What a check found.
#[derive(Debug)]
pub enum Found {
    /// Nothing newer for this node (or already installed and pending).
    Nothing(String),
    /// A release to install now.
    Release(Release),
}

/// Fetches the root chain (`root/N.json` from the newest trusted one on)
/// and the channel metadata; verifies both with the trust kept in `state`
/// and records what was newly verified there.
fn fetch_channel(
    cfg: &UpdateConfig,
    baked: &Root,
    state: &mut State,
    ns: &NodeState,
    node_id: &str,
) -> Result<(herd_release::Channel, bool), Error> {
    let base = cfg.repository.trim_end_matches('/');
    let client = http::Client::for_config(cfg)?;
    trust::verify_repository(
        cfg,
        baked,
        state,
        ns,
        node_id,
        now(),
        trust::image_build_time(),
        &mut |path| client.get_small(&format!("{base}/{path}"), MAX_METADATA_BYTES),
    )
}

/// The newest release on the channel, verified with the same trust state
/// and refusals as a node (except that any version may be written), for
/// `herd-update write-slot`.
pub fn newest(cfg: &UpdateConfig, baked: &Root, state: &mut State) -> Result<Release, Error> {
    let ns = NodeState {
        highest_seq: state.highest_seq,
        installed: "0".into(),
        bad: state.bad.clone(),
    };
    let (c, _) = fetch_channel(cfg, baked, state, &ns, "write-slot")?;
    state.highest_seq = state.highest_seq.max(c.seq);
    if let Some(h) = c.halted {
        return Err(herd_release::Error::Halted {
            version: c.release.version,
            reason: h.reason,
        }
        .into());
    }
    Ok(c.release)
}

/// Checks the repository: what, if anything, this node should install.
pub fn check(
    cfg: &UpdateConfig,
    baked: &Root,
    slots: &Slots,
    state: &mut State,
    node_id: &str,
) -> Result<Found, Error> {
    let ns = NodeState {
        highest_seq: state.highest_seq,
        installed: slots.version.clone(),
        bad: state.bad.clone(),
    };
    let (c, take) = match fetch_channel(cfg, baked, state, &ns, node_id) {
        Err(Error::Release(herd_release::Error::KnownBad(v))) => {
            return Ok(Found::Nothing(format!(
                "{v} is the newest release on {} but failed to boot here before: staying on {}",
                cfg.channel, slots.version
            )))
        }
        other => other?,
    };
    state.highest_seq = state.highest_seq.max(c.seq);
    state.wave = c
        .release
        .rollout
        .as_ref()
        .and_then(|r| herd_release::wave_of(r, node_id, &c.release.version))
        .and_then(|w| u32::try_from(w).ok());
    state.last_check = trust::trusted_now(now(), trust::image_build_time(), state, baked);
    // Nodes that run the release, or installed it already, are unaffected.
    let taken = c.release.version == slots.version
        || state
            .pending
            .as_ref()
            .is_some_and(|p| p.version == c.release.version);
    state.halted = c.halted.as_ref().filter(|_| !taken).map(|h| {
        herd_release::Error::Halted {
            version: c.release.version.clone(),
            reason: h.reason.clone(),
        }
        .to_string()
    });
    if let Some(p) = state
        .pending
        .as_ref()
        .filter(|p| p.version == c.release.version)
    {
        return Ok(Found::Nothing(if p.slot == slots.running.name() {
            format!(
                "{} runs from slot {} and waits for herd-init to bless this boot",
                p.version, p.slot
            )
        } else {
            format!(
                "{} is installed in slot {} and waits for a reboot",
                p.version, p.slot
            )
        }));
    }
    if let Some(line) = &state.halted {
        return Ok(Found::Nothing(line.clone()));
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

/// The running slot's UKI from the ESP, if one is there.
fn running_uki(slots: &Slots) -> Option<Vec<u8>> {
    let esp = Esp::mount(&slots.disk).ok()?;
    let e = esp.entries().into_iter().find(|e| {
        e.dir == crate::esp::UKIS
            && e.boot_entry()
                .is_some_and(|b| slots.boots(&b, slots.running))
    })?;
    std::fs::read(esp.path(&format!("{}/{}", e.dir, e.name))).ok()
}

/// The UKI payload `role`: by delta from the running slot's UKI (the kernel
/// and initramfs rarely change between releases, only the command line),
/// else in full. Either way its sha256 is the signed one.
fn fetch_uki(
    client: &http::Client,
    base: &str,
    rel: &Release,
    role: &str,
    slots: &Slots,
    state: &mut State,
    log: &dyn Fn(&str),
) -> Result<Vec<u8>, Error> {
    let p = &rel.payloads[role];
    if p.chunks.is_some() {
        if let Some(old) = running_uki(slots) {
            if let Some((uki, mut st)) = crate::delta::assemble(client, base, role, p, &old)? {
                st.version = rel.version.clone();
                log(&format!("delta {role} of {}", st.line()));
                state.count_delta(st);
                return Ok(uki);
            }
            log(&format!(
                "{role}: no delta from the running UKI: full download"
            ));
        }
    }
    fetch_small_payload(client, base, rel, role)
}

fn fetch_small_payload(
    client: &http::Client,
    base: &str,
    rel: &Release,
    role: &str,
) -> Result<Vec<u8>, Error> {
    let p = &rel.payloads[role];
    let mut check = PayloadCheck::new(role, p);
    let mut out = Vec::with_capacity(p.size as usize);
    client.stream(
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
    let client = http::Client::for_config(cfg)?;
    let slot = slots.other;
    let usr = slots.usr(slot)?;
    let verity = slots.usr_verity(slot)?;
    log(&format!(
        "installing {} {} into slot {slot} ({}, {})",
        rel.image, rel.version, usr.dev, verity.dev
    ));
    // Nothing may boot the slot while it is being written: drop its entries.
    {
        let esp = Esp::mount(&slots.disk)?;
        for e in esp.entries() {
            if e.boot_entry().is_some_and(|b| slots.boots(&b, slot)) {
                esp.remove_entry(&e)?;
            }
        }
        esp.remove_partial(&slots.image, slot)?;
    }
    // The running slot is where a delta update finds the chunks it has.
    let (from_usr, from_verity) = (
        slots.usr(slots.running).ok(),
        slots.usr_verity(slots.running).ok(),
    );
    let sources = crate::download::Sources {
        usr: from_usr.as_ref().map(|p| p.dev.as_str()),
        verity: from_verity.as_ref().map(|p| p.dev.as_str()),
    };
    crate::download::write_slot(
        &client,
        base,
        rel,
        &usr.dev,
        &verity.dev,
        state,
        state_dir,
        sources,
        log,
    )?;
    log(&format!(
        "slot {slot} verified against usrhash {}",
        rel.usrhash
    ));
    let root = rel
        .root_hash()
        .ok_or_else(|| Error::Disk(format!("release {} has a malformed usrhash", rel.version)))?;
    let role = herd_contract::payload::uki(slot);
    if !rel.payloads.contains_key(role) {
        return Err(Error::Disk(format!(
            "release {} has no {role} payload: publish it with a herd that builds UKIs",
            rel.version
        )));
    }
    let uki = fetch_uki(&client, base, rel, role, slots, state, log)?;
    check_uki(&uki, rel, slot)?;

    // The slot's partitions carry the root hash halves as PARTUUIDs (DPS).
    let (a, b) = herd_contract::partition::uuids_from_root_hash(&root);
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

    // Pending is on STATE before the UKI can boot: whatever boot comes next
    // knows a release was tried and settles it (running, fell back, or an
    // install a power cut stopped before the entry was in place).
    state.pending = Some(Pending {
        version: rel.version.clone(),
        slot: slot.name().to_string(),
        boot_id: boot_id(),
    });
    state.last_error = None;
    state.save(state_dir)?;
    let (img, v) = (&slots.image, &rel.version);
    let written = Esp::mount(&slots.disk)
        .and_then(|esp| esp.write(&BootEntry::fresh(img, slot, cfg.tries).path(), &uki));
    if let Err(e) = written {
        state.pending = None;
        state.save(state_dir)?;
        return Err(e);
    }
    log(&format!(
        "{} {v} is ready in slot {slot} with {} boot tries",
        img, cfg.tries
    ));
    Ok(())
}

/// The UKI must be for this release and this slot: its command line carries
/// the release's `usrhash=` and `herd.slot=<slot>`.
fn check_uki(uki: &[u8], rel: &Release, slot: Slot) -> Result<(), Error> {
    let parts = herd_uki::UkiParts::from_uki(uki).map_err(|e| {
        Error::Disk(format!(
            "the uki-{slot} payload of {} is not a UKI: {e}",
            rel.version
        ))
    })?;
    let c = herd_contract::cmdline::Cmdline::parse(&String::from_utf8_lossy(parts.cmdline));
    if c.usrhash.as_deref() != Some(rel.usrhash.as_str()) || c.slot.as_deref() != Some(slot.name())
    {
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

/// Whether herd-init has blessed this boot (or found nothing to bless).
pub fn boot_is_good() -> bool {
    Path::new(BOOT_GOOD).exists()
}

/// What this boot makes of a pending release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// This very boot wrote it: it waits for a reboot.
    WaitsForReboot,
    /// This boot runs it, not blessed yet: keep it pending, install nothing.
    WaitsForBlessing,
    /// This boot runs it and is blessed: it is the running release.
    Running,
    /// The install stopped (power cut) before the slot's boot entry was in
    /// place: the release was never tried; drop it, do not mark it bad.
    Interrupted,
    /// The boot loader booted the other slot: the release never came up
    /// healthy; mark it bad.
    FellBack,
    /// The other slot runs although the pending slot's entry is blessed:
    /// the release came up healthy once (herd-init blessed it), so it is
    /// not bad; something made the boot loader pass it over (see the log
    /// for the entries the loader saw). Drop it; the next check installs
    /// it again.
    PassedOver,
}

/// What the ESP holds for the pending slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingEntry {
    /// No entry: the install never put one in place.
    Absent,
    /// An entry with a tries counter (`herd-b+2-1.efi`), or an ESP that
    /// could not be read.
    Counted,
    /// A blessed entry (`herd-b.efi`): herd-init blessed a boot of it.
    Blessed,
}

/// Decides what a pending release became. `entry` says what boot entry
/// the pending slot has on the ESP; it is asked only when this boot runs
/// another slot or version.
pub fn settle(
    p: &Pending,
    slots: &Slots,
    this_boot: &str,
    blessed: bool,
    entry: impl FnOnce() -> PendingEntry,
) -> Settle {
    if p.boot_id == this_boot {
        Settle::WaitsForReboot
    } else if p.slot == slots.running.name() && p.version == slots.version {
        if blessed {
            Settle::Running
        } else {
            Settle::WaitsForBlessing
        }
    } else {
        match entry() {
            PendingEntry::Absent => Settle::Interrupted,
            PendingEntry::Counted => Settle::FellBack,
            // Another version in the pending slot is a failed install, blessed or not.
            PendingEntry::Blessed if p.slot == slots.running.name() => Settle::FellBack,
            PendingEntry::Blessed => Settle::PassedOver,
        }
    }
}

/// Settles a pending release (see [`settle`]); changes `state` accordingly
/// and returns a line for the log.
pub fn reconcile(slots: &Slots, state: &mut State, blessed: bool) -> Option<String> {
    let p = state.pending.clone()?;
    // A pending slot name from an older state that is no slot: nothing of
    // it can be on the ESP.
    let pending_slot = Slot::parse(&p.slot);
    let entry = || {
        Esp::mount(&slots.disk)
            .map(|esp| {
                let mine: Vec<BootEntry> = esp
                    .entries()
                    .iter()
                    .filter_map(|e| e.boot_entry())
                    .filter(|b| pending_slot.is_some_and(|s| slots.boots(b, s)))
                    .collect();
                if mine.iter().any(BootEntry::is_blessed) {
                    PendingEntry::Blessed
                } else if !mine.is_empty() {
                    PendingEntry::Counted
                } else {
                    PendingEntry::Absent
                }
            })
            // An ESP that cannot be read: count the release as tried.
            .unwrap_or(PendingEntry::Counted)
    };
    match settle(&p, slots, &boot_id(), blessed, entry) {
        Settle::WaitsForReboot => None,
        Settle::WaitsForBlessing => Some(format!(
            "running {} from slot {}, not blessed yet: waiting for herd-init to bless this boot before settling it",
            p.version, p.slot
        )),
        Settle::Running => {
            state.pending = None;
            Some(format!("now running {} from slot {}", p.version, p.slot))
        }
        Settle::Interrupted => {
            state.pending = None;
            Some(format!(
                "the install of {} into slot {} stopped before its boot entry was in place; it is installed again",
                p.version, p.slot
            ))
        }
        Settle::FellBack => {
            state.pending = None;
            if !state.bad.contains(&p.version) {
                state.bad.push(p.version.clone());
            }
            state.last_error = Some(format!(
                "release {} did not come up healthy from slot {}; rolled back",
                p.version, p.slot
            ));
            Some(format!(
                "release {} failed to boot from slot {}; the boot loader fell back to {} in slot {}; {} is marked bad ({})",
                p.version, p.slot, slots.version, slots.running, p.version, crate::loader::seen()
            ))
        }
        Settle::PassedOver => {
            state.pending = None;
            let line = format!(
                "release {} in slot {} was blessed, yet the boot loader booted {} in slot {} ({}); {} is not marked bad and is installed again",
                p.version, p.slot, slots.version, slots.running, crate::loader::seen(), p.version
            );
            state.last_error = Some(line.clone());
            Some(line)
        }
    }
}

/// Why no install may start now, if one may not: an install rewrites the
/// other slot, which is the last good one while this boot is not blessed.
pub fn install_blocked(slots: &Slots, blessed: bool) -> Option<String> {
    (!blessed).then(|| {
        format!(
            "this boot ({} from slot {}) is not blessed yet: no install starts until herd-init blesses it or the boot loader falls back",
            slots.version, slots.running
        )
    })
}

/// Whether `herd-update rollback` may make the other slot boot next. `entry`
/// is the other slot's UKI or entry file name, `version` the release it
/// holds (from its UKI's os-release).
pub fn rollback_refusal(
    slots: &Slots,
    entry: Option<&str>,
    version: Option<&str>,
    bad: &[String],
) -> Result<(), Error> {
    let other = &slots.other;
    let Some(entry) = entry else {
        return Err(Error::Disk(format!(
            "slot {other} has no boot entry to roll back to (it was never installed, or its install did not finish)"
        )));
    };
    if BootEntry::parse(entry).is_some_and(|b| b.out_of_tries()) {
        return Err(Error::Disk(format!(
            "slot {other} ({entry}) has no boot tries left: it failed to come up before; refusing to roll back to it"
        )));
    }
    if let Some(v) = version.filter(|v| bad.iter().any(|b| b == v)) {
        return Err(Error::Disk(format!(
            "slot {other} holds {v}, which failed to boot here before: refusing to roll back to it"
        )));
    }
    Ok(())
}

/// Loads the trusted root baked into `/usr` (the start of the chain; the
/// newer roots this node verified since are kept in its state, see
/// [`crate::trust::current_root`]).
pub fn trusted_root(path: &Path) -> Result<Root, Error> {
    let bytes =
        std::fs::read(path).map_err(io(format!("reading the trusted keys {}", path.display())))?;
    Ok(herd_release::parse_trusted_root(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(running: &str, version: &str) -> Slots {
        Slots {
            running: Slot::parse(running).unwrap(),
            other: Slot::parse(running).unwrap().other(),
            version: version.into(),
            image: "herd".into(),
            disk: "vda".into(),
        }
    }

    fn pending() -> Pending {
        Pending {
            version: "0.2.0".into(),
            slot: "b".into(),
            boot_id: "boot-1".into(),
        }
    }

    fn no_esp() -> PendingEntry {
        panic!("the ESP is read only when this boot runs another slot")
    }

    #[test]
    fn the_boot_that_installed_waits_for_a_reboot() {
        let s = settle(&pending(), &slots("a", "0.1.0"), "boot-1", true, no_esp);
        assert_eq!(s, Settle::WaitsForReboot);
    }

    #[test]
    fn running_the_new_slot_settles_only_once_blessed() {
        let s = slots("b", "0.2.0");
        assert_eq!(
            settle(&pending(), &s, "boot-2", false, no_esp),
            Settle::WaitsForBlessing
        );
        assert_eq!(
            settle(&pending(), &s, "boot-2", true, no_esp),
            Settle::Running
        );
    }

    #[test]
    fn booting_the_old_slot_again_is_a_fallback_unless_the_entry_never_landed() {
        let s = slots("a", "0.1.0");
        for blessed in [false, true] {
            assert_eq!(
                settle(&pending(), &s, "boot-2", blessed, || PendingEntry::Counted),
                Settle::FellBack
            );
            assert_eq!(
                settle(&pending(), &s, "boot-2", blessed, || PendingEntry::Absent),
                Settle::Interrupted
            );
        }
        // The pending slot came up with another version than was written.
        for entry in [PendingEntry::Counted, PendingEntry::Blessed] {
            assert_eq!(
                settle(&pending(), &slots("b", "0.1.5"), "boot-2", true, || entry),
                Settle::FellBack
            );
        }
    }

    #[test]
    fn a_blessed_release_the_loader_passed_over_is_not_marked_bad() {
        // herd-init blessed slot b (herd-b.efi), a power cut came before
        // the updater settled, and the next boot ran slot a.
        let s = slots("a", "0.1.0");
        assert_eq!(
            settle(&pending(), &s, "boot-3", true, || PendingEntry::Blessed),
            Settle::PassedOver
        );
    }

    #[test]
    fn reconcile_keeps_pending_until_blessed_and_installs_nothing_meanwhile() {
        let s = slots("b", "0.2.0");
        let mut state = State {
            pending: Some(pending()),
            ..State::default()
        };
        let line = reconcile(&s, &mut state, false).unwrap();
        assert!(
            line.contains("running 0.2.0 from slot b, not blessed yet: waiting for herd-init"),
            "{line}"
        );
        assert_eq!(state.pending, Some(pending()));
        assert!(state.bad.is_empty());
        let why = install_blocked(&s, false).unwrap();
        assert!(
            why.contains("this boot (0.2.0 from slot b) is not blessed yet: no install starts"),
            "{why}"
        );
        assert_eq!(
            reconcile(&s, &mut state, true).as_deref(),
            Some("now running 0.2.0 from slot b")
        );
        assert_eq!(state.pending, None);
        assert_eq!(install_blocked(&s, true), None);
    }

    #[test]
    fn rollback_refuses_a_slot_out_of_tries_or_holding_a_bad_release() {
        let s = slots("a", "0.1.0");
        let bad = vec!["0.2.0".to_string()];
        rollback_refusal(&s, Some("herd-b.efi"), Some("0.1.5"), &bad).unwrap();
        rollback_refusal(&s, Some("herd-b+1-2.efi"), Some("0.1.5"), &bad).unwrap();
        let spent = herd_contract::BootEntry::fresh("herd", herd_contract::Slot::B, 0)
            .with_tries(Some(herd_contract::Tries { left: 0, done: 3 }))
            .file_name();
        let e = rollback_refusal(&s, Some(&spent), Some("0.1.5"), &bad)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("slot b ({spent}) has no boot tries left: it failed to come up before; refusing to roll back to it")
        );
        let e = rollback_refusal(&s, Some("herd-b.efi"), Some("0.2.0"), &bad)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "slot b holds 0.2.0, which failed to boot here before: refusing to roll back to it"
        );
        let e = rollback_refusal(&s, None, None, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("slot b has no boot entry to roll back to"),
            "{e}"
        );
    }
}
