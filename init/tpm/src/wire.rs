//! TPM 2.0 command encoding (big-endian, sized buffers).

use crate::Error;

pub struct Cmd(Vec<u8>);

impl Cmd {
    pub fn new(tag: u16, cc: u32) -> Self {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&tag.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes()); // size, set in finish
        v.extend_from_slice(&cc.to_be_bytes());
        Cmd(v)
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// A TPM2B: u16 size, then the bytes.
    pub fn sized(&mut self, b: &[u8]) {
        self.u16(b.len() as u16);
        self.bytes(b);
    }
    /// The authorization area with one empty-password session.
    pub fn password_session(&mut self) {
        self.u32(9); // authorizationSize
        self.u32(crate::RS_PW);
        self.u16(0); // nonce
        self.0.push(0); // sessionAttributes
        self.u16(0); // hmac
    }
    /// TPML_PCR_SELECTION with one SHA-256 bank.
    pub fn pcr_selection(&mut self, pcrs: &[u32]) -> Result<(), Error> {
        let mut bits = [0u8; 3];
        for &p in pcrs {
            if p > 23 {
                return Err(Error::BadPcr(p));
            }
            bits[(p / 8) as usize] |= 1 << (p % 8);
        }
        self.u32(1);
        self.u16(crate::ALG_SHA256);
        self.0.push(3);
        self.bytes(&bits);
        Ok(())
    }
    pub fn finish(mut self) -> Vec<u8> {
        let n = self.0.len() as u32;
        self.0[2..6].copy_from_slice(&n.to_be_bytes());
        self.0
    }
}

/// TPMT_PUBLIC for an ECC P-256 restricted signing key (ECDSA, SHA-256),
/// fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth.
pub fn ecc_signing_template() -> Vec<u8> {
    let mut t = Cmd(Vec::new());
    t.u16(0x0023); // TPM_ALG_ECC
    t.u16(crate::ALG_SHA256); // nameAlg
    t.u32(0x0000_0002 | 0x0000_0010 | 0x0000_0020 | 0x0000_0040 | 0x0001_0000 | 0x0004_0000);
    t.u16(0); // authPolicy
    t.u16(0x0010); // symmetric: TPM_ALG_NULL
    t.u16(0x0018); // scheme: TPM_ALG_ECDSA
    t.u16(crate::ALG_SHA256);
    t.u16(0x0003); // curve: TPM_ECC_NIST_P256
    t.u16(0x0010); // kdf: TPM_ALG_NULL
    t.u16(0); // unique.x
    t.u16(0); // unique.y
    t.0
}

pub struct Parser<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Parser<'a> {
    pub fn new(b: &'a [u8], what: &'static str) -> Self {
        Parser { b, what }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.b.len() < n {
            return Err(Error::Malformed(self.what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    pub fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn sized(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    /// A TPML_PCR_SELECTION; returns the selected SHA-256 PCRs in order.
    pub fn pcr_selection(&mut self) -> Result<Vec<u32>, Error> {
        let count = self.u32()?;
        let mut out = Vec::new();
        for _ in 0..count {
            let alg = self.u16()?;
            let n = self.take(1)?[0] as usize;
            let bits = self.take(n)?;
            if alg != crate::ALG_SHA256 {
                continue;
            }
            for (i, byte) in bits.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (1 << bit) != 0 {
                        out.push((i * 8 + bit) as u32);
                    }
                }
            }
        }
        Ok(out)
    }
}
