//! `/usr/lib/herd/init.toml`: what herd-init does in the real root.
//!
//! The image builder validates an image's `[init]` table with this same
//! type, so a typo fails the build instead of the boot.
//!
//! ```toml
//! hostname = "node-1"            # default: the image name from os-release, else "herd"
//! [health]
//! bless_after_secs = 5           # services up and not restarted this long => boot is good
//! deadline_secs = 300            # not good this long after `ready` => reboot (0 = never)
//! [network]
//! mode = "dhcp"                  # "dhcp" (default) | "static" | "off"
//! interface = "eth0"             # default: the first Ethernet interface
//! address = "10.0.2.15/24"       # static only
//! gateway = "10.0.2.2"           # static only, optional
//! dns = ["10.0.2.3"]             # static only, optional
//! [[service]]
//! name = "agent"
//! exec = ["/usr/bin/herd-agent", "run"]
//! env = { RUST_LOG = "info" }
//! restart = "always"             # "always" (default) | "on-failure" | "never"
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Host name; default from the image.
    #[serde(default)]
    pub hostname: Option<String>,
    /// When a boot counts as good.
    #[serde(default)]
    pub health: Health,
    /// Network bring-up.
    #[serde(default)]
    pub network: Network,
    /// Supervised services, started in order.
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
}

/// Boot health. Every service counts: the boot is good once none waits
/// for a restart and none restarted for `bless_after_secs` (a service that
/// ended for good under `on-failure` or `never` counts as settled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Seconds every service must stay up (no restart) before the boot is
    /// blessed.
    #[serde(default = "default_bless")]
    pub bless_after_secs: u64,
    /// Seconds after `ready` by which the boot must be blessed; past it
    /// herd-init reboots, so the boot loader counts the try and, once the
    /// entry's tries run out, boots the other slot. 0: never.
    #[serde(default = "default_deadline")]
    pub deadline_secs: u64,
}

fn default_bless() -> u64 {
    5
}

fn default_deadline() -> u64 {
    300
}

impl Default for Health {
    fn default() -> Self {
        Health {
            bless_after_secs: default_bless(),
            deadline_secs: default_deadline(),
        }
    }
}

/// How to configure the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// DHCPv4 on the interface.
    #[default]
    Dhcp,
    /// A fixed address.
    Static,
    /// Only loopback.
    Off,
}

/// Network settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// dhcp, static or off.
    #[serde(default)]
    pub mode: NetMode,
    /// Interface name; default the first Ethernet interface.
    #[serde(default)]
    pub interface: Option<String>,
    /// `a.b.c.d/len` (static).
    #[serde(default)]
    pub address: Option<String>,
    /// Default gateway (static).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Name servers (static).
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
}

/// When to restart a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Whenever it exits.
    #[default]
    Always,
    /// Only when it exits with a failure (non-zero or a signal).
    OnFailure,
    /// Never.
    Never,
}

/// A supervised service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Name, used as the log prefix.
    pub name: String,
    /// Program and arguments; the program is an absolute path.
    pub exec: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Restart policy.
    #[serde(default)]
    pub restart: Restart,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Parses `a.b.c.d/len`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let bad = || {
        ConfigError(format!(
            "network.address {s:?} is not of the form a.b.c.d/len"
        ))
    };
    let (a, l) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let len: u8 = l.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok((addr, len))
}

/// Written by herd-init once this boot is blessed (or there was nothing to
/// bless): the updater installs nothing and settles no pending release
/// before it exists. On `/run`, so it lasts one boot.
pub const BOOT_GOOD: &str = herd_contract::paths::BOOT_GOOD;

/// Where provisioning writes the node's own settings, which override the
/// image's `hostname` and `[network]` (see docs/PROVISIONING.md).
pub const LOCAL: &str = "/etc/herd/init.toml";

/// `/etc/herd/init.toml`: the node's own host name and network, written
/// once by provisioning on STATE. Services stay the image's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Local {
    /// Host name; overrides the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Network settings; replace the image's `[network]` as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
}

impl Local {
    /// Parses and checks the TOML text; errors name line and column.
    pub fn parse(text: &str) -> Result<Local, ConfigError> {
        let l: Local = from_toml(text)?;
        l.check()?;
        Ok(l)
    }

    /// Checks the host name and network as the image's would be checked.
    pub fn check(&self) -> Result<(), ConfigError> {
        Config {
            hostname: self.hostname.clone(),
            network: self.network.clone().unwrap_or_default(),
            ..Config::default()
        }
        .check()
    }
}

fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                format!(
                    "line {}, column {}: ",
                    before.matches('\n').count() + 1,
                    s.start - before.rfind('\n').map_or(0, |i| i + 1) + 1
                )
            })
            .unwrap_or_default();
        ConfigError(format!("{at}{}", e.message()))
    })
}

impl Config {
    /// Parses and checks the TOML text; errors name line and column.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = from_toml(text)?;
        c.check()?;
        Ok(c)
    }

    /// The image's configuration with the node's own settings on top.
    pub fn with_local(mut self, local: Local) -> Config {
        if local.hostname.is_some() {
            self.hostname = local.hostname;
        }
        if let Some(n) = local.network {
            self.network = n;
        }
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for s in &self.services {
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError(format!(
                    "service name {:?}: use letters, digits, '-' and '_'",
                    s.name
                )));
            }
            if !names.insert(&s.name) {
                return Err(ConfigError(format!(
                    "service {:?} is defined twice",
                    s.name
                )));
            }
            match s.exec.first() {
                Some(p) if p.starts_with('/') => {}
                _ => {
                    return Err(ConfigError(format!(
                        "service {:?}: exec must start with an absolute program path",
                        s.name
                    )))
                }
            }
        }
        let h = &self.health;
        if h.deadline_secs != 0 && h.deadline_secs <= h.bless_after_secs {
            return Err(ConfigError(format!(
                "health.deadline_secs = {} leaves no time to bless the boot: make it longer than \
                 health.bless_after_secs = {}, or 0 for no deadline",
                h.deadline_secs, h.bless_after_secs
            )));
        }
        if self.network.mode == NetMode::Static {
            let a = self.network.address.as_deref().ok_or_else(|| {
                ConfigError(
                    "network.mode = \"static\" needs network.address = \"a.b.c.d/len\"".into(),
                )
            })?;
            parse_cidr(a)?;
        }
        if let Some(h) = &self.hostname {
            if h.is_empty()
                || h.len() > 64
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(ConfigError(format!(
                    "hostname {h:?} is not a valid host name"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.health.bless_after_secs, 5);
        assert_eq!(c.health.deadline_secs, 300);
        assert_eq!(c.network.mode, NetMode::Dhcp);
        let c = Config::parse(
            "hostname = \"n1\"\n[network]\nmode = \"static\"\naddress = \"10.0.0.2/24\"\ngateway = \"10.0.0.1\"\n\
             [[service]]\nname = \"a\"\nexec = [\"/bin/a\", \"x\"]\nrestart = \"on-failure\"\n",
        )
        .unwrap();
        assert_eq!(c.services[0].restart, Restart::OnFailure);
        assert_eq!(
            parse_cidr(c.network.address.as_deref().unwrap()).unwrap().1,
            24
        );
    }

    #[test]
    fn local_overrides_hostname_and_network() {
        let image =
            Config::parse("hostname = \"img\"\n[[service]]\nname = \"a\"\nexec = [\"/bin/a\"]\n")
                .unwrap();
        let l = Local::parse("hostname = \"node-7\"\n[network]\nmode = \"off\"\n").unwrap();
        let c = image.clone().with_local(l);
        assert_eq!(c.hostname.as_deref(), Some("node-7"));
        assert_eq!(c.network.mode, NetMode::Off);
        assert_eq!(c.services, image.services);
        assert_eq!(image.clone().with_local(Local::default()), image);
        let e = Local::parse("hostname = \"a b\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid host name"), "{e}");
        let e = Local::parse("\n[[service]]\n").unwrap_err().to_string();
        assert!(
            e.contains("line 2, column 3") && e.contains("service"),
            "{e}"
        );
    }

    #[test]
    fn health_deadline_must_leave_time_to_bless() {
        let c = Config::parse("[health]\nbless_after_secs = 3\ndeadline_secs = 20\n").unwrap();
        assert_eq!((c.health.bless_after_secs, c.health.deadline_secs), (3, 20));
        let c = Config::parse("[health]\ndeadline_secs = 0\n").unwrap();
        assert_eq!(c.health.deadline_secs, 0);
        let e = Config::parse("[health]\nbless_after_secs = 30\ndeadline_secs = 30\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("health.deadline_secs = 30 leaves no time to bless the boot"),
            "{e}"
        );
    }

    #[test]
    fn errors() {
        let e = Config::parse("[health]\nbless_after = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2, column 1") && e.contains("bless_after"),
            "{e}"
        );
        assert!(Config::parse("[[service]]\nname = \"a\"\nexec = [\"a\"]\n").is_err());
        assert!(Config::parse("[network]\nmode = \"static\"\n").is_err());
        assert!(Config::parse("[network]\nmode = \"static\"\naddress = \"1.2.3.4\"\n").is_err());
    }
}
