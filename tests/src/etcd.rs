//! A real etcd (Debian's etcd-server) on 127.0.0.1 for tests and benches:
//! a temporary data dir, free ports, killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herd_reboot_lock::etcd::Client;

/// A running etcd, killed (and its data dir removed) on drop.
pub struct EtcdServer {
    child: Child,
    /// Its client URL, `http://127.0.0.1:PORT`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits (up to 20 s) until it answers a range.
    pub fn start() -> EtcdServer {
        Self::start_with(&[])
    }

    /// Like [`EtcdServer::start`], with extra etcd flags.
    pub fn start_with(extra: &[&str]) -> EtcdServer {
        let etcd = Path::new("/usr/bin/etcd");
        assert!(
            etcd.exists(),
            "/usr/bin/etcd is missing: run scripts/setup.sh (it installs etcd-server)"
        );
        let dir = tempfile::tempdir().expect("a temporary directory for etcd");
        let (client, peer) = (crate::free_port(), crate::free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(etcd)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).expect("etcd.log"))
            .spawn()
            .expect("starting etcd");
        let s = EtcdServer { child, url, dir };
        let c = s.client();
        let t = Instant::now();
        while c.range("/", 0, true).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// A client of this etcd.
    pub fn client(&self) -> Client {
        Client::new(std::slice::from_ref(&self.url))
    }

    /// Its pid (for reading its CPU time from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `herd-update lock-cycle` (the node build) for the simulated node whose
/// state directory is `dir`: its configuration `dir/update.toml`, its
/// reboot hook `dir/hook`, stdout and stderr into `dir/log` and `dir/err`
/// (read back by [`lock_cycle_log`]). Callers add flags and spawn it.
pub fn lock_cycle(dir: &Path) -> Command {
    let mut c = Command::new(crate::bin_dir().join("herd-update"));
    c.arg("lock-cycle")
        .arg("--config")
        .arg(dir.join("update.toml"))
        .arg("--state-dir")
        .arg(dir)
        .arg("--hook")
        .arg(dir.join("hook"))
        .stdout(std::fs::File::create(dir.join("log")).expect("creating the node's log"))
        .stderr(std::fs::File::create(dir.join("err")).expect("creating the node's err"));
    c
}

/// What a [`lock_cycle`] process of `dir` printed so far.
pub fn lock_cycle_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        + &std::fs::read_to_string(dir.join("err")).unwrap_or_default()
}
