//! Boot Loader Specification boot counting: entry file names (type #1
//! `loader/entries/*.conf` and type #2 UKIs `EFI/Linux/*.efi`, counted the
//! same way) and the EFI variables systemd-boot leaves for the OS.

/// systemd-boot's vendor GUID for its variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// A counted entry name split up: `herd-a+2-1.conf` → (`herd-a`, 2, 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// Name without the counter and the extension.
    pub base: String,
    /// The extension: `.conf` or `.efi`.
    pub ext: String,
    /// Tries left.
    pub left: u32,
    /// Tries done.
    pub done: u32,
}

/// Parses an entry or UKI file name; `None` when it carries no counter.
pub fn parse_entry(name: &str) -> Option<Counted> {
    let ext = [".conf", ".efi"]
        .into_iter()
        .find(|e| name.len() > e.len() && name[name.len() - e.len()..].eq_ignore_ascii_case(e))?;
    let stem = &name[..name.len() - ext.len()];
    let (base, counter) = stem.rsplit_once('+')?;
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
        None => (counter.parse().ok()?, 0),
    };
    Some(Counted {
        base: base.to_string(),
        ext: name[stem.len()..].to_string(),
        left,
        done,
    })
}

/// The blessed name of a counted entry: `herd-a+2-1.conf` → `herd-a.conf`,
/// `herd-a+2-1.efi` → `herd-a.efi`.
pub fn blessed_name(name: &str) -> Option<String> {
    parse_entry(name).map(|c| format!("{}{}", c.base, c.ext))
}

/// The directory of the file systemd-boot counts tries on, as a path
/// relative to the ESP root (from `LoaderBootCountPath`,
/// `\EFI\Linux\herd-a+2-1.efi` → `EFI/Linux`).
pub fn boot_count_dir(path: &str) -> String {
    let p = path.replace('\\', "/");
    let p = p.trim_start_matches('/');
    match p.rsplit_once('/') {
        Some((dir, _)) => dir.to_string(),
        None => String::new(),
    }
}

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
    fn entries() {
        assert_eq!(
            parse_entry("herd-a+2-1.conf"),
            Some(Counted {
                base: "herd-a".into(),
                ext: ".conf".into(),
                left: 2,
                done: 1
            })
        );
        assert_eq!(
            blessed_name("herd-b+2-1.efi").as_deref(),
            Some("herd-b.efi")
        );
        assert_eq!(parse_entry("herd-b.efi"), None);
        assert_eq!(boot_count_dir("\\EFI\\Linux\\herd-a+2-1.efi"), "EFI/Linux");
        assert_eq!(
            boot_count_dir("\\loader\\entries\\herd-a+2-1.conf"),
            "loader/entries"
        );
        assert_eq!(
            parse_entry("herd-a+3.conf"),
            Some(Counted {
                base: "herd-a".into(),
                ext: ".conf".into(),
                left: 3,
                done: 0
            })
        );
        assert_eq!(parse_entry("herd-a.conf"), None);
        assert_eq!(
            blessed_name("herd-a+0-3.conf").as_deref(),
            Some("herd-a.conf")
        );
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
