//! `herd vm libvirt-xml`: the domain it prints passes libvirt's own schema
//! check (`virt-xml-validate`, libvirt-clients) for raw and qcow2 disks,
//! with and without a TPM, with port forwards (passt), and with a path
//! that needs escaping.

use std::path::Path;
use std::process::Command;

use herd_tests::*;

fn validate(xml: &str, dir: &Path) -> (bool, String) {
    let f = dir.join("domain.xml");
    std::fs::write(&f, xml).unwrap();
    let out = run(Command::new("virt-xml-validate").arg(&f).arg("domain"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn domains_validate() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("a & b");
    std::fs::create_dir(&d).unwrap();
    let raw = d.join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let qcow = d.join("disk.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow)
            .arg("64M"),
    );
    let node = d.join("node.toml");
    std::fs::write(&node, "hostname = \"node-1\"\n").unwrap();
    let node = node.to_str().unwrap();
    for (disk, extra, want) in [
        (&raw, vec![], "type='raw'"),
        (
            &raw,
            vec!["--config", node],
            "<entry name='opt/herd/config' file=",
        ),
        (&qcow, vec!["--tpm"], "tpm-crb"),
        (
            &qcow,
            vec![
                "--kvm", "--name", "node-1", "--memory", "2048", "--cpus", "4",
            ],
            "<domain type='kvm'>",
        ),
        (
            &raw,
            vec!["--forward", "8080:80", "--forward", "2222:22"],
            "<range start='2222' to='22'/>",
        ),
    ] {
        let xml = run_ok(
            Command::new(herd())
                .args(["vm", "libvirt-xml"])
                .arg(disk)
                .args(&extra),
        );
        assert!(xml.contains(want), "{want} in {xml}");
        assert!(xml.contains("a &amp; b/disk."), "{xml}");
        let (ok, text) = validate(&xml, t.path());
        assert!(ok, "virt-xml-validate refused {extra:?}: {text}\n{xml}");
    }
    // A block device is a <disk type='block'> (loop device, when this
    // test may create one).
    match Command::new("losetup")
        .arg("--show")
        .arg("-f")
        .arg(&raw)
        .output()
    {
        Ok(o) if o.status.success() => {
            let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let out = run(Command::new(herd()).args(["vm", "libvirt-xml", &dev]));
            let _ = Command::new("losetup").args(["-d", &dev]).status();
            let xml = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(xml.contains(&format!("<source dev='{dev}'/>")), "{xml}");
            let (ok, text) = validate(&xml, t.path());
            assert!(
                ok,
                "virt-xml-validate refused the block device domain: {text}\n{xml}"
            );
        }
        other => eprintln!("skipping the block device case: losetup unavailable ({other:?})"),
    }
    // The referee does refuse a broken domain.
    let xml = run_ok(Command::new(herd()).args(["vm", "libvirt-xml"]).arg(&raw));
    let (ok, _) = validate(&xml.replace("<vcpu>2</vcpu>", "<vcpu>two</vcpu>"), t.path());
    assert!(!ok, "virt-xml-validate accepted a broken domain");
}

#[test]
fn bad_input_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let fails = |args: &[&str], msg: &str| {
        let o = run(Command::new(herd()).args(["vm", "libvirt-xml"]).args(args));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains(msg), "{args:?}: {err}");
    };
    fails(&["/nonexistent/disk.raw"], "/nonexistent/disk.raw");
    let disk = t.path().join("d.raw");
    std::fs::write(&disk, b"x").unwrap();
    let disk = disk.to_str().unwrap();
    fails(&[disk, "--cpus", "0"], "--cpus must be at least 1");
    fails(&[disk, "--name", "a/b"], "without '/'");
    fails(&[disk, "--forward", "8080"], "must look like 8080:80");
    fails(&[disk, "--forward", "0:80"], "ports must be 1-65535");
    // A directory is not a disk.
    fails(&[t.path().to_str().unwrap()], t.path().to_str().unwrap());
}
