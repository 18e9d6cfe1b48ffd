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
