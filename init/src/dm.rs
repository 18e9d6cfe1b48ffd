//! Device-mapper through its ioctls on /dev/mapper/control: create a
//! read-only verity device.

use std::fs::{File, OpenOptions};
use std::io;

use rustix::ioctl::{ioctl, opcode, Opcode, Updater};

/// `struct dm_ioctl` (linux/dm-ioctl.h): the header of every request on
/// /dev/mapper/control, followed by the request's data.
#[repr(C)]
struct DmIoctl {
    version: [u32; 3],
    /// Size of the whole request: this header and the data after it.
    data_size: u32,
    /// Offset of the data from the start of this header.
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    /// The device number, in the kernel's huge encoding (out).
    dev: u64,
    name: [u8; 128],
    uuid: [u8; 129],
    data: [u8; 7],
}

/// `struct dm_target_spec`: one target of a table, its parameters (a NUL
/// terminated string) right after it.
#[repr(C)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    /// Offset of the next target spec from the start of this one.
    next: u32,
    target_type: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);
const _: () = assert!(std::mem::size_of::<DmTargetSpec>() == 40);

/// Room for a target's parameters (a verity table is about 250 bytes).
const PARAMS_MAX: usize = 4096;

/// A request: the header and its data, contiguous as the kernel reads them.
#[repr(C)]
struct Request<T> {
    header: DmIoctl,
    body: T,
}

/// The data of DM_TABLE_LOAD with one target.
#[repr(C)]
struct OneTarget {
    spec: DmTargetSpec,
    params: [u8; PARAMS_MAX],
}

const READONLY: u32 = 1 << 0;

/// `_IOWR(DM_IOCTL, nr, struct dm_ioctl)`: every request names the header's
/// size, whatever data follows it.
const fn iowr(nr: u8) -> Opcode {
    opcode::read_write::<DmIoctl>(0xfd, nr)
}
const DM_VERSION: Opcode = iowr(0);
const DM_DEV_CREATE: Opcode = iowr(3);
const DM_DEV_SUSPEND: Opcode = iowr(6);
const DM_TABLE_LOAD: Opcode = iowr(9);

fn request<T>(name: &str, flags: u32, targets: u32, body: T) -> Request<T> {
    let mut header = DmIoctl {
        version: [4, 0, 0],
        data_size: std::mem::size_of::<Request<T>>() as u32,
        data_start: std::mem::size_of::<DmIoctl>() as u32,
        target_count: targets,
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; 128],
        uuid: [0; 129],
        data: [0; 7],
    };
    let n = name.len().min(header.name.len() - 1);
    header.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    Request { header, body }
}

/// Sends request `OP` (one of the `DM_*` opcodes above) on the control
/// device; the kernel writes its answer into `r`.
fn call<const OP: Opcode, T>(ctl: &File, r: &mut Request<T>) -> io::Result<()> {
    // SAFETY: OP is a device-mapper _IOWR request on /dev/mapper/control,
    // which takes a pointer to a dm_ioctl header followed by its data; `r`
    // is a repr(C) dm_ioctl (layout checked against linux/dm-ioctl.h's 312
    // bytes above) followed by that data, and the header's data_size is the
    // size of all of `r` (request()), so the kernel reads and writes only
    // inside it, and only during the call.
    unsafe { ioctl(ctl, Updater::<OP, Request<T>>::new(r)) }?;
    Ok(())
}

/// Creates `name` as a read-only device-mapper device with one target
/// (`target_type`, `sectors` long, `params`), and resumes it. Returns the
/// device number (major, minor).
pub fn create(name: &str, target_type: &str, sectors: u64, params: &str) -> io::Result<(u32, u32)> {
    let ctl = control()?;
    let mut r = request(name, READONLY, 0, ());
    call::<DM_DEV_CREATE, _>(&ctl, &mut r)?;
    let dev = r.header.dev;
    load_and_resume(&ctl, name, target_type, sectors, params)?;
    // Linux's huge dev encoding.
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    Ok((major, minor))
}

/// Replaces the table of the live device `name` with one target
/// (`target_type`, `sectors` long, `params`): the kernel suspends the
/// device, swaps the table in and resumes it; mounted file systems stay.
pub fn reload(name: &str, target_type: &str, sectors: u64, params: &str) -> io::Result<()> {
    load_and_resume(&control()?, name, target_type, sectors, params)
}

/// The verity table `params` with `restart_on_corruption`: a data or hash
/// block that does not match the root hash reboots the machine instead of
/// failing the read with EIO. herd-init loads /usr without it, reads all of
/// /usr once (a corruption there is a `FATAL` line naming the slot and a
/// counted boot try), then reloads the table with it, so a block that
/// changes under a running node reboots it: a slot on trial then falls
/// back by the boot loader's tries (docs/ARCHITECTURE.md, "dm-verity").
pub fn restart_on_corruption(params: &str) -> String {
    format!("{params} 1 restart_on_corruption")
}

fn control() -> io::Result<File> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")?;
    call::<DM_VERSION, _>(&ctl, &mut request("", 0, 0, ()))?;
    Ok(ctl)
}

/// Loads a one-target table as the inactive table of `name`, then resumes
/// the device (which makes the loaded table the live one).
fn load_and_resume(
    ctl: &File,
    name: &str,
    target_type: &str,
    sectors: u64,
    params: &str,
) -> io::Result<()> {
    let mut target = OneTarget {
        spec: DmTargetSpec {
            sector_start: 0,
            length: sectors,
            status: 0,
            next: std::mem::size_of::<OneTarget>() as u32,
            target_type: [0; 16],
        },
        params: [0; PARAMS_MAX],
    };
    let t = target_type.as_bytes();
    // Both keep a NUL at the end: the kernel reads C strings.
    if t.len() >= target.spec.target_type.len() || params.len() >= PARAMS_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("device-mapper target {target_type:?} or its parameters are too long"),
        ));
    }
    target.spec.target_type[..t.len()].copy_from_slice(t);
    target.params[..params.len()].copy_from_slice(params.as_bytes());
    call::<DM_TABLE_LOAD, _>(ctl, &mut request(name, READONLY, 1, target))?;
    call::<DM_DEV_SUSPEND, _>(ctl, &mut request(name, 0, 0, ()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_are_the_kernel_headers_values() {
        // linux/dm-ioctl.h, as `_IOWR(0xfd, nr, struct dm_ioctl)` expands on x86-64.
        assert_eq!(
            [DM_VERSION, DM_DEV_CREATE, DM_DEV_SUSPEND, DM_TABLE_LOAD],
            [0xc138_fd00, 0xc138_fd03, 0xc138_fd06, 0xc138_fd09]
        );
    }

    #[test]
    fn restart_on_corruption_is_one_optional_argument_after_the_salt() {
        let base = herd_verity::dm_table_params("253:1", "253:2", 10, &[7; 32], &[]);
        let p = restart_on_corruption(&base);
        let words: Vec<&str> = p.split(' ').collect();
        // version data hash dbs hbs blocks hash_start alg root salt, then
        // the optional-argument count and the arguments (dm-verity.rst).
        assert_eq!(words.len(), 12, "{p}");
        assert_eq!(words[9], "-");
        assert_eq!(&words[10..], ["1", "restart_on_corruption"]);
    }
}
