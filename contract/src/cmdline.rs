//! The kernel command-line words herd writes into a slot's UKI and
//! herd-init and the updater read back, and the parser that reads them.

use crate::Slot;

/// `usrhash=<64 hex>`: the dm-verity root hash of the slot's /usr.
pub const USRHASH: &str = "usrhash";
/// `mount.usr=PARTUUID=<uuid>`: the slot's /usr partition.
pub const MOUNT_USR: &str = "mount.usr";
/// `herd.slot=a|b`: the slot this UKI boots.
pub const SLOT: &str = "herd.slot";
/// `herd.debug`: herd-init logs more.
pub const DEBUG: &str = "herd.debug";

/// The words herd writes itself (`usrhash=`, `mount.usr=`, `herd.slot=`):
/// an image description may not set them, and a release's extra command
/// line is what is left after them.
pub fn is_herd_word(word: &str) -> bool {
    [USRHASH, MOUNT_USR, SLOT].iter().any(|k| {
        word.strip_prefix(k)
            .is_some_and(|rest| rest.starts_with('='))
    })
}

/// A slot's command line: herd's words (the verity root hash, the /usr
/// partition, the slot), then the image description's.
pub fn slot_cmdline(usrhash: &str, usr_uuid: &str, slot: Slot, extra: &[String]) -> String {
    let mut words = vec![
        format!("{USRHASH}={usrhash}"),
        format!("{MOUNT_USR}=PARTUUID={usr_uuid}"),
        format!("{SLOT}={slot}"),
    ];
    words.extend(extra.iter().cloned());
    words.join(" ")
}

/// Parsed herd parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `usrhash=`: the dm-verity root hash of /usr, 64 hex digits.
    pub usrhash: Option<String>,
    /// `mount.usr=PARTUUID=...`: the /usr data partition, lower case.
    pub usr_partuuid: Option<String>,
    /// `herd.slot=`: a or b.
    pub slot: Option<String>,
    /// `herd.debug`: more logging.
    pub debug: bool,
}

impl Cmdline {
    /// Parses `/proc/cmdline` text.
    pub fn parse(text: &str) -> Cmdline {
        let mut c = Cmdline::default();
        for word in text.split_ascii_whitespace() {
            if let Some(v) = word.strip_prefix(USRHASH).and_then(|w| w.strip_prefix('=')) {
                c.usrhash = Some(v.to_ascii_lowercase());
            } else if let Some(v) = word
                .strip_prefix(MOUNT_USR)
                .and_then(|w| w.strip_prefix('='))
            {
                let v = v.strip_prefix("PARTUUID=").unwrap_or(v);
                c.usr_partuuid = Some(v.to_ascii_lowercase());
            } else if let Some(v) = word.strip_prefix(SLOT).and_then(|w| w.strip_prefix('=')) {
                c.slot = Some(v.to_string());
            } else if word == DEBUG {
                c.debug = true;
            }
        }
        c
    }

    /// The root hash as bytes, checked: exactly 64 ASCII hex digits (either
    /// case; `parse` lowered them). Anything else, including a non-ASCII
    /// value, is an error naming the value, never a panic.
    pub fn root_hash(&self) -> Result<[u8; 32], String> {
        let h = self
            .usrhash
            .as_deref()
            .ok_or("no usrhash= on the kernel command line")?;
        let b = h.as_bytes();
        if b.len() != 64 || !b.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "usrhash={} is not 64 hex digits (the dm-verity root hash of /usr): the boot entry is broken",
                h.escape_debug()
            ));
        }
        let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            *o = digit(pair[0]) << 4 | digit(pair[1]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herd_words_come_first() {
        assert_eq!(
            slot_cmdline("ab", "u-u", Slot::B, &["quiet".into()]),
            "usrhash=ab mount.usr=PARTUUID=u-u herd.slot=b quiet"
        );
    }

    #[test]
    fn parses_herd_words() {
        let h = "ab".repeat(32);
        let c = Cmdline::parse(&format!(
            "BOOT_IMAGE=x usrhash={h} mount.usr=PARTUUID=ABCDEF01-0000-4000-8000-000000000000 herd.slot=b console=ttyS0 herd.debug\n"
        ));
        assert_eq!(c.usrhash.as_deref(), Some(h.as_str()));
        assert_eq!(
            c.usr_partuuid.as_deref(),
            Some("abcdef01-0000-4000-8000-000000000000")
        );
        assert_eq!(c.slot.as_deref(), Some("b"));
        assert!(c.debug);
        assert_eq!(c.root_hash().unwrap()[0], 0xab);
        assert!(Cmdline::parse("usrhash=12").root_hash().is_err());
        assert!(Cmdline::parse("").root_hash().is_err());
    }

    #[test]
    fn usrhash_is_exactly_64_hex_digits() {
        let upper = "AB".repeat(32);
        let h = Cmdline::parse(&format!("usrhash={upper}"))
            .root_hash()
            .unwrap();
        assert_eq!(h, [0xab; 32], "upper case is read as hex");
        let mixed = format!("{}{}", "0f".repeat(31), "F0");
        assert_eq!(
            Cmdline::parse(&format!("usrhash={mixed}"))
                .root_hash()
                .unwrap()[31],
            0xf0
        );
        // 64 bytes, but multi-byte characters: a slice at byte 2*i would
        // cut one in half and panic.
        let non_ascii = format!("{}é{}", "a".repeat(30), "b".repeat(32));
        assert_eq!(non_ascii.len(), 64);
        let e = Cmdline::parse(&format!("usrhash={non_ascii}"))
            .root_hash()
            .unwrap_err();
        assert!(e.contains("is not 64 hex digits"), "{e}");
        for bad in [
            "a".repeat(63),
            "a".repeat(65),
            "a".repeat(128),
            format!("{}g", "a".repeat(63)),
            format!("+{}", "a".repeat(63)),
            format!("{} ", "a".repeat(63)),
            "é".repeat(32),
        ] {
            let e = Cmdline {
                usrhash: Some(bad.clone()),
                ..Cmdline::default()
            }
            .root_hash()
            .unwrap_err();
            assert!(e.contains("is not 64 hex digits"), "{bad}: {e}");
        }
    }
}
