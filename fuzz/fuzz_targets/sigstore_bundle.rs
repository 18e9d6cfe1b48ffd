//! cosign v3 bundles and the in-toto statements inside them come from
//! registries: untrusted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(e) = herd_oci::bundle::parse_bundle(data) {
        let _ = herd_oci::bundle::parse_statement(&e.payload);
        let _ = herd_oci::bundle::pae(&e.payload_type, &e.payload);
    }
    let _ = herd_oci::bundle::parse_statement(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = herd_oci::credentials::parse(s);
    }
});
