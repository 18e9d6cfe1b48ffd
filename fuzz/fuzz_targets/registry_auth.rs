//! WWW-Authenticate challenges and token answers come from registries and
//! their token servers: untrusted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(c) = herd_oci::auth::Challenge::parse(s) {
            let _ = c.token_url("repository:a/b:pull");
        }
    }
    let _ = herd_oci::auth::token_from_answer(data);
});
