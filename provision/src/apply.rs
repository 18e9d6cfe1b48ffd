//! Applying a checked configuration to the node's STATE, once.
//!
//! Files written (paths under the node root; `/etc` and `/var` live on STATE):
//!
//! | path | content |
//! |---|---|
//! | `/etc/hostname` | the host name |
//! | `/etc/herd/init.toml` | herd-init's node settings: `hostname`, `[network]` |
//! | `/etc/herd/pods/NAME.yaml` | each static pod's manifest, named by `metadata.name` |
//! | `/etc/herd/policy/keys/NAME.pub` | each trusted image key, as given |
//! | `/etc/herd/policy/policy.toml` | `insecure_registries` (herd-agent's policy file) |
//! | `/etc/herd/registries/HOST.toml` | each registry's credentials, mode 0600 |
//! | `/etc/herd/update.toml` | herd-update settings overriding the image's |
//! | `/etc/herd/lock/ca.pem`, `client.pem`, `client.key` | `[update.lock]`'s inline PEM (the key mode 0600, the directory 0700) |
//! | `/var/lib/herd/provisioned` | the marker: the configuration's sha256 and source |
//!
//! Everything is written into a staging directory on STATE first, then
//! renamed into place; the marker is written last. A power cut before the
//! marker leaves no marker, so the next boot applies the whole configuration
//! again (every file is replaced, so applying twice gives the same result).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Checked;
use herd_node::config::Local;

/// The marker, relative to the node root.
pub const MARKER: &str = "var/lib/herd/provisioned";
/// The static-pod directory herd-agent watches, relative to the node root.
pub const PODS_DIR: &str = "etc/herd/pods";
/// The image trust policy directory, relative to the node root.
pub const POLICY_DIR: &str = "etc/herd/policy";
/// Registry credentials (herd-agent's `--registries`), relative to the
/// node root; files there are written mode 0600.
pub const REGISTRIES_DIR: &str = "etc/herd/registries";
/// herd-update's node settings, relative to the node root.
pub const UPDATE: &str = "etc/herd/update.toml";
/// `[update.lock]`'s TLS files, relative to the node root; the directory
/// is 0700 and the key 0600.
pub const LOCK_DIR: &str = "etc/herd/lock";
const STAGING: &str = "etc/.herd-provision.new";

/// Applying failed (the configuration was fine; the disk was not).
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}: {source}")]
pub struct ApplyError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ApplyError {
    let path = path.to_path_buf();
    move |source| ApplyError { what, path, source }
}

/// What the marker of an earlier provisioning says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// sha256 of the configuration that was applied.
    pub sha256: String,
    /// Where it came from.
    pub source: String,
}

/// Reads the marker under `root`, if the node was provisioned.
pub fn provisioned(root: &Path) -> Option<Marker> {
    let text = fs::read_to_string(root.join(MARKER)).ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(str::trim).map(str::to_string))
            .unwrap_or_default()
    };
    Some(Marker {
        sha256: field("sha256="),
        source: field("source="),
    })
}

/// herd-agent's `policy.toml` (agent/src/policy.rs).
#[derive(Serialize)]
struct PolicyFile {
    insecure_registries: Vec<String>,
}

/// The files a configuration produces: (path relative to the root, bytes).
pub fn files(c: &Checked) -> Vec<(String, Vec<u8>)> {
    let cfg = &c.config;
    let mut out = Vec::new();
    if let Some(h) = &cfg.hostname {
        out.push((
            "etc/hostname".into(),
            format!("{}\n", h.get_ref()).into_bytes(),
        ));
    }
    if cfg.hostname.is_some() || cfg.network.is_some() {
        let local = Local {
            hostname: cfg.hostname.as_ref().map(|h| h.get_ref().clone()),
            network: cfg.network.as_ref().map(|n| n.get_ref().clone()),
        };
        let text = format!(
            "# Written once by herd-provision on the first boot; overrides the image's\n\
             # hostname and [network] (/usr/lib/herd/init.toml).\n{}",
            toml::to_string(&local).expect("local settings serialise")
        );
        out.push(("etc/herd/init.toml".into(), text.into_bytes()));
    }
    for (name, manifest) in &c.pods {
        out.push((
            format!("{PODS_DIR}/{name}.yaml"),
            manifest.clone().into_bytes(),
        ));
    }
    for k in &cfg.images.keys {
        let k = k.get_ref();
        out.push((
            format!("{POLICY_DIR}/keys/{}.pub", k.name),
            format!("{}\n", k.key.trim()).into_bytes(),
        ));
    }
    if !cfg.images.insecure_registries.is_empty() {
        let policy = PolicyFile {
            insecure_registries: cfg
                .images
                .insecure_registries
                .iter()
                .map(|r| r.get_ref().clone())
                .collect(),
        };
        let text = format!(
            "# Written once by herd-provision: registries herd-agent reaches over plain HTTP\n\
             # (images from them must still be signed by a key in keys/).\n{}",
            toml::to_string(&policy).expect("policy serialises")
        );
        out.push((format!("{POLICY_DIR}/policy.toml"), text.into_bytes()));
    }
    for r in &cfg.images.registries {
        let r = r.get_ref();
        out.push((
            format!("{REGISTRIES_DIR}/{}.toml", r.host),
            r.file_text().into_bytes(),
        ));
    }
    if let Some(u) = &cfg.update {
        let text = format!(
            "# Written once by herd-provision; overrides /usr/lib/herd/update.toml key by key.\n{}",
            u.get_ref().update_toml()
        );
        out.push((UPDATE.into(), text.into_bytes()));
        for (path, bytes, _) in u.get_ref().lock.iter().flat_map(|l| l.files()) {
            out.push((path, bytes));
        }
    }
    out
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ApplyError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).map_err(err("create directory", d))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err("create", path))?;
    // The mode given at creation is masked by the umask; a file that was
    // there keeps its mode: set it either way, before anything is written.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err("chmod", path))?;
    f.write_all(bytes).map_err(err("write", path))?;
    f.sync_all().map_err(err("sync", path))
}

fn remove_any(p: &Path) -> Result<(), ApplyError> {
    let r = match fs::symlink_metadata(p) {
        Err(_) => return Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
    };
    r.map_err(err("remove", p))
}

/// Writes the configuration's files under `root` and then the marker.
/// `source` says where the configuration came from (for the marker).
/// Returns the paths written, relative to `root`.
pub fn apply(c: &Checked, root: &Path, source: &str) -> Result<Vec<String>, ApplyError> {
    let staging = root.join(STAGING);
    remove_any(&staging)?;
    let files = files(c);
    for (rel, bytes) in &files {
        let p = staging.join(rel.strip_prefix("etc/").unwrap_or(rel));
        let mode = if rel.starts_with(REGISTRIES_DIR) || rel == crate::config::LOCK_KEY {
            0o600
        } else {
            0o644
        };
        write_synced(&p, bytes, mode)?;
    }
    // Whole directories (pods, policy) replace what was there; single files
    // replace single files.
    let mut moves: Vec<String> = Vec::new();
    for (rel, _) in &files {
        let unit = if rel.starts_with(PODS_DIR) {
            PODS_DIR.to_string()
        } else if rel.starts_with(POLICY_DIR) {
            POLICY_DIR.to_string()
        } else if rel.starts_with(REGISTRIES_DIR) {
            REGISTRIES_DIR.to_string()
        } else if rel.starts_with(LOCK_DIR) {
            LOCK_DIR.to_string()
        } else {
            rel.clone()
        };
        if !moves.contains(&unit) {
            moves.push(unit);
        }
    }
    for unit in &moves {
        let from = staging.join(unit.strip_prefix("etc/").unwrap_or(unit));
        let to = root.join(unit);
        if let Some(d) = to.parent() {
            fs::create_dir_all(d).map_err(err("create directory", d))?;
        }
        remove_any(&to)?;
        fs::rename(&from, &to).map_err(err("move into place", &to))?;
        if unit == REGISTRIES_DIR || unit == LOCK_DIR {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o700))
                .map_err(err("chmod", &to))?;
        }
    }
    remove_any(&staging)?;
    let marker = root.join(MARKER);
    let tmp = marker.with_extension("new");
    write_synced(
        &tmp,
        format!(
            "# herd-provision applied this configuration; it is not read again.\nsha256={}\nsource={source}\n",
            c.sha256
        )
        .as_bytes(),
        0o644,
    )?;
    fs::rename(&tmp, &marker).map_err(err("move into place", &marker))?;
    if let Some(d) = marker.parent() {
        if let Ok(f) = fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use herd_oci::cosign::TrustedKey;

    fn good() -> Checked {
        NodeConfig::parse(&crate::config::tests::good()).unwrap()
    }

    #[test]
    fn writes_every_file_and_the_marker() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("etc/hostname"), "herd\n").unwrap();
        let c = good();
        assert!(provisioned(r).is_none());
        let written = apply(&c, r, "fw_cfg opt/herd/config").unwrap();
        assert!(
            written.contains(&"etc/herd/pods/web.yaml".to_string()),
            "{written:?}"
        );
        assert_eq!(
            fs::read_to_string(r.join("etc/hostname")).unwrap(),
            "node-7\n"
        );
        let local =
            Local::parse(&fs::read_to_string(r.join("etc/herd/init.toml")).unwrap()).unwrap();
        assert_eq!(local.hostname.as_deref(), Some("node-7"));
        assert_eq!(
            local.network.unwrap().address.as_deref(),
            Some("10.0.2.15/24")
        );
        let pod = fs::read_to_string(r.join("etc/herd/pods/web.yaml")).unwrap();
        herd_pod::Pod::parse(&pod, Path::new("web.yaml")).unwrap();
        // herd-agent's own policy reader takes what was written.
        let (policy, skipped) = herd_agent::policy::Policy::load(&[r.join("etc/herd/policy")]);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(policy.keys.len(), 1);
        let key = fs::read_to_string(r.join("etc/herd/policy/keys/ops.pub")).unwrap();
        assert!(policy.trusts(&TrustedKey::parse(&key, "ops").unwrap().id()));
        assert!(policy.plain_http("10.0.2.100:5000"));
        // Registry credentials: 0600 in a 0700 directory, and herd-agent's
        // reader takes them.
        {
            use std::os::unix::fs::PermissionsExt;
            let dir = r.join(REGISTRIES_DIR);
            let f = dir.join("10.0.2.100:5000.toml");
            assert_eq!(
                fs::metadata(&f).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
                0o700
            );
            let creds = herd_oci::credentials::load(&dir, "10.0.2.100:5000")
                .unwrap()
                .unwrap();
            assert_eq!(
                creds,
                herd_oci::credentials::Credentials::Password {
                    username: "robot".into(),
                    password: "pw-Secret-123".into()
                }
            );
        }
        let update = fs::read_to_string(r.join(UPDATE)).unwrap();
        let merged = format!("repository = \"http://x\"\n{update}");
        let u = herd_update_config::UpdateConfig::parse(&merged).unwrap();
        assert_eq!(u.channel, "beta");
        assert!(!r.join(STAGING).exists());
        let m = provisioned(r).unwrap();
        assert_eq!(m.sha256, c.sha256);
        assert_eq!(m.source, "fw_cfg opt/herd/config");
    }

    #[test]
    fn update_lock_tls_files_are_written_for_herd_update() {
        use std::os::unix::fs::PermissionsExt;
        let (ca, cert, key) = crate::config::tests::lock_pems();
        let c = NodeConfig::parse(&crate::config::tests::tls_lock(&ca, &cert, &key)).unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let written = apply(&c, r, "test").unwrap();
        for f in [
            crate::config::LOCK_CA,
            crate::config::LOCK_CERT,
            crate::config::LOCK_KEY,
        ] {
            assert!(written.contains(&f.to_string()), "{written:?}");
        }
        let mode = |p: &str| fs::metadata(r.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(crate::config::LOCK_KEY), 0o600);
        assert_eq!(mode(LOCK_DIR), 0o700);
        // herd-update's merge with an image whose [lock] differs: the
        // node's wins, and its files are the pair given.
        let image = "repository = \"http://x\"\nreboot = \"immediate\"\n[lock]\nbackend = \"fleetlock\"\nurl = \"http://f:1\"\n";
        let local = fs::read_to_string(r.join(UPDATE)).unwrap();
        let u = herd_update_config::UpdateConfig::parse_with_local(image, Some(&local)).unwrap();
        assert_eq!(u.reboot, herd_update_config::Reboot::Coordinated);
        let l = u.lock.unwrap();
        assert_eq!(l.endpoints, ["https://10.0.0.5:2379"]);
        let under = |p: &Option<String>| r.join(p.as_deref().unwrap().trim_start_matches('/'));
        let (cf, kf) = (under(&l.cert_file), under(&l.key_file));
        herd_tls::Identity::from_pem(&fs::read(cf).unwrap(), &fs::read(kf).unwrap()).unwrap();
        herd_tls::roots_from_pem(&fs::read(under(&l.ca_file)).unwrap()).unwrap();
    }

    #[test]
    fn applying_again_replaces_everything() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        apply(&good(), r, "a").unwrap();
        // A half-done earlier attempt: stale staging and an extra pod.
        fs::create_dir_all(r.join(STAGING)).unwrap();
        fs::write(r.join("etc/herd/pods/old.yaml"), "x").unwrap();
        let text = format!(
            "hostname = \"n2\"\n[[images.key]]\nname = \"k\"\nkey = \"{}\"\n{}",
            crate::config::tests::KEY,
            crate::config::tests::pod("db", "r.io/db:1")
        );
        let c = NodeConfig::parse(&text).unwrap();
        apply(&c, r, "b").unwrap();
        let mut pods: Vec<_> = fs::read_dir(r.join(PODS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        pods.sort();
        assert_eq!(pods, ["db.yaml"]);
        assert!(!r.join("etc/herd/policy/keys/ops.pub").exists());
        assert_eq!(provisioned(r).unwrap().sha256, c.sha256);
    }
}
