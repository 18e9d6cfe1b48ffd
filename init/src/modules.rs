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
