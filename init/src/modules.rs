//! Loading kernel modules from a list file (one path per line, in order).

use std::fs::File;

use crate::{info, sys};

/// Loads every module listed in `list`; returns how many were loaded.
/// Modules already present are fine; other failures are logged.
pub fn load_list(list: &str) -> usize {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) => {
            info!("no module list {list}: {e}");
            return 0;
        }
    };
    let mut n = 0;
    for path in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match File::open(path).and_then(|f| sys::finit_module(&f)) {
            Ok(()) => n += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => info!("cannot load module {path}: {e}"),
        }
    }
    n
}

/// Loads the modules named `names` (file stems, e.g. `qemu_fw_cfg`) from
/// the real root's `/usr/lib/modules/*/herd-modules` lists, in list order
/// (dependencies first); returns how many were loaded. Names the image does
/// not ship are skipped.
pub fn load_named(names: &[&str]) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir("/usr/lib/modules") else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path().join("herd-modules")) else {
            continue;
        };
        for path in text.lines().map(str::trim) {
            let stem = path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".ko");
            if !names.contains(&stem) {
                continue;
            }
            match File::open(path).and_then(|f| sys::finit_module(&f)) {
                Ok(()) => n += 1,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => info!("cannot load module {path}: {e}"),
            }
        }
    }
    n
}
