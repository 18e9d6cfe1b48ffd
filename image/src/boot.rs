//! What goes on the EFI system partition: systemd-boot, its `loader.conf`,
//! and per slot one Unified Kernel Image (systemd-stub with the kernel, the
//! initramfs, the command line and os-release) in `EFI/Linux/`, named with
//! systemd-boot's boot counting (`herd-a+3-0.efi`).

use herd_fstree::Tree;

/// A USR slot: `a` or `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];
}

/// Where systemd-boot looks for UKIs (Boot Loader Specification type #2).
pub const UKI_DIR: &str = "EFI/Linux";

/// A slot's UKI file name with a fresh tries counter: `herd-a+3-0.efi`.
pub fn uki_file_name(image: &str, slot: Slot, tries: u32) -> String {
    format!("{image}-{}+{tries}-0.efi", slot.name())
}

/// `loader/loader.conf`: no menu unless asked, the newest herd entry first.
pub fn loader_conf(image: &str, timeout: u32) -> String {
    format!("timeout {timeout}\ndefault {image}-*\neditor no\nconsole-mode keep\n")
}

/// A slot's kernel command line: herd's words (the verity root hash, the
/// USR partition, the slot), then the image description's.
pub fn slot_cmdline(usrhash: &str, usr_uuid: &str, slot: Slot, extra: &[String]) -> String {
    let mut words = vec![
        format!("usrhash={usrhash}"),
        format!("mount.usr=PARTUUID={usr_uuid}"),
        format!("herd.slot={}", slot.name()),
    ];
    words.extend(extra.iter().cloned());
    words.join(" ")
}

/// Everything the ESP holds for a fresh disk: systemd-boot as the removable
/// media boot path, loader.conf, and slot A's UKI.
pub struct EspContent<'a> {
    pub image: &'a str,
    pub systemd_boot: &'a [u8],
    pub uki_a: &'a [u8],
    pub tries: u32,
    pub timeout: u32,
}

impl EspContent<'_> {
    pub fn tree(&self) -> Result<Tree, herd_fstree::TreeError> {
        let mut t = Tree::new();
        t.insert_file("EFI/BOOT/BOOTX64.EFI", self.systemd_boot, 0o644)?;
        t.insert_file(
            "loader/loader.conf",
            loader_conf(self.image, self.timeout).into_bytes(),
            0o644,
        )?;
        t.insert_file(
            &format!(
                "{UKI_DIR}/{}",
                uki_file_name(self.image, Slot::A, self.tries)
            ),
            self.uki_a,
            0o644,
        )?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_cmdline() {
        assert_eq!(uki_file_name("herd", Slot::A, 3), "herd-a+3-0.efi");
        assert_eq!(
            slot_cmdline("ab", "u-u", Slot::B, &["console=ttyS0".into()]),
            "usrhash=ab mount.usr=PARTUUID=u-u herd.slot=b console=ttyS0"
        );
        assert!(loader_conf("herd", 0).contains("default herd-*\n"));
    }
}
