//! Manifests, indexes and configs come from registries.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(herd_oci::manifest::Document::Index(i)) =
        herd_oci::manifest::Document::parse(data, "", "fuzz")
    {
        let _ = i.for_this_machine("fuzz");
    }
    let _ = serde_json::from_slice::<herd_oci::manifest::ImageConfig>(data);
});
