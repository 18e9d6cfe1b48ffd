//! Files on a running node that more than one program reads.

/// Written by herd-init once it blessed this boot (or found nothing to
/// bless); the updater installs nothing before it exists.
pub const BOOT_GOOD: &str = "/run/herd/boot-good";
/// The updater's state directory on STATE.
pub const UPDATE_STATE_DIR: &str = "/var/lib/herd/update";
/// Present once provisioning closed (relative to the STATE root).
pub const PROVISIONING_CLOSED: &str = "var/lib/herd/provisioning-closed";
