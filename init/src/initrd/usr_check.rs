//! The boot-time read of all of /usr through dm-verity.

use std::fs::File;
use std::io::ErrorKind;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::{fatal, info};

/// Reads all of /usr through dm-verity, so a corrupted partition fails this
/// boot now (one clear line, a counted try) rather than when some file is
/// first read. Runs on its own thread while STATE is mounted, as two
/// readers (one per half: dm-verity hashes each read's blocks on the
/// reading CPU's worker, so two readers use both CPUs); the message names
/// the slot and where the read failed.
fn check_usr(dev: &str, slot: &str) -> Result<u64, String> {
    let f = File::open(dev).map_err(|e| format!("cannot open the verity device {dev}: {e}"))?;
    let len = {
        use std::io::Seek;
        (&f).seek(std::io::SeekFrom::End(0))
            .map_err(|e| format!("cannot size the verity device {dev}: {e}"))?
    };
    // The halves meet on a 1 MiB boundary.
    let half = (len / 2) & !((1 << 20) - 1);
    std::thread::scope(|sc| {
        let second = sc.spawn(|| read_range(&f, half, len, slot));
        let first = read_range(&f, 0, half, slot);
        let second = second
            .join()
            .unwrap_or_else(|_| Err("the /usr check's second reader panicked".into()));
        Ok(first? + second?)
    })
}

/// Reads bytes `from..to` of `f`.
fn read_range(f: &File, from: u64, to: u64, slot: &str) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = from;
    while off < to {
        let want = buf.len().min((to - off) as usize);
        match f.read_at(&mut buf[..want], off) {
            Ok(0) => break,
            Ok(n) => off += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                "dm-verity rejected /usr of slot {slot} near byte {off} ({e}): the USR partition does not match usrhash \
                 (corrupted data or a wrong root hash); refusing to boot it"
            ))
            }
        }
    }
    Ok(off - from)
}

/// The whole-/usr check running beside the rest of the initramfs stage.
pub struct UsrCheck(Option<JoinHandle<Result<u64, String>>>);

impl UsrCheck {
    /// Starts reading the verity device `dev` of `slot` on its own thread.
    pub fn start(dev: &str, slot: &str) -> UsrCheck {
        let (dev, slot) = (dev.to_string(), slot.to_string());
        let started = Instant::now();
        let h = std::thread::Builder::new()
            .name("usr-check".into())
            .spawn(move || {
                let r = check_usr(&dev, &slot);
                if let Ok(bytes) = r {
                    info!(
                        "dm-verity device {dev} read in full: {} MiB verified in {} ms",
                        bytes >> 20,
                        started.elapsed().as_millis()
                    );
                }
                r
            })
            .unwrap_or_else(|e| fatal(&format!("cannot start the /usr check: {e}")));
        UsrCheck(Some(h))
    }

    /// Waits for the check; a failure ends the boot.
    pub fn finish(&mut self) {
        if let Some(h) = self.0.take() {
            match h.join() {
                Ok(Ok(_)) => {}
                Ok(Err(m)) => fatal(&m),
                Err(_) => fatal("the /usr check panicked"),
            }
        }
    }

    /// Ends the boot with `msg`, or with the check's own failure when /usr
    /// turned out corrupted (the likelier cause of anything failing on it).
    pub fn fatal(&mut self, msg: &str) -> ! {
        self.finish();
        fatal(msg)
    }
}
