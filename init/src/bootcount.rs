//! Boot Loader Specification boot counting: entry file names (type #1
//! entries in [`herd_contract::esp::ENTRIES_DIR`] and type #2 UKIs in
//! [`herd_contract::esp::UKI_DIR`], counted the same way); the EFI variables systemd-boot leaves for the OS are read
//! with [`herd_node::efivar`].

pub use herd_node::efivar::{decode_efivar_utf16, decode_efivar_utf16_list, LOADER_GUID};

/// The blessed name of a counted entry (`herd-a+2-1.efi` → `herd-a.efi`):
/// the contract's rule, [`herd_contract::entry::blessed_name`].
pub use herd_contract::entry::blessed_name;

/// The directory of the file systemd-boot counts tries on, as a path
/// relative to the ESP root (from `LoaderBootCountPath`, a UKI's
/// backslashed path → [`herd_contract::esp::UKI_DIR`]).
pub fn boot_count_dir(path: &str) -> String {
    let p = path.replace('\\', "/");
    let p = p.trim_start_matches('/');
    match p.rsplit_once('/') {
        Some((dir, _)) => dir.to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_dirs() {
        use herd_contract::{esp, BootEntry, Slot, Tries};
        let uki = BootEntry::fresh("herd", Slot::A, 2).with_tries(Some(Tries { left: 2, done: 1 }));
        // As systemd-boot writes LoaderBootCountPath: `\EFI\...\herd-a+2-1.efi`.
        let loader_path = format!("\\{}", uki.path().replace('/', "\\"));
        assert_eq!(boot_count_dir(&loader_path), esp::UKI_DIR);
        assert_eq!(
            boot_count_dir("\\loader\\entries\\herd-a+2-1.conf"),
            "loader/entries"
        );
        assert_eq!(
            blessed_name("herd-b+2-1.efi").as_deref(),
            Some("herd-b.efi")
        );
    }
}
