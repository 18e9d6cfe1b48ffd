//! The EFI variables systemd-boot leaves for the OS (efivarfs files):
//! `LoaderBootCountPath`, `LoaderEntries`, `LoaderEntrySelected`, ...

/// systemd-boot's vendor GUID for its variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Decodes an efivarfs file (4 attribute bytes + UTF-16LE, maybe NUL
/// terminated) into a string.
pub fn decode_efivar_utf16(raw: &[u8]) -> Option<String> {
    let body = raw.get(4..)?;
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// Decodes an efivarfs file holding a NUL-separated UTF-16LE string list
/// (systemd-boot's `LoaderEntries`).
pub fn decode_efivar_utf16_list(raw: &[u8]) -> Option<Vec<String>> {
    let body = raw.get(4..)?;
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    units
        .split(|&u| u == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf16(s).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efivar_lists() {
        let mut raw = vec![7, 0, 0, 0];
        for s in ["herd-b.efi", "herd-a.efi", ""] {
            raw.extend(s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes));
        }
        assert_eq!(
            decode_efivar_utf16_list(&raw).unwrap(),
            ["herd-b.efi", "herd-a.efi"]
        );
        assert_eq!(decode_efivar_utf16_list(&[1, 2]), None);
    }

    #[test]
    fn efivar() {
        let mut raw = vec![7, 0, 0, 0];
        for u in "\\loader\\entries\\herd-a+2-1.conf".encode_utf16() {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        raw.extend_from_slice(&[0, 0]);
        assert_eq!(
            decode_efivar_utf16(&raw).as_deref(),
            Some("\\loader\\entries\\herd-a+2-1.conf")
        );
        assert_eq!(decode_efivar_utf16(&[1, 2]), None);
    }
}
