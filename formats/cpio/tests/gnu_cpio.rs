//! Archives checked by GNU cpio.

use std::io::Write;
use std::process::{Command, Stdio};

use herd_fstree::{Meta, Node, Tree};

fn tree() -> Tree {
    let mut t = Tree::new();
    t.insert_file("init", b"#!/bin/sh\necho hi\n".to_vec(), 0o755)
        .unwrap();
    t.insert_file("etc/herd/initrd-modules", b"a.ko\n".to_vec(), 0o644)
        .unwrap();
    t.insert_file("empty", Vec::new(), 0o600).unwrap();
    let big: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect();
    t.insert_file("lib/modules/big.ko", big, 0o644).unwrap();
    t.insert_symlink("bin", "usr/bin").unwrap();
    t.insert(
        "dev/console",
        Node::CharDev {
            meta: Meta::new(0o600),
            major: 5,
            minor: 1,
        },
    )
    .unwrap();
    t.mkdir_p("proc").unwrap();
    t.set_mtime_all(1_700_000_000);
    t
}

fn archive() -> Vec<u8> {
    let mut out = Vec::new();
    let n = herd_cpio::write_newc(&tree(), &mut out).unwrap();
    assert_eq!(n as usize, out.len());
    out
}

fn cpio(args: &[&str], dir: &std::path::Path, input: &[u8]) -> String {
    let mut c = Command::new("cpio")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("GNU cpio not runnable: apt-get install cpio");
    c.stdin.take().unwrap().write_all(input).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cpio {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gnu_cpio_lists_and_extracts() {
    let a = archive();
    assert_eq!(a, archive(), "not deterministic");
    let dir = tempfile::tempdir().unwrap();
    let list = cpio(&["-itv", "--quiet"], dir.path(), &a);
    let line = |name: &str| {
        list.lines()
            .find(|l| l.ends_with(name) || l.contains(&format!(" {name} -> ")))
            .unwrap_or_else(|| panic!("{name} missing from listing:\n{list}"))
            .to_string()
    };
    assert!(line("init").starts_with("-rwxr-xr-x"), "{list}");
    assert!(line("dev/console").starts_with("crw-------"), "{list}");
    assert!(line("dev/console").contains("5,"), "{list}");
    assert!(line("bin").starts_with("lrwxrwxrwx"), "{list}");
    assert!(line("lib/modules/big.ko").contains("300001"), "{list}");
    assert!(line("proc").starts_with("drwxr-xr-x"), "{list}");

    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let body: Vec<u8> = {
        // Devices cannot be made without privileges: extract everything else.
        let mut t = tree();
        t.remove("dev/console");
        let mut v = Vec::new();
        herd_cpio::write_newc(&t, &mut v).unwrap();
        v
    };
    cpio(&["-idm", "--no-absolute-filenames", "--quiet"], &x, &body);
    for (p, n) in tree().walk() {
        if let Node::File { data, .. } = n {
            assert_eq!(std::fs::read(x.join(&p)).unwrap(), &data[..], "{p}");
        }
    }
    assert_eq!(
        std::fs::read_link(x.join("bin")).unwrap().to_str(),
        Some("usr/bin")
    );
}
