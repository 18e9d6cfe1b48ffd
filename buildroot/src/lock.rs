//! The lock file: Debian packages pinned by name, version, arch, sha256.

use std::path::Path;

use serde::Deserialize;

use crate::Error;

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// Debian package name.
    pub name: String,
    /// Exact Debian version (may contain an epoch, `1:...`).
    pub version: String,
    /// Architecture, e.g. `amd64`.
    pub arch: String,
    /// sha256 of the .deb, lowercase hex.
    pub sha256: String,
    /// sha256 of the package's data archive, decompressed (what
    /// `dpkg-deb --fsys-tarfile FILE | sha256sum` prints). With it, a build
    /// reuses the decompressed copy in the package cache after checking it
    /// against this value; without it, every build decompresses the .deb
    /// again (a copy in the cache could have been changed by anyone who can
    /// write the cache).
    #[serde(default)]
    pub data_sha256: Option<String>,
}

impl LockedPackage {
    /// Debian's file name for the package (`:` in the version becomes `%3a`).
    pub fn file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

/// A parsed lock file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// The pinned packages.
    #[serde(rename = "package", default)]
    pub packages: Vec<LockedPackage>,
}

impl Lock {
    /// Reads and checks a lock file.
    pub fn load(path: &Path) -> Result<Lock, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::LockRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| Error::LockParse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses lock file text; the error names line and column.
    pub fn parse(text: &str) -> Result<Lock, String> {
        let lock: Lock = toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    (
                        before.matches('\n').count() + 1,
                        s.start - before.rfind('\n').map_or(0, |i| i + 1) + 1,
                    )
                })
                .unwrap_or((0, 0));
            format!("line {line}, column {col}: {}", e.message())
        })?;
        let mut seen = std::collections::HashSet::new();
        let hex64 = |v: &str| {
            v.len() == 64
                && v.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        for p in &lock.packages {
            if !hex64(&p.sha256) {
                return Err(format!(
                    "package {}: sha256 must be 64 lowercase hex digits, got {:?}",
                    p.name, p.sha256
                ));
            }
            if let Some(d) = p.data_sha256.as_deref().filter(|d| !hex64(d)) {
                return Err(format!(
                    "package {}: data_sha256 must be 64 lowercase hex digits, got {d:?}",
                    p.name
                ));
            }
            if !seen.insert(&p.name) {
                return Err(format!("package {} is listed twice", p.name));
            }
        }
        Ok(lock)
    }

    /// The entry for `name`.
    pub fn get(&self, name: &str) -> Option<&LockedPackage> {
        self.packages.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_errors() {
        let ok = "[[package]]\nname = \"a\"\nversion = \"1:2\"\narch = \"amd64\"\nsha256 = \""
            .to_string()
            + &"ab".repeat(32)
            + "\"\n";
        let l = Lock::parse(&ok).unwrap();
        assert_eq!(l.get("a").unwrap().file_name(), "a_1%3a2_amd64.deb");
        let e = Lock::parse(&ok.replace("arch", "arhc")).unwrap_err();
        assert!(e.contains("line 4, column 1") && e.contains("arhc"), "{e}");
        let e = Lock::parse(&ok.replace(&"ab".repeat(32), "abc")).unwrap_err();
        assert!(e.contains("64 lowercase hex"), "{e}");
        assert_eq!(l.get("a").unwrap().data_sha256, None);
        let pinned = ok.clone() + "data_sha256 = \"" + &"cd".repeat(32) + "\"\n";
        let d = "cd".repeat(32);
        assert_eq!(
            Lock::parse(&pinned).unwrap().get("a").unwrap().data_sha256,
            Some(d)
        );
        let e = Lock::parse(&pinned.replace(&"cd".repeat(32), &"CD".repeat(32))).unwrap_err();
        assert!(e.contains("data_sha256 must be 64 lowercase hex"), "{e}");
    }
}
