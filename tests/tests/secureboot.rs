//! Secure Boot, under QEMU with OVMF's Secure Boot firmware: a herd key
//! (made with openssl) signs the UKI and systemd-boot (sbsign, package
//! sbsigntool); its certificate is enrolled as PK, KEK and db in a copy of
//! OVMF's variables (herd_qemu::secureboot). The signed boot chain comes up
//! with the kernel reporting Secure Boot on, and the measured PCRs are
//! unchanged by the signature; an unsigned UKI is refused by the firmware.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herd_qemu::{secureboot, OnReboot, Vm, VmConfig};
use herd_tests::*;

const BOOT: Duration = Duration::from_secs(180);

fn image() -> PathBuf {
    let dir = target_dir()
        .join("e2e")
        .join(format!("secureboot-{}", std::process::id()));
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

fn sign(key: &Path, cert: &Path, input: &Path, output: &Path) {
    run_ok(
        Command::new("sbsign")
            .arg("--key")
            .arg(key)
            .arg("--cert")
            .arg(cert)
            .arg("--output")
            .arg(output)
            .arg(input),
    );
    run_ok(Command::new("sbverify").arg("--cert").arg(cert).arg(output));
}

fn mcopy(disk: &Path, file: &Path, to: &str) {
    run_ok(
        Command::new("mcopy")
            .args(["-o", "-i"])
            .arg(format!("{}@@1M", disk.display()))
            .arg(file)
            .arg(to),
    );
}

fn boot(disk: &Path, vars: &Path, log: &Path) -> Vm {
    let mut cfg = VmConfig::new(disk.to_path_buf());
    cfg.on_reboot = OnReboot::Exit;
    cfg.memory_mib = 512;
    cfg.tpm = true;
    cfg.secure_boot = true;
    cfg.ovmf_code = secureboot::OVMF_CODE_SECBOOT.into();
    cfg.ovmf_vars_template = vars.to_path_buf();
    Vm::start(&cfg, log).expect("start QEMU")
}

#[test]
fn signed_uki_boots_and_an_unsigned_one_is_refused() {
    let out = image();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (key, cert, der) = (t.join("db.key"), t.join("db.crt"), t.join("db.der"));
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            ])
            .args(["-days", "3650", "-subj", "/CN=herd test secure boot key/"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    run_ok(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .arg("-out")
            .arg(&der),
    );
    let vars = t.join("OVMF_VARS_herd.fd");
    let template = fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd").expect("package ovmf");
    fs::write(
        &vars,
        secureboot::enroll(&template, &fs::read(&der).unwrap()).unwrap(),
    )
    .unwrap();

    let (uki, sd_boot) = (t.join("uki.efi"), t.join("BOOTX64.EFI"));
    sign(&key, &cert, &out.join("boot/uki-a.efi"), &uki);
    sign(&key, &cert, &out.join("boot/BOOTX64.EFI"), &sd_boot);
    // The signature does not change what systemd-stub measures.
    let predicted = run_ok(Command::new(herd()).args(["pcr", "predict"]).arg(&uki));
    assert_eq!(
        predicted,
        run_ok(
            Command::new(herd())
                .args(["pcr", "predict"])
                .arg(out.join("boot/uki-a.efi"))
        )
        .replace(
            &out.join("boot/uki-a.efi").display().to_string(),
            &uki.display().to_string()
        )
    );

    // Signed systemd-boot and UKI: boots, Secure Boot on.
    let disk = t.join("disk.raw");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(out.join("disk.raw"))
            .arg(&disk),
    );
    mcopy(&disk, &sd_boot, "::/EFI/BOOT/BOOTX64.EFI");
    mcopy(&disk, &uki, "::/EFI/Linux/herd-a+3-0.efi");
    let vm = boot(&disk, &vars, &t.join("signed.log"));
    vm.wait_for("secureboot: Secure boot enabled", BOOT)
        .unwrap();
    vm.wait_for("herd-init: ready slot=a", BOOT).unwrap();
    vm.kill();

    // The same, with the UKI left unsigned: the firmware refuses to load it.
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(out.join("disk.raw"))
            .arg(&disk),
    );
    mcopy(&disk, &sd_boot, "::/EFI/BOOT/BOOTX64.EFI");
    let vm = boot(&disk, &vars, &t.join("unsigned.log"));
    let (_, line) = vm
        .wait_for_any(&["Security Violation", "Access Denied", "herd-init:"], BOOT)
        .unwrap();
    vm.kill();
    assert!(
        !line.contains("herd-init:"),
        "an unsigned UKI booted: {line}"
    );
    let _ = fs::remove_dir_all(&out);
}
