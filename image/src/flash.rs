//! `herd flash IMAGE TARGET`: writes a raw disk image onto a block device
//! or into a file, fsyncs, reads it back and compares the sha256. Refuses
//! a qcow2 image, the image itself as target, a device that is mounted or
//! in use (device-mapper, e.g. the running system's verity /usr), a device
//! smaller than the image; asks before writing unless told `--yes`.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Instant;

use sha2::{Digest, Sha256};

const CHUNK: usize = 4 << 20;

/// What can stop a flash.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The image is qcow2.
    #[error("{0} is a qcow2 image: flash a raw image (convert with `qemu-img convert -O raw {0} disk.raw`)")]
    Qcow2(String),
    /// Target and image are the same file.
    #[error("{0} is the image itself: give another target")]
    SameFile(String),
    /// The target is not a block device or a regular file.
    #[error("{0} is neither a block device nor a regular file")]
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
    /// The device or one of its partitions is mounted.
    #[error("{target} is in use: {what}; unmount it (or pick another device)")]
    InUse {
        /// the device
        target: String,
        /// what uses it
        what: String,
    },
    /// No confirmation.
    #[error("not confirmed: nothing was written")]
    NotConfirmed,
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

/// Block devices named in /sys for a device number: the device and, for
/// a whole disk, its partitions ("8:0" → ["sda", "sda1", ...]).
fn family(rdev: u64) -> Vec<(String, String)> {
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let mut out = Vec::new();
    let Ok(link) = std::fs::read_link(format!("/sys/dev/block/{maj}:{min}")) else {
        return out;
    };
    let Some(name) = link.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return out;
    };
    out.push((name.clone(), format!("{maj}:{min}")));
    if let Ok(rd) = std::fs::read_dir(format!("/sys/class/block/{name}")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&name) {
                if let Ok(dev) = std::fs::read_to_string(e.path().join("dev")) {
                    out.push((n, dev.trim().to_string()));
                }
            }
        }
    }
    out
}

/// Why a block device must not be written, if it must not.
fn in_use(rdev: u64) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for (name, dev) in family(rdev) {
        if let Some(l) = mounts
            .lines()
            .find(|l| l.split(' ').nth(2) == Some(dev.as_str()))
        {
            let at = l.split(' ').nth(4).unwrap_or("?");
            return Some(format!("/dev/{name} is mounted at {at}"));
        }
        let holders = std::fs::read_dir(format!("/sys/class/block/{name}/holders"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
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

fn confirm(image: &Path, size: u64, target: &Path, opts: FlashOptions) -> Result<(), FlashError> {
    if opts.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(FlashError::NeedYes(target.display().to_string()));
    }
    eprint!(
        "Write {} ({} MiB) to {}, destroying what is on it? Type yes: ",
        image.display(),
        size >> 20,
        target.display()
    );
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(io("reading the answer"))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(FlashError::NotConfirmed)
    }
}

fn progress(quiet: bool, done: u64, total: u64, start: Instant, verb: &str) {
    if quiet {
        return;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-3);
    eprint!(
        "\r    {verb} {} / {} MiB ({}%) {:.0} MB/s   ",
        done >> 20,
        total >> 20,
        done * 100 / total.max(1),
        done as f64 / secs / 1e6
    );
}

/// Flashes `image` onto `target`; returns the verified sha256 (hex).
pub fn flash(image: &Path, target: &Path, opts: FlashOptions) -> Result<String, FlashError> {
    let mut src = File::open(image).map_err(io(format!("opening {}", image.display())))?;
    let size = src
        .metadata()
        .map_err(io(format!("reading {}", image.display())))?
        .len();
    let mut magic = [0u8; 4];
    let _ = src.read(&mut magic);
    if &magic == b"QFI\xfb" {
        return Err(FlashError::Qcow2(image.display().to_string()));
    }
    src.seek(SeekFrom::Start(0))
        .map_err(io("rewinding the image"))?;
    let im = src.metadata().map_err(io("reading the image"))?;
    let tmeta = std::fs::metadata(target).ok();
    let (is_block, fresh_file) = match &tmeta {
        Some(m) if m.dev() == im.dev() && m.ino() == im.ino() => {
            return Err(FlashError::SameFile(target.display().to_string()))
        }
        Some(m) if m.file_type().is_block_device() => {
            if let Some(what) = in_use(m.rdev()) {
                return Err(FlashError::InUse {
                    target: target.display().to_string(),
                    what,
                });
            }
            (true, false)
        }
        Some(m) if m.is_file() => (false, m.len() == 0),
        Some(_) => return Err(FlashError::BadTarget(target.display().to_string())),
        None => (false, true),
    };
    let mut dst = OpenOptions::new()
        .write(true)
        .read(true)
        .create(!is_block)
        .open(target)
        .map_err(io(format!("opening {}", target.display())))?;
    if is_block {
        let have = dst
            .seek(SeekFrom::End(0))
            .map_err(io(format!("sizing {}", target.display())))?;
        if have < size {
            return Err(FlashError::TooSmall {
                target: target.display().to_string(),
                have,
                need: size,
            });
        }
    }
    confirm(image, size, target, opts)?;

    let start = Instant::now();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut last = Instant::now();
    dst.seek(SeekFrom::Start(0))
        .map_err(io("seeking the target"))?;
    if !is_block {
        dst.set_len(0).map_err(io("truncating the target"))?;
    }
    while done < size {
        let n = (size - done).min(CHUNK as u64) as usize;
        src.read_exact(&mut buf[..n])
            .map_err(io(format!("reading {}", image.display())))?;
        h.update(&buf[..n]);
        if fresh_file && buf[..n].iter().all(|&b| b == 0) {
            dst.seek(SeekFrom::Current(n as i64))
                .map_err(io("seeking the target"))?;
        } else {
            dst.write_all(&buf[..n])
                .map_err(io(format!("writing {}", target.display())))?;
        }
        done += n as u64;
        if last.elapsed().as_millis() >= 500 {
            progress(opts.quiet, done, size, start, "writing");
            last = Instant::now();
        }
    }
    if !is_block {
        dst.set_len(size).map_err(io("sizing the target"))?;
    }
    dst.sync_all()
        .map_err(io(format!("flushing {}", target.display())))?;
    progress(opts.quiet, done, size, start, "writing");
    let want = hex::encode(h.finalize());

    // Read back what the device holds, not what the page cache remembers.
    // SAFETY: posix_fadvise(2) on an open descriptor with plain integers.
    unsafe { libc::posix_fadvise(dst.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    dst.seek(SeekFrom::Start(0))
        .map_err(io("seeking the target"))?;
    let mut h = Sha256::new();
    let mut left = size;
    let start = Instant::now();
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        dst.read_exact(&mut buf[..n])
            .map_err(io(format!("reading back {}", target.display())))?;
        h.update(&buf[..n]);
        left -= n as u64;
        if last.elapsed().as_millis() >= 500 {
            progress(opts.quiet, size - left, size, start, "verifying");
            last = Instant::now();
        }
    }
    if !opts.quiet {
        eprintln!();
    }
    let got = hex::encode(h.finalize());
    if got != want {
        return Err(FlashError::Mismatch {
            target: target.display().to_string(),
            got,
            want,
        });
    }
    Ok(want)
}
