//! Roles of a release's payload files: the keys of `payloads` in the signed
//! release document, shared by the publisher, the verifier and the updater.

use crate::Slot;

/// The /usr squashfs image.
pub const USR_IMG: &str = "usr.img";
/// Its dm-verity hash tree.
pub const USR_VERITY: &str = "usr.verity";
/// Slot A's Unified Kernel Image.
pub const UKI_A: &str = "uki-a";
/// Slot B's Unified Kernel Image.
pub const UKI_B: &str = "uki-b";
/// The kernel alone (for direct kernel boot).
pub const LINUX: &str = "linux";
/// The initramfs alone.
pub const INITRD: &str = "initrd";

/// Every role a release must carry for a node to install it.
pub const REQUIRED: [&str; 4] = [USR_IMG, USR_VERITY, UKI_A, UKI_B];

/// The UKI role of a slot.
pub fn uki(slot: Slot) -> &'static str {
    match slot {
        Slot::A => UKI_A,
        Slot::B => UKI_B,
    }
}
