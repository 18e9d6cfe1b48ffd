//! Loading kernel modules from a list file (one path per line, in order).

use std::fs::File;

use crate::{info, sys};

/// Loads every module listed in `list`; returns how many were loaded.
/// The list holds one path per line, dependencies first; empty lines
/// separate groups that share no module. With `side_by_side`, each group
/// after the first is loaded on a thread of its own (module loading is
/// mostly signature checks and device probes, which then overlap); that is
/// for the boot's critical path, since every thread leaves heap arenas
/// behind in a long-lived process. Modules already present are fine; other
/// failures are logged.
pub fn load_list(list: &str, side_by_side: bool) -> usize {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) => {
            info!("no module list {list}: {e}");
            return 0;
        }
    };
    let groups = groups(&text);
    if !side_by_side {
        return groups.iter().map(|g| load_group(g)).sum();
    }
    std::thread::scope(|s| {
        let others: Vec<_> = groups
            .iter()
            .skip(1)
            .map(|g| s.spawn(move || load_group(g)))
            .collect();
        let first = groups.first().map_or(0, |g| load_group(g));
        first
            + others
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .sum::<usize>()
    })
}

/// Loads the group of `list` that holds the module `name` (a file stem),
/// dependencies first; returns how many were loaded. For a step that needs
/// one module early, while [`load_list`] loads the rest (a module loaded
/// twice at once is loaded once: the other load finds it present).
pub fn load_group_of(list: &str, name: &str) -> usize {
    let Ok(text) = std::fs::read_to_string(list) else {
        return 0;
    };
    group_of(&text, name).map_or(0, |g| load_group(&g))
}

/// The group of a module list that holds the module `name`.
fn group_of<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    groups(text)
        .into_iter()
        .find(|g| g.iter().any(|p| stem(p) == name))
}

/// The groups of a module list: runs of non-empty lines.
fn groups(text: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines().map(str::trim) {
        match (line.is_empty(), out.last_mut()) {
            (true, Some(last)) if !last.is_empty() => out.push(Vec::new()),
            (false, Some(last)) => last.push(line),
            _ => {}
        }
    }
    out.retain(|g| !g.is_empty());
    out
}

fn load_group(paths: &[&str]) -> usize {
    paths.iter().filter(|p| load(p)).count()
}

/// Loads the modules named `names` (file stems, e.g. `qemu_fw_cfg`) from
/// the `herd-modules` lists in `root`/usr/lib/modules/*/, in list order
/// (dependencies first); returns how many were loaded. Names the image does
/// not ship are skipped. `root` is `/` in the real root, `/sysroot` from
/// the initramfs.
pub fn load_named(root: &str, names: &[&str]) -> usize {
    let root = root.trim_end_matches('/');
    let mut n = 0;
    for list in image_lists(root) {
        let Ok(text) = std::fs::read_to_string(list) else {
            continue;
        };
        for path in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !names.contains(&stem(path)) {
                continue;
            }
            n += usize::from(load(&format!("{root}{path}")));
        }
    }
    n
}

/// The image's /usr module lists under `root` (`/` in the real root,
/// `/sysroot` from the initramfs): `usr/lib/modules/<release>/herd-modules`,
/// one per kernel release the image ships.
pub fn image_lists(root: &str) -> Vec<std::path::PathBuf> {
    let root = root.trim_end_matches('/');
    let Ok(rd) = std::fs::read_dir(format!("{root}/usr/lib/modules")) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path().join("herd-modules"))
        .filter(|p| p.exists())
        .collect()
}

/// The module name of a path: its file stem.
fn stem(path: &str) -> &str {
    path.rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".ko")
}

/// Loads one module unless the kernel has it already (checked first: the
/// kernel would verify the module's signature before saying so). True when
/// it was loaded now.
fn load(path: &str) -> bool {
    let name = stem(path).replace('-', "_");
    if std::path::Path::new(&format!("/sys/module/{name}/initstate")).exists() {
        return false;
    }
    match File::open(path).and_then(|f| sys::finit_module(&f)) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            info!("cannot load module {path}: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{group_of, groups};

    #[test]
    fn the_group_of_a_module_brings_its_dependencies() {
        let list =
            "/m/virtio.ko\n/m/virtio_pci.ko\n\n/m/dm-mod.ko\n/m/dm-verity.ko\n\n/m/efivarfs.ko\n";
        assert_eq!(group_of(list, "efivarfs"), Some(vec!["/m/efivarfs.ko"]));
        assert_eq!(
            group_of(list, "dm-verity"),
            Some(vec!["/m/dm-mod.ko", "/m/dm-verity.ko"])
        );
        assert_eq!(group_of(list, "efivar"), None);
        assert_eq!(group_of("", "efivarfs"), None);
    }

    #[test]
    fn lists_split_into_groups_at_empty_lines() {
        assert_eq!(groups(""), Vec::<Vec<&str>>::new());
        assert_eq!(groups("a\nb\n"), vec![vec!["a", "b"]]);
        assert_eq!(
            groups("a\nb\n\nc\n\n\n d \ne\n\n"),
            vec![vec!["a", "b"], vec!["c"], vec!["d", "e"]]
        );
        assert_eq!(groups("\n\na\n"), vec![vec!["a"]]);
    }
}
