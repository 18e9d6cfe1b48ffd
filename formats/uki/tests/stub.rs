//! Against Debian's real systemd-stub and systemd-measure (package
//! systemd-boot-efi and systemd): the UKI's sections read back, objdump
//! agrees with the layout, and the PCR 11 prediction equals what
//! `systemd-measure calculate` prints for the same sections.

use std::path::Path;
use std::process::Command;

use herd_uki::{assemble, predict_pcr11, sections, UkiParts, PHASES};

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const MEASURE: &str = "/lib/systemd/systemd-measure";

fn stub() -> Vec<u8> {
    std::fs::read(STUB)
        .unwrap_or_else(|e| panic!("{STUB}: {e}: install systemd-boot-efi (scripts/setup.sh does)"))
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn measure(dir: &Path, p: &UkiParts<'_>) -> Vec<String> {
    let files = [
        ("linux", p.linux),
        ("osrel", p.osrel),
        ("cmdline", p.cmdline),
        ("initrd", p.initrd),
    ];
    let mut c = Command::new(MEASURE);
    c.args(["calculate", "--bank=sha256"]);
    for (n, data) in files {
        let f = dir.join(n);
        std::fs::write(&f, data).unwrap();
        c.arg(format!("--{n}={}", f.display()));
    }
    let out = c.output().expect("run systemd-measure (package systemd)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.trim_start_matches("11:sha256=").to_string())
        .collect()
}

#[test]
fn uki_sections_and_pcr11_agree_with_systemd_measure() {
    let tmp = tempfile::tempdir().unwrap();
    let linux = bytes(3_000_001, 1);
    let initrd = bytes(777_777, 2);
    let p = UkiParts {
        osrel: b"ID=herd\nIMAGE_ID=herd\nIMAGE_VERSION=0.1.0\n",
        cmdline: b"usrhash=00 herd.slot=a console=ttyS0",
        linux: &linux,
        initrd: &initrd,
    };
    let stub = stub();
    let uki = assemble(&stub, &p).unwrap();
    // Read back: the stub's own sections are kept, ours follow with exact sizes.
    let s = sections(&uki).unwrap();
    let names: Vec<&str> = s.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(
        &names[names.len() - 4..],
        [".osrel", ".cmdline", ".linux", ".initrd"]
    );
    assert_eq!(UkiParts::from_uki(&uki).unwrap().linux, &linux[..]);
    assert_eq!(UkiParts::from_uki(&uki).unwrap().initrd, &initrd[..]);
    // objdump (binutils) parses it and sees the same sizes.
    let f = tmp.path().join("uki.efi");
    std::fs::write(&f, &uki).unwrap();
    let od = Command::new("objdump").arg("-h").arg(&f).output().unwrap();
    let text = String::from_utf8_lossy(&od.stdout);
    assert!(od.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(".linux") && l.contains(&format!("{:08x}", linux.len()))),
        "{text}"
    );
    // The prediction equals systemd-measure's, phase by phase.
    let want = measure(tmp.path(), &p);
    let got = predict_pcr11(&UkiParts::from_uki(&uki).unwrap());
    assert_eq!(want.len(), PHASES.len());
    let got_hex: Vec<String> = got.phases.iter().map(|(_, v)| hex::encode(v)).collect();
    assert_eq!(got_hex, want);
    // A different command line gives a different PCR 11.
    let other = UkiParts {
        cmdline: b"usrhash=00 herd.slot=a console=ttyS0 quiet",
        ..p
    };
    assert_ne!(predict_pcr11(&other), got);
    assert_ne!(measure(tmp.path(), &other), want);
}

#[test]
fn refuses_a_stub_that_is_already_a_uki() {
    let p = UkiParts {
        osrel: b"ID=herd\n",
        cmdline: b"x",
        linux: b"k",
        initrd: b"i",
    };
    let uki = assemble(&stub(), &p).unwrap();
    let e = assemble(&uki, &p).unwrap_err().to_string();
    assert!(e.contains("already has a .osrel section"), "{e}");
}
