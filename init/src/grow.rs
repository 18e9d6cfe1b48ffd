//! First boot on a disk bigger than the image: move the backup GPT to the
//! end, extend STATE (the last partition, marked grow-fs) to fill the disk,
//! tell the kernel (BLKPG_RESIZE_PARTITION), and after mounting resize ext4
//! online (EXT4_IOC_RESIZE_FS).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};

use herd_gpt::{attrs, Table};

use crate::sys;
use herd_init::disks::Part;

const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

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
        pno: part.entry.number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut p as *mut BlkpgPartition).cast(),
    };
    // SAFETY: arg points to a blkpg_ioctl_arg whose data is a live blkpg_partition.
    unsafe { sys::ioctl_ptr(&f, BLKPG, &mut arg) }
        .map_err(|e| format!("telling the kernel {} grew: {e}", part.dev))?;
    let _ = f.seek(SeekFrom::Start(0));
    Ok(Some((old, new)))
}

/// Resizes the ext4 file system mounted at `mnt` to `bytes`.
pub fn resize_ext4(mnt: &str, bytes: u64) -> Result<(), String> {
    let bsize = sys::block_size(mnt).map_err(|e| format!("statvfs {mnt}: {e}"))?;
    let mut blocks: u64 = bytes / bsize;
    let dir = std::fs::File::open(mnt).map_err(|e| format!("opening {mnt}: {e}"))?;
    // SAFETY: EXT4_IOC_RESIZE_FS takes a pointer to a u64 block count.
    unsafe { sys::ioctl_ptr(&dir, EXT4_IOC_RESIZE_FS, &mut blocks) }
        .map_err(|e| format!("resizing ext4 on {mnt}: {e}"))?;
    Ok(())
}
