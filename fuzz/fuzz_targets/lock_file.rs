//! The package lock file parser.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = herd_buildroot::Lock::parse(s);
    }
});
