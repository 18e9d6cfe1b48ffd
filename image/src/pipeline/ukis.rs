//! One Unified Kernel Image per slot (they differ only in the command
//! line's `herd.slot=`), with the PCR values each one measures to.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::inputs::{BootParts, STUB};
use super::{names, os_release, MIB};
use crate::boot::{slot_cmdline, Slot};
use crate::config::{human_bytes, ImageConfig};
use crate::manifest::{Measured, SlotMeasurements};
use crate::progress::Progress;

/// Slot A's and slot B's UKIs, in [`Slot::ALL`]'s order.
pub(super) struct Ukis {
    pub images: Vec<Vec<u8>>,
    pub measured: Measured,
}

impl Ukis {
    /// Slot A's UKI.
    pub(super) fn a(&self) -> &[u8] {
        &self.images[0]
    }

    /// Slot B's UKI.
    pub(super) fn b(&self) -> &[u8] {
        &self.images[1]
    }
}

/// Assembles both slots' UKIs side by side on systemd-stub, then checks
/// that the ESP holds both of them and systemd-boot.
pub(super) fn assemble(
    cfg: &ImageConfig,
    image_toml: &Path,
    boot: &BootParts,
    initrd: &[u8],
    usrhash: &str,
    usr_a_uuid: &str,
    progress: &Progress,
) -> Result<Ukis> {
    let step = progress.step("assembling the Unified Kernel Images (systemd-stub)");
    let osrel = os_release(&cfg.image.name, &cfg.image.version);
    let built: Vec<(Vec<u8>, SlotMeasurements)> = {
        use rayon::prelude::*;
        Slot::ALL
            .par_iter()
            .map(|&slot| -> Result<_> {
                let cmdline = slot_cmdline(usrhash, usr_a_uuid, slot, &cfg.kernel.cmdline);
                let parts = herd_uki::UkiParts {
                    osrel: osrel.as_bytes(),
                    cmdline: cmdline.as_bytes(),
                    linux: &boot.kernel.vmlinuz,
                    initrd,
                };
                let uki = herd_uki::assemble(&boot.stub, &parts).with_context(|| {
                    format!(
                        "assembling slot {}'s UKI on {STUB} of {}",
                        slot.name(),
                        cfg.bootloader.package
                    )
                })?;
                let m =
                    SlotMeasurements::new(names::uki(slot), &cmdline, &parts, usrhash, slot.name());
                Ok((uki, m))
            })
            .collect::<Result<_>>()?
    };
    let mut images = Vec::new();
    let mut measured = Measured::default();
    for (slot, (uki, m)) in Slot::ALL.iter().zip(built) {
        measured.slots.insert(slot.name().to_string(), m);
        images.push(uki);
    }
    // The ESP must hold both slots' UKIs (the updater removes the other
    // slot's old UKI, then writes the new one beside the running one) and
    // systemd-boot, with room for the FAT.
    let esp_needed = 2 * images[0].len() as u64 + boot.systemd_boot.len() as u64 + 2 * MIB;
    if esp_needed > cfg.partitions.esp.0 {
        bail!(
            "the ESP is too small: partitions.esp is {} but two slots' UKIs ({} each) and systemd-boot \
             need {}; raise partitions.esp in {}",
            human_bytes(cfg.partitions.esp.0),
            human_bytes(images[0].len() as u64),
            human_bytes(esp_needed),
            image_toml.display()
        );
    }
    step.done(&format!(
        "{} each, PCR 11 of slot a {}",
        human_bytes(images[0].len() as u64),
        measured.slots["a"].pcr11
    ));
    Ok(Ukis { images, measured })
}
