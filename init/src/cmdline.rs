//! The kernel command line: what herd-init needs from it.

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
            if let Some(v) = word.strip_prefix("usrhash=") {
                c.usrhash = Some(v.to_ascii_lowercase());
            } else if let Some(v) = word.strip_prefix("mount.usr=") {
                let v = v.strip_prefix("PARTUUID=").unwrap_or(v);
                c.usr_partuuid = Some(v.to_ascii_lowercase());
            } else if let Some(v) = word.strip_prefix("herd.slot=") {
                c.slot = Some(v.to_string());
            } else if word == "herd.debug" {
                c.debug = true;
            }
        }
        c
    }

    /// The root hash as bytes, checked.
    pub fn root_hash(&self) -> Result<[u8; 32], String> {
        let h = self
            .usrhash
            .as_deref()
            .ok_or("no usrhash= on the kernel command line")?;
        let mut out = [0u8; 32];
        if h.len() != 64 {
            return Err(format!("usrhash={h} is not 64 hex digits"));
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&h[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("usrhash={h} is not hex"))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
