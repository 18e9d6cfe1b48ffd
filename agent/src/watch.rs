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
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let mask = WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MODIFY
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::MOVED_TO
            | WatchFlags::MOVED_FROM
            | WatchFlags::ATTRIB;
        inotify::add_watch(&fd, dir, mask)?;
        Ok(Notify(fd))
    }

    /// Waits until something changed or `timeout` passed (or a signal
    /// arrived); drains the pending notifications.
    pub fn wait(&self, timeout: std::time::Duration) {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        // Whole milliseconds, as poll(2) took them before.
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let timeout = Timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        };
        if matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0) {
            let mut buf = [0u8; 4096];
            // The descriptor is non-blocking: EAGAIN ends the draining.
            while matches!(rustix::io::read(&self.0, &mut buf), Ok(n) if n > 0) {}
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
