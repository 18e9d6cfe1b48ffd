//! What the boot loader says it saw this boot, for log lines that explain
//! a slot choice: systemd-boot exports the entries it found
//! (`LoaderEntries`) and the one it booted (`LoaderEntrySelected`) as EFI
//! variables.

use herd_node::efivar::{decode_efivar_utf16, decode_efivar_utf16_list, LOADER_GUID};

const EFIVARS: &str = "/sys/firmware/efi/efivars";

fn raw(name: &str) -> Option<Vec<u8>> {
    std::fs::read(format!("{EFIVARS}/{name}-{LOADER_GUID}")).ok()
}

/// "the loader saw X, Y and booted X", or why that is not known.
pub fn seen() -> String {
    describe(
        raw("LoaderEntries")
            .as_deref()
            .and_then(decode_efivar_utf16_list),
        raw("LoaderEntrySelected")
            .as_deref()
            .and_then(decode_efivar_utf16),
    )
}

fn describe(entries: Option<Vec<String>>, selected: Option<String>) -> String {
    let entries = entries.map_or("(not exported)".to_string(), |v| {
        if v.is_empty() {
            "no entries".to_string()
        } else {
            v.join(", ")
        }
    });
    format!(
        "the boot loader saw {entries} and booted {}",
        selected.as_deref().unwrap_or("(not exported)")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_the_loader_saw() {
        assert_eq!(
            describe(
                Some(vec!["herd-b.efi".into(), "herd-a.efi".into()]),
                Some("herd-a.efi".into())
            ),
            "the boot loader saw herd-b.efi, herd-a.efi and booted herd-a.efi"
        );
        assert_eq!(
            describe(None, None),
            "the boot loader saw (not exported) and booted (not exported)"
        );
    }
}
