//! herd-init's configuration parser (validated at build time, read at boot).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = herd_node::config::Config::parse(s);
    }
});
