//! HTTPS repositories: which certificates herd-update trusts, and what a
//! refused TLS connection is told to do.
//!
//! An `https://` repository is trusted through the Mozilla root
//! certificates built into herd-update (the `webpki-roots` crate: the same
//! set Debian's ca-certificates package ships, inside the verity-protected
//! `/usr` and updated with every release), or, when the configuration sets
//! `ca_file`, through the certificates in that file only (pinning).
//! rustls with the ring provider; TLS 1.2 and 1.3.

use std::path::Path;
use std::sync::Arc;

use herd_tls::Refusal;
use rustls::{ClientConfig, RootCertStore};

use crate::Error;

/// What an https repository's certificate must chain to.
#[derive(Clone)]
pub struct Tls {
    /// The rustls configuration every request to the repository uses.
    pub config: Arc<ClientConfig>,
    /// Where the trust comes from, for error messages.
    pub trust: String,
}

impl Tls {
    /// The built-in Mozilla roots, or only the CA certificates in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<Tls, Error> {
        let (roots, trust) = match ca_file {
            None => (
                herd_tls::builtin_roots(),
                "the Mozilla root certificates built into herd-update".to_string(),
            ),
            Some(f) => (
                pinned(f)?,
                format!("only the CA in ca_file {} (pinned)", f.display()),
            ),
        };
        let config =
            herd_tls::client_config(roots, None).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Tls { config, trust })
    }
}

/// The CA certificates of PEM file `f`, as the only roots.
fn pinned(f: &Path) -> Result<RootCertStore, Error> {
    herd_tls::read(f)
        .and_then(|pem| herd_tls::roots_from_pem(&pem))
        .map_err(|e| {
            Error::Config(format!(
                "ca_file {}: {e}; put the PEM certificate of the CA that issued the repository's certificate there, or remove ca_file to trust the built-in root certificates",
                f.display()
            ))
        })
}

/// A sentence for a refused TLS connection to `host` (found among the
/// causes of `e`), saying what to do; None when `e` is not a TLS refusal.
pub fn explain(e: &(dyn std::error::Error + 'static), host: &str, trust: &str) -> Option<String> {
    let f = herd_tls::failure(e)?;
    let d = &f.detail;
    Some(match f.refusal {
        Refusal::WrongName => format!(
            "the server's certificate is not valid for {host} ({d}): refusing it; write the host name the certificate was issued for in `repository`, or give the server a certificate for {host}"
        ),
        Refusal::UntrustedIssuer => format!(
            "the server's certificate for {host} is not issued by a trusted CA ({d}; trusted: {trust}): refusing it; set ca_file in the update configuration to the PEM certificate of the CA that issued it, or have the server send its full chain"
        ),
        Refusal::Expired => format!(
            "the server's certificate for {host} has expired ({d}): refusing it; renew the server's certificate (or, if it is valid, correct this node's clock)"
        ),
        Refusal::NotYetValid => format!(
            "the server's certificate for {host} is not valid yet ({d}): refusing it; correct this node's clock, or the certificate's start date"
        ),
        Refusal::BadServerCertificate => format!(
            "the server's certificate for {host} is refused ({d}; trusted: {trust}); give the server a certificate for {host} from a trusted CA"
        ),
        Refusal::NotTls => format!(
            "the server at {host} does not speak TLS ({d}): is it plain HTTP on an https:// URL? Serve the repository over HTTPS on that port, or correct the port in `repository`"
        ),
        Refusal::ClientCertificate => format!(
            "the server at {host} asks for a client certificate ({d}); herd-update presents none to a repository: serve the repository without client authentication"
        ),
        Refusal::Other => format!("the TLS connection to {host} failed ({d})"),
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use crate::http::Client;

    /// A throwaway CA: its certificate (PEM in `dir/NAME.pem`) and key.
    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
        pem: PathBuf,
    }

    fn ca(dir: &Path, name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("herd test CA {name}"));
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { cert, key, pem }
    }

    /// A server certificate for `name` from `ca`, expired when asked.
    fn server_cert(ca: &Ca, name: &str, expired: bool) -> Arc<rustls::ServerConfig> {
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        )
    }

    /// Reads a request's head (up to the blank line).
    fn head(s: &mut impl Read) -> String {
        let mut h = Vec::new();
        let mut b = [0u8; 1];
        while !h.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => h.push(b[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&h).into_owned()
    }

    /// An HTTPS server on 127.0.0.1 answering every request with `answer`;
    /// returns its port.
    fn serve(cfg: Arc<rustls::ServerConfig>, answer: String) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for tcp in l.incoming() {
                let Ok(tcp) = tcp else { continue };
                let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                if head(&mut s).is_empty() {
                    continue; // the client refused the handshake
                }
                let _ = s.write_all(answer.as_bytes());
                s.conn.send_close_notify();
                let _ = s.flush();
            }
        });
        port
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn get(url: &str, ca_file: Option<&Path>) -> Result<Option<Vec<u8>>, crate::Error> {
        Client::new(url, ca_file)?.get_small(url, 1 << 20)
    }

    #[test]
    fn a_pinned_ca_is_trusted_and_only_it() {
        let d = tempfile::tempdir().unwrap();
        let (good, other) = (ca(d.path(), "good"), ca(d.path(), "other"));
        let port = serve(
            server_cert(&good, "localhost", false),
            ok("signed metadata"),
        );
        let url = format!("https://localhost:{port}/channels/stable.json");
        let body = get(&url, Some(&good.pem)).unwrap().unwrap();
        assert_eq!(body, b"signed metadata");
        let e = get(&url, Some(&other.pem)).unwrap_err().to_string();
        assert!(e.contains("not issued by a trusted CA"), "{e}");
        assert!(e.contains("set ca_file"), "{e}");
        assert!(e.contains(&other.pem.display().to_string()), "{e}");
        // Without ca_file only the built-in roots count: a private CA is refused.
        let e = get(&url, None).unwrap_err().to_string();
        assert!(
            e.contains("not issued by a trusted CA") && e.contains("Mozilla"),
            "{e}"
        );
    }

    #[test]
    fn a_certificate_for_another_name_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let good = ca(d.path(), "good");
        let port = serve(server_cert(&good, "localhost", false), ok("x"));
        // The certificate names localhost, the URL 127.0.0.1.
        let url = format!("https://127.0.0.1:{port}/root/1.json");
        let e = get(&url, Some(&good.pem)).unwrap_err().to_string();
        assert!(e.contains("not valid for 127.0.0.1"), "{e}");
        assert!(e.contains("`repository`"), "{e}");
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let good = ca(d.path(), "good");
        let port = serve(server_cert(&good, "localhost", true), ok("x"));
        let url = format!("https://localhost:{port}/root/1.json");
        let e = get(&url, Some(&good.pem)).unwrap_err().to_string();
        assert!(e.contains("has expired") && e.contains("renew"), "{e}");
    }

    #[test]
    fn a_redirect_from_https_to_http_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let good = ca(d.path(), "good");
        // A plain HTTP server that would answer, to be sure it is never asked.
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let plain_port = plain.local_addr().unwrap().port();
        plain.set_nonblocking(true).unwrap();
        let redirect = format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{plain_port}/root/1.json\r\nContent-Length: 0\r\n\r\n"
        );
        let port = serve(server_cert(&good, "localhost", false), redirect);
        let url = format!("https://localhost:{port}/root/1.json");
        let e = get(&url, Some(&good.pem)).unwrap_err().to_string();
        assert!(e.contains("redirected to a plain http:// URL"), "{e}");
        assert!(plain.accept().is_err(), "the plain server was contacted");
    }

    #[test]
    fn plain_http_on_an_https_url_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let good = ca(d.path(), "good");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s: TcpStream = s.unwrap();
                let mut b = [0u8; 512];
                let _ = s.read(&mut b);
                let _ = s.write_all(ok("plain").as_bytes());
            }
        });
        let url = format!("https://localhost:{port}/root/1.json");
        let e = get(&url, Some(&good.pem)).unwrap_err().to_string();
        assert!(e.contains("plain HTTP on an https:// URL"), "{e}");
    }

    #[test]
    fn a_bad_ca_file_says_what_to_put_there() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("missing.pem");
        let e = get("https://localhost:1/x", Some(&missing))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("cannot read it") && e.contains("PEM certificate"),
            "{e}"
        );
        let empty = d.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = get("https://localhost:1/x", Some(&empty))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        let e = Client::new("http://localhost:1", Some(&empty))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("write https://"), "{e}");
    }
}
