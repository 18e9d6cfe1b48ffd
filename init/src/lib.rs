//! herd-init: herd's PID 1. The library holds what the image builder shares
//! with it (the configuration type) and the parts that are tested on the
//! host; `main.rs` and its modules do the system calls.

pub mod backoff;
pub mod bootcount;
pub mod cmdline;
pub mod config;
pub mod config_source;
pub mod disks;
pub mod measure;
pub mod os_release;
pub mod tree;
