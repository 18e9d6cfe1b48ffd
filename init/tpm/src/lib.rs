//! TPM 2.0 for herd without tpm2-tss: the few commands herd needs, encoded by
//! hand (TPM 2.0 Library, Part 3) and sent over anything that reads and
//! writes whole commands — `/dev/tpmrm0` on a node, swtpm's TCP socket in
//! tests — plus the event log herd-init keeps of what it extended, which a
//! verifier replays.
//!
//! Only the SHA-256 bank is used.

pub mod attest;
pub mod eventlog;
mod wire;

use std::io::{Read, Write};

pub use eventlog::{replay, Event};

/// The kernel's TPM device with its in-kernel resource manager.
pub const DEVICE: &str = "/dev/tpmrm0";

/// TPM_ALG_SHA256.
const ALG_SHA256: u16 = 0x000b;
const ST_NO_SESSIONS: u16 = 0x8001;
const ST_SESSIONS: u16 = 0x8002;
const CC_PCR_EXTEND: u32 = 0x0000_0182;
const CC_PCR_READ: u32 = 0x0000_017e;
const CC_QUOTE: u32 = 0x0000_0158;
const CC_CREATE_PRIMARY: u32 = 0x0000_0131;
const CC_FLUSH_CONTEXT: u32 = 0x0000_0165;
/// TPM_RS_PW: the empty password session.
const RS_PW: u32 = 0x4000_0009;
const RH_ENDORSEMENT: u32 = 0x4000_000b;

/// What went wrong talking to the TPM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the device failed.
    #[error("TPM I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The TPM answered with an error code.
    #[error("TPM command {command} failed with response code {code:#x}")]
    Tpm { command: &'static str, code: u32 },
    /// The response did not parse.
    #[error("malformed TPM response to {0}")]
    Malformed(&'static str),
    /// A PCR index out of range.
    #[error("PCR {0} does not exist (0-23)")]
    BadPcr(u32),
}

/// A TPM reached through `T`.
pub struct Tpm<T> {
    io: T,
}

impl Tpm<std::fs::File> {
    /// Opens `/dev/tpmrm0` (or another TPM character device).
    pub fn open(path: &str) -> Result<Self, Error> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Tpm { io: f })
    }
}

/// A TPM quote: the attestation structure and its signature.
#[derive(Debug, Clone)]
pub struct Quote {
    /// TPMS_ATTEST as the TPM produced it (holds the nonce and the PCR digest).
    pub attest: Vec<u8>,
    /// The TPMT_SIGNATURE over `attest`.
    pub signature: Vec<u8>,
    /// The signing key's public area (TPMT_PUBLIC).
    pub public: Vec<u8>,
}

impl<T: Read + Write> Tpm<T> {
    /// Wraps a transport that carries whole TPM commands and responses.
    pub fn new(io: T) -> Self {
        Tpm { io }
    }

    /// Sends a command; retries (up to 50 times, 10 ms apart) while the TPM
    /// answers TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING.
    fn call(&mut self, command: &'static str, cmd: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut tries = 0;
        loop {
            match self.call_once(command, &cmd) {
                Err(Error::Tpm { code, .. })
                    if matches!(code, 0x922 | 0x908 | 0x90a) && tries < 50 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn call_once(&mut self, command: &'static str, cmd: &[u8]) -> Result<Vec<u8>, Error> {
        self.io.write_all(cmd)?;
        self.io.flush()?;
        let mut resp = Vec::with_capacity(4096);
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self.io.read(&mut buf)?;
            if n == 0 {
                return Err(Error::Malformed(command));
            }
            resp.extend_from_slice(&buf[..n]);
            if resp.len() >= 10 {
                let size = u32::from_be_bytes(resp[2..6].try_into().unwrap()) as usize;
                if size < 10 {
                    return Err(Error::Malformed(command));
                }
                if resp.len() >= size {
                    resp.truncate(size);
                    break;
                }
            }
        }
        let code = u32::from_be_bytes(resp[6..10].try_into().unwrap());
        if code != 0 {
            return Err(Error::Tpm { command, code });
        }
        Ok(resp)
    }

    /// TPM2_PCR_Extend of the SHA-256 bank of `pcr` with `digest`.
    pub fn pcr_extend(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), Error> {
        if pcr > 23 {
            return Err(Error::BadPcr(pcr));
        }
        let mut c = wire::Cmd::new(ST_SESSIONS, CC_PCR_EXTEND);
        c.u32(pcr);
        c.password_session();
        c.u32(1); // TPML_DIGEST_VALUES.count
        c.u16(ALG_SHA256);
        c.bytes(digest);
        self.call("PCR_Extend", c.finish())?;
        Ok(())
    }

    /// TPM2_PCR_Read of SHA-256 PCRs, in ascending order of index.
    pub fn pcr_read(&mut self, pcrs: &[u32]) -> Result<Vec<(u32, [u8; 32])>, Error> {
        let mut want: Vec<u32> = pcrs.to_vec();
        want.sort_unstable();
        want.dedup();
        let mut out = Vec::new();
        // A TPM returns at most 8 digests per call: ask until all are read.
        while out.len() < want.len() {
            let rest: Vec<u32> = want[out.len()..].to_vec();
            let mut c = wire::Cmd::new(ST_NO_SESSIONS, CC_PCR_READ);
            c.pcr_selection(&rest)?;
            let r = self.call("PCR_Read", c.finish())?;
            let mut p = wire::Parser::new(&r[10..], "PCR_Read");
            p.u32()?; // pcrUpdateCounter
            let got = p.pcr_selection()?;
            let n = p.u32()? as usize;
            if n == 0 || n != got.len() {
                return Err(Error::Malformed("PCR_Read"));
            }
            for pcr in got {
                let d = p.sized()?;
                let d: [u8; 32] = d.try_into().map_err(|_| Error::Malformed("PCR_Read"))?;
                out.push((pcr, d));
            }
        }
        Ok(out)
    }

    /// TPM2_Quote of SHA-256 `pcrs` over `nonce`, signed by a primary ECC
    /// P-256 signing key created under the endorsement hierarchy for the
    /// call (the same inputs give the same key on the same TPM) and
    /// flushed afterwards.
    pub fn quote(&mut self, pcrs: &[u32], nonce: &[u8]) -> Result<Quote, Error> {
        if nonce.len() > 64 {
            return Err(Error::Malformed("Quote (nonce longer than 64 bytes)"));
        }
        let mut c = wire::Cmd::new(ST_SESSIONS, CC_CREATE_PRIMARY);
        c.u32(RH_ENDORSEMENT);
        c.password_session();
        c.u16(4); // TPM2B_SENSITIVE_CREATE: empty userAuth and data
        c.u16(0);
        c.u16(0);
        c.sized(&wire::ecc_signing_template());
        c.u16(0); // outsideInfo
        c.u32(0); // creationPCR: empty TPML_PCR_SELECTION
        let r = self.call("CreatePrimary", c.finish())?;
        let mut p = wire::Parser::new(&r[10..], "CreatePrimary");
        let handle = p.u32()?;
        p.u32()?; // parameterSize
        let public = p.sized()?.to_vec();
        let result = (|| {
            let mut c = wire::Cmd::new(ST_SESSIONS, CC_QUOTE);
            c.u32(handle);
            c.password_session();
            c.sized(nonce); // qualifyingData
            c.u16(0x0010); // TPM_ALG_NULL: the key's own scheme
            c.pcr_selection(pcrs)?;
            let r = self.call("Quote", c.finish())?;
            let mut p = wire::Parser::new(&r[10..], "Quote");
            let n = p.u32()? as usize; // parameterSize
            let mut p = wire::Parser::new(p.take(n)?, "Quote");
            let attest = p.sized()?.to_vec();
            let signature = p.rest().to_vec();
            Ok(Quote {
                attest,
                signature,
                public: public.clone(),
            })
        })();
        let mut c = wire::Cmd::new(ST_NO_SESSIONS, CC_FLUSH_CONTEXT);
        c.u32(handle);
        let _ = self.call("FlushContext", c.finish());
        result
    }
}

/// Everything a verifier asks a node for: its PCR values (SHA-256), the
/// event log of herd-init's measurements, and, when it sent a nonce, a
/// quote over PCR 11 and PCR 15. Served by the node's local API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// PCR index → SHA-256 bank value, hex; PCRs 0-23.
    pub pcrs: std::collections::BTreeMap<u32, String>,
    /// herd-init's event log, in extend order.
    pub events: Vec<Event>,
    /// A quote over PCRs [`QUOTED`] when a nonce was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<QuoteJson>,
}

/// The PCRs a [`Report`]'s quote covers: the UKI and herd-init's.
pub const QUOTED: [u32; 2] = [11, 15];

/// A quote, hex-encoded for JSON.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QuoteJson {
    /// The verifier's nonce, as given.
    pub nonce: String,
    /// TPMS_ATTEST.
    pub attest: String,
    /// TPMT_SIGNATURE.
    pub signature: String,
    /// The signing key's TPMT_PUBLIC.
    pub public: String,
}

impl<T: Read + Write> Tpm<T> {
    /// The node's [`Report`]: PCRs read now, `log` (the text of herd-init's
    /// event log, possibly empty), and a quote if `nonce` is given.
    pub fn report(&mut self, log: &str, nonce: Option<&[u8]>) -> Result<Report, Error> {
        let pcrs = self
            .pcr_read(&(0..24).collect::<Vec<_>>())?
            .into_iter()
            .map(|(i, v)| (i, hex::encode(v)))
            .collect();
        let events = eventlog::parse(log).map_err(|_| Error::Malformed("event log"))?;
        let quote = match nonce {
            Some(n) => {
                let q = self.quote(&QUOTED, n)?;
                Some(QuoteJson {
                    nonce: hex::encode(n),
                    attest: hex::encode(q.attest),
                    signature: hex::encode(q.signature),
                    public: hex::encode(q.public),
                })
            }
            None => None,
        };
        Ok(Report {
            pcrs,
            events,
            quote,
        })
    }
}
