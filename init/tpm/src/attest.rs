//! The parts of a quote a verifier reads: TPMS_ATTEST (what the TPM says it
//! signed), TPMT_SIGNATURE (ECDSA r and s) and the signing key's TPMT_PUBLIC
//! (an ECC point and its attributes). Parsing only; the signature check is
//! the verifier's (`herd pcr verify`), which has a P-256 implementation.

use crate::wire::Parser;
use crate::Error;

/// TPM_GENERATED_VALUE: every TPMS_ATTEST a TPM makes starts with it, and a
/// restricted signing key signs nothing else.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// objectAttributes a quote key must have: fixedTPM, restricted, sign.
pub const AK_ATTRIBUTES: u32 = 0x0000_0002 | 0x0001_0000 | 0x0004_0000;

/// A parsed TPMS_ATTEST of type quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteAttest {
    /// extraData: the verifier's nonce.
    pub extra_data: Vec<u8>,
    /// The TPM's reset count (boots since the TPM was cleared).
    pub reset_count: u32,
    /// The quoted SHA-256 PCRs, in selection order.
    pub pcrs: Vec<u32>,
    /// Digest of the quoted PCR values (concatenated in selection order).
    pub pcr_digest: Vec<u8>,
}

impl QuoteAttest {
    /// Parses a TPMS_ATTEST; refuses one that is not a TPM-made quote.
    pub fn parse(b: &[u8]) -> Result<QuoteAttest, Error> {
        let mut p = Parser::new(b, "TPMS_ATTEST");
        if p.u32()? != TPM_GENERATED {
            return Err(Error::Malformed(
                "TPMS_ATTEST (no TPM_GENERATED_VALUE: not made by a TPM)",
            ));
        }
        if p.u16()? != ST_ATTEST_QUOTE {
            return Err(Error::Malformed("TPMS_ATTEST (not a quote)"));
        }
        p.sized()?; // qualifiedSigner
        let extra_data = p.sized()?.to_vec();
        p.take(8)?; // clockInfo.clock
        let reset_count = p.u32()?;
        p.take(4 + 1)?; // restartCount, safe
        p.take(8)?; // firmwareVersion
        let pcrs = p.pcr_selection()?;
        let pcr_digest = p.sized()?.to_vec();
        if !p.rest().is_empty() {
            return Err(Error::Malformed("TPMS_ATTEST (bytes after the quote)"));
        }
        Ok(QuoteAttest {
            extra_data,
            reset_count,
            pcrs,
            pcr_digest,
        })
    }
}

/// An ECDSA TPMT_SIGNATURE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcdsaSignature {
    /// The hash algorithm (TPM_ALG_SHA256 = 0x000B).
    pub hash: u16,
    /// r, big-endian.
    pub r: Vec<u8>,
    /// s, big-endian.
    pub s: Vec<u8>,
}

impl EcdsaSignature {
    /// Parses a TPMT_SIGNATURE; only ECDSA is accepted.
    pub fn parse(b: &[u8]) -> Result<EcdsaSignature, Error> {
        let mut p = Parser::new(b, "TPMT_SIGNATURE");
        if p.u16()? != 0x0018 {
            return Err(Error::Malformed("TPMT_SIGNATURE (not ECDSA)"));
        }
        let hash = p.u16()?;
        let r = p.sized()?.to_vec();
        let s = p.sized()?.to_vec();
        Ok(EcdsaSignature { hash, r, s })
    }
}

/// An ECC TPMT_PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EccPublic {
    /// objectAttributes.
    pub attributes: u32,
    /// TPM_ECC_CURVE (NIST P-256 = 0x0003).
    pub curve: u16,
    /// The point's x, big-endian.
    pub x: Vec<u8>,
    /// The point's y, big-endian.
    pub y: Vec<u8>,
}

impl EccPublic {
    /// Parses a TPMT_PUBLIC; only ECC keys are accepted.
    pub fn parse(b: &[u8]) -> Result<EccPublic, Error> {
        let mut p = Parser::new(b, "TPMT_PUBLIC");
        if p.u16()? != 0x0023 {
            return Err(Error::Malformed("TPMT_PUBLIC (not an ECC key)"));
        }
        p.u16()?; // nameAlg
        let attributes = p.u32()?;
        p.sized()?; // authPolicy
        if p.u16()? != 0x0010 {
            p.take(4)?; // symmetric keyBits and mode
        }
        if p.u16()? != 0x0010 {
            p.u16()?; // scheme's hash
        }
        let curve = p.u16()?;
        if p.u16()? != 0x0010 {
            p.u16()?; // kdf's hash
        }
        let x = p.sized()?.to_vec();
        let y = p.sized()?.to_vec();
        Ok(EccPublic {
            attributes,
            curve,
            x,
            y,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attest(magic: u32, kind: u16, nonce: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend(magic.to_be_bytes());
        a.extend(kind.to_be_bytes());
        a.extend(34u16.to_be_bytes());
        a.extend([0u8; 34]);
        a.extend((nonce.len() as u16).to_be_bytes());
        a.extend(nonce);
        a.extend([0u8; 8]);
        a.extend(7u32.to_be_bytes());
        a.extend([0u8; 5 + 8]);
        a.extend(1u32.to_be_bytes()); // one selection
        a.extend(crate::ALG_SHA256.to_be_bytes());
        a.extend([3u8, 0x00, 0x88, 0x00]); // PCRs 11 and 15
        a.extend(32u16.to_be_bytes());
        a.extend([0xab; 32]);
        a
    }

    #[test]
    fn parses_a_quote_and_refuses_others() {
        let q = QuoteAttest::parse(&attest(TPM_GENERATED, ST_ATTEST_QUOTE, b"nonce")).unwrap();
        assert_eq!(q.extra_data, b"nonce");
        assert_eq!(q.reset_count, 7);
        assert_eq!(q.pcrs, [11, 15]);
        assert_eq!(q.pcr_digest, [0xab; 32]);
        assert!(QuoteAttest::parse(&attest(0x1234_5678, ST_ATTEST_QUOTE, b"n")).is_err());
        assert!(QuoteAttest::parse(&attest(TPM_GENERATED, 0x8017, b"n")).is_err());
        let good = attest(TPM_GENERATED, ST_ATTEST_QUOTE, b"n");
        for i in 0..good.len() {
            assert!(QuoteAttest::parse(&good[..i]).is_err(), "prefix {i}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(QuoteAttest::parse(&long).is_err());
    }

    #[test]
    fn parses_the_template_key_and_a_signature() {
        let k = EccPublic::parse(&crate::wire::ecc_signing_template()).unwrap();
        assert_eq!(k.curve, 3);
        assert_eq!(k.attributes & AK_ATTRIBUTES, AK_ATTRIBUTES);
        assert!(k.x.is_empty() && k.y.is_empty());
        let mut s = vec![0x00, 0x18, 0x00, 0x0b, 0, 2, 1, 2, 0, 1, 3];
        assert_eq!(
            EcdsaSignature::parse(&s).unwrap(),
            EcdsaSignature {
                hash: 0x0b,
                r: vec![1, 2],
                s: vec![3]
            }
        );
        s[1] = 0x14; // RSASSA
        assert!(EcdsaSignature::parse(&s).is_err());
    }
}
