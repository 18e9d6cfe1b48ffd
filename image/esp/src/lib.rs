//! herd-esp: see Cargo.toml description.
