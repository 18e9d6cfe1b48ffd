//! Container output: every line goes to the console (the agent's stdout,
//! which herd-init forwards) prefixed with `pod/container`, and to a
//! size-bounded file per container: `<dir>/<pod>/<container>.log`, moved
//! to `<container>.log.1` when it reaches the bound (one old file kept).
//!
//! A container's stdout and stderr are a FIFO in its bundle directory
//! (`<bundle>/output`, on the `/run` tmpfs), which the container holds
//! open for reading *and* writing ([`Output::create`]). So the pipe always
//! has a reader: when the agent dies, the container's writes do not fail
//! with EPIPE/SIGPIPE but fill the pipe (64 KiB), then block until an
//! agent reads again. The agent that adopts the container after a restart
//! opens the same FIFO ([`Output::reopen`]) and carries on; what it finds
//! there is what was written meanwhile. A line the dead agent had read but
//! not yet written to the file is lost. The pipe ends (EOF) once every
//! process of the container is gone.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use herd_clock::rfc3339 as timestamp;

/// A container's output FIFO.
pub struct Output {
    /// The agent's end: read it until EOF ([`pump`]).
    pub reader: File,
    /// The container's end (read-write, see the module doc): hand it to
    /// the runtime, then drop it.
    pub writer: File,
}

impl Output {
    /// Makes the FIFO at `path` (replacing whatever is there) and opens
    /// both ends.
    pub fn create(path: &Path) -> std::io::Result<Output> {
        let _ = std::fs::remove_file(path);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )?;
        // Read-write first: opening a FIFO that way never blocks, and the
        // reader's open then finds a writer.
        let writer = OpenOptions::new().read(true).write(true).open(path)?;
        let reader = File::open(path)?;
        Ok(Output { reader, writer })
    }

    /// The agent's end of an existing FIFO (after an agent restart).
    pub fn reopen(path: &Path) -> std::io::Result<File> {
        // Non-blocking open: when the container is already gone there is
        // no writer, and a blocking open would wait for one forever.
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)?;
        let flags = rustix::fs::fcntl_getfl(&f)?;
        rustix::fs::fcntl_setfl(&f, flags - rustix::fs::OFlags::NONBLOCK)?;
        Ok(f)
    }
}

/// Seconds since the epoch now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where a container's log lives.
pub fn path(dir: &Path, pod: &str, container: &str) -> PathBuf {
    dir.join(pod).join(format!("{container}.log"))
}

/// A size-bounded log file.
pub struct LogFile {
    path: PathBuf,
    max: u64,
    file: Option<File>,
    len: u64,
}

impl LogFile {
    /// Appends to `path` (created with its directory), keeping at most
    /// about `max` bytes in it and as much again in `path.1`.
    pub fn open(path: PathBuf, max: u64) -> LogFile {
        if let Some(d) = path.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        let len = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        LogFile {
            path,
            max,
            file,
            len,
        }
    }

    /// Writes one line (a newline is added).
    pub fn line(&mut self, text: &str) {
        if self.len + text.len() as u64 + 22 > self.max && self.len > 0 {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.path, old);
            self.file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&self.path)
                .ok();
            self.len = 0;
        }
        if let Some(f) = &mut self.file {
            let l = format!("{} {text}\n", timestamp(now()));
            if f.write_all(l.as_bytes()).is_ok() {
                self.len += l.len() as u64;
            }
        }
    }
}

/// Reads `from` until it closes, line by line, into the console (with
/// `prefix`) and `file`. Long lines are cut at 16 KiB.
pub fn pump(from: impl Read, prefix: &str, mut file: LogFile) {
    let mut r = BufReader::new(from.take(u64::MAX));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut r).take(16 * 1024).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end_matches(['\n', '\r']);
                println!("{prefix}: {text}");
                file.line(text);
            }
        }
    }
}

/// The last `max` bytes of a container's log (the rotated file first).
pub fn read_tail(dir: &Path, pod: &str, container: &str, max: u64) -> std::io::Result<Vec<u8>> {
    let cur = path(dir, pod, container);
    let mut old = cur.clone().into_os_string();
    old.push(".1");
    let mut out = std::fs::read(&old).unwrap_or_default();
    out.extend(std::fs::read(&cur)?);
    let cut = out.len().saturating_sub(max as usize);
    Ok(out.split_off(cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_stay_bounded() {
        let t = tempfile::tempdir().unwrap();
        let p = path(t.path(), "web", "httpd");
        let lines: String = (0..200).map(|i| format!("line {i}\n")).collect();
        pump(
            lines.as_bytes(),
            "web/httpd",
            LogFile::open(p.clone(), 1000),
        );
        let cur = std::fs::metadata(&p).unwrap().len();
        assert!(cur <= 1000, "{cur}");
        let tail =
            String::from_utf8(read_tail(t.path(), "web", "httpd", 1 << 20).unwrap()).unwrap();
        assert!(tail.ends_with(" line 199\n"), "{tail}");
        assert!(!tail.contains(" line 0\n"), "old lines are dropped");
        assert!(tail.len() <= 2000);
    }

    #[test]
    fn the_output_fifo_outlives_its_reader() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("output");
        let Output { reader, writer } = Output::create(&p).unwrap();
        let mut w = writer.try_clone().unwrap();
        drop(writer);
        w.write_all(b"before\n").unwrap();
        // The agent dies: its end closes. Writing still works (the
        // container's own end reads), and nothing is lost.
        drop(reader);
        w.write_all(b"while away\n").unwrap();
        let again = Output::reopen(&p).unwrap();
        w.write_all(b"after\n").unwrap();
        drop(w);
        let mut got = String::new();
        BufReader::new(again).read_to_string(&mut got).unwrap();
        assert_eq!(got, "before\nwhile away\nafter\n");
    }
}
