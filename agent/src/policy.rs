//! The node's image policy: which keys may sign the images it runs, and
//! which registries it may reach over plain HTTP.
//!
//! Read from policy directories, provisioned first (`/etc/herd/policy`),
//! then baked into the image (`/usr/lib/herd/policy`); every directory
//! adds to the policy:
//!
//! ```text
//! keys/*.pub       one trusted key per file: PEM `PUBLIC KEY` (ECDSA P-256
//!                  or ed25519, as `cosign generate-key-pair` writes) or a
//!                  herd public key (64 hex digits, `herd key show`)
//! policy.toml      (optional)
//!                  insecure_registries = ["10.0.2.100"]
//!                  [keys."mirror.pub"]      a key of this directory's keys/
//!                  signed_identity = "remapIdentity"
//!                  prefix = "10.0.2.100:5000/acme"
//!                  signed_prefix = "ghcr.io/acme"
//!                  [keys."cosign.pub"]
//!                  bundle_without_identity = true
//! ```
//!
//! `signed_identity` says which image names a key's signatures vouch for
//! ([`SignedIdentity`]): `matchRepository` (the default: the signature's
//! `docker-reference` names the repository asked for, and its tag if it has
//! one), `matchRepoDigestOrExact`, `matchExact`, or `remapIdentity` with
//! `prefix` and `signed_prefix`.
//!
//! `bundle_without_identity = true` accepts the key's cosign v3 bundles
//! that name no image (cosign v3 signs the manifest digest only) for any
//! image name; without it such a bundle is refused (`herd_oci::bundle`).
//!
//! A key file that does not parse is reported and skipped: the other keys
//! keep working, and images signed only by the broken key do not run.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use herd_oci::cosign::TrustedKey;
use herd_oci::SignedIdentity;
use serde::Deserialize;

/// The policy in force.
#[derive(Debug, Default)]
pub struct Policy {
    /// Keys whose signatures are accepted.
    pub keys: Vec<TrustedKey>,
    /// Registries (`host` or `host:port`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    insecure_registries: Vec<String>,
    /// Per key file name (in this directory's `keys/`).
    #[serde(default)]
    keys: BTreeMap<String, KeyRule>,
}

/// A key's `signed_identity` and `bundle_without_identity` (checked as
/// they are read, so a mistake is reported at its line and column).
#[derive(Debug)]
struct KeyRule(SignedIdentity, bool);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyRule {
    #[serde(default)]
    signed_identity: Option<String>,
    prefix: Option<String>,
    signed_prefix: Option<String>,
    #[serde(default)]
    bundle_without_identity: bool,
}

impl<'de> Deserialize<'de> for KeyRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyRule, D::Error> {
        let r = RawKeyRule::deserialize(d)?;
        let rule = r.signed_identity.as_deref().unwrap_or("matchRepository");
        SignedIdentity::from_parts(rule, r.prefix, r.signed_prefix)
            .map(|i| KeyRule(i, r.bundle_without_identity))
            .map_err(serde::de::Error::custom)
    }
}

impl Policy {
    /// Reads every directory in `dirs` (a missing one adds nothing).
    /// Returns the policy and one message per file that was skipped.
    pub fn load(dirs: &[PathBuf]) -> (Policy, Vec<String>) {
        let mut p = Policy::default();
        let mut problems = Vec::new();
        for dir in dirs {
            p.load_dir(dir, &mut problems);
        }
        (p, problems)
    }

    fn load_dir(&mut self, dir: &Path, problems: &mut Vec<String>) {
        let toml_path = dir.join("policy.toml");
        let mut rules = match std::fs::read_to_string(&toml_path) {
            Ok(text) => match toml::from_str::<PolicyFile>(&text) {
                Ok(f) => {
                    self.insecure_registries.extend(f.insecure_registries);
                    f.keys
                }
                Err(e) => {
                    problems.push(format!(
                        "{}: ignored: {}",
                        toml_path.display(),
                        e.to_string().trim()
                    ));
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                problems.push(format!("{}: ignored: {e}", toml_path.display()));
                BTreeMap::new()
            }
        };
        let keys = dir.join("keys");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&keys) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "pub" || e == "pem"))
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        for f in files {
            let what = f.display().to_string();
            let rule = f
                .file_name()
                .and_then(|n| rules.remove(n.to_string_lossy().as_ref()));
            match std::fs::read_to_string(&f) {
                Ok(text) => match TrustedKey::parse(&text, &what) {
                    Ok(k) => self.keys.push(match rule {
                        Some(KeyRule(identity, unnamed)) => k
                            .with_identity(identity)
                            .with_bundle_without_identity(unnamed),
                        None => k,
                    }),
                    Err(e) => problems.push(format!("{what}: key skipped: {e}")),
                },
                Err(e) => problems.push(format!("{what}: key skipped: cannot read it: {e}")),
            }
        }
        for name in rules.keys() {
            problems.push(format!(
                "{}: [keys.{name:?}] names no key file of {} (a file name such as ops.pub); the rule applies to nothing",
                toml_path.display(),
                keys.display()
            ));
        }
    }

    /// Whether the registry `host[:port]` may be reached over plain HTTP.
    pub fn plain_http(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
        self.insecure_registries
            .iter()
            .any(|r| r == registry || r == host)
    }

    /// Whether a key with this id is still trusted.
    pub fn trusts(&self, key_id: &str) -> bool {
        self.keys.iter().any(|k| k.id() == key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_and_registries_from_every_dir() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("etc"), t.path().join("usr"));
        std::fs::create_dir_all(a.join("keys")).unwrap();
        std::fs::create_dir_all(b.join("keys")).unwrap();
        let k = herd_release::SigningKey::generate().unwrap();
        std::fs::write(a.join("keys/ops.pub"), &k.public().0).unwrap();
        std::fs::write(b.join("keys/broken.pub"), "not a key").unwrap();
        std::fs::write(b.join("keys/README"), "ignored").unwrap();
        std::fs::write(
            b.join("policy.toml"),
            "insecure_registries = [\"10.0.2.100\"]\n",
        )
        .unwrap();
        let (p, problems) = Policy::load(&[a, b, t.path().join("missing")]);
        assert_eq!(p.keys.len(), 1);
        assert!(p.trusts(&p.keys[0].id()));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("broken.pub"), "{problems:?}");
        assert!(p.plain_http("10.0.2.100") && p.plain_http("10.0.2.100:80"));
        assert!(!p.plain_http("ghcr.io"));
    }

    #[test]
    fn a_bad_policy_file_is_reported() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("policy.toml"), "insecure = 1\n").unwrap();
        let (p, problems) = Policy::load(&[t.path().to_path_buf()]);
        assert!(p.insecure_registries.is_empty());
        assert!(problems[0].contains("unknown field"), "{problems:?}");
    }

    #[test]
    fn signed_identity_per_key() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("keys")).unwrap();
        for n in ["a.pub", "b.pub", "c.pub"] {
            let k = herd_release::SigningKey::generate().unwrap();
            std::fs::write(t.path().join("keys").join(n), &k.public().0).unwrap();
        }
        std::fs::write(
            t.path().join("policy.toml"),
            "[keys.\"b.pub\"]\nsigned_identity = \"matchRepoDigestOrExact\"\n\
             [keys.\"c.pub\"]\nsigned_identity = \"remapIdentity\"\n\
             prefix = \"10.0.2.100:5000/acme\"\nsigned_prefix = \"ghcr.io/acme\"\n\
             [keys.\"gone.pub\"]\nsigned_identity = \"matchExact\"\n\
             [keys.\"a.pub\"]\nbundle_without_identity = true\n",
        )
        .unwrap();
        let (p, problems) = Policy::load(&[t.path().to_path_buf()]);
        let rules: Vec<&str> = p.keys.iter().map(|k| k.identity.name()).collect();
        assert_eq!(
            rules,
            ["matchRepository", "matchRepoDigestOrExact", "remapIdentity"]
        );
        let unnamed: Vec<bool> = p.keys.iter().map(|k| k.bundle_without_identity).collect();
        assert_eq!(unnamed, [true, false, false]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("\"gone.pub\"] names no key file"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_bad_signed_identity_is_reported_at_its_line() {
        let t = tempfile::tempdir().unwrap();
        for (text, says) in [
            (
                "insecure_registries = []\n[keys.\"a.pub\"]\nsigned_identity = \"matchAnything\"\n",
                "line 2",
            ),
            (
                "[keys.\"a.pub\"]\nsigned_identity = \"remapIdentity\"\nprefix = \"x\"\n",
                "needs both prefix and signed_prefix",
            ),
            (
                "[keys.\"a.pub\"]\nsigned_identity = \"matchExact\"\nexact = true\n",
                "unknown field",
            ),
        ] {
            std::fs::write(t.path().join("policy.toml"), text).unwrap();
            let (_, problems) = Policy::load(&[t.path().to_path_buf()]);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains(says), "{says}: {problems:?}");
            assert!(problems[0].contains("line "), "{problems:?}");
        }
    }
}
