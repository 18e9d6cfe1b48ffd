//! What goes on the EFI system partition: systemd-boot, its `loader.conf`, and
//! per slot a kernel, an initramfs and a Boot Loader Specification entry with
//! systemd-boot's boot counting (`herd-a+3-0.conf`).

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
}

/// ESP paths of one slot's boot files (FAT paths, without the leading '/').
pub struct SlotFiles {
    pub kernel: String,
    pub initrd: String,
}

impl SlotFiles {
    pub fn of(image: &str, slot: Slot) -> Self {
        let s = slot.name();
        Self {
            kernel: format!("EFI/{image}/{s}/linux"),
            initrd: format!("EFI/{image}/{s}/initrd"),
        }
    }
}

/// The entry's file name with a fresh tries counter: `herd-a+3-0.conf`.
pub fn entry_file_name(image: &str, slot: Slot, tries: u32) -> String {
    format!("{image}-{}+{tries}-0.conf", slot.name())
}

/// `loader/loader.conf`: no menu unless asked, the newest herd entry first.
pub fn loader_conf(image: &str, timeout: u32) -> String {
    format!("timeout {timeout}\ndefault {image}-*\neditor no\nconsole-mode keep\n")
}

/// The text of a Boot Loader Specification type #1 entry.
pub fn entry_conf(image: &str, version: &str, slot: Slot, cmdline: &str) -> String {
    let files = SlotFiles::of(image, slot);
    format!(
        "title {image} {version} (slot {s})\nversion {version}\nsort-key {image}\nlinux /{k}\ninitrd /{i}\noptions {cmdline}\n",
        s = slot.name(),
        k = files.kernel,
        i = files.initrd,
    )
}

/// Everything the ESP holds for a fresh disk: systemd-boot as the removable
/// media boot path, loader.conf, and slot A's files and entry.
pub struct EspContent<'a> {
    pub image: &'a str,
    pub version: &'a str,
    pub systemd_boot: &'a [u8],
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    pub cmdline: &'a str,
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
        let files = SlotFiles::of(self.image, Slot::A);
        t.insert_file(&files.kernel, self.kernel, 0o644)?;
        t.insert_file(&files.initrd, self.initrd, 0o644)?;
        t.insert_file(
            &format!(
                "loader/entries/{}",
                entry_file_name(self.image, Slot::A, self.tries)
            ),
            entry_conf(self.image, self.version, Slot::A, self.cmdline).into_bytes(),
            0o644,
        )?;
        // Slot B gets its directory now so an update only adds files.
        t.mkdir_p(&format!("EFI/{}/b", self.image))?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_and_text() {
        assert_eq!(entry_file_name("herd", Slot::A, 3), "herd-a+3-0.conf");
        let e = entry_conf("herd", "1.2", Slot::B, "usrhash=ab herd.slot=b");
        assert!(e.contains("linux /EFI/herd/b/linux\n"));
        assert!(e.contains("initrd /EFI/herd/b/initrd\n"));
        assert!(e.ends_with("options usrhash=ab herd.slot=b\n"));
        assert!(loader_conf("herd", 0).contains("default herd-*\n"));
    }
}
