//! Extending PCRs through /dev/tpmrm0 and logging each extend.

use std::io::Write;
use std::sync::Mutex;

use herd_init::measure::{self, LOG};
use herd_tpm::{Event, Tpm, DEVICE};

use crate::info;

/// Whether this boot has a TPM; decided once, said once.
static STATE: Mutex<Option<bool>> = Mutex::new(None);

fn has_tpm() -> bool {
    let mut s = STATE.lock().unwrap_or_else(|p| p.into_inner());
    *s.get_or_insert_with(|| {
        let ok = std::fs::metadata(DEVICE).is_ok();
        if !ok {
            info!("no TPM ({DEVICE} is missing): measured boot is off for this boot");
        }
        ok
    })
}

/// Extends `e.pcr` with `e.digest` and appends `e` to the event log.
/// A failure is logged and the boot goes on: a node without a working TPM
/// still boots, and a verifier sees the PCRs do not match.
pub fn extend(e: &Event) {
    if !has_tpm() {
        return;
    }
    let Some(d) = e.digest_bytes() else {
        return;
    };
    let r = Tpm::open(DEVICE).and_then(|mut t| t.pcr_extend(e.pcr, &d));
    if let Err(err) = r {
        info!("cannot extend PCR {} with {}: {err}", e.pcr, e.data);
        return;
    }
    let _ = std::fs::create_dir_all("/run/herd");
    let logged = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(LOG)
        .and_then(|mut f| writeln!(f, "{}", e.to_line()));
    if let Err(err) = logged {
        info!("cannot append to {LOG}: {err}");
    }
}

/// Extends PCR 11 with a boot phase.
pub fn phase(name: &str) {
    extend(&measure::phase(name));
}

/// Logs the PCR values herd-init's measurements ended in (for the console
/// and for tests; the agent's API serves them to verifiers).
pub fn report() {
    if !has_tpm() {
        return;
    }
    match Tpm::open(DEVICE).and_then(|mut t| t.pcr_read(&[measure::PCR_UKI, measure::PCR_USR])) {
        Ok(v) => info!(
            "measured boot: {}",
            v.iter()
                .map(|(p, d)| format!("pcr{p}=sha256:{}", hex(d)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Err(e) => info!("cannot read PCRs back: {e}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
