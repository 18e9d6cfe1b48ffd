//! Base64 (standard alphabet, padded), as etcd's JSON gateway encodes bytes.

use base64::Engine;

/// Encodes bytes.
pub fn encode(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes; `None` for text that is not base64.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}
