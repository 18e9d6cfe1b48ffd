//! The files beside disk.raw: the update payloads (/usr, its verity tree,
//! both UKIs), the kernel, initramfs and boot loader for direct boots, the
//! SBOM, optionally a qcow2 copy of the disk; and the sha256 of each.

use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::names;
use crate::manifest::{OutputInfo, PackageInfo};
use crate::output::Staging;
use crate::progress::Progress;

/// The bytes of every output but the disk images, still in memory.
pub(super) struct Payloads<'a> {
    pub usr: &'a [u8],
    pub usr_verity: &'a [u8],
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    pub bootloader: &'a [u8],
    pub uki_a: &'a [u8],
    pub uki_b: &'a [u8],
}

/// What the SBOM describes.
pub(super) struct SbomInput<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub usrhash: &'a str,
    pub epoch: u64,
    pub packages: &'a [PackageInfo],
    pub bins: &'a [(String, Arc<[u8]>)],
}

/// The files written, in the manifest's order (disk.raw first).
pub(super) struct Written {
    pub names: Vec<String>,
    pub sbom: Vec<u8>,
}

/// Writes the payload files and the SBOM into `staging`, and the qcow2
/// copy of disk.raw when asked.
pub(super) fn write(
    staging: &Staging,
    p: &Payloads,
    sbom: &SbomInput,
    qcow2: bool,
    progress: &Progress,
) -> Result<Written> {
    staging.write(names::USR, p.usr)?;
    staging.write(names::USR_VERITY, p.usr_verity)?;
    staging.write(names::KERNEL, p.kernel)?;
    staging.write(names::INITRD, p.initrd)?;
    staging.write(names::BOOTLOADER, p.bootloader)?;
    let binaries: Vec<crate::sbom::Binary> = sbom
        .bins
        .iter()
        .map(|(n, d)| crate::sbom::Binary { name: n, data: d })
        .collect();
    let sbom = crate::sbom::spdx(&crate::sbom::Input {
        name: sbom.name,
        version: sbom.version,
        usrhash: sbom.usrhash,
        epoch: sbom.epoch,
        packages: sbom.packages,
        binaries: &binaries,
    })
    .context("reading the Cargo.lock herd was built with, for the SBOM")?;
    staging.write(names::SBOM, &sbom)?;
    staging.write(names::UKI_A, p.uki_a)?;
    staging.write(names::UKI_B, p.uki_b)?;
    let mut names: Vec<String> = [
        names::DISK,
        names::USR,
        names::USR_VERITY,
        names::KERNEL,
        names::INITRD,
        names::BOOTLOADER,
        names::SBOM,
        names::UKI_A,
        names::UKI_B,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if qcow2 {
        let step = progress.step("converting to qcow2");
        let q = staging.path(names::QCOW2)?;
        crate::qcow2::convert(&staging.path(names::DISK)?, &q)?;
        names.push(names::QCOW2.to_string());
        step.done(names::QCOW2);
    }
    Ok(Written { names, sbom })
}

/// sha256 and size of every output, disk.raw's from its hashing thread:
/// payload files from the bytes still in memory, disk images from their
/// files (holes fed from a zero buffer).
pub(super) fn hash(
    staging: &Staging,
    written: &Written,
    p: &Payloads,
    disk: super::disk::WrittenDisk,
    progress: &Progress,
) -> Result<Vec<OutputInfo>> {
    let step = progress.step("hashing outputs");
    let mut infos = hash_files(staging, written, p)?;
    infos.insert(0, disk.finish()?);
    step.done(&format!("{} files", infos.len()));
    Ok(infos)
}

fn hash_files(staging: &Staging, written: &Written, p: &Payloads) -> Result<Vec<OutputInfo>> {
    use rayon::prelude::*;
    let in_memory: [(&str, &[u8]); 8] = [
        (names::SBOM, &written.sbom),
        (names::USR, p.usr),
        (names::USR_VERITY, p.usr_verity),
        (names::KERNEL, p.kernel),
        (names::INITRD, p.initrd),
        (names::BOOTLOADER, p.bootloader),
        (names::UKI_A, p.uki_a),
        (names::UKI_B, p.uki_b),
    ];
    debug_assert_eq!(written.names[0], names::DISK);
    written.names[1..]
        .par_iter()
        .map(|n| {
            let (sha256, size) = match in_memory.iter().find(|(m, _)| m == n) {
                Some((_, bytes)) => (hex::encode(Sha256::digest(bytes)), bytes.len() as u64),
                None => {
                    let path = staging.path(n)?;
                    crate::sparse::sha256_file(&path)
                        .with_context(|| format!("hashing {}", path.display()))?
                }
            };
            Ok(OutputInfo {
                path: n.clone(),
                sha256,
                size,
            })
        })
        .collect()
}
