//! PCR 11 as systemd-stub 252 measures a UKI, and the boot phases after it.

use sha2::{Digest, Sha256};

use crate::{Error, UkiParts};

/// Boot phases systemd-pcrphase extends into PCR 11 (as the plain string,
/// no NUL), in order; herd-init extends the same words at the same points
/// (the node's contract: [`herd_contract::pcr::PHASES`]).
pub use herd_contract::pcr::PHASES;

/// `PCR := SHA256(PCR || digest)`.
pub fn extend(pcr: &mut [u8; 32], digest: &[u8; 32]) {
    let mut h = Sha256::new();
    h.update(&pcr[..]);
    h.update(digest);
    *pcr = h.finalize().into();
}

/// The PCR 11 values of one UKI (SHA-256 bank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcr11 {
    /// After systemd-stub measured the UKI's sections.
    pub stub: [u8; 32],
    /// After each of [`PHASES`], in order.
    pub phases: Vec<(&'static str, [u8; 32])>,
}

impl Pcr11 {
    /// The value a fully booted node reports (after `ready`).
    pub fn ready(&self) -> [u8; 32] {
        self.phases.last().map(|p| p.1).unwrap_or(self.stub)
    }
}

/// Predicts PCR 11 for a UKI with these sections. The stub walks its known
/// sections in a fixed order (.linux, .osrel, .cmdline, .initrd, .splash,
/// .dtb, .pcrpkey) and, for each present one, extends SHA256(name + NUL)
/// and then SHA256(data); herd's UKIs have the first four.
pub fn predict_pcr11(parts: &UkiParts<'_>) -> Pcr11 {
    let mut pcr = [0u8; 32];
    for (name, data) in [
        (".linux", parts.linux),
        (".osrel", parts.osrel),
        (".cmdline", parts.cmdline),
        (".initrd", parts.initrd),
    ] {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        extend(&mut pcr, &Sha256::digest(&n).into());
        extend(&mut pcr, &Sha256::digest(data).into());
    }
    let stub = pcr;
    let phases = PHASES
        .iter()
        .map(|p| {
            extend(&mut pcr, &Sha256::digest(p.as_bytes()).into());
            (*p, pcr)
        })
        .collect();
    Pcr11 { stub, phases }
}

impl<'a> UkiParts<'a> {
    /// Reads the four sections back out of a UKI.
    pub fn from_uki(uki: &'a [u8]) -> Result<UkiParts<'a>, Error> {
        let s = crate::sections(uki)?;
        let find = |name: &'static str| -> Result<&'a [u8], Error> {
            s.iter()
                .find(|x| x.name == name)
                .map(|x| x.data)
                .ok_or(Error::Missing(name))
        };
        Ok(UkiParts {
            osrel: find(".osrel")?,
            cmdline: find(".cmdline")?,
            linux: find(".linux")?,
            initrd: find(".initrd")?,
        })
    }
}
