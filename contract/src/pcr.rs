//! herd-init's boot phases, each extended into PCR 11 (as systemd's
//! `systemd-pcrphase` does) so a quote tells how far a boot got.

/// The PCR herd-init extends its phases into.
pub const PHASE_PCR: u32 = 11;
/// The PCR herd-init extends the mounted /usr and the slot into.
pub const USR_PCR: u32 = 15;

/// Entering the initramfs stage.
pub const ENTER_INITRD: &str = "enter-initrd";
/// Leaving it for /usr.
pub const LEAVE_INITRD: &str = "leave-initrd";
/// The real root's set-up.
pub const SYSINIT: &str = "sysinit";
/// Services started: the node is up.
pub const READY: &str = "ready";

/// Every phase, in the order a boot passes them.
pub const PHASES: [&str; 4] = [ENTER_INITRD, LEAVE_INITRD, SYSINIT, READY];
