//! Against a real registry (Debian's docker-registry, the CNCF distribution
//! registry, on 127.0.0.1): an image made offline, pushed by skopeo (an
//! independent client), signed in cosign's format, pulled and unpacked only
//! when the signature checks; unsigned, wrongly signed and tampered images
//! are refused and nothing of them lands in the store.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herd_oci::cosign::{self, TrustedKey};
use herd_oci::layout::Layout;
use herd_oci::manifest::{
    Descriptor, ImageConfig, Manifest, RootFs, RunConfig, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST,
};
use herd_oci::pull::pull;
use herd_oci::registry::Registry;
use herd_oci::store::Store;
use herd_oci::{Digest, Error, Reference};

struct Reg {
    child: Child,
    port: u16,
    storage: PathBuf,
}

impl Drop for Reg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn need(tool: &str) {
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success(),
        "{tool} is missing: run scripts/setup.sh (it installs docker-registry and skopeo)"
    );
}

fn registry(dir: &Path) -> Reg {
    need("docker-registry");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let storage = dir.join("storage");
    let cfg = dir.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Reg {
        child,
        port,
        storage,
    }
}

/// A one-layer image with busybox in an OCI layout, named `name`.
fn make_image(layout: &Layout, name: &str, marker: &str) -> Digest {
    let mut tar = tar::Builder::new(Vec::new());
    let bb = std::fs::read("/bin/busybox").expect("busybox-static (scripts/setup.sh installs it)");
    for (path, data, mode) in [
        ("bin/busybox", bb.as_slice(), 0o755),
        ("etc/marker", marker.as_bytes(), 0o644),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, path, data).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let gz = gz.finish().unwrap();
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: RunConfig {
            cmd: Some(vec!["/bin/busybox".into(), "true".into()]),
            ..Default::default()
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![Digest::of(&raw)],
        },
    };
    let config = serde_json::to_vec(&config).unwrap();
    let desc = |mt: &str, b: &[u8]| Descriptor {
        media_type: mt.into(),
        digest: Digest::of(b),
        size: b.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    };
    layout.put(&gz).unwrap();
    layout.put(&config).unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: desc(OCI_CONFIG, &config),
        layers: vec![desc(OCI_LAYER_GZIP, &gz)],
        annotations: BTreeMap::new(),
    };
    layout.add_image(&m, name).unwrap()
}

fn skopeo_push(layout: &Path, name: &str, dest: &str) {
    need("skopeo");
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--insecure-policy",
        ])
        .arg(format!("oci:{}:{name}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn key_of(k: &herd_release::SigningKey) -> TrustedKey {
    TrustedKey::parse(&k.public().0, "test").unwrap()
}

#[test]
fn pulls_only_signed_untampered_images() {
    let t = tempfile::tempdir().unwrap();
    let reg = registry(t.path());
    let layout = Layout::create(&t.path().join("layout")).unwrap();
    let web = make_image(&layout, "web", "web");
    let other = make_image(&layout, "other", "other");
    let host = format!("127.0.0.1:{}", reg.port);
    skopeo_push(
        &t.path().join("layout"),
        "web",
        &format!("{host}/herd/web:1"),
    );
    skopeo_push(
        &t.path().join("layout"),
        "other",
        &format!("{host}/herd/other:1"),
    );

    let signer = herd_release::SigningKey::generate().unwrap();
    let stranger = herd_release::SigningKey::generate().unwrap();
    let web_ref = Reference::parse(&format!("{host}/herd/web:1")).unwrap();
    let registry = Registry::for_reference(&web_ref);
    cosign::sign(&registry, &web_ref, &web, &signer).unwrap();
    // Signing twice does not add a second identical signature.
    cosign::sign(&registry, &web_ref, &web, &signer).unwrap();

    // skopeo reads the signature manifest we pushed.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!(
            "docker://{host}/herd/web:{}",
            cosign::signature_tag(&web)
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sig: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sig["layers"].as_array().unwrap().len(), 1);
    assert_eq!(sig["layers"][0]["mediaType"], cosign::SIMPLESIGNING);

    let store = Store::open(&t.path().join("store")).unwrap();
    let p = pull(&web_ref, &store, &[key_of(&stranger), key_of(&signer)]).unwrap();
    assert_eq!(p.reference.digest.as_ref(), Some(&web));
    let root = t.path().join("rootfs");
    p.unpack(&store, &root).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("etc/marker")).unwrap(),
        "web"
    );
    let st = Command::new(root.join("bin/busybox"))
        .arg("true")
        .status()
        .unwrap();
    assert!(st.success());
    // By digest works too.
    let pinned = Reference::parse(&format!("{host}/herd/web@{web}")).unwrap();
    pull(&pinned, &store, &[key_of(&signer)]).unwrap();

    // Unsigned.
    let other_ref = Reference::parse(&format!("{host}/herd/other:1")).unwrap();
    let fresh = Store::open(&t.path().join("store2")).unwrap();
    let e = pull(&other_ref, &fresh, &[key_of(&signer)]).unwrap_err();
    assert!(e.to_string().contains("is not signed"), "{e}");
    // Signed by a key the node does not trust.
    cosign::sign(&registry, &other_ref, &other, &stranger).unwrap();
    let e = pull(&other_ref, &fresh, &[key_of(&signer)]).unwrap_err();
    assert!(
        e.to_string().contains("a key this node does not trust"),
        "{e}"
    );
    // No keys at all.
    let e = pull(&web_ref, &fresh, &[]).unwrap_err();
    assert!(e.to_string().contains("trusts no image keys"), "{e}");
    // A signature of web copied onto other names the wrong manifest.
    let (wsig, _, _) = registry
        .manifest("herd/web", &cosign::signature_tag(&web))
        .unwrap();
    let m: Manifest = serde_json::from_slice(&wsig).unwrap();
    for l in &m.layers {
        let b = registry.small_blob("herd/web", l).unwrap();
        registry.push_blob("herd/other", &b).unwrap();
    }
    registry.push_blob("herd/other", b"{}").unwrap();
    registry
        .push_manifest(
            "herd/other",
            &cosign::signature_tag(&other),
            &wsig,
            OCI_MANIFEST,
        )
        .unwrap();
    let e = pull(&other_ref, &fresh, &[key_of(&signer)]).unwrap_err();
    assert!(
        e.to_string().contains("a signature for another manifest"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(t.path().join("store2/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );

    // Tampered layer: flip a byte of web's layer in the registry's storage.
    let layer = &p.manifest.layers[0].digest;
    let data = reg
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&layer.hex()[..2])
        .join(layer.hex())
        .join("data");
    let mut b = std::fs::read(&data).unwrap();
    let n = b.len();
    b[n / 2] ^= 0xff;
    std::fs::write(&data, &b).unwrap();
    let e = pull(&web_ref, &fresh, &[key_of(&signer)]).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert!(!fresh.has(layer), "a tampered layer never enters the store");
}
