//! herd-squashfs: see Cargo.toml description.
