//! Secure Boot for test VMs: a copy of OVMF's (empty, setup-mode) variable
//! store with one X.509 certificate enrolled as PK, KEK and db, so OVMF's
//! Secure Boot firmware (`OVMF_CODE_4M.secboot.fd`) runs only EFI binaries
//! signed with that certificate's key.
//!
//! The store format (edk2 `VariableFormat.h`, as in Debian's
//! `OVMF_VARS_4M.fd`): a firmware volume header (`HeaderLength` at +0x30),
//! then a variable store header (16-byte GUID, u32 size, format 0x5a, state
//! 0xfe, 6 reserved bytes), then variables, each on a 4-byte boundary: an
//! authenticated header (StartId 0x55aa, State 0x3f = added, reserved,
//! Attributes u32, MonotonicCount u64, TimeStamp EFI_TIME, PubKeyIndex u32,
//! NameSize u32, DataSize u32, VendorGuid), the UTF-16 name with NUL, the
//! data. Free space is 0xff.

use crate::Error;

/// Secure Boot firmware code (needs SMM) from Debian's ovmf package.
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";

const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
const IMAGE_SECURITY_DB: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
const SECURE_BOOT_ENABLE: &str = "f0a30bc7-af08-4556-99c4-001009c93a44";
const CUSTOM_MODE: &str = "c076ec0c-7028-4399-a072-71ee5c448b9f";
const CERT_X509: &str = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";
/// The owner recorded with herd's certificate (a fixed, herd-made GUID).
const HERD_OWNER: &str = "8f7a3c1e-5b2d-4e6f-9a81-7c3d2e1f0a4b";

/// NV | BS | RT | TIME_BASED_AUTHENTICATED_WRITE_ACCESS.
const ATTR_AUTH: u32 = 0x27;
/// NV | BS.
const ATTR_NV_BS: u32 = 0x03;

/// An EFI GUID in its on-disk (mixed-endian) byte order.
fn guid(s: &str) -> [u8; 16] {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    let b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("GUID constants are hex"))
        .collect();
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
    out[4..6].copy_from_slice(&[b[5], b[4]]);
    out[6..8].copy_from_slice(&[b[7], b[6]]);
    out[8..].copy_from_slice(&b[8..]);
    out
}

/// An EFI_SIGNATURE_LIST holding one X.509 certificate (DER).
fn x509_list(der: &[u8]) -> Vec<u8> {
    let sig_size = 16 + der.len() as u32;
    let mut v = Vec::new();
    v.extend_from_slice(&guid(CERT_X509));
    v.extend_from_slice(&(28 + sig_size).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&sig_size.to_le_bytes());
    v.extend_from_slice(&guid(HERD_OWNER));
    v.extend_from_slice(der);
    v
}

fn variable(name: &str, vendor: &str, attributes: u32, data: &[u8]) -> Vec<u8> {
    let name16: Vec<u8> = name
        .encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let mut v = Vec::new();
    v.extend_from_slice(&0x55aau16.to_le_bytes());
    v.push(0x3f);
    v.push(0);
    v.extend_from_slice(&attributes.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    // EFI_TIME of the enrolment: 2026-01-01 00:00:00 for authenticated ones.
    let mut time = [0u8; 16];
    if attributes & 0x20 != 0 {
        time[..4].copy_from_slice(&[0xea, 0x07, 1, 1]);
    }
    v.extend_from_slice(&time);
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&(name16.len() as u32).to_le_bytes());
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(&guid(vendor));
    v.extend_from_slice(&name16);
    v.extend_from_slice(data);
    v
}

/// Returns `template` (an OVMF variable store with no variables yet, e.g.
/// `/usr/share/OVMF/OVMF_VARS_4M.fd`) with `cert_der` enrolled as PK, KEK
/// and db, Secure Boot enabled and custom mode off.
pub fn enroll(template: &[u8], cert_der: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = |m: &str| Error::Firmware(format!("OVMF variable store: {m}"));
    if template.len() < 0x100 || &template[0x28..0x2c] != b"_FVH" {
        return Err(bad("no firmware volume header"));
    }
    let store = u16::from_le_bytes([template[0x30], template[0x31]]) as usize;
    let size = u32::from_le_bytes(template[store + 16..store + 20].try_into().unwrap()) as usize;
    if template.get(store + 20) != Some(&0x5a) || store + size > template.len() {
        return Err(bad("no variable store header"));
    }
    let first = store + 28;
    if template[first..first + 2] != [0xff, 0xff] {
        return Err(bad(
            "the store already holds variables: start from the empty OVMF_VARS_4M.fd",
        ));
    }
    let list = x509_list(cert_der);
    let vars = [
        variable("db", IMAGE_SECURITY_DB, ATTR_AUTH, &list),
        variable("KEK", GLOBAL, ATTR_AUTH, &list),
        variable("PK", GLOBAL, ATTR_AUTH, &list),
        variable("SecureBootEnable", SECURE_BOOT_ENABLE, ATTR_NV_BS, &[1]),
        variable("CustomMode", CUSTOM_MODE, ATTR_NV_BS, &[0]),
    ];
    let mut out = template.to_vec();
    let mut at = first;
    for v in vars {
        at = at.div_ceil(4) * 4;
        if at + v.len() > store + size {
            return Err(bad("no room for the keys"));
        }
        out[at..at + v.len()].copy_from_slice(&v);
        at += v.len();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_mixed_endian() {
        assert_eq!(
            guid(GLOBAL),
            [
                0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03,
                0x2b, 0x8c
            ]
        );
        assert_eq!(x509_list(&[1, 2, 3]).len(), 28 + 16 + 3);
    }

    #[test]
    fn enrolls_into_debians_empty_store() {
        let Ok(t) = std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd") else {
            panic!("install the ovmf package");
        };
        let out = enroll(&t, b"not really DER but bytes").unwrap();
        assert_eq!(out.len(), t.len());
        let pk: Vec<u8> = "PK\0"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert!(out.windows(pk.len()).any(|w| w == pk));
        assert!(enroll(&out, b"x")
            .unwrap_err()
            .to_string()
            .contains("already holds"));
    }
}
