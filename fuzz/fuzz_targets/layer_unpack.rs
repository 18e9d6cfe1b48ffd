//! Image layers come from registries: signed, but a signer can be wrong.
//! The first byte picks plain tar or gzip; the layer is applied twice (on
//! itself: whiteouts, replacements, links to what the first pass made) into
//! a fresh root, and nothing may appear beside that root.
#![no_main]
use std::fs;

use herd_oci::manifest::{OCI_LAYER_GZIP, OCI_LAYER_TAR};
use herd_oci::unpack::{Limits, Unpacker};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&kind, layer)) = data.split_first() else {
        return;
    };
    let outer = std::env::temp_dir().join(format!("herd-fuzz-layer-{}", std::process::id()));
    let _ = fs::remove_dir_all(&outer);
    let root = outer.join("root");
    fs::create_dir_all(&root).expect("creating the fuzz root");
    let media_type = if kind & 1 == 0 {
        OCI_LAYER_TAR
    } else {
        OCI_LAYER_GZIP
    };
    let mut u = Unpacker::new(Limits {
        layer_bytes: 1 << 20,
        image_bytes: 3 << 19,
        entries: 1000,
        path_bytes: 4096,
    });
    let digest = herd_oci::Digest::of(layer);
    for _ in 0..2 {
        let _ = u.apply(&root, &digest, media_type, layer);
    }
    let beside: Vec<_> = fs::read_dir(&outer)
        .expect("listing the fuzz dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(beside, ["root"], "a layer wrote beside the image root");
});
