//! Image references come from pod manifests.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = herd_oci::Reference::parse(s) {
            let _ = (r.to_string(), r.is_loopback(), r.version());
        }
    }
});
