//! The node configuration: what a node is told on its first boot.
//!
//! ```toml
//! version = 1                      # optional; this herd reads version 1
//! hostname = "node-7"
//!
//! [network]                        # herd-init's [network], replaces the image's
//! mode = "static"                  # "dhcp" | "static" | "off"
//! interface = "eth0"
//! address = "10.0.2.15/24"
//! gateway = "10.0.2.2"
//! dns = ["10.0.2.3"]
//!
//! [images]
//! insecure_registries = ["10.0.2.100:5000"]   # optional: registries reached over plain HTTP
//!
//! [[images.registry]]              # credentials for a private registry, written to
//! host = "registry.example:5000"    # /etc/herd/registries/HOST.toml (mode 0600)
//! username = "robot"               # username and password, or token
//! password = "..."
//!
//! [[images.key]]                   # keys whose signatures make an image runnable
//! name = "ops"
//! key = "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----"   # or 64 hex digits
//!
//! [[pod]]                          # a static pod (Kubernetes v1 Pod YAML)
//! manifest = """
//! apiVersion: v1
//! kind: Pod
//! ...
//! """
//!
//! [update]                         # overrides of the image's herd-update settings
//! repository = "http://10.0.2.100:8080"
//! channel = "beta"
//! reboot = "window"                # "immediate" | "window" | "never" | "coordinated"
//! window = "02:00-04:00"           # UTC
//! interval_secs = 600
//!
//! [update.lock]                    # replaces the image's [update.lock] (reboot slots)
//! backend = "etcd"                 # or "fleetlock" (with url)
//! endpoints = ["https://10.0.0.5:2379"]
//! group = "web"
//! max_concurrent = 2
//! ca = "-----BEGIN CERTIFICATE-----\n..."    # etcd over TLS: PEM inline, written to
//! cert = "-----BEGIN CERTIFICATE-----\n..."  # /etc/herd/lock/{ca.pem,client.pem,client.key}
//! key = "-----BEGIN PRIVATE KEY-----\n..."   # (the key mode 0600)
//! ```
//!
//! Every table refuses unknown keys. [`NodeConfig::parse`] checks the whole
//! configuration and returns every problem it finds, each with its line and
//! column, before anything is applied.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

use herd_node::config::{Local, Network};
use herd_oci::cosign::TrustedKey;
use herd_pod::Pod;
use herd_update_config::{Backend, Reboot, UpdateConfig};

/// The largest configuration accepted (bytes).
pub const MAX_SIZE: usize = 1 << 20;

/// The configuration version this herd reads.
pub const VERSION: u32 = 1;

/// One thing wrong with a configuration, at a line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Line, 1-based (0 when the problem has no place, e.g. an empty file).
    pub line: usize,
    /// Column, 1-based.
    pub column: usize,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            )
        }
    }
}

/// A configuration that must not be applied: every problem found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Invalid {
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.problems.iter().map(Problem::to_string).collect();
        write!(f, "{}", all.join("; "))
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Schema version (1).
    #[serde(default)]
    pub version: Option<Spanned<u32>>,
    /// The node's host name.
    #[serde(default)]
    pub hostname: Option<Spanned<String>>,
    /// Network settings (herd-init's `[network]`).
    #[serde(default)]
    pub network: Option<Spanned<Network>>,
    /// Image trust.
    #[serde(default)]
    pub images: Images,
    /// Static pods.
    #[serde(default, rename = "pod")]
    pub pods: Vec<PodEntry>,
    /// herd-update overrides.
    #[serde(default)]
    pub update: Option<Spanned<UpdateSettings>>,
}

/// `[images]`: herd-agent's image policy (`/etc/herd/policy`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    /// Trusted keys.
    #[serde(default, rename = "key")]
    pub keys: Vec<Spanned<ImageKey>>,
    /// Registries (`host` or `host:port`) herd-agent may reach over plain
    /// HTTP; images from them must still be signed.
    #[serde(default)]
    pub insecure_registries: Vec<Spanned<String>>,
    /// Private registries' credentials.
    #[serde(default, rename = "registry")]
    pub registries: Vec<Spanned<RegistryCredentials>>,
}

/// `[[images.registry]]`: credentials herd-agent uses for one registry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    /// `host` or `host:port`, as image references name it.
    pub host: String,
    /// User name (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (with `username`).
    #[serde(default)]
    pub password: Option<String>,
    /// A Bearer token (instead of username and password).
    #[serde(default)]
    pub token: Option<String>,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RegistryCredentials {{ host: {:?}, username: {:?}, secret: <hidden> }}",
            self.host, self.username
        )
    }
}

impl RegistryCredentials {
    /// The credentials file herd-agent reads (`herd_oci::credentials`).
    pub fn file_text(&self) -> String {
        #[derive(Serialize)]
        struct F<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            username: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            password: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            token: Option<&'a str>,
        }
        format!(
            "# Written once by herd-provision: herd-agent's credentials for {}.\n{}",
            self.host,
            toml::to_string(&F {
                username: self.username.as_deref(),
                password: self.password.as_deref(),
                token: self.token.as_deref(),
            })
            .expect("credentials serialise")
        )
    }
}

/// A trusted image signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageKey {
    /// Name: letters, digits, '-', '_'; the key file is `keys/NAME.pub`.
    pub name: String,
    /// PEM `PUBLIC KEY` (ECDSA P-256 or ed25519, as `cosign.pub`) or a herd
    /// public key (64 hex digits, `herd key show`).
    pub key: String,
}

/// A static pod.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodEntry {
    /// The Kubernetes v1 Pod manifest (YAML).
    pub manifest: Spanned<String>,
}

/// `[update]`: herd-update settings that override the image's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    /// Release repository base URL (`http://...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Channel to follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Seconds between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// Reboot policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<Reboot>,
    /// Maintenance window `HH:MM-HH:MM` UTC (with `reboot = "window"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Where reboot slots come from (`reboot = "coordinated"`); replaces
    /// the image's `[lock]` as a whole.
    #[serde(default, skip_serializing)]
    pub lock: Option<LockSettings>,
}

/// Where provisioning writes `[update.lock]`'s inline PEM, relative to the
/// node root: the CA, the client certificate and its key (mode 0600).
pub const LOCK_CA: &str = "etc/herd/lock/ca.pem";
/// The client certificate (see [`LOCK_CA`]).
pub const LOCK_CERT: &str = "etc/herd/lock/client.pem";
/// The client certificate's key (see [`LOCK_CA`]).
pub const LOCK_KEY: &str = "etc/herd/lock/client.key";

/// `[update.lock]`: herd-update's `[lock]`, with etcd's TLS material given
/// inline (PEM) as the rest of a node configuration is; provisioning
/// writes it to files and names them in `/etc/herd/update.toml`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSettings {
    /// `etcd` or `fleetlock`.
    pub backend: Backend,
    /// etcd client URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// The FleetLock server's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The group whose slots this node shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Slots of the group (etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// The etcd lease's TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// etcd over TLS: the CA certificate(s) trusted for etcd (PEM).
    #[serde(default, skip_serializing)]
    pub ca: Option<String>,
    /// This node's client certificate (PEM, the chain may follow).
    #[serde(default, skip_serializing)]
    pub cert: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing)]
    pub key: Option<String>,
}

impl fmt::Debug for LockSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LockSettings {{ backend: {:?}, endpoints: {:?}, url: {:?}, group: {:?}, ca: {}, cert: {}, key: {} }}",
            self.backend,
            self.endpoints,
            self.url,
            self.group,
            self.ca.is_some(),
            self.cert.is_some(),
            if self.key.is_some() { "<hidden>" } else { "-" }
        )
    }
}

impl LockSettings {
    /// herd-update's `[lock]` table: the inline PEM replaced by the paths
    /// provisioning writes it to.
    pub fn lock_table(&self) -> toml::Table {
        let mut t = toml::Table::try_from(self).expect("lock settings serialise");
        for (pem, key, path) in [
            (&self.ca, "ca_file", LOCK_CA),
            (&self.cert, "cert_file", LOCK_CERT),
            (&self.key, "key_file", LOCK_KEY),
        ] {
            if pem.is_some() {
                t.insert(key.into(), toml::Value::String(format!("/{path}")));
            }
        }
        t
    }

    /// The files provisioning writes: (path relative to the root, bytes, mode).
    pub fn files(&self) -> Vec<(String, Vec<u8>, u32)> {
        [
            (&self.ca, LOCK_CA, 0o644),
            (&self.cert, LOCK_CERT, 0o644),
            (&self.key, LOCK_KEY, 0o600),
        ]
        .into_iter()
        .filter_map(|(pem, path, mode)| {
            pem.as_ref().map(|p| {
                (
                    path.to_string(),
                    format!("{}\n", p.trim()).into_bytes(),
                    mode,
                )
            })
        })
        .collect()
    }

    /// The inline PEM checked as herd-update will read it: the CA
    /// certificates, and the client certificate with its own key.
    fn check_pem(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(ca) = &self.ca {
            if let Err(e) = herd_tls::roots_from_pem(ca.as_bytes()) {
                out.push(format!(
                    "[update.lock] ca: {e}; give the PEM certificate of the CA that issued etcd's server certificate"
                ));
            }
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                let cert = herd_tls::certificates(c.as_bytes()).map_err(|e| {
                    format!("[update.lock] cert: {e}; give this node's PEM client certificate")
                });
                let key = herd_tls::private_key(k.as_bytes()).map_err(|e| {
                    format!("[update.lock] key: {e}; give the PEM private key of cert")
                });
                match (cert, key) {
                    (Ok(cert), Ok(key)) => {
                        if let Err(e) = herd_tls::Identity::new(cert, key) {
                            out.push(format!(
                                "[update.lock] key and cert: {e}; give the key the certificate was issued for"
                            ));
                        }
                    }
                    (c, k) => out.extend(c.err().into_iter().chain(k.err())),
                }
            }
            (Some(_), None) => out
                .push("[update.lock]: cert needs key, the client certificate's private key".into()),
            (None, Some(_)) => out
                .push("[update.lock]: key needs cert, the client certificate it belongs to".into()),
            (None, None) => {}
        }
        out
    }
}

impl UpdateSettings {
    /// `/etc/herd/update.toml`'s settings (without its comment).
    pub fn update_toml(&self) -> String {
        let mut t = toml::Table::try_from(self).expect("update settings serialise");
        if let Some(l) = &self.lock {
            t.insert("lock".into(), toml::Value::Table(l.lock_table()));
        }
        toml::to_string(&t).expect("update settings serialise")
    }
}

/// A checked configuration, ready to apply.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The parsed configuration.
    pub config: NodeConfig,
    /// Each pod's manifest with its name (`metadata.name`), in file order.
    pub pods: Vec<(String, String)>,
    /// sha256 of the configuration's bytes, hex.
    pub sha256: String,
    /// Remarks that do not stop the configuration (offline checks only).
    pub notes: Vec<Problem>,
}

/// Whether the image carries trusted image keys of its own
/// (`/usr/lib/herd/policy/keys`), which herd-agent adds to the node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKeys {
    /// Checking offline: not known.
    Unknown,
    /// The image has none.
    None,
    /// The image has some.
    Some,
}

/// 1-based line and column of a byte offset.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut o = offset.min(text.len());
    while !text.is_char_boundary(o) {
        o -= 1;
    }
    let before = &text[..o];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, column)
}

fn valid_key_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn valid_channel(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// `host` or `host:port`, no scheme, path or spaces.
fn valid_registry(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

impl NodeConfig {
    /// Parses and checks the whole configuration offline (whether the image
    /// carries keys is not known). On error, every problem found (a syntax
    /// error stops at the first one).
    pub fn parse(text: &str) -> Result<Checked, Invalid> {
        NodeConfig::parse_for(text, ImageKeys::Unknown)
    }

    /// Parses and checks the whole configuration for an image that does or
    /// does not carry trusted keys of its own.
    pub fn parse_for(text: &str, image_keys: ImageKeys) -> Result<Checked, Invalid> {
        let one = |line, column, message: String| Invalid {
            problems: vec![Problem {
                line,
                column,
                message,
            }],
        };
        if text.len() > MAX_SIZE {
            return Err(one(
                0,
                0,
                format!(
                    "the configuration is {} bytes; at most {MAX_SIZE} are read",
                    text.len()
                ),
            ));
        }
        if text.trim().is_empty() {
            return Err(one(
                0,
                0,
                "the configuration is empty: give at least a hostname (see docs/PROVISIONING.md)"
                    .into(),
            ));
        }
        let config: NodeConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| position(text, s.start));
            let mut message = e.message().trim().to_string();
            // The toml crate cannot place a table opened only through a
            // dotted header ([update.lock] without [update]).
            if message.contains("expected a borrowed string")
                && e.span().is_some_and(|s| text.get(..s.start).is_some_and(|t| t.ends_with("update.")))
            {
                message = "write an [update] line before [update.lock] (the [update] table must be opened on its own, even when it holds nothing else)".into();
            }
            one(line, column, message)
        })?;
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        let place = |offset: usize, message: String| {
            let (line, column) = position(text, offset);
            Problem {
                line,
                column,
                message,
            }
        };
        let mut at = |offset: usize, message: String| problems.push(place(offset, message));

        if let Some(v) = &config.version {
            if *v.get_ref() != VERSION {
                at(
                    v.span().start,
                    format!(
                        "version = {} is not known to this herd, which reads version {VERSION}",
                        v.get_ref()
                    ),
                );
            }
        }
        if let Some(h) = &config.hostname {
            let l = Local {
                hostname: Some(h.get_ref().clone()),
                network: None,
            };
            if let Err(e) = l.check() {
                at(
                    h.span().start,
                    format!("{e}: use letters, digits, '-' and '.', at most 64 characters"),
                );
            }
        }
        if let Some(n) = &config.network {
            let l = Local {
                hostname: None,
                network: Some(n.get_ref().clone()),
            };
            if let Err(e) = l.check() {
                at(n.span().start, format!("[network]: {e}"));
            }
        }

        for r in &config.images.insecure_registries {
            if !valid_registry(r.get_ref()) {
                at(
                    r.span().start,
                    format!(
                        "images.insecure_registries: {:?} is not a registry host or host:port, e.g. \"10.0.2.100:5000\"",
                        r.get_ref()
                    ),
                );
            }
        }
        let mut hosts = BTreeSet::new();
        for r in &config.images.registries {
            let start = r.span().start;
            let c = r.get_ref();
            if !valid_registry(&c.host) {
                at(
                    start,
                    format!(
                        "images.registry host {:?} is not a registry host or host:port, e.g. \"10.0.2.100:5000\"",
                        c.host
                    ),
                );
            } else if !hosts.insert(c.host.as_str()) {
                at(
                    start,
                    format!("images.registry {:?} is defined twice", c.host),
                );
            }
            // herd-agent's own reader checks the file it will read; its
            // messages never quote the secret.
            if let Err(e) = herd_oci::credentials::parse(&c.file_text()) {
                at(start, format!("images.registry {:?}: {e}", c.host));
            }
        }
        let mut names = BTreeSet::new();
        for k in &config.images.keys {
            let start = k.span().start;
            let key = k.get_ref();
            if !valid_key_name(&key.name) {
                at(
                    start,
                    format!(
                        "images.key name {:?}: use letters, digits, '-' and '_' (at most 63)",
                        key.name
                    ),
                );
            } else if !names.insert(key.name.as_str()) {
                at(start, format!("images.key {:?} is defined twice", key.name));
            }
            if let Err(e) = TrustedKey::parse(&key.key, &key.name) {
                at(start, format!("images.key {:?}: {e}", key.name));
            }
        }
        let no_keys = config.images.keys.is_empty();

        let mut pods = Vec::new();
        let mut pod_names = BTreeSet::new();
        for (i, p) in config.pods.iter().enumerate() {
            let start = p.manifest.span().start;
            let what = format!("pod #{} (manifest)", i + 1);
            let pod = match Pod::parse(p.manifest.get_ref(), Path::new(&what)) {
                Ok(pod) => pod,
                Err(e) => {
                    at(start, e.to_string());
                    continue;
                }
            };
            let name = pod.metadata.name.clone();
            if !pod_names.insert(name.clone()) {
                at(
                    start,
                    format!("{what}: a pod named {name:?} is defined twice; pod names are unique on a node"),
                );
            }
            if no_keys && image_keys != ImageKeys::Some {
                let c = &pod.spec.containers[0];
                let msg = format!(
                    "pod {name:?}: container {:?} runs {}, but no [[images.key]] is configured",
                    c.name, c.image
                );
                if image_keys == ImageKeys::None {
                    at(
                        start,
                        format!(
                            "{msg} and the image carries no trusted keys: herd runs signed images only, \
                             so add the key that signs it"
                        ),
                    );
                } else {
                    notes.push(place(
                        start,
                        format!(
                            "{msg}: it runs only if the image carries the key that signs it \
                             (/usr/lib/herd/policy/keys); a node whose image has none refuses this configuration"
                        ),
                    ));
                }
            }
            pods.push((name, p.manifest.get_ref().clone()));
        }

        if let Some(u) = &config.update {
            let start = u.span().start;
            let s = u.get_ref();
            if let Some(c) = &s.channel {
                if !valid_channel(c) {
                    at(
                        start,
                        format!("[update] channel {c:?}: use letters, digits, '-', '_' and '.'"),
                    );
                }
            }
            // Check with herd-update's own type; a placeholder stands in for
            // the image's repository when none is given here.
            let mut full = s.clone();
            if full.repository.is_none() {
                full.repository = Some("http://image.invalid".into());
            }
            if let Err(e) = UpdateConfig::parse(&full.update_toml()) {
                // herd-update's words name its own file's [lock] keys.
                let e = e
                    .to_string()
                    .replace("[lock]", "[update.lock]")
                    .replace("ca_file", "ca")
                    .replace("cert_file", "cert")
                    .replace("key_file", "key");
                at(start, format!("[update]: {e}"));
            }
            if let Some(l) = &s.lock {
                for m in l.check_pem() {
                    at(start, m);
                }
            }
        }

        if problems.is_empty() {
            Ok(Checked {
                notes,
                pods,
                sha256: hex::encode(Sha256::digest(text.as_bytes())),
                config,
            })
        } else {
            Err(Invalid { problems })
        }
    }
}

impl Checked {
    /// One line saying what the configuration sets.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let mut parts = Vec::new();
        if let Some(h) = &c.hostname {
            parts.push(format!("hostname {}", h.get_ref()));
        }
        if let Some(n) = &c.network {
            parts.push(format!("network {:?}", n.get_ref().mode).to_lowercase());
        }
        parts.push(format!(
            "{} image key{}",
            c.images.keys.len(),
            if c.images.keys.len() == 1 { "" } else { "s" }
        ));
        if !c.images.insecure_registries.is_empty() {
            let r: Vec<&str> = c
                .images
                .insecure_registries
                .iter()
                .map(|r| r.get_ref().as_str())
                .collect();
            parts.push(format!("plain-HTTP registries {}", r.join(" ")));
        }
        let names: Vec<&str> = self.pods.iter().map(|(n, _)| n.as_str()).collect();
        parts.push(format!(
            "{} pod{}{}",
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            if names.is_empty() {
                String::new()
            } else {
                format!(" ({})", names.join(", "))
            }
        ));
        if let Some(u) = &c.update {
            let u = u.get_ref();
            let mut s = String::from("update settings");
            if let Some(ch) = &u.channel {
                s.push_str(&format!(" channel {ch}"));
            }
            if let Some(r) = &u.reboot {
                s.push_str(&format!(" reboot {r:?}").to_lowercase());
            }
            if let Some(l) = &u.lock {
                s.push_str(&format!(
                    " lock {} group {}{}",
                    format!("{:?}", l.backend).to_lowercase(),
                    l.group.as_deref().unwrap_or("default"),
                    if l.ca.is_some() || l.cert.is_some() {
                        " (TLS)"
                    } else {
                        ""
                    }
                ));
            }
            parts.push(s);
        }
        parts.join(", ")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    pub(crate) fn pod(name: &str, image: &str) -> String {
        format!(
            "[[pod]]\nmanifest = \"\"\"\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: main\n    image: {image}\n\"\"\"\n"
        )
    }

    pub(crate) fn good() -> String {
        format!(
            "hostname = \"node-7\"\n[network]\nmode = \"static\"\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\n\
             [images]\ninsecure_registries = [\"10.0.2.100:5000\"]\n\
             [[images.registry]]\nhost = \"10.0.2.100:5000\"\nusername = \"robot\"\npassword = \"pw-Secret-123\"\n\
             [[images.key]]\nname = \"ops\"\nkey = \"{KEY}\"\n\
             {}[update]\nchannel = \"beta\"\nreboot = \"window\"\nwindow = \"02:00-04:00\"\n",
            pod("web", "registry.example.com/team/web:1.0")
        )
    }

    #[test]
    fn full_config() {
        let c = NodeConfig::parse(&good()).unwrap();
        assert_eq!(c.pods.len(), 1);
        assert_eq!(c.pods[0].0, "web");
        assert_eq!(c.sha256.len(), 64);
        let s = c.summary();
        assert!(
            s.contains("hostname node-7")
                && s.contains("1 pod (web)")
                && s.contains("channel beta"),
            "{s}"
        );
    }

    #[test]
    fn registry_credentials_are_checked_without_quoting_them() {
        let c = NodeConfig::parse(&good()).unwrap();
        let r = c.config.images.registries[0].get_ref();
        assert!(!format!("{r:?}").contains("pw-Secret-123"));
        for (entry, says) in [
            (
                "host = \"r.example\"\nusername = \"robot\"\n",
                "only one of username and password",
            ),
            (
                "host = \"r.example\"\ntoken = \"pw-Secret-123\"\npassword = \"pw-Secret-123\"\n",
                "both a token",
            ),
            (
                "host = \"../x\"\ntoken = \"pw-Secret-123\"\n",
                "not a registry host",
            ),
        ] {
            let p = problems(&format!("[[images.registry]]\n{entry}"));
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(p[0].contains(says), "{says}: {p:?}");
            assert!(!p[0].contains("pw-Secret"), "{p:?}");
        }
        let p = problems(
            "[[images.registry]]\nhost = \"r.example\"\ntoken = \"t\"\n\
             [[images.registry]]\nhost = \"r.example\"\ntoken = \"t\"\n",
        );
        assert!(p[0].contains("defined twice"), "{p:?}");
    }

    fn problems(text: &str) -> Vec<String> {
        NodeConfig::parse(text)
            .unwrap_err()
            .problems
            .iter()
            .map(Problem::to_string)
            .collect()
    }

    #[test]
    fn syntax_and_unknown_keys_have_positions() {
        let p = problems("hostname = \"a\"\nssh_keys = [\"x\"]\n");
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("line 2, column 1:") && p[0].contains("ssh_keys"),
            "{p:?}"
        );
        let p = problems("hostname = \"a\"\n[network]\nmod = \"dhcp\"\n");
        assert!(p[0].starts_with("line 3, column 1:"), "{p:?}");
        let p = problems("hostname = \n");
        assert!(p[0].starts_with("line 1,"), "{p:?}");
        assert!(problems("")[0].contains("empty"));
        assert!(problems(&" ".repeat(MAX_SIZE + 1))[0].contains("at most"));
    }

    #[test]
    fn every_semantic_problem_is_reported() {
        let text = format!(
            "version = 2\nhostname = \"bad host\"\n[network]\nmode = \"static\"\n\
             [images]\ninsecure_registries = [\"http://r.io/x\"]\n\
             [[images.key]]\nname = \"ops\"\nkey = \"not a key\"\n\
             [[images.key]]\nname = \"ops\"\nkey = \"{KEY}\"\n\
             {}{}{}[update]\nreboot = \"window\"\nchannel = \"a b\"\n",
            pod("web", "registry.example.com/team/web:1"),
            pod("web", "registry.example.com/team/web:1"),
            "[[pod]]\nmanifest = \"\"\"\napiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n  - name: a\n    image: r.io/a\n    privileged: true\n\"\"\"\n",
        );
        let p = problems(&text);
        let want = [
            ("line 1, column 11", "version = 2"),
            ("line 2, column 12", "not a valid host name"),
            ("line 3, column 1", "network.address"),
            ("line 6, column 24", "\"http://r.io/x\" is not a registry"),
            ("line 7, column 1", "images.key \"ops\": key ops"),
            ("line 10, column 1", "defined twice"),
            ("pod #2", "defined twice"),
            ("pod #3", "privileged"),
            ("[update]", "channel \"a b\""),
            ("[update]", "needs window"),
        ];
        for (a, b) in want {
            assert!(
                p.iter().any(|l| l.contains(a) && l.contains(b)),
                "no problem with {a:?} and {b:?} in {p:#?}"
            );
        }
    }

    #[test]
    fn pods_need_a_trusted_key_somewhere() {
        let text = format!("hostname = \"n\"\n{}", pod("web", "r.io/a:1"));
        // Offline: a note, since the image may carry keys.
        let c = NodeConfig::parse(&text).unwrap();
        assert!(
            c.notes[0].to_string().starts_with("line 3, column 12:")
                && c.notes[0]
                    .message
                    .contains("no [[images.key]] is configured"),
            "{:?}",
            c.notes
        );
        // On a node whose image has none: refused.
        let p = NodeConfig::parse_for(&text, ImageKeys::None).unwrap_err();
        assert!(
            p.problems[0]
                .message
                .contains("the image carries no trusted keys"),
            "{p}"
        );
        assert!(NodeConfig::parse_for(&text, ImageKeys::Some)
            .unwrap()
            .notes
            .is_empty());
        let with_key = format!("{text}[[images.key]]\nname = \"k\"\nkey = \"{KEY}\"\n");
        assert!(NodeConfig::parse_for(&with_key, ImageKeys::None)
            .unwrap()
            .notes
            .is_empty());
        for (r, ok) in [
            ("10.0.2.100", true),
            ("10.0.2.100:5000", true),
            ("reg.example", true),
            ("http://x", false),
            ("x/y", false),
            ("x:0", false),
            ("", false),
        ] {
            assert_eq!(valid_registry(r), ok, "{r}");
        }
    }

    /// A CA's certificate, and a client certificate and key it issued, PEM.
    pub(crate) fn lock_pems() -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["node-7".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    /// A configuration whose [update.lock] is etcd over TLS with these PEMs.
    pub(crate) fn tls_lock(ca: &str, cert: &str, key: &str) -> String {
        format!(
            "hostname = \"node-7\"\n[update]\nreboot = \"coordinated\"\n[update.lock]\nbackend = \"etcd\"\n\
             endpoints = [\"https://10.0.0.5:2379\"]\ngroup = \"web\"\nmax_concurrent = 2\n\
             ca = '''{ca}'''\ncert = '''{cert}'''\nkey = '''{key}'''\n"
        )
    }

    #[test]
    fn update_lock_with_inline_tls_is_checked_like_herd_updates_own() {
        let (ca, cert, key) = lock_pems();
        let c = NodeConfig::parse(&tls_lock(&ca, &cert, &key)).unwrap();
        let s = c.summary();
        assert!(
            s.contains("reboot coordinated lock etcd group web (TLS)"),
            "{s}"
        );
        let settings = c.config.update.as_ref().unwrap().get_ref();
        let l = settings.lock.as_ref().unwrap();
        assert!(!format!("{l:?}").contains("PRIVATE KEY"), "{l:?}");
        // What herd-update reads: [lock] naming the files provisioning writes.
        let u = UpdateConfig::parse(&format!(
            "repository = \"http://x\"\n{}",
            settings.update_toml()
        ))
        .unwrap();
        let lock = u.lock.unwrap();
        assert_eq!(
            (
                lock.ca_file.as_deref(),
                lock.cert_file.as_deref(),
                lock.key_file.as_deref(),
                lock.max_concurrent
            ),
            (
                Some("/etc/herd/lock/ca.pem"),
                Some("/etc/herd/lock/client.pem"),
                Some("/etc/herd/lock/client.key"),
                2
            )
        );
        let (_, other_cert, other_key) = lock_pems();
        let no_key = tls_lock(&ca, &cert, &key).replace(&format!("key = '''{key}'''\n"), "");
        for (text, says) in [
            (
                tls_lock(&ca, &cert, &other_key),
                "does not belong to the certificate",
            ),
            (
                tls_lock("not pem", &cert, &key),
                "[update.lock] ca: it holds no CERTIFICATE block",
            ),
            (
                tls_lock(&ca, &key, &key),
                "[update.lock] cert: it holds no CERTIFICATE block",
            ),
            (
                tls_lock(&ca, &other_cert, &other_cert),
                "[update.lock] key: it holds no PRIVATE KEY",
            ),
            (
                tls_lock(&ca, &cert, &key).replace("https://", "http://"),
                "write https:// endpoints, or remove ca, cert, key",
            ),
            (no_key, "cert needs key"),
            (
                "hostname = \"n\"\n[update]\nreboot = \"coordinated\"\n".into(),
                "needs a [update.lock] table",
            ),
            (
                "hostname = \"n\"\n[update]\n[update.lock]\nbackend = \"etcd\"\nendpoints = [\"http://a:2379\"]\nca_file = \"/x\"\n".into(),
                "line 6, column 1: unknown field `ca_file`",
            ),
            (
                "hostname = \"n\"\n[update.lock]\nbackend = \"etcd\"\nendpoints = [\"http://a:2379\"]\n".into(),
                "line 2, column 9: write an [update] line before [update.lock]",
            ),
        ] {
            let p = problems(&text);
            assert!(
                p.iter().any(|l| l.contains(says)),
                "{says:?} not in {p:#?}"
            );
            assert!(!p.iter().any(|l| l.contains("PRIVATE KEY-----")), "{p:?}");
        }
    }

    #[test]
    fn positions_count_characters() {
        assert_eq!(position("a\nbé c", 5), (2, 3));
        assert_eq!(position("", 3), (1, 1));
    }
}
