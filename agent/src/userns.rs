//! User namespaces for pods: each pod (unless its manifest says
//! `hostUsers: true`) runs in its own user namespace, its ids 0..65535
//! mapped to a range of host ids that no other pod has. A container's
//! root is then an unprivileged uid on the node: what escapes the
//! container's namespaces is host uid [`FIRST`] + 65536·slot, owning
//! nothing of the node.
//!
//! Ranges: slot `n` is host ids `FIRST + n·SIZE ..= FIRST + n·SIZE + 65535`,
//! `n < SLOTS`. A pod keeps its slot across restarts of the pod and of the
//! agent (the table is persisted as JSON under the agent's state); the slot
//! is given back only when the pod's manifest goes. Names are unique on
//! the node and every slot is held by one name, so two live pods never
//! share a range.
//!
//! Image files: the verified image root is owned by host ids 0.. as
//! unpacked; the pod sees it through an idmapped mount
//! ([`idmapped_clone`]) that shows host id `h` as `FIRST + n·SIZE + h`,
//! which the pod's user namespace maps back to `h`: `/` of the pod is owned
//! by its root, while the bytes on disk stay untouched and shared.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The first host id given to pods (above the node's own users and the
/// 100000.. range distributions give to `/etc/subuid`'s first user).
pub const FIRST: u32 = 0x2_0000;
/// Ids per pod: a whole 16-bit id space, as images expect (nobody = 65534).
pub const SIZE: u32 = herd_pod::USER_NAMESPACE_IDS;
/// How many pods can hold a range at once.
pub const SLOTS: u32 = 4096;

/// A user-namespace failure.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// The table of ranges could not be read or written.
    #[error("user-namespace range table {path}: {message}")]
    Table {
        /// the table file
        path: PathBuf,
        /// what went wrong
        message: String,
    },
    /// Every range is held.
    #[error(
        "all {SLOTS} user-namespace ranges are held by pods; remove a pod or set hostUsers: true"
    )]
    Exhausted,
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// what was attempted
        what: String,
        /// the error
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UsernsError {
    let what = what.into();
    move |source| UsernsError::Sys { what, source }
}

/// One pod's host ids: `first ..= first + SIZE - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The host id of the pod's root.
    pub first: u32,
}

impl IdRange {
    fn of_slot(slot: u32) -> IdRange {
        IdRange {
            first: FIRST + slot * SIZE,
        }
    }

    /// Whether host id `id` belongs to this range.
    pub fn contains(&self, id: u32) -> bool {
        id >= self.first && id - self.first < SIZE
    }

    /// The `/proc/PID/{uid,gid}_map` line of the range.
    pub fn map_line(&self) -> String {
        format!("0 {} {SIZE}\n", self.first)
    }
}

/// The ranges pods hold, persisted in one file.
#[derive(Debug)]
pub struct Ranges {
    file: PathBuf,
    table: Mutex<BTreeMap<String, u32>>,
}

impl Ranges {
    /// The table at `file` (empty if it does not exist yet).
    pub fn load(file: &Path) -> Result<Ranges, UsernsError> {
        let bad = |message: String| UsernsError::Table {
            path: file.to_path_buf(),
            message,
        };
        let table: BTreeMap<String, u32> = match std::fs::read(file) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                bad(format!(
                    "{e}; the file is written only by herd-agent — remove it if it was edited (pods then get new ranges)"
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(bad(e.to_string())),
        };
        let mut seen = std::collections::BTreeSet::new();
        for (pod, slot) in &table {
            if *slot >= SLOTS || !seen.insert(*slot) {
                return Err(bad(format!(
                    "pod {pod} holds slot {slot}, out of range or held twice; remove the file (pods then get new ranges)"
                )));
            }
        }
        Ok(Ranges {
            file: file.to_path_buf(),
            table: Mutex::new(table),
        })
    }

    fn save(&self, table: &BTreeMap<String, u32>) -> Result<(), UsernsError> {
        let tmp = self.file.with_extension("tmp");
        let bad = |e: std::io::Error| UsernsError::Table {
            path: self.file.clone(),
            message: e.to_string(),
        };
        std::fs::write(&tmp, serde_json::to_vec(table).expect("a map serialises")).map_err(bad)?;
        std::fs::rename(&tmp, &self.file).map_err(bad)
    }

    /// The range of `pod`: the one it holds, else the lowest free one
    /// (recorded before it is returned).
    pub fn assign(&self, pod: &str) -> Result<IdRange, UsernsError> {
        let mut table = self.table.lock().expect("lock");
        if let Some(slot) = table.get(pod) {
            return Ok(IdRange::of_slot(*slot));
        }
        let held: std::collections::BTreeSet<u32> = table.values().copied().collect();
        let slot = (0..SLOTS)
            .find(|s| !held.contains(s))
            .ok_or(UsernsError::Exhausted)?;
        table.insert(pod.to_string(), slot);
        if let Err(e) = self.save(&table) {
            table.remove(pod);
            return Err(e);
        }
        Ok(IdRange::of_slot(slot))
    }

    /// Gives `pod`'s range back (its manifest went).
    pub fn release(&self, pod: &str) -> Result<(), UsernsError> {
        let mut table = self.table.lock().expect("lock");
        if table.remove(pod).is_some() {
            self.save(&table)?;
        }
        Ok(())
    }
}

/// A user namespace with `range`'s mapping for uids and gids, held by the
/// returned descriptor (no process stays in it).
pub fn namespace(range: IdRange) -> Result<OwnedFd, UsernsError> {
    // A child in a new user namespace that only waits to be killed; this
    // process writes its maps and keeps a descriptor of the namespace.
    // rustix has no clone(2) (nor fork), so this one call stays raw.
    // SAFETY: clone(2) without CLONE_VM is fork(2) with extra flags; the
    // child runs only pause(2) and _exit(2), both async-signal-safe, so the
    // other threads' locks do not matter.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(sys("creating a user namespace (clone CLONE_NEWUSER)")(
            std::io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        loop {
            // The parent kills us.
            rustix::event::pause();
        }
    }
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("clone(2) returns a positive pid to the parent");
    let result = (|| {
        let map = range.map_line();
        for f in ["uid_map", "gid_map"] {
            let p = format!("/proc/{pid}/{f}");
            std::fs::write(&p, &map).map_err(sys(format!("writing {p}")))?;
        }
        let p = format!("/proc/{pid}/ns/user");
        let f = std::fs::File::open(&p).map_err(sys(format!("opening {p}")))?;
        Ok(OwnedFd::from(f))
    })();
    // `pid` is our child: kill and reap it (the namespace lives on in the
    // descriptor).
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    result
}

// mount_setattr(2) is missing from rustix: it is called raw, with these
// constants of <linux/mount.h> and <fcntl.h> and the struct below.
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Mounts a read-only copy of the tree at `source` on `target`, its ids
/// shifted by `userns`'s mapping (an idmapped mount: host id `h` shows as
/// the id that `userns` maps its `h` to). Nothing on disk changes.
pub fn idmapped_clone(source: &Path, target: &Path, userns: &OwnedFd) -> Result<(), UsernsError> {
    use rustix::mount::{MoveMountFlags, OpenTreeFlags};
    let what = |w: &str| {
        format!("{w} {} (idmapped mounts need Linux 5.12+ and a file system that supports them, e.g. ext4)", source.display())
    };
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| sys(what("open_tree"))(e.into()))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `tree` is an open detached mount, "" with AT_EMPTY_PATH names
    // it, and `attr` is a valid mount_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH as libc::c_uint) | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(sys(what("mount_setattr MOUNT_ATTR_IDMAP"))(
            std::io::Error::last_os_error(),
        ));
    }
    rustix::mount::move_mount(
        &tree,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| sys(format!("move_mount onto {}", target.display()))(e.into()))
}

/// Makes `path` (not following a symlink) owned by `range`'s root.
pub fn chown_to(path: &Path, range: IdRange) -> Result<(), UsernsError> {
    std::os::unix::fs::lchown(path, Some(range.first), Some(range.first))
        .map_err(sys(format!("chown {}", path.display())))
}

/// Like [`chown_to`] for `path` and everything beneath it (not following
/// symlinks).
pub fn chown_tree(path: &Path, range: IdRange) -> Result<(), UsernsError> {
    chown_to(path, range)?;
    if std::fs::symlink_metadata(path)
        .map_err(sys(format!("reading {}", path.display())))?
        .is_dir()
    {
        for e in std::fs::read_dir(path).map_err(sys(format!("reading {}", path.display())))? {
            let e = e.map_err(sys(format!("reading {}", path.display())))?;
            chown_tree(&e.path(), range)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_disjoint_stable_and_persisted() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("userns.json");
        let r = Ranges::load(&file).unwrap();
        let a = r.assign("a").unwrap();
        let b = r.assign("b").unwrap();
        assert_eq!(a.first, FIRST);
        assert_eq!(b.first, FIRST + SIZE);
        assert!(!a.contains(b.first) && !b.contains(a.first + SIZE - 1));
        assert!(a.contains(a.first + SIZE - 1) && !a.contains(a.first - 1));
        assert_eq!(r.assign("a").unwrap(), a, "a pod keeps its range");
        // A restarted agent reads the same table.
        let r2 = Ranges::load(&file).unwrap();
        assert_eq!(r2.assign("b").unwrap(), b);
        r2.release("a").unwrap();
        let c = r2.assign("c").unwrap();
        assert_eq!(c, a, "a released range is reused");
        assert_eq!(Ranges::load(&file).unwrap().assign("b").unwrap(), b);
        assert_eq!(a.map_line(), format!("0 {FIRST} 65536\n"));
        assert!(u64::from(FIRST) + u64::from(SLOTS) * u64::from(SIZE) < u64::from(u32::MAX));
    }

    #[test]
    fn a_table_holding_a_slot_twice_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("userns.json");
        std::fs::write(&file, r#"{"a": 3, "b": 3}"#).unwrap();
        let e = Ranges::load(&file).unwrap_err();
        assert!(e.to_string().contains("held twice"), "{e}");
        std::fs::write(&file, r#"{"a": 4096}"#).unwrap();
        assert!(Ranges::load(&file).is_err());
        std::fs::write(&file, "{").unwrap();
        let e = Ranges::load(&file).unwrap_err();
        assert!(e.to_string().contains("remove it if it was edited"), "{e}");
    }

    #[test]
    fn exhausted_ranges_are_an_error() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("userns.json");
        let table: BTreeMap<String, u32> = (0..SLOTS).map(|s| (format!("p{s}"), s)).collect();
        std::fs::write(&file, serde_json::to_vec(&table).unwrap()).unwrap();
        let r = Ranges::load(&file).unwrap();
        assert!(matches!(r.assign("new"), Err(UsernsError::Exhausted)));
        r.release("p7").unwrap();
        assert_eq!(r.assign("new").unwrap(), IdRange::of_slot(7));
    }

    /// Needs root; the end-to-end tests cover it with crun otherwise.
    #[test]
    fn an_idmapped_clone_shows_host_root_as_the_range() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::getuid().is_root() {
            eprintln!("not root: skipped");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/f"), "x").unwrap();
        std::os::unix::fs::lchown(src.join("etc/f"), Some(5), Some(6)).unwrap();
        let dst = t.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        let range = IdRange::of_slot(3);
        let ns = namespace(range).unwrap();
        crate::test_support::private_mount_namespace();
        idmapped_clone(&src, &dst, &ns).unwrap();
        let m = std::fs::metadata(dst.join("etc/f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (range.first + 5, range.first + 6));
        assert_eq!(std::fs::metadata(&dst).unwrap().uid(), range.first);
        let e = std::fs::write(dst.join("etc/g"), "y").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::ROFS.raw_os_error()),
            "{e}"
        );
        // The source is untouched.
        assert_eq!(std::fs::metadata(src.join("etc/f")).unwrap().uid(), 5);
    }
}
