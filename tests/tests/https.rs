//! HTTPS repositories (issue 17): the default image published into a
//! repository, `herd serve` behind a TLS front on 127.0.0.1 whose
//! certificate comes from a throwaway CA made here, and `herd-update
//! write-slot` over https: with the CA pinned (`--ca-file`, as `ca_file` in
//! update.toml) the slot is written and verified; with another CA, or a URL
//! naming a host the certificate is not for, it is refused with a sentence
//! saying what to do, and nothing is written.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use herd_tests::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A throwaway CA: its certificate, key, and PEM file `dir/NAME.pem`.
fn ca(dir: &Path, name: &str) -> (rcgen::Certificate, KeyPair, PathBuf) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("herd e2e CA {name}"));
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    let pem = dir.join(format!("{name}.pem"));
    std::fs::write(&pem, cert.pem()).unwrap();
    (cert, key, pem)
}

/// A rustls server configuration with a certificate for `name` issued by `ca`.
fn server_config(ca: &rcgen::Certificate, ca_key: &KeyPair, name: &str) -> rustls::ServerConfig {
    let p = CertificateParams::new(vec![name.to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, ca, ca_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap()
}

/// A TLS front on a free port of 127.0.0.1 for the plain HTTP server on
/// `backend`: each connection's request head is passed on (herd-update
/// sends GETs with `Connection: close`) and the answer copied back.
fn tls_front(cfg: rustls::ServerConfig, backend: u16) -> u16 {
    let cfg = Arc::new(cfg);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in l.incoming() {
            let Ok(tcp) = tcp else { continue };
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        // The client refused the handshake, or hung up.
                        _ => return,
                    }
                }
                let mut back = TcpStream::connect(("127.0.0.1", backend)).unwrap();
                back.write_all(&head).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match back.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

/// `herd-update write-slot` from `url` into fresh files under `dir/name`.
fn write_slot(url: &str, ca_file: &Path, repo: &Path, dir: &Path, name: &str) -> (Output, PathBuf) {
    let t = dir.join(name);
    std::fs::create_dir_all(&t).unwrap();
    let o = run(Command::new(bin_dir().join("herd-update"))
        .arg("write-slot")
        .args(["--repository", url])
        .arg("--ca-file")
        .arg(ca_file)
        .arg("--root")
        .arg(repo.join("root/1.json"))
        .arg("--usr")
        .arg(t.join("usr"))
        .arg("--verity")
        .arg(t.join("verity"))
        .arg("--state-dir")
        .arg(t.join("state")));
    (o, t)
}

fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Refused with `what`, and no byte of the payload was written.
fn assert_refused(o: &Output, t: &Path, what: &str) {
    let s = said(o);
    assert!(!o.status.success() && s.contains(what), "{s}");
    assert!(!s.contains("wrote and verified"), "{s}");
    let written = std::fs::metadata(t.join("usr")).map_or(0, |m| m.len());
    assert_eq!(written, 0, "{s}");
}

#[test]
fn an_update_over_https_with_a_pinned_ca_and_its_refusals() {
    let image = default_image();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let key = d.join("k.json");
    let repo = d.join("repo");
    let r = repo.to_str().unwrap();
    let herd_ok = |args: &[&str]| run_ok(Command::new(herd()).args(args));
    herd_ok(&["key", "generate", "--out", key.to_str().unwrap()]);
    let k = key.to_str().unwrap();
    herd_ok(&["release", "init", "--repo", r, "--key", k]);
    herd_ok(&[
        "release",
        "publish",
        "--repo",
        r,
        "--key",
        k,
        "--image-out",
        image.to_str().unwrap(),
    ]);
    let (_srv, backend) = herd_serve(&repo);
    let (good, good_key, good_pem) = ca(d, "good");
    let (_, _, other_pem) = ca(d, "other");
    let port = tls_front(server_config(&good, &good_key, "localhost"), backend);
    let url = format!("https://localhost:{port}");

    // Pinned to the CA that issued the server's certificate: written and verified.
    let (o, t) = write_slot(&url, &good_pem, &repo, d, "pinned");
    let s = said(&o);
    assert!(
        o.status.success() && s.contains("wrote and verified"),
        "{s}"
    );
    assert!(
        std::fs::read(t.join("usr")).unwrap() == std::fs::read(image.join("usr.img")).unwrap(),
        "the slot holds the release's usr.img"
    );

    // Pinned to another CA: refused before any metadata is believed.
    let (o, t) = write_slot(&url, &other_pem, &repo, d, "other-ca");
    assert_refused(&o, &t, "not issued by a trusted CA");
    assert!(said(&o).contains("set ca_file"), "{}", said(&o));

    // The right CA, but the URL names a host the certificate is not for.
    let url_ip = format!("https://127.0.0.1:{port}");
    let (o, t) = write_slot(&url_ip, &good_pem, &repo, d, "other-name");
    assert_refused(&o, &t, "not valid for 127.0.0.1");

    // A ca_file with a plain http:// repository is a configuration error.
    let (o, t) = write_slot(
        &format!("http://127.0.0.1:{backend}"),
        &good_pem,
        &repo,
        d,
        "plain",
    );
    assert_refused(&o, &t, "write https://");
}
