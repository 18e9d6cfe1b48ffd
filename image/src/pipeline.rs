//! `herd build`: from an image description to a bootable A/B disk image and
//! its update payload.
//!
//! Steps: read the description and the lock; make sure every package is in
//! the cache (fetching with apt-get when allowed) and open them all side by
//! side; assemble `/usr` and the initramfs as in-memory trees; create
//! disk.raw (its layout needs only the configured sizes) and start mke2fs
//! on its STATE; write the squashfs and its dm-verity tree; name USR-A's
//! partitions after the root hash; make the UKIs and the ESP; write the GPT,
//! ESP, USR-A and USR-A-verity into disk.raw while its sha256 is taken from
//! the same bytes in memory; write and hash the payload files; commit.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use herd_buildroot::{Cache, Deb, Fetch, KernelPackage, Lock};
use herd_fstree::{Meta, Node, Tree};
use herd_gpt::{attrs, guid_from_name, types, Guid};

use crate::boot::{slot_cmdline, EspContent, Slot};
use crate::config::{human_bytes, ImageConfig};
use crate::manifest::{
    KernelInfo, Manifest, Measured, OutputInfo, PackageInfo, PartitionInfo, SlotMeasurements,
    UsrInfo,
};
use crate::output::Staging;
use crate::progress::Progress;
use herd_contract::partition;

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

    // Validate herd-init's configuration with herd-init's own type before
    // spending any time: a typo there would only show at boot otherwise.
    let init_toml = match &cfg.init {
        Some(table) => {
            let text = toml::to_string(table).context("serialising [init]")?;
            herd_node::config::Config::parse(&text).with_context(|| {
                format!(
                    "{}: [init] is not a valid herd-init configuration",
                    opts.image_toml.display()
                )
            })?;
            text
        }
        None => String::new(),
    };

    let update = match &cfg.update {
        Some(table) => Some(update_files(table, &opts.image_toml)?),
        None => None,
    };

    let staging = Staging::create(&opts.out)?;

    // ---- packages -------------------------------------------------------
    let lock_path = cfg.lock_path(&opts.image_toml);
    let lock = Lock::load(&lock_path)?;
    let cache = Cache::new(opts.cache_dir.clone());
    let fetch = if opts.fetch {
        Fetch::AptGet
    } else {
        Fetch::Never
    };
    let mut wanted: Vec<&str> = vec![cfg.kernel.package.as_str(), cfg.bootloader.package.as_str()];
    wanted.extend(cfg.usr.package.iter().map(|p| p.name.as_str()));
    let step = progress.step(&format!(
        "checking {} packages against {}",
        wanted.len(),
        lock_path.display()
    ));
    let mut locked = Vec::new();
    for pkg_name in &wanted {
        let pkg = lock.get(pkg_name).with_context(|| {
            format!(
                "package {pkg_name:?} is not in the lock file {}: add it there (name, version, arch, sha256)",
                lock_path.display()
            )
        })?;
        locked.push(pkg.clone());
    }
    let packages: Vec<PackageInfo> = locked
        .iter()
        .map(|pkg| PackageInfo {
            name: pkg.name.clone(),
            version: pkg.version.clone(),
            arch: pkg.arch.clone(),
            sha256: pkg.sha256.clone(),
        })
        .collect();
    // Each .deb is checked against the lock and its data archive opened
    // (from the cache's unpacked copy when it has one), all side by side.
    let opened: Vec<(PathBuf, Deb)> = {
        use rayon::prelude::*;
        locked
            .par_iter()
            .map(|pkg| -> Result<(PathBuf, Deb)> {
                cache
                    .open(pkg, fetch, &|msg: &str| progress.info(msg))
                    .with_context(|| format!("getting package {}", pkg.name))
            })
            .collect::<Result<_>>()?
    };
    let (debs, opened): (Vec<PathBuf>, Vec<Deb>) = opened.into_iter().unzip();
    step.done(&format!(
        "{} packages verified in {}",
        debs.len(),
        opts.cache_dir.display()
    ));

    // ---- kernel and boot loader ----------------------------------------
    let step = progress.step(&format!("reading kernel {}", cfg.kernel.package));
    let kernel = KernelPackage::from_deb(&opened[0])
        .with_context(|| format!("reading kernel package {}", cfg.kernel.package))?;
    let initrd_mods = kernel
        .resolve(&cfg.kernel.initrd_modules)
        .context("resolving kernel.initrd_modules")?;
    let usr_mods = kernel
        .resolve(&cfg.kernel.usr_modules)
        .context("resolving kernel.usr_modules")?;
    step.done(&format!(
        "kernel {} with {} initramfs and {} /usr modules",
        kernel.version,
        initrd_mods.load_order.len(),
        usr_mods.load_order.len()
    ));

    let boot_deb = &opened[1];
    const SD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
    const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    let boot_tree = boot_deb.unpack(&|p: &str| p == SD_BOOT || p == STUB)?;
    let boot_file = |path: &str| match boot_tree.get(path) {
        Some(Node::File { data, .. }) => Ok(data.clone()),
        _ => Err(anyhow::anyhow!(
            "package {} has no {path}: is it the systemd-boot-efi package?",
            cfg.bootloader.package
        )),
    };
    let systemd_boot = boot_file(SD_BOOT)?;
    let stub = boot_file(STUB)?;

    // ---- /usr -----------------------------------------------------------
    let step = progress.step("assembling /usr");
    let bins = read_binaries(&opts.bin_dir, &cfg.usr.binaries)?;
    let mut usr = Tree::new();
    for (bin, data) in &bins {
        usr.insert_file(&format!("bin/{bin}"), data.clone(), 0o755)?;
    }
    let modules_dir = format!("lib/modules/{}", kernel.version);
    usr_mods.add_to(&mut usr, &modules_dir)?;
    usr.insert_file(
        &format!("{modules_dir}/herd-modules"),
        usr_mods
            .load_list(&format!("/usr/{modules_dir}/"))
            .into_bytes(),
        0o644,
    )?;
    usr.insert_file(
        "lib/os-release",
        os_release(name, version).into_bytes(),
        0o644,
    )?;
    usr.insert_file("lib/herd/init.toml", init_toml.into_bytes(), 0o644)?;
    if let Some((config, root)) = &update {
        usr.insert_file("lib/herd/update.toml", config.clone().into_bytes(), 0o644)?;
        usr.insert_file("lib/herd/update-root.json", root.clone(), 0o644)?;
    }
    usr.insert_file(
        "share/factory/etc/hostname",
        format!("{name}\n").into_bytes(),
        0o644,
    )?;
    usr.insert_symlink("share/factory/etc/os-release", "../usr/lib/os-release")?;
    for (i, pkg) in cfg.usr.package.iter().enumerate() {
        let deb = &opened[2 + i];
        let files = &pkg.files;
        let tree = deb.unpack(&|p: &str| files.contains_key(p))?;
        for (from, to) in files {
            match tree.get(from) {
                Some(node) => usr.insert(to, node.clone())?,
                None => bail!(
                    "package {} has no file {from:?} (usr.package files): list it with `dpkg-deb -c {}`",
                    pkg.name,
                    debs[2 + i].display()
                ),
            }
        }
    }
    for f in &cfg.usr.file {
        let bytes = match (&f.content, &f.source) {
            (Some(c), None) => c.clone().into_bytes(),
            (None, Some(src)) => {
                let src = opts.image_toml.parent().unwrap_or(Path::new(".")).join(src);
                std::fs::read(&src).with_context(|| {
                    format!(
                        "[[usr.file]] {}: cannot read its source {}",
                        f.path,
                        src.display()
                    )
                })?
            }
            _ => bail!(
                "{}: [[usr.file]] {} needs exactly one of content = \"...\" or source = \"path\"",
                opts.image_toml.display(),
                f.path
            ),
        };
        usr.insert_file(&f.path, bytes, f.mode)?;
    }
    usr.set_mtime_all(mtime);
    let usr_files = usr.walk().len() as u64;
    let usr_file_bytes = usr.file_bytes();
    step.done(&format!(
        "{usr_files} entries, {}",
        human_bytes(usr_file_bytes)
    ));

    // ---- initramfs ------------------------------------------------------
    let step = progress.step("writing the initramfs");
    let init_bin = bins
        .iter()
        .find(|(b, _)| b == "herd-init")
        .map(|(_, d)| d.clone())
        .context("usr.binaries must include herd-init: it is the initramfs's /init")?;
    let initrd = initramfs(&init_bin, &initrd_mods, &kernel.version, mtime)?;
    step.done(&human_bytes(initrd.len() as u64));

    // ---- disk.raw, early ------------------------------------------------
    // The layout depends only on the configured sizes (the root hash only
    // names USR-A's partitions), so disk.raw is made now and STATE's ext4
    // is made in it by mke2fs while /usr is compressed.
    let early = disk_table(&cfg, (Guid([0; 16]), Guid([0; 16])), "")?;
    let disk_bytes = early.disk_bytes();
    let (state_off, state_len) = early.partition_offset(STATE_INDEX);
    let disk_path = staging.path(names::DISK)?;
    let disk = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&disk_path)
        .with_context(|| format!("creating {}", disk_path.display()))?;
    disk.set_len(disk_bytes)
        .with_context(|| format!("sizing {} to {disk_bytes} bytes", disk_path.display()))?;
    let state_fs = crate::state::start_ext4(
        &disk_path,
        state_off,
        state_len,
        &named_guid(name, "state-fs").to_string(),
        epoch,
    )?;

    // ---- squashfs + verity ----------------------------------------------
    let step = progress.step(&format!(
        "compressing /usr into squashfs (zstd level {}, {} threads)",
        cfg.usr.compression_level,
        rayon::current_num_threads()
    ));
    let mut squashfs = Vec::with_capacity(usr_file_bytes as usize / 2);
    let block_cache = opts
        .block_cache
        .then(|| crate::block_cache::in_package_cache(&opts.cache_dir));
    let summary = herd_squashfs::write_cached(
        &usr,
        &herd_squashfs::Options {
            compression: herd_squashfs::Compression::Zstd {
                level: cfg.usr.compression_level,
            },
            block_size: 128 * 1024,
            mkfs_time: mtime,
        },
        block_cache
            .as_ref()
            .map(|c| c as &dyn herd_squashfs::BlockCache),
        &mut squashfs,
    )?;
    if summary.cache_rejected > 0 {
        progress.info(&format!(
            "{} cached blocks did not match their content and were compressed again",
            summary.cache_rejected
        ));
    }
    step.done(&match &block_cache {
        Some(_) => format!(
            "{}; {} blocks compressed, {} from the block cache",
            human_bytes(squashfs.len() as u64),
            summary.cache_misses,
            summary.cache_hits
        ),
        None => human_bytes(squashfs.len() as u64),
    });
    // The block store is trimmed on a thread of its own while the rest of
    // the build goes on (every block this build used is marked recently
    // used already); only when this build added to it.
    let prune = block_cache.filter(|_| summary.cache_misses > 0).map(|c| {
        std::thread::spawn(move || {
            // Best effort: a store that cannot shrink only takes disk space.
            if let Err(e) = c.prune(crate::block_cache::DEFAULT_LIMIT) {
                tracing::warn!("cannot prune the compressed-block cache: {e}");
            }
        })
    });
    let slot_size = cfg.partitions.usr.0;
    if squashfs.len() as u64 > slot_size {
        bail!(
            "/usr does not fit its slot: the squashfs is {} ({} bytes) but partitions.usr is {} ({} bytes); \
             raise partitions.usr in {} or ship less in /usr",
            human_bytes(squashfs.len() as u64),
            squashfs.len(),
            cfg.partitions.usr,
            slot_size,
            opts.image_toml.display()
        );
    }

    let step = progress.step("hashing /usr into a dm-verity tree (sha256, 4 KiB blocks)");
    let content_hash = Sha256::digest(&squashfs);
    let salt: [u8; 32] = Sha256::new()
        .chain_update(b"herd verity salt\0")
        .chain_update(name.as_bytes())
        .chain_update(b"\0")
        .chain_update(content_hash)
        .finalize()
        .into();
    let mut vuuid = [0u8; 16];
    vuuid.copy_from_slice(&Sha256::digest(salt)[..16]);
    vuuid[6] = (vuuid[6] & 0x0f) | 0x40;
    vuuid[8] = (vuuid[8] & 0x3f) | 0x80;
    let params = herd_verity::Params {
        salt,
        uuid: vuuid,
        data_block_size: VERITY_BLOCK,
        hash_block_size: VERITY_BLOCK,
    };
    let verity = herd_verity::build(&squashfs, &params)?;
    let squashfs = Arc::new(squashfs);
    let hash_area = Arc::new(verity.hash_area);
    let usrhash = hex::encode(verity.root_hash);
    step.done(&format!("root hash {usrhash}"));

    // ---- disk layout ----------------------------------------------------
    let (usr_a_uuid, usr_a_verity_uuid) = usr_partition_uuids(&verity.root_hash);
    let table = disk_table(&cfg, (usr_a_uuid, usr_a_verity_uuid), &usrhash)?;
    if table.partition_offset(STATE_INDEX) != (state_off, state_len)
        || table.disk_bytes() != disk_bytes
    {
        bail!("internal: the disk layout changed once USR-A's partition UUIDs were known");
    }

    // ---- Unified Kernel Images, one per slot, and their PCR values ------
    let step = progress.step("assembling the Unified Kernel Images (systemd-stub)");
    let osrel = os_release(name, version);
    // The two slots' UKIs differ only in their command line: made side by side.
    let built: Vec<(Vec<u8>, SlotMeasurements)> = {
        use rayon::prelude::*;
        Slot::ALL
            .par_iter()
            .map(|&slot| -> Result<_> {
                let cmdline =
                    slot_cmdline(&usrhash, &usr_a_uuid.to_string(), slot, &cfg.kernel.cmdline);
                let parts = herd_uki::UkiParts {
                    osrel: osrel.as_bytes(),
                    cmdline: cmdline.as_bytes(),
                    linux: &kernel.vmlinuz,
                    initrd: &initrd,
                };
                let uki = herd_uki::assemble(&stub, &parts).with_context(|| {
                    format!(
                        "assembling slot {}'s UKI on {STUB} of {}",
                        slot.name(),
                        cfg.bootloader.package
                    )
                })?;
                let m = SlotMeasurements::new(
                    names::uki(slot),
                    &cmdline,
                    &parts,
                    &usrhash,
                    slot.name(),
                );
                Ok((uki, m))
            })
            .collect::<Result<_>>()?
    };
    let mut ukis = Vec::new();
    let mut measured = Measured::default();
    for (slot, (uki, m)) in Slot::ALL.iter().zip(built) {
        measured.slots.insert(slot.name().to_string(), m);
        ukis.push(uki);
    }
    let cmdline = measured.slots["a"].cmdline.clone();
    // The ESP must hold both slots' UKIs (the updater removes the other
    // slot's old UKI, then writes the new one beside the running one) and
    // systemd-boot, with room for the FAT.
    let esp_needed = 2 * ukis[0].len() as u64 + systemd_boot.len() as u64 + 2 * MIB;
    if esp_needed > cfg.partitions.esp.0 {
        bail!(
            "the ESP is too small: partitions.esp is {} but two slots' UKIs ({} each) and systemd-boot \
             need {}; raise partitions.esp in {}",
            human_bytes(cfg.partitions.esp.0),
            human_bytes(ukis[0].len() as u64),
            human_bytes(esp_needed),
            opts.image_toml.display()
        );
    }
    step.done(&format!(
        "{} each, PCR 11 of slot a {}",
        human_bytes(ukis[0].len() as u64),
        measured.slots["a"].pcr11
    ));

    // ---- disk.raw -------------------------------------------------------
    let step = progress.step(&format!(
        "writing {} ({})",
        names::DISK,
        human_bytes(disk_bytes)
    ));
    let part = |i: usize| table.partition_offset(i);
    let (usr_off, _) = part(USR_A_INDEX);
    let (vy_off, vy_len) = part(USR_A_INDEX + 1);
    if hash_area.len() as u64 > vy_len {
        bail!(
            "internal: verity data ({} bytes) larger than its partition ({vy_len})",
            hash_area.len()
        );
    }
    let esp = EspContent {
        image: name,
        systemd_boot: &systemd_boot,
        uki_a: &ukis[0],
        tries: cfg.bootloader.tries,
        timeout: cfg.bootloader.timeout,
    };
    let mut esp_tree = esp.tree()?;
    esp_tree.set_mtime_all(mtime);
    let (esp_off, esp_len) = part(ESP_INDEX);
    let esp_id = u32::from_le_bytes(named_guid(name, "esp-volume-id").0[..4].try_into()?);
    let esp_bytes = Arc::new(herd_esp::fat32_image(
        &esp_tree,
        &herd_esp::EspOptions {
            size_bytes: esp_len,
            volume_id: esp_id,
            label: *b"ESP        ",
            mtime,
        },
    )?);
    state_fs.wait()?;
    let gpt = table.pieces()?;

    // disk.raw's sha256 (the longest hash: 390 MiB, mostly zeros) is taken
    // from the pieces in memory on a thread of its own, while the same
    // pieces are written into the file and the payload files after them.
    let disk_hash = {
        let (file, gpt, esp_bytes, squashfs, hash_area) = (
            disk.try_clone().context("reopening disk.raw for hashing")?,
            gpt.clone(),
            esp_bytes.clone(),
            squashfs.clone(),
            hash_area.clone(),
        );
        std::thread::spawn(move || -> std::io::Result<String> {
            use crate::sparse::Region;
            let mut regions: Vec<Region> = gpt.iter().map(|(o, b)| Region::Bytes(*o, b)).collect();
            regions.push(Region::Bytes(esp_off, &esp_bytes));
            regions.push(Region::Bytes(usr_off, &squashfs));
            regions.push(Region::Bytes(vy_off, &hash_area));
            regions.push(Region::File(state_off, state_len));
            crate::sparse::sha256_regions(&file, disk_bytes, &mut regions)
        })
    };
    for (offset, bytes) in &gpt {
        disk.write_all_at(bytes, *offset)
            .context("writing the partition table into the disk image")?;
    }
    disk.write_all_at(&squashfs, usr_off)
        .context("writing USR-A into the disk image")?;
    disk.write_all_at(&hash_area, vy_off)
        .context("writing USR-A-verity into the disk image")?;
    write_nonzero_at(&disk, &esp_bytes, esp_off).context("writing the ESP into the disk image")?;
    drop(esp_bytes);
    let disk_flush = std::thread::spawn(move || disk.sync_all());
    step.done(&format!("{} partitions", table.partitions.len()));

    // ---- payload files ---------------------------------------------------
    staging.write(names::USR, &squashfs)?;
    staging.write(names::USR_VERITY, &hash_area)?;
    staging.write(names::KERNEL, &kernel.vmlinuz)?;
    staging.write(names::INITRD, &initrd)?;
    staging.write(names::BOOTLOADER, &systemd_boot)?;
    let binaries: Vec<crate::sbom::Binary> = bins
        .iter()
        .map(|(n, d)| crate::sbom::Binary { name: n, data: d })
        .collect();
    let sbom = crate::sbom::spdx(&crate::sbom::Input {
        name,
        version,
        usrhash: &usrhash,
        epoch,
        packages: &packages,
        binaries: &binaries,
    })
    .context("reading the Cargo.lock herd was built with, for the SBOM")?;
    staging.write(names::SBOM, &sbom)?;
    staging.write(names::UKI_A, &ukis[0])?;
    staging.write(names::UKI_B, &ukis[1])?;
    let mut output_names: Vec<String> = [
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
    if opts.qcow2 {
        let step = progress.step("converting to qcow2");
        let q = staging.path(names::QCOW2)?;
        crate::qcow2::convert(&staging.path(names::DISK)?, &q)?;
        output_names.push(names::QCOW2.to_string());
        step.done(names::QCOW2);
    }

    let step = progress.step("hashing outputs");
    let in_memory: [(&str, &[u8]); 8] = [
        (names::SBOM, &sbom),
        (names::USR, &squashfs),
        (names::USR_VERITY, &hash_area),
        (names::KERNEL, &kernel.vmlinuz),
        (names::INITRD, &initrd),
        (names::BOOTLOADER, &systemd_boot),
        (names::UKI_A, &ukis[0]),
        (names::UKI_B, &ukis[1]),
    ];
    debug_assert_eq!(output_names[0], names::DISK);
    let mut outputs = hash_outputs(&staging, &output_names[1..], &in_memory)?;
    let sha256 = disk_hash
        .join()
        .map_err(|_| anyhow::anyhow!("the thread hashing {} panicked", names::DISK))?
        .with_context(|| format!("hashing {}", names::DISK))?;
    let size = disk_bytes;
    disk_flush
        .join()
        .map_err(|_| anyhow::anyhow!("the thread flushing {} panicked", names::DISK))?
        .with_context(|| format!("flushing {}", names::DISK))?;
    outputs.insert(
        0,
        OutputInfo {
            path: names::DISK.to_string(),
            sha256,
            size,
        },
    );
    step.done(&format!("{} files", outputs.len()));

    let partitions = table
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (offset, size) = table.partition_offset(i);
            PartitionInfo {
                number: i as u32 + 1,
                name: p.name.clone(),
                type_guid: p.type_guid.to_string(),
                uuid: p.part_guid.to_string(),
                offset,
                size,
                attributes: p.attributes,
            }
        })
        .collect();
    let manifest = Manifest {
        name: name.to_string(),
        version: version.to_string(),
        source_date_epoch: epoch,
        kernel: KernelInfo {
            package: cfg.kernel.package.clone(),
            release: kernel.version.clone(),
            initrd_modules: initrd_mods
                .load_order
                .iter()
                .map(|m| m.name.clone())
                .collect(),
            usr_modules: usr_mods.load_order.iter().map(|m| m.name.clone()).collect(),
        },
        usr: UsrInfo {
            usrhash,
            verity_salt: hex::encode(salt),
            verity_data_blocks: verity.data_blocks,
            squashfs_bytes: squashfs.len() as u64,
            verity_bytes: hash_area.len() as u64,
            files: usr_files,
            file_bytes: usr_file_bytes,
        },
        cmdline,
        measured,
        partitions,
        outputs,
        packages,
    };
    let json = serde_json::to_vec_pretty(&manifest)?;
    staging.commit(&output_names, &json)?;
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

/// The `[update]` table: herd-update's config text (checked with
/// herd-update's own type) and the trusted root key set it names.
fn update_files(table: &toml::Table, image_toml: &Path) -> Result<(String, Vec<u8>)> {
    let mut t = table.clone();
    let root = match t.remove("root") {
        Some(toml::Value::String(r)) => image_toml.parent().unwrap_or(Path::new(".")).join(r),
        _ => bail!(
            "{}: [update] needs root = \"path/to/root/1.json\": the release repository's first key set (herd release init makes it)",
            image_toml.display()
        ),
    };
    let text = toml::to_string(&t).context("serialising [update]")?;
    herd_update::config::UpdateConfig::parse(&text).with_context(|| {
        format!(
            "{}: [update] is not a valid herd-update configuration",
            image_toml.display()
        )
    })?;
    let bytes = std::fs::read(&root)
        .with_context(|| format!("[update] root: cannot read {}", root.display()))?;
    herd_update::apply::check_root_bytes(&bytes)
        .with_context(|| format!("[update] root {}", root.display()))?;
    Ok((text, bytes))
}

/// Where the block size of dm-verity's data and hash blocks is used.
const VERITY_BLOCK: u32 = 4096;
/// Partition indexes in the table [`disk_table`] makes.
const ESP_INDEX: usize = 0;
const USR_A_INDEX: usize = 1;
const STATE_INDEX: usize = 5;

/// The partition table: ESP, USR-A and its verity partition (their UUIDs
/// from the root hash, `usrhash` also naming the disk), USR-B and its
/// verity partition, STATE. The offsets depend only on the configured sizes.
fn disk_table(cfg: &ImageConfig, usr_a: (Guid, Guid), usrhash: &str) -> Result<herd_gpt::Table> {
    let name = cfg.image.name.as_str();
    let slot_size = cfg.partitions.usr.0;
    let sizes = herd_verity::Params {
        salt: [0; 32],
        uuid: [0; 16],
        data_block_size: VERITY_BLOCK,
        hash_block_size: VERITY_BLOCK,
    };
    let verity_size = round_up(herd_verity::hash_area_size(slot_size, &sizes), MIB);
    let state_size = round_up(cfg.partitions.state.0, MIB);
    let ro = attrs::READ_ONLY;
    let specs = vec![
        spec(
            types::ESP,
            named_guid(name, partition::ESP),
            partition::ESP,
            cfg.partitions.esp.0,
            0,
        ),
        spec(
            types::USR_X86_64,
            usr_a.0,
            partition::usr(Slot::A),
            slot_size,
            ro,
        ),
        spec(
            types::USR_VERITY_X86_64,
            usr_a.1,
            partition::usr_verity(Slot::A),
            verity_size,
            ro,
        ),
        spec(
            types::USR_X86_64,
            named_guid(name, partition::usr(Slot::B)),
            partition::usr(Slot::B),
            slot_size,
            ro,
        ),
        spec(
            types::USR_VERITY_X86_64,
            named_guid(name, partition::usr_verity(Slot::B)),
            partition::usr_verity(Slot::B),
            verity_size,
            ro,
        ),
        spec(
            types::VAR,
            named_guid(name, partition::STATE),
            partition::STATE,
            state_size,
            attrs::GROWFS,
        ),
    ];
    let disk_bytes = MIB
        + specs
            .iter()
            .map(|s| round_up(s.size_bytes, MIB))
            .sum::<u64>()
        + MIB;
    let disk_guid = guid_from_name(&format!("herd-image:{name}"), &format!("disk:{usrhash}"));
    Ok(herd_gpt::Table::layout(disk_guid, disk_bytes, specs)?)
}

fn spec(
    type_guid: Guid,
    part_guid: Guid,
    name: &str,
    size_bytes: u64,
    attributes: u64,
) -> herd_gpt::PartitionSpec {
    herd_gpt::PartitionSpec {
        type_guid,
        part_guid,
        name: name.to_string(),
        size_bytes,
        attributes,
    }
}

fn os_release(name: &str, version: &str) -> String {
    format!(
        "NAME=\"herd\"\nID=herd\nPRETTY_NAME=\"herd {version}\"\nVERSION_ID={version}\nIMAGE_ID={name}\nIMAGE_VERSION={version}\nHOME_URL=\"https://github.com/herd-os/herd\"\n"
    )
}

/// herd's own binaries from `bin_dir`; herd-init must be static.
fn read_binaries(bin_dir: &Path, names: &[String]) -> Result<Vec<(String, Arc<[u8]>)>> {
    let mut out = Vec::new();
    for bin in names {
        let path = bin_dir.join(bin);
        let data = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read herd binary {}: build it first (see README: `cargo build --release --target x86_64-unknown-linux-gnu` \
                 with RUSTFLAGS='-C target-feature=+crt-static'), or point --bin-dir at where it is",
                path.display()
            )
        })?;
        match crate::elf::is_static_elf64(&data) {
            None => bail!("{} is not an x86-64 ELF executable", path.display()),
            Some(false) if bin == "herd-init" => bail!(
                "{} is dynamically linked, but it runs as /init in an initramfs with no dynamic loader: \
                 build it with RUSTFLAGS='-C target-feature=+crt-static' and --target x86_64-unknown-linux-gnu",
                path.display()
            ),
            _ => {}
        }
        out.push((bin.clone(), Arc::from(data)));
    }
    Ok(out)
}

/// The initramfs: /init, /dev/console, the modules to reach /usr and their load list.
fn initramfs(
    init: &Arc<[u8]>,
    modules: &herd_buildroot::ModuleSet,
    kver: &str,
    mtime: u32,
) -> Result<Vec<u8>> {
    let mut t = Tree::new();
    t.insert_file("init", init.clone(), 0o755)?;
    for d in ["dev", "proc", "sys", "run", "sysroot", "etc/herd"] {
        t.mkdir_p(d)?;
    }
    t.insert(
        "dev/console",
        Node::CharDev {
            meta: Meta::new(0o600),
            major: 5,
            minor: 1,
        },
    )?;
    modules.add_to(&mut t, &format!("lib/modules/{kver}"))?;
    t.insert_file(
        "etc/herd/initrd-modules",
        modules
            .load_list(&format!("/lib/modules/{kver}/"))
            .into_bytes(),
        0o644,
    )?;
    t.set_mtime_all(mtime);
    let mut out = Vec::new();
    herd_cpio::write_newc(&t, &mut out)?;
    Ok(out)
}

/// Writes `bytes` at `offset` of `file`, skipping the 64 KiB chunks that
/// are all zeros: the file reads as zeros there already (a fresh, sized
/// disk image), and holes cost neither page cache nor hashing reads.
fn write_nonzero_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + CHUNK).min(bytes.len());
        if bytes[at..end].iter().any(|&b| b != 0) {
            // Coalesce a run of non-zero chunks into one write.
            let mut run_end = end;
            while run_end < bytes.len() {
                let next = (run_end + CHUNK).min(bytes.len());
                if bytes[run_end..next].iter().all(|&b| b == 0) {
                    break;
                }
                run_end = next;
            }
            file.write_all_at(&bytes[at..run_end], offset + at as u64)?;
            at = run_end;
        } else {
            at = end;
        }
    }
    Ok(())
}

/// sha256 and size of every output: payload files from the bytes still in
/// memory, disk images from their files (holes fed from a zero buffer).
fn hash_outputs(
    staging: &Staging,
    names: &[String],
    in_memory: &[(&str, &[u8])],
) -> Result<Vec<OutputInfo>> {
    use rayon::prelude::*;
    names
        .par_iter()
        .map(|n| {
            let (sha256, size) = match in_memory.iter().find(|(m, _)| m == n) {
                Some((_, bytes)) => (hex::encode(Sha256::digest(bytes)), bytes.len() as u64),
                None => {
                    let p = staging.path(n)?;
                    crate::sparse::sha256_file(&p)
                        .with_context(|| format!("hashing {}", p.display()))?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonzero_writes_give_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        let mut bytes = vec![0u8; 1 << 20];
        bytes[5] = 1;
        bytes[200_000..300_000].fill(7);
        bytes[(1 << 20) - 1] = 9;
        let f = File::create(&p).unwrap();
        f.set_len(3 << 20).unwrap();
        write_nonzero_at(&f, &bytes, 1 << 20).unwrap();
        drop(f);
        let all = std::fs::read(&p).unwrap();
        assert_eq!(&all[1 << 20..2 << 20], &bytes[..]);
        assert!(all[..1 << 20]
            .iter()
            .chain(&all[2 << 20..])
            .all(|&b| b == 0));
        // The zero chunks stayed holes: less than the whole MiB was written.
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&p).unwrap());
        assert!(blocks * 512 < 1 << 20, "{blocks} blocks allocated");
    }
}
