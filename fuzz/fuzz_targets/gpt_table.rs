//! herd-init reads the GPT of every disk it finds: any bytes must be safe.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = herd_gpt::Table::read_detailed(&mut std::io::Cursor::new(data), 512);
});
