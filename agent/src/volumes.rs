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
//!   created for `DirectoryOrCreate` (the default). Never the node's own
//!   state (`NODE_STATE`), anything under it or anything holding it
//!   (`/var`, `/var/lib`), after normalising the path lexically; and
//!   resolved without following symlinks (`openat2` with
//!   `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`, one component at a time), so
//!   a symlink planted at an allowed path cannot lead into that state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::pod::{Container, Pod};
use crate::quantity;
use crate::spec::VolumeSource;
use crate::userns::{self, IdRange};

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
    /// What hostPath volumes are resolved beneath (`/`).
    pub host_root: PathBuf,
}

pub use crate::pod::host_path::{host_path_rule, NODE_STATE};

/// Opens `rel` beneath `root` one component at a time with `openat2`
/// (`RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`), creating missing directories
/// if `create`: a symlink anywhere on the way fails with `ELOOP`.
fn open_beneath(root: &Path, rel: &Path, create: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use std::os::fd::{AsFd, OwnedFd};
    let openat2 = |dir: &OwnedFd, name: &std::ffi::OsStr| -> std::io::Result<OwnedFd> {
        Ok(rustix::fs::openat2(
            dir.as_fd(),
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH,
        )?)
    };
    let mut cur: OwnedFd = std::fs::File::open(root)?.into();
    for c in rel.components() {
        let name = c.as_os_str();
        if name.as_encoded_bytes().contains(&0) {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        cur = match openat2(&cur, name) {
            Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {
                match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                openat2(&cur, name)?
            }
            r => r?,
        };
    }
    Ok(cur)
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
    use rustix::mount::MountFlags;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    if dir.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(VolumeError(format!("{}: NUL in path", dir.display())));
    }
    let opts = std::ffi::CString::new(format!("size={bytes},mode=1777")).expect("no NUL");
    rustix::mount::mount(
        "tmpfs",
        dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        opts.as_c_str(),
    )
    .map_err(|e| {
        VolumeError(format!(
            "mounting a tmpfs on {}: {}",
            dir.display(),
            std::io::Error::from(e)
        ))
    })
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

/// Makes every volume of `pod`; returns volume name → host path. With a
/// user namespace (`userns`, the pod's host ids) the pod's own volumes —
/// emptyDir, and the copies of secrets and config maps — belong to the
/// range's root; a hostPath keeps its owners (ids outside the range show
/// as nobody in the pod).
pub fn prepare(
    pod: &Pod,
    src: &Sources,
    userns: Option<IdRange>,
) -> Result<BTreeMap<String, VolumeSource>, VolumeError> {
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
            let refuse = |why: String| VolumeError(format!("volume {}: hostPath {why}", v.name));
            let rel = host_path_rule(&h.path).map_err(refuse)?;
            let create = h.kind.as_deref() != Some("Directory");
            match open_beneath(&src.host_root, &rel, create) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => return Err(refuse(format!(
                    "{:?}: a symlink on the way; hostPath is resolved without following symlinks (openat2 RESOLVE_NO_SYMLINKS), use the real directory",
                    h.path
                ))),
                Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Err(refuse(format!(
                    "{} is not a directory (type Directory); create it or use DirectoryOrCreate",
                    h.path
                ))),
                Err(e) => return Err(refuse(format!("{:?}: {e}", h.path))),
            }
            src.host_root.join(rel)
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
        if let Some(range) = userns {
            // An emptyDir's content is the pod's own already (it may have
            // other owners in the pod); the copies are fresh and root's.
            let given = if v.empty_dir.is_some() {
                userns::chown_to(&path, range)
            } else if v.host_path.is_none() {
                userns::chown_tree(&path, range)
            } else {
                Ok(())
            };
            given.map_err(|e| {
                VolumeError(format!(
                    "volume {}: giving it to the pod's user namespace: {e}",
                    v.name
                ))
            })?;
        }
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
                let _ = rustix::mount::unmount(e.path(), rustix::mount::UnmountFlags::DETACH);
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
            host_root: t.join("host"),
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
        std::fs::create_dir_all(&src.host_root).unwrap();
        let host = src.host_root.join("var/x");
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    image: 127.0.0.1:5000/x:1\n    env:\n    - name: PW\n      valueFrom: {secretKeyRef: {name: db, key: password}}\n  volumes:\n  - {name: scratch, emptyDir: {}}\n  - {name: data, hostPath: {path: /var/x}}\n  - {name: creds, secret: {secretName: db}}\n  - {name: site, configMap: {name: site}}\n";
        let pod = Pod::parse(yaml, Path::new("web.yaml")).unwrap();
        let env = env_from(&pod.spec.containers[0], &src).unwrap();
        assert_eq!(env["PW"], "hunter2");
        let v = prepare(&pod, &src, None).unwrap();
        assert!(v["scratch"].path.starts_with(&src.pods_state));
        assert!(host.is_dir());
        assert_eq!(v["data"].path, host);
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
        let e = prepare(&pod, &src, None).unwrap_err();
        assert!(e.0.contains("volume creds (secret db)"), "{e}");
    }

    #[test]
    fn host_paths_are_normalised_and_keep_off_the_node_state() {
        for (path, ok) in [
            ("/var/lib/web", "var/lib/web"),
            ("//var//lib/web/", "var/lib/web"),
            ("/var/./data", "var/data"),
            ("/var/x/../y", "var/y"),
            ("/var/lib/herdsman", "var/lib/herdsman"),
        ] {
            assert_eq!(host_path_rule(path), Ok(PathBuf::from(ok)), "{path}");
        }
        for (path, why) in [
            (
                "/var/lib/herd",
                "is /var/lib/herd, which is /var/lib/herd or under it",
            ),
            ("/var/lib/herd/", "which is /var/lib/herd or under it"),
            ("//var/lib/herd", "which is /var/lib/herd or under it"),
            ("/var/lib/./herd", "which is /var/lib/herd or under it"),
            (
                "/var/lib/../lib/herd",
                "is /var/lib/herd, which is /var/lib/herd or under it",
            ),
            (
                "/var/lib/herd/update/keys",
                "which is /var/lib/herd or under it",
            ),
            ("/var/log/herd/agent", "which is /var/log/herd or under it"),
            (
                "/var/log/../../etc/herd",
                "is /etc/herd, which is /etc/herd or under it",
            ),
            ("/run/herd/agent.sock", "which is /run/herd or under it"),
            ("/var", "is /var, which holds /var/lib/herd"),
            ("/var/lib/", "which holds /var/lib/herd"),
            ("/var/log", "which holds /var/log/herd"),
            ("/var/lib/web/../..", "is /var, which holds /var/lib/herd"),
            ("/etc", "must be under /var"),
            ("/", "must be under /var"),
            (
                "/var/../etc",
                "is /etc: hostPath volumes must be under /var",
            ),
            ("/variable", "must be under /var"),
            ("var/lib/web", "not an absolute path"),
        ] {
            let e = host_path_rule(path).unwrap_err();
            assert!(e.contains(why), "{path}: {e}");
            assert!(e.starts_with(&format!("{path:?}")), "{path}: {e}");
        }
        for s in NODE_STATE {
            assert!(host_path_rule(s)
                .unwrap_err()
                .contains("the node's own state is never given to a pod"));
        }
    }

    #[test]
    fn host_paths_do_not_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let src = sources(t.path());
        let herd = src.host_root.join("var/lib/herd");
        std::fs::create_dir_all(&herd).unwrap();
        std::fs::write(herd.join("node.key"), "secret").unwrap();
        std::fs::create_dir_all(src.host_root.join("var/real")).unwrap();
        // Planted at an allowed path, pointing into the node's state.
        std::os::unix::fs::symlink("lib/herd", src.host_root.join("var/data")).unwrap();
        let pod_with = |path: &str, kind: &str| {
            let yaml = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: c\n    image: 127.0.0.1:5000/x:1\n  volumes:\n  - {{name: data, hostPath: {{path: {path}, type: {kind}}}}}\n");
            Pod::parse(&yaml, Path::new("p.yaml")).unwrap()
        };
        for (path, kind) in [
            ("/var/data", "DirectoryOrCreate"),
            ("/var/data", "Directory"),
            ("/var/data/sub", "DirectoryOrCreate"),
            ("/var/data/sub", "Directory"),
        ] {
            let e = prepare(&pod_with(path, kind), &src, None).unwrap_err();
            assert_eq!(
                e.0,
                format!("volume data: hostPath {path:?}: a symlink on the way; hostPath is resolved without following symlinks (openat2 RESOLVE_NO_SYMLINKS), use the real directory"),
                "{path} {kind}"
            );
        }
        assert!(
            !herd.join("sub").exists(),
            "nothing created through the link"
        );

        let v = prepare(&pod_with("/var/real", "Directory"), &src, None).unwrap();
        assert_eq!(v["data"].path, src.host_root.join("var/real"));
        let v = prepare(
            &pod_with("/var/real/new/dir", "DirectoryOrCreate"),
            &src,
            None,
        )
        .unwrap();
        assert!(v["data"].path.is_dir());
        let e = prepare(&pod_with("/var/missing", "Directory"), &src, None).unwrap_err();
        assert!(e.0.contains("is not a directory (type Directory)"), "{e}");
    }
}
