//! The node's images: pulled and verified through `herd_oci`, kept in a
//! content store under `/var`, unpacked once per manifest into a root
//! file system the containers share read-only, and garbage-collected when
//! no pod uses them any more.
//!
//! `<root>/blobs/sha256/…`   manifests, configs, layers (content-addressed)
//! `<root>/rootfs/<hex>/`    unpacked image roots, by manifest digest
//! `<root>/images.json`      reference → manifest digest and the key that signed it
//!
//! Pull policy as the kubelet's: `Always` resolves the reference at the
//! registry (and, when the registry cannot be reached, falls back to the
//! image verified earlier); `IfNotPresent` (the default, except for
//! `:latest`) uses the verified image when there is one; `Never` only does.
//! A cached image runs only while the key that signed it is still trusted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use herd_oci::pull::Pulled;
use herd_oci::registry::Registry;
use herd_oci::store::Store;
use herd_oci::{Digest, Reference};
use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("image {image:?}: {source}")]
    Reference {
        /// as written
        image: String,
        /// why
        source: herd_oci::Error,
    },
    /// Pulling or verifying failed.
    #[error("{source}")]
    Pull {
        /// why
        #[from]
        source: herd_oci::Error,
    },
    /// `imagePullPolicy: Never` and no verified copy.
    #[error("image {0} is not on the node and imagePullPolicy is Never")]
    NotPresent(String),
    /// Policy changed since the image was verified.
    #[error("image {image} was signed by key {key}, which the node no longer trusts; it must be signed again by a trusted key")]
    KeyRevoked {
        /// the image
        image: String,
        /// the key id
        key: String,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// what was being done
        what: String,
        /// why
        source: std::io::Error,
    },
    /// `oci:NAME` is in none of the node's layouts.
    #[error("image oci:{name} is in none of the node's OCI layouts: {looked}")]
    NotInLayout {
        /// the name
        name: String,
        /// where it was looked for
        looked: String,
    },
    /// The pull policy is not one of the three.
    #[error("imagePullPolicy {0:?} is not Always, IfNotPresent or Never")]
    PullPolicy(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

/// A verified image ready to run.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The image, pinned to its manifest digest.
    pub pulled: Pulled,
    /// Its unpacked root (shared; containers get it read-only).
    pub rootfs: PathBuf,
    /// Whether the registry was asked this time.
    pub fetched: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    digest: String,
    signed_by: String,
    /// The signing key's identity rule the signature passed (its `Debug`
    /// form, prefixes included); missing in entries cached before
    /// signatures had to name the image.
    #[serde(default)]
    identity_rule: Option<String>,
}

/// The identity rule `key_id` has in `policy` now, as [`Entry`] keeps it.
fn identity_rule(policy: &Policy, key_id: &str) -> Option<String> {
    policy.keys.iter().find(|k| k.id() == key_id).map(|k| {
        let unnamed = if k.bundle_without_identity {
            ", bundle_without_identity"
        } else {
            ""
        };
        format!("{:?}{unnamed}", k.identity)
    })
}

/// Why a cached entry may not be reused without a new pull: its signature's
/// name was checked under another rule than its key has now, or never.
fn stale_identity(e: &Entry, policy: &Policy) -> Option<String> {
    let now = identity_rule(policy, &e.signed_by)?;
    match &e.identity_rule {
        None => Some("it was cached before signatures had to name the image".into()),
        Some(then) if *then != now => Some(format!(
            "its signature's name was checked under the rule {then}, the key's rule is now {now}"
        )),
        Some(_) => None,
    }
}

/// The image cache.
pub struct Images {
    root: PathBuf,
    layouts: Vec<PathBuf>,
    /// Registry credentials files.
    registries: PathBuf,
    store: Store,
    index: Mutex<BTreeMap<String, Entry>>,
}

/// How an image is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

fn pull_policy(r: &Reference, asked: Option<&str>) -> Result<PullPolicy, ImageError> {
    Ok(match asked {
        Some("Always") => PullPolicy::Always,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        Some("Never") => PullPolicy::Never,
        Some(other) => return Err(ImageError::PullPolicy(other.into())),
        None if r.digest.is_none() && r.tag.as_deref().unwrap_or("latest") == "latest" => {
            PullPolicy::Always
        }
        None => PullPolicy::IfNotPresent,
    })
}

impl Images {
    /// The cache under `root` (created when missing); `oci:NAME` images
    /// are looked up in the OCI layouts `layouts`, in order.
    pub fn open(root: &Path, layouts: Vec<PathBuf>) -> Result<Images, ImageError> {
        let store = Store::open(root)?;
        let index = match std::fs::read(root.join("images.json")) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        Ok(Images {
            root: root.to_path_buf(),
            layouts,
            registries: PathBuf::from(herd_oci::registry::CREDENTIALS_DIR),
            store,
            index: Mutex::new(index),
        })
    }

    /// The same cache, reading registry credentials from `dir`
    /// (`<host[:port]>.toml`) instead of `/etc/herd/registries`.
    pub fn with_registries(self, dir: &Path) -> Images {
        Images {
            registries: dir.to_path_buf(),
            ..self
        }
    }

    fn save(&self, index: &BTreeMap<String, Entry>) -> Result<(), ImageError> {
        let path = self.root.join("images.json");
        let tmp = self.root.join(".images.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(index).expect("index serialises"),
        )
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(io(format!("writing {}", path.display())))
    }

    /// The verified image for `image` (a reference as a pod writes it),
    /// pulled when the pull policy says so, unpacked.
    pub fn get(
        &self,
        image: &str,
        asked_policy: Option<&str>,
        policy: &Policy,
    ) -> Result<Ready, ImageError> {
        if let Some(name) = image.strip_prefix(herd_oci::pull::LAYOUT_PREFIX) {
            return self.get_from_layout(name, policy);
        }
        let r = Reference::parse(image).map_err(|source| ImageError::Reference {
            image: image.into(),
            source,
        })?;
        let key = r.to_string();
        let cached = self.index.lock().expect("index lock").get(&key).cloned();
        let cached = match cached {
            Some(e) if stale_identity(&e, policy).is_some() => {
                tracing::warn!(
                    "cached {key} is not reused: {}; pulling it again",
                    stale_identity(&e, policy).unwrap_or_default()
                );
                None
            }
            Some(e) => match Digest::parse(&e.digest)
                .and_then(|d| Pulled::from_store(&self.store, &r, &d, &e.signed_by))
            {
                Ok(p) => Some(p),
                Err(err) => {
                    tracing::warn!("cached {key} is unusable ({err}); pulling it again");
                    None
                }
            },
            None => None,
        };
        let pp = pull_policy(&r, asked_policy)?;
        let (pulled, fetched) = match (pp, cached) {
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(p)) => (p, false),
            (PullPolicy::Never, None) => return Err(ImageError::NotPresent(key)),
            (PullPolicy::Always, cached) | (PullPolicy::IfNotPresent, cached @ None) => {
                let reg = Registry::with_plain_http(&r, policy.plain_http(&r.registry))
                    .with_credentials_dir(&self.registries);
                match herd_oci::pull::pull_from(&reg, &r, &self.store, &policy.keys) {
                    Ok(p) => (p, true),
                    Err(e @ herd_oci::Error::Registry { .. }) => match cached {
                        Some(p) => {
                            tracing::warn!(
                                    "{key}: registry unreachable ({e}); using the image verified earlier"
                                );
                            (p, false)
                        }
                        None => return Err(e.into()),
                    },
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if !policy.trusts(&pulled.signed_by) {
            return Err(ImageError::KeyRevoked {
                image: key,
                key: pulled.signed_by,
            });
        }
        if fetched {
            let mut idx = self.index.lock().expect("index lock");
            idx.insert(
                key,
                Entry {
                    digest: pulled
                        .reference
                        .digest
                        .as_ref()
                        .expect("pulled images are pinned")
                        .to_string(),
                    signed_by: pulled.signed_by.clone(),
                    identity_rule: identity_rule(policy, &pulled.signed_by),
                },
            );
            self.save(&idx)?;
        }
        let rootfs = self.unpacked(&pulled)?;
        Ok(Ready {
            pulled,
            rootfs,
            fetched,
        })
    }

    /// Image `name` of the first layout that has it; read again every
    /// time (it is local), its signature checked every time.
    fn get_from_layout(&self, name: &str, policy: &Policy) -> Result<Ready, ImageError> {
        let mut missing = Vec::new();
        for dir in &self.layouts {
            let layout = match herd_oci::layout::Layout::open(dir) {
                Ok(l) => l,
                Err(_) => {
                    missing.push(format!("{} (not an OCI layout)", dir.display()));
                    continue;
                }
            };
            match herd_oci::pull::pull_layout(&layout, name, &self.store, &policy.keys) {
                Ok(pulled) => {
                    let rootfs = self.unpacked(&pulled)?;
                    return Ok(Ready {
                        pulled,
                        rootfs,
                        fetched: false,
                    });
                }
                Err(herd_oci::Error::NotFound(_)) => {
                    missing.push(format!("{} (no image {name:?})", dir.display()))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ImageError::NotInLayout {
            name: name.into(),
            looked: missing.join(", "),
        })
    }

    /// The image's root, unpacked once (into a scratch directory renamed
    /// into place, so a half-unpacked root is never used).
    fn unpacked(&self, p: &Pulled) -> Result<PathBuf, ImageError> {
        let d = p.reference.digest.as_ref().expect("pinned");
        let dir = self.root.join("rootfs").join(d.hex());
        if dir.is_dir() {
            return Ok(dir);
        }
        let tmp = self.root.join("rootfs").join(format!(
            ".{}-{:?}",
            d.hex(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        p.unpack(&self.store, &tmp)?;
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(dir),
            // Another pod unpacked the same image meanwhile.
            Err(_) if dir.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dir)
            }
            Err(e) => Err(io(format!("renaming {} into place", tmp.display()))(e)),
        }
    }

    /// Removes every image whose manifest digest is not in `in_use`:
    /// index entries, unpacked roots and blobs. Must not run while a pull
    /// is under way. Returns (images, blobs) removed.
    pub fn collect_garbage(&self, in_use: &BTreeSet<Digest>) -> Result<(usize, usize), ImageError> {
        let mut idx = self.index.lock().expect("index lock");
        let before = idx.len();
        idx.retain(|_, e| Digest::parse(&e.digest).is_ok_and(|d| in_use.contains(&d)));
        let images = before - idx.len();
        if images > 0 {
            self.save(&idx)?;
        }
        let mut keep = BTreeSet::new();
        for d in in_use {
            keep.insert(d.clone());
            if let Ok(bytes) = self.store.get(d) {
                if let Ok(m) = serde_json::from_slice::<herd_oci::manifest::Manifest>(&bytes) {
                    keep.insert(m.config.digest.clone());
                    keep.extend(m.layers.iter().map(|l| l.digest.clone()));
                }
            }
        }
        let blobs = self.store.retain(&keep)?;
        let roots = self.root.join("rootfs");
        if let Ok(rd) = std::fs::read_dir(&roots) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let used =
                    Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| keep.contains(&d));
                if !used {
                    std::fs::remove_dir_all(e.path())
                        .map_err(io(format!("removing {}", e.path().display())))?;
                }
            }
        }
        Ok((images, blobs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_kubelet() {
        let r = |s| Reference::parse(s).unwrap();
        assert_eq!(
            pull_policy(&r("127.0.0.1:5000/a"), None).unwrap(),
            PullPolicy::Always
        );
        assert_eq!(
            pull_policy(&r("127.0.0.1:5000/a:latest"), None).unwrap(),
            PullPolicy::Always
        );
        assert_eq!(
            pull_policy(&r("127.0.0.1:5000/a:1"), None).unwrap(),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            pull_policy(&r("127.0.0.1:5000/a:1"), Some("Never")).unwrap(),
            PullPolicy::Never
        );
        assert!(pull_policy(&r("127.0.0.1:5000/a:1"), Some("Sometimes")).is_err());
    }

    #[test]
    fn a_cached_image_is_reused_only_under_the_identity_rule_it_passed() {
        use herd_oci::reference::SignedIdentity;
        let key =
            herd_oci::cosign::TrustedKey::parse(&format!("58{}", "66".repeat(31)), "test key")
                .unwrap();
        let id = key.id();
        let policy = |rule: SignedIdentity| Policy {
            keys: vec![key.clone().with_identity(rule)],
            ..Policy::default()
        };
        let entry = |rule: Option<String>| Entry {
            digest: format!("sha256:{}", "ab".repeat(32)),
            signed_by: id.clone(),
            identity_rule: rule,
        };
        let default = policy(SignedIdentity::MatchRepository);
        // Cached before names were checked: pulled (and checked) again.
        let why = stale_identity(&entry(None), &default).unwrap();
        assert!(
            why.contains("before signatures had to name the image"),
            "{why}"
        );
        // Cached under the rule the key still has: reused.
        let now = identity_rule(&default, &id);
        assert!(stale_identity(&entry(now.clone()), &default).is_none());
        // The rule changed since (here: tightened): pulled again.
        let exact = policy(SignedIdentity::MatchExact);
        let why = stale_identity(&entry(now), &exact).unwrap();
        assert!(
            why.contains("MatchRepository") && why.contains("MatchExact"),
            "{why}"
        );
    }

    #[test]
    fn never_without_a_copy_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let images = Images::open(t.path(), Vec::new()).unwrap();
        let e = images
            .get("127.0.0.1:1/a:1", Some("Never"), &Policy::default())
            .unwrap_err();
        assert!(matches!(e, ImageError::NotPresent(_)), "{e}");
        assert_eq!(images.collect_garbage(&BTreeSet::new()).unwrap(), (0, 0));
    }
}
