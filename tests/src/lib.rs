//! Helpers for herd's end-to-end tests (in `tests/tests/`): locate the built
//! `herd` binary and the static node binaries, build images, run the
//! independent referee tools.
//!
//! The tests expect `./test` (or `scripts/setup.sh`) to have installed the
//! tools and built `target/release/herd` and the static node binaries.

pub mod etcd;
pub mod registry;
pub mod update;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The cargo target directory the tests were built into.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    workspace().join("target")
}

/// `target/release/herd`, built by scripts/setup.sh.
pub fn herd() -> PathBuf {
    let p = target_dir().join("release/herd");
    assert!(
        p.exists(),
        "{} is missing: run ./test (or scripts/setup.sh) so the release binaries are built",
        p.display()
    );
    p
}

/// Where the static node binaries (herd-init, ...) are.
pub fn bin_dir() -> PathBuf {
    let p = target_dir().join("x86_64-unknown-linux-gnu/release");
    assert!(
        p.join("herd-init").exists(),
        "{}/herd-init is missing: run ./test (or scripts/setup.sh)",
        p.display()
    );
    p
}

/// The package cache the tests share (filled by apt-get on first use).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HERD_CACHE") {
        return PathBuf::from(d);
    }
    workspace().join(".cache/debs")
}

/// Run a command, returning its output; panics with a clear message if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is the tool installed? see scripts/setup.sh)")
    });
    out
}

/// Run a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `herd build IMAGE --out OUT` with the test binaries and the test cache
/// (through HERD_CACHE, so a test may still pass its own `--cache`).
pub fn herd_build(image: &Path, out: &Path, epoch: u64) -> Command {
    let mut c = Command::new(herd());
    c.arg("build")
        .arg(image)
        .arg("--out")
        .arg(out)
        .arg("--bin-dir")
        .arg(bin_dir())
        .env("HERD_CACHE", cache_dir())
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    c
}

/// Copy `len` bytes at `offset` of `file` into a new file `to`.
pub fn extract(file: &Path, offset: u64, len: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file).expect("open image");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).expect("read partition");
    std::fs::write(to, buf).expect("write partition copy");
}

/// The default image, built once per test process into a fresh directory.
pub fn default_image() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = target_dir()
            .join("e2e")
            .join(format!("default-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        run_ok(
            herd_build(
                &workspace().join("images/default.toml"),
                &dir,
                1_700_000_000,
            )
            .arg("--quiet"),
        );
        dir
    })
}

/// build.json of an output directory.
pub fn manifest(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("build.json")).expect("build.json");
    serde_json::from_str(&text).expect("build.json is JSON")
}

/// (offset, size) of the partition named `name` in build.json.
pub fn partition(manifest: &serde_json::Value, name: &str) -> (u64, u64) {
    let p = manifest["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no partition {name} in build.json"));
    (p["offset"].as_u64().unwrap(), p["size"].as_u64().unwrap())
}

/// systemd-stub from the host's systemd-boot-efi package.
pub const HOST_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// A copy of the UKI at `uki` with its command line edited, assembled by
/// herd-uki on the host's systemd-stub.
pub fn uki_with_cmdline(uki: &Path, edit: impl Fn(&str) -> String) -> Vec<u8> {
    let bytes = std::fs::read(uki).unwrap_or_else(|e| panic!("{}: {e}", uki.display()));
    let parts = herd_uki::UkiParts::from_uki(&bytes).expect("a UKI");
    let old = std::str::from_utf8(parts.cmdline).unwrap();
    let new = edit(old);
    assert_ne!(new, old, "the edit changed nothing");
    let stub = std::fs::read(HOST_STUB)
        .unwrap_or_else(|e| panic!("{HOST_STUB}: {e}: install systemd-boot-efi"));
    herd_uki::assemble(
        &stub,
        &herd_uki::UkiParts {
            cmdline: new.as_bytes(),
            ..parts
        },
    )
    .unwrap()
}

/// Copies `file` over `EFI/Linux/NAME` on the ESP (at 1 MiB) of `disk`.
pub fn put_uki(disk: &Path, file: &Path, name: &str) {
    run_ok(
        Command::new("mcopy")
            .args(["-o", "-i"])
            .arg(format!("{}@@1M", disk.display()))
            .arg(file)
            .arg(format!("::/EFI/Linux/{name}")),
    );
}

/// Names of the UKIs (boot entries) in the ESP's EFI/Linux directory of
/// `disk` (the ESP at 1 MiB).
pub fn esp_entries(disk: &Path) -> Vec<String> {
    run_ok(
        Command::new("mdir")
            .args(["-b", "-i"])
            .arg(format!("{}@@1M", disk.display()))
            .arg("::/EFI/Linux"),
    )
    .lines()
    .filter_map(|l| l.rsplit('/').next())
    .filter(|n| n.ends_with(".efi"))
    .map(str::to_string)
    .collect()
}

/// A TCP port on 127.0.0.1 that is free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding 127.0.0.1:0")
        .local_addr()
        .expect("a bound address")
        .port()
}

/// A child process killed and reaped when dropped: the servers a test starts.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `herd serve REPO` on a free port of 127.0.0.1, once it accepts
/// connections (up to 5 s): the server and its port.
pub fn herd_serve(repo: &Path) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = Command::new(herd())
        .arg("serve")
        .arg(repo)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting herd serve");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (KillOnDrop(child), port)
}

/// One `GET /` from 127.0.0.1:`port`: the whole answer, or None when
/// nothing answers (connect within 2 s, read within `timeout`).
pub fn http_get(port: u16, timeout: std::time::Duration) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::time::Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}
