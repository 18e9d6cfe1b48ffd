//! The herd build-host command as a library: image description, build
//! pipeline and the pieces it writes. `src/main.rs` is the CLI.

pub mod block_cache;
pub mod boot;
pub mod config;
pub mod elf;
pub mod flash;
pub mod fleet;
pub mod manifest;
pub mod output;
pub mod pcr;
pub mod pipeline;
pub mod progress;
pub mod publish;
pub mod qcow2;
pub mod sbom;
pub mod serve;
pub mod sign_image;
pub mod sparse;
pub mod state;
