//! herd-net: see Cargo.toml description.
