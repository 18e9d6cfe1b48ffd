//! Credentials for private registries: one file per registry,
//! `<dir>/<host[:port]>.toml` (on a node `/etc/herd/registries/`, written
//! by herd-provision), holding either a username and password or a token:
//!
//! ```toml
//! username = "robot"
//! password = "s3cret"
//! # or
//! token = "eyJhbGciOi..."
//! ```
//!
//! The file must be a regular file owned by root (or by the user the
//! process runs as) and readable by its owner only (mode 0600 or 0400);
//! anything else is refused before it is read. The secret never appears in
//! a log line, an error or a `Debug` output.
//!
//! How they are used ([`crate::registry`]): to a `Basic` challenge, a
//! username and password are sent as Basic credentials; to a `Bearer`
//! challenge, a username and password are sent (Basic) to the token realm
//! to get a token, while a `token` is sent to the registry itself as the
//! Bearer token.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine;

/// The largest credentials file read.
const MAX_FILE: u64 = 64 * 1024;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A username and password (Basic, or Basic to the token realm).
    Password {
        /// the user name (not secret)
        username: String,
        /// the password
        password: String,
    },
    /// A Bearer token sent to the registry as it is.
    Token(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Password { username, .. } => {
                write!(
                    f,
                    "Password {{ username: {username:?}, password: <hidden> }}"
                )
            }
            Credentials::Token(_) => write!(f, "Token(<hidden>)"),
        }
    }
}

impl Credentials {
    /// The `Authorization` value for a Basic challenge (None for a token).
    pub(crate) fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Password { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credentials::Token(_) => None,
        }
    }

    /// What kind they are, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Credentials::Password { .. } => "a username and password",
            Credentials::Token(_) => "a token",
        }
    }
}

/// Why a credentials file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Readable or writable by group or others.
    #[error("{}: mode {mode:04o} lets others than its owner read or change it; refusing it: the credentials may have leaked, rotate them and `chmod 600` the file", path.display())]
    Exposed {
        /// the file
        path: PathBuf,
        /// its permission bits
        mode: u32,
    },
    /// Owned by another user than root (or the user herd runs as).
    #[error("{}: owned by uid {uid}, not root; refusing it (`chown root:root` the file)", path.display())]
    NotOwnedByRoot {
        /// the file
        path: PathBuf,
        /// its owner
        uid: u32,
    },
    /// Not a regular file (a symlink, a directory...).
    #[error("{}: not a regular file; refusing it", path.display())]
    NotAFile {
        /// the file
        path: PathBuf,
    },
    /// The content is not what it should be (never quotes the content).
    #[error("{}: {message}; expected `username` and `password`, or `token`", path.display())]
    Malformed {
        /// the file
        path: PathBuf,
        /// what is wrong
        message: String,
    },
    /// It could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// the file
        path: PathBuf,
        /// why
        source: std::io::Error,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

/// The credentials file for `registry` (`host` or `host:port`) in `dir`.
pub fn file_for(dir: &Path, registry: &str) -> PathBuf {
    dir.join(format!("{registry}.toml"))
}

/// Whether `registry` may name a credentials file (no path tricks).
fn valid_registry(registry: &str) -> bool {
    !registry.is_empty()
        && registry.len() <= 255
        && !registry.starts_with('.')
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// The uid of this process (the owner of `/proc/self`).
fn own_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Reads the credentials for `registry` from `dir`: `Ok(None)` when there
/// is no file for it.
pub fn load(dir: &Path, registry: &str) -> Result<Option<Credentials>, CredentialsError> {
    let path = file_for(dir, registry);
    if !valid_registry(registry) {
        return Ok(None);
    }
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CredentialsError::Io { path, source }),
    };
    if !meta.file_type().is_file() {
        return Err(CredentialsError::NotAFile { path });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CredentialsError::Exposed { path, mode });
    }
    if meta.uid() != 0 && Some(meta.uid()) != own_uid() {
        return Err(CredentialsError::NotOwnedByRoot {
            path,
            uid: meta.uid(),
        });
    }
    if meta.len() > MAX_FILE {
        return Err(CredentialsError::Malformed {
            path,
            message: format!("larger than {MAX_FILE} bytes"),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| CredentialsError::Io {
        path: path.clone(),
        source,
    })?;
    parse(&text)
        .map(Some)
        .map_err(|message| CredentialsError::Malformed { path, message })
}

/// Parses a credentials file's text; the error never quotes the text.
pub fn parse(text: &str) -> Result<Credentials, String> {
    // toml's messages quote the offending line, which may hold the secret:
    // only the position is kept.
    let f: File = toml::from_str(text).map_err(|e| match e.span() {
        Some(s) => {
            let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
            format!("not valid TOML or an unknown key (line {line})")
        }
        None => "not valid TOML".to_string(),
    })?;
    let plain = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_control());
    match (f.username, f.password, f.token) {
        (Some(u), Some(p), None) => {
            if !plain(&u) || u.contains(':') || !plain(&p) {
                return Err(
                    "the username (without ':') and password must be non-empty, without control characters"
                        .into(),
                );
            }
            Ok(Credentials::Password {
                username: u,
                password: p,
            })
        }
        (None, None, Some(t)) => {
            if !plain(&t) || t.contains(' ') {
                return Err(
                    "the token must be non-empty, without spaces or control characters".into(),
                );
            }
            Ok(Credentials::Token(t))
        }
        (None, None, None) => Err("no credentials in it".into()),
        _ => {
            Err("both a token and a username/password, or only one of username and password".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &str = "hunter2-Sup3rSecret";

    #[test]
    fn parses_both_kinds_and_hides_the_secret() {
        let c = parse(&format!("username = \"robot\"\npassword = \"{SECRET}\"\n")).unwrap();
        assert!(matches!(&c, Credentials::Password { username, .. } if username == "robot"));
        assert!(!format!("{c:?}").contains(SECRET));
        assert_eq!(
            c.basic_header().unwrap(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("robot:{SECRET}"))
            )
        );
        let t = parse(&format!("token = \"{SECRET}\"")).unwrap();
        assert_eq!(t, Credentials::Token(SECRET.into()));
        assert!(!format!("{t:?}").contains(SECRET));
        assert!(t.basic_header().is_none());
    }

    #[test]
    fn malformed_files_are_refused_without_quoting_them() {
        for bad in [
            format!("username = \"robot\"\npasword = \"{SECRET}\"\n"),
            format!("username = \"robot\"\npassword = \"{SECRET}\"\ntoken = \"x\"\n"),
            format!("password = \"{SECRET}\"\n"),
            format!("token = \"{SECRET} x\"\n"),
            format!("token = {SECRET}\n"),
            format!("username = \"a:b\"\npassword = \"{SECRET}\"\n"),
            String::new(),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(!e.contains(SECRET), "{e}");
            assert!(!e.contains("hunter"), "{e}");
        }
    }

    #[test]
    fn files_others_can_read_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let path = file_for(t.path(), "reg.example:5000");
        assert!(load(t.path(), "reg.example:5000").unwrap().is_none());
        std::fs::write(&path, format!("token = \"{SECRET}\"\n")).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = load(t.path(), "reg.example:5000").unwrap_err();
            assert!(
                matches!(e, CredentialsError::Exposed { mode: m, .. } if m == mode),
                "{e}"
            );
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load(t.path(), "reg.example:5000").unwrap(),
            Some(Credentials::Token(SECRET.into()))
        );
        // Owned by another user than root (this process): refused.
        if own_uid() == Some(0) {
            std::os::unix::fs::chown(&path, Some(1000), None).unwrap();
            let e = load(t.path(), "reg.example:5000").unwrap_err();
            assert!(
                matches!(e, CredentialsError::NotOwnedByRoot { uid: 1000, .. }),
                "{e}"
            );
            std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        }
        // A name that would leave the directory names no file.
        assert!(load(t.path(), "../etc/x").unwrap().is_none());
        // A symlink is not followed.
        let link = file_for(t.path(), "link.example");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            load(t.path(), "link.example").unwrap_err(),
            CredentialsError::NotAFile { .. }
        ));
    }
}
