//! ESP images checked by fsck.fat and mtools.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::process::Command;

use herd_esp::{list, read_file, write_fat32, EspOptions, Window};
use herd_fstree::Tree;

const MIB: u64 = 1024 * 1024;

fn tree() -> Tree {
    let mut t = Tree::new();
    let big: Vec<u8> = (0..9_000_017u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    t.insert_file("EFI/BOOT/BOOTX64.EFI", b"MZ fake efi".to_vec(), 0o644)
        .unwrap();
    t.insert_file("EFI/herd/a/linux", big, 0o644).unwrap();
    t.insert_file("loader/loader.conf", b"timeout 0\n".to_vec(), 0o644)
        .unwrap();
    t.insert_file(
        "loader/entries/herd-a+3-0.conf",
        b"title herd\n".to_vec(),
        0o644,
    )
    .unwrap();
    t
}

fn opts(size: u64) -> EspOptions {
    EspOptions {
        size_bytes: size,
        volume_id: 0x1234_abcd,
        label: *b"ESP        ",
        mtime: 1_700_000_000,
    }
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}: install dosfstools and mtools"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn fsck_and_mtools_read_it_and_it_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("esp.img");
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let t0 = std::time::Instant::now();
    write_fat32(&tree(), &opts(64 * MIB), &mut f).unwrap();
    eprintln!(
        "64 MiB ESP with 9 MB of files written in {:?}",
        t0.elapsed()
    );
    let ps = p.to_str().unwrap();
    let (ok, out) = run("fsck.fat", &["-n", "-v", ps]);
    assert!(ok, "{out}");
    assert!(out.contains("32 bit entries"), "not FAT32: {out}");
    let (ok, out) = run("mdir", &["-i", ps, "::/loader/entries"]);
    assert!(ok && out.contains("herd-a+3-0.conf"), "{out}");
    let (ok, out) = run("mtype", &["-i", ps, "::/loader/loader.conf"]);
    assert!(ok && out == "timeout 0\n", "{out:?}");
    let copy = dir.path().join("linux");
    let (ok, out) = run(
        "mcopy",
        &["-i", ps, "::/EFI/herd/a/linux", copy.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let herd_fstree::Node::File { data, .. } = tree().get("EFI/herd/a/linux").unwrap().clone()
    else {
        panic!()
    };
    assert!(std::fs::read(&copy).unwrap() == data[..]);
    let (ok, out) = run("mdir", &["-i", ps, "::/loader"]);
    assert!(
        ok && out.contains("2023-11-14"),
        "timestamps should be the given mtime: {out}"
    );

    let mut again = std::io::Cursor::new(Vec::new());
    write_fat32(&tree(), &opts(64 * MIB), &mut again).unwrap();
    assert!(
        std::fs::read(&p).unwrap() == again.into_inner(),
        "two writes differ"
    );

    assert_eq!(
        list(&mut f, "loader/entries").unwrap(),
        vec!["herd-a+3-0.conf"]
    );
    assert_eq!(
        read_file(&mut f, "loader/loader.conf").unwrap(),
        b"timeout 0\n"
    );
}

#[test]
fn window_inside_a_disk_leaves_the_rest_alone() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    let len = 34 * MIB;
    std::fs::write(&p, vec![0x5a; (len + 2 * MIB) as usize]).unwrap();
    let mut f = File::options().read(true).write(true).open(&p).unwrap();
    {
        let mut w = Window::new(&mut f, MIB, len);
        write_fat32(&tree(), &opts(len), &mut w).unwrap();
        assert_eq!(
            read_file(&mut w, "loader/loader.conf").unwrap(),
            b"timeout 0\n"
        );
    }
    let mut all = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut all).unwrap();
    assert!(all[..MIB as usize].iter().all(|&b| b == 0x5a));
    assert!(all[(MIB + len) as usize..].iter().all(|&b| b == 0x5a));
    // fsck.fat has no offset option: check a copy of the window.
    let part = dir.path().join("part.img");
    std::fs::write(&part, &all[MIB as usize..(MIB + len) as usize]).unwrap();
    let (ok, out) = run("fsck.fat", &["-n", part.to_str().unwrap()]);
    assert!(ok, "{out}");
}

#[test]
fn too_small_and_full_are_clear_errors() {
    let e = write_fat32(
        &tree(),
        &opts(8 * MIB),
        &mut std::io::Cursor::new(Vec::new()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("too small for FAT32"), "{e}");
    let mut t = tree();
    t.insert_file("EFI/huge", vec![1u8; 40 * MIB as usize], 0o644)
        .unwrap();
    let e = write_fat32(&t, &opts(40 * MIB), &mut std::io::Cursor::new(Vec::new())).unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
}
