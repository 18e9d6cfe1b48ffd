//! A real OCI registry for tests (Debian's docker-registry, the CNCF
//! distribution registry, on 127.0.0.1), test images made offline in an OCI
//! layout, and pushes with skopeo (an independent client).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herd_oci::layout::Layout;
use herd_oci::manifest::{
    Descriptor, ImageConfig, Manifest, RootFs, RunConfig, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST,
};
use herd_oci::Digest;

/// A running registry; stopped when dropped.
pub struct Reg {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its storage directory.
    pub storage: PathBuf,
}

impl Drop for Reg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails with a clear message when `tool` is missing.
pub fn need(tool: &str) {
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

/// Starts a registry storing under `dir`.
pub fn registry(dir: &Path) -> Reg {
    registry_with(dir, "")
}

/// Starts a registry storing under `dir`, with `extra` appended to its
/// configuration (YAML, e.g. an `auth:` section).
pub fn registry_with(dir: &Path, extra: &str) -> Reg {
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
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
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
pub fn make_image(layout: &Layout, name: &str, marker: &str) -> Digest {
    make_image_with(layout, name, marker, &[])
}

/// [`make_image`] with `extra` files (path in the image, content, mode).
pub fn make_image_with(
    layout: &Layout,
    name: &str,
    marker: &str,
    extra: &[(&str, &[u8], u32)],
) -> Digest {
    let mut tar = tar::Builder::new(Vec::new());
    let bb = std::fs::read("/bin/busybox").expect("busybox-static (scripts/setup.sh installs it)");
    let base: [(&str, &[u8], u32); 2] = [
        ("bin/busybox", bb.as_slice(), 0o755),
        ("etc/marker", marker.as_bytes(), 0o644),
    ];
    for &(path, data, mode) in base.iter().chain(extra) {
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

/// Copies image `name` of a layout to `dest` (`host:port/repo:tag`).
pub fn skopeo_push(layout: &Path, name: &str, dest: &str) {
    skopeo_push_as(layout, name, dest, None)
}

/// [`skopeo_push`] to a registry that wants `user:password`.
pub fn skopeo_push_as(layout: &Path, name: &str, dest: &str, creds: Option<&str>) {
    need("skopeo");
    let mut cmd = Command::new("skopeo");
    if let Some(c) = creds {
        cmd.arg("copy").arg("--dest-creds").arg(c);
    } else {
        cmd.arg("copy");
    }
    let out = cmd
        .args(["--quiet", "--dest-tls-verify=false", "--insecure-policy"])
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

/// Copies `from:version` (a manifest and every blob it names) to
/// `to:version` in the registry at 127.0.0.1:`port` through the registry
/// API, byte for byte: what anyone who may push to a registry can do with
/// an image and its signature. Returns the manifest bytes.
pub fn copy_image(port: u16, from: &str, to: &str, version: &str) -> Vec<u8> {
    let r = herd_oci::Reference::parse(&format!("127.0.0.1:{port}/{from}")).unwrap();
    let reg = herd_oci::registry::Registry::for_reference(&r);
    let (bytes, media_type, _) = reg.manifest(from, version).unwrap();
    let m: Manifest = serde_json::from_slice(&bytes).unwrap();
    for d in std::iter::once(&m.config).chain(&m.layers) {
        let mut blob = Vec::new();
        reg.blob(from, d, &mut blob).unwrap();
        assert_eq!(reg.push_blob(to, &blob).unwrap(), d.digest);
    }
    reg.push_manifest(to, version, &bytes, &media_type).unwrap();
    bytes
}
