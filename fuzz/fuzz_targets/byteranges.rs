//! The delta updater's multi-range answer parser: whatever the body,
//! parsing returns an error or parts that lie inside the body, and picking
//! ranges from them never panics and returns exactly the lengths asked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parts) = herd_byteranges::parse(data, "B") {
        let mut want = Vec::new();
        for p in &parts {
            assert!(p.bytes.len() <= data.len());
            want.push((p.start, p.bytes.len() as u64));
        }
        if let Ok(got) = herd_byteranges::pick(&parts, &want) {
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.len() as u64, w.1);
            }
        }
    }
});
