//! `sbom.spdx.json`: the image's software bill of materials as an SPDX 2.3
//! JSON document, which common scanners read (grype, trivy, syft convert,
//! the SPDX tools).
//!
//! Packages: the image itself (described by the document); every Debian
//! package that went into it (`pkg:deb/debian/NAME@VERSION?arch=ARCH`, the
//! .deb's sha256); herd's own binaries (sha256 of the file as shipped,
//! `pkg:generic/herd/NAME@VERSION`); and the Rust crates each binary was
//! built from (`pkg:cargo/NAME@VERSION`, the .crate's sha256 from
//! Cargo.lock). The crates are the Cargo.lock closure of the binary's
//! package, taken from the lock file this `herd` was built with (the node
//! binaries come from the same workspace); it includes the build-time and
//! test-only dependencies of herd's own crates, so it may list a little more
//! than is linked, never less.
//!
//! The document is reproducible: its time stamp is SOURCE_DATE_EPOCH and its
//! namespace and ids derive from the image name, version and root hash.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::manifest::PackageInfo;

/// The SBOM's file name in the output directory.
pub const FILE: &str = "sbom.spdx.json";

/// The workspace's Cargo.lock, as this herd was built.
const CARGO_LOCK: &str = include_str!("../../Cargo.lock");

/// One of herd's own binaries in the image.
pub struct Binary<'a> {
    /// File name in /usr/bin (also its Cargo package name).
    pub name: &'a str,
    /// The bytes shipped.
    pub data: &'a [u8],
}

/// What the SBOM describes.
pub struct Input<'a> {
    /// Image name.
    pub name: &'a str,
    /// Image version.
    pub version: &'a str,
    /// dm-verity root hash of /usr (hex).
    pub usrhash: &'a str,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
    /// Debian packages.
    pub packages: &'a [PackageInfo],
    /// herd's binaries.
    pub binaries: &'a [Binary<'a>],
}

pub use herd_clock::rfc3339;

/// An SPDX id from free text: letters, digits, '.', '-'.
fn spdx_id(kind: &str, name: &str, version: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
    };
    format!("SPDXRef-{kind}-{}-{}", clean(name), clean(version))
}

/// Percent-encodes a purl component (version, qualifier value).
fn purl_enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// A crate of Cargo.lock.
#[derive(Debug, Clone)]
pub struct LockedCrate {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// sha256 of the .crate (registry crates only).
    pub checksum: Option<String>,
    /// Whether it comes from crates.io.
    pub registry: bool,
    deps: Vec<String>,
}

/// The packages of a Cargo.lock.
pub fn parse_lock(text: &str) -> Result<Vec<LockedCrate>, toml::de::Error> {
    #[derive(serde::Deserialize)]
    struct Lock {
        #[serde(default)]
        package: Vec<Pkg>,
    }
    #[derive(serde::Deserialize)]
    struct Pkg {
        name: String,
        version: String,
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        checksum: Option<String>,
        #[serde(default)]
        dependencies: Vec<String>,
    }
    let lock: Lock = toml::from_str(text)?;
    Ok(lock
        .package
        .into_iter()
        .map(|p| LockedCrate {
            registry: p
                .source
                .as_deref()
                .is_some_and(|s| s.starts_with("registry+")),
            name: p.name,
            version: p.version,
            checksum: p.checksum,
            deps: p.dependencies,
        })
        .collect())
}

/// Indices of the crates `root` depends on, directly or not (not itself).
pub fn closure(lock: &[LockedCrate], root: &str) -> BTreeSet<usize> {
    let find = |dep: &str| -> Option<usize> {
        // "name", "name version" or "name version (source)".
        let mut w = dep.split_whitespace();
        let name = w.next()?;
        let version = w.next();
        lock.iter()
            .position(|c| c.name == name && version.is_none_or(|v| c.version == v))
    };
    let mut seen = BTreeSet::new();
    let Some(start) = lock.iter().position(|c| c.name == root) else {
        return seen;
    };
    let mut todo = vec![start];
    while let Some(i) = todo.pop() {
        for d in &lock[i].deps {
            if let Some(j) = find(d) {
                if j != start && seen.insert(j) {
                    todo.push(j);
                }
            }
        }
    }
    seen
}

fn package(id: &str, name: &str, version: &str) -> serde_json::Map<String, Value> {
    let v = json!({
        "SPDXID": id,
        "name": name,
        "versionInfo": version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn purl(locator: String) -> Value {
    json!([{
        "referenceCategory": "PACKAGE-MANAGER",
        "referenceType": "purl",
        "referenceLocator": locator,
    }])
}

fn sha256(hex: &str) -> Value {
    json!([{ "algorithm": "SHA256", "checksumValue": hex }])
}

/// The SPDX 2.3 document, pretty-printed JSON.
pub fn spdx(input: &Input) -> Result<Vec<u8>, toml::de::Error> {
    spdx_with_lock(input, CARGO_LOCK)
}

/// [`spdx`] with a given Cargo.lock text.
pub fn spdx_with_lock(input: &Input, cargo_lock: &str) -> Result<Vec<u8>, toml::de::Error> {
    let lock = parse_lock(cargo_lock)?;
    let image_id = spdx_id("image", input.name, input.version);
    let mut packages = Vec::new();
    let mut rels = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];

    let mut image = package(&image_id, input.name, input.version);
    image.insert("primaryPackagePurpose".into(), json!("OPERATING_SYSTEM"));
    image.insert(
        "comment".into(),
        json!(format!(
            "herd node OS image; /usr dm-verity root hash {}",
            input.usrhash
        )),
    );
    packages.push(Value::Object(image));

    for p in input.packages {
        let id = spdx_id("deb", &p.name, &p.version);
        let mut m = package(&id, &p.name, &p.version);
        m.insert("supplier".into(), json!("Organization: Debian"));
        m.insert("checksums".into(), sha256(&p.sha256));
        m.insert(
            "externalRefs".into(),
            purl(format!(
                "pkg:deb/debian/{}@{}?arch={}&distro=debian-12",
                p.name,
                purl_enc(&p.version),
                purl_enc(&p.arch)
            )),
        );
        packages.push(Value::Object(m));
        rels.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }

    let mut crates: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for b in input.binaries {
        let version = lock
            .iter()
            .find(|c| c.name == b.name && !c.registry)
            .map_or(input.version, |c| c.version.as_str());
        let id = spdx_id("bin", b.name, version);
        let mut m = package(&id, b.name, version);
        m.insert("supplier".into(), json!("Organization: herd"));
        m.insert("primaryPackagePurpose".into(), json!("APPLICATION"));
        m.insert(
            "checksums".into(),
            sha256(&hex::encode(Sha256::digest(b.data))),
        );
        m.insert("licenseDeclared".into(), json!("Apache-2.0"));
        m.insert(
            "externalRefs".into(),
            purl(format!("pkg:generic/herd/{}@{}", b.name, purl_enc(version))),
        );
        packages.push(Value::Object(m));
        rels.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
        for i in closure(&lock, b.name) {
            crates.entry(i).or_default().push(id.clone());
        }
    }
    for (i, users) in &crates {
        let c = &lock[*i];
        if !c.registry {
            continue; // herd's own library crates are part of the binaries
        }
        let id = spdx_id("crate", &c.name, &c.version);
        let mut m = package(&id, &c.name, &c.version);
        m.insert(
            "downloadLocation".into(),
            json!(format!(
                "https://crates.io/api/v1/crates/{}/{}/download",
                c.name, c.version
            )),
        );
        m.insert("primaryPackagePurpose".into(), json!("LIBRARY"));
        if let Some(sum) = &c.checksum {
            m.insert("checksums".into(), sha256(sum));
        }
        m.insert(
            "externalRefs".into(),
            purl(format!("pkg:cargo/{}@{}", c.name, purl_enc(&c.version))),
        );
        packages.push(Value::Object(m));
        for u in users {
            rels.push(json!({
                "spdxElementId": u,
                "relationshipType": "DEPENDS_ON",
                "relatedSpdxElement": id,
            }));
        }
    }

    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", input.name, input.version),
        "documentNamespace": format!(
            "https://github.com/herd-os/herd/spdx/{}-{}-{}",
            input.name, input.version, input.usrhash
        ),
        "creationInfo": {
            "created": rfc3339(input.epoch),
            "creators": [format!("Tool: herd-{}", env!("CARGO_PKG_VERSION"))],
        },
        "documentDescribes": [image_id],
        "packages": packages,
        "relationships": rels,
    });
    let mut out = serde_json::to_vec_pretty(&doc).expect("the SBOM serialises");
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    const LOCK: &str = r#"
version = 4
[[package]]
name = "app"
version = "0.1.0"
dependencies = ["lib", "dup 2.0.0"]
[[package]]
name = "lib"
version = "0.1.0"
dependencies = ["serde"]
[[package]]
name = "serde"
version = "1.0.1"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "aa"
[[package]]
name = "dup"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "bb"
[[package]]
name = "dup"
version = "2.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "cc"
[[package]]
name = "unused"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "dd"
"#;

    #[test]
    fn document_lists_debs_binaries_and_their_crates() {
        let pkgs = [PackageInfo {
            name: "linux-image-6.1.0-56-cloud-amd64".into(),
            version: "6.1.192-2".into(),
            arch: "amd64".into(),
            sha256: "ab".repeat(32),
        }];
        let bins = [Binary {
            name: "app",
            data: b"\x7fELF",
        }];
        let input = Input {
            name: "herd",
            version: "0.1.0",
            usrhash: "00",
            epoch: 1_700_000_000,
            packages: &pkgs,
            binaries: &bins,
        };
        let a = spdx_with_lock(&input, LOCK).unwrap();
        assert_eq!(a, spdx_with_lock(&input, LOCK).unwrap());
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        let purls: Vec<&str> = v["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["externalRefs"][0]["referenceLocator"].as_str())
            .collect();
        assert_eq!(
            purls,
            [
                "pkg:deb/debian/linux-image-6.1.0-56-cloud-amd64@6.1.192-2?arch=amd64&distro=debian-12",
                "pkg:generic/herd/app@0.1.0",
                "pkg:cargo/serde@1.0.1",
                "pkg:cargo/dup@2.0.0",
            ]
        );
        let rels = v["relationships"].as_array().unwrap();
        assert!(rels
            .iter()
            .any(|r| r["spdxElementId"] == "SPDXRef-bin-app-0.1.0"
                && r["relationshipType"] == "DEPENDS_ON"
                && r["relatedSpdxElement"] == "SPDXRef-crate-serde-1.0.1"));
        // The real lock file parses and herd-init's closure has crates.
        let real = parse_lock(CARGO_LOCK).unwrap();
        assert!(closure(&real, "herd-init")
            .iter()
            .any(|i| real[*i].name == "libc"));
    }
}
