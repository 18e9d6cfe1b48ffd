//! `herd pcr predict`: the PCR values a node will report, computed on the
//! build host from the UKIs themselves (the same bytes the firmware loads).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

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
