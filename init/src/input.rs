//! The ACPI power button: `button` + `evdev` give /dev/input/event*; a
//! KEY_POWER press becomes SIGPWR to PID 1 (how `virsh shutdown` and
//! QEMU's `system_powerdown` reach a node with no acpid).

use std::collections::HashSet;
use std::io::Read;
use std::time::Duration;

use crate::{info, sys};

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

fn watch(mut f: std::fs::File) {
    let mut ev = [0u8; 24];
    while f.read_exact(&mut ev).is_ok() {
        let kind = u16::from_ne_bytes([ev[16], ev[17]]);
        let code = u16::from_ne_bytes([ev[18], ev[19]]);
        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        if kind == EV_KEY && code == KEY_POWER && value == 1 {
            info!("power button pressed");
            let _ = sys::kill(1, sys::Signal::POWER, false);
        }
    }
}

/// Watches input devices that appear within the first 30 s.
pub fn watch_power_button() {
    let _ = std::thread::Builder::new()
        .name("input".into())
        .stack_size(64 * 1024)
        .spawn(|| {
            let mut seen = HashSet::new();
            for _ in 0..60 {
                if let Ok(rd) = std::fs::read_dir("/dev/input") {
                    for e in rd.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if name.starts_with("event") && seen.insert(name.clone()) {
                            let p = format!("/dev/input/{name}");
                            // Open before announcing: events reach only open readers.
                            let Ok(f) = std::fs::File::open(&p) else {
                                continue;
                            };
                            let dev = std::fs::read_to_string(format!(
                                "/sys/class/input/{name}/device/name"
                            ))
                            .unwrap_or_default();
                            if dev.trim() == "Power Button" {
                                info!("watching the power button ({p})");
                            }
                            let _ = std::thread::Builder::new()
                                .stack_size(64 * 1024)
                                .spawn(move || watch(f));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
}
