//! Blessing a good boot: drop the tries counter from the running entry's
//! (or UKI's) file name on the ESP, as systemd-bless-boot does.

use std::fs;

use herd_gpt::{types, Guid};
use herd_init::bootcount::{blessed_name, boot_count_dir, decode_efivar_utf16, LOADER_GUID};

use herd_init::disks;

use crate::sys;

const EFIVARS: &str = "/sys/firmware/efi/efivars";
const ESP_MNT: &str = "/run/herd/esp";

fn var(name: &str) -> Option<String> {
    decode_efivar_utf16(&fs::read(format!("{EFIVARS}/{name}-{LOADER_GUID}")).ok()?)
}

/// The entry file whose tries systemd-boot counts for this boot
/// (`LoaderBootCountPath`), or `None` when it counts none (a blessed entry,
/// or not booted through UEFI).
pub fn counted_entry() -> Result<Option<String>, String> {
    if fs::metadata("/sys/firmware/efi").is_err() {
        return Ok(None);
    }
    if fs::read_dir(EFIVARS)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
    {
        sys::mount(
            "efivarfs",
            EFIVARS,
            "efivarfs",
            sys::MountFlags::NOSUID | sys::MountFlags::NODEV | sys::MountFlags::NOEXEC,
            "",
        )
        .map_err(|e| format!("cannot mount efivarfs: {e}"))?;
    }
    Ok(var("LoaderBootCountPath"))
}

/// Blesses the running boot entry; the message says what happened.
pub fn bless() -> Result<String, String> {
    if fs::metadata("/sys/firmware/efi").is_err() {
        return Ok("nothing to bless (not booted through UEFI)".into());
    }
    let Some(path) = counted_entry()? else {
        return Ok("nothing to bless (the boot loader counts no tries for this entry: no LoaderBootCountPath)".into());
    };
    let name = path.rsplit('\\').next().unwrap_or(&path).to_string();
    let blessed =
        blessed_name(&name).ok_or_else(|| format!("boot entry {name} has no tries counter"))?;
    let esp_uuid =
        var("LoaderDevicePartUUID").and_then(|u| Guid::parse(&u.to_ascii_lowercase()).ok());
    let esp = disks::scan()
        .into_iter()
        .find(|p| match esp_uuid {
            Some(u) => p.entry.part_guid == u,
            None => p.entry.type_guid == types::ESP,
        })
        .ok_or("cannot find the ESP the boot loader ran from")?;
    fs::create_dir_all(ESP_MNT).map_err(|e| e.to_string())?;
    sys::mount(
        &esp.dev,
        ESP_MNT,
        "vfat",
        sys::MountFlags::NOSUID | sys::MountFlags::NODEV | sys::MountFlags::NOEXEC,
        "",
    )
    .map_err(|e| format!("cannot mount the ESP {}: {e}", esp.dev))?;
    let dir = format!("{ESP_MNT}/{}", boot_count_dir(&path));
    let result = fs::rename(format!("{dir}/{name}"), format!("{dir}/{blessed}"))
        .and_then(|_| fs::File::open(&dir)?.sync_all())
        .map_err(|e| format!("cannot rename {name} to {blessed} on the ESP: {e}"));
    sys::sync();
    let _ = sys::umount(ESP_MNT);
    result.map(|_| format!("blessed boot entry {name} -> {blessed}"))
}
