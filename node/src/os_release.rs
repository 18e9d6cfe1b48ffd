//! `/usr/lib/os-release`, which the image builder writes: the image's
//! name (`IMAGE_ID`) and version (`IMAGE_VERSION`).

/// The value of `key` in `/usr/lib/os-release` (quotes removed).
pub fn field(key: &str) -> Option<String> {
    parse(&std::fs::read_to_string("/usr/lib/os-release").ok()?, key)
}

/// The value of `key` in os-release text.
pub fn parse(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        Some(
            l.strip_prefix(key)?
                .strip_prefix('=')?
                .trim_matches('"')
                .to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields() {
        let t = "ID=herd\nIMAGE_ID=\"herd\"\nIMAGE_VERSION=0.2.0\n";
        assert_eq!(super::parse(t, "IMAGE_VERSION").as_deref(), Some("0.2.0"));
        assert_eq!(super::parse(t, "IMAGE_ID").as_deref(), Some("herd"));
        assert_eq!(super::parse(t, "ID").as_deref(), Some("herd"));
        assert_eq!(super::parse(t, "VERSION_ID"), None);
    }
}
