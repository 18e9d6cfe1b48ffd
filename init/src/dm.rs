//! Device-mapper through its ioctls on /dev/mapper/control: create a
//! read-only verity device.

use std::fs::{File, OpenOptions};
use std::io;

use crate::sys;

const NAME_LEN: usize = 128;
/// sizeof(struct dm_ioctl).
const HEADER: usize = 312;
/// sizeof(struct dm_target_spec).
const SPEC: usize = 40;
const READONLY: u32 = 1 << 0;

const fn iowr(nr: u64) -> u64 {
    (3 << 30) | ((HEADER as u64) << 16) | (0xfd << 8) | nr
}
const DM_VERSION: u64 = iowr(0);
const DM_DEV_CREATE: u64 = iowr(3);
const DM_DEV_SUSPEND: u64 = iowr(6);
const DM_TABLE_LOAD: u64 = iowr(9);

/// A `struct dm_ioctl` followed by its payload, 8-byte aligned.
fn message(name: &str, flags: u32, payload: &[u8], targets: u32) -> Vec<u64> {
    let size = (HEADER + payload.len()).div_ceil(8) * 8;
    let mut buf = vec![0u64; size / 8 + 2048];
    let total = buf.len() * 8;
    // SAFETY: viewing a u64 buffer as bytes is always valid.
    let b = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), total) };
    b[0..4].copy_from_slice(&4u32.to_ne_bytes());
    b[12..16].copy_from_slice(&(total as u32).to_ne_bytes());
    b[16..20].copy_from_slice(&(HEADER as u32).to_ne_bytes());
    b[20..24].copy_from_slice(&targets.to_ne_bytes());
    b[28..32].copy_from_slice(&flags.to_ne_bytes());
    let n = name.len().min(NAME_LEN - 1);
    b[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    b[HEADER..HEADER + payload.len()].copy_from_slice(payload);
    buf
}

fn call(ctl: &File, req: u64, msg: &mut [u64]) -> io::Result<()> {
    // SAFETY: msg is a dm_ioctl header plus data, data_size set to its full length.
    unsafe { sys::ioctl_ptr(ctl, req as libc::c_ulong, msg.as_mut_ptr()) }.map(|_| ())
}

/// Creates `name` as a read-only device-mapper device with one target
/// (`target_type`, `sectors` long, `params`), and resumes it. Returns the
/// device number (major, minor).
pub fn create(name: &str, target_type: &str, sectors: u64, params: &str) -> io::Result<(u32, u32)> {
    let ctl = control()?;
    let mut m = message(name, READONLY, &[], 0);
    call(&ctl, DM_DEV_CREATE, &mut m)?;
    // SAFETY: reading the dev field (offset 40) from the reply buffer.
    let dev = unsafe { *m.as_ptr().cast::<u8>().add(40).cast::<u64>() };
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
    call(&ctl, DM_VERSION, &mut message("", 0, &[], 0))?;
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
    let mut spec = vec![0u8; SPEC];
    spec[8..16].copy_from_slice(&sectors.to_ne_bytes());
    let t = target_type.as_bytes();
    spec[24..24 + t.len()].copy_from_slice(t);
    spec.extend_from_slice(params.as_bytes());
    spec.push(0);
    while !spec.len().is_multiple_of(8) {
        spec.push(0);
    }
    let next = spec.len() as u32;
    spec[20..24].copy_from_slice(&next.to_ne_bytes());
    call(ctl, DM_TABLE_LOAD, &mut message(name, READONLY, &spec, 1))?;
    call(ctl, DM_DEV_SUSPEND, &mut message(name, 0, &[], 0))
}

#[cfg(test)]
mod tests {
    use super::*;

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
