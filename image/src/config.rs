//! `image.toml`: the declarative description of a herd image.
//!
//! Every table rejects unknown keys, and parse errors carry the file, line and
//! column, so a typo never silently changes an image.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// Errors reading an image description.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read image description {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A size in bytes, written in the file as `"64M"`, `"1G"`, `"512K"` or a
/// plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub const MIB: u64 = 1024 * 1024;

    pub fn parse(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            None => (s, 1),
            Some((i, _)) => {
                let unit = s[i..].trim_end_matches("iB").trim_end_matches('B');
                let mult = match unit {
                    "K" | "k" => 1024,
                    "M" => 1024 * 1024,
                    "G" => 1024 * 1024 * 1024,
                    _ => {
                        return Err(format!(
                            "unknown size unit in {s:?}: use a number of bytes or a suffix K, M or G (powers of 1024)"
                        ))
                    }
                };
                (&s[..i], mult)
            }
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size: write e.g. \"64M\" or \"1G\""))?;
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", human_bytes(self.0))
    }
}

/// Bytes as a short human string: `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(Size(n)),
            Raw::Str(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// The whole image description.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub image: ImageSection,
    pub kernel: KernelSection,
    #[serde(default)]
    pub bootloader: BootloaderSection,
    #[serde(default)]
    pub usr: UsrSection,
    #[serde(default)]
    pub partitions: PartitionsSection,
    /// herd-init's configuration, written to `/usr/lib/herd/init.toml`.
    #[serde(default)]
    pub init: Option<toml::Table>,
    /// herd-update's configuration, written to `/usr/lib/herd/update.toml`;
    /// its `root` key names the release repository's trusted key set
    /// (`root/1.json`, relative to this file), baked in as
    /// `/usr/lib/herd/update-root.json`.
    #[serde(default)]
    pub update: Option<toml::Table>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// Image name: letters, digits and '-', used in file names and UUIDs.
    pub name: String,
    /// Image version, e.g. "0.1.0"; goes into os-release and the boot entry.
    pub version: String,
    /// The package lock file, relative to this file.
    pub lock: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    /// The locked kernel package, e.g. "linux-image-6.1.0-56-cloud-amd64".
    pub package: String,
    /// Extra kernel command-line words (herd adds usrhash=, mount.usr=, herd.slot=).
    #[serde(default = "default_cmdline")]
    pub cmdline: Vec<String>,
    /// Modules the initramfs loads to reach /usr and STATE (dependencies are added).
    #[serde(default)]
    pub initrd_modules: Vec<String>,
    /// Modules shipped in /usr and loaded by herd-init in the real root.
    #[serde(default)]
    pub usr_modules: Vec<String>,
}

fn default_cmdline() -> Vec<String> {
    vec!["console=ttyS0".into(), "panic=5".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootloaderSection {
    /// The locked package that carries systemd-boot.
    #[serde(default = "default_bootloader_package")]
    pub package: String,
    /// Boot tries a new slot gets before the boot loader gives up on it.
    #[serde(default = "default_tries")]
    pub tries: u32,
    /// systemd-boot menu timeout in seconds (0 = no menu).
    #[serde(default)]
    pub timeout: u32,
}

impl Default for BootloaderSection {
    fn default() -> Self {
        Self {
            package: default_bootloader_package(),
            tries: default_tries(),
            timeout: 0,
        }
    }
}

fn default_bootloader_package() -> String {
    "systemd-boot-efi".into()
}
fn default_tries() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsrSection {
    /// zstd compression level of the squashfs (1-22).
    #[serde(default = "default_zstd_level")]
    pub compression_level: i32,
    /// herd's own binaries, taken from the binary directory (`--bin-dir`).
    #[serde(default = "default_binaries")]
    pub binaries: Vec<String>,
    /// Files taken from other locked packages.
    #[serde(default)]
    pub package: Vec<UsrPackage>,
    /// Files written from literal content.
    #[serde(default)]
    pub file: Vec<UsrFile>,
}

impl Default for UsrSection {
    fn default() -> Self {
        Self {
            compression_level: default_zstd_level(),
            binaries: default_binaries(),
            package: Vec::new(),
            file: Vec::new(),
        }
    }
}

fn default_zstd_level() -> i32 {
    15
}
fn default_binaries() -> Vec<String> {
    vec!["herd-init".into()]
}

/// Files selected from a locked package and where they land in `/usr`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsrPackage {
    pub name: String,
    /// Map of package path (e.g. "bin/busybox") to path below /usr (e.g. "bin/busybox").
    pub files: std::collections::BTreeMap<String, String>,
}

/// A file at a path below `/usr`: literal `content`, or the bytes of a
/// `source` file on the build host (relative to the image description).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsrFile {
    pub path: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub source: Option<PathBuf>,
    #[serde(default = "default_file_mode")]
    pub mode: u16,
}

fn default_file_mode() -> u16 {
    0o644
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionsSection {
    #[serde(default = "default_esp")]
    pub esp: Size,
    /// Size of each USR slot (A and B).
    #[serde(default = "default_usr")]
    pub usr: Size,
    /// Size of STATE in the image; herd-init grows it to fill the disk.
    #[serde(default = "default_state")]
    pub state: Size,
}

impl Default for PartitionsSection {
    fn default() -> Self {
        Self {
            esp: default_esp(),
            usr: default_usr(),
            state: default_state(),
        }
    }
}

fn default_esp() -> Size {
    Size(64 * Size::MIB)
}
fn default_usr() -> Size {
    Size(128 * Size::MIB)
}
fn default_state() -> Size {
    Size(64 * Size::MIB)
}

/// Line and column (1-based) of a byte offset in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// Parse `text` as TOML into `T`, turning errors into ones with file, line and column.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().to_string(),
        }
    })
}

impl ImageConfig {
    /// Read and validate an image description.
    pub fn load(path: &Path) -> Result<ImageConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: ImageConfig = parse_toml(path, &text)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let name = &self.image.name;
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(invalid(format!(
                "image.name {name:?} must be 1-32 characters of a-z, 0-9 and '-'"
            )));
        }
        let v = &self.image.version;
        if v.is_empty()
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_+~".contains(c))
        {
            return Err(invalid(format!(
                "image.version {v:?} must be non-empty and use only letters, digits and . - _ + ~"
            )));
        }
        if !(1..=22).contains(&self.usr.compression_level) {
            return Err(invalid(format!(
                "usr.compression_level {} is out of range: zstd levels are 1-22",
                self.usr.compression_level
            )));
        }
        if self.bootloader.tries == 0 || self.bootloader.tries > 9 {
            return Err(invalid(format!(
                "bootloader.tries {} is out of range: use 1-9",
                self.bootloader.tries
            )));
        }
        for w in &self.kernel.cmdline {
            if herd_contract::cmdline::is_herd_word(w) {
                return Err(invalid(format!(
                    "kernel.cmdline must not set {w:?}: herd build writes usrhash=, mount.usr= and herd.slot= itself"
                )));
            }
        }
        let min = |what: &str, s: Size, min_mib: u64| {
            if s.0 < min_mib * Size::MIB {
                Err(invalid(format!(
                    "partitions.{what} is {s}, the minimum is {min_mib} MiB"
                )))
            } else {
                Ok(())
            }
        };
        min("esp", self.partitions.esp, 40)?;
        min("usr", self.partitions.usr, 8)?;
        min("state", self.partitions.state, 16)?;
        Ok(())
    }

    /// The lock file's path, resolved against the directory of `image_toml`.
    pub fn lock_path(&self, image_toml: &Path) -> PathBuf {
        let base = image_toml.parent().unwrap_or(Path::new("."));
        base.join(&self.image.lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[image]
name = "herd"
version = "1.0"
lock = "x.lock"

[kernel]
package = "linux-image-x"
"#;

    fn parse(text: &str) -> Result<ImageConfig, ConfigError> {
        let p = Path::new("image.toml");
        let c: ImageConfig = parse_toml(p, text)?;
        c.validate(p)?;
        Ok(c)
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("64M").unwrap().0, 64 << 20);
        assert_eq!(Size::parse("1G").unwrap().0, 1 << 30);
        assert_eq!(Size::parse("4KiB").unwrap().0, 4096);
        assert_eq!(Size::parse("123").unwrap().0, 123);
        assert!(Size::parse("12Q")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(Size::parse("M").is_err());
    }

    #[test]
    fn minimal_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.partitions.usr.0, 128 << 20);
        assert_eq!(c.bootloader.tries, 3);
        assert_eq!(c.usr.binaries, ["herd-init"]);
    }

    #[test]
    fn unknown_key_has_line_and_column() {
        let text = format!("{MINIMAL}\n[partitions]\nesp = \"64M\"\nusrr = \"1G\"\n");
        let err = parse(&text).unwrap_err().to_string();
        let line = text.lines().position(|l| l.starts_with("usrr")).unwrap() + 1;
        assert!(
            err.starts_with(&format!("image.toml:{line}:1: unknown field `usrr`")),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_explained() {
        let text = MINIMAL.replace("name = \"herd\"", "name = \"Herd OS\"");
        assert!(parse(&text).unwrap_err().to_string().contains("image.name"));
        let text = format!("{MINIMAL}\n[partitions]\nusr = \"1M\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("partitions.usr is 1.0 MiB, the minimum is 8 MiB"),
            "{err}"
        );
        let text = format!("{MINIMAL}\n[usr]\ncompression_level = 40\n");
        assert!(parse(&text).unwrap_err().to_string().contains("1-22"));
        let text = MINIMAL.replace(
            "package = \"linux-image-x\"",
            "package = \"k\"\ncmdline = [\"usrhash=00\"]",
        );
        assert!(parse(&text).unwrap_err().to_string().contains("usrhash="));
    }
}
