//! `herd pcr predict`: the PCR values a node will report, computed on the
//! build host from the UKIs themselves (the same bytes the firmware loads).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::Digest;

use crate::boot::Slot;
use crate::manifest::SlotMeasurements;
use crate::pipeline::names;

/// Predictions for one UKI file: PCR 11 from its sections, PCR 15 from the
/// `usrhash=` and `herd.slot=` of its command line.
pub fn predict_uki(path: &Path, label: &str) -> Result<SlotMeasurements> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let parts = herd_uki::UkiParts::from_uki(&bytes).with_context(|| {
        format!(
            "{} is not a herd UKI (systemd-stub with .linux, .osrel, .cmdline, .initrd)",
            path.display()
        )
    })?;
    let cmdline = std::str::from_utf8(parts.cmdline)
        .with_context(|| format!("{}: .cmdline is not UTF-8", path.display()))?;
    let c = herd_init::cmdline::Cmdline::parse(cmdline);
    let (Some(usrhash), Some(slot)) = (c.usrhash.as_deref(), c.slot.as_deref()) else {
        bail!(
            "{}: its command line has no usrhash= or herd.slot= ({cmdline:?}): it is not a herd UKI",
            path.display()
        );
    };
    Ok(SlotMeasurements::new(label, cmdline, &parts, usrhash, slot))
}

/// Predictions for an image output directory (both slots' UKIs) or one UKI.
pub fn predict(path: &Path) -> Result<Vec<(String, SlotMeasurements)>> {
    if path.is_dir() {
        let mut out = Vec::new();
        for slot in Slot::ALL {
            let f: PathBuf = path.join(names::uki(slot));
            if !f.exists() {
                bail!(
                    "{} has no {}: is it the output directory of `herd build` (of this herd version)?",
                    path.display(),
                    names::uki(slot)
                );
            }
            out.push((slot.name().to_string(), predict_uki(&f, names::uki(slot))?));
        }
        Ok(out)
    } else {
        let m = predict_uki(path, &path.display().to_string())?;
        let slot = herd_init::cmdline::Cmdline::parse(&m.cmdline)
            .slot
            .unwrap_or_default();
        Ok(vec![(slot, m)])
    }
}

/// The text `herd pcr predict` prints.
pub fn render(p: &[(String, SlotMeasurements)]) -> String {
    let mut s = String::new();
    for (slot, m) in p {
        s.push_str(&format!("slot {slot}: {}\n", m.uki));
        s.push_str(&format!(
            "  pcr11 sha256 {}  (systemd-stub)\n",
            m.pcr11_stub
        ));
        for (phase, v) in &m.pcr11_phases {
            s.push_str(&format!("  pcr11 sha256 {v}  (after {phase})\n"));
        }
        s.push_str(&format!(
            "  pcr15 sha256 {}  (herd-init: usrhash, slot)\n",
            m.pcr15
        ));
    }
    s
}

/// Checks a node's measurement report (herd-agent's `GET /v1/measurements`)
/// against the predictions of a build: the event log replays (from the
/// stub's PCR 11 and a zero PCR 15) to the reported PCRs, and those are
/// the predicted ones for the slot the log names. With a quote, the quoted
/// PCR digest must be the reported PCRs' (the quote's signature is not
/// checked here). Returns what was found good.
pub fn verify(
    report: &herd_tpm::Report,
    predictions: &[(String, SlotMeasurements)],
) -> Result<String> {
    let slot = report
        .events
        .iter()
        .find(|e| e.pcr == herd_init::measure::PCR_USR && e.kind == "slot")
        .and_then(|e| e.data.strip_prefix("slot="))
        .context("the event log has no slot measurement: herd-init did not mount /usr (or the log is not herd-init's)")?;
    let (_, p) = predictions
        .iter()
        .find(|(s, _)| s == slot)
        .with_context(|| {
            format!("the node booted slot {slot:?}, which this build has no UKI for")
        })?;
    let hex32 = |s: &str| -> Result<[u8; 32]> {
        hex::decode(s)
            .ok()
            .and_then(|v| v.try_into().ok())
            .with_context(|| format!("{s:?} is not a SHA-256 value"))
    };
    let mut start = std::collections::BTreeMap::new();
    start.insert(herd_init::measure::PCR_UKI, hex32(&p.pcr11_stub)?);
    let replayed = herd_tpm::replay(&start, &report.events).context("the event log")?;
    let reported = |i: u32| -> Result<&String> {
        report
            .pcrs
            .get(&i)
            .with_context(|| format!("the report has no PCR {i}"))
    };
    let (r11, r15) = (reported(11)?, reported(15)?);
    for (i, r, want) in [(11, r11, &p.pcr11), (15, r15, &p.pcr15)] {
        let rep = hex::encode(replayed.get(&i).copied().unwrap_or([0; 32]));
        if &rep != r {
            bail!("PCR {i} is {r} but the event log replays to {rep}: the log does not account for what was measured");
        }
        if r != want {
            bail!(
                "PCR {i} is {r} but slot {slot} of this build ({}) gives {want}: the node runs something else",
                p.uki
            );
        }
    }
    let mut quoted = "";
    if let Some(q) = &report.quote {
        let attest = hex::decode(&q.attest).context("quote.attest is not hex")?;
        let nonce = hex::decode(&q.nonce).context("quote.nonce is not hex")?;
        let digest = sha2::Sha256::new()
            .chain_update(hex32(r11)?)
            .chain_update(hex32(r15)?)
            .finalize();
        if !attest.windows(nonce.len()).any(|w| w == nonce) || !attest.ends_with(&digest) {
            bail!("the quote does not cover the nonce and the reported PCR 11 and 15");
        }
        quoted = "; the quote covers the nonce and these PCRs (signature not checked)";
    }
    Ok(format!(
        "good: slot {slot} ({}), PCR 11 {r11} and PCR 15 {r15} as predicted; the event log ({} events) replays to them{quoted}",
        p.uki,
        report.events.len()
    ))
}
