//! Request lines reach the agent's API socket from any local root process.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = herd_agent::api::parse_request_line(s);
    }
});
