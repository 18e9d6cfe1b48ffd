//! The build's inputs, each checked before any time is spent: herd-init's
//! and herd-update's configuration (with their owners' own types), herd's
//! binaries, and the locked packages with the kernel and boot loader in them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use herd_buildroot::{Cache, Deb, Fetch, KernelPackage, Lock, ModuleSet};
use herd_fstree::Node;

use super::BuildOptions;
use crate::config::ImageConfig;
use crate::manifest::PackageInfo;
use crate::progress::Progress;

/// Everything the build reads besides the description: checked
/// configuration, the packages, the kernel and boot loader, herd's binaries.
pub(super) struct Inputs {
    /// herd-init's configuration text (`lib/herd/init.toml`).
    pub init_toml: String,
    /// herd-update's configuration text and its root key set, if any.
    pub update: Option<(String, Vec<u8>)>,
    pub packages: Packages,
    pub boot: BootParts,
    pub bins: Vec<(String, Arc<[u8]>)>,
}

impl Inputs {
    /// Checks the configuration first (before any time is spent), then
    /// opens the packages and reads the kernel, the boot loader and herd's
    /// binaries.
    pub(super) fn read(
        cfg: &ImageConfig,
        opts: &BuildOptions,
        progress: &Progress,
    ) -> Result<Inputs> {
        let init_toml = init_config(cfg, &opts.image_toml)?;
        let update = match &cfg.update {
            Some(table) => Some(update_files(table, &opts.image_toml)?),
            None => None,
        };
        let packages = Packages::open(cfg, opts, progress)?;
        let boot = BootParts::read(cfg, &packages, progress)?;
        let bins = read_binaries(&opts.bin_dir, &cfg.usr.binaries)?;
        Ok(Inputs {
            init_toml,
            update,
            packages,
            boot,
            bins,
        })
    }
}

/// `[init]` as herd-init's configuration text, validated with herd-init's
/// own type: a typo there would only show at boot otherwise.
fn init_config(cfg: &ImageConfig, image_toml: &Path) -> Result<String> {
    let Some(table) = &cfg.init else {
        return Ok(String::new());
    };
    let text = toml::to_string(table).context("serialising [init]")?;
    herd_node::config::Config::parse(&text).with_context(|| {
        format!(
            "{}: [init] is not a valid herd-init configuration",
            image_toml.display()
        )
    })?;
    Ok(text)
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
    herd_update_config::UpdateConfig::parse(&text).with_context(|| {
        format!(
            "{}: [update] is not a valid herd-update configuration",
            image_toml.display()
        )
    })?;
    let bytes = std::fs::read(&root)
        .with_context(|| format!("[update] root: cannot read {}", root.display()))?;
    herd_release::parse_trusted_root(&bytes)
        .with_context(|| format!("[update] root {}", root.display()))?;
    Ok((text, bytes))
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

/// The locked packages, checked against the lock and opened: the kernel
/// first, the boot loader second, then `[[usr.package]]` in their order.
pub(super) struct Packages {
    /// What the manifest and the SBOM say about each.
    pub infos: Vec<PackageInfo>,
    /// Where each .deb is in the cache.
    pub debs: Vec<PathBuf>,
    pub opened: Vec<Deb>,
}

/// Index of the kernel and the boot loader in [`Packages`], and of the first
/// `[[usr.package]]`.
const KERNEL: usize = 0;
const BOOTLOADER: usize = 1;
const FIRST_USR: usize = 2;

impl Packages {
    /// Checks every package the image names against the lock and opens each
    /// (fetching with apt-get when allowed), all side by side.
    pub(super) fn open(
        cfg: &ImageConfig,
        opts: &BuildOptions,
        progress: &Progress,
    ) -> Result<Packages> {
        let lock_path = cfg.lock_path(&opts.image_toml);
        let lock = Lock::load(&lock_path)?;
        let cache = Cache::new(opts.cache_dir.clone());
        let fetch = if opts.fetch {
            Fetch::AptGet
        } else {
            Fetch::Never
        };
        let mut wanted: Vec<&str> =
            vec![cfg.kernel.package.as_str(), cfg.bootloader.package.as_str()];
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
        let infos = locked
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
        Ok(Packages {
            infos,
            debs,
            opened,
        })
    }

    /// The `[[usr.package]]` at `i`: its opened archive and its path.
    pub(super) fn usr_package(&self, i: usize) -> (&Deb, &Path) {
        (&self.opened[FIRST_USR + i], &self.debs[FIRST_USR + i])
    }
}

/// What boots: the kernel with the modules the initramfs and /usr load,
/// systemd-boot and the UKI stub.
pub(super) struct BootParts {
    pub kernel: KernelPackage,
    pub initrd_modules: ModuleSet,
    pub usr_modules: ModuleSet,
    pub systemd_boot: Arc<[u8]>,
    pub stub: Arc<[u8]>,
}

/// Where systemd-boot-efi keeps the boot loader and the UKI stub.
pub(super) const SD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
pub(super) const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

impl BootParts {
    /// Reads the kernel package (resolving the configured modules) and the
    /// boot loader package.
    pub(super) fn read(
        cfg: &ImageConfig,
        packages: &Packages,
        progress: &Progress,
    ) -> Result<Self> {
        let step = progress.step(&format!("reading kernel {}", cfg.kernel.package));
        let kernel = KernelPackage::from_deb(&packages.opened[KERNEL])
            .with_context(|| format!("reading kernel package {}", cfg.kernel.package))?;
        let initrd_modules = kernel
            .resolve(&cfg.kernel.initrd_modules)
            .context("resolving kernel.initrd_modules")?;
        let usr_modules = kernel
            .resolve(&cfg.kernel.usr_modules)
            .context("resolving kernel.usr_modules")?;
        step.done(&format!(
            "kernel {} with {} initramfs and {} /usr modules",
            kernel.version,
            initrd_modules.load_order.len(),
            usr_modules.load_order.len()
        ));

        let boot_tree = packages.opened[BOOTLOADER].unpack(&|p: &str| p == SD_BOOT || p == STUB)?;
        let boot_file = |path: &str| match boot_tree.get(path) {
            Some(Node::File { data, .. }) => Ok(data.clone()),
            _ => Err(anyhow::anyhow!(
                "package {} has no {path}: is it the systemd-boot-efi package?",
                cfg.bootloader.package
            )),
        };
        Ok(BootParts {
            systemd_boot: boot_file(SD_BOOT)?,
            stub: boot_file(STUB)?,
            kernel,
            initrd_modules,
            usr_modules,
        })
    }
}
