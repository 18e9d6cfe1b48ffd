//! herd-cpio: see Cargo.toml description.
