//! First-boot provisioning end to end: a node configuration handed over
//! through QEMU's fw_cfg sets the host name and network and puts the static
//! pod and the trust policy in place, once; a broken configuration on a
//! CONFIG-labelled FAT disk is refused with its errors on the console, and
//! the node still boots to ready with the image's settings and no pods.
//! `herd config check` and `herd vm run --config` refuse the same broken file
//! offline. Provisioning closes after the first boot that reached ready: a
//! refused configuration, or none at all, is final, and a valid one handed
//! over on a later boot is not read. The files are checked inside the guest (a busybox probe) and on
//! the disk afterwards (debugfs reads STATE).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herd_qemu::{OnReboot, Vm, VmConfig};
use herd_tests::*;
use sha2::{Digest, Sha256};

const BOOT: Duration = Duration::from_secs(120);

/// An ed25519 public key (RFC 8032 test 1), as `herd key show` prints keys.
const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: web
    image: registry.example.com/team/web:1.0
    ports:
    - containerPort: 8080
";

fn good_config(hostname: &str) -> String {
    format!(
        "hostname = \"{hostname}\"\n\n[network]\nmode = \"static\"\naddress = \"10.0.2.20/24\"\ngateway = \"10.0.2.2\"\n\n\
         [images]\ninsecure_registries = [\"10.0.2.100:5000\"]\n\n\
         [[images.key]]\nname = \"ops\"\nkey = \"{KEY}\"\n\n\
         [[pod]]\nmanifest = \"\"\"\n{POD}\"\"\"\n\n[update]\nchannel = \"beta\"\nreboot = \"never\"\n"
    )
}

/// Two problems a node must report with their places: a bad host name on
/// line 1 and, on line 3, a pod no trusted key can sign (no [[images.key]],
/// and the test image carries no keys of its own).
const BROKEN: &str = "hostname = \"bad host!\"\n[[pod]]\nmanifest = \"\"\"\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: web\n    image: registry.example.com/team/web:1.0\n\"\"\"\n";

fn image() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = target_dir()
            .join("e2e")
            .join(format!("provision-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        run_ok(
            herd_build(
                &workspace().join("tests/images/provision.toml"),
                &dir,
                1_700_000_000,
            )
            .arg("--quiet"),
        );
        dir
    })
}

/// Removes the image built for this process when the last test is done.
struct Cleanup;
impl Drop for Cleanup {
    fn drop(&mut self) {
        static LEFT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(3);
        if LEFT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            let _ = fs::remove_dir_all(
                target_dir()
                    .join("e2e")
                    .join(format!("provision-{}", std::process::id())),
            );
        }
    }
}

fn disk_copy(dir: &Path) -> PathBuf {
    let d = dir.join("disk.raw");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(image().join("disk.raw"))
            .arg(&d),
    );
    d
}

fn boot(disk: &Path, log: &Path, tweak: impl FnOnce(&mut VmConfig)) -> Vm {
    let mut cfg = VmConfig::new(disk.to_path_buf());
    cfg.on_reboot = OnReboot::Exit;
    cfg.memory_mib = 512;
    tweak(&mut cfg);
    Vm::start(&cfg, log).expect("start QEMU")
}

fn power_off(vm: Vm) {
    vm.wait_for("herd-init: watching the power button", BOOT)
        .unwrap();
    vm.powerdown().unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
}

/// A file on the disk's STATE file system, read by debugfs (None if absent).
fn state_file(disk: &Path, tmp: &Path, path: &str) -> Option<String> {
    let state = tmp.join("state.img");
    if !state.exists() {
        let (off, len) = partition(&manifest(image()), "state");
        extract(disk, off, len, &state);
    }
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(&state));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "debugfs failed: {err}");
    if err.contains("File not found") {
        None
    } else {
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[test]
fn fw_cfg_configuration_is_applied_once() {
    let _c = Cleanup;
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(tmp.path());
    let config = tmp.path().join("node.toml");
    let text = good_config("node-7");
    fs::write(&config, &text).unwrap();
    let sha = sha256(&text);

    let vm = boot(&disk, &tmp.path().join("boot1.log"), |c| {
        c.config = Some(config.clone())
    });
    let applied = vm
        .wait_for("herd-provision: applied configuration", BOOT)
        .unwrap();
    assert!(
        applied.contains(&sha) && applied.contains("from fw_cfg opt/herd/config"),
        "{applied}"
    );
    assert!(
        applied.contains("hostname node-7") && applied.contains("1 pod (web)"),
        "{applied}"
    );
    vm.wait_for("herd-provision: wrote /etc/herd/pods/web.yaml", BOOT)
        .unwrap();
    vm.wait_for("herd-init: ready", BOOT).unwrap();
    // The provisioned host name beats the image's (probe-image), the
    // static address replaces DHCP's 10.0.2.15, the pod is where herd-agent
    // watches, byte for byte.
    vm.wait_for("probe: hostname node-7", BOOT).unwrap();
    vm.wait_for("probe: addr [10.0.2.20/24]", BOOT).unwrap();
    vm.wait_for(
        &format!("probe: pod /etc/herd/pods/web.yaml sha256 {}", sha256(POD)),
        BOOT,
    )
    .unwrap();
    vm.wait_for("probe: 1 pods", BOOT).unwrap();
    vm.wait_for(&format!("probe: marker [sha256={sha}]"), BOOT)
        .unwrap();
    power_off(vm);

    // On STATE: every file, as docs/PROVISIONING.md lists them.
    let st = |p: &str| state_file(&disk, tmp.path(), p);
    assert_eq!(st("/etc/herd/pods/web.yaml").as_deref(), Some(POD));
    assert_eq!(st("/etc/hostname").as_deref(), Some("node-7\n"));
    assert_eq!(
        st("/etc/herd/policy/keys/ops.pub").as_deref(),
        Some(format!("{KEY}\n").as_str())
    );
    let policy = st("/etc/herd/policy/policy.toml").unwrap();
    assert!(
        policy.contains("insecure_registries = [\"10.0.2.100:5000\"]"),
        "{policy}"
    );
    let init = st("/etc/herd/init.toml").unwrap();
    assert!(
        init.contains("hostname = \"node-7\"") && init.contains("10.0.2.20/24"),
        "{init}"
    );
    let update = st("/etc/herd/update.toml").unwrap();
    assert!(
        update.contains("channel = \"beta\"") && update.contains("reboot = \"never\""),
        "{update}"
    );
    assert!(st("/var/lib/herd/provisioned")
        .unwrap()
        .contains(&format!("sha256={sha}")));
    assert_eq!(
        st("/var/lib/herd/provisioning-closed").as_deref(),
        Some("outcome=applied\n")
    );
    fs::remove_file(tmp.path().join("state.img")).unwrap();

    // Second boot with another configuration: not read, nothing changes.
    fs::write(&config, good_config("other")).unwrap();
    let vm = boot(&disk, &tmp.path().join("boot2.log"), |c| {
        c.config = Some(config.clone())
    });
    vm.wait_for(
        "herd-init: provisioning: closed on an earlier boot (outcome applied); fw_cfg and CONFIG disks are not read",
        BOOT,
    )
    .unwrap();
    vm.wait_for("probe: hostname node-7", BOOT).unwrap();
    assert!(!vm.lines().iter().any(|l| l.contains("herd-provision:")));
    power_off(vm);
}

#[test]
fn broken_configuration_is_refused_and_the_node_stays_safe() {
    let _c = Cleanup;
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(tmp.path());
    // The configuration on a FAT file system labelled CONFIG, written by
    // dosfstools and mtools.
    let text_file = tmp.path().join("herd.toml");
    fs::write(&text_file, BROKEN).unwrap();
    let cfg_disk = tmp.path().join("config.img");
    fs::File::create(&cfg_disk)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    run_ok(
        Command::new("mkfs.vfat")
            .args(["-n", "CONFIG"])
            .arg(&cfg_disk),
    );
    run_ok(
        Command::new("mcopy")
            .arg("-i")
            .arg(&cfg_disk)
            .arg(&text_file)
            .arg("::herd.toml"),
    );

    let vm = boot(&disk, &tmp.path().join("boot.log"), |c| {
        c.extra_args.extend([
            "-drive".into(),
            format!(
                "if=virtio,format=raw,readonly=on,file={}",
                cfg_disk.display()
            ),
        ])
    });
    let e1 = vm
        .wait_for("herd-provision: ERROR: configuration from /dev/vdb", BOOT)
        .unwrap();
    assert!(
        e1.contains("(vfat labelled CONFIG)")
            && e1.contains("line 1, column 12")
            && e1.contains("\"bad host!\" is not a valid host name"),
        "{e1}"
    );
    let refused = vm
        .wait_for("herd-provision: the configuration was refused", BOOT)
        .unwrap();
    assert!(
        refused.contains("2 problems") && refused.contains("nothing was applied"),
        "{refused}"
    );
    let lines = vm.lines();
    assert!(
        lines.iter().any(|l| l.contains("line 3, column 12")
            && l.contains("no [[images.key]] is configured and the image carries no trusted keys")),
        "{lines:#?}"
    );
    // Safe state: boots to ready with the image's host name and DHCP, no
    // pods, no marker (a fixed configuration is applied on a later boot).
    vm.wait_for("herd-init: ready", BOOT).unwrap();
    vm.wait_for("probe: hostname probe-image", BOOT).unwrap();
    vm.wait_for("probe: addr [10.0.2.15/24]", BOOT).unwrap();
    vm.wait_for("probe: 0 pods", BOOT).unwrap();
    vm.wait_for("probe: marker []", BOOT).unwrap();
    vm.wait_for(
        "herd-init: provisioning: closed (outcome refused): later boots read no fw_cfg and no CONFIG disk",
        BOOT,
    )
    .unwrap();
    power_off(vm);
    assert_eq!(
        state_file(&disk, tmp.path(), "/var/lib/herd/provisioned"),
        None
    );
    assert_eq!(state_file(&disk, tmp.path(), "/etc/herd/init.toml"), None);
    assert_eq!(
        state_file(&disk, tmp.path(), "/var/lib/herd/provisioning-closed").as_deref(),
        Some("outcome=refused\n")
    );

    // A refusal is final: a valid configuration on a later boot is not read.
    let config = tmp.path().join("node.toml");
    fs::write(&config, good_config("node-7")).unwrap();
    let vm = boot(&disk, &tmp.path().join("boot2.log"), |c| {
        c.config = Some(config.clone())
    });
    assert_closed_and_unprovisioned(vm, "refused");
}

/// The node says provisioning is closed, does not run herd-provision, and
/// keeps the image's settings (the configuration attached has no effect).
fn assert_closed_and_unprovisioned(vm: Vm, outcome: &str) {
    vm.wait_for(
        &format!(
            "herd-init: provisioning: closed on an earlier boot (outcome {outcome}); fw_cfg and CONFIG disks are not read; \
             to provision this node again, re-flash its disk"
        ),
        BOOT,
    )
    .unwrap();
    vm.wait_for("herd-init: ready", BOOT).unwrap();
    vm.wait_for("probe: hostname probe-image", BOOT).unwrap();
    vm.wait_for("probe: addr [10.0.2.15/24]", BOOT).unwrap();
    vm.wait_for("probe: 0 pods", BOOT).unwrap();
    vm.wait_for("probe: marker []", BOOT).unwrap();
    let lines = vm.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("herd-provision:") || l.contains("configuration found on")),
        "{lines:#?}"
    );
    power_off(vm);
}

#[test]
fn a_node_first_booted_without_configuration_is_closed_to_later_ones() {
    let _c = Cleanup;
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(tmp.path());
    let vm = boot(&disk, &tmp.path().join("boot1.log"), |_| {});
    vm.wait_for("herd-init: provisioning: no configuration", BOOT)
        .unwrap();
    vm.wait_for("herd-init: ready", BOOT).unwrap();
    vm.wait_for(
        "herd-init: provisioning: closed (outcome none-found): later boots read no fw_cfg and no CONFIG disk",
        BOOT,
    )
    .unwrap();
    power_off(vm);

    // A configuration handed over later (fw_cfg, as a hypervisor or a
    // stick would) adds no keys, pods or host name.
    let config = tmp.path().join("node.toml");
    fs::write(&config, good_config("node-7")).unwrap();
    let vm = boot(&disk, &tmp.path().join("boot2.log"), |c| {
        c.config = Some(config.clone())
    });
    assert_closed_and_unprovisioned(vm, "none-found");
    let st = |p: &str| state_file(&disk, tmp.path(), p);
    assert_eq!(st("/etc/herd/pods/web.yaml"), None);
    assert_eq!(st("/etc/herd/policy/keys/ops.pub"), None);
    assert_eq!(
        st("/var/lib/herd/provisioning-closed").as_deref(),
        Some("outcome=none-found\n")
    );
}

#[test]
fn config_check_and_vm_run_refuse_the_broken_file_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.toml");
    fs::write(&good, good_config("node-7")).unwrap();
    let ok = run_ok(Command::new(herd()).args(["config", "check"]).arg(&good));
    assert!(
        ok.contains(
            "OK: hostname node-7, network static, 1 image key, plain-HTTP registries 10.0.2.100:5000, 1 pod (web)"
        ),
        "{ok}"
    );
    let broken = tmp.path().join("broken.toml");
    fs::write(&broken, BROKEN).unwrap();
    let out = run(Command::new(herd()).args(["config", "check"]).arg(&broken));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let b = broken.display();
    assert!(
        err.contains(&format!(
            "{b}:1:12: hostname \"bad host!\" is not a valid host name"
        )),
        "{err}"
    );
    // Offline, a pod without keys is a note: the image may carry them.
    let nokeys = tmp.path().join("nokeys.toml");
    fs::write(&nokeys, BROKEN.replace("bad host!", "node-8")).unwrap();
    let ok = run_ok(Command::new(herd()).args(["config", "check"]).arg(&nokeys));
    assert!(
        ok.contains(&format!(
            "{}:3:12: note: pod \"web\": container \"web\" runs registry.example.com/team/web:1.0, but no [[images.key]] is configured",
            nokeys.display()
        )),
        "{ok}"
    );
    // herd vm run checks the configuration before it starts anything.
    let out = run(Command::new(herd())
        .args(["vm", "run", "/nonexistent/disk.raw", "--config"])
        .arg(&broken));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the node would refuse this configuration"),
        "{err}"
    );
}

#[test]
fn provisioned_pod_and_key_reach_herd_agent_in_the_default_image() {
    // The default image runs herd-agent: the provisioned key is loaded and
    // the provisioned pod is picked up from /etc/herd/pods. Its registry is
    // not reachable (user networking with restrict=on and no guest
    // forward), so the pull fails, and says so for that pod.
    let image = default_image();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("node.toml");
    let pod = POD.replace(
        "registry.example.com/team/web:1.0",
        "10.0.2.100:5000/team/web:1.0",
    );
    fs::write(
        &config,
        format!(
            "hostname = \"node-9\"\n[images]\ninsecure_registries = [\"10.0.2.100:5000\"]\n\
             [[images.key]]\nname = \"ops\"\nkey = \"{KEY}\"\n[[pod]]\nmanifest = \"\"\"\n{pod}\"\"\"\n"
        ),
    )
    .unwrap();
    let vm = boot(&image.join("disk.raw"), &tmp.path().join("boot.log"), |c| {
        c.snapshot = true;
        c.config = Some(config.clone());
    });
    vm.wait_for("herd-provision: wrote /etc/herd/pods/web.yaml", BOOT)
        .unwrap();
    vm.wait_for(
        "agent: AgentStarted: watching /etc/herd/pods; 1 trusted image key(s)",
        BOOT,
    )
    .unwrap();
    let failed = vm.wait_for("pod web: PullFailed", BOOT).unwrap();
    assert!(failed.contains("10.0.2.100:5000"), "{failed}");
    vm.kill();
    let _ = fs::remove_dir_all(image);
}

#[test]
fn config_check_takes_update_lock_with_inline_tls_and_refuses_a_key_not_the_certs() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = herd_tests::etcd::TestCa::new(tmp.path(), "etcd");
    let (me, other) = (ca.issue("node-7", &["node-7"]), ca.issue("x", &["x"]));
    let read = |p: &Path| fs::read_to_string(p).unwrap();
    let config = |key: &Path| {
        format!(
            "hostname = \"node-7\"\n[update]\nreboot = \"coordinated\"\n[update.lock]\nbackend = \"etcd\"\n\
             endpoints = [\"https://10.0.0.5:2379\"]\ngroup = \"web\"\n\
             ca = '''{}'''\ncert = '''{}'''\nkey = '''{}'''\n",
            read(&ca.pem),
            read(&me.cert),
            read(key)
        )
    };
    let good = tmp.path().join("good.toml");
    fs::write(&good, config(&me.key)).unwrap();
    let ok = run_ok(Command::new(herd()).args(["config", "check"]).arg(&good));
    assert!(
        ok.contains("update settings reboot coordinated lock etcd group web (TLS)"),
        "{ok}"
    );
    let crossed = tmp.path().join("crossed.toml");
    fs::write(&crossed, config(&other.key)).unwrap();
    let out = run(Command::new(herd()).args(["config", "check"]).arg(&crossed));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}:2:1: [update.lock] key and cert",
            crossed.display()
        )) && err.contains("does not belong to the certificate")
            && !err.contains("PRIVATE KEY-----"),
        "{err}"
    );
}
