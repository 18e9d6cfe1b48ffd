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
use std::sync::Arc;

use anyhow::{Context, Result};

use herd_gpt::{guid_from_name, Guid};

use crate::boot::EspContent;
use crate::config::{human_bytes, ImageConfig};
use crate::manifest::{KernelInfo, Manifest, UsrInfo};
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
    /// in `herd.slot=`).
    pub const UKI_A: &str = "boot/uki-a.efi";
    pub const UKI_B: &str = "boot/uki-b.efi";

    /// The UKI output of a slot.
    pub fn uki(slot: herd_contract::Slot) -> &'static str {
        match slot {
            herd_contract::Slot::A => UKI_A,
            herd_contract::Slot::B => UKI_B,
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

    // Configuration is checked before any time is spent.
    let init_toml = inputs::init_config(&cfg, &opts.image_toml)?;
    let update = match &cfg.update {
        Some(table) => Some(inputs::update_files(table, &opts.image_toml)?),
        None => None,
    };
    let staging = Staging::create(&opts.out)?;
    let packages = inputs::Packages::open(&cfg, opts, &progress)?;
    let boot = inputs::BootParts::read(&cfg, &packages, &progress)?;

    let step = progress.step("assembling /usr");
    let bins = inputs::read_binaries(&opts.bin_dir, &cfg.usr.binaries)?;
    let usr = usr::assemble(usr::UsrInputs {
        cfg: &cfg,
        image_toml: &opts.image_toml,
        bins: &bins,
        boot: &boot,
        packages: &packages,
        init_toml,
        update: update.as_ref(),
        mtime,
    })?;
    let usr_files = usr.walk().len() as u64;
    let usr_file_bytes = usr.file_bytes();
    step.done(&format!(
        "{usr_files} entries, {}",
        human_bytes(usr_file_bytes)
    ));

    let step = progress.step("writing the initramfs");
    let initrd = usr::initramfs(&bins, &boot.initrd_modules, &boot.kernel.version, mtime)?;
    step.done(&human_bytes(initrd.len() as u64));

    // STATE's ext4 is made by mke2fs while /usr is compressed.
    let early_disk = disk::EarlyDisk::create(&cfg, &staging, epoch)?;

    let block_cache = opts
        .block_cache
        .then(|| crate::block_cache::in_package_cache(&opts.cache_dir));
    let usr_image::Compressed { squashfs, prune } =
        usr_image::compress(&usr, &cfg, &opts.image_toml, block_cache, mtime, &progress)?;
    drop(usr);
    let verity = usr_image::verity(name, &squashfs, &progress)?;
    let squashfs = Arc::new(squashfs);
    let hash_area = Arc::new(verity.hash_area);
    let usrhash = verity.usrhash;

    let (usr_a_uuid, usr_a_verity_uuid) = usr_partition_uuids(&verity.root_hash);
    let table = disk::table(&cfg, (usr_a_uuid, usr_a_verity_uuid), &usrhash)?;
    early_disk.check_layout(&table)?;

    let ukis = ukis::assemble(
        &cfg,
        &opts.image_toml,
        &boot,
        &initrd,
        &usrhash,
        &usr_a_uuid.to_string(),
        &progress,
    )?;

    let step = progress.step(&format!(
        "writing {} ({})",
        names::DISK,
        human_bytes(early_disk.bytes())
    ));
    let written_disk = disk::write(
        early_disk,
        &table,
        disk::DiskContent {
            esp: EspContent {
                image: name,
                systemd_boot: &boot.systemd_boot,
                uki_a: ukis.a(),
                tries: cfg.bootloader.tries,
                timeout: cfg.bootloader.timeout,
            },
            squashfs: squashfs.clone(),
            hash_area: hash_area.clone(),
            mtime,
        },
    )?;
    step.done(&format!("{} partitions", table.partitions.len()));

    let payloads = outputs::Payloads {
        usr: &squashfs,
        usr_verity: &hash_area,
        kernel: &boot.kernel.vmlinuz,
        initrd: &initrd,
        bootloader: &boot.systemd_boot,
        uki_a: ukis.a(),
        uki_b: ukis.b(),
    };
    let written = outputs::write(
        &staging,
        &payloads,
        &outputs::SbomInput {
            name,
            version,
            usrhash: &usrhash,
            epoch,
            packages: &packages.infos,
            bins: &bins,
        },
        opts.qcow2,
        &progress,
    )?;
    let step = progress.step("hashing outputs");
    let mut output_infos = outputs::hash(&staging, &written, &payloads)?;
    output_infos.insert(0, written_disk.finish()?);
    step.done(&format!("{} files", output_infos.len()));

    let cmdline = ukis.measured.slots["a"].cmdline.clone();
    let manifest = Manifest {
        name: name.to_string(),
        version: version.to_string(),
        source_date_epoch: epoch,
        kernel: KernelInfo {
            package: cfg.kernel.package.clone(),
            release: boot.kernel.version.clone(),
            initrd_modules: boot
                .initrd_modules
                .load_order
                .iter()
                .map(|m| m.name.clone())
                .collect(),
            usr_modules: boot
                .usr_modules
                .load_order
                .iter()
                .map(|m| m.name.clone())
                .collect(),
        },
        usr: UsrInfo {
            usrhash,
            verity_salt: hex::encode(verity.salt),
            verity_data_blocks: verity.data_blocks,
            squashfs_bytes: squashfs.len() as u64,
            verity_bytes: hash_area.len() as u64,
            files: usr_files,
            file_bytes: usr_file_bytes,
        },
        cmdline,
        measured: ukis.measured,
        partitions: disk::partition_infos(&table),
        outputs: output_infos,
        packages: packages.infos,
    };
    let json = serde_json::to_vec_pretty(&manifest)?;
    staging.commit(&written.names, &json)?;
    if let Some(p) = prune {
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

/// Where the block size of dm-verity's data and hash blocks is used.
const VERITY_BLOCK: u32 = 4096;

fn os_release(name: &str, version: &str) -> String {
    format!(
        "NAME=\"herd\"\nID=herd\nPRETTY_NAME=\"herd {version}\"\nVERSION_ID={version}\nIMAGE_ID={name}\nIMAGE_VERSION={version}\nHOME_URL=\"https://github.com/herd-os/herd\"\n"
    )
}
