//! `herd-provision`: applies the node configuration on a herd node's first
//! boot (herd-init runs `herd-provision node` before any service starts),
//! and checks a configuration file offline (`herd-provision check FILE`,
//! the same as `herd config check FILE`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use herd_provision::{
    apply, check_bytes_for, check_file, ok_report, source, CheckError, ImageKeys,
};

#[derive(Parser)]
#[command(
    name = "herd-provision",
    version,
    about = "First-boot provisioning of a herd node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// On the node (run by herd-init): find the configuration (QEMU fw_cfg
    /// opt/herd/config, else herd.toml on a file system labelled CONFIG),
    /// check all of it, and apply it to STATE once. A refused configuration
    /// changes nothing and exits 2.
    Node {
        /// The node root the files are written under.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Check a configuration file: prints OK and what it sets, or every
    /// problem with its line and column (exit status 1).
    Check {
        /// The configuration (TOML).
        file: PathBuf,
    },
}

/// One console line, `[  s.mmm] herd-provision: msg`, timed since boot
/// like herd-init's.
fn say(msg: &str) {
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs: f64 = up
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "[{:5}.{:03}] herd-provision: {msg}",
        secs as u64,
        ((secs.fract()) * 1000.0) as u64
    );
    let _ = out.flush();
}

/// Mounts `dev` read-only, reads `herd.toml`, unmounts.
fn read_from_fs(dev: &Path, fs: source::FsType) -> Result<Vec<u8>> {
    use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
    let dir = Path::new("/run/herd/config");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount(dev, dir, fs.mount_name(), flags, None).with_context(|| {
        format!(
            "cannot mount {} ({}) read-only on {}",
            dev.display(),
            fs.mount_name(),
            dir.display()
        )
    })?;
    let file = dir.join(source::FILE);
    let read = read_limited(&file);
    // Best effort: a config drive left mounted read-only harms nothing.
    let _ = unmount(dir, UnmountFlags::empty());
    read.with_context(|| {
        format!(
            "the file system labelled {} on {} has no readable /{}",
            source::LABEL,
            dev.display(),
            source::FILE
        )
    })
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(herd_provision::config::MAX_SIZE as u64 + 1)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Finds the configuration: (where from, bytes).
fn find() -> Result<Option<(String, Vec<u8>)>> {
    let fw = Path::new(source::FW_CFG_PATH);
    if fw.exists() {
        let bytes = read_limited(fw).with_context(|| format!("reading {}", fw.display()))?;
        return Ok(Some((format!("fw_cfg {}", source::FW_CFG_NAME), bytes)));
    }
    let devices = source::block_devices(Path::new("/sys/class/block"));
    if let Some((dev, fs)) = source::find_labelled(&devices) {
        let bytes = read_from_fs(&dev, fs)?;
        return Ok(Some((
            format!(
                "{}:/{} ({} labelled {})",
                dev.display(),
                source::FILE,
                fs.mount_name(),
                source::LABEL
            ),
            bytes,
        )));
    }
    Ok(None)
}

/// Whether the image carries trusted image keys (`/usr/lib/herd/policy/keys`,
/// which herd-agent reads after the node's own).
fn image_keys(root: &Path) -> ImageKeys {
    let has = std::fs::read_dir(root.join("usr/lib/herd/policy/keys"))
        .map(|rd| {
            rd.flatten().any(|e| {
                e.path()
                    .extension()
                    .is_some_and(|x| x == "pub" || x == "pem")
            })
        })
        .unwrap_or(false);
    if has {
        ImageKeys::Some
    } else {
        ImageKeys::None
    }
}

const UNPROVISIONED: &str = "the node stays unprovisioned: the image's hostname and network, no pods, no trusted image keys";

fn node(root: &Path) -> ExitCode {
    if let Some(outcome) = source::closed(root) {
        say(&format!(
            "provisioning was closed on an earlier boot (outcome {outcome}); the configuration is not read. {}",
            source::REOPEN
        ));
        return ExitCode::SUCCESS;
    }
    if let Some(m) = apply::provisioned(root) {
        say(&format!(
            "provisioned on an earlier boot (sha256 {} from {}); the configuration is not read again",
            m.sha256, m.source
        ));
        return ExitCode::SUCCESS;
    }
    let (from, bytes) = match find() {
        Ok(Some(found)) => found,
        Ok(None) => {
            say(&format!(
                "no configuration (no fw_cfg {}, no file system labelled {} with /{}); {UNPROVISIONED}",
                source::FW_CFG_NAME,
                source::LABEL,
                source::FILE
            ));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            say(&format!("ERROR: {e:#}"));
            say(&format!("nothing was applied; {UNPROVISIONED}"));
            return ExitCode::from(2);
        }
    };
    let checked = match check_bytes_for(&bytes, Path::new(&from), image_keys(root)) {
        Ok(c) => c,
        Err(CheckError::Invalid { invalid, .. }) => {
            for p in &invalid.problems {
                say(&format!("ERROR: configuration from {from}: {p}"));
            }
            say(&format!(
                "the configuration was refused ({} problem{}); nothing was applied; {UNPROVISIONED}. \
                 Fix it (`herd config check FILE` lists every problem) and reboot",
                invalid.problems.len(),
                if invalid.problems.len() == 1 { "" } else { "s" }
            ));
            return ExitCode::from(2);
        }
        Err(e) => {
            say(&format!("ERROR: configuration from {from}: {e}"));
            say(&format!("nothing was applied; {UNPROVISIONED}"));
            return ExitCode::from(2);
        }
    };
    match apply::apply(&checked, root, &from) {
        Ok(files) => {
            say(&format!(
                "applied configuration sha256 {} from {from}: {}",
                checked.sha256,
                checked.summary()
            ));
            for f in files {
                say(&format!("wrote /{f}"));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&format!(
                "ERROR: applying the configuration from {from} failed: {e}; no marker was written, \
                 so the next boot applies it again"
            ));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Node { root } => node(&root),
        Command::Check { file } => match check_file(&file) {
            Ok(c) => {
                println!("{}", ok_report(&file, &c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
