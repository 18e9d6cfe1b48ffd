//! Which disk the boot loader ran from, from its EFI variables.

use std::fs;

use herd_gpt::Guid;
use herd_init::bootcount::{decode_efivar_utf16, LOADER_GUID};

use crate::sys::{self, MountFlags};
use crate::{fatal, info};

/// The PARTUUID of the ESP the boot loader ran from (systemd-boot's
/// `LoaderDevicePartUUID`), when booted through UEFI and the loader set it.
/// efivarfs is mounted here (the initramfs carries its module in the
/// shipped images); it stays mounted for the real root's blessing. Says in
/// one line which rule picks the boot disk.
pub fn loader_esp() -> Option<Guid> {
    const EFIVARS: &str = "/sys/firmware/efi/efivars";
    let var = format!("{EFIVARS}/LoaderDevicePartUUID-{LOADER_GUID}");
    let fallback = "exactly one disk may carry the /usr partitions of this usrhash";
    if fs::metadata("/sys/firmware/efi").is_err() {
        info!("boot disk: not booted through UEFI; {fallback}");
        return None;
    }
    let empty = fs::read_dir(EFIVARS)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true);
    if empty {
        if let Err(e) = sys::mount(
            "efivarfs",
            EFIVARS,
            "efivarfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "",
        ) {
            info!("boot disk: cannot mount efivarfs ({e}; is the efivarfs module in kernel.initrd_modules?); {fallback}");
            return None;
        }
    }
    let Some(raw) = fs::read(&var).ok().and_then(|r| decode_efivar_utf16(&r)) else {
        info!("boot disk: the boot loader set no LoaderDevicePartUUID (direct kernel boot, or a loader that does not set it); {fallback}");
        return None;
    };
    match Guid::parse(&raw.trim().to_ascii_lowercase()) {
        Ok(g) => {
            info!("boot disk: the boot loader ran from the ESP with PARTUUID {g}; /usr and STATE come from that disk only");
            Some(g)
        }
        Err(_) => fatal(&format!(
            "the boot loader's LoaderDevicePartUUID {raw:?} is not a GUID: refusing to guess the boot disk"
        )),
    }
}
