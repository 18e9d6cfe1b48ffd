//! The static-pod directory: which manifests appeared, changed or went
//! since the last look. A manifest is identified by its file name and
//! versioned by the sha256 of its bytes, so an edit (even one that keeps
//! the modification time) replaces the pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A change in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new manifest file.
    Added(PathBuf),
    /// A manifest whose bytes changed.
    Changed(PathBuf),
    /// A manifest that is gone.
    Removed(PathBuf),
}

/// What was seen last time.
#[derive(Debug, Default)]
pub struct Watch {
    seen: BTreeMap<PathBuf, [u8; 32]>,
}

fn is_manifest(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && p.is_file()
}

impl Watch {
    /// Looks at `dir` and returns the changes since the last call (a
    /// missing directory holds no pods).
    pub fn scan(&mut self, dir: &Path) -> Vec<Change> {
        let mut now = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if !is_manifest(&p) {
                    continue;
                }
                if let Ok(bytes) = std::fs::read(&p) {
                    now.insert(p, Sha256::digest(&bytes).into());
                }
            }
        }
        let mut changes = Vec::new();
        for (p, h) in &now {
            match self.seen.get(p) {
                None => changes.push(Change::Added(p.clone())),
                Some(old) if old != h => changes.push(Change::Changed(p.clone())),
                Some(_) => {}
            }
        }
        for p in self.seen.keys() {
            if !now.contains_key(p) {
                changes.push(Change::Removed(p.clone()));
            }
        }
        self.seen = now;
        changes
    }
}

/// Wakes the agent when anything in a directory changes (inotify), so a
/// new manifest starts without waiting for the next periodic scan.
#[derive(Debug)]
pub struct Notify(std::os::fd::OwnedFd);

impl Notify {
    /// Watches `dir` (which must exist).
    pub fn new(dir: &Path) -> std::io::Result<Notify> {
        use std::os::fd::FromRawFd;
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::other("NUL in path"))?;
        // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by inotify_init1 and is owned by nobody else.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MODIFY
            | libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_ATTRIB;
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Notify(owned))
    }

    /// Waits until something changed or `timeout` passed (or a signal
    /// arrived); drains the pending notifications.
    pub fn wait(&self, timeout: std::time::Duration) {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a buffer we own, of the length given;
            // the descriptor is non-blocking.
            while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_changed_removed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let mut w = Watch::default();
        assert!(w.scan(&d.join("missing")).is_empty());
        std::fs::write(d.join("a.yaml"), "1").unwrap();
        std::fs::write(d.join(".hidden.yaml"), "x").unwrap();
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        assert_eq!(w.scan(d), [Change::Added(d.join("a.yaml"))]);
        assert!(w.scan(d).is_empty());
        std::fs::write(d.join("a.yaml"), "2").unwrap();
        std::fs::write(d.join("b.yml"), "1").unwrap();
        assert_eq!(
            w.scan(d),
            [
                Change::Changed(d.join("a.yaml")),
                Change::Added(d.join("b.yml"))
            ]
        );
        std::fs::remove_file(d.join("a.yaml")).unwrap();
        assert_eq!(w.scan(d), [Change::Removed(d.join("a.yaml"))]);
    }

    #[test]
    fn notify_wakes_on_a_new_file() {
        let t = tempfile::tempdir().unwrap();
        let n = Notify::new(t.path()).unwrap();
        let p = t.path().join("web.yaml");
        let w = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            std::fs::write(p, "x").unwrap();
        });
        let began = std::time::Instant::now();
        n.wait(std::time::Duration::from_secs(20));
        assert!(began.elapsed() < std::time::Duration::from_secs(10));
        w.join().unwrap();
    }
}
