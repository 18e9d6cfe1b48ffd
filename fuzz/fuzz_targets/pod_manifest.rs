//! Pod manifests are provisioned from outside the node.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = herd_pod::Pod::parse(s, std::path::Path::new("fuzz.yaml"));
    }
});
