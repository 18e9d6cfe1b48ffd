//! A real etcd (Debian's etcd-server) on 127.0.0.1 for tests and benches:
//! a temporary data dir, free ports, killed on drop; plain HTTP, or TLS
//! with client certificates ([`EtcdServer::start_tls`], certificates from
//! throwaway CAs made by rcgen: [`TestCa`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herd_reboot_lock::etcd::Client;
use herd_reboot_lock::tls::Tls;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A throwaway CA whose certificate is `DIR/NAME-ca.pem`.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    name: String,
    dir: PathBuf,
    /// Its certificate (PEM).
    pub pem: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, writing its files into `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("herd test CA {name}"));
        let key = KeyPair::generate().expect("a CA key");
        let cert = p.self_signed(&key).expect("a CA certificate");
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).expect("writing the CA certificate");
        TestCa {
            cert,
            key,
            name: name.into(),
            dir: dir.to_path_buf(),
            pem,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) issued by this
    /// CA: `DIR/NAME-WHO.pem` and `.key`.
    pub fn issue(&self, who: &str, names: &[&str]) -> CertFiles {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("certificate parameters");
        p.distinguished_name.push(DnType::CommonName, who);
        let key = KeyPair::generate().expect("a key");
        let cert = p
            .signed_by(&key, &self.cert, &self.key)
            .expect("issuing a certificate");
        let files = CertFiles {
            cert: self.dir.join(format!("{}-{who}.pem", self.name)),
            key: self.dir.join(format!("{}-{who}.key", self.name)),
        };
        std::fs::write(&files.cert, cert.pem()).expect("writing a certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("writing a key");
        files
    }
}

/// A running etcd, killed (and its data dir removed) on drop.
pub struct EtcdServer {
    child: Child,
    /// Its client URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub url: String,
    tls: Option<Tls>,
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits (up to 20 s) until it answers a range.
    pub fn start() -> EtcdServer {
        Self::start_with(&[])
    }

    /// Like [`EtcdServer::start`], with extra etcd flags.
    pub fn start_with(extra: &[&str]) -> EtcdServer {
        Self::spawn(extra, None)
    }

    /// etcd over TLS only: its server certificate (for 127.0.0.1 and
    /// localhost) from `ca`, and `--client-cert-auth` trusting client
    /// certificates from `ca` alone (one CA for both, as etcd's own JSON
    /// gateway dials etcd with the server certificate as its client
    /// certificate). Waits until it answers a client holding a
    /// certificate from `ca`.
    pub fn start_tls(ca: &TestCa) -> EtcdServer {
        let server = ca.issue("etcd-server", &["127.0.0.1", "localhost"]);
        let probe = ca.issue("etcd-probe", &["probe"]);
        let tls = Tls::from_files(Some(&ca.pem), Some(&probe.cert), Some(&probe.key))
            .expect("the probe's TLS settings");
        let (cert, key, ca) = (
            server.cert.display().to_string(),
            server.key.display().to_string(),
            ca.pem.display().to_string(),
        );
        Self::spawn(
            &[
                "--cert-file",
                &cert,
                "--key-file",
                &key,
                "--client-cert-auth",
                "--trusted-ca-file",
                &ca,
            ],
            Some(tls),
        )
    }

    fn spawn(extra: &[&str], tls: Option<Tls>) -> EtcdServer {
        let etcd = Path::new("/usr/bin/etcd");
        assert!(
            etcd.exists(),
            "/usr/bin/etcd is missing: run scripts/setup.sh (it installs etcd-server)"
        );
        let dir = tempfile::tempdir().expect("a temporary directory for etcd");
        let (client, peer) = (crate::free_port(), crate::free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
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
        let s = EtcdServer {
            child,
            url,
            tls,
            dir,
        };
        let c = s.client();
        let t = Instant::now();
        loop {
            match c.range("/", 0, true) {
                Ok(_) => break,
                Err(e) => assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "etcd did not start: {e}\n{}",
                    s.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// A client of this etcd (with TLS: trusting its CA, presenting the
    /// probe's client certificate).
    pub fn client(&self) -> Client {
        Client::with_tls(std::slice::from_ref(&self.url), self.tls.clone())
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
