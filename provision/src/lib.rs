//! herd-provision: first-boot provisioning of a herd node.
//!
//! [`config`] is the node configuration (schema and full validation),
//! [`apply`] writes it once to STATE, [`source`] finds it on the node (QEMU
//! fw_cfg or a CONFIG-labelled file system). `herd config check` and the
//! on-node `herd-provision` program share all of it.

pub mod apply;
pub mod config;
pub use herd_node::config_source as source;

use std::path::{Path, PathBuf};

pub use config::{Checked, ImageKeys, Invalid, NodeConfig, Problem};

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// the file
        path: PathBuf,
        /// why
        source: std::io::Error,
    },
    /// The file is not UTF-8 text.
    #[error("{path}: not UTF-8 text (a node configuration is a TOML file)")]
    NotText {
        /// the file
        path: PathBuf,
    },
    /// The configuration has problems.
    #[error("{}", lines(.path, .invalid))]
    Invalid {
        /// the file
        path: PathBuf,
        /// every problem
        invalid: Invalid,
    },
}

fn lines(path: &Path, invalid: &Invalid) -> String {
    invalid
        .problems
        .iter()
        .map(|p| {
            if p.line == 0 {
                format!("{}: {}", path.display(), p.message)
            } else {
                format!("{}:{}:{}: {}", path.display(), p.line, p.column, p.message)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks bytes as a node configuration offline; `what` names them in errors.
pub fn check_bytes(bytes: &[u8], what: &Path) -> Result<Checked, CheckError> {
    check_bytes_for(bytes, what, ImageKeys::Unknown)
}

/// Checks bytes as a node configuration for an image with or without keys
/// of its own.
pub fn check_bytes_for(
    bytes: &[u8],
    what: &Path,
    image_keys: ImageKeys,
) -> Result<Checked, CheckError> {
    let text = std::str::from_utf8(bytes).map_err(|_| CheckError::NotText {
        path: what.to_path_buf(),
    })?;
    NodeConfig::parse_for(text, image_keys).map_err(|invalid| CheckError::Invalid {
        path: what.to_path_buf(),
        invalid,
    })
}

/// What `herd config check` prints for a good configuration: the OK line
/// and one line per note.
pub fn ok_report(path: &Path, c: &Checked) -> String {
    let mut out = format!("{}: OK: {}", path.display(), c.summary());
    for n in &c.notes {
        out.push_str(&format!(
            "\n{}:{}:{}: note: {}",
            path.display(),
            n.line,
            n.column,
            n.message
        ));
    }
    out
}

/// Reads and checks a configuration file (`herd config check FILE`).
pub fn check_file(path: &Path) -> Result<Checked, CheckError> {
    let bytes = std::fs::read(path).map_err(|source| CheckError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    check_bytes(&bytes, path)
}
