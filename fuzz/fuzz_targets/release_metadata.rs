//! Channel and root metadata come from the network: verifying must never
//! panic, whatever the bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(env) = herd_release::Envelope::parse(data, "fuzz") {
        let _ = env.document::<herd_release::Channel>("fuzz");
        let _ = env.document::<herd_release::Root>("fuzz");
    }
});
