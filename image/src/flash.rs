//! `herd flash IMAGE TARGET`: writes a raw disk image onto a block device
//! or into a file, fsyncs, reads it back and compares the sha256.
//!
//! Refused, before anything is written: a qcow2 (or empty) image, the image
//! itself as target, a device that holds the running system (`/` or `/usr`
//! lives on it or on one of its partitions, directly or under
//! device-mapper), a device that is mounted, used as swap or held by another
//! device (device-mapper, RAID), a device the kernel will not open
//! exclusively, a device smaller than the image. It asks before writing
//! unless told `--yes`, and refuses to guess when stdin is not a terminal.
//!
//! A target that is a new or empty regular file gets holes for the image's
//! all-zero MiBs; a block device gets every byte (its old contents are not
//! zeros).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::progress::Progress;

/// Read and write unit.
const CHUNK: usize = 4 << 20;
/// Hole granularity for new files.
const SPARSE: usize = 1 << 20;

/// What can stop a flash.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The image is qcow2.
    #[error("{0} is a qcow2 image: flash a raw image (convert it with `qemu-img convert -O raw {0} disk.raw`, or build with the default --format raw)")]
    Qcow2(String),
    /// The image is not something to flash.
    #[error("{image} cannot be flashed: {why}")]
    BadImage {
        /// the image
        image: String,
        /// what is wrong
        why: String,
    },
    /// Target and image are the same file.
    #[error("{0} is the image itself: give another target")]
    SameFile(String),
    /// The target is not a block device or a regular file.
    #[error("{0} is neither a block device nor a regular file: give a disk such as /dev/sdX or a file name")]
    BadTarget(String),
    /// The device is too small.
    #[error("{target} holds {have} bytes, the image needs {need}: use a bigger device")]
    TooSmall {
        /// the device
        target: String,
        /// its size
        have: u64,
        /// the image size
        need: u64,
    },
    /// The device holds the running system.
    #[error("{target} holds the running system ({what}): flashing it would destroy this machine's own system; pick another device")]
    RunningSystem {
        /// the device
        target: String,
        /// which of / and /usr, on what
        what: String,
    },
    /// The device or one of its partitions is in use.
    #[error("{target} is in use: {what}; unmount it (or swapoff, or stop what holds it), or pick another device")]
    InUse {
        /// the device
        target: String,
        /// what uses it
        what: String,
    },
    /// No confirmation.
    #[error("not confirmed: nothing was written to {0}")]
    NotConfirmed(String),
    /// stdin is not a terminal and --yes was not given.
    #[error("refusing to overwrite {0} without confirmation: stdin is not a terminal, pass --yes")]
    NeedYes(String),
    /// Read-back differs.
    #[error("verification failed: {target} reads back with sha256 {got}, the image has {want}: the device may be failing")]
    Mismatch {
        /// the target
        target: String,
        /// read back
        got: String,
        /// image
        want: String,
    },
    /// I/O.
    #[error("{what}: {cause}")]
    Io {
        /// what was being done
        what: String,
        /// the cause
        cause: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FlashError {
    let what = what.into();
    move |cause| FlashError::Io { what, cause }
}

/// How to flash.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlashOptions {
    /// Do not ask.
    pub yes: bool,
    /// No progress output.
    pub quiet: bool,
}

/// What a flash did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flashed {
    /// sha256 (hex) of the image, equal to that of the target's first `bytes`.
    pub sha256: String,
    /// Image size.
    pub bytes: u64,
    /// Bytes left as holes (new regular files only).
    pub skipped: u64,
}

fn majmin(rdev: u64) -> String {
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

/// A block device as /sys names it: ("sda1", "8:1").
type Dev = (String, String);

/// The device with number `rdev` and, for a whole disk, its partitions
/// ("8:0" → sda, sda1, sda2 ...), from /sys.
fn family(rdev: u64) -> Vec<Dev> {
    let mm = majmin(rdev);
    let Ok(dir) = std::fs::canonicalize(format!("/sys/dev/block/{mm}")) else {
        return Vec::new();
    };
    let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let mut out = vec![(name, mm)];
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            // A partition is a subdirectory with a `partition` file.
            if e.path().join("partition").exists() {
                if let Ok(dev) = std::fs::read_to_string(e.path().join("dev")) {
                    out.push((
                        e.file_name().to_string_lossy().into_owned(),
                        dev.trim().to_string(),
                    ));
                }
            }
        }
    }
    out
}

/// "maj:min" of every block device under device `mm`: itself, the disk
/// it is a partition of, and recursively what it is built on (the
/// device-mapper or RAID `slaves`) and their disks.
fn beneath(mm: &str) -> Vec<String> {
    let mut out = vec![mm.to_string()];
    let mut i = 0;
    while i < out.len() && out.len() < 256 {
        if let Ok(dir) = std::fs::canonicalize(format!("/sys/dev/block/{}", out[i])) {
            let mut add = Vec::new();
            if dir.join("partition").exists() {
                if let Ok(d) = std::fs::read_to_string(dir.with_file_name("dev")) {
                    add.push(d.trim().to_string());
                }
            }
            if let Ok(rd) = std::fs::read_dir(dir.join("slaves")) {
                for e in rd.flatten() {
                    if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                        add.push(d.trim().to_string());
                    }
                }
            }
            for d in add {
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        i += 1;
    }
    out
}

/// Which of `/` and `/usr` (each with its device number) lives on one of
/// `devs`, if any: "/usr is on /dev/sda3".
fn running_system(devs: &[Dev], system: &[(&str, u64)]) -> Option<String> {
    for (dir, st_dev) in system {
        let under = beneath(&majmin(*st_dev));
        if let Some((name, _)) = devs.iter().find(|(_, mm)| under.contains(mm)) {
            return Some(format!("{dir} is on /dev/{name}"));
        }
    }
    None
}

/// Undo the octal escapes of /proc mount tables (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a mount or swap source path names device `name`.
fn names(source: &str, name: &str) -> bool {
    let want = format!("/dev/{name}");
    if source == want {
        return true;
    }
    source.starts_with("/dev/")
        && std::fs::canonicalize(source).is_ok_and(|p| p == Path::new(&want))
}

/// Where one of `devs` is mounted, by `/proc/self/mountinfo` text: by
/// device number, or by mount source (btrfs reports its own numbers).
fn mounted(mountinfo: &str, devs: &[Dev]) -> Option<String> {
    for l in mountinfo.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let source = f
            .iter()
            .position(|x| *x == "-")
            .and_then(|i| f.get(i + 2))
            .map(|s| unescape(s));
        for (name, mm) in devs {
            if f.get(2) == Some(&mm.as_str()) || source.as_deref().is_some_and(|s| names(s, name)) {
                let at = f.get(4).map(|s| unescape(s)).unwrap_or_default();
                return Some(format!("/dev/{name} is mounted at {at}"));
            }
        }
    }
    None
}

/// Which of `devs` is active swap, by `/proc/swaps` text.
fn swapping(swaps: &str, devs: &[Dev]) -> Option<String> {
    for l in swaps.lines().skip(1) {
        let Some(src) = l.split_whitespace().next() else {
            continue;
        };
        let src = unescape(src);
        if let Some((name, _)) = devs.iter().find(|(n, _)| names(&src, n)) {
            return Some(format!("/dev/{name} is active swap"));
        }
    }
    None
}

/// Which of `devs` is held by another block device (/sys holders).
fn held(devs: &[Dev]) -> Option<String> {
    for (name, _) in devs {
        let holders: Vec<String> = std::fs::read_dir(format!("/sys/class/block/{name}/holders"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !holders.is_empty() {
            return Some(format!(
                "/dev/{name} is held by {} (device-mapper or RAID)",
                holders.join(", ")
            ));
        }
    }
    None
}

/// Every reason the block device `meta` describes must not be written.
fn check_device(target: &Path, meta: &Metadata) -> Result<(), FlashError> {
    let t = target.display().to_string();
    let devs = family(meta.rdev());
    let devs = if devs.is_empty() {
        // Not in /sys (unusual): still compare its own number.
        vec![(
            t.trim_start_matches("/dev/").to_string(),
            majmin(meta.rdev()),
        )]
    } else {
        devs
    };
    let system: Vec<(&str, u64)> = ["/", "/usr"]
        .into_iter()
        .filter_map(|d| std::fs::metadata(d).ok().map(|m| (d, m.dev())))
        .collect();
    if let Some(what) = running_system(&devs, &system) {
        return Err(FlashError::RunningSystem { target: t, what });
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io("reading /proc/self/mountinfo"))?;
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    if let Some(what) = mounted(&mountinfo, &devs)
        .or_else(|| swapping(&swaps, &devs))
        .or_else(|| held(&devs))
    {
        return Err(FlashError::InUse { target: t, what });
    }
    Ok(())
}

/// Asks on the terminal; refuses without one.
fn ask_terminal(target: &Path, question: &str) -> Result<(), FlashError> {
    if !std::io::stdin().is_terminal() {
        return Err(FlashError::NeedYes(target.display().to_string()));
    }
    eprint!("{question} Type yes: ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(io("reading the answer"))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(FlashError::NotConfirmed(target.display().to_string()))
    }
}

/// The live progress line: bytes, percent, MB/s.
struct Meter {
    quiet: bool,
    verb: &'static str,
    total: u64,
    start: Instant,
    last: Instant,
}

impl Meter {
    fn new(quiet: bool, verb: &'static str, total: u64) -> Meter {
        let now = Instant::now();
        Meter {
            quiet,
            verb,
            total,
            start: now,
            last: now,
        }
    }

    fn show(&mut self, done: u64, force: bool) {
        if self.quiet || !(force || self.last.elapsed().as_millis() >= 500) {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r    {} {} / {} MiB ({}%), {:.0} MB/s   ",
            self.verb,
            done >> 20,
            self.total >> 20,
            done * 100 / self.total.max(1),
            done as f64 / secs / 1e6
        );
        if force {
            eprintln!();
        }
    }

    fn rate(&self) -> f64 {
        self.total as f64 / self.start.elapsed().as_secs_f64().max(1e-3) / 1e6
    }
}

/// Flashes `image` onto `target`, asking on the terminal unless `opts.yes`.
pub fn flash(image: &Path, target: &Path, opts: FlashOptions) -> Result<Flashed, FlashError> {
    flash_with(image, target, opts, |q| ask_terminal(target, q))
}

/// [`flash`] with the question put to `confirm` (which returns `Ok` to go
/// on) unless `opts.yes`.
pub fn flash_with(
    image: &Path,
    target: &Path,
    opts: FlashOptions,
    confirm: impl FnOnce(&str) -> Result<(), FlashError>,
) -> Result<Flashed, FlashError> {
    let show_image = image.display().to_string();
    let show_target = target.display().to_string();
    let (mut src, im, size) = open_image(image)?;
    let t = open_target(target, &im, size)?;
    if !opts.yes {
        let what = match t.kind {
            TargetKind::Device => "destroying everything on it",
            TargetKind::File { existed: true, .. } => "replacing the file",
            TargetKind::File { existed: false, .. } => "a new file",
        };
        confirm(&format!(
            "Write {show_image} ({} MiB) to {show_target}, {what}?",
            size.div_ceil(1 << 20)
        ))?;
    }
    let mut dst = match t.device {
        Some(d) => d,
        None => OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(target)
            .map_err(io(format!("creating {show_target}")))?,
    };
    let progress = Progress::new(opts.quiet);
    let names = Names {
        image: &show_image,
        target: &show_target,
    };
    let (want, skipped) = write(&mut src, &mut dst, size, t.kind, &names, opts, &progress)?;
    read_back(&mut dst, size, &want, &names, opts, &progress)?;
    Ok(Flashed {
        sha256: want,
        bytes: size,
        skipped,
    })
}

/// The image and the target as the messages show them.
struct Names<'a> {
    image: &'a str,
    target: &'a str,
}

/// Opens the image and checks it is something to flash (a non-empty raw
/// file or device, not a qcow2): the file, its metadata and its size.
fn open_image(image: &Path) -> Result<(File, Metadata, u64), FlashError> {
    let show_image = image.display().to_string();
    let mut src = File::open(image).map_err(io(format!("opening {show_image}")))?;
    let im = src
        .metadata()
        .map_err(io(format!("reading {show_image}")))?;
    if !im.is_file() && !im.file_type().is_block_device() {
        return Err(FlashError::BadImage {
            image: show_image,
            why: "not a regular file or block device".into(),
        });
    }
    let size = src
        .seek(SeekFrom::End(0))
        .map_err(io(format!("sizing {show_image}")))?;
    if size == 0 {
        return Err(FlashError::BadImage {
            image: show_image,
            why: "it is empty".into(),
        });
    }
    let mut magic = [0u8; 4];
    src.seek(SeekFrom::Start(0))
        .and_then(|_| src.read_exact(&mut magic[..size.min(4) as usize]))
        .map_err(io(format!("reading {show_image}")))?;
    if &magic == b"QFI\xfb" {
        return Err(FlashError::Qcow2(show_image));
    }
    Ok((src, im, size))
}

/// What the target is.
#[derive(Debug, Clone, Copy)]
enum TargetKind {
    /// A block device: every byte is written (its old contents are not zeros).
    Device,
    /// A regular file; `fresh` (new or empty) gets holes for zeros.
    File { existed: bool, fresh: bool },
}

/// The checked target: a block device is open (exclusively) already, a
/// file is created or truncated only once the user said yes.
struct Target {
    device: Option<File>,
    kind: TargetKind,
}

/// Checks the target against the image (not the image itself, a device not
/// in use and big enough, else a regular file or a new name).
fn open_target(target: &Path, im: &Metadata, size: u64) -> Result<Target, FlashError> {
    let show_target = target.display().to_string();
    let tmeta = match std::fs::metadata(target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(format!("looking at {show_target}"))(e)),
    };
    let same = |m: &Metadata| {
        (m.dev() == im.dev() && m.ino() == im.ino())
            || (m.file_type().is_block_device()
                && im.file_type().is_block_device()
                && m.rdev() == im.rdev())
    };
    let m = match &tmeta {
        Some(m) if same(m) => return Err(FlashError::SameFile(show_target)),
        Some(m) if m.file_type().is_block_device() => m,
        Some(m) if m.is_file() => {
            return Ok(Target {
                device: None,
                kind: TargetKind::File {
                    existed: true,
                    fresh: m.len() == 0,
                },
            })
        }
        Some(_) => return Err(FlashError::BadTarget(show_target)),
        None => {
            return Ok(Target {
                device: None,
                kind: TargetKind::File {
                    existed: false,
                    fresh: true,
                },
            })
        }
    };
    check_device(target, m)?;
    // O_EXCL on a block device: the kernel refuses (EBUSY) while it or a
    // partition is mounted or claimed, and keeps others from claiming it
    // while we write.
    let mut dst = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(target)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => FlashError::InUse {
                target: show_target.clone(),
                what: "the kernel reports it busy (mounted, swap, device-mapper \
                       or opened exclusively by another program)"
                    .into(),
            },
            _ => io(format!("opening {show_target}"))(e),
        })?;
    let have = dst
        .seek(SeekFrom::End(0))
        .map_err(io(format!("sizing {show_target}")))?;
    if have < size {
        return Err(FlashError::TooSmall {
            target: show_target,
            have,
            need: size,
        });
    }
    Ok(Target {
        device: Some(dst),
        kind: TargetKind::Device,
    })
}

/// Copies the image onto the target (holes for zero MiBs in a fresh file),
/// fsyncs, and returns the image's sha256 and the bytes left as holes.
fn write(
    src: &mut File,
    dst: &mut File,
    size: u64,
    kind: TargetKind,
    names: &Names,
    opts: FlashOptions,
    progress: &Progress,
) -> Result<(String, u64), FlashError> {
    let fresh = matches!(kind, TargetKind::File { fresh: true, .. });
    let step = progress.step(&format!("writing {} to {}", names.image, names.target));
    let mut meter = Meter::new(opts.quiet, "written", size);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut skipped = 0u64;
    src.seek(SeekFrom::Start(0))
        .map_err(io(format!("rewinding {}", names.image)))?;
    dst.seek(SeekFrom::Start(0))
        .map_err(io(format!("seeking {}", names.target)))?;
    while done < size {
        let n = (size - done).min(CHUNK as u64) as usize;
        src.read_exact(&mut buf[..n])
            .map_err(io(format!("reading {}", names.image)))?;
        h.update(&buf[..n]);
        for piece in buf[..n].chunks(SPARSE) {
            if fresh && piece.iter().all(|&b| b == 0) {
                dst.seek(SeekFrom::Current(piece.len() as i64))
                    .map_err(io(format!("seeking {}", names.target)))?;
                skipped += piece.len() as u64;
            } else {
                dst.write_all(piece)
                    .map_err(io(format!("writing {}", names.target)))?;
            }
        }
        done += n as u64;
        meter.show(done, false);
    }
    if let TargetKind::File { .. } = kind {
        // A trailing hole, or a longer old file, needs the length set.
        dst.set_len(size)
            .map_err(io(format!("sizing {}", names.target)))?;
    }
    dst.sync_all()
        .map_err(io(format!("flushing {}", names.target)))?;
    meter.show(done, true);
    step.done(&format!(
        "{} MiB at {:.0} MB/s (fsynced{})",
        size >> 20,
        meter.rate(),
        if skipped > 0 {
            format!(", {} MiB of zeros left as holes", skipped >> 20)
        } else {
            String::new()
        }
    ));
    Ok((hex::encode(h.finalize()), skipped))
}

/// Reads the target back from the device (not the page cache) and compares
/// its sha256 with the image's.
fn read_back(
    dst: &mut File,
    size: u64,
    want: &str,
    names: &Names,
    opts: FlashOptions,
    progress: &Progress,
) -> Result<(), FlashError> {
    // The pages are clean after the fsync, so they can be dropped.
    // SAFETY: posix_fadvise(2) on a descriptor we own, with plain integers;
    // it touches no memory of ours. Its result only affects speed.
    unsafe { libc::posix_fadvise(dst.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let step = progress.step(&format!("reading {} back", names.target));
    let mut meter = Meter::new(opts.quiet, "verified", size);
    dst.seek(SeekFrom::Start(0))
        .map_err(io(format!("seeking {}", names.target)))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(CHUNK as u64) as usize;
        dst.read_exact(&mut buf[..n])
            .map_err(io(format!("reading back {}", names.target)))?;
        h.update(&buf[..n]);
        done += n as u64;
        meter.show(done, false);
    }
    meter.show(done, true);
    let got = hex::encode(h.finalize());
    if got != want {
        return Err(FlashError::Mismatch {
            target: names.target.to_string(),
            got,
            want: want.to_string(),
        });
    }
    step.done(&format!("sha256 {want} matches ({:.0} MB/s)", meter.rate()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const YES: FlashOptions = FlashOptions {
        yes: true,
        quiet: true,
    };

    /// 5 MiB + 1000 bytes: data, two MiBs of zeros, data.
    fn image(dir: &Path) -> (PathBuf, Vec<u8>) {
        let mut data = vec![0u8; (5 << 20) + 1000];
        for (i, b) in data[..1 << 20].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        data[(4 << 20) + 7] = 9;
        *data.last_mut().unwrap() = 1;
        let p = dir.join("disk.raw");
        std::fs::write(&p, &data).unwrap();
        (p, data)
    }

    fn never(_: &str) -> Result<(), FlashError> {
        panic!("asked although --yes")
    }

    #[test]
    fn a_new_file_gets_the_image_with_holes_for_zeros() {
        let t = tempfile::tempdir().unwrap();
        let (img, data) = image(t.path());
        let out = t.path().join("out.raw");
        let r = flash_with(&img, &out, YES, never).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert_eq!(r.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(r.bytes, data.len() as u64);
        // MiBs 1..4 are all zeros; MiB 4 has a byte, MiB 5 is the tail.
        assert_eq!(r.skipped, 3 << 20);
        let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
        assert!(
            allocated <= data.len() as u64 - (2 << 20),
            "{allocated} bytes allocated"
        );
    }

    #[test]
    fn an_existing_file_is_replaced_and_zeros_are_written() {
        let t = tempfile::tempdir().unwrap();
        let (img, data) = image(t.path());
        let out = t.path().join("out.raw");
        std::fs::write(&out, vec![0xaau8; 7 << 20]).unwrap();
        let r = flash_with(&img, &out, YES, never).unwrap();
        assert_eq!(r.skipped, 0);
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }

    #[test]
    fn refusals_write_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (img, _) = image(t.path());
        let out = t.path().join("out.raw");

        // Not confirmed: the question names both, the target is not created.
        let mut asked = String::new();
        let e = flash_with(&img, &out, FlashOptions::default(), |q| {
            asked = q.to_string();
            Err(FlashError::NotConfirmed(out.display().to_string()))
        })
        .unwrap_err();
        assert!(matches!(e, FlashError::NotConfirmed(_)), "{e}");
        assert!(
            asked.contains("disk.raw") && asked.contains("out.raw"),
            "{asked}"
        );
        assert!(!out.exists());

        // An existing file is left as it was.
        std::fs::write(&out, b"keep").unwrap();
        let e = flash_with(&img, &out, FlashOptions::default(), |_| {
            Err(FlashError::NotConfirmed(String::new()))
        })
        .unwrap_err();
        assert!(matches!(e, FlashError::NotConfirmed(_)), "{e}");
        assert_eq!(std::fs::read(&out).unwrap(), b"keep");

        // The image itself, by its name, a symlink or a hard link.
        let link = t.path().join("link.raw");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        let hard = t.path().join("hard.raw");
        std::fs::hard_link(&img, &hard).unwrap();
        for same in [&img, &link, &hard] {
            let e = flash_with(&img, same, YES, never).unwrap_err();
            assert!(matches!(e, FlashError::SameFile(_)), "{e}");
        }

        // qcow2 and empty images.
        let q = t.path().join("disk.qcow2");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03rest").unwrap();
        let e = flash_with(&q, &t.path().join("q.raw"), YES, never).unwrap_err();
        assert!(e.to_string().contains("qemu-img convert -O raw"), "{e}");
        assert!(!t.path().join("q.raw").exists());
        let empty = t.path().join("empty.raw");
        std::fs::write(&empty, b"").unwrap();
        let e = flash_with(&empty, &t.path().join("e.raw"), YES, never).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");

        // Neither a file nor a block device.
        let e = flash_with(&img, Path::new("/dev/null"), YES, never).unwrap_err();
        assert!(matches!(e, FlashError::BadTarget(_)), "{e}");
        let e = flash_with(&img, t.path(), YES, never).unwrap_err();
        assert!(matches!(e, FlashError::BadTarget(_)), "{e}");
    }

    #[test]
    fn mount_tables_are_read_by_number_and_by_source() {
        let devs = vec![
            ("sdz".to_string(), "8:240".to_string()),
            ("sdz1".to_string(), "8:241".to_string()),
        ];
        let info = "\
22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw
36 22 8:241 / /mnt/my\\040stick rw,relatime shared:2 - vfat /dev/sdz1 rw
";
        assert_eq!(
            mounted(info, &devs).as_deref(),
            Some("/dev/sdz1 is mounted at /mnt/my stick")
        );
        // btrfs: an anonymous device number, the source names the device.
        let info = "40 22 0:45 / /data rw shared:3 - btrfs /dev/sdz rw,space_cache\n";
        assert_eq!(
            mounted(info, &devs).as_deref(),
            Some("/dev/sdz is mounted at /data")
        );
        let info = "40 22 8:1 / /data rw shared:3 - ext4 /dev/sda1 rw\n";
        assert_eq!(mounted(info, &devs), None);

        let swaps = "Filename\tType\tSize\tUsed\tPriority\n/dev/sdz1  partition\t1024\t0\t-2\n";
        assert_eq!(
            swapping(swaps, &devs).as_deref(),
            Some("/dev/sdz1 is active swap")
        );
        assert_eq!(swapping("Filename\tType\n", &devs), None);
        assert_eq!(unescape("a\\040b\\134c\\0"), "a b\\c\\0");
    }

    #[test]
    fn the_running_system_is_found_on_its_device() {
        // Whatever / is on (a partition, a device-mapper device, an overlay's
        // anonymous device), a device list holding that number is refused,
        // and one without it is not.
        let root = std::fs::metadata("/").unwrap().dev();
        let mine = vec![("x".to_string(), majmin(root))];
        assert_eq!(
            running_system(&mine, &[("/", root)]).as_deref(),
            Some("/ is on /dev/x")
        );
        let other = vec![("y".to_string(), "4095:1048575".to_string())];
        assert_eq!(running_system(&other, &[("/", root)]), None);
        // The disk under a partition of / counts too.
        let disk_of = beneath(&majmin(root));
        if disk_of.len() > 1 {
            let disk = vec![("d".to_string(), disk_of.last().unwrap().clone())];
            assert!(running_system(&disk, &[("/", root)]).is_some());
        }
    }
}
