//! herd-qemu: see Cargo.toml description.
