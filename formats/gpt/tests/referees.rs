//! The written table checked by sfdisk and sgdisk, and read back.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::process::Command;

use herd_gpt::{attrs, guid_from_name, types, PartitionSpec, Table, Which};

const MIB: u64 = 1024 * 1024;

fn specs() -> Vec<PartitionSpec> {
    let p = |t, n: &str, mib: u64, a| PartitionSpec {
        type_guid: t,
        part_guid: guid_from_name("test", n),
        name: n.to_string(),
        size_bytes: mib * MIB,
        attributes: a,
    };
    vec![
        p(types::ESP, "esp", 8, 0),
        p(types::USR_X86_64, "usr-a", 4, attrs::READ_ONLY),
        p(
            types::USR_VERITY_X86_64,
            "usr-a-verity",
            1,
            attrs::READ_ONLY,
        ),
        p(types::VAR, "state", 3, attrs::GROWFS),
    ]
}

fn write_image(t: &Table, bytes: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(bytes).unwrap();
    let mut w = f.reopen().unwrap();
    t.write_to(&mut w).unwrap();
    f
}

fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} not runnable ({e}): install fdisk and gdisk"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed: {text}");
    text
}

#[test]
fn sfdisk_and_sgdisk_accept_the_table() {
    let disk = 18 * MIB;
    let t = Table::layout(guid_from_name("test", "disk"), disk, specs()).unwrap();
    let img = write_image(&t, disk);
    let path = img.path().to_str().unwrap();
    let v = tool("sfdisk", &["--verify", path]);
    assert!(v.contains("No errors detected"), "{v}");
    let g = tool("sgdisk", &["-v", path]);
    assert!(g.contains("No problems found"), "{g}");
    let json: serde_json::Value = serde_json::from_str(&tool("sfdisk", &["--json", path])).unwrap();
    let pt = &json["partitiontable"];
    assert_eq!(pt["label"], "gpt");
    assert_eq!(
        pt["id"].as_str().unwrap().to_lowercase(),
        guid_from_name("test", "disk").to_string()
    );
    let parts = pt["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4);
    for (p, s) in parts.iter().zip(specs()) {
        assert_eq!(p["name"], s.name.as_str());
        assert_eq!(
            p["type"].as_str().unwrap().to_lowercase(),
            s.type_guid.to_string()
        );
        assert_eq!(
            p["uuid"].as_str().unwrap().to_lowercase(),
            s.part_guid.to_string()
        );
        assert_eq!(p["start"].as_u64().unwrap() % 2048, 0);
        assert_eq!(p["size"].as_u64().unwrap() * 512, s.size_bytes);
    }
    assert!(
        parts[1]["attrs"].as_str().unwrap().contains("60"),
        "{}",
        parts[1]
    );
    assert!(
        parts[3]["attrs"].as_str().unwrap().contains("59"),
        "{}",
        parts[3]
    );
}

#[test]
fn read_back_and_fall_back_to_backup() {
    let disk = 18 * MIB;
    let t = Table::layout(guid_from_name("test", "disk"), disk, specs()).unwrap();
    let img = write_image(&t, disk);
    let mut f = File::open(img.path()).unwrap();
    let (r, which) = Table::read_detailed(&mut f, 512).unwrap();
    assert_eq!(r, t);
    assert_eq!(which, Which::Primary);

    let mut w = OpenOptions::new().write(true).open(img.path()).unwrap();
    w.seek(SeekFrom::Start(512 + 40)).unwrap();
    w.write_all(&[0xAB]).unwrap();
    drop(w);
    let (r, which) = Table::read_detailed(&mut File::open(img.path()).unwrap(), 512).unwrap();
    assert_eq!(r, t);
    assert!(
        matches!(which, Which::Backup(ref why) if why.contains("CRC")),
        "{which:?}"
    );

    // Damage the backup as well: no table, with both reasons.
    let mut w = OpenOptions::new().write(true).open(img.path()).unwrap();
    w.seek(SeekFrom::Start(disk - 512)).unwrap();
    w.write_all(b"garbage!").unwrap();
    drop(w);
    let e = Table::read_from(&mut File::open(img.path()).unwrap(), 512).unwrap_err();
    assert!(
        e.to_string().contains("primary") && e.to_string().contains("backup"),
        "{e}"
    );
}

#[test]
fn grown_disk_with_extended_state_passes_sgdisk() {
    let disk = 18 * MIB;
    let mut t = Table::layout(guid_from_name("test", "disk"), disk, specs()).unwrap();
    let img = write_image(&t, disk);
    let big = 40 * MIB;
    img.as_file().set_len(big).unwrap();
    t.grow_to(big / 512).unwrap();
    assert_eq!(t.extend_last_partition(), Some((3, true)));
    t.write_to(&mut img.reopen().unwrap()).unwrap();
    let g = tool("sgdisk", &["-v", img.path().to_str().unwrap()]);
    assert!(g.contains("No problems found"), "{g}");
    let r = Table::read_from(&mut File::open(img.path()).unwrap(), 512).unwrap();
    let (off, len) = r.partition_offset(3);
    assert_eq!(off + len, 39 * MIB);
    assert!(t.grow_to(10 * MIB / 512).is_err());
}

#[test]
fn layout_errors_say_sizes() {
    let e = Table::layout(guid_from_name("t", "d"), 8 * MIB, specs()).unwrap_err();
    assert!(e.to_string().contains("bytes"), "{e}");
    let mut s = specs();
    s[0].name = "x".repeat(37);
    assert!(Table::layout(guid_from_name("t", "d"), 64 * MIB, s).is_err());
}

/// A table rewritten in place with `write_durably` (new PARTUUIDs for one
/// slot, as herd-update does on the node's disk file) is one sfdisk and
/// sgdisk accept, with both copies agreeing.
#[test]
fn a_durable_rewrite_in_place_passes_sfdisk_and_sgdisk() {
    let disk = 18 * MIB;
    let t = Table::layout(guid_from_name("test", "disk"), disk, specs()).unwrap();
    let img = write_image(&t, disk);
    let mut new = t.clone();
    new.partitions[1].part_guid = guid_from_name("test", "usr-a-2");
    new.partitions[2].part_guid = guid_from_name("test", "usr-a-verity-2");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(img.path())
        .unwrap();
    new.write_durably(&mut f).unwrap();
    let path = img.path().to_str().unwrap();
    let v = tool("sfdisk", &["--verify", path]);
    assert!(v.contains("No errors detected"), "{v}");
    let g = tool("sgdisk", &["-v", path]);
    assert!(g.contains("No problems found"), "{g}");
    let (back, which) = Table::read_detailed(&mut f, 512).unwrap();
    assert_eq!(which, Which::Primary);
    assert_eq!(back, new);
}
