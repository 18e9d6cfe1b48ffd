//! Benchmark: herd-squashfs against mksquashfs on the same directory, in
//! the same run. Usage: `cargo run --release -p herd-squashfs --example bench -- DIR [OUT]`
//! Prints both times, sizes and the ratio.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use herd_fstree::{Meta, Node, Tree};

fn load(root: &Path, dir: &Path, t: &mut Tree) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
        let md = std::fs::symlink_metadata(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = (md.permissions().mode() & 0o7777) as u16;
        if md.is_dir() {
            t.mkdir_p(&rel).unwrap();
            if let Some(Node::Dir(_)) = t.get(&rel) {}
            load(root, &p, t);
        } else if md.is_file() {
            t.insert(
                &rel,
                Node::File {
                    meta: Meta::new(mode),
                    data: std::fs::read(&p).unwrap().into(),
                },
            )
            .unwrap();
        } else if md.file_type().is_symlink() {
            t.insert_symlink(&rel, std::fs::read_link(&p).unwrap().to_str().unwrap())
                .unwrap();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).expect("usage: bench DIR [OUT]"));
    let out = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "/tmp/herd-bench.sqfs".into());
    let mut t = Tree::new();
    load(dir, dir, &mut t);
    let opts = herd_squashfs::Options::default();
    let t0 = Instant::now();
    let mut img = Vec::new();
    let s = herd_squashfs::write(&t, &opts, &mut img).unwrap();
    std::fs::write(&out, &img).unwrap();
    let herd = t0.elapsed().as_secs_f64();
    let base_out = format!("{out}.mksquashfs");
    let t0 = Instant::now();
    let st = Command::new("mksquashfs")
        .args([
            dir.to_str().unwrap(),
            &base_out,
            "-comp",
            "zstd",
            "-noappend",
            "-quiet",
            "-no-progress",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let base = t0.elapsed().as_secs_f64();
    let base_size = std::fs::metadata(&base_out).unwrap().len();
    println!(
        "input: {} files, {:.1} MiB",
        t.walk().len(),
        t.file_bytes() as f64 / 1048576.0
    );
    println!(
        "herd-squashfs: {herd:.3} s, {:.2} MiB ({} inodes, {} fragments, {} duplicates)",
        s.bytes_written as f64 / 1048576.0,
        s.inodes,
        s.fragments,
        s.duplicates
    );
    println!(
        "mksquashfs -comp zstd: {base:.3} s, {:.2} MiB",
        base_size as f64 / 1048576.0
    );
    println!(
        "ratio herd/mksquashfs: time {:.2}x, size {:.3}x",
        herd / base,
        s.bytes_written as f64 / base_size as f64
    );
}
