//! The build's SBOM (`sbom.spdx.json`): valid against the published SPDX
//! 2.3 JSON schema (vendored in tests/schemas/, checked by Debian's
//! python3-jsonschema, a real Draft 7 validator, offline), and complete:
//! every Debian package of build.json, every herd binary in /usr with the
//! sha256 of the file shipped, and the crates.io crates they were built from,
//! each with its purl.

use std::fs;
use std::path::Path;
use std::process::Command;

use herd_tests::*;
use sha2::{Digest, Sha256};

const VALIDATE: &str = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
doc = json.load(open(sys.argv[2]))
jsonschema.Draft7Validator.check_schema(schema)
errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
for e in errors:
    print("/".join(map(str, e.path)) + ": " + e.message)
sys.exit(1 if errors else 0)
"#;

fn schema() -> std::path::PathBuf {
    let s = workspace().join("tests/schemas/spdx-2.3/spdx-schema.json");
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&s).unwrap()).unwrap();
    // The published schema, not an edited one.
    assert_eq!(v["$id"], "http://spdx.org/rdf/terms/2.3");
    assert_eq!(v["title"], "SPDX 2.3");
    s
}

fn validate(doc: &Path) -> std::process::Output {
    run(Command::new("python3")
        .arg("-c")
        .arg(VALIDATE)
        .arg(schema())
        .arg(doc))
}

#[test]
fn sbom_is_valid_spdx_and_lists_everything_in_the_image() {
    let out = default_image();
    let sbom_path = out.join("sbom.spdx.json");
    let v = validate(&sbom_path);
    assert!(
        v.status.success(),
        "sbom.spdx.json is not valid SPDX 2.3:\n{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );

    // The validator does refuse a broken document.
    let tmp = tempfile::tempdir().unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&sbom_path).unwrap()).unwrap();
    doc.as_object_mut().unwrap().remove("spdxVersion");
    doc["packages"][0]["checksums"] = serde_json::json!([{"algorithm": "SHA256"}]);
    let bad = tmp.path().join("bad.json");
    fs::write(&bad, serde_json::to_vec(&doc).unwrap()).unwrap();
    let v = validate(&bad);
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(!v.status.success(), "a broken SBOM passed");
    assert!(
        said.contains("'spdxVersion' is a required property")
            && said.contains("'checksumValue' is a required property"),
        "{said}"
    );

    // Contents: build.json's packages, herd's binaries, their crates.
    let doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&sbom_path).unwrap()).unwrap();
    let m = manifest(out);
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z");
    let pkgs = doc["packages"].as_array().unwrap();
    let purl = |p: &serde_json::Value| {
        p["externalRefs"][0]["referenceLocator"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let sha = |p: &serde_json::Value| {
        p["checksums"][0]["checksumValue"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for d in m["packages"].as_array().unwrap() {
        let want = format!(
            "pkg:deb/debian/{}@{}?arch={}&distro=debian-12",
            d["name"].as_str().unwrap(),
            d["version"]
                .as_str()
                .unwrap()
                .replace(':', "%3A")
                .replace('+', "%2B"),
            d["arch"].as_str().unwrap()
        );
        let p = pkgs
            .iter()
            .find(|p| purl(p) == want)
            .unwrap_or_else(|| panic!("no {want} in the SBOM"));
        assert_eq!(sha(p), d["sha256"].as_str().unwrap());
    }
    for bin in ["herd-init", "herd-provision"] {
        let p = pkgs
            .iter()
            .find(|p| p["name"] == bin)
            .unwrap_or_else(|| panic!("no {bin} in the SBOM"));
        let file = fs::read(bin_dir().join(bin)).unwrap();
        assert_eq!(sha(p), hex::encode(Sha256::digest(&file)), "{bin}");
        assert!(purl(p).starts_with(&format!("pkg:generic/herd/{bin}@")));
    }
    let crates: Vec<String> = pkgs
        .iter()
        .map(purl)
        .filter(|p| p.starts_with("pkg:cargo/"))
        .collect();
    for c in ["libc", "serde", "toml", "yaml_serde", "p256"] {
        assert!(
            crates
                .iter()
                .any(|p| p.starts_with(&format!("pkg:cargo/{c}@"))),
            "no crate {c} in {crates:?}"
        );
    }
    for p in pkgs.iter().filter(|p| purl(p).starts_with("pkg:cargo/")) {
        assert_eq!(sha(p).len(), 64, "{p}");
    }
    // build.json lists the SBOM with its hash like every other output.
    let o = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"] == "sbom.spdx.json")
        .expect("sbom.spdx.json in build.json outputs");
    assert_eq!(
        o["sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(fs::read(&sbom_path).unwrap()))
    );
    let _ = fs::remove_dir_all(out);
}
