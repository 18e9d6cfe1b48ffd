//! What goes on the EFI system partition: systemd-boot, its `loader.conf`,
//! and slot A's Unified Kernel Image (systemd-stub with the kernel, the
//! initramfs, the command line and os-release) in [`esp::UKI_DIR`], named
//! with systemd-boot's boot counting ([`BootEntry::fresh`]). The names and
//! paths are the node's contract ([`herd_contract`]).

use herd_contract::{esp, BootEntry};
use herd_fstree::Tree;

pub use herd_contract::cmdline::slot_cmdline;
pub use herd_contract::Slot;

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
        t.insert_file(esp::BOOT_EFI, self.systemd_boot, 0o644)?;
        t.insert_file(
            esp::LOADER_CONF,
            esp::loader_conf(self.image, self.timeout).into_bytes(),
            0o644,
        )?;
        t.insert_file(
            &BootEntry::fresh(self.image, Slot::A, self.tries).path(),
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
    fn a_fresh_esp_boots_slot_a_with_its_tries() {
        let c = EspContent {
            image: "herd",
            systemd_boot: b"sd-boot",
            uki_a: b"uki",
            tries: 3,
            timeout: 0,
        };
        let t = c.tree().unwrap();
        let entry = BootEntry::parse(&format!(
            "herd-a+3-0{}",
            herd_contract::EntryKind::Uki.ext()
        ))
        .unwrap();
        assert_eq!(entry, BootEntry::fresh("herd", Slot::A, 3));
        assert!(t
            .get(&format!("{}/{}", esp::UKI_DIR, entry.file_name()))
            .is_some());
        assert!(t.get(esp::BOOT_EFI).is_some());
        assert!(t.get(esp::LOADER_CONF).is_some());
        assert!(esp::loader_conf("herd", 0).contains("default herd-*\n"));
    }
}
