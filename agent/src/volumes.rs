//! A pod's volumes and `valueFrom` environment, made real on the node.
//!
//! Secrets and config maps of a static pod come from the node's own files,
//! one directory per name and one file per key:
//! `/etc/herd/secrets/<name>/<key>` and `/etc/herd/configmaps/<name>/<key>`
//! (root-only; the provisioning config writes them). A pod sees a
//! secret only as a copy on a tmpfs under `/run` — never in the pod's
//! disk directories — and config maps likewise as a copy, so an edit
//! reaches the pod when it restarts.
//!
//! - `emptyDir`: a directory under the agent's state (`/var`), emptied
//!   when the pod goes; `medium: Memory` is a tmpfs of `sizeLimit`
//!   (default 64 MiB) under `/run`;
//! - `hostPath`: the node's directory (manifests may only name `/var`),
//!   created for `DirectoryOrCreate` (the default).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::pod::{Container, Pod};
use crate::quantity;
use crate::spec::VolumeSource;

/// Where the node keeps what pods refer to.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `/etc/herd/secrets`.
    pub secrets: PathBuf,
    /// `/etc/herd/configmaps`.
    pub configmaps: PathBuf,
    /// Per-pod disk directories (`/var/lib/herd/agent/pods`).
    pub pods_state: PathBuf,
    /// Per-pod memory directories (`/run/herd/agent/pods`).
    pub pods_run: PathBuf,
}

/// A volume that cannot be made, or a key that is missing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VolumeError(pub String);

fn io(what: String) -> impl FnOnce(std::io::Error) -> VolumeError {
    move |e| VolumeError(format!("{what}: {e}"))
}

fn key_file(dir: &Path, kind: &str, name: &str, key: &str) -> Result<PathBuf, VolumeError> {
    let bad = |s: &str| s.is_empty() || s.contains('/') || s == "." || s == "..";
    if bad(name) || bad(key) {
        return Err(VolumeError(format!(
            "{kind} {name:?} key {key:?}: not a valid name"
        )));
    }
    Ok(dir.join(name).join(key))
}

fn copy_keys(from: &Path, to: &Path, mode: u32, what: &str) -> Result<(), VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    let rd = std::fs::read_dir(from).map_err(|e| {
        VolumeError(format!(
            "{what}: {} cannot be read ({e}); provision it first",
            from.display()
        ))
    })?;
    std::fs::create_dir_all(to).map_err(io(format!("creating {}", to.display())))?;
    for e in rd.flatten() {
        let p = e.path();
        if !p.is_file() {
            continue;
        }
        let dst = to.join(e.file_name());
        std::fs::copy(&p, &dst).map_err(io(format!("copying {}", p.display())))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {}", dst.display())))?;
    }
    Ok(())
}

/// The environment values `c` takes from secrets and config maps.
pub fn env_from(c: &Container, src: &Sources) -> Result<BTreeMap<String, String>, VolumeError> {
    let mut out = BTreeMap::new();
    for e in &c.env {
        let Some(from) = &e.value_from else { continue };
        let (kind, dir, r) = match (&from.secret_key_ref, &from.config_map_key_ref) {
            (Some(r), _) => ("secret", &src.secrets, r),
            (None, Some(r)) => ("configMap", &src.configmaps, r),
            (None, None) => continue,
        };
        let f = key_file(dir, kind, &r.name, &r.key)?;
        let v = std::fs::read_to_string(&f).map_err(|err| {
            VolumeError(format!(
                "env {} of container {}: {kind} {}/{} ({}): {err}",
                e.name,
                c.name,
                r.name,
                r.key,
                f.display()
            ))
        })?;
        out.insert(e.name.clone(), v.trim_end_matches('\n').to_string());
    }
    Ok(out)
}

/// Mounted tmpfs volumes of a pod, unmounted by [`teardown`].
fn mount_tmpfs(dir: &Path, bytes: u64) -> Result<(), VolumeError> {
    use std::ffi::CString;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let target = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| VolumeError(format!("{}: NUL in path", dir.display())))?;
    let opts = CString::new(format!("size={bytes},mode=1777")).expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(VolumeError(format!(
            "mounting a tmpfs on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// A fresh copy of the keys of secret or config map `name` (a directory
/// of `dir`) at `to`, each file with `mode`.
fn keys_volume(
    dir: &Path,
    kind: &str,
    name: &str,
    to: &Path,
    mode: u32,
    volume: &str,
) -> Result<PathBuf, VolumeError> {
    let from = key_file(dir, kind, name, "x")?
        .parent()
        .expect("has parent")
        .to_path_buf();
    let _ = std::fs::remove_dir_all(to);
    copy_keys(&from, to, mode, &format!("volume {volume} ({kind} {name})"))?;
    Ok(to.to_path_buf())
}

/// Makes every volume of `pod`; returns volume name → host path.
pub fn prepare(pod: &Pod, src: &Sources) -> Result<BTreeMap<String, VolumeSource>, VolumeError> {
    let name = &pod.metadata.name;
    let disk = src.pods_state.join(name).join("volumes");
    let mem = src.pods_run.join(name).join("volumes");
    let mut out = BTreeMap::new();
    for v in &pod.spec.volumes {
        let path = if let Some(e) = &v.empty_dir {
            if e.medium.as_deref() == Some("Memory") {
                let p = mem.join(&v.name);
                let size = e
                    .size_limit
                    .as_deref()
                    .and_then(|s| quantity::memory_bytes(s).ok())
                    .unwrap_or(64 << 20);
                if !is_mountpoint(&p) {
                    mount_tmpfs(&p, size)?;
                }
                p
            } else {
                let p = disk.join(&v.name);
                std::fs::create_dir_all(&p).map_err(io(format!("creating {}", p.display())))?;
                p
            }
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            if h.kind.as_deref() == Some("Directory") {
                if !p.is_dir() {
                    return Err(VolumeError(format!(
                        "volume {}: hostPath {} is not a directory (type Directory); create it or use DirectoryOrCreate",
                        v.name, h.path
                    )));
                }
            } else {
                std::fs::create_dir_all(&p).map_err(io(format!("creating {}", p.display())))?;
            }
            p
        } else if let Some(s) = &v.secret {
            keys_volume(
                &src.secrets,
                "secret",
                &s.secret_name,
                &mem.join(&v.name),
                0o400,
                &v.name,
            )?
        } else if let Some(c) = &v.config_map {
            keys_volume(
                &src.configmaps,
                "configMap",
                &c.name,
                &mem.join(&v.name),
                0o444,
                &v.name,
            )?
        } else {
            continue;
        };
        out.insert(v.name.clone(), VolumeSource { path });
    }
    Ok(out)
}

fn is_mountpoint(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Removes what [`prepare`] made for `pod` (host paths stay).
pub fn teardown(pod: &str, src: &Sources) {
    let mem = src.pods_run.join(pod);
    if let Ok(rd) = std::fs::read_dir(mem.join("volumes")) {
        for e in rd.flatten() {
            if is_mountpoint(&e.path()) {
                if let Ok(c) = std::ffi::CString::new(e.path().as_os_str().as_encoded_bytes()) {
                    // SAFETY: a valid NUL-terminated path.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(mem);
    let _ = std::fs::remove_dir_all(src.pods_state.join(pod));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(t: &Path) -> Sources {
        Sources {
            secrets: t.join("secrets"),
            configmaps: t.join("configmaps"),
            pods_state: t.join("state"),
            pods_run: t.join("run"),
        }
    }

    #[test]
    fn volumes_and_env_come_from_the_node() {
        let t = tempfile::tempdir().unwrap();
        let src = sources(t.path());
        std::fs::create_dir_all(src.secrets.join("db")).unwrap();
        std::fs::write(src.secrets.join("db/password"), "hunter2\n").unwrap();
        std::fs::create_dir_all(src.configmaps.join("site")).unwrap();
        std::fs::write(src.configmaps.join("site/index.html"), "hi").unwrap();
        let host = t.path().join("var-data");
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    image: 127.0.0.1:5000/x:1\n    env:\n    - name: PW\n      valueFrom: {secretKeyRef: {name: db, key: password}}\n  volumes:\n  - {name: scratch, emptyDir: {}}\n  - {name: data, hostPath: {path: /var/x}}\n  - {name: creds, secret: {secretName: db}}\n  - {name: site, configMap: {name: site}}\n";
        let mut pod = Pod::parse(yaml, Path::new("web.yaml")).unwrap();
        pod.spec.volumes[1].host_path.as_mut().unwrap().path = host.display().to_string();
        let env = env_from(&pod.spec.containers[0], &src).unwrap();
        assert_eq!(env["PW"], "hunter2");
        let v = prepare(&pod, &src).unwrap();
        assert!(v["scratch"].path.starts_with(&src.pods_state));
        assert!(host.is_dir());
        assert!(v["creds"].path.starts_with(&src.pods_run));
        assert_eq!(
            std::fs::read_to_string(v["creds"].path.join("password")).unwrap(),
            "hunter2\n"
        );
        assert_eq!(
            std::fs::read_to_string(v["site"].path.join("index.html")).unwrap(),
            "hi"
        );
        teardown("web", &src);
        assert!(!src.pods_run.join("web").exists() && !src.pods_state.join("web").exists());
        assert!(host.is_dir(), "host paths stay");

        std::fs::remove_dir_all(src.secrets.join("db")).unwrap();
        let e = env_from(&pod.spec.containers[0], &src).unwrap_err();
        assert!(
            e.0.contains("env PW of container c: secret db/password"),
            "{e}"
        );
        let e = prepare(&pod, &src).unwrap_err();
        assert!(e.0.contains("volume creds (secret db)"), "{e}");
    }
}
