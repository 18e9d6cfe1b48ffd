//! First boot on a disk bigger than the image: move the backup GPT to the
//! end, extend STATE (the last partition, marked grow-fs) to fill the disk,
//! tell the kernel (BLKPG_RESIZE_PARTITION), and after mounting resize ext4
//! online (EXT4_IOC_RESIZE_FS).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};

use std::ffi::{c_int, c_void};

use herd_gpt::{attrs, Table};
use rustix::ioctl::{ioctl, opcode, Opcode, Setter, Updater};

use crate::sys;
use herd_init::disks::Part;

/// `BLKPG` is `_IO(0x12, 105)` although it takes a pointer to a
/// `struct blkpg_ioctl_arg`.
const BLKPG: Opcode = opcode::none(0x12, 105);
const BLKPG_RESIZE_PARTITION: c_int = 3;
/// `_IOW('f', 16, __u64)`: the new size in file system blocks.
const EXT4_IOC_RESIZE_FS: Opcode = opcode::write::<u64>(b'f', 16);

/// `struct blkpg_partition` (linux/blkpg.h).
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` (linux/blkpg.h).
#[repr(C)]
struct BlkpgIoctlArg {
    op: c_int,
    flags: c_int,
    datalen: c_int,
    data: *mut c_void,
}

const _: () = assert!(std::mem::size_of::<BlkpgPartition>() == 152);
const _: () = assert!(std::mem::size_of::<BlkpgIoctlArg>() == 24);

/// Grows `part` to the end of its disk when the disk has room and the
/// partition asks for it (grow-fs attribute). Returns (old, new) bytes.
pub fn grow_partition(part: &Part) -> Result<Option<(u64, u64)>, String> {
    if part.entry.attributes & attrs::GROWFS == 0 {
        return Ok(None);
    }
    let dev = format!("/dev/{}", part.disk);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .map_err(|e| format!("opening {dev}: {e}"))?;
    let mut t =
        Table::read_from(&mut f, 512).map_err(|e| format!("reading the GPT of {dev}: {e}"))?;
    let Some(i) = t
        .partitions
        .iter()
        .position(|p| p.part_guid == part.entry.part_guid)
    else {
        return Ok(None);
    };
    let old = t.partition_offset(i).1;
    match t.extend_last_partition() {
        Some((j, true)) if j == i => {}
        _ => return Ok(None),
    }
    let (start, new) = t.partition_offset(i);
    // Backup (at the disk's new end) first and flushed, then the primary:
    // a power cut leaves the old table or the grown one, never neither.
    t.write_durably(&mut f)
        .map_err(|e| format!("writing the grown GPT to {dev}: {e}"))?;
    let mut p = BlkpgPartition {
        start: start as i64,
        length: new as i64,
        pno: part.entry.number as c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as c_int,
        data: (&mut p as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG on a whole-disk block device takes a pointer to a
    // blkpg_ioctl_arg; `arg` is one (repr(C), layout as linux/blkpg.h) whose
    // data points to `p`, a blkpg_partition that outlives the call, and
    // datalen is its size.
    unsafe { ioctl(&f, Updater::<BLKPG, BlkpgIoctlArg>::new(&mut arg)) }
        .map_err(std::io::Error::from)
        .map_err(|e| format!("telling the kernel {} grew: {e}", part.dev))?;
    let _ = f.seek(SeekFrom::Start(0));
    Ok(Some((old, new)))
}

/// Resizes the ext4 file system mounted at `mnt` to `bytes`.
pub fn resize_ext4(mnt: &str, bytes: u64) -> Result<(), String> {
    let bsize = sys::block_size(mnt).map_err(|e| format!("statvfs {mnt}: {e}"))?;
    let blocks: u64 = bytes / bsize;
    let dir = std::fs::File::open(mnt).map_err(|e| format!("opening {mnt}: {e}"))?;
    // SAFETY: EXT4_IOC_RESIZE_FS on a directory of a mounted ext4 takes a
    // pointer to a u64 block count, which Setter passes (to its own copy,
    // alive during the call).
    unsafe { ioctl(&dir, Setter::<EXT4_IOC_RESIZE_FS, u64>::new(blocks)) }
        .map_err(std::io::Error::from)
        .map_err(|e| format!("resizing ext4 on {mnt}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_are_the_kernel_headers_values() {
        // linux/fs.h BLKPG and fs/ext4/ext4.h EXT4_IOC_RESIZE_FS on x86-64.
        assert_eq!(BLKPG, 0x1269);
        assert_eq!(EXT4_IOC_RESIZE_FS, 0x4008_6610);
    }
}
