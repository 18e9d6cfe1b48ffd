//! DHCP replies come from the network: the parser must never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = herd_net::dhcp::packet::parse(data);
});
