//! A node's quote (TPMS_ATTEST, TPMT_SIGNATURE, TPMT_PUBLIC) reaches the
//! verifier from the node: untrusted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = herd_tpm::attest::QuoteAttest::parse(data);
    let _ = herd_tpm::attest::EcdsaSignature::parse(data);
    let _ = herd_tpm::attest::EccPublic::parse(data);
});
