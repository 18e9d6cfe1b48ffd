//! Image signatures in cosign v3's format, a Sigstore bundle (v0.3) attached
//! to the image as an OCI 1.1 referrer, checked with the node's trusted keys
//! (P-256 or ed25519) beside the classic `.sig` tag ([`crate::cosign`]).
//!
//! What cosign v3 writes (`cosign sign --key`, sigstore/cosign
//! `cmd/cosign/cli/sign/sign.go` `signDigestBundle` and
//! `pkg/oci/remote/write.go` `WriteAttestationNewBundleFormat`):
//!
//! - an in-toto Statement v1, `{"_type":"https://in-toto.io/Statement/v1",
//!   "subject":[{"digest":{"sha256":HEX},"annotations":{..}}],
//!   "predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{}}`;
//!   it names the manifest digest and **no image name**: the subject has no
//!   `name`, the predicate is empty (cosign 3.0.4 left it out altogether);
//! - in a DSSE envelope (payload type `application/vnd.in-toto+json`), the
//!   signature over the DSSE pre-authentication encoding
//!   `"DSSEv1" SP len(type) SP type SP len(payload) SP payload`;
//! - in a bundle `{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json",
//!   "verificationMaterial":{..},"dsseEnvelope":{..}}`;
//! - stored as the one layer (of that media type) of an OCI manifest whose
//!   `artifactType` is the bundle media type and whose `subject` is the
//!   image manifest, found through the referrers API
//!   (`GET /v2/NAME/referrers/DIGEST`) or, on registries without it, in the
//!   OCI image index tagged `sha256-HEX` (the referrers tag schema).
//!
//! herd checks: the referrer's subject is the image, the DSSE signature is
//! by a trusted key, the statement is a v1 Statement with cosign's sign
//! predicate type whose subject carries the manifest digest, and the image
//! name. `herd sign-image --bundle` puts the name (registry/repository, as
//! the classic payload's `docker-reference`) in the subject's `name`, and
//! it is held to the key's `signed_identity` rule as for `.sig`. A bundle
//! without a name (every cosign v3 bundle) vouches for a digest only and
//! is refused ([`crate::Error::NoIdentity`]) unless the key's policy says
//! `bundle_without_identity = true`.
//!
//! Transparency-log entries and timestamps in the bundle's verification
//! material are not checked: trust is in the node's keys, as for `.sig`.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::cosign::TrustedKey;
use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::registry::Registry;
use crate::{Digest, Error, Reference};

/// The bundle media type (and the referrer's artifact type).
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The DSSE payload type of an in-toto statement.
pub const INTOTO: &str = "application/vnd.in-toto+json";
/// The in-toto statement type.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// cosign's predicate type for an image signature.
pub const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// The OCI empty descriptor's media type (a referrer's config).
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The annotation cosign sets to the predicate type on the referrer.
pub const PREDICATE_ANNOTATION: &str = "dev.sigstore.bundle.predicateType";

const EMPTY_CONFIG: &[u8] = b"{}";

/// The referrers tag schema's tag for a manifest.
pub fn referrers_tag(d: &Digest) -> String {
    format!("sha256-{}", d.hex())
}

/// The DSSE pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBundle {
    media_type: String,
    #[serde(default)]
    verification_material: serde_json::Value,
    dsse_envelope: Option<RawEnvelope>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope {
    payload: String,
    payload_type: String,
    signatures: Vec<RawSignature>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RawSignature {
    sig: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    keyid: String,
}

/// A bundle's DSSE envelope, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The payload type.
    pub payload_type: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The raw signatures.
    pub signatures: Vec<Vec<u8>>,
}

/// The largest bundle read (they are a few kilobytes).
pub const MAX_BUNDLE: u64 = 1 << 20;

fn b64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
        .ok()
}

/// Parses a v0.3 bundle holding a DSSE envelope (bytes from a registry:
/// untrusted). Err says what is wrong.
pub fn parse_bundle(bytes: &[u8]) -> Result<Envelope, String> {
    if bytes.len() as u64 > MAX_BUNDLE {
        return Err(format!("larger than {MAX_BUNDLE} bytes"));
    }
    let b: RawBundle = serde_json::from_slice(bytes).map_err(|e| format!("not a bundle: {e}"))?;
    if b.media_type != BUNDLE_V03 {
        return Err(format!(
            "media type {:?}, herd reads {BUNDLE_V03}",
            b.media_type.chars().take(100).collect::<String>()
        ));
    }
    let e = b
        .dsse_envelope
        .ok_or("no dsseEnvelope (a message-signature bundle is no image signature)")?;
    let payload = b64(&e.payload).ok_or("the DSSE payload is not base64")?;
    if e.signatures.is_empty() || e.signatures.len() > 16 {
        return Err(format!(
            "{} DSSE signatures (1 to 16 expected)",
            e.signatures.len()
        ));
    }
    let signatures = e
        .signatures
        .iter()
        .map(|s| b64(&s.sig).ok_or("a DSSE signature is not base64"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Envelope {
        payload_type: e.payload_type,
        payload,
        signatures,
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct RawStatement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<RawSubject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    predicate: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RawSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default)]
    digest: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<serde_json::Value>,
}

/// The parts of an in-toto statement herd checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// `_type`.
    pub kind: String,
    /// `predicateType`.
    pub predicate_type: String,
    /// Each subject's `name` (if any) and sha256 digest (if any).
    pub subjects: Vec<(Option<String>, Option<String>)>,
}

/// Parses an in-toto statement (a DSSE payload: untrusted).
pub fn parse_statement(bytes: &[u8]) -> Result<Statement, String> {
    let s: RawStatement =
        serde_json::from_slice(bytes).map_err(|e| format!("not an in-toto statement: {e}"))?;
    Ok(Statement {
        kind: s.kind,
        predicate_type: s.predicate_type,
        subjects: s
            .subject
            .into_iter()
            .map(|x| (x.name, x.digest.get("sha256").cloned()))
            .collect(),
    })
}

/// The statement `herd sign-image --bundle` signs: `name` (registry/
/// repository) at `digest`, cosign's sign predicate.
pub fn statement(name: &str, digest: &Digest) -> Vec<u8> {
    serde_json::to_vec(&RawStatement {
        kind: STATEMENT_V1.into(),
        subject: vec![RawSubject {
            name: Some(name.into()),
            digest: BTreeMap::from([("sha256".to_string(), digest.hex())]),
            annotations: None,
        }],
        predicate_type: SIGN_PREDICATE.into(),
        predicate: Some(serde_json::json!({})),
    })
    .expect("statement serialises")
}

/// A v0.3 bundle of `statement` signed (DSSE) with a herd key.
pub fn signed_bundle(statement: &[u8], key: &herd_release::SigningKey) -> Vec<u8> {
    let sig = hex::decode(key.sign(&pae(INTOTO, statement))).expect("herd signatures are hex");
    let std = base64::engine::general_purpose::STANDARD;
    serde_json::to_vec(&RawBundle {
        media_type: BUNDLE_V03.into(),
        verification_material: serde_json::json!({
            "publicKey": {"hint": TrustedKey::parse(&key.public().0, "herd key")
                .map(|k| k.id())
                .unwrap_or_default()},
            "tlogEntries": [],
        }),
        dsse_envelope: Some(RawEnvelope {
            payload: std.encode(statement),
            payload_type: INTOTO.into(),
            signatures: vec![RawSignature {
                sig: std.encode(sig),
                keyid: String::new(),
            }],
        }),
    })
    .expect("bundle serialises")
}

/// A descriptor as referrers use them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct RefDescriptor {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// An OCI image index (a referrers list).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefIndex {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<RefDescriptor>,
}

/// A referrer manifest.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefManifest {
    schema_version: u32,
    media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    config: RefDescriptor,
    layers: Vec<RefDescriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<RefDescriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

fn malformed(what: String) -> impl FnOnce(serde_json::Error) -> Error {
    move |e| Error::Malformed {
        what,
        message: e.to_string(),
    }
}

/// The referrers of `digest` in `repo`: the referrers API's answer, or the
/// referrers tag schema's index; None when there are none.
fn referrers(reg: &Registry, repo: &str, digest: &Digest) -> Result<Option<RefIndex>, Error> {
    let (bytes, what) = match reg.referrers(repo, digest) {
        Ok(Some(b)) => (b, format!("referrers of {digest}")),
        Ok(None) => match reg.manifest(repo, &referrers_tag(digest)) {
            Ok((b, _, _)) => (b, format!("referrers index {}", referrers_tag(digest))),
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(malformed(what))
}

/// Signs the image `r` at `digest` with a herd key in cosign v3's format
/// and attaches the bundle as a referrer: the referrer manifest is pushed
/// by digest and listed in the `sha256-HEX` referrers index (the tag
/// schema, which every registry serves; a registry with the referrers API
/// lists it there too when it sees the manifest's subject).
pub fn sign(
    reg: &Registry,
    r: &Reference,
    digest: &Digest,
    subject_media_type: &str,
    subject_size: u64,
    key: &herd_release::SigningKey,
) -> Result<Digest, Error> {
    let repo = &r.repository;
    let bundle = signed_bundle(&statement(&r.name(), digest), key);
    reg.push_blob(repo, EMPTY_CONFIG)?;
    reg.push_blob(repo, &bundle)?;
    let annotations = BTreeMap::from([
        (
            "dev.sigstore.bundle.content".to_string(),
            "dsse-envelope".to_string(),
        ),
        (PREDICATE_ANNOTATION.to_string(), SIGN_PREDICATE.to_string()),
    ]);
    let m = RefManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.into(),
        artifact_type: Some(BUNDLE_V03.into()),
        config: RefDescriptor {
            media_type: EMPTY.into(),
            digest: Digest::of(EMPTY_CONFIG),
            size: EMPTY_CONFIG.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
        },
        layers: vec![RefDescriptor {
            media_type: BUNDLE_V03.into(),
            digest: Digest::of(&bundle),
            size: bundle.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }],
        subject: Some(RefDescriptor {
            media_type: subject_media_type.into(),
            digest: digest.clone(),
            size: subject_size,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }),
        annotations: annotations.clone(),
    };
    let bytes = serde_json::to_vec(&m).expect("manifest serialises");
    let md = Digest::of(&bytes);
    reg.push_manifest(repo, &md.to_string(), &bytes, OCI_MANIFEST)?;
    let tag = referrers_tag(digest);
    let mut index = match reg.manifest(repo, &tag) {
        Ok((b, _, _)) => serde_json::from_slice::<RefIndex>(&b)
            .map_err(malformed(format!("referrers index {tag}")))?,
        Err(Error::NotFound(_)) => RefIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: Vec::new(),
        },
        Err(e) => return Err(e),
    };
    if !index.manifests.iter().any(|d| d.digest == md) {
        index.manifests.push(RefDescriptor {
            media_type: OCI_MANIFEST.into(),
            digest: md.clone(),
            size: bytes.len() as u64,
            artifact_type: Some(BUNDLE_V03.into()),
            annotations,
        });
        let ib = serde_json::to_vec(&index).expect("index serialises");
        reg.push_manifest(repo, &tag, &ib, OCI_INDEX)?;
    }
    Ok(md)
}

/// Finds a cosign v3 bundle for the manifest `digest` signed by one of
/// `keys` and vouching for `r` under the key's rules; returns the key's id.
pub fn verify(
    reg: &Registry,
    r: &Reference,
    digest: &Digest,
    keys: &[TrustedKey],
) -> Result<String, Error> {
    let untrusted = |m: String| Error::Untrusted {
        image: format!("{}@{digest}", r.name()),
        message: m,
    };
    let tag = referrers_tag(digest);
    let Some(index) = referrers(reg, &r.repository, digest)? else {
        return Err(untrusted(format!(
            "it has no cosign bundle (no referrers, no {tag} in {})",
            r.name()
        )));
    };
    let mut seen = Vec::new();
    let mut refused = None;
    let candidates = index
        .manifests
        .iter()
        .filter(|d| d.artifact_type.as_deref() == Some(BUNDLE_V03))
        .take(32);
    for d in candidates {
        let (bytes, _, _) = reg.manifest(&r.repository, &d.digest.to_string())?;
        let m: RefManifest =
            serde_json::from_slice(&bytes).map_err(malformed(format!("referrer {}", d.digest)))?;
        if m.subject.as_ref().map(|s| &s.digest) != Some(digest) {
            seen.push(format!("a referrer of another manifest ({})", d.digest));
            continue;
        }
        for l in m.layers.iter().filter(|l| l.media_type == BUNDLE_V03) {
            if l.size > MAX_BUNDLE {
                seen.push(format!("a bundle of {} bytes", l.size));
                continue;
            }
            let desc = crate::manifest::Descriptor {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
                annotations: BTreeMap::new(),
                platform: None,
            };
            let b = reg.small_blob(&r.repository, &desc)?;
            match check_bundle(&b, Some(r), digest, keys) {
                Ok(k) => return Ok(k),
                Err(Refusal::Seen(s)) => seen.push(s),
                Err(Refusal::Error(e)) => {
                    refused.get_or_insert(e);
                }
            }
        }
    }
    if let Some(e) = refused {
        return Err(e);
    }
    Err(untrusted(if seen.is_empty() {
        format!("no cosign bundle among the referrers of {digest}")
    } else {
        format!(
            "no valid cosign bundle by a trusted key; found {}",
            seen.join("; ")
        )
    }))
}

/// Why one bundle was not accepted.
pub enum Refusal {
    /// What was found, for the summary.
    Seen(String),
    /// A refusal of its own: a valid signature by a trusted key whose name
    /// does not do ([`Error::WrongIdentity`], [`Error::NoIdentity`]).
    Error(Error),
}

/// Checks one bundle (bytes) for the manifest `digest` asked for as
/// `asked`: Ok(key id).
pub fn check_bundle(
    bytes: &[u8],
    asked: Option<&Reference>,
    digest: &Digest,
    keys: &[TrustedKey],
) -> Result<String, Refusal> {
    let env = parse_bundle(bytes)
        .map_err(|e| Refusal::Seen(format!("a bundle that does not parse ({e})")))?;
    if env.payload_type != INTOTO {
        return Err(Refusal::Seen(format!(
            "a bundle whose payload type is {:?}, not {INTOTO}",
            env.payload_type.chars().take(100).collect::<String>()
        )));
    }
    let signed = pae(&env.payload_type, &env.payload);
    let Some(k) = keys
        .iter()
        .find(|k| env.signatures.iter().any(|s| k.verify(&signed, s)))
    else {
        return Err(Refusal::Seen(
            "a bundle signed by a key this node does not trust (or over other bytes)".into(),
        ));
    };
    let st = parse_statement(&env.payload)
        .map_err(|e| Refusal::Seen(format!("a signed bundle whose payload {e}")))?;
    if st.kind != STATEMENT_V1 {
        return Err(Refusal::Seen(format!(
            "a signed statement of type {:?}",
            st.kind.chars().take(100).collect::<String>()
        )));
    }
    if st.predicate_type != SIGN_PREDICATE {
        return Err(Refusal::Seen(format!(
            "a signed attestation of predicate type {:?}, not an image signature ({SIGN_PREDICATE})",
            st.predicate_type.chars().take(100).collect::<String>()
        )));
    }
    let hex = digest.hex();
    let Some((name, _)) = st
        .subjects
        .iter()
        .find(|(_, d)| d.as_deref() == Some(hex.as_str()))
    else {
        let others: Vec<String> = st
            .subjects
            .iter()
            .filter_map(|(_, d)| {
                d.as_ref()
                    .map(|d| format!("sha256:{}", d.chars().take(64).collect::<String>()))
            })
            .collect();
        return Err(Refusal::Seen(format!(
            "a bundle signed for another manifest ({})",
            others.join(", ")
        )));
    };
    let Some(asked) = asked else {
        return Ok(k.id());
    };
    match name {
        Some(signed) => k
            .check_identity(signed, asked, digest)
            .map_err(Refusal::Error)?,
        None if k.bundle_without_identity => {}
        None => {
            return Err(Refusal::Error(Error::NoIdentity {
                image: asked.to_string(),
                key: k.id(),
            }))
        }
    }
    Ok(k.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_dsse_v1() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn signs_and_checks_a_bundle() {
        let k = herd_release::SigningKey::generate().unwrap();
        let tk = TrustedKey::parse(&k.public().0, "k").unwrap();
        let d = Digest::of(b"m");
        let r = Reference::parse("127.0.0.1:5000/team/web:1").unwrap();
        let b = signed_bundle(&statement(&r.name(), &d), &k);
        assert!(
            matches!(check_bundle(&b, Some(&r), &d, std::slice::from_ref(&tk)), Ok(id) if id == tk.id())
        );
        // Another digest, another key, another name.
        let e = check_bundle(&b, Some(&r), &Digest::of(b"n"), std::slice::from_ref(&tk));
        assert!(matches!(e, Err(Refusal::Seen(s)) if s.contains("another manifest")));
        let other = TrustedKey::parse(
            &herd_release::SigningKey::generate().unwrap().public().0,
            "o",
        )
        .unwrap();
        let e = check_bundle(&b, Some(&r), &d, &[other]);
        assert!(matches!(e, Err(Refusal::Seen(s)) if s.contains("does not trust")));
        let o = Reference::parse("127.0.0.1:5000/team/other:1").unwrap();
        let e = check_bundle(&b, Some(&o), &d, std::slice::from_ref(&tk));
        assert!(matches!(e, Err(Refusal::Error(Error::WrongIdentity(_)))));
        // A payload changed after signing.
        let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let std = base64::engine::general_purpose::STANDARD;
        let forged = statement(&r.name(), &Digest::of(b"evil"));
        v["dsseEnvelope"]["payload"] = std.encode(forged).into();
        let e = check_bundle(
            &serde_json::to_vec(&v).unwrap(),
            Some(&r),
            &Digest::of(b"evil"),
            &[tk],
        );
        assert!(matches!(e, Err(Refusal::Seen(s)) if s.contains("does not trust")));
    }

    #[test]
    fn every_prefix_and_byte_flip_parses_or_fails_cleanly() {
        let k = herd_release::SigningKey::generate().unwrap();
        let b = signed_bundle(&statement("r.example/a", &Digest::of(b"m")), &k);
        for i in 0..=b.len() {
            let _ = parse_bundle(&b[..i]);
        }
        for i in (0..b.len()).step_by(3) {
            for x in [b'"', b'{', 0xff, b'A'] {
                let mut v = b.clone();
                v[i] = x;
                if let Ok(e) = parse_bundle(&v) {
                    let _ = parse_statement(&e.payload);
                }
            }
        }
    }
}
