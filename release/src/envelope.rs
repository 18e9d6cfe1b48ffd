//! Signed envelopes: the exact signed text plus signatures over its bytes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Error, KeyId, PublicKey, SigningKey};

/// One signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Which key.
    pub keyid: KeyId,
    /// ed25519 signature, hex.
    pub sig: String,
}

/// A signed document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The signed JSON text, exactly as signed.
    pub signed: String,
    /// Signatures over `signed`'s UTF-8 bytes.
    pub signatures: Vec<Signature>,
}

impl Envelope {
    /// Signs `doc` with every key given.
    pub fn sign<T: Serialize>(doc: &T, keys: &[&SigningKey]) -> Envelope {
        let signed = serde_json::to_string_pretty(doc).expect("metadata serialises");
        let signatures = keys
            .iter()
            .map(|k| Signature {
                keyid: k.public().id(),
                sig: k.sign(signed.as_bytes()),
            })
            .collect();
        Envelope { signed, signatures }
    }

    /// Parses an envelope from bytes.
    pub fn parse(bytes: &[u8], what: &'static str) -> Result<Envelope, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
            what,
            message: e.to_string(),
        })
    }

    /// Serialised form.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("envelope serialises")
    }

    /// Checks that at least `threshold` distinct keys of `keys` signed.
    pub fn check(
        &self,
        keys: &BTreeMap<KeyId, PublicKey>,
        threshold: u32,
        what: &'static str,
    ) -> Result<(), Error> {
        let mut good = BTreeSet::new();
        let mut unknown = BTreeSet::new();
        for s in &self.signatures {
            match keys.get(&s.keyid) {
                // The id must be the key's own id, not just a map label.
                Some(k) if k.id() == s.keyid && k.verify(self.signed.as_bytes(), &s.sig) => {
                    good.insert(s.keyid.clone());
                }
                Some(_) => {}
                None => {
                    unknown.insert(s.keyid.chars().take(16).collect::<String>());
                }
            }
        }
        if threshold == 0 || good.len() < threshold as usize {
            return Err(Error::Signatures {
                what,
                valid: good.len(),
                threshold,
                unknown: if unknown.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; signed by unknown key(s) {}",
                        unknown.into_iter().collect::<Vec<_>>().join(", ")
                    )
                },
            });
        }
        Ok(())
    }

    /// The signed document, parsed (call after [`Envelope::check`]).
    /// Refuses a document whose `spec` is newer than this herd's
    /// ([`crate::SPEC`]) before reading it as `T`.
    pub fn document<T: serde::de::DeserializeOwned>(&self, what: &'static str) -> Result<T, Error> {
        let malformed = |e: serde_json::Error| Error::Malformed {
            what,
            message: e.to_string(),
        };
        #[derive(Deserialize)]
        struct Spec {
            #[serde(default)]
            spec: Option<serde_json::Value>,
        }
        let Spec { spec } = serde_json::from_str(&self.signed).map_err(malformed)?;
        if let Some(spec) = spec {
            match spec.as_u64() {
                Some(n) if n <= crate::SPEC => {}
                Some(n) => {
                    return Err(Error::NewerSpec {
                        what,
                        spec: n,
                        known: crate::SPEC,
                    })
                }
                None => {
                    return Err(Error::Malformed {
                        what,
                        message: format!("spec {spec} is not a whole number"),
                    })
                }
            }
        }
        serde_json::from_str(&self.signed).map_err(malformed)
    }
}
