//! ed25519 keys: files, ids, signing.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// A key id: hex sha256 of the raw public key.
pub type KeyId = String;

/// A public key (hex of the 32 raw bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey(pub String);

impl PublicKey {
    /// The key id.
    pub fn id(&self) -> KeyId {
        hex::encode(Sha256::digest(hex::decode(&self.0).unwrap_or_default()))
    }

    /// Checks `sig` (hex) over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &str) -> bool {
        let (Ok(k), Ok(s)) = (hex::decode(&self.0), hex::decode(sig)) else {
            return false;
        };
        let (Ok(k), Ok(s)) = (
            <[u8; 32]>::try_from(k.as_slice()),
            <[u8; 64]>::try_from(s.as_slice()),
        ) else {
            return false;
        };
        let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&k) else {
            return false;
        };
        vk.verify(msg, &ed25519_dalek::Signature::from_bytes(&s))
            .is_ok()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    private: String,
    public: String,
}

/// A private signing key.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A new random key (from the OS's random source).
    pub fn generate() -> Result<SigningKey, Error> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| Error::Io {
            what: "reading random bytes".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(hex::encode(self.0.verifying_key().to_bytes()))
    }

    /// Signs `msg`; hex signature.
    pub fn sign(&self, msg: &[u8]) -> String {
        hex::encode(self.0.sign(msg).to_bytes())
    }

    /// Writes the key to a new file, mode 0600; refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let err = |m: String| Error::KeyFile {
            path: path.display().to_string(),
            message: m,
        };
        let text = serde_json::to_string_pretty(&KeyFile {
            kind: "ed25519".into(),
            private: hex::encode(self.0.to_bytes()),
            public: self.public().0,
        })
        .map_err(|e| err(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    err("already exists; refusing to overwrite a key (move it away first)".into())
                } else {
                    err(e.to_string())
                }
            })?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| err(e.to_string()))
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<SigningKey, Error> {
        let err = |m: String| Error::KeyFile {
            path: path.display().to_string(),
            message: m,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let kf: KeyFile =
            serde_json::from_str(&text).map_err(|e| err(format!("not a herd key file: {e}")))?;
        if kf.kind != "ed25519" {
            return Err(err(format!("key type {:?}, expected ed25519", kf.kind)));
        }
        let raw = hex::decode(&kf.private).map_err(|e| err(e.to_string()))?;
        let seed: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| err("private key is not 32 bytes".into()))?;
        let k = SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed));
        if k.public().0 != kf.public {
            return Err(err("public key does not match the private key".into()));
        }
        Ok(k)
    }
}
