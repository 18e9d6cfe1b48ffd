//! herd-gpt: see Cargo.toml description.
