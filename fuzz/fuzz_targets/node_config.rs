//! The node configuration parser and validator (herd-provision), which
//! reads whatever a first boot finds in fw_cfg or on a CONFIG disk.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = herd_provision::check_bytes(data, std::path::Path::new("fuzz.toml"));
});
