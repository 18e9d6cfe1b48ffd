//! The one place herd's node programs build a rustls client
//! configuration (rustls on ring, TLS 1.2 and 1.3), shared by herd-update's
//! repository client and the reboot lock's etcd client:
//!
//! - what the server's certificate must chain to: the Mozilla roots built
//!   in ([`builtin_roots`], the `webpki-roots` crate) or only the CA
//!   certificates of a PEM file ([`roots_from_pem`], pinning);
//! - optionally a client certificate and its key ([`Identity`], checked to
//!   be a pair before anything is sent);
//! - what a refused handshake was ([`failure`]), so each caller can say
//!   what to do in its own words.
//!
//! Errors here say what is wrong with the PEM; callers name the file or
//! setting and add what to put there.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The rustls these configurations are for (callers hand them to ureq).
pub use rustls;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

/// What is wrong with PEM input (a CA file, a certificate, a key).
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("cannot read it ({0})")]
    Read(std::io::Error),
    /// A PEM block does not decode.
    #[error("not valid PEM ({0})")]
    Pem(String),
    /// No `CERTIFICATE` block.
    #[error("it holds no CERTIFICATE block")]
    NoCertificate,
    /// A certificate that cannot be a trust anchor.
    #[error("a certificate in it is not usable as a CA ({0})")]
    NotCa(String),
    /// No private key block.
    #[error("it holds no PRIVATE KEY block (PKCS#8, RSA or EC)")]
    NoKey,
    /// A key ring cannot use.
    #[error("the private key is not usable ({0})")]
    BadKey(String),
    /// The key does not belong to the certificate.
    #[error("the private key does not belong to the certificate (their public keys differ)")]
    KeyMismatch,
    /// rustls refused the settings.
    #[error("setting up TLS: {0}")]
    Setup(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file.
pub fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(PemError::Read)
}

/// The Mozilla root certificates built into the program.
pub fn builtin_roots() -> RootCertStore {
    RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
}

/// Every `CERTIFICATE` block of `pem`, in order (at least one).
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// The CA certificates of `pem` as the only trust anchors.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem)? {
        roots
            .add(cert)
            .map_err(|e| PemError::NotCa(e.to_string()))?;
    }
    Ok(roots)
}

/// The first private key of `pem`.
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => PemError::NoKey,
        e => PemError::Pem(e.to_string()),
    })
}

/// A client certificate (with the chain up to its CA, as given) and its
/// private key, known to be a pair.
#[derive(Clone, Debug)]
pub struct Identity(Arc<CertifiedKey>);

impl Identity {
    /// The pair `chain` (end-entity certificate first) and `key`; refused
    /// when ring cannot use the key or it is not the certificate's.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Identity, PemError> {
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| PemError::BadKey(e.to_string()))?;
        let ck = CertifiedKey::new(chain, signing);
        match ck.keys_match() {
            Ok(()) => Ok(Identity(Arc::new(ck))),
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                Err(PemError::KeyMismatch)
            }
            // ring's keys always know their public key; anything else is
            // a certificate webpki cannot parse.
            Err(e) => Err(PemError::Pem(format!("the certificate: {e}"))),
        }
    }

    /// The pair from a certificate PEM and a key PEM.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Identity, PemError> {
        Identity::new(certificates(cert)?, private_key(key)?)
    }
}

/// A client configuration trusting `roots`, presenting `identity` when the
/// server asks for a client certificate.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, PemError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PemError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    Ok(Arc::new(match identity {
        Some(id) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(id.0.clone())))
        }
        None => builder.with_no_client_auth(),
    }))
}

/// What a refused TLS connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server's certificate does not name the host.
    WrongName,
    /// The server's certificate does not chain to a trusted CA.
    UntrustedIssuer,
    /// The server's certificate has expired.
    Expired,
    /// The server's certificate is not valid yet.
    NotYetValid,
    /// The server's certificate is refused for another reason.
    BadServerCertificate,
    /// The server refused this client's certificate, or its lack of one
    /// (it answered with a certificate alert).
    ClientCertificate,
    /// The other end does not speak TLS (or hung up in the handshake).
    NotTls,
    /// Something else.
    Other,
}

/// A refused TLS connection: its kind and rustls's words.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What it came to.
    pub refusal: Refusal,
    /// The underlying error, for the message.
    pub detail: String,
}

fn classify(e: &rustls::Error) -> Refusal {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Refusal::WrongName
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Refusal::UntrustedIssuer
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Refusal::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Refusal::NotYetValid
            }
            _ => Refusal::BadServerCertificate,
        },
        E::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied,
        ) => Refusal::ClientCertificate,
        E::InvalidMessage(_)
        | E::InappropriateHandshakeMessage { .. }
        | E::InappropriateMessage { .. } => Refusal::NotTls,
        _ => Refusal::Other,
    }
}

/// The refused TLS connection among the causes of `e` (a ureq transport
/// error, an io::Error wrapping a rustls one), if there is one.
pub fn failure(e: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    let found = |t: &rustls::Error| Failure {
        refusal: classify(t),
        detail: t.to_string(),
    };
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            return Some(found(t));
        }
        // An io::Error's source() skips the error it wraps: look inside.
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(t) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(found(t));
            }
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return Some(Failure {
                    refusal: Refusal::NotTls,
                    detail: io.to_string(),
                });
            }
        }
        cur = c.source();
    }
    None
}

/// Connects to `host:port`, completes a handshake, and waits up to `wait`
/// for the server to refuse the connection anyway: a TLS 1.3 server checks
/// the client's certificate only after the client finished its side of the
/// handshake, and its alert can lose the race with the client's first
/// request (which then fails as a broken pipe, saying nothing). The
/// refusal, if the server made one in time.
pub fn probe(config: Arc<ClientConfig>, host: &str, port: u16, wait: Duration) -> Option<Failure> {
    use std::io::Read;
    use std::net::{TcpStream, ToSocketAddrs};
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).ok()?;
    let mut conn = rustls::ClientConnection::new(config, name).ok()?;
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let mut tcp = TcpStream::connect_timeout(&addr, wait).ok()?;
    tcp.set_read_timeout(Some(wait)).ok()?;
    tcp.set_write_timeout(Some(wait)).ok()?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            return failure(&e);
        }
    }
    let mut byte = [0u8; 1];
    // A byte, the end, or a timeout: the server took the connection.
    rustls::Stream::new(&mut conn, &mut tcp)
        .read(&mut byte)
        .err()
        .and_then(|e| failure(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    fn ca() -> (rcgen::Certificate, KeyPair) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        (p.self_signed(&key).unwrap(), key)
    }

    fn leaf(ca: &(rcgen::Certificate, KeyPair)) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["node".to_string()])
            .unwrap()
            .signed_by(&key, &ca.0, &ca.1)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_and_its_own_key_are_a_pair_and_no_other_key() {
        let c = ca();
        let (cert, key) = leaf(&c);
        let (_, other_key) = leaf(&c);
        Identity::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        let e = Identity::from_pem(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(matches!(e, PemError::KeyMismatch), "{e}");
        // The certificate where the key belongs, and the other way round.
        assert!(matches!(
            Identity::from_pem(cert.as_bytes(), cert.as_bytes()).unwrap_err(),
            PemError::NoKey
        ));
        assert!(matches!(
            Identity::from_pem(key.as_bytes(), key.as_bytes()).unwrap_err(),
            PemError::NoCertificate
        ));
    }

    #[test]
    fn roots_come_from_certificate_blocks_only() {
        let c = ca();
        assert_eq!(roots_from_pem(c.0.pem().as_bytes()).unwrap().len(), 1);
        assert!(matches!(
            roots_from_pem(b"nothing here\n").unwrap_err(),
            PemError::NoCertificate
        ));
        let e = roots_from_pem(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(matches!(e, PemError::Pem(_)), "{e}");
        assert!(builtin_roots().len() > 100);
    }

    #[test]
    fn refusals_are_classified() {
        let io = std::io::Error::other(rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        assert_eq!(failure(&io).unwrap().refusal, Refusal::ClientCertificate);
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(failure(&e).unwrap().refusal, Refusal::UntrustedIssuer);
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(failure(&eof).unwrap().refusal, Refusal::NotTls);
        assert!(failure(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)).is_none());
    }
}
