//! Images checked by the referee, unsquashfs (squashfs-tools).

use std::process::Command;

use herd_fstree::{Meta, Node, Tree};
use herd_squashfs::{write, Options};

fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn tree() -> Tree {
    let bs = 128 * 1024;
    let mut t = Tree::new();
    t.insert_file("empty", Vec::new(), 0o644).unwrap();
    t.insert_file("under", noise(bs - 1, 1), 0o644).unwrap();
    t.insert_file("at", noise(bs, 2), 0o600).unwrap();
    t.insert_file("over", noise(bs + 1, 3), 0o755).unwrap();
    t.insert_file("big/random", noise(3 * 1024 * 1024 + 17, 4), 0o644)
        .unwrap();
    t.insert_file("big/zeros", vec![0u8; 2 * bs + 5], 0o644)
        .unwrap();
    t.insert_file("big/text", b"hello herd\n".repeat(40_000), 0o644)
        .unwrap();
    t.insert_file("dup/one", noise(5000, 9), 0o644).unwrap();
    t.insert_file("dup/two", noise(5000, 9), 0o644).unwrap();
    for i in 0..320 {
        t.insert_file(
            &format!("many/file-{i:04}"),
            format!("small file {i}\n").into_bytes(),
            0o644,
        )
        .unwrap();
    }
    t.mkdir_p("a/b/c/d/empty-dir").unwrap();
    t.insert_symlink("a/link", "../big/random").unwrap();
    t.insert(
        "dev-console",
        Node::CharDev {
            meta: Meta::new(0o600),
            major: 5,
            minor: 1,
        },
    )
    .unwrap();
    t.insert(
        "dev-vda",
        Node::BlockDev {
            meta: Meta::new(0o660),
            major: 254,
            minor: 3,
        },
    )
    .unwrap();
    t.insert(
        "owned",
        Node::File {
            meta: Meta {
                mode: 0o640,
                uid: 1000,
                gid: 100,
                mtime: 0,
            },
            data: b"mine\n".to_vec().into(),
        },
    )
    .unwrap();
    t.set_mtime_all(1_700_000_000);
    t
}

fn image(t: &Tree) -> Vec<u8> {
    let mut out = Vec::new();
    let s = write(
        t,
        &Options {
            mkfs_time: 1_700_000_000,
            ..Options::default()
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(s.bytes_written as usize, out.len());
    assert_eq!(out.len() % 4096, 0);
    out
}

fn unsquashfs(args: &[&str]) -> String {
    let out = Command::new("unsquashfs")
        .args(args)
        .output()
        .expect("unsquashfs not runnable: apt-get install squashfs-tools");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "unsquashfs {args:?}: {text}");
    text
}

#[test]
fn unsquashfs_reads_everything() {
    let t = tree();
    let img = image(&t);
    assert!(img == image(&t), "two writes differ");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img.sqfs");
    std::fs::write(&p, &img).unwrap();
    let ps = p.to_str().unwrap();

    let s = unsquashfs(&["-s", ps]);
    assert!(s.contains("zstd"), "{s}");
    assert!(s.contains("Block size 131072"), "{s}");
    assert!(
        s.contains(&format!("Number of inodes {}", t.walk().len() + 1)),
        "{s}"
    );

    let l = unsquashfs(&["-lln", ps]);
    let line = |name: &str| {
        l.lines()
            .find(|x| {
                x.ends_with(&format!("squashfs-root/{name}"))
                    || x.contains(&format!("squashfs-root/{name} -> "))
            })
            .unwrap_or_else(|| panic!("{name} not listed:\n{l}"))
            .to_string()
    };
    assert!(
        line("over").starts_with("-rwxr-xr-x 0/0"),
        "{}",
        line("over")
    );
    assert!(
        line("over").contains(&format!(" {} ", 128 * 1024 + 1)),
        "{}",
        line("over")
    );
    assert!(
        line("owned").starts_with("-rw-r----- 1000/100"),
        "{}",
        line("owned")
    );
    assert!(
        line("a/link").contains("-> ../big/random"),
        "{}",
        line("a/link")
    );
    assert!(
        line("dev-console").starts_with("crw------- 0/0") && line("dev-console").contains("5,  1"),
        "{}",
        line("dev-console")
    );
    assert!(
        line("dev-vda").starts_with("brw-rw---- 0/0") && line("dev-vda").contains("254,  3"),
        "{}",
        line("dev-vda")
    );
    assert!(line("a/b/c/d/empty-dir").starts_with("drwxr-xr-x"));
    assert!(
        line("many/file-0319").contains("2023-11-14"),
        "{}",
        line("many/file-0319")
    );

    // Extract (no devices: not root-only) and compare every file.
    let x = dir.path().join("x");
    let mut no_dev = t.clone();
    no_dev.remove("dev-console");
    no_dev.remove("dev-vda");
    std::fs::write(&p, image(&no_dev)).unwrap();
    unsquashfs(&["-q", "-n", "-d", x.to_str().unwrap(), ps]);
    for (path, node) in no_dev.walk() {
        match node {
            Node::File { data, .. } => {
                assert!(
                    std::fs::read(x.join(&path)).unwrap() == data[..],
                    "{path} differs"
                )
            }
            Node::Dir(d) => assert_eq!(
                std::fs::read_dir(x.join(&path)).unwrap().count(),
                d.children.len(),
                "{path}"
            ),
            _ => {}
        }
    }
}

#[test]
fn bad_options_are_errors() {
    let t = tree();
    let e = write(
        &t,
        &Options {
            block_size: 5000,
            ..Options::default()
        },
        Vec::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("block size"), "{e}");
}
