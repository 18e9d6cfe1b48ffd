//! Just enough ELF reading to tell whether a binary is statically linked:
//! herd-init runs as `/init` in an initramfs that has no dynamic loader.

/// True if `data` is an ELF64 file without a `PT_INTERP` program header
/// (no dynamic loader requested). `None` if it is not an ELF64 file at all.
pub fn is_static_elf64(data: &[u8]) -> Option<bool> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let o = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = data.get(o..o + 4)?;
        if u32::from_le_bytes(p_type.try_into().ok()?) == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_shell_is_dynamic_and_garbage_is_not_elf() {
        let sh = std::fs::read("/bin/sh").expect("/bin/sh");
        assert_eq!(is_static_elf64(&sh), Some(false));
        assert_eq!(is_static_elf64(b"#!/bin/sh\necho hi\n"), None);
    }

    #[test]
    fn static_binary_is_static() {
        // busybox-static is installed by the test set-up (README, .ci/run).
        let bb =
            std::fs::read("/bin/busybox").expect("/bin/busybox: apt-get install busybox-static");
        assert_eq!(is_static_elf64(&bb), Some(true));
    }
}
