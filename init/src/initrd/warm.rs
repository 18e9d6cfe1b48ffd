//! Work done on the side while STATE is mounted: the services' programs
//! read into the page cache and, on a first boot, the fw_cfg driver loaded.

use std::fs::File;
use std::io::Read;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use crate::modules;

/// The side thread; it waits for [`Warm::provisioning_open`] after the
/// programs are read.
pub struct Warm {
    thread: JoinHandle<()>,
    open: Sender<bool>,
}

impl Warm {
    /// Reads the head of each service's program into the page cache (exec
    /// reads it), then, once told provisioning may still run (a first
    /// boot), loads the fw_cfg driver it looks for first. A later boot does
    /// not wait for that module (it loads after `ready` with the others). A
    /// read error is the /usr check's to report.
    pub fn start() -> Warm {
        let (open, open_rx) = mpsc::channel::<bool>();
        let thread = std::thread::spawn(move || {
            read_programs();
            if open_rx.recv().unwrap_or(false) {
                modules::load_named("/sysroot", &crate::provision::FW_CFG_MODULE);
            }
        });
        Warm { thread, open }
    }

    /// Says whether provisioning may run on this boot.
    pub fn provisioning_open(&self, open: bool) {
        let _ = self.open.send(open);
    }

    /// Waits for the side work to end.
    pub fn join(self) {
        drop(self.open);
        let _ = self.thread.join();
    }
}

/// Reads the first 256 KiB of every service program under /usr.
fn read_programs() {
    let services = std::fs::read_to_string("/sysroot/usr/lib/herd/init.toml")
        .ok()
        .and_then(|t| herd_init::config::Config::parse(&t).ok())
        .map(|c| c.services)
        .unwrap_or_default();
    for s in services {
        if let Some(prog) = s.exec.first().filter(|p| p.starts_with("/usr/")) {
            if let Ok(f) = File::open(format!("/sysroot{prog}")) {
                let _ = std::io::copy(&mut f.take(256 * 1024), &mut std::io::sink());
            }
        }
    }
}
