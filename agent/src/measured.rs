//! `GET /v1/measurements[?nonce=HEX]`: the node's PCRs, herd-init's event
//! log and, for a verifier's nonce, a TPM quote (docs/MEASURED-BOOT.md).

use herd_tpm::{Report, Tpm, DEVICE};

/// Why there is no report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No TPM on this node.
    #[error("this node has no TPM ({DEVICE} is missing): it boots unmeasured")]
    NoTpm,
    /// The nonce is not hex or too long.
    #[error("nonce must be 1-64 bytes in hex (nonce=0a1b...)")]
    BadNonce,
    /// The TPM failed.
    #[error("TPM: {0}")]
    Tpm(#[from] herd_tpm::Error),
}

/// Parses the `nonce=` query parameter of a request target.
pub fn nonce_of(target: &str) -> Result<Option<Vec<u8>>, Error> {
    let Some(query) = target.split_once('?').map(|(_, q)| q) else {
        return Ok(None);
    };
    match query.split('&').find_map(|kv| kv.strip_prefix("nonce=")) {
        None => Ok(None),
        Some(h) => match hex::decode(h) {
            Ok(n) if (1..=64).contains(&n.len()) => Ok(Some(n)),
            _ => Err(Error::BadNonce),
        },
    }
}

/// The report of this node: reads `device` and the event log at `log`.
pub fn report(device: &str, log: &str, nonce: Option<&[u8]>) -> Result<Report, Error> {
    if std::fs::metadata(device).is_err() {
        return Err(Error::NoTpm);
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Ok(Tpm::open(device)?.report(&text, nonce)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_and_a_node_without_tpm() {
        assert_eq!(nonce_of("/v1/measurements").unwrap(), None);
        assert_eq!(
            nonce_of("/v1/measurements?nonce=0a1B").unwrap(),
            Some(vec![0x0a, 0x1b])
        );
        assert!(matches!(
            nonce_of("/v1/measurements?nonce=xyz"),
            Err(Error::BadNonce)
        ));
        assert!(matches!(
            nonce_of(&format!("/v1/measurements?nonce={}", "00".repeat(65))),
            Err(Error::BadNonce)
        ));
        let e = report("/nonexistent/tpmrm0", "/nonexistent/log", None).unwrap_err();
        assert!(e.to_string().contains("has no TPM"), "{e}");
    }
}
