//! `herd`: the build-host command. Builds images, boots them in QEMU.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use herd::pipeline::{build, BuildOptions};

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "Build, inspect and boot herd node OS images",
    long_about = "herd builds immutable node OS disk images from a declarative image.toml \
                  (read-only dm-verity /usr in A/B slots, systemd-boot, a STATE partition) \
                  and boots them in QEMU."
)]
struct Cli {
    /// Log more (repeat for more detail); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a disk image and its update payload from an image description.
    ///
    /// Writes DIR/disk.raw (GPT: ESP, USR-A, USR-A-verity, USR-B, USR-B-verity,
    /// STATE), DIR/usr.img and DIR/usr.verity (the /usr payload), DIR/boot/
    /// (kernel, initramfs, systemd-boot) and DIR/build.json (hashes, sizes,
    /// partition table, verity root hash, exact package list). Outputs are
    /// staged and moved into place only when the whole build succeeded.
    /// Runs unprivileged; the same inputs and SOURCE_DATE_EPOCH give the
    /// same bytes.
    Build(BuildArgs),
    /// Boot a disk image in QEMU (UEFI with OVMF, serial console on stdout).
    #[command(subcommand)]
    Vm(VmCommand),
    /// Manage release signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Publish signed releases into a static release repository.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Serve a release repository over HTTP (for local use and tests).
    Serve(ServeArgs),
    /// Sign a container image with a herd key, in cosign's format.
    ///
    /// IMAGE is REGISTRY/REPOSITORY[:TAG|@DIGEST] (the signature is stored in
    /// the registry as the tag sha256-<digest>.sig, where cosign puts it) or
    /// oci:DIR[:NAME] for an OCI layout (the signature is added to the layout
    /// under that tag's name; copy it to the registry with the image).
    /// Nodes whose policy trusts the key's public half (`herd key show`) run it.
    SignImage(SignImageArgs),
    /// Write a raw disk image onto a block device (or into a file), then read
    /// it back and compare sha256s.
    ///
    /// Refuses a qcow2 image, the image itself, a device that is mounted or
    /// held (device-mapper, e.g. the running system), and a device smaller
    /// than the image. Asks for confirmation unless --yes.
    Flash(FlashArgs),
    /// Node configurations (first-boot provisioning, docs/PROVISIONING.md).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Measured boot: predict the TPM PCR values of a node.
    #[command(subcommand)]
    Pcr(PcrCommand),
    /// A fleet's update status, from the records its nodes publish in etcd.
    #[command(subcommand)]
    Fleet(FleetCommand),
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Show what the nodes of a fleet run and how their update goes: the
    /// versions, waves and failures their status records in etcd
    /// (`/herd/nodes/<group>/<node-id>`) say, and who holds reboot slots
    /// (`/herd/reboot/<group>/holders/`). Nodes publish a record when their
    /// [update.lock] backend is etcd; a node whose updater stopped drops out
    /// when its record's lease expires (the lock's ttl_secs).
    Status {
        /// etcd client URL (http://HOST:2379), as in the nodes' [update.lock]
        /// endpoints; repeatable, tried in order.
        #[arg(long = "etcd", value_name = "URL", required = true)]
        etcd: Vec<String>,
        /// etcd over TLS (https:// URLs): a PEM file of the only CA trusted
        /// for etcd's certificate (default: the built-in Mozilla roots).
        #[arg(long, value_name = "PEM")]
        ca_file: Option<PathBuf>,
        /// A client certificate (PEM) for an etcd with --client-cert-auth.
        #[arg(long, value_name = "PEM", requires = "key_file")]
        cert_file: Option<PathBuf>,
        /// The client certificate's private key (PEM).
        #[arg(long, value_name = "PEM", requires = "cert_file")]
        key_file: Option<PathBuf>,
        /// Only this group (default: every group found).
        #[arg(long)]
        group: Option<String>,
        /// Print JSON (a list of groups with their records and slot holders).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a node configuration offline, exactly as a node checks it
    /// before applying it: prints OK and what it sets, or every problem
    /// with its line and column (exit status 1).
    Check {
        /// The node configuration (TOML).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PcrCommand {
    /// Print the PCR 11 values a UKI produces (after systemd-stub, and after
    /// each boot phase herd-init measures) and herd-init's PCR 15, SHA-256.
    ///
    /// PATH is a `herd build` output directory (both slots' UKIs) or one UKI
    /// file. The values agree with `systemd-measure calculate` for the
    /// same sections; a booted node reports the `ready` PCR 11 and the
    /// PCR 15 (see docs/MEASURED-BOOT.md).
    Predict {
        /// Output directory or UKI file.
        path: PathBuf,
        /// Print JSON (slot -> predictions) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a node's measurement report (herd-agent's GET /v1/measurements)
    /// against a build: the event log must replay to the reported PCR 11 and
    /// 15, and those must be the predicted ones for the slot the node booted.
    /// A quote in the report (asked for with ?nonce=) must be a TPM quote of
    /// PCR 11 and 15 over that nonce, signed by the key it names; --ak pins
    /// that key. Exits 1 with the reason when anything differs.
    Verify {
        /// The report (JSON).
        #[arg(long)]
        report: PathBuf,
        /// The nonce the verifier sent (hex): the quote must carry it.
        #[arg(long)]
        nonce: Option<String>,
        /// The node's attestation key, as `herd pcr verify` printed it on
        /// first contact (sha256:<hex> of its TPMT_PUBLIC): the quote must be
        /// signed by it.
        #[arg(long)]
        ak: Option<String>,
        /// Output directory of the build the node should run, or one UKI.
        path: PathBuf,
    },
}

#[derive(clap::Args)]
struct FlashArgs {
    /// The raw disk image (e.g. out/default/disk.raw).
    image: PathBuf,
    /// The block device (e.g. /dev/sdX) or file to write.
    target: PathBuf,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct SignImageArgs {
    /// The image: REGISTRY/REPO[:TAG|@DIGEST] or oci:DIR[:NAME].
    image: String,
    /// Signing key (`herd key generate`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// For oci: layouts, the REGISTRY/REPOSITORY nodes will pull it as.
    #[arg(long, value_name = "REGISTRY/REPO")]
    name: Option<String>,
    /// Sign in cosign v3's format: a Sigstore bundle attached as an OCI
    /// referrer (tag `sha256-<hex>`), instead of the classic `.sig` tag.
    #[arg(long)]
    bundle: bool,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a new ed25519 signing key pair (file mode 0600; never overwrites).
    Generate {
        /// Key file to create.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print a key's public half and id.
    Show {
        /// Key file.
        key: PathBuf,
    },
}

/// Seconds in a day (`--expires-days`).
const DAY: u64 = 86_400;

/// The channel a release command signs a new document for, shared by
/// `publish`, `halt` and `resume`.
#[derive(clap::Args)]
struct ChannelArgs {
    /// Repository directory.
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// Channel name.
    #[arg(long, default_value = "stable")]
    channel: String,
    /// Signing key(s) (repeatable; enough for the threshold).
    #[arg(long = "key", value_name = "FILE", required = true)]
    keys: Vec<PathBuf>,
    /// Days the new metadata stays valid; nodes refuse it afterwards, so
    /// publish (or re-sign) before then.
    #[arg(long, default_value_t = 30)]
    expires_days: u64,
}

impl ChannelArgs {
    /// The signing keys, the time now and the expiry of what is signed now.
    fn signing(&self) -> Result<(Vec<herd_release::SigningKey>, u64, u64)> {
        let keys = load_keys(&self.keys)?;
        let t = now();
        Ok((keys, t, t + self.expires_days * DAY))
    }
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Start a repository whose first key set is the given keys.
    Init {
        /// Repository directory.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// Signing key(s) of the first key set (repeatable).
        #[arg(long = "key", value_name = "FILE", required = true)]
        keys: Vec<PathBuf>,
        /// Signatures required on metadata.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// Days the key set stays valid.
        #[arg(long, default_value_t = 3650)]
        expires_days: u64,
    },
    /// Add a built image's update payload (usr.img, usr.verity, kernel,
    /// initramfs) to the repository and make it the channel's release.
    Publish {
        /// Output directory of `herd build` (with build.json).
        #[arg(long, value_name = "DIR")]
        image_out: PathBuf,
        #[command(flatten)]
        target: ChannelArgs,
        /// Phased rollout: SECONDS:PERCENT waves from now, e.g. 0:10,3600:50,7200:100.
        #[arg(long, value_name = "WAVES")]
        rollout: Option<String>,
    },
    /// Stop the channel's rollout: nodes that do not run its release yet
    /// do not take it (nodes already on it are unaffected). Writes a new
    /// signed channel document with the next sequence.
    Halt {
        #[command(flatten)]
        target: ChannelArgs,
        /// Why: nodes show it in `herd-update status` and their log.
        #[arg(long, default_value = "no reason given")]
        reason: String,
    },
    /// Continue a halted rollout: its waves keep their original schedule
    /// (waves whose time came during the halt open at once). Writes a new
    /// signed channel document with the next sequence.
    Resume {
        #[command(flatten)]
        target: ChannelArgs,
    },
    /// Replace the key set: the new set is signed by the current and the new keys.
    Rotate {
        /// Repository directory.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// Current key(s) (repeatable).
        #[arg(long = "key", value_name = "FILE", required = true)]
        keys: Vec<PathBuf>,
        /// New key(s) (repeatable).
        #[arg(long = "new-key", value_name = "FILE", required = true)]
        new_keys: Vec<PathBuf>,
        /// Signatures required with the new set.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// Days the new key set stays valid.
        #[arg(long, default_value_t = 3650)]
        expires_days: u64,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Repository directory.
    repo: PathBuf,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn load_keys(files: &[PathBuf]) -> Result<Vec<herd_release::SigningKey>> {
    files
        .iter()
        .map(|f| Ok(herd_release::SigningKey::load(f)?))
        .collect()
}

fn fleet_status(
    etcd: &[String],
    tls: herd::fleet::TlsFiles,
    group: Option<&str>,
    json: bool,
) -> Result<()> {
    let groups = herd::fleet::read(etcd, tls, group)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&groups)?);
    } else {
        print!("{}", herd::fleet::render(&groups));
    }
    Ok(())
}

fn run_key(cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Generate { out } => {
            let k = herd_release::SigningKey::generate()?;
            k.save(&out)?;
            println!("wrote {} (key id {})", out.display(), k.public().id());
        }
        KeyCommand::Show { key } => {
            let k = herd_release::SigningKey::load(&key)?;
            println!(
                "public {}
id {}",
                k.public().0,
                k.public().id()
            );
        }
    }
    Ok(())
}

fn run_release(cmd: ReleaseCommand) -> Result<()> {
    match cmd {
        ReleaseCommand::Init {
            repo,
            keys,
            threshold,
            expires_days,
        } => {
            let keys = load_keys(&keys)?;
            let refs: Vec<&herd_release::SigningKey> = keys.iter().collect();
            let t = now();
            let root =
                herd_release::Repo::at(&repo).init(&refs, threshold, t, t + expires_days * DAY)?;
            println!(
                "created {} with key set 1 ({} keys, threshold {})",
                repo.display(),
                root.keys.len(),
                root.threshold
            );
        }
        ReleaseCommand::Publish {
            image_out,
            target,
            rollout,
        } => {
            let (keys, t, expires) = target.signing()?;
            let refs: Vec<&herd_release::SigningKey> = keys.iter().collect();
            let rollout = rollout
                .map(|r| herd::publish::parse_rollout(&r, t))
                .transpose()?;
            let (c, expected) = herd::publish::publish(
                &image_out,
                &herd_release::Repo::at(&target.repo),
                &target.channel,
                &refs,
                t,
                expires,
                rollout,
            )?;
            println!(
                "published {} {} on channel {} (sequence {}, expires in {} days)",
                c.release.image, c.release.version, c.channel, c.seq, target.expires_days
            );
            for line in expected.iter().flat_map(|e| e.lines()) {
                println!("{line}");
            }
        }
        ReleaseCommand::Halt { target, reason } => {
            let (keys, t, expires) = target.signing()?;
            let refs: Vec<&herd_release::SigningKey> = keys.iter().collect();
            let channel = &target.channel;
            let c = herd_release::Repo::at(&target.repo)
                .halt(channel, &reason, &refs, t, expires)
                .with_context(|| format!("halting channel {channel}"))?;
            println!(
                "halted the rollout of {} {} on channel {} (sequence {}, expires in {} days): nodes not on {} yet will not take it ({reason}); `herd release resume` continues it",
                c.release.image,
                c.release.version,
                c.channel,
                c.seq,
                target.expires_days,
                c.release.version
            );
        }
        ReleaseCommand::Resume { target } => {
            let (keys, t, expires) = target.signing()?;
            let refs: Vec<&herd_release::SigningKey> = keys.iter().collect();
            let channel = &target.channel;
            let c = herd_release::Repo::at(&target.repo)
                .resume(channel, &refs, t, expires)
                .with_context(|| format!("resuming channel {channel}"))?;
            println!(
                "resumed the rollout of {} {} on channel {} (sequence {}, expires in {} days): {}",
                c.release.image,
                c.release.version,
                c.channel,
                c.seq,
                target.expires_days,
                match &c.release.rollout {
                    None => "every node may take it now".to_string(),
                    Some(r) => format!("waves keep their schedule from {} (unix seconds)", r.start),
                }
            );
        }
        ReleaseCommand::Rotate {
            repo,
            keys,
            new_keys,
            threshold,
            expires_days,
        } => {
            let (old, new) = (load_keys(&keys)?, load_keys(&new_keys)?);
            let (o, n): (Vec<_>, Vec<_>) = (old.iter().collect(), new.iter().collect());
            let t = now();
            let root = herd_release::Repo::at(&repo).rotate(
                &o,
                &n,
                threshold,
                t,
                t + expires_days * DAY,
            )?;
            println!(
                "key set {} is now current ({} keys, threshold {})",
                root.version,
                root.keys.len(),
                root.threshold
            );
        }
    }
    Ok(())
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The image description (TOML), e.g. images/default.toml.
    image: PathBuf,
    /// Output directory (created if missing).
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,
    /// Where herd's node binaries (herd-init, ...) are. herd-init must be
    /// statically linked. Default: $HERD_BIN_DIR, else
    /// target/x86_64-unknown-linux-gnu/release next to this herd binary.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Package cache. Default: $HERD_CACHE, else $XDG_CACHE_HOME/herd/debs,
    /// else ~/.cache/herd/debs. It also keeps unpacked package archives and
    /// the compressed /usr blocks of recent builds (squashfs-blocks/, at most
    /// 256 MiB, least recently used dropped first).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Never run apt-get: fail if a locked package is not in the cache.
    #[arg(long)]
    offline: bool,
    /// Compress every /usr block again, neither reading nor filling the
    /// compressed-block cache. The image is the same bytes either way: a
    /// cached block is decompressed and compared before it is used.
    #[arg(long)]
    recompress: bool,
    /// Also write DIR/disk.qcow2.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    format: Format,
    /// Print only errors.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// disk.raw only.
    Raw,
    /// disk.raw and disk.qcow2.
    Qcow2,
}

#[derive(Subcommand)]
enum VmCommand {
    /// Boot DISK (raw or qcow2) under QEMU; exits when the VM powers off.
    ///
    /// SIGTERM, SIGINT or SIGHUP press the guest's ACPI power button and wait
    /// up to --grace seconds for it to power off, then quit QEMU; a second
    /// signal quits QEMU at once. QEMU and swtpm never outlive herd (they
    /// get SIGKILL when herd dies, even by SIGKILL). The private directory
    /// (herd-vm-PID-*: OVMF variables, QMP socket, TPM state, in $TMPDIR or
    /// /tmp) is removed on exit; one left by a herd killed with SIGKILL is
    /// removed by the next `herd vm run`.
    ///
    /// Exit status: 0 the guest powered off (by itself or after a signal);
    /// 1 QEMU failed or exited with an error; 124 --timeout ran out and the
    /// VM was killed; 128+N (143 SIGTERM, 130 SIGINT, 129 SIGHUP) signal N
    /// came and QEMU had to be quit, because the grace ran out or a second
    /// signal came (stderr says which).
    Run(VmRunArgs),
    /// Print a libvirt domain for DISK (UEFI/OVMF, q35, virtio disk and
    /// net, serial console, optional TPM): `virsh define` it.
    LibvirtXml(LibvirtXmlArgs),
}

#[derive(clap::Args)]
struct LibvirtXmlArgs {
    /// The disk image (raw or qcow2); the domain refers to its absolute path.
    disk: PathBuf,
    /// Domain name.
    #[arg(long, default_value = "herd")]
    name: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Add an emulated TPM 2.0 (libvirt starts swtpm).
    #[arg(long)]
    tpm: bool,
    /// Use KVM (domain type kvm) instead of TCG (type qemu).
    #[arg(long)]
    kvm: bool,
    /// Forward host 127.0.0.1:HOST to guest port GUEST (TCP); repeatable.
    /// Uses libvirt's passt backend (Debian package passt on the VM host).
    #[arg(long, value_name = "HOST:GUEST")]
    forward: Vec<String>,
    /// Hand this node configuration to the guest through fw_cfg
    /// (opt/herd/config); it is checked first.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct VmRunArgs {
    /// The disk image (raw or qcow2).
    disk: PathBuf,
    /// Attach an emulated TPM 2.0 (swtpm, started and stopped with the VM).
    #[arg(long)]
    tpm: bool,
    /// Forward 127.0.0.1:HOSTPORT on the host to GUESTPORT in the guest (repeatable).
    #[arg(long, value_name = "HOSTPORT:GUESTPORT")]
    forward: Vec<String>,
    /// Let the guest reach 127.0.0.1:HOSTPORT on the host at 10.0.2.100:GUESTPORT (repeatable).
    #[arg(long, value_name = "GUESTPORT:HOSTPORT")]
    guest_forward: Vec<String>,
    /// Stop the VM after this many seconds and exit non-zero.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// After SIGTERM, SIGINT or SIGHUP, wait this long for the guest to
    /// power off before quitting QEMU.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    grace: u64,
    /// Use KVM instead of TCG software emulation (broken on nested hosts).
    #[arg(long)]
    kvm: bool,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Discard the guest's writes to the disk when the VM stops.
    #[arg(long)]
    snapshot: bool,
    /// Keep the UEFI variables in this file across runs (default: a private copy per run).
    #[arg(long, value_name = "FILE")]
    vars: Option<PathBuf>,
    /// Hand this node configuration to the guest through QEMU's fw_cfg
    /// (opt/herd/config), applied on the node's first boot; it is checked
    /// first (`herd config check`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Refuses a node configuration a node would refuse, before booting.
fn checked_config(file: Option<PathBuf>) -> Result<Option<PathBuf>> {
    if let Some(f) = &file {
        herd_provision::check_file(f).map_err(|e| {
            anyhow::anyhow!("{e}\nthe node would refuse this configuration; fix it first")
        })?;
    }
    Ok(file)
}

fn config_check(file: &Path) -> Result<ExitCode> {
    match herd_provision::check_file(file) {
        Ok(c) => {
            println!("{}", herd_provision::ok_report(file, &c));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn default_bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("HERD_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("locating the herd executable")?;
    // target/release/herd -> target/x86_64-unknown-linux-gnu/release
    let guess = exe
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("x86_64-unknown-linux-gnu/release"));
    match guess {
        Some(g) if g.is_dir() => Ok(g),
        _ => bail!(
            "no --bin-dir given and no static node binaries next to {}: build them with \
             `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu -p herd-init` \
             or pass --bin-dir",
            exe.display()
        ),
    }
}

fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HERD_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("herd/debs");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/herd/debs")
}

fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds since 1970")
        }),
        Err(_) => Ok(0),
    }
}

fn run_build(args: BuildArgs) -> Result<()> {
    let opts = BuildOptions {
        image_toml: args.image,
        out: args.out,
        bin_dir: match args.bin_dir {
            Some(d) => d,
            None => default_bin_dir()?,
        },
        cache_dir: args.cache.unwrap_or_else(default_cache_dir),
        fetch: !args.offline,
        block_cache: !args.recompress,
        qcow2: args.format == Format::Qcow2,
        source_date_epoch: source_date_epoch()?,
        quiet: args.quiet,
    };
    build(&opts)?;
    Ok(())
}

fn parse_pair(s: &str, what: &str) -> Result<(u16, u16)> {
    let (a, b) = s
        .split_once(':')
        .with_context(|| format!("{what} {s:?} must look like 8080:80"))?;
    let a = a
        .parse()
        .with_context(|| format!("{what} {s:?}: bad port {a:?}"))?;
    let b = b
        .parse()
        .with_context(|| format!("{what} {s:?}: bad port {b:?}"))?;
    Ok((a, b))
}

fn libvirt_xml(a: LibvirtXmlArgs) -> Result<ExitCode> {
    if a.cpus == 0 || a.memory < 64 {
        anyhow::bail!("--cpus must be at least 1 and --memory at least 64 (MiB)");
    }
    let mut cfg = herd_qemu::VmConfig::new(a.disk);
    cfg.config = checked_config(a.config)?;
    cfg.memory_mib = a.memory;
    cfg.cpus = a.cpus;
    cfg.tpm = a.tpm;
    if a.kvm {
        cfg.accel = herd_qemu::Accel::Kvm;
    }
    for f in &a.forward {
        let (host, guest) = parse_pair(f, "--forward")?;
        cfg.forwards.push(herd_qemu::Forward { host, guest });
    }
    print!("{}", herd_qemu::libvirt::domain_xml(&cfg, &a.name)?);
    Ok(ExitCode::SUCCESS)
}

fn run_vm(args: VmRunArgs) -> Result<ExitCode> {
    use herd_qemu::{Accel, Forward, GuestForward, VmConfig};
    let mut cfg = VmConfig::new(args.disk);
    cfg.config = checked_config(args.config)?;
    cfg.tpm = args.tpm;
    cfg.memory_mib = args.memory;
    if args.cpus == 0 {
        anyhow::bail!("--cpus must be at least 1");
    }
    cfg.cpus = args.cpus;
    cfg.snapshot = args.snapshot;
    cfg.vars = args.vars;
    if args.kvm {
        cfg.accel = Accel::Kvm;
    }
    for f in &args.forward {
        let (host, guest) = parse_pair(f, "--forward")?;
        cfg.forwards.push(Forward { host, guest });
    }
    for f in &args.guest_forward {
        let (guest, host) = parse_pair(f, "--guest-forward")?;
        cfg.guest_forwards.push(GuestForward { guest, host });
    }
    let outcome = herd_qemu::run(
        &cfg,
        args.timeout.map(Duration::from_secs),
        Duration::from_secs(args.grace),
    )?;
    if outcome.timed_out {
        eprintln!(
            "herd vm run: timed out after {} s; the VM was stopped",
            args.timeout.unwrap_or(0)
        );
        return Ok(ExitCode::from(124));
    }
    if let (Some(sig), Some(forced)) = (outcome.signal, outcome.forced) {
        let why = match forced {
            herd_qemu::Forced::Grace => format!(
                "the guest did not power off within {} s (--grace)",
                args.grace
            ),
            herd_qemu::Forced::SecondSignal(s) => {
                format!("a second signal ({}) came", herd_qemu::signal_name(s))
            }
        };
        eprintln!(
            "herd vm run: got {}, and {why}; QEMU was quit without a clean guest shutdown",
            herd_qemu::signal_name(sig)
        );
        return Ok(ExitCode::from(128 + sig as u8));
    }
    if let Some(sig) = outcome.signal {
        eprintln!(
            "herd vm run: got {}; the guest powered off",
            herd_qemu::signal_name(sig)
        );
    }
    Ok(if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Build(a) => run_build(a).map(|()| ExitCode::SUCCESS),
        Command::Pcr(PcrCommand::Verify {
            report,
            path,
            nonce,
            ak,
        }) => (|| {
            let text = std::fs::read_to_string(&report)
                .with_context(|| format!("reading {}", report.display()))?;
            let r: herd_tpm::Report = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a measurement report (GET /v1/measurements)",
                    report.display()
                )
            })?;
            let expect = herd::pcr::QuoteExpectation {
                nonce: nonce
                    .as_deref()
                    .map(hex::decode)
                    .transpose()
                    .context("--nonce is not hex")?,
                ak: ak.clone(),
            };
            let found = herd::pcr::verify(&r, &herd::pcr::predict(&path)?, &expect)?;
            println!("{found}");
            Ok(ExitCode::SUCCESS)
        })(),
        Command::Pcr(PcrCommand::Predict { path, json }) => {
            herd::pcr::predict(&path).and_then(|p| {
                if json {
                    let map: std::collections::BTreeMap<_, _> = p.into_iter().collect();
                    println!("{}", serde_json::to_string_pretty(&map)?);
                } else {
                    print!("{}", herd::pcr::render(&p));
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Vm(VmCommand::Run(a)) => run_vm(a),
        Command::Vm(VmCommand::LibvirtXml(a)) => libvirt_xml(a),
        Command::Config(ConfigCommand::Check { file }) => config_check(&file),
        Command::Key(k) => run_key(k).map(|()| ExitCode::SUCCESS),
        Command::Fleet(FleetCommand::Status {
            etcd,
            ca_file,
            cert_file,
            key_file,
            group,
            json,
        }) => {
            let tls = herd::fleet::TlsFiles {
                ca: ca_file.as_deref(),
                cert: cert_file.as_deref(),
                key: key_file.as_deref(),
            };
            fleet_status(&etcd, tls, group.as_deref(), json).map(|()| ExitCode::SUCCESS)
        }
        Command::Release(r) => run_release(r).map(|()| ExitCode::SUCCESS),
        Command::Serve(a) => herd::serve::serve(&a.repo, &a.listen).map(|()| ExitCode::SUCCESS),
        Command::Flash(a) => herd::flash::flash(
            &a.image,
            &a.target,
            herd::flash::FlashOptions {
                yes: a.yes,
                quiet: a.quiet,
            },
        )
        .with_context(|| format!("flashing {} onto {}", a.image.display(), a.target.display()))
        .map(|f| {
            println!(
                "wrote {} ({} bytes) to {} and read it back: sha256 {} matches",
                a.image.display(),
                f.bytes,
                a.target.display(),
                f.sha256
            );
            ExitCode::SUCCESS
        }),
        Command::SignImage(a) => herd_release::SigningKey::load(&a.key)
            .map_err(anyhow::Error::from)
            .and_then(|k| herd::sign_image::sign_image(&a.image, a.name.as_deref(), &k, a.bundle))
            .map(|d| {
                println!("signed {} ({d})", a.image);
                ExitCode::SUCCESS
            }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
