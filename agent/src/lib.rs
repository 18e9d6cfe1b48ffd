//! herd-agent: runs Kubernetes-style static pods on a herd node, only
//! from container images whose signatures verify against the node's keys.

pub mod adopt;
pub mod api;
pub mod backoff;
pub mod disk;
pub mod images;
pub mod logs;
pub mod measured;
pub mod net;
pub mod policy;
pub mod reaper;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod status;
pub mod supervise;
pub mod userns;
pub mod volumes;
pub mod watch;

/// The pod manifest schema lives in its own crate (provisioning checks
/// manifests with it without linking the agent).
pub use herd_pod as pod;
pub use herd_pod::quantity;

#[cfg(test)]
mod test_support {
    /// Moves the calling test thread into a mount namespace of its own
    /// whose mounts do not propagate back, so what a test mounts never
    /// shows in the runner's namespace. Needs root.
    pub fn private_mount_namespace() {
        use rustix::thread::{unshare_unsafe, UnshareFlags};
        // SAFETY: only CLONE_NEWNS is unshared: the file descriptor table
        // (what makes unshare unsafe in rustix, CLONE_FILES) stays shared.
        unsafe { unshare_unsafe(UnshareFlags::NEWNS) }.expect("unshare(CLONE_NEWNS)");
        rustix::mount::mount_change(
            "/",
            rustix::mount::MountPropagationFlags::REC
                | rustix::mount::MountPropagationFlags::PRIVATE,
        )
        .expect("making / private");
    }
}
