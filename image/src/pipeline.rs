//! `herd build`: from an image description to a bootable A/B disk image and
//! its update payload.
//!
//! [`build`] runs the steps in order, each a module of its own:
//! - [`inputs`]: read the description, check herd-init's and herd-update's
//!   configuration with their own types, read herd's binaries, check every
//!   package against the lock and open them all side by side (fetching with
//!   apt-get when allowed), read the kernel and the boot loader;
//! - [`usr`]: assemble `/usr` and the initramfs as in-memory trees;
//! - [`disk`]: create disk.raw (its layout needs only the configured sizes)
//!   and start mke2fs on its STATE;
//! - [`usr_image`]: write the squashfs and its dm-verity tree;
//! - [`ukis`]: name USR-A's partitions after the root hash, make both
//!   slots' UKIs with their PCR values;
//! - [`disk`] again: write the GPT, ESP, USR-A and USR-A-verity into
//!   disk.raw while its sha256 is taken from the same bytes in memory;
//! - [`outputs`]: write and hash the payload files and the SBOM;
//! - commit them with the manifest ([`crate::output::Staging`]).

use std::path::PathBuf;

use anyhow::{Context, Result};

use herd_gpt::{guid_from_name, Guid};

use crate::config::{human_bytes, ImageConfig};
use crate::manifest::{
    KernelInfo, Manifest, Measured, OutputInfo, PackageInfo, PartitionInfo, UsrInfo,
};
use crate::output::Staging;
use crate::progress::Progress;

mod disk;
mod inputs;
mod outputs;
mod ukis;
mod usr;
mod usr_image;

/// Everything `herd build` takes besides the image description.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub image_toml: PathBuf,
    pub out: PathBuf,
    pub bin_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub fetch: bool,
    /// Reuse and fill the compressed-block cache in the package cache.
    pub block_cache: bool,
    pub qcow2: bool,
    pub source_date_epoch: u64,
    pub quiet: bool,
}

/// Paths of outputs inside the output directory.
pub mod names {
    pub const DISK: &str = "disk.raw";
    pub const QCOW2: &str = "disk.qcow2";
    pub const USR: &str = herd_contract::payload::USR_IMG;
    pub const USR_VERITY: &str = herd_contract::payload::USR_VERITY;
    pub const KERNEL: &str = "boot/linux";
    pub const INITRD: &str = "boot/initrd";
    pub const BOOTLOADER: &str = "boot/BOOTX64.EFI";
    pub const SBOM: &str = crate::sbom::FILE;
    /// Slot A's and slot B's Unified Kernel Images (the command lines differ
    /// in `herd.slot=`): `boot/<payload role>.efi`, the roles of
    /// [`herd_contract::payload::uki`] (a unit test holds them together).
    pub const UKI_A: &str = "boot/uki-a.efi";
    pub const UKI_B: &str = "boot/uki-b.efi";

    /// The UKI output of a slot.
    pub fn uki(slot: herd_contract::Slot) -> &'static str {
        match slot {
            herd_contract::Slot::A => UKI_A,
            herd_contract::Slot::B => UKI_B,
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn uki_outputs_are_named_after_their_payload_roles() {
            for slot in herd_contract::Slot::ALL {
                let role = herd_contract::payload::uki(slot);
                assert_eq!(super::uki(slot), format!("boot/{role}.efi"));
            }
        }
    }
}

const MIB: u64 = 1024 * 1024;

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// A GUID derived from the image name and a purpose string.
fn named_guid(image: &str, what: &str) -> Guid {
    guid_from_name(&format!("herd-image:{image}"), what)
}

/// The slot's partition UUIDs from its root hash
/// ([`herd_contract::partition::uuids_from_root_hash`]).
pub fn usr_partition_uuids(root_hash: &[u8; 32]) -> (Guid, Guid) {
    let (data, verity) = herd_contract::partition::uuids_from_root_hash(root_hash);
    (Guid(data), Guid(verity))
}

/// Run a whole build. Returns the manifest that was written.
pub fn build(opts: &BuildOptions) -> Result<Manifest> {
    let progress = Progress::new(opts.quiet);
    let cfg = ImageConfig::load(&opts.image_toml)?;
    let epoch = opts.source_date_epoch;
    let mtime = u32::try_from(epoch).context("SOURCE_DATE_EPOCH does not fit in 32 bits")?;
    let name = cfg.image.name.as_str();
    let version = cfg.image.version.as_str();

    let inputs = inputs::Inputs::read(&cfg, opts, &progress)?;
    let staging = Staging::create(&opts.out)?;
    // STATE's ext4 is made by mke2fs while /usr is assembled and compressed.
    let early_disk = disk::EarlyDisk::create(&cfg, &staging, epoch)?;
    let usr = usr::assemble(&cfg, &opts.image_toml, &inputs, mtime, &progress)?;
    let initrd = usr::initramfs(&inputs, mtime, &progress)?;
    let mut slot = usr_image::make(usr, &cfg, opts, mtime, &progress)?;

    let (usr_a_uuid, usr_a_verity_uuid) = usr_partition_uuids(&slot.root_hash);
    let table = disk::table(&cfg, (usr_a_uuid, usr_a_verity_uuid), &slot.usrhash)?;
    early_disk.check_layout(&table)?;
    let ukis = ukis::assemble(
        &cfg,
        &opts.image_toml,
        &inputs.boot,
        &initrd,
        &slot.usrhash,
        &usr_a_uuid.to_string(),
        &progress,
    )?;
    let content = disk::DiskContent::new(&cfg, &inputs.boot, ukis.a(), &slot, mtime);
    let written_disk = disk::write(early_disk, &table, content, &progress)?;

    let boot = &inputs.boot;
    let payloads = outputs::Payloads {
        usr: &slot.squashfs,
        usr_verity: &slot.hash_area,
        kernel: &boot.kernel.vmlinuz,
        initrd: &initrd,
        bootloader: &boot.systemd_boot,
        uki_a: ukis.a(),
        uki_b: ukis.b(),
    };
    let sbom = outputs::SbomInput {
        name,
        version,
        usrhash: &slot.usrhash,
        epoch,
        packages: &inputs.packages.infos,
        bins: &inputs.bins,
    };
    let written = outputs::write(&staging, &payloads, &sbom, opts.qcow2, &progress)?;
    let output_infos = outputs::hash(&staging, &written, &payloads, written_disk, &progress)?;
    let manifest = manifest(
        &cfg,
        epoch,
        boot,
        slot.info(),
        ukis.measured,
        disk::partition_infos(&table),
        output_infos,
        inputs.packages.infos.clone(),
    );
    let json = serde_json::to_vec_pretty(&manifest)?;
    staging.commit(&written.names, &json)?;
    if let Some(p) = slot.prune.take() {
        let _ = p.join();
    }
    progress.info(&format!(
        "built {name} {version} into {} in {:.2} s: /usr payload {} (squashfs {} + verity {})",
        opts.out.display(),
        progress.elapsed_secs(),
        human_bytes(manifest.usr.squashfs_bytes + manifest.usr.verity_bytes),
        human_bytes(manifest.usr.squashfs_bytes),
        human_bytes(manifest.usr.verity_bytes),
    ));
    Ok(manifest)
}

/// What the build made, as `build.json` says it.
#[allow(clippy::too_many_arguments)]
fn manifest(
    cfg: &ImageConfig,
    epoch: u64,
    boot: &inputs::BootParts,
    usr: UsrInfo,
    measured: Measured,
    partitions: Vec<PartitionInfo>,
    outputs: Vec<OutputInfo>,
    packages: Vec<PackageInfo>,
) -> Manifest {
    let names =
        |m: &herd_buildroot::ModuleSet| m.load_order.iter().map(|m| m.name.clone()).collect();
    Manifest {
        name: cfg.image.name.clone(),
        version: cfg.image.version.clone(),
        source_date_epoch: epoch,
        kernel: KernelInfo {
            package: cfg.kernel.package.clone(),
            release: boot.kernel.version.clone(),
            initrd_modules: names(&boot.initrd_modules),
            usr_modules: names(&boot.usr_modules),
        },
        usr,
        cmdline: measured.slots["a"].cmdline.clone(),
        measured,
        partitions,
        outputs,
        packages,
    }
}

/// Where the block size of dm-verity's data and hash blocks is used.
const VERITY_BLOCK: u32 = 4096;

fn os_release(name: &str, version: &str) -> String {
    format!(
        "NAME=\"herd\"\nID=herd\nPRETTY_NAME=\"herd {version}\"\nVERSION_ID={version}\nIMAGE_ID={name}\nIMAGE_VERSION={version}\nHOME_URL=\"https://github.com/herd-os/herd\"\n"
    )
}
