//! Just enough ELF64 to read a kernel module's `.modinfo` section.

/// The `.modinfo` section of an ELF64 little-endian object, if any.
pub fn modinfo(elf: &[u8]) -> Option<&[u8]> {
    if elf.len() < 64 || &elf[0..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    if shentsize < 64 {
        return None;
    }
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(h)?,
            u64_at(h + 0x18)? as usize,
            u64_at(h + 0x20)? as usize,
        ))
    };
    let (_, str_off, str_len) = section(shstrndx)?;
    let names = elf.get(str_off..str_off.checked_add(str_len)?)?;
    for i in 0..shnum {
        let (name, off, len) = section(i)?;
        let n = names.get(name as usize..)?;
        let n = &n[..n.iter().position(|&c| c == 0)?];
        if n == b".modinfo" {
            return elf.get(off..off.checked_add(len)?);
        }
    }
    None
}

/// The value of `key=` in a `.modinfo` section.
pub fn modinfo_value<'a>(info: &'a [u8], key: &str) -> Option<&'a str> {
    info.split(|&c| c == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(key)?.strip_prefix('=')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_none() {
        assert!(modinfo(b"not an elf").is_none());
        let mut fake = vec![0u8; 64];
        fake[..6].copy_from_slice(b"\x7fELF\x02\x01");
        fake[0x28] = 0xff;
        fake[0x3a] = 64;
        fake[0x3c] = 3;
        assert!(modinfo(&fake).is_none());
        assert_eq!(
            modinfo_value(b"license=GPL\0depends=a,b\0", "depends"),
            Some("a,b")
        );
    }
}
