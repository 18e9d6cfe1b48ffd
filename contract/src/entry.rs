//! Boot entry file names with systemd-boot's boot counting
//! (`herd-a+3-0.efi`): the builder writes them, systemd-boot counts the
//! tries down in the name, herd-init blesses a good boot by dropping the
//! counter, and the updater installs, settles and rolls back by them.

use crate::{esp, Slot};

/// Which kind of Boot Loader Specification entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    /// Type #1: a `.conf` file in `loader/entries`.
    Conf,
    /// Type #2: a Unified Kernel Image in `EFI/Linux`.
    Uki,
}

impl EntryKind {
    /// The directory on the ESP.
    pub fn dir(self) -> &'static str {
        match self {
            EntryKind::Conf => esp::ENTRIES_DIR,
            EntryKind::Uki => esp::UKI_DIR,
        }
    }

    /// `.conf` or `.efi`.
    pub fn ext(self) -> &'static str {
        match self {
            EntryKind::Conf => ".conf",
            EntryKind::Uki => ".efi",
        }
    }

    /// The kind a file name's extension says (in any case), and the name
    /// without it.
    fn split(name: &str) -> Option<(EntryKind, &str)> {
        [EntryKind::Conf, EntryKind::Uki].into_iter().find_map(|k| {
            let ext = k.ext();
            let cut = name.len().checked_sub(ext.len())?;
            (cut > 0 && name.is_char_boundary(cut) && name[cut..].eq_ignore_ascii_case(ext))
                .then(|| (k, &name[..cut]))
        })
    }
}

/// systemd-boot's counter: tries left and tries done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tries {
    /// Boots left before the loader passes the entry over.
    pub left: u32,
    /// Boots counted so far.
    pub done: u32,
}

/// Splits any counted entry file name (`X+2-1.conf`, `X+3.efi`) into the
/// name without counter and extension, the counter, and the extension as
/// written. `None` when the name carries no counter.
pub fn split_counter(name: &str) -> Option<(&str, Tries, &str)> {
    let (_, stem) = EntryKind::split(name)?;
    let (base, counter) = stem.rsplit_once('+')?;
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (number(l)?, number(d)?),
        None => (number(counter)?, 0),
    };
    Some((base, Tries { left, done }, &name[stem.len()..]))
}

/// Digits only (no sign, no spaces), as systemd-boot writes them.
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The blessed name of a counted entry: `herd-a+2-1.efi` → `herd-a.efi`.
/// `None` when the name carries no counter.
pub fn blessed_name(name: &str) -> Option<String> {
    split_counter(name).map(|(base, _, ext)| format!("{base}{ext}"))
}

/// A herd boot entry: `<image>-<slot>[+<left>-<done>].<efi|conf>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BootEntry {
    /// The image name (os-release `IMAGE_ID`).
    pub image: String,
    /// The slot the entry boots.
    pub slot: Slot,
    /// The counter; `None` for a blessed entry.
    pub tries: Option<Tries>,
    /// UKI or `.conf`.
    pub kind: EntryKind,
}

impl BootEntry {
    /// A slot's UKI as installed, with `tries` boots to prove itself.
    pub fn fresh(image: &str, slot: Slot, tries: u32) -> BootEntry {
        BootEntry {
            image: image.to_string(),
            slot,
            tries: Some(Tries {
                left: tries,
                done: 0,
            }),
            kind: EntryKind::Uki,
        }
    }

    /// Reads a file name; `None` when it is not a herd slot entry.
    pub fn parse(name: &str) -> Option<BootEntry> {
        let (kind, stem) = EntryKind::split(name)?;
        let (base, tries) = match split_counter(name) {
            Some((base, tries, _)) => (base, Some(tries)),
            None if !stem.contains('+') => (stem, None),
            None => return None,
        };
        let (image, slot) = base.rsplit_once('-')?;
        if image.is_empty() {
            return None;
        }
        Some(BootEntry {
            image: image.to_string(),
            slot: Slot::parse(slot)?,
            tries,
            kind,
        })
    }

    /// `herd-a`: the name without counter and extension.
    pub fn base(&self) -> String {
        format!("{}-{}", self.image, self.slot)
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        match self.tries {
            Some(t) => format!("{}+{}-{}{}", self.base(), t.left, t.done, self.kind.ext()),
            None => format!("{}{}", self.base(), self.kind.ext()),
        }
    }

    /// The path on the ESP (`EFI/Linux/herd-a+3-0.efi`).
    pub fn path(&self) -> String {
        format!("{}/{}", self.kind.dir(), self.file_name())
    }

    /// Blessed: herd-init found a boot of it good.
    pub fn is_blessed(&self) -> bool {
        self.tries.is_none()
    }

    /// Counted down to zero: the loader passes it over.
    pub fn out_of_tries(&self) -> bool {
        self.tries.is_some_and(|t| t.left == 0)
    }

    /// The same entry with a new counter (`None`: blessed).
    pub fn with_tries(&self, tries: Option<Tries>) -> BootEntry {
        BootEntry {
            tries,
            ..self.clone()
        }
    }

    /// Whether it boots `slot` of `image`.
    pub fn boots(&self, image: &str, slot: Slot) -> bool {
        self.image == image && self.slot == slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_format_and_parse() {
        let e = BootEntry::fresh("herd", Slot::B, 3);
        assert_eq!(e.file_name(), "herd-b+3-0.efi");
        assert_eq!(e.path(), "EFI/Linux/herd-b+3-0.efi");
        assert_eq!(BootEntry::parse("herd-b+3-0.efi"), Some(e.clone()));
        let counted = BootEntry::parse("my-os-a+1-2.conf").unwrap();
        assert_eq!(
            (counted.image.as_str(), counted.slot, counted.kind),
            ("my-os", Slot::A, EntryKind::Conf)
        );
        assert_eq!(counted.tries, Some(Tries { left: 1, done: 2 }));
        assert_eq!(counted.with_tries(None).file_name(), "my-os-a.conf");
        let blessed = BootEntry::parse("herd-a.EFI").unwrap();
        assert!(blessed.is_blessed() && blessed.boots("herd", Slot::A));
        assert!(BootEntry::parse("herd-b+0-3.efi").unwrap().out_of_tries());
        assert_eq!(
            BootEntry::parse("herd-b+2.efi").unwrap().tries,
            Some(Tries { left: 2, done: 0 })
        );
    }

    #[test]
    fn other_files_are_not_slot_entries() {
        for name in [
            "herd-c.efi",
            "herd.efi",
            "-a.efi",
            "herd-a.new",
            "herd-a+x-1.efi",
            "herd-a+-1-0.efi",
            "herd-a+1-0+2.efi",
            "herd-ab.efi",
            ".efi",
            "herd-a+1-2",
        ] {
            assert_eq!(BootEntry::parse(name), None, "{name}");
        }
        // An image whose name looks like a slot prefix of another's.
        let e = BootEntry::parse("herd-bx-a.efi").unwrap();
        assert!(!e.boots("herd", Slot::B) && e.boots("herd-bx", Slot::A));
    }

    #[test]
    fn any_counted_name_blesses() {
        assert_eq!(
            blessed_name("herd-b+2-1.efi").as_deref(),
            Some("herd-b.efi")
        );
        assert_eq!(
            blessed_name("debian+1.conf").as_deref(),
            Some("debian.conf")
        );
        assert_eq!(blessed_name("herd-b.efi"), None);
    }
}
