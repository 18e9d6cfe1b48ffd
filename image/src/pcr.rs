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
    let c = herd_contract::cmdline::Cmdline::parse(cmdline);
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
        let slot = herd_contract::cmdline::Cmdline::parse(&m.cmdline)
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
/// the predicted ones for the slot the log names, and the report carries a
/// valid quote (see [`check_quote`]): a report without one is refused, as
/// its PCRs are only the node's word. Returns what was found good, with a
/// `not checked:` line naming what `--nonce` and `--ak` would add.
pub fn verify(
    report: &herd_tpm::Report,
    predictions: &[(String, SlotMeasurements)],
    expect: &QuoteExpectation,
) -> Result<String> {
    let slot = report
        .events
        .iter()
        .find(|e| e.pcr == herd_node::measure::PCR_USR && e.kind == "slot")
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
    start.insert(herd_node::measure::PCR_UKI, hex32(&p.pcr11_stub)?);
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
    let Some(q) = &report.quote else {
        if expect.nonce.is_some() || expect.ak.is_some() {
            bail!("the report has no quote, but --nonce or --ak asks for one: fetch it with GET /v1/measurements?nonce=HEX");
        }
        bail!(
            "not verified: the report carries no quote; its event log replays to its PCR 11 and 15 and those are slot {slot}'s of this build, \
             but without a TPM quote they are only what the node (or anyone) wrote: fetch the report with GET /v1/measurements?nonce=HEX \
             and check it with --nonce HEX --ak sha256:..."
        );
    };
    let quoted = check_quote(q, &hex32(r11)?, &hex32(r15)?, expect)?;
    let mut unchecked = Vec::new();
    if expect.nonce.is_none() {
        unchecked.push("freshness (no --nonce: this may be an old quote replayed)");
    }
    if expect.ak.is_none() {
        unchecked.push("key identity (no --ak: a quote signed by any TPM's key is accepted)");
    }
    Ok(format!(
        "good: slot {slot} ({}), PCR 11 {r11} and PCR 15 {r15} as predicted; the event log ({} events) replays to them{quoted}{}",
        p.uki,
        report.events.len(),
        if unchecked.is_empty() {
            String::new()
        } else {
            format!("\nnot checked: {}", unchecked.join("; "))
        }
    ))
}

/// What the verifier knows beyond the report.
#[derive(Debug, Default, Clone)]
pub struct QuoteExpectation {
    /// The nonce it sent.
    pub nonce: Option<Vec<u8>>,
    /// The attestation key it trusts (`sha256:<hex>` of its TPMT_PUBLIC).
    pub ak: Option<String>,
}

/// The fingerprint `herd pcr verify` prints and `--ak` takes.
pub fn ak_fingerprint(public: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(public)))
}

/// Checks a quote: a TPM-made TPMS_ATTEST (TPM_GENERATED_VALUE, type quote)
/// of SHA-256 PCRs 11 and 15 whose digest is the reported values', over the
/// report's nonce (and the verifier's, if given); signed (ECDSA P-256,
/// SHA-256) by the key in the report, a restricted fixedTPM signing key
/// (which signs only what the TPM itself made), pinned by `--ak` if given.
/// Returns the sentence for the verdict.
pub fn check_quote(
    q: &herd_tpm::QuoteJson,
    pcr11: &[u8; 32],
    pcr15: &[u8; 32],
    expect: &QuoteExpectation,
) -> Result<String> {
    use herd_tpm::attest::{EccPublic, EcdsaSignature, QuoteAttest, AK_ATTRIBUTES};
    use p256::ecdsa::signature::Verifier;
    let bytes =
        |what: &str, h: &str| hex::decode(h).with_context(|| format!("quote.{what} is not hex"));
    let (attest_b, sig_b, public_b) = (
        bytes("attest", &q.attest)?,
        bytes("signature", &q.signature)?,
        bytes("public", &q.public)?,
    );
    let nonce = bytes("nonce", &q.nonce)?;
    let attest = QuoteAttest::parse(&attest_b).context("quote.attest")?;
    if attest.extra_data != nonce {
        bail!(
            "the quote is over nonce {}, not the report's {}",
            hex::encode(&attest.extra_data),
            q.nonce
        );
    }
    if let Some(n) = &expect.nonce {
        if &attest.extra_data != n {
            bail!(
                "the quote is over nonce {}, not the one sent ({}): a replayed or foreign report",
                hex::encode(&attest.extra_data),
                hex::encode(n)
            );
        }
    }
    if attest.pcrs != [11, 15] {
        bail!("the quote covers PCRs {:?}, not 11 and 15", attest.pcrs);
    }
    let digest = sha2::Sha256::new()
        .chain_update(pcr11)
        .chain_update(pcr15)
        .finalize();
    if attest.pcr_digest != digest.as_slice() {
        bail!("the quote's PCR digest is not that of the reported PCR 11 and 15: the report's PCRs are not what the TPM quoted");
    }
    let key = EccPublic::parse(&public_b).context("quote.public")?;
    if key.curve != 3 || key.attributes & AK_ATTRIBUTES != AK_ATTRIBUTES {
        bail!(
            "the quote's key (curve {:#x}, attributes {:#010x}) is not a fixedTPM restricted P-256 signing key",
            key.curve,
            key.attributes
        );
    }
    let fingerprint = ak_fingerprint(&public_b);
    if let Some(pin) = &expect.ak {
        if pin != &fingerprint {
            bail!("the quote is signed by the TPM key {fingerprint}, not the pinned {pin}: another TPM (or a forged key)");
        }
    }
    let pad = |v: &[u8]| -> Result<[u8; 32]> {
        if v.len() > 32 {
            bail!("an ECDSA P-256 value longer than 32 bytes");
        }
        let mut out = [0u8; 32];
        out[32 - v.len()..].copy_from_slice(v);
        Ok(out)
    };
    let point = p256::EncodedPoint::from_affine_coordinates(
        &pad(&key.x)?.into(),
        &pad(&key.y)?.into(),
        false,
    );
    let vk = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
        .map_err(|e| anyhow::anyhow!("quote.public is not a P-256 point: {e}"))?;
    let sig = EcdsaSignature::parse(&sig_b).context("quote.signature")?;
    if sig.hash != 0x000b {
        bail!(
            "the quote is signed over hash algorithm {:#06x}, not SHA-256",
            sig.hash
        );
    }
    let sig = p256::ecdsa::Signature::from_scalars(pad(&sig.r)?, pad(&sig.s)?)
        .map_err(|e| anyhow::anyhow!("quote.signature: {e}"))?;
    vk.verify(&attest_b, &sig)
        .map_err(|_| anyhow::anyhow!("the quote's signature does not verify against its key {fingerprint}: the quote was altered"))?;
    Ok(format!(
        "; the quote (TPM reset count {}) covers the nonce and these PCRs and is signed by TPM key {fingerprint}{}",
        attest.reset_count,
        if expect.ak.is_some() { " (pinned)" } else { "" }
    ))
}
