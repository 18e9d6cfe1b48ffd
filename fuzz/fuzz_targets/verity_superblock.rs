//! The verity superblock is read from disk before anything is verified.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = herd_verity::Superblock::parse(data);
    if data.len() >= 4096 {
        let (a, b) = data.split_at(data.len() / 2);
        let _ = herd_verity::verify(a, b, &[0u8; 32]);
    }
});
