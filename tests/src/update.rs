//! Over-the-air update tests in QEMU share these: the probe image plus the
//! updater following a repository served on the host's loopback, a signed
//! release repository to publish into, and a VM that reaches the repository
//! through a guestfwd (guest 10.0.2.100:8080).

use std::path::{Path, PathBuf};
use std::process::Command;

use herd_qemu::{GuestForward, OnReboot, Vm, VmConfig};

use crate::{bin_dir, cache_dir, herd, manifest, run_ok, workspace};

/// Where a node finds the repository: the host's `herd serve` through the
/// guestfwd of [`node_vm`].
pub const REPOSITORY: &str = "http://10.0.2.100:8080";

/// `herd ARGS` that must succeed; its stdout.
pub fn herd_ok(args: &[&str]) -> String {
    run_ok(Command::new(herd()).args(args))
}

/// The description of the probe image (tests/images/probe.toml) plus the
/// updater at `version`: a service `herd-update run` following channel
/// `stable` of [`REPOSITORY`] every 2 s, trusting the key set `root`. The
/// `[update]` table comes last, so a caller may append keys to it.
pub fn updater_image(version: &str, root: &Path) -> String {
    let lock = workspace().join("buildroot/debian.lock");
    let mut t = std::fs::read_to_string(workspace().join("tests/images/probe.toml"))
        .expect("tests/images/probe.toml")
        .replace("version = \"0.1.0\"", &format!("version = \"{version}\""))
        .replace(
            "lock = \"../../buildroot/debian.lock\"",
            &format!("lock = {:?}", lock.to_str().unwrap()),
        )
        .replace(
            "binaries = [\"herd-init\"]",
            "binaries = [\"herd-init\", \"herd-update\"]",
        );
    t.push_str(&format!(
        "\n[[init.service]]\nname = \"updater\"\nexec = [\"/usr/bin/herd-update\", \"run\"]\n\n\
         [update]\nrepository = \"{REPOSITORY}\"\nchannel = \"stable\"\ninterval_secs = 2\nroot = {:?}\n",
        root.to_str().unwrap()
    ));
    t
}

/// An image description's `[[usr.file]]` carrying the host file `source`
/// as /usr/`path`.
pub fn usr_file(path: &str, source: &Path) -> String {
    format!(
        "\n[[usr.file]]\npath = {path:?}\nsource = {:?}\n",
        source.to_str().unwrap()
    )
}

/// Writes the description `text` of `version` into `dir`; its path.
pub fn write_image(dir: &Path, version: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("image-{version}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// `herd build TOML --out OUT --quiet` with the node binaries in `bins`
/// (the test build's, [`bin_dir`], unless a test changed one).
pub fn build_image(toml: &Path, out: &Path, bins: &Path) {
    run_ok(
        Command::new(herd())
            .arg("build")
            .arg(toml)
            .arg("--out")
            .arg(out)
            .arg("--bin-dir")
            .arg(bins)
            .arg("--quiet")
            .env("HERD_CACHE", cache_dir())
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    );
}

/// Builds `text` as `version` into `dir/out-VERSION` with the test's node
/// binaries; the output directory.
pub fn build_version(dir: &Path, version: &str, text: &str) -> PathBuf {
    let out = dir.join(format!("out-{version}"));
    build_image(&write_image(dir, version, text), &out, &bin_dir());
    out
}

/// `kib` KiB of incompressible bytes from `seed` (xorshift), the same
/// every run, written to `path`.
pub fn noise(path: &Path, kib: usize, seed: u64) {
    let mut x = seed;
    let mut v = vec![0u8; kib << 10];
    for w in v.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, v).unwrap();
}

/// A release repository (`herd release init`) in `dir` with its signing key.
pub struct Repo {
    /// The repository directory, as `herd serve` serves it.
    pub dir: PathBuf,
    /// The signing key.
    pub key: PathBuf,
}

impl Repo {
    /// A new repository `NAME` with key `NAME.key` in `d`.
    pub fn new(d: &Path, name: &str) -> Repo {
        let key = d.join(format!("{name}.key"));
        herd_ok(&["key", "generate", "--out", key.to_str().unwrap()]);
        let dir = d.join(name);
        herd_ok(&[
            "release",
            "init",
            "--repo",
            dir.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        Repo { dir, key }
    }

    /// Its key set, as a node's image trusts it.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root/1.json")
    }

    /// `herd release publish` of the build in `out` (with `extra` flags);
    /// its stdout.
    pub fn publish(&self, out: &Path, extra: &[&str]) -> String {
        let mut args = vec![
            "release",
            "publish",
            "--image-out",
            out.to_str().unwrap(),
            "--repo",
            self.dir.to_str().unwrap(),
            "--key",
            self.key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        herd_ok(&args)
    }

    /// The signed channel document of `stable`.
    pub fn channel(&self) -> PathBuf {
        self.dir.join("channels/stable.json")
    }

    /// Where the repository keeps the payload `file` of the build in `out`.
    pub fn payload(&self, out: &Path, file: &str) -> PathBuf {
        let m = manifest(out);
        let sha = m["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["path"] == file)
            .unwrap_or_else(|| panic!("no output {file} in {}/build.json", out.display()))
            ["sha256"]
            .as_str()
            .unwrap()
            .to_string();
        self.dir.join("payloads").join(sha)
    }
}

/// A private copy (sparse) of the disk of the build in `out`, as `dir/disk.raw`.
pub fn copy_disk(out: &Path, dir: &Path) -> PathBuf {
    let disk = dir.join("disk.raw");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(out.join("disk.raw"))
            .arg(&disk),
    );
    disk
}

/// A node's VM: 512 MiB, a guest reboot resets (the VM lives on), and the
/// repository served on 127.0.0.1:`repo_port` is the guest's
/// 10.0.2.100:8080. Callers add forwards or a TPM before starting it.
pub fn node_vm(disk: &Path, repo_port: u16) -> VmConfig {
    let mut cfg = VmConfig::new(disk.to_path_buf());
    cfg.memory_mib = 512;
    cfg.on_reboot = OnReboot::Reset;
    cfg.guest_forwards.push(GuestForward {
        guest: 8080,
        host: repo_port,
    });
    cfg
}

/// Starts [`node_vm`], its console in `log`.
pub fn boot_node(disk: &Path, repo_port: u16, log: &Path) -> Vm {
    Vm::start(&node_vm(disk, repo_port), log).expect("starting the node's VM")
}
