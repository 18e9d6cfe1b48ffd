//! herd-buildroot: see Cargo.toml description.
