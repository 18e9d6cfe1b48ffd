//! A container's root filesystem: an overlay whose only lower layer is
//! the verified image root (`images/rootfs/<hex>`, shared by every
//! container of that image) and whose upper layer is the container's own.
//! Whatever a container — or crun making its mount points — writes lands
//! in the upper layer; the kernel's overlayfs never writes a lower layer,
//! so the next pod of the image runs the bytes that were verified. A
//! read-only container's upper layer is on the bundle's tmpfs and holds
//! only mount points; a `readOnlyRootFilesystem: false` container's is on
//! disk under the pod's state and starts empty at every start. For a pod
//! with a user namespace the lower layer is an idmapped, read-only view of
//! the image root (host id h shows as the pod's h) and the upper layer's
//! root belongs to the pod's root ([`crate::userns`]).

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::mount::{MountFlags, UnmountFlags};

use crate::userns::{self, IdRange};

/// A container root that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RootfsError(pub String);

/// Where a container's root comes from.
#[derive(Debug, Clone)]
pub struct Layers {
    /// The verified image root (lower layer, never written).
    pub image: PathBuf,
    /// Holds the container's `upper` and `work` directories; emptied first.
    pub scratch: PathBuf,
    /// Where the overlay is mounted (the bundle's `rootfs`).
    pub target: PathBuf,
    /// The pod's user namespace, if it has one: the lower layer is then an
    /// idmapped mount of the image root (see [`crate::userns`]) and the
    /// upper layer belongs to the range's root.
    pub userns: Option<(IdRange, Arc<OwnedFd>)>,
}

fn c_path(p: &Path) -> Result<CString, RootfsError> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| RootfsError(format!("{}: NUL in path", p.display())))
}

/// A path as an overlayfs option value: the option string separates with
/// `,` and `:`, so paths holding them (or `\`) are refused.
fn option_path(p: &Path) -> Result<String, RootfsError> {
    let s = p
        .to_str()
        .ok_or_else(|| RootfsError(format!("{}: not UTF-8", p.display())))?;
    if s.contains([',', ':', '\\']) {
        return Err(RootfsError(format!(
            "{s}: overlayfs cannot take a path with ',', ':' or '\\'; move the agent's state directory"
        )));
    }
    Ok(s.to_string())
}

/// Mounts the overlay of `l` at `l.target`, with an empty upper layer.
pub fn mount(l: &Layers) -> Result<(), RootfsError> {
    let io = |what: &str, p: &Path| {
        let p = p.display().to_string();
        let what = what.to_string();
        move |e: std::io::Error| RootfsError(format!("{what} {p}: {e}"))
    };
    unmount(&l.target);
    unmount(&l.scratch.join("lower"));
    if l.scratch.exists() {
        std::fs::remove_dir_all(&l.scratch).map_err(io("emptying", &l.scratch))?;
    }
    let (upper, work) = (l.scratch.join("upper"), l.scratch.join("work"));
    for d in [&upper, &work, &l.target] {
        std::fs::create_dir_all(d).map_err(io("creating", d))?;
    }
    // With a user namespace the lower layer is the image root seen through
    // an idmapped mount (read-only), attached beside the target until the
    // overlay holds it.
    let lower = match &l.userns {
        Some((range, ns)) => {
            let lower = l.scratch.join("lower");
            std::fs::create_dir_all(&lower).map_err(io("creating", &lower))?;
            userns::idmapped_clone(&l.image, &lower, ns)
                .map_err(|e| RootfsError(format!("the pod's view of the image: {e}")))?;
            userns::chown_to(&upper, *range).map_err(|e| RootfsError(e.to_string()))?;
            Some(lower)
        }
        None => None,
    };
    let result = mount_overlay(l, lower.as_deref().unwrap_or(&l.image), &upper, &work);
    // The overlay keeps its own reference to the lower layer.
    if let Some(lower) = &lower {
        unmount(lower);
    }
    result
}

fn mount_overlay(l: &Layers, lower: &Path, upper: &Path, work: &Path) -> Result<(), RootfsError> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        option_path(lower)?,
        option_path(upper)?,
        option_path(work)?
    );
    let target = c_path(&l.target)?;
    let opts = CString::new(opts).expect("paths checked for NUL");
    // At boot herd-init loads the overlay module from /usr while the agent
    // already starts: an unknown file system type (ENODEV) is waited out
    // for a few seconds before it counts as missing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let result = loop {
        let result = rustix::mount::mount(
            "overlay",
            target.as_c_str(),
            "overlay",
            MountFlags::NOSUID | MountFlags::NODEV,
            opts.as_c_str(),
        );
        let unknown_fs = result == Err(rustix::io::Errno::NODEV);
        if !unknown_fs || std::time::Instant::now() > deadline {
            break result;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    result.map_err(|e| {
        RootfsError(format!(
            "mounting the overlay of {} on {}: {} (herd needs overlayfs in the kernel)",
            l.image.display(),
            l.target.display(),
            std::io::Error::from(e)
        ))
    })
}

/// Unmounts what [`mount`] put at `target`, if anything (detached: a
/// process still inside lets go later).
pub fn unmount(target: &Path) {
    // EINVAL (not a mount point) and ENOENT are fine.
    let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
}

/// Unmounts the root of the container whose bundle is `bundle` and
/// removes the bundle.
pub fn remove_bundle(bundle: &Path) {
    unmount(&bundle.join("rootfs"));
    let _ = std::fs::remove_dir_all(bundle);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_option_paths_are_checked() {
        assert_eq!(option_path(Path::new("/var/lib/x")).unwrap(), "/var/lib/x");
        for bad in ["/a,b", "/a:b", "/a\\b"] {
            let e = option_path(Path::new(bad)).unwrap_err();
            assert!(e.0.contains("overlayfs cannot take"), "{e}");
        }
    }

    /// Needs root (mount); skipped otherwise, as the end-to-end tests
    /// (tests/tests/agent.rs) cover it with crun.
    #[test]
    fn writes_land_in_the_upper_layer() {
        if !rustix::process::getuid().is_root() {
            eprintln!("not root: skipped");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let image = t.path().join("image");
        std::fs::create_dir_all(image.join("etc")).unwrap();
        std::fs::write(image.join("etc/marker"), "signed").unwrap();
        let l = Layers {
            image: image.clone(),
            scratch: t.path().join("scratch"),
            target: t.path().join("bundle/rootfs"),
            userns: None,
        };
        // Mounted in a private mount namespace of this test's thread, so
        // nothing leaks into the runner's.
        crate::test_support::private_mount_namespace();
        mount(&l).unwrap();
        std::fs::write(l.target.join("etc/marker"), "tampered").unwrap();
        std::fs::create_dir(l.target.join("proc")).unwrap();
        assert_eq!(
            std::fs::read_to_string(l.target.join("etc/marker")).unwrap(),
            "tampered"
        );
        remove_bundle(&t.path().join("bundle"));
        assert_eq!(
            std::fs::read_to_string(image.join("etc/marker")).unwrap(),
            "signed"
        );
        assert!(!image.join("proc").exists());
        // Mounted again: the upper layer starts empty.
        mount(&l).unwrap();
        assert_eq!(
            std::fs::read_to_string(l.target.join("etc/marker")).unwrap(),
            "signed"
        );
        remove_bundle(&t.path().join("bundle"));
    }
}
