//! First-boot provisioning, in the real root before any service starts:
//! load the drivers the configuration sources need (QEMU fw_cfg, FAT,
//! ISO 9660) and run `/usr/bin/herd-provision node`, which finds, checks and
//! applies the node configuration to STATE once. Its console lines go
//! straight to the console. Whatever it says, the boot goes on: a refused
//! configuration leaves the node unprovisioned (see docs/PROVISIONING.md).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{info, modules, sys};

const BIN: &str = "/usr/bin/herd-provision";
const MARKER: &str = "/var/lib/herd/provisioned";
const LIMIT: Duration = Duration::from_secs(60);
/// Modules (file stems) the sources need, when the image ships them.
const MODULES: [&str; 7] = [
    "qemu_fw_cfg",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "cdrom",
    "isofs",
];

/// Runs provisioning unless the image has none or it was done already.
pub fn run() {
    if !Path::new(BIN).exists() {
        return;
    }
    if let Ok(m) = std::fs::read_to_string(MARKER) {
        let sha = m
            .lines()
            .find_map(|l| l.strip_prefix("sha256="))
            .unwrap_or("?");
        info!("provisioning: done on an earlier boot (configuration sha256 {sha}); not read again");
        return;
    }
    let n = modules::load_named(&MODULES);
    info!("provisioning: {n} modules loaded for the configuration sources; running {BIN}");
    let mut cmd = Command::new(BIN);
    cmd.arg("node")
        .env_clear()
        .env("PATH", "/usr/bin")
        .current_dir("/")
        .stdin(Stdio::null());
    // SAFETY: between fork and exec only pthread_sigmask (through
    // block_signals) on this thread's own mask, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| sys::block_signals(false));
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            info!("provisioning: cannot start {BIN}: {e}; the node stays unprovisioned");
            return;
        }
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                match status.code() {
                    Some(0) => {}
                    Some(2) => info!(
                        "provisioning: configuration refused; continuing with the image's settings"
                    ),
                    _ => info!(
                        "provisioning: {BIN} failed ({status}); continuing with the image's settings"
                    ),
                }
                return;
            }
            Ok(None) if start.elapsed() > LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                info!(
                    "provisioning: {BIN} did not finish within {} s and was stopped; continuing unprovisioned",
                    LIMIT.as_secs()
                );
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                info!("provisioning: waiting for {BIN}: {e}");
                return;
            }
        }
    }
}
