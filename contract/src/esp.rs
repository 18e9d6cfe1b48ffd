//! Paths on the EFI system partition, relative to its root.

/// Boot Loader Specification type #2 entries: Unified Kernel Images.
pub const UKI_DIR: &str = "EFI/Linux";
/// Boot Loader Specification type #1 entries.
pub const ENTRIES_DIR: &str = "loader/entries";
/// systemd-boot's configuration.
pub const LOADER_CONF: &str = "loader/loader.conf";
/// The removable-media boot path firmware starts (systemd-boot).
pub const BOOT_EFI: &str = "EFI/BOOT/BOOTX64.EFI";

/// `loader/loader.conf`: no menu unless asked, the image's newest entry
/// first (systemd-boot sorts entries with tries left and newer versions
/// first; `default` picks the first that matches).
pub fn loader_conf(image: &str, timeout: u32) -> String {
    format!("timeout {timeout}\ndefault {image}-*\neditor no\nconsole-mode keep\n")
}
