//! Measured boot end to end, under QEMU with swtpm: the PCR 11 and PCR 15
//! values the guest's kernel reports (sysfs) and herd-init reads back equal
//! `herd pcr predict` for the image; herd-init's event log replays to them;
//! a UKI whose command line differs by one word gives another PCR 11,
//! again as predicted.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herd_qemu::{OnReboot, Vm, VmConfig};
use herd_tests::*;
use sha2::{Digest, Sha256};

const BOOT: Duration = Duration::from_secs(120);

fn probe_image() -> PathBuf {
    let dir = target_dir()
        .join("e2e")
        .join(format!("measured-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    run_ok(
        herd_build(
            &workspace().join("tests/images/probe.toml"),
            &dir,
            1_700_000_000,
        )
        .arg("--quiet"),
    );
    dir
}

/// `herd pcr predict --json PATH`: slot -> predictions.
fn predict(path: &Path) -> serde_json::Value {
    let out = run_ok(
        Command::new(herd())
            .args(["pcr", "predict", "--json"])
            .arg(path),
    );
    serde_json::from_str(&out).expect("JSON")
}

/// What the guest reported: (herd-init's PCR 11, PCR 15), (sysfs PCR 11,
/// PCR 15), the event log lines.
struct Seen {
    init: (String, String),
    sysfs: (String, String),
    events: Vec<String>,
}

fn boot_and_read(disk: &Path, log: &Path) -> Seen {
    let mut cfg = VmConfig::new(disk.to_path_buf());
    cfg.on_reboot = OnReboot::Exit;
    cfg.memory_mib = 512;
    cfg.tpm = true;
    let vm = Vm::start(&cfg, log).expect("start QEMU");
    let line = vm.wait_for("herd-init: measured boot:", BOOT).unwrap();
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=sha256:")))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_string()
    };
    let init = (field("pcr11"), field("pcr15"));
    let value = |l: String| l.split_whitespace().last().unwrap().to_ascii_lowercase();
    let p11 = value(vm.wait_for("probe: pcr11", BOOT).unwrap());
    let p15 = value(vm.wait_for("probe: pcr15", BOOT).unwrap());
    vm.wait_for(r#"probe: event {"pcr":11,"#, BOOT).unwrap();
    vm.wait_for(r#""data":"ready"}"#, BOOT).unwrap();
    let events = vm
        .lines()
        .iter()
        .filter_map(|l| l.split_once("probe: event ").map(|(_, e)| e.to_string()))
        .collect();
    vm.kill();
    Seen {
        init,
        sysfs: (p11, p15),
        events,
    }
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn pcrs_in_the_guest_equal_the_prediction_and_follow_the_command_line() {
    let image = probe_image();
    let tmp = tempfile::tempdir().unwrap();
    let want = predict(&image);
    let a = &want["a"];
    let disk = tmp.path().join("disk.raw");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(image.join("disk.raw"))
            .arg(&disk),
    );

    let seen = boot_and_read(&disk, &tmp.path().join("boot1.log"));
    let pcr11 = a["pcr11"].as_str().unwrap();
    let pcr15 = a["pcr15"].as_str().unwrap();
    assert_eq!(seen.init, (pcr11.to_string(), pcr15.to_string()));
    assert_eq!(seen.sysfs, (pcr11.to_string(), pcr15.to_string()));

    // The event log replays, from the stub's PCR 11 and a zero PCR 15, to
    // the values the TPM holds; it names the phases, the root hash, the slot.
    let events: Vec<serde_json::Value> = seen
        .events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let data: Vec<&str> = events.iter().map(|e| e["data"].as_str().unwrap()).collect();
    let usrhash = manifest(&image)["usr"]["usrhash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        data,
        [
            "enter-initrd",
            &format!("usrhash={usrhash}"),
            "slot=a",
            "leave-initrd",
            "sysinit",
            "ready"
        ]
    );
    let mut pcrs: BTreeMap<u64, [u8; 32]> = BTreeMap::new();
    pcrs.insert(11, hex32(a["pcr11_stub"].as_str().unwrap()));
    for e in &events {
        let d = Sha256::digest(e["data"].as_str().unwrap().as_bytes());
        assert_eq!(hex::encode(d), e["digest"].as_str().unwrap());
        let p = pcrs.entry(e["pcr"].as_u64().unwrap()).or_insert([0; 32]);
        *p = Sha256::new()
            .chain_update(*p)
            .chain_update(d)
            .finalize()
            .into();
    }
    assert_eq!(hex::encode(pcrs[&11]), pcr11);
    assert_eq!(hex::encode(pcrs[&15]), pcr15);

    // One more word on the command line: another PCR 11, the predicted one;
    // PCR 15 (what herd-init mounted) stays.
    let uki = tmp.path().join("quiet.efi");
    fs::write(
        &uki,
        uki_with_cmdline(&image.join("boot/uki-a.efi"), |c| format!("{c} herd.debug")),
    )
    .unwrap();
    let changed = predict(&uki);
    let pcr11b = changed["a"]["pcr11"].as_str().unwrap();
    assert_ne!(pcr11b, pcr11);
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(image.join("disk.raw"))
            .arg(&disk),
    );
    put_uki(&disk, &uki, "herd-a+3-0.efi");
    let seen = boot_and_read(&disk, &tmp.path().join("boot2.log"));
    assert_eq!(seen.init, (pcr11b.to_string(), pcr15.to_string()));
    assert_eq!(seen.sysfs, (pcr11b.to_string(), pcr15.to_string()));
    let _ = fs::remove_dir_all(&image);
}

/// swtpm on a TCP port of 127.0.0.1, killed on drop.
struct Swtpm {
    child: std::process::Child,
    port: u16,
    _state: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn swtpm() -> Swtpm {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sw = Swtpm {
        child: Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.path().display()))
            .args([
                "--server",
                &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
            ])
            .args([
                "--ctrl",
                &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start swtpm"),
        port,
        _state: dir,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return sw;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("swtpm did not listen");
}

/// `herd pcr verify` against a node played on swtpm: systemd-stub's
/// measurements of slot b's UKI and herd-init's events, extended for real,
/// reported as herd-agent reports them. The true report is good; a log
/// missing an event, or a node on slot a's PCRs claiming slot b, is not.
#[test]
fn verify_accepts_a_good_report_and_names_what_differs() {
    let image = default_image();
    let uki = fs::read(image.join("boot/uki-b.efi")).unwrap();
    let parts = herd_uki::UkiParts::from_uki(&uki).unwrap();
    let usrhash = manifest(image)["usr"]["usrhash"]
        .as_str()
        .unwrap()
        .to_string();
    let sw = swtpm();
    let conn = std::net::TcpStream::connect(("127.0.0.1", sw.port)).unwrap();
    let mut tpm = herd_tpm::Tpm::new(conn);
    for (name, data) in [
        (".linux", parts.linux),
        (".osrel", parts.osrel),
        (".cmdline", parts.cmdline),
        (".initrd", parts.initrd),
    ] {
        let n: [u8; 32] = Sha256::digest(format!("{name}\0").as_bytes()).into();
        tpm.pcr_extend(11, &n).unwrap();
        tpm.pcr_extend(11, &Sha256::digest(data).into()).unwrap();
    }
    let ev = |pcr, kind: &str, data: &str| herd_tpm::Event::new(pcr, kind, data);
    let events = [
        ev(11, "phase", "enter-initrd"),
        ev(15, "usrhash", &format!("usrhash={usrhash}")),
        ev(15, "slot", "slot=b"),
        ev(11, "phase", "leave-initrd"),
        ev(11, "phase", "sysinit"),
        ev(11, "phase", "ready"),
    ];
    let mut log = String::new();
    for e in &events {
        tpm.pcr_extend(e.pcr, &e.digest_bytes().unwrap()).unwrap();
        log.push_str(&(e.to_line() + "\n"));
    }
    let tmp = tempfile::tempdir().unwrap();
    let verify_with = |report: &herd_tpm::Report, extra: &[&str]| {
        let f = tmp.path().join("report.json");
        fs::write(&f, serde_json::to_vec(report).unwrap()).unwrap();
        run(Command::new(herd())
            .args(["pcr", "verify", "--report"])
            .arg(&f)
            .args(extra)
            .arg(image))
    };
    let verify = |report: &herd_tpm::Report| verify_with(report, &[]);
    let refused = |report: &herd_tpm::Report, extra: &[&str], why: &str| {
        let out = verify_with(report, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.contains(why), "{why:?} in {err}");
    };
    let nonce_hex = hex::encode(b"fleet nonce");
    let good = tpm.report(&log, Some(b"fleet nonce")).unwrap();
    let out = verify_with(&good, &["--nonce", &nonce_hex]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("good: slot b"), "{text}");
    assert!(
        text.contains("the quote (TPM reset count")
            && text.contains("covers the nonce and these PCRs and is signed by TPM key sha256:"),
        "{text}"
    );
    // The key is the same on every quote of this TPM: a verifier pins it.
    let q = good.quote.as_ref().unwrap();
    let ak = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(hex::decode(&q.public).unwrap()))
    );
    assert!(text.contains(&ak), "{text}");
    let again = tpm.report(&log, Some(b"second nonce")).unwrap();
    assert_eq!(again.quote.as_ref().unwrap().public, q.public);
    let out = verify_with(&again, &["--ak", &ak]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("(pinned)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "good" names what it did not check: freshness without --nonce, the
    // key without --ak; with both, nothing is left out.
    let stdout = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    let (with_ak, nonce_only) = (stdout(&out), text.to_string());
    assert!(
        with_ak.contains("\nnot checked: freshness (no --nonce")
            && !with_ak.contains("key identity"),
        "{with_ak}"
    );
    assert!(
        nonce_only.contains("\nnot checked: key identity (no --ak")
            && !nonce_only.contains("freshness"),
        "{nonce_only}"
    );
    let bare = verify(&good);
    assert!(bare.status.success(), "{}", stdout(&bare));
    assert!(
        stdout(&bare).contains("\nnot checked: freshness (no --nonce: this may be an old quote replayed); key identity (no --ak"),
        "{}",
        stdout(&bare)
    );
    let all = verify_with(&good, &["--nonce", &nonce_hex, "--ak", &ak]);
    assert!(
        all.status.success() && !stdout(&all).contains("not checked"),
        "{}",
        stdout(&all)
    );
    // A report without a quote is only the node's word: never "good".
    refused(
        &tpm.report(&log, None).unwrap(),
        &[],
        "not verified: the report carries no quote",
    );
    // What the quote check refuses, each with its reason.
    refused(
        &good,
        &["--nonce", &hex::encode(b"other nonce")],
        "not the one sent",
    );
    refused(
        &good,
        &["--ak", &format!("sha256:{}", "0".repeat(64))],
        "not the pinned",
    );
    refused(
        &tpm.report(&log, None).unwrap(),
        &["--nonce", &nonce_hex],
        "has no quote",
    );
    let mut forged = good.clone();
    {
        // One bit of the attested data changed (its extraData's last byte).
        let q = forged.quote.as_mut().unwrap();
        let mut a = hex::decode(&q.attest).unwrap();
        let at = a.windows(11).position(|w| w == b"fleet nonce").unwrap() + 10;
        a[at] ^= 1;
        q.attest = hex::encode(&a);
        q.nonce = hex::encode(&a[at - 10..=at]);
    }
    refused(&forged, &[], "signature does not verify");
    let mut lying = good.clone();
    lying.pcrs.insert(15, "00".repeat(32));
    refused(&lying, &[], "PCR 15");

    let mut short = good.clone();
    short.events.pop();
    let out = verify(&short);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("PCR 11") && err.contains("event log replays to"),
        "{err}"
    );

    let mut wrong = good.clone();
    for e in wrong.events.iter_mut().filter(|e| e.kind == "slot") {
        *e = ev(15, "slot", "slot=a");
    }
    let out = verify(&wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Slot a's stub value does not replay to the reported PCR 11.
    assert!(
        err.contains("PCR 11") && err.contains("replays to"),
        "{err}"
    );
    let _ = fs::remove_dir_all(image);
}
