//! Image signatures in cosign's key-based format, so users can sign with
//! the tools they already have (`cosign sign --key`) or with `herd
//! sign-image`:
//!
//! - the signed payload is cosign's "simple signing" JSON naming the image
//!   manifest digest: `{"critical":{"identity":{"docker-reference":NAME},
//!   "image":{"docker-manifest-digest":DIGEST},"type":"cosign container
//!   image signature"},"optional":null}`;
//! - it is stored in the image's repository as a layer (media type
//!   `application/vnd.dev.cosign.simplesigning.v1+json`) of an OCI manifest
//!   tagged `sha256-<hex>.sig`, with the base64 signature in the layer's
//!   `dev.cosignproject.cosign/signature` annotation;
//! - ECDSA P-256 signatures are ASN.1 DER over SHA-256 of the payload
//!   (cosign's default keys); ed25519 signatures are over the payload bytes.
//!
//! Public keys are PEM `PUBLIC KEY` (SubjectPublicKeyInfo, as `cosign
//! generate-key-pair` writes `cosign.pub`) for P-256 or ed25519.

use std::collections::BTreeMap;

use base64::Engine;
use ed25519_dalek::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};

use crate::manifest::{Descriptor, Manifest, OCI_CONFIG, OCI_MANIFEST};
use crate::registry::Registry;
use crate::{Digest, Error, Reference, SignedIdentity};

/// Media type of a signature layer.
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation carrying the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The payload's type field.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";

/// The tag a manifest's signatures live under.
pub fn signature_tag(manifest: &Digest) -> String {
    format!("sha256-{}.sig", manifest.hex())
}

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    critical: Critical,
    optional: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The simple-signing payload for `name` (registry/repository) at `digest`.
pub fn payload(name: &str, digest: &Digest) -> Vec<u8> {
    serde_json::to_vec(&Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: name.into(),
            },
            image: Image {
                docker_manifest_digest: digest.to_string(),
            },
            kind: PAYLOAD_TYPE.into(),
        },
        optional: None,
    })
    .expect("payload serialises")
}

/// A key a node trusts, and which image names its signatures may vouch
/// for.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    key: PublicKey,
    /// How a signature's `docker-reference` must match the reference
    /// asked for ([`SignedIdentity::MatchRepository`] unless the policy
    /// says otherwise).
    pub identity: SignedIdentity,
    /// Whether this key's cosign v3 bundles that name no image (cosign
    /// signs the digest only) are accepted for any image name
    /// ([`crate::bundle`]); off unless the policy opts in.
    pub bundle_without_identity: bool,
}

#[derive(Debug, Clone)]
enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl TrustedKey {
    /// The same key with another identity rule.
    pub fn with_identity(self, identity: SignedIdentity) -> TrustedKey {
        TrustedKey { identity, ..self }
    }

    /// The same key, accepting (or not) its bundles that name no image.
    pub fn with_bundle_without_identity(self, yes: bool) -> TrustedKey {
        TrustedKey {
            bundle_without_identity: yes,
            ..self
        }
    }

    /// Parses a PEM public key (P-256 or ed25519) or a herd public key
    /// (64 hex digits, as `herd key show` prints).
    pub fn parse(text: &str, what: &str) -> Result<TrustedKey, Error> {
        let t = text.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut raw = [0u8; 32];
            hex::decode_to_slice(t, &mut raw).expect("checked hex");
            return ed25519_dalek::VerifyingKey::from_bytes(&raw)
                .map(|k| PublicKey::Ed25519(k).into())
                .map_err(|e| Error::Key {
                    what: what.into(),
                    message: e.to_string(),
                });
        }
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(t) {
            return Ok(PublicKey::P256(k).into());
        }
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(t) {
            return Ok(PublicKey::Ed25519(k).into());
        }
        Err(Error::Key {
            what: what.into(),
            message: "not a PEM PUBLIC KEY for ECDSA P-256 or ed25519, nor a herd public key (64 hex digits); encrypted or RSA keys are not supported".into(),
        })
    }

    /// A short id for logs: sha256 of the key's bytes, 16 hex digits.
    pub fn id(&self) -> String {
        let bytes = match &self.key {
            PublicKey::Ed25519(k) => k.to_bytes().to_vec(),
            PublicKey::P256(k) => k.to_encoded_point(true).as_bytes().to_vec(),
        };
        Digest::of(&bytes).hex()[..16].to_string()
    }

    /// Whether a valid signature of this key naming `signed` may stand for
    /// the image asked for as `asked` (manifest `digest`), by this key's
    /// identity rule: the refusal names both references, the key and the rule.
    pub(crate) fn check_identity(
        &self,
        signed: &str,
        asked: &Reference,
        digest: &Digest,
    ) -> Result<(), Error> {
        self.identity.check(signed, asked, digest).map_err(|why| {
            Error::WrongIdentity(Box::new(crate::WrongIdentity {
                asked: asked.to_string(),
                signed: signed.to_string(),
                key: self.id(),
                rule: self.identity.name(),
                why,
            }))
        })
    }

    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match &self.key {
            PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
                .is_ok_and(|s| k.verify_strict(msg, &s).is_ok()),
            PublicKey::P256(k) => {
                use p256::ecdsa::signature::Verifier;
                p256::ecdsa::Signature::from_der(sig)
                    .or_else(|_| p256::ecdsa::Signature::from_slice(sig))
                    .is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
        }
    }
}

impl From<PublicKey> for TrustedKey {
    fn from(key: PublicKey) -> TrustedKey {
        TrustedKey {
            key,
            identity: SignedIdentity::default(),
            bundle_without_identity: false,
        }
    }
}

/// The signature layer (payload bytes and descriptor) for `name` at
/// `digest`, signed with a herd key.
fn signature_layer(
    name: &str,
    digest: &Digest,
    key: &herd_release::SigningKey,
) -> (Vec<u8>, Descriptor) {
    let body = payload(name, digest);
    let sig = hex::decode(key.sign(&body)).expect("herd signatures are hex");
    let layer = Descriptor {
        media_type: SIMPLESIGNING.into(),
        digest: Digest::of(&body),
        size: body.len() as u64,
        annotations: BTreeMap::from([(
            SIGNATURE_ANNOTATION.to_string(),
            base64::engine::general_purpose::STANDARD.encode(sig),
        )]),
        platform: None,
    };
    (body, layer)
}

/// The (empty) config every signature manifest carries.
const SIG_CONFIG: &[u8] = b"{}";

fn new_signature_manifest() -> Manifest {
    Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: Digest::of(SIG_CONFIG),
            size: SIG_CONFIG.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        },
        layers: vec![],
        annotations: BTreeMap::new(),
    }
}

/// Adds `layer` to `m` unless an identical signature is there; says
/// whether it was added.
fn append(m: &mut Manifest, layer: Descriptor) -> bool {
    if m.layers
        .iter()
        .any(|l| l.annotations == layer.annotations && l.digest == layer.digest)
    {
        return false;
    }
    m.layers.push(layer);
    true
}

/// Signs the image `r` at `digest` with a herd key and stores the
/// signature in the registry beside the image (appending to any there).
pub fn sign(
    registry: &Registry,
    r: &Reference,
    digest: &Digest,
    key: &herd_release::SigningKey,
) -> Result<(), Error> {
    let (body, layer) = signature_layer(&r.name(), digest, key);
    let tag = signature_tag(digest);
    let mut m = match registry.manifest(&r.repository, &tag) {
        Ok((bytes, _, _)) => {
            serde_json::from_slice::<Manifest>(&bytes).map_err(|e| Error::Malformed {
                what: format!("signature manifest {tag}"),
                message: e.to_string(),
            })?
        }
        Err(Error::NotFound(_)) => {
            registry.push_blob(&r.repository, SIG_CONFIG)?;
            new_signature_manifest()
        }
        Err(e) => return Err(e),
    };
    if !append(&mut m, layer) {
        return Ok(());
    }
    registry.push_blob(&r.repository, &body)?;
    let bytes = serde_json::to_vec(&m).expect("manifest serialises");
    registry.push_manifest(&r.repository, &tag, &bytes, OCI_MANIFEST)?;
    Ok(())
}

/// Signs the image at `digest` in an OCI layout: the signature manifest
/// goes into the layout under the name `sha256-<hex>.sig`, so copying the
/// layout's images to a registry (e.g. `skopeo copy oci:DIR:NAME
/// docker://...`) carries the signature along. `name` is the
/// registry/repository the image will be pulled as.
pub fn sign_layout(
    layout: &crate::layout::Layout,
    name: &str,
    digest: &Digest,
    key: &herd_release::SigningKey,
) -> Result<(), Error> {
    let (body, layer) = signature_layer(name, digest, key);
    let tag = signature_tag(digest);
    let mut m = match layout.manifest(&tag) {
        Ok((m, _)) => m,
        Err(Error::NotFound(_)) => new_signature_manifest(),
        Err(e) => return Err(e),
    };
    layout.put(SIG_CONFIG)?;
    layout.put(&body)?;
    if append(&mut m, layer) {
        layout.add_image(&m, &tag)?;
    }
    Ok(())
}

/// Finds a signature of the manifest `digest` by one of `keys`, in the
/// classic `.sig` tag or as a cosign v3 bundle ([`crate::bundle`]);
/// returns the id of the key that signed. Refuses with the most telling
/// of the two answers: a valid signature for another name
/// ([`Error::WrongIdentity`], [`Error::NoIdentity`]) first, then what
/// both found.
pub fn verify_any(
    registry: &Registry,
    r: &Reference,
    digest: &Digest,
    keys: &[TrustedKey],
) -> Result<String, Error> {
    let sig = match verify(registry, r, digest, keys) {
        Ok(k) => return Ok(k),
        Err(e) if keys.is_empty() => return Err(e),
        Err(e) => e,
    };
    let bundle = match crate::bundle::verify(registry, r, digest, keys) {
        Ok(k) => return Ok(k),
        Err(e) => e,
    };
    Err(match (sig, bundle) {
        (e @ (Error::WrongIdentity(_) | Error::NoIdentity { .. }), _) => e,
        (_, e @ (Error::WrongIdentity(_) | Error::NoIdentity { .. })) => e,
        (Error::Untrusted { image, message: a }, Error::Untrusted { message: b, .. }) => {
            Error::Untrusted {
                image,
                message: format!("{a}; {b}"),
            }
        }
        (Error::Untrusted { .. }, e) | (e, _) => e,
    })
}

/// Finds a signature of the manifest `digest` by one of `keys` in the
/// classic `.sig` tag; returns the id of the key that signed. Refuses with
/// what was found otherwise.
pub fn verify(
    registry: &Registry,
    r: &Reference,
    digest: &Digest,
    keys: &[TrustedKey],
) -> Result<String, Error> {
    let untrusted = |m: String| Error::Untrusted {
        image: format!("{}@{digest}", r.name()),
        message: m,
    };
    if keys.is_empty() {
        return Err(untrusted(
            "the node trusts no image keys (add one to the policy)".into(),
        ));
    }
    let tag = signature_tag(digest);
    let (bytes, _, _) = match registry.manifest(&r.repository, &tag) {
        Ok(x) => x,
        Err(Error::NotFound(_)) => {
            return Err(untrusted(format!(
                "it is not signed (no {tag} in {})",
                r.name()
            )))
        }
        Err(e) => return Err(e),
    };
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
        what: format!("signature manifest {tag}"),
        message: e.to_string(),
    })?;
    check_signatures(
        &m,
        Some(r),
        digest,
        keys,
        |l| registry.small_blob(&r.repository, l),
        untrusted,
    )
}

/// Finds a signature of the manifest `digest` by one of `keys` in the OCI
/// layout (where [`sign_layout`] puts it); returns the signing key's id.
pub fn verify_layout(
    layout: &crate::layout::Layout,
    name: &str,
    digest: &Digest,
    keys: &[TrustedKey],
) -> Result<String, Error> {
    let untrusted = |m: String| Error::Untrusted {
        image: format!("{name}@{digest}"),
        message: m,
    };
    if keys.is_empty() {
        return Err(untrusted(
            "the node trusts no image keys (add one to the policy)".into(),
        ));
    }
    let tag = signature_tag(digest);
    let m = match layout.manifest(&tag) {
        Ok((m, _)) => m,
        Err(Error::NotFound(_)) => {
            return Err(untrusted(format!(
                "it is not signed (no {tag} in the layout; sign it with `herd sign-image oci:DIR:NAME`)"
            )))
        }
        Err(e) => return Err(e),
    };
    // A layout name is no repository: there is no name to match the
    // signature's identity against.
    check_signatures(
        &m,
        None,
        digest,
        keys,
        |l| layout.get(&l.digest, crate::manifest::MAX_DOCUMENT),
        untrusted,
    )
}

/// The signature layers of `m` checked against `keys`, `digest` and, for
/// an image asked for as `asked`, each key's identity rule: Ok(key id).
/// Refuses with [`Error::WrongIdentity`] when the only valid signatures
/// name another image, else with `untrusted(what was found)`.
fn check_signatures(
    m: &Manifest,
    asked: Option<&Reference>,
    digest: &Digest,
    keys: &[TrustedKey],
    fetch: impl Fn(&Descriptor) -> Result<Vec<u8>, Error>,
    untrusted: impl Fn(String) -> Error,
) -> Result<String, Error> {
    let tag = signature_tag(digest);
    let mut seen = Vec::new();
    let mut wrong_identity = None;
    for l in m.layers.iter().filter(|l| l.media_type == SIMPLESIGNING) {
        let Some(sig) = l.annotations.get(SIGNATURE_ANNOTATION) else {
            continue;
        };
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig.trim()) else {
            seen.push("a signature that is not base64".to_string());
            continue;
        };
        let body = fetch(l)?;
        let Some(k) = keys.iter().find(|k| k.verify(&body, &sig)) else {
            seen.push("a signature by a key this node does not trust (or over other bytes)".into());
            continue;
        };
        let p: Payload = serde_json::from_slice(&body).map_err(|e| Error::Malformed {
            what: "signature payload".into(),
            message: e.to_string(),
        })?;
        if p.critical.kind != PAYLOAD_TYPE {
            seen.push(format!("a signed payload of type {:?}", p.critical.kind));
            continue;
        }
        if p.critical.image.docker_manifest_digest != digest.to_string() {
            seen.push(format!(
                "a signature for another manifest ({})",
                p.critical.image.docker_manifest_digest
            ));
            continue;
        }
        let signed = p.critical.identity.docker_reference;
        if let Some(asked) = asked {
            if let Err(e) = k.check_identity(&signed, asked, digest) {
                wrong_identity.get_or_insert(e);
                continue;
            }
        }
        return Ok(k.id());
    }
    if let Some(e) = wrong_identity {
        return Err(e);
    }
    Err(untrusted(if seen.is_empty() {
        format!("{tag} holds no cosign signature")
    } else {
        format!(
            "no valid signature by a trusted key; found {}",
            seen.join("; ")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_cosigns_shape() {
        let d = Digest::of(b"m");
        let p: serde_json::Value = serde_json::from_slice(&payload("r/x", &d)).unwrap();
        assert_eq!(
            p["critical"]["image"]["docker-manifest-digest"],
            d.to_string()
        );
        assert_eq!(p["critical"]["identity"]["docker-reference"], "r/x");
        assert_eq!(p["critical"]["type"], PAYLOAD_TYPE);
        assert!(p["optional"].is_null());
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", d.hex()));
    }

    #[test]
    fn keys_and_signatures() {
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let k = TrustedKey::parse(&pem, "test").unwrap();
        let sig: p256::ecdsa::Signature = sk.sign(b"payload");
        assert!(k.verify(b"payload", sig.to_der().as_bytes()));
        assert!(!k.verify(b"payloaD", sig.to_der().as_bytes()));
        let herd = herd_release::SigningKey::generate().unwrap();
        let hk = TrustedKey::parse(&herd.public().0, "herd").unwrap();
        assert!(hk.verify(b"m", &hex::decode(herd.sign(b"m")).unwrap()));
        assert!(!k.verify(b"m", &hex::decode(herd.sign(b"m")).unwrap()));
        assert!(TrustedKey::parse(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            "x"
        )
        .is_err());
    }
}
