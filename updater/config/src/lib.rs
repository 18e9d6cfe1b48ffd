//! herd-update's configuration: `/usr/lib/herd/update.toml` from the image,
//! with the node's `/etc/herd/update.toml` laid over it. Parsing and checks
//! only, no I/O, so the builder and provisioning validate a configuration
//! with the updater's own rules without linking the updater.

use serde::{Deserialize, Serialize};

/// A configuration that does not parse or does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// What is wrong, and how to write it instead.
    #[error("configuration: {0}")]
    Config(String),
}

/// Where the configuration lives in the image.
pub const CONFIG: &str = "/usr/lib/herd/update.toml";
/// The node's own settings (written once by provisioning on STATE); each
/// key overrides the image's.
pub const LOCAL: &str = "/etc/herd/update.toml";
/// The trusted root key set baked into the image.
pub const TRUSTED_ROOT: &str = "/usr/lib/herd/update-root.json";
/// The updater's state directory (on STATE).
pub const STATE_DIR: &str = herd_contract::paths::UPDATE_STATE_DIR;

/// When to reboot into a new release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reboot {
    /// As soon as the slot is ready.
    #[default]
    Immediate,
    /// Only inside the daily maintenance window (`window`, UTC).
    Window,
    /// Never by itself: an operator runs `herd-init reboot`.
    Never,
    /// Only with a reboot slot of the fleet's group (`[lock]`), and inside
    /// `window` when one is set.
    Coordinated,
}

/// Which service hands out reboot slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A counting semaphore in etcd v3 (its JSON gateway).
    Etcd,
    /// A FleetLock server (Zincati's protocol).
    Fleetlock,
}

/// `[lock]`: where a `reboot = "coordinated"` node takes its reboot slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// The backend.
    pub backend: Backend,
    /// etcd client URLs, `http://host:2379` or `https://host:2379`, tried
    /// in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// etcd over TLS: a PEM file of the CA certificate(s) that alone are
    /// trusted for the endpoints (else the built-in Mozilla roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// etcd over TLS: this node's client certificate (PEM; the chain up to
    /// its CA may follow it), for etcd's `--client-cert-auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// The private key of `cert_file` (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// The FleetLock server's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The group whose slots this node shares.
    #[serde(default = "default_group")]
    pub group: String,
    /// How many nodes of the group may reboot at once (etcd; a FleetLock
    /// server keeps its own count).
    #[serde(default = "one")]
    pub max_concurrent: u32,
    /// The etcd lease's TTL: a node that dies holding a slot frees it after
    /// this long, so it must exceed the time a reboot takes until the
    /// updater runs again.
    #[serde(default = "ttl")]
    pub ttl_secs: u64,
}

fn default_group() -> String {
    "default".into()
}
fn one() -> u32 {
    1
}
fn ttl() -> u64 {
    300
}

impl LockConfig {
    fn check(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(format!("[lock]: {m}")));
        if self.group.is_empty()
            || !self
                .group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return bad(format!(
                "group {:?}: use letters, digits, '.', '_' and '-' only (it is part of a key path)",
                self.group
            ));
        }
        let http = |u: &str, what: &str| -> Result<(), Error> {
            if u.starts_with("http://") && u.len() > 7 {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "[lock]: {what} {u:?}: write http://host:port (TLS to a FleetLock server is not supported yet)"
                )))
            }
        };
        let files = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        let tls_files: Vec<&str> = files
            .iter()
            .filter(|(_, f)| f.is_some())
            .map(|(k, _)| *k)
            .collect();
        for (k, f) in files {
            if let Some(f) = f {
                if !f.starts_with('/') {
                    return bad(format!(
                        "{k} {f:?}: write an absolute path (e.g. /etc/herd/lock/{})",
                        if k == "key_file" {
                            "client.key"
                        } else if k == "ca_file" {
                            "ca.pem"
                        } else {
                            "client.pem"
                        }
                    ));
                }
            }
        }
        match self.backend {
            Backend::Etcd => {
                if self.endpoints.is_empty() {
                    return bad(
                        "backend = \"etcd\" needs endpoints = [\"http://host:2379\", ...]".into(),
                    );
                }
                if self.url.is_some() {
                    return bad(
                        "url is for backend = \"fleetlock\"; etcd takes endpoints = [...]".into(),
                    );
                }
                self.check_endpoints(&tls_files)?;
                match (&self.cert_file, &self.key_file) {
                    (Some(_), None) => {
                        return bad(
                            "cert_file needs key_file, the client certificate's private key".into(),
                        )
                    }
                    (None, Some(_)) => {
                        return bad(
                            "key_file needs cert_file, the client certificate it belongs to".into(),
                        )
                    }
                    _ => {}
                }
                if self.max_concurrent == 0 {
                    return bad("max_concurrent must be at least 1".into());
                }
                if self.ttl_secs < 2 {
                    return bad(
                        "ttl_secs must be at least 2 (the lease is refreshed every third of it)"
                            .into(),
                    );
                }
            }
            Backend::Fleetlock => {
                let Some(u) = &self.url else {
                    return bad("backend = \"fleetlock\" needs url = \"http://host:port\"".into());
                };
                if !self.endpoints.is_empty() {
                    return bad(
                        "endpoints are for backend = \"etcd\"; fleetlock takes url = \"...\""
                            .into(),
                    );
                }
                http(u, "url")?;
                if !tls_files.is_empty() {
                    return bad(format!(
                        "{} {} for backend = \"etcd\" (TLS to a FleetLock server is not supported yet)",
                        tls_files.join(", "),
                        if tls_files.len() == 1 { "is" } else { "are" }
                    ));
                }
            }
        }
        Ok(())
    }

    /// etcd endpoints: all `http://` or all `https://`, and `https://`
    /// when TLS files are given.
    fn check_endpoints(&self, tls_files: &[&str]) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(format!("[lock]: {m}")));
        let mut https = 0;
        for e in &self.endpoints {
            let rest = e
                .strip_prefix("https://")
                .inspect(|_| https += 1)
                .or_else(|| e.strip_prefix("http://"));
            if rest.is_none_or(str::is_empty) {
                return bad(format!(
                    "endpoint {e:?}: write http://host:port, or https://host:port for etcd over TLS"
                ));
            }
        }
        if https != 0 && https != self.endpoints.len() {
            return bad(format!(
                "endpoints {:?} mix http:// and https://: a node speaks to its etcd cluster one way; write https:// for every endpoint of a TLS cluster",
                self.endpoints
            ));
        }
        if https == 0 && !tls_files.is_empty() {
            return bad(format!(
                "{} {} for etcd over TLS, but the endpoints are plain http:// ({:?}): write https:// endpoints, or remove {}",
                tls_files.join(", "),
                if tls_files.len() == 1 { "is" } else { "are" },
                self.endpoints,
                tls_files.join(", ")
            ));
        }
        Ok(())
    }

    /// Whether the etcd endpoints are `https://`.
    pub fn tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }
}

/// A daily time window in UTC, `HH:MM-HH:MM`; it may wrap past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight UTC when it opens.
    pub start: u32,
    /// Minutes after midnight UTC when it closes.
    pub end: u32,
}

impl Window {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(s: &str) -> Result<Window, Error> {
        let bad = || {
            Error::Config(format!(
                "window {s:?}: write HH:MM-HH:MM in UTC, e.g. \"02:00-04:00\""
            ))
        };
        let minute = |t: &str| -> Result<u32, Error> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let w = Window {
            start: minute(a)?,
            end: minute(b)?,
        };
        if w.start == w.end {
            return Err(Error::Config(format!(
                "window {s:?} is empty: its start and end are the same"
            )));
        }
        Ok(w)
    }

    /// Whether `unix` seconds fall inside the window.
    pub fn contains(&self, unix: u64) -> bool {
        let m = ((unix / 60) % (24 * 60)) as u32;
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }
}

/// The updater's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Repository base URL, e.g. `http://10.0.2.100:8080` or
    /// `https://updates.example.com/herd`.
    pub repository: String,
    /// For an `https://` repository: a PEM file of the CA certificate(s)
    /// that alone are trusted for it (pinning), instead of the Mozilla
    /// root certificates built into herd-update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Channel to follow.
    #[serde(default = "stable")]
    pub channel: String,
    /// Seconds between checks (a random 0–10 % is added).
    #[serde(default = "interval")]
    pub interval_secs: u64,
    /// Reboot policy.
    #[serde(default)]
    pub reboot: Reboot,
    /// The maintenance window for `reboot = "window"`: `HH:MM-HH:MM` UTC.
    #[serde(default)]
    pub window: Option<String>,
    /// Boot tries a new slot gets before the boot loader falls back.
    #[serde(default = "tries")]
    pub tries: u32,
    /// Where reboot slots come from, for `reboot = "coordinated"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockConfig>,
}

fn stable() -> String {
    "stable".into()
}
fn interval() -> u64 {
    300
}
fn tries() -> u32 {
    3
}

impl UpdateConfig {
    /// Parses and checks the TOML text.
    pub fn parse(text: &str) -> Result<UpdateConfig, Error> {
        let c: UpdateConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        let https = c.repository.starts_with("https://");
        if !https && !c.repository.starts_with("http://") {
            return Err(Error::Config(format!(
                "repository {:?}: write an http:// or https:// URL",
                c.repository
            )));
        }
        if let Some(ca) = &c.ca_file {
            if !https {
                return Err(Error::Config(format!(
                    "ca_file {ca:?} pins the CA of an https:// repository, but repository is {:?}: write https://, or remove ca_file",
                    c.repository
                )));
            }
            if !ca.starts_with('/') {
                return Err(Error::Config(format!(
                    "ca_file {ca:?}: write an absolute path (e.g. /usr/lib/herd/repository-ca.pem)"
                )));
            }
        }
        if c.tries == 0 || c.interval_secs == 0 {
            return Err(Error::Config(
                "tries and interval_secs must be at least 1".into(),
            ));
        }
        match (c.reboot, &c.window) {
            (Reboot::Window, None) => {
                return Err(Error::Config(
                    "reboot = \"window\" needs window = \"HH:MM-HH:MM\" (UTC)".into(),
                ))
            }
            (_, Some(w)) => {
                Window::parse(w)?;
            }
            _ => {}
        }
        match (c.reboot, &c.lock) {
            (Reboot::Coordinated, None) => {
                return Err(Error::Config(
                    "reboot = \"coordinated\" needs a [lock] table: backend = \"etcd\" with endpoints, or backend = \"fleetlock\" with url".into(),
                ))
            }
            (_, Some(l)) => l.check()?,
            _ => {}
        }
        Ok(c)
    }

    /// The image's settings with the node's own (`/etc/herd/update.toml`,
    /// from provisioning) laid over them key by key, then checked as one.
    pub fn parse_with_local(image: &str, local: Option<&str>) -> Result<UpdateConfig, Error> {
        let Some(local) = local else {
            return UpdateConfig::parse(image);
        };
        let mut t: toml::Table = toml::from_str(image).map_err(|e| Error::Config(e.to_string()))?;
        let l: toml::Table =
            toml::from_str(local).map_err(|e| Error::Config(format!("{LOCAL}: {e}")))?;
        t.extend(l);
        UpdateConfig::parse(&toml::to_string(&t).map_err(|e| Error::Config(e.to_string()))?)
    }

    /// The maintenance window, when one is set.
    pub fn window(&self) -> Option<Window> {
        self.window.as_deref().and_then(|w| Window::parse(w).ok())
    }

    /// Whether a reboot into a new slot may happen at `unix` seconds.
    pub fn may_reboot(&self, unix: u64) -> bool {
        match self.reboot {
            Reboot::Immediate => true,
            Reboot::Never => false,
            Reboot::Window => self.window().is_some_and(|w| w.contains(unix)),
            // The slot is taken by the updater; here only the window counts.
            Reboot::Coordinated => self.window().is_none_or(|w| w.contains(unix)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = UpdateConfig::parse("repository = \"http://10.0.2.100:8080\"\n").unwrap();
        assert_eq!(
            (c.channel.as_str(), c.interval_secs, c.reboot, c.tries),
            ("stable", 300, Reboot::Immediate, 3)
        );
        assert!(UpdateConfig::parse("repository = \"ftp://x\"\n").is_err());
        let https = UpdateConfig::parse(
            "repository = \"https://x/herd\"\nca_file = \"/usr/lib/herd/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(https.ca_file.as_deref(), Some("/usr/lib/herd/ca.pem"));
        let e =
            UpdateConfig::parse("repository = \"http://x\"\nca_file = \"/ca.pem\"\n").unwrap_err();
        assert!(e.to_string().contains("write https://"), "{e}");
        assert!(UpdateConfig::parse("repository = \"https://x\"\nca_file = \"ca.pem\"\n").is_err());
        assert!(UpdateConfig::parse("repository = \"http://x\"\nchanel = \"a\"\n").is_err());
        assert!(UpdateConfig::parse("repository = \"http://x\"\nreboot = \"window\"\n").is_err());
    }

    #[test]
    fn local_settings_override_the_image() {
        let image = "repository = \"http://a\"\nchannel = \"stable\"\n";
        let c = UpdateConfig::parse_with_local(
            image,
            Some("channel = \"beta\"\nreboot = \"window\"\nwindow = \"02:00-04:00\"\n"),
        )
        .unwrap();
        assert_eq!(
            (c.repository.as_str(), c.channel.as_str()),
            ("http://a", "beta")
        );
        assert_eq!(c.reboot, Reboot::Window);
        assert_eq!(
            UpdateConfig::parse_with_local(image, None).unwrap().channel,
            "stable"
        );
        assert!(UpdateConfig::parse_with_local(image, Some("reboot = \"window\"\n")).is_err());
        assert!(UpdateConfig::parse_with_local(image, Some("chanel = \"x\"\n")).is_err());
    }

    #[test]
    fn lock_table() {
        let base = "repository = \"http://x\"\nreboot = \"coordinated\"\n";
        let e = UpdateConfig::parse(base).unwrap_err().to_string();
        assert!(e.contains("needs a [lock] table"), "{e}");
        let c = UpdateConfig::parse(&format!(
            "{base}[lock]\nbackend = \"etcd\"\nendpoints = [\"http://10.0.0.1:2379\"]\n"
        ))
        .unwrap();
        let l = c.lock.unwrap();
        assert_eq!(
            (l.backend, l.group.as_str(), l.max_concurrent, l.ttl_secs),
            (Backend::Etcd, "default", 1, 300)
        );
        let f = UpdateConfig::parse(&format!(
            "{base}window = \"02:00-04:00\"\n[lock]\nbackend = \"fleetlock\"\nurl = \"http://a:3333\"\ngroup = \"web\"\n"
        ))
        .unwrap();
        let at = |h: u64| 86_400 * 20_000 + h * 3600;
        assert!(f.may_reboot(at(3)) && !f.may_reboot(at(5)));
        for (bad, says) in [
            ("backend = \"etcd\"\n", "needs endpoints"),
            (
                "backend = \"etcd\"\nendpoints = [\"ftp://a:2379\"]\n",
                "or https://host:port",
            ),
            (
                "backend = \"etcd\"\nendpoints = [\"https://a:2379\", \"http://b:2379\"]\n",
                "mix http:// and https://",
            ),
            (
                "backend = \"etcd\"\nendpoints = [\"http://a:2379\"]\nca_file = \"/ca.pem\"\n",
                "write https:// endpoints, or remove ca_file",
            ),
            (
                "backend = \"etcd\"\nendpoints = [\"https://a:2379\"]\ncert_file = \"/c.pem\"\n",
                "cert_file needs key_file",
            ),
            (
                "backend = \"etcd\"\nendpoints = [\"https://a:2379\"]\nkey_file = \"/k.pem\"\n",
                "key_file needs cert_file",
            ),
            (
                "backend = \"etcd\"\nendpoints = [\"https://a:2379\"]\nca_file = \"ca.pem\"\n",
                "absolute path",
            ),
            (
                "backend = \"fleetlock\"\nurl = \"http://a\"\nca_file = \"/ca.pem\"\n",
                "ca_file is for backend = \"etcd\"",
            ),
            (
                "backend = \"fleetlock\"\nurl = \"https://a\"\n",
                "TLS to a FleetLock server",
            ),
            (
                "backend = \"etcd\"\nendpoints = [\"http://a\"]\nmax_concurrent = 0\n",
                "at least 1",
            ),
            (
                "backend = \"etcd\"\nendpoints = [\"http://a\"]\ngroup = \"a/b\"\n",
                "key path",
            ),
            ("backend = \"fleetlock\"\n", "needs url"),
            (
                "backend = \"fleetlock\"\nurl = \"http://a\"\nendpoints = [\"http://a\"]\n",
                "endpoints are for",
            ),
            ("backend = \"zk\"\nurl = \"http://a\"\n", "unknown variant"),
            (
                "backend = \"etcd\"\nendpoints = [\"http://a\"]\nttl = 3\n",
                "unknown field",
            ),
        ] {
            let e = UpdateConfig::parse(&format!("{base}[lock]\n{bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let tls = UpdateConfig::parse(&format!(
            "{base}[lock]\nbackend = \"etcd\"\nendpoints = [\"https://e1:2379\", \"https://e2:2379\"]\n\
             ca_file = \"/etc/herd/lock/ca.pem\"\ncert_file = \"/etc/herd/lock/client.pem\"\nkey_file = \"/etc/herd/lock/client.key\"\n"
        ))
        .unwrap()
        .lock
        .unwrap();
        assert!(tls.tls());
        assert_eq!(tls.key_file.as_deref(), Some("/etc/herd/lock/client.key"));
        // https without files: the built-in roots, no client certificate.
        assert!(UpdateConfig::parse(&format!(
            "{base}[lock]\nbackend = \"etcd\"\nendpoints = [\"https://e1:2379\"]\n"
        ))
        .is_ok());
        // The node's [lock] goes over the image's.
        let local = UpdateConfig::parse_with_local(
            "repository = \"http://x\"\n",
            Some(
                "reboot = \"coordinated\"\n[lock]\nbackend = \"fleetlock\"\nurl = \"http://f:1\"\n",
            ),
        )
        .unwrap();
        assert_eq!(local.lock.unwrap().backend, Backend::Fleetlock);
    }

    #[test]
    fn maintenance_window() {
        let c = UpdateConfig::parse(
            "repository = \"http://x\"\nreboot = \"window\"\nwindow = \"23:30-01:00\"\n",
        )
        .unwrap();
        let at = |h: u64, m: u64| 86_400 * 20_000 + h * 3600 + m * 60;
        assert!(c.may_reboot(at(23, 45)) && c.may_reboot(at(0, 59)));
        assert!(!c.may_reboot(at(1, 0)) && !c.may_reboot(at(12, 0)));
        let w = Window::parse("02:00-04:00").unwrap();
        assert!(w.contains(at(3, 0)) && !w.contains(at(4, 0)) && !w.contains(at(1, 59)));
        for bad in ["2-4", "25:00-01:00", "02:00-02:00", "02:00"] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }
}
