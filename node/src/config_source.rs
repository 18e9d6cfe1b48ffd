//! Where a node finds its configuration: QEMU's fw_cfg, or a file system
//! labelled `CONFIG` (FAT, ISO 9660 or ext4) holding `herd.toml`; and the
//! record on STATE that provisioning is closed, after which neither is read.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The fw_cfg item name (`-fw_cfg name=opt/herd/config,file=FILE`).
pub const FW_CFG_NAME: &str = "opt/herd/config";
/// Where the kernel's qemu_fw_cfg driver shows that item.
pub const FW_CFG_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/herd/config/raw";
/// The file system label looked for.
pub const LABEL: &str = "CONFIG";
/// The file read from that file system.
pub const FILE: &str = "herd.toml";

/// The record that provisioning is closed, relative to the node root (on
/// STATE). herd-init writes it when the first boot with provisioning
/// reaches `ready`, whatever came of it; once it exists, fw_cfg and CONFIG
/// disks are never read again.
pub const CLOSED: &str = herd_contract::paths::PROVISIONING_CLOSED;

/// How an operator provisions a closed node again, for the console line.
pub const REOPEN: &str = "to provision this node again, re-flash its disk, or remove \
    /var/lib/herd/provisioning-closed and /var/lib/herd/provisioned from its STATE partition \
    with the disk attached to another machine (docs/PROVISIONING.md)";

/// What came of the boot that closed provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A configuration was applied.
    Applied,
    /// A configuration was found and refused (or could not be read).
    Refused,
    /// herd-provision failed, or was stopped.
    Failed,
    /// No configuration was attached.
    NoneFound,
}

impl Outcome {
    /// The word in the record and on the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::NoneFound => "none-found",
        }
    }
}

/// The outcome word of the closing record under `root`, if provisioning is
/// closed (`?` when the record is there but says none).
pub fn closed(root: &Path) -> Option<String> {
    let text = fs::read_to_string(root.join(CLOSED)).ok()?;
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix("outcome="))
            .map(|o| o.trim().to_string())
            .unwrap_or_else(|| "?".into()),
    )
}

/// Writes the closing record under `root` durably: a temporary file,
/// synced, renamed into place, and the directory synced.
pub fn close(root: &Path, outcome: Outcome) -> std::io::Result<()> {
    use std::io::Write;
    let path = root.join(CLOSED);
    let dir = path.parent().unwrap_or(root);
    fs::create_dir_all(dir)?;
    let tmp = dir.join(".provisioning-closed.new");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(format!("outcome={}\n", outcome.as_str()).as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    fs::File::open(dir)?.sync_all()
}

/// A file system type the node can mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    /// FAT12/16/32 (`mkfs.vfat -n CONFIG`).
    Vfat,
    /// ISO 9660 (`genisoimage -V CONFIG`, `xorriso`).
    Iso9660,
    /// ext2/3/4 (`mkfs.ext4 -L CONFIG`).
    Ext4,
}

impl FsType {
    /// The name mount(2) takes.
    pub fn mount_name(self) -> &'static str {
        match self {
            FsType::Vfat => "vfat",
            FsType::Iso9660 => "iso9660",
            FsType::Ext4 => "ext4",
        }
    }
}

/// Bytes of a device's start that [`probe`] needs.
pub const PROBE_BYTES: usize = 32768 + 2048;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// The file system type and label found at the start of a device.
pub fn probe(head: &[u8]) -> Option<(FsType, String)> {
    // ISO 9660: primary volume descriptor at 32 KiB.
    if head.len() >= 32768 + 72 && &head[32769..32774] == b"CD001" && head[32768] == 1 {
        return Some((FsType::Iso9660, text(&head[32808..32840])));
    }
    // ext2/3/4: superblock at 1 KiB, magic 0xEF53.
    if head.len() >= 1024 + 136 && head[1024 + 56..1024 + 58] == [0x53, 0xef] {
        return Some((FsType::Ext4, text(&head[1024 + 120..1024 + 136])));
    }
    // FAT: boot sector signature and the file system type string.
    if head.len() >= 512 && head[510..512] == [0x55, 0xaa] {
        if &head[82..87] == b"FAT32" {
            return Some((FsType::Vfat, text(&head[71..82])));
        }
        if &head[54..57] == b"FAT" && head[38] == 0x29 {
            return Some((FsType::Vfat, text(&head[43..54])));
        }
    }
    None
}

/// Block devices (whole disks and partitions) that may carry a CONFIG file
/// system, as `/dev/NAME`.
pub fn block_devices(sys_block: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(sys_block)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    !["loop", "ram", "dm-", "zram", "md"]
                        .iter()
                        .any(|p| n.starts_with(p))
                })
                .map(|n| Path::new("/dev").join(n))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The first device whose file system is labelled CONFIG (any case).
pub fn find_labelled(devices: &[PathBuf]) -> Option<(PathBuf, FsType)> {
    for d in devices {
        let mut head = vec![0u8; PROBE_BYTES];
        let Ok(mut f) = fs::File::open(d) else {
            continue;
        };
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        if let Some((t, label)) = probe(&head[..n]) {
            if label.eq_ignore_ascii_case(LABEL) {
                return Some((d.clone(), t));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_labels() {
        let mut fat = vec![0u8; 512];
        fat[510] = 0x55;
        fat[511] = 0xaa;
        fat[82..90].copy_from_slice(b"FAT32   ");
        fat[71..82].copy_from_slice(b"CONFIG     ");
        assert_eq!(probe(&fat), Some((FsType::Vfat, "CONFIG".into())));
        let mut fat16 = vec![0u8; 512];
        fat16[510] = 0x55;
        fat16[511] = 0xaa;
        fat16[38] = 0x29;
        fat16[54..62].copy_from_slice(b"FAT16   ");
        fat16[43..54].copy_from_slice(b"config     ");
        assert_eq!(probe(&fat16), Some((FsType::Vfat, "config".into())));
        let mut ext = vec![0u8; 4096];
        ext[1024 + 56] = 0x53;
        ext[1024 + 57] = 0xef;
        ext[1024 + 120..1024 + 126].copy_from_slice(b"CONFIG");
        assert_eq!(probe(&ext), Some((FsType::Ext4, "CONFIG".into())));
        let mut iso = vec![0u8; PROBE_BYTES];
        iso[32768] = 1;
        iso[32769..32774].copy_from_slice(b"CD001");
        iso[32808..32840].copy_from_slice(b"CONFIG                          ");
        assert_eq!(probe(&iso), Some((FsType::Iso9660, "CONFIG".into())));
        assert_eq!(probe(&[0u8; 100]), None);
    }

    #[test]
    fn closing_is_recorded_and_read_back() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(closed(root.path()), None);
        close(root.path(), Outcome::Refused).unwrap();
        assert_eq!(closed(root.path()).as_deref(), Some("refused"));
        assert_eq!(
            fs::read_to_string(root.path().join(CLOSED)).unwrap(),
            "outcome=refused\n"
        );
        close(root.path(), Outcome::NoneFound).unwrap();
        assert_eq!(closed(root.path()).as_deref(), Some("none-found"));
        fs::write(root.path().join(CLOSED), "").unwrap();
        assert_eq!(
            closed(root.path()).as_deref(),
            Some("?"),
            "an empty record still closes"
        );
    }

    #[test]
    fn finds_a_real_vfat_image_by_label() {
        // mkfs.vfat (dosfstools) is the independent writer.
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("config.img");
        fs::File::create(&img).unwrap().set_len(4 << 20).unwrap();
        let ok = std::process::Command::new("mkfs.vfat")
            .args(["-n", "CONFIG"])
            .arg(&img)
            .output();
        let Ok(out) = ok else {
            panic!("mkfs.vfat is missing: install dosfstools (scripts/setup.sh does)");
        };
        assert!(out.status.success(), "{out:?}");
        let other = dir.path().join("other.img");
        fs::write(&other, vec![0u8; 8192]).unwrap();
        assert_eq!(
            find_labelled(&[other, img.clone()]),
            Some((img, FsType::Vfat))
        );
    }
}
