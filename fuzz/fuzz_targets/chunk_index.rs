//! The delta updater's chunk index parser: whatever the bytes, parsing
//! returns an error or an index whose chunks tile the payload exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = herd_release::ChunkIndex::parse(data) {
        let mut offset = 0u64;
        for c in &idx.chunks {
            assert_eq!(c.offset, offset);
            assert!(c.len >= 1 && c.len <= idx.max);
            offset = c.end();
        }
        assert_eq!(offset, idx.size);
        assert_eq!(idx.to_bytes(), data);
    }
});
