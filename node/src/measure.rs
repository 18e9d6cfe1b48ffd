//! Measured boot: what herd-init extends into the TPM, shared with the image
//! builder's predictions (`herd pcr predict`).
//!
//! - PCR 11 (systemd-stub measured the UKI into it): the boot phases
//!   `enter-initrd`, `leave-initrd`, `sysinit`, `ready`, as systemd-pcrphase
//!   does, so the running node's PCR 11 is what `systemd-measure calculate`
//!   prints for its last phase.
//! - PCR 15: `usrhash=<hex>` (the dm-verity root hash herd-init set up and
//!   mounted /usr with), then `slot=<a|b>` (from the GPT name of the USR
//!   partition it found).
//!
//! Every extend is one line in [`LOG`] (see `herd_tpm::eventlog`).

use std::collections::BTreeMap;

use herd_tpm::Event;

/// The PCR systemd-stub measures the UKI into, and the boot phases go to.
pub const PCR_UKI: u32 = herd_contract::pcr::PHASE_PCR;
/// The PCR herd-init measures the mounted /usr and the slot into.
pub const PCR_USR: u32 = herd_contract::pcr::USR_PCR;
/// herd-init's event log (JSON lines), kept across the switch to the real root.
pub const LOG: &str = "/run/herd/measurements.jsonl";

/// The event of a boot phase.
pub fn phase(name: &str) -> Event {
    Event::new(PCR_UKI, "phase", name)
}

/// The events of the mounted /usr: its root hash, then its slot.
pub fn usr_events(usrhash: &str, slot: &str) -> [Event; 2] {
    [
        Event::new(PCR_USR, "usrhash", &format!("usrhash={usrhash}")),
        Event::new(PCR_USR, "slot", &format!("slot={slot}")),
    ]
}

/// PCR 15 of a node that booted `usrhash` from `slot`.
pub fn predict_pcr15(usrhash: &str, slot: &str) -> [u8; 32] {
    let pcrs = herd_tpm::replay(&BTreeMap::new(), &usr_events(usrhash, slot))
        .expect("events made here replay");
    pcrs[&PCR_USR]
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn pcr15_is_two_extends_from_zero() {
        let h = "ab".repeat(32);
        let mut pcr = [0u8; 32];
        for d in [format!("usrhash={h}"), "slot=a".to_string()] {
            let digest = Sha256::digest(d.as_bytes());
            pcr = Sha256::new()
                .chain_update(pcr)
                .chain_update(digest)
                .finalize()
                .into();
        }
        assert_eq!(predict_pcr15(&h, "a"), pcr);
        assert_ne!(predict_pcr15(&h, "b"), pcr);
    }
}
