//! etcd over TLS: the trust and client certificate of `[lock]`'s
//! `ca_file`, `cert_file` and `key_file` (the rustls configuration is
//! built by herd-tls, as herd-update's repository client's is), and what a
//! refused handshake tells the operator to do.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herd_tls::rustls::ClientConfig;
use herd_tls::Refusal;

use crate::Error;

/// How the etcd client speaks TLS.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    /// Where the trust comes from, for messages.
    trust: String,
    /// The client certificate presented, for messages.
    client: Option<String>,
}

fn setup(message: String) -> Error {
    Error::TlsSetup {
        backend: "etcd",
        message,
    }
}

impl Tls {
    /// Trusting only the CA certificates in `ca_file` (else the Mozilla
    /// roots built in), presenting `cert_file` with `key_file` when etcd
    /// asks for a client certificate. Every file is read and checked now:
    /// a missing file, one that is not PEM, or a key that is not the
    /// certificate's is an error naming the file.
    pub fn from_files(
        ca_file: Option<&Path>,
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
    ) -> Result<Tls, Error> {
        let (roots, trust) = match ca_file {
            None => (
                herd_tls::builtin_roots(),
                "the Mozilla root certificates built into herd-update".to_string(),
            ),
            Some(f) => (
                herd_tls::read(f)
                    .and_then(|p| herd_tls::roots_from_pem(&p))
                    .map_err(|e| setup(format!(
                        "[lock] ca_file {}: {e}; put the PEM certificate of the CA that issued etcd's server certificate there",
                        f.display()
                    )))?,
                format!("only the CA in ca_file {}", f.display()),
            ),
        };
        let identity = match (cert_file, key_file) {
            (Some(c), Some(k)) => {
                let cert = herd_tls::read(c)
                    .and_then(|p| herd_tls::certificates(&p))
                    .map_err(|e| setup(format!(
                        "[lock] cert_file {}: {e}; put this node's PEM client certificate there (issued by the CA in etcd's --trusted-ca-file)",
                        c.display()
                    )))?;
                let key = herd_tls::read(k)
                    .and_then(|p| herd_tls::private_key(&p))
                    .map_err(|e| {
                        setup(format!(
                            "[lock] key_file {}: {e}; put the PEM private key of cert_file there",
                            k.display()
                        ))
                    })?;
                let id = herd_tls::Identity::new(cert, key).map_err(|e| setup(format!(
                    "[lock] key_file {} and cert_file {}: {e}; give the key the certificate was issued for",
                    k.display(),
                    c.display()
                )))?;
                Some((id, c.display().to_string()))
            }
            (None, None) => None,
            _ => {
                return Err(setup(
                    "[lock] cert_file and key_file go together: give both, or neither".into(),
                ))
            }
        };
        let config = herd_tls::client_config(roots, identity.as_ref().map(|(id, _)| id))
            .map_err(|e| setup(e.to_string()))?;
        Ok(Tls {
            config,
            trust,
            client: identity.map(|(_, c)| c),
        })
    }

    /// `agent` speaking TLS with this trust, to https:// URLs only.
    pub(crate) fn agent(&self, agent: ureq::AgentBuilder) -> ureq::AgentBuilder {
        agent.tls_config(self.config.clone()).https_only(true)
    }

    /// Why the connection to `endpoint` failed when the error said nothing
    /// (a TLS 1.3 refusal of the client certificate racing the request):
    /// one handshake on its own, waiting a second for a refusal.
    fn probe(&self, endpoint: &str) -> Option<herd_tls::Failure> {
        let authority = endpoint.strip_prefix("https://")?.split('/').next()?;
        let (host, port) = authority.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        herd_tls::probe(
            self.config.clone(),
            host,
            port.parse().ok()?,
            Duration::from_secs(1),
        )
    }

    /// A sentence for a refused TLS connection to `endpoint`, saying what
    /// to do; None when `e` is not a TLS refusal.
    pub(crate) fn explain(
        &self,
        e: &(dyn std::error::Error + 'static),
        endpoint: &str,
    ) -> Option<String> {
        let f = herd_tls::failure(e).or_else(|| self.probe(endpoint))?;
        let d = &f.detail;
        let trust = &self.trust;
        Some(match f.refusal {
            Refusal::UntrustedIssuer | Refusal::BadServerCertificate => format!(
                "etcd's server certificate is not issued by a trusted CA ({d}; trusted: {trust}): refusing it; set [lock] ca_file to the PEM certificate of the CA that issued etcd's --cert-file"
            ),
            Refusal::WrongName => format!(
                "etcd's server certificate does not name the host of {endpoint} ({d}): refusing it; write the name or address the certificate was issued for in [lock] endpoints, or give etcd a certificate for it"
            ),
            Refusal::Expired | Refusal::NotYetValid => format!(
                "etcd's server certificate is not valid now ({d}): refusing it; renew etcd's certificate (or correct this node's clock)"
            ),
            Refusal::ClientCertificate => match &self.client {
                None => format!(
                    "etcd refused the connection because this node presents no client certificate ({d}): etcd runs with --client-cert-auth; set [lock] cert_file and key_file to a client certificate issued by the CA in etcd's --trusted-ca-file"
                ),
                Some(c) => format!(
                    "etcd refused this node's client certificate {c} ({d}): it is not issued by the CA in etcd's --trusted-ca-file (or not for client authentication); give the node a client certificate from that CA"
                ),
            },
            Refusal::NotTls => format!(
                "{endpoint} does not speak TLS ({d}): is etcd serving plain HTTP there? Write http:// endpoints (and remove ca_file, cert_file, key_file), or start etcd with --cert-file and --key-file"
            ),
            Refusal::Other => format!("the TLS connection to {endpoint} failed ({d})"),
        })
    }
}

const PLAIN_TO_TLS: &str = "write https:// endpoints and set [lock] ca_file to the CA of etcd's certificate (and cert_file, key_file when etcd checks client certificates)";

/// What a plain-HTTP request answered with "Client sent an HTTP request to
/// an HTTPS server" (Go's TLS listener) means for the configuration.
pub(crate) fn plain_http_to_tls(endpoint: &str, answer: &str) -> Option<String> {
    answer.contains("HTTP request to an HTTPS server").then(|| {
        format!(
            "etcd at {endpoint} answered {:?}: it speaks TLS, but the endpoint is plain http://; {PLAIN_TO_TLS}",
            answer.trim()
        )
    })
}

/// A plain-HTTP request to `endpoint` that the server closed without a
/// byte of answer (ureq: "Unexpected EOF"), as etcd's TLS-only client port
/// does: most likely TLS.
pub(crate) fn plain_http_closed(
    e: &(dyn std::error::Error + 'static),
    endpoint: &str,
) -> Option<String> {
    use std::io::ErrorKind;
    if !endpoint.starts_with("http://") {
        return None;
    }
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::ConnectionAborted | ErrorKind::UnexpectedEof
            ) {
                return Some(format!(
                    "etcd at {endpoint} closed the connection without answering a plain HTTP request ({io}): it speaks TLS, but the endpoint is plain http://, most likely; {PLAIN_TO_TLS}"
                ));
            }
        }
        cur = c.source();
    }
    None
}
