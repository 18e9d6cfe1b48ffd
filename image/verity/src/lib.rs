//! herd-verity: see Cargo.toml description.
