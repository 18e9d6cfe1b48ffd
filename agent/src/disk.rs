//! The whole disk a directory lives on, as (major, minor): cgroup v2's
//! io.max takes whole disks, not partitions, and herd's I/O limits apply to
//! the disk holding the node's state.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The disk under `path`, or None when it is not on a block device (a
/// tmpfs, an overlay) or sysfs does not know it.
pub fn whole_disk_of(path: &Path) -> Option<(u64, u64)> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (
        u64::from(rustix::fs::major(dev)),
        u64::from(rustix::fs::minor(dev)),
    );
    if major == 0 {
        return None;
    }
    whole_disk_in(Path::new("/sys/dev/block"), major, minor)
}

/// The disk of block device `major:minor` as `sys_dev_block`
/// (`/sys/dev/block`) describes it: a partition's parent directory is its disk.
fn whole_disk_in(sys_dev_block: &Path, major: u64, minor: u64) -> Option<(u64, u64)> {
    let dev = sys_dev_block.join(format!("{major}:{minor}"));
    if !dev.join("partition").exists() {
        return dev.exists().then_some((major, minor));
    }
    let parent = dev.canonicalize().ok()?.parent()?.join("dev");
    let text = std::fs::read_to_string(parent).ok()?;
    let (ma, mi) = text.trim().split_once(':')?;
    Some((ma.parse().ok()?, mi.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_resolves_to_its_disk() {
        let t = tempfile::tempdir().unwrap();
        let devices = t.path().join("devices/virtio0/block/vda");
        std::fs::create_dir_all(devices.join("vda3")).unwrap();
        std::fs::write(devices.join("dev"), "254:0\n").unwrap();
        std::fs::write(devices.join("vda3/dev"), "254:3\n").unwrap();
        std::fs::write(devices.join("vda3/partition"), "3\n").unwrap();
        let links = t.path().join("dev/block");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(&devices, links.join("254:0")).unwrap();
        std::os::unix::fs::symlink(devices.join("vda3"), links.join("254:3")).unwrap();
        assert_eq!(whole_disk_in(&links, 254, 3), Some((254, 0)));
        assert_eq!(whole_disk_in(&links, 254, 0), Some((254, 0)));
        assert_eq!(whole_disk_in(&links, 8, 1), None);
    }

    #[test]
    fn a_tmpfs_has_no_disk() {
        assert_eq!(whole_disk_of(Path::new("/proc")), None);
    }
}
