//! herd-init: herd's PID 1. The library holds the parts of it that are tested
//! on the host (boot counting, the command line) and re-exports the node
//! library (`herd-node`) under the names its code uses; `main.rs` and its
//! modules do the system calls.

pub mod bootcount;
pub mod cmdline;

// The node library's modules, under the names herd-init's code uses.
pub use herd_node::{backoff, config, config_source, disks, measure, os_release, tree};
