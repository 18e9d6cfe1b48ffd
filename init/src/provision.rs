//! First-boot provisioning, in the real root before any service starts:
//! load QEMU's fw_cfg driver and look for a configuration source (fw_cfg
//! `opt/herd/config`, or a file system labelled CONFIG, found from the
//! devices' first bytes); only when there is one, load the file system
//! drivers and run `/usr/bin/herd-provision node`, which reads, checks and
//! applies the node configuration to STATE once. Its console lines go
//! straight to the console. Whatever it says, the boot goes on: a refused
//! configuration leaves the node unprovisioned (see docs/PROVISIONING.md).
//!
//! Provisioning happens on one boot only: when that boot reaches `ready`,
//! [`close_at_ready`] records on STATE that it is closed, with what came of
//! it (applied, refused, failed, none found), and later boots read neither
//! fw_cfg nor any disk for a configuration.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herd_init::config_source::{self, Outcome};

use crate::{info, modules, sys};

const BIN: &str = "/usr/bin/herd-provision";
const MARKER: &str = "/var/lib/herd/provisioned";
const LIMIT: Duration = Duration::from_secs(60);
/// The module that shows fw_cfg items in sysfs, when the image ships it
/// (the initramfs stage loads it from /sysroot ahead of time).
pub const FW_CFG_MODULE: [&str; 1] = ["qemu_fw_cfg"];
/// Modules (file stems) the file system sources need, when the image ships them.
const FS_MODULES: [&str; 6] = ["fat", "vfat", "nls_cp437", "nls_ascii", "cdrom", "isofs"];

/// What this boot's provisioning came to, for [`close_at_ready`]; unset
/// when provisioning was closed already or the image has none.
static OUTCOME: std::sync::OnceLock<Outcome> = std::sync::OnceLock::new();

/// Called once the boot reached `ready`: records that provisioning is
/// closed, whatever this boot's provisioning came to.
pub fn close_at_ready() {
    let Some(outcome) = OUTCOME.get() else {
        return;
    };
    match config_source::close(Path::new("/"), *outcome) {
        Ok(()) => info!(
            "provisioning: closed (outcome {}): later boots read no fw_cfg and no CONFIG disk; {}",
            outcome.as_str(),
            config_source::REOPEN
        ),
        Err(e) => info!(
            "provisioning: cannot record that provisioning is closed in /{} ({e}); the next boot looks for a configuration again",
            config_source::CLOSED
        ),
    }
}

/// Where a configuration is, if anywhere (fw_cfg needs its module loaded).
fn source_present() -> Option<String> {
    if Path::new(config_source::FW_CFG_PATH).exists() {
        return Some(format!("fw_cfg {}", config_source::FW_CFG_NAME));
    }
    let devices = config_source::block_devices(Path::new("/sys/class/block"));
    config_source::find_labelled(&devices).map(|(dev, fs)| {
        format!(
            "{} ({} labelled {})",
            dev.display(),
            fs.mount_name(),
            config_source::LABEL
        )
    })
}

/// Runs provisioning unless the image has none or it is closed, and keeps
/// what came of it for [`close_at_ready`].
pub fn run() {
    if !Path::new(BIN).exists() {
        return;
    }
    if let Some(outcome) = config_source::closed(Path::new("/")) {
        info!(
            "provisioning: closed on an earlier boot (outcome {outcome}); fw_cfg and CONFIG disks are not read; {}",
            config_source::REOPEN
        );
        return;
    }
    let _ = OUTCOME.set(provision());
}

fn provision() -> Outcome {
    if let Ok(m) = std::fs::read_to_string(MARKER) {
        let sha = m
            .lines()
            .find_map(|l| l.strip_prefix("sha256="))
            .unwrap_or("?");
        info!("provisioning: done on an earlier boot (configuration sha256 {sha}); not read again");
        return Outcome::Applied;
    }
    modules::load_named("/", &FW_CFG_MODULE);
    let Some(found) = source_present() else {
        info!(
            "provisioning: no configuration (no fw_cfg {}, no file system labelled {}); the node keeps the image's settings",
            config_source::FW_CFG_NAME,
            config_source::LABEL
        );
        return Outcome::NoneFound;
    };
    let n = modules::load_named("/", &FS_MODULES);
    info!("provisioning: configuration found on {found}; {n} file system modules loaded; running {BIN}");
    let mut cmd = Command::new(BIN);
    cmd.arg("node")
        .env_clear()
        .env("PATH", "/usr/bin")
        .current_dir("/")
        .stdin(Stdio::null());
    sys::child_setup(&mut cmd, false);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            info!("provisioning: cannot start {BIN}: {e}; the node stays unprovisioned");
            return Outcome::Failed;
        }
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return match status.code() {
                    Some(0) if Path::new(MARKER).exists() => Outcome::Applied,
                    Some(0) => Outcome::NoneFound,
                    Some(2) => {
                        info!("provisioning: configuration refused; continuing with the image's settings");
                        Outcome::Refused
                    }
                    _ => {
                        info!("provisioning: {BIN} failed ({status}); continuing with the image's settings");
                        Outcome::Failed
                    }
                };
            }
            Ok(None) if start.elapsed() > LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                info!(
                    "provisioning: {BIN} did not finish within {} s and was stopped; continuing unprovisioned",
                    LIMIT.as_secs()
                );
                return Outcome::Failed;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                info!("provisioning: waiting for {BIN}: {e}");
                return Outcome::Failed;
            }
        }
    }
}
