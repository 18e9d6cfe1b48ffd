//! Copying a directory tree (files with their permission bits, symlinks
//! as links): seeding `/etc` from the image's factory defaults, and giving
//! a container a writable copy of its image root.

use std::fs;
use std::path::Path;

/// Copies the tree at `from` into `to` (created when missing); returns
/// the number of files and links copied.
pub fn copy(from: &Path, to: &Path) -> std::io::Result<u32> {
    let mut n = 0;
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_dir() {
            n += copy(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
            n += 1;
        } else {
            fs::copy(&src, &dst)?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn copies_files_dirs_and_links() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::create_dir_all(a.join("d")).unwrap();
        std::fs::write(a.join("d/f"), "x").unwrap();
        std::os::unix::fs::symlink("d/f", a.join("l")).unwrap();
        let b = t.path().join("b");
        assert_eq!(super::copy(&a, &b).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(b.join("l")).unwrap(), "x");
    }
}
