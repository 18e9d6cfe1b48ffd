//! herd-agent: runs Kubernetes-style static pods on a herd node, only
//! from container images whose signatures verify against the node's keys.

pub mod backoff;
pub mod pod;
pub mod quantity;
pub mod spec;
pub mod watch;
