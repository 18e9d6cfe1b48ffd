//! Trusted image keys are provisioned from outside the node.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(k) = herd_oci::cosign::TrustedKey::parse(s, "fuzz") {
            let _ = k.id();
        }
    }
});
