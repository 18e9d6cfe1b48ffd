//! Against a real registry (Debian's docker-registry, the CNCF distribution
//! registry, on 127.0.0.1): an image made offline, pushed by skopeo (an
//! independent client), signed in cosign's format, pulled and unpacked only
//! when the signature checks; unsigned, wrongly signed and tampered images
//! are refused and nothing of them lands in the store. `herd sign-image`
//! signs registry images and OCI layouts.

use std::process::Command;

use herd_oci::cosign::{self, TrustedKey};
use herd_oci::layout::Layout;
use herd_oci::manifest::{Manifest, OCI_MANIFEST};
use herd_oci::pull::pull;
use herd_oci::registry::Registry;
use herd_oci::store::Store;
use std::path::PathBuf;

use herd_oci::{Digest, Error, Reference, SignedIdentity};
use herd_tests::registry::{copy_image, make_image, registry, skopeo_push, Reg};
use herd_tests::{herd, run, run_ok};

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
    // Another test thread forking at the moment the file was written may
    // still hold its descriptor until it execs: retry "text file busy".
    let mut tries = 0;
    let st = loop {
        match Command::new(root.join("bin/busybox")).arg("true").status() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => break r.unwrap(),
        }
    };
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

/// A registry under `dir` with image "web" of the layout `dir/layout`
/// pushed as `repo_tag`, and a herd key `dir/image.key`.
fn web_pushed_and_key(dir: &std::path::Path, repo_tag: &str) -> (Reg, Digest, PathBuf) {
    let reg = registry(dir);
    let layout = Layout::create(&dir.join("layout")).unwrap();
    let web = make_image(&layout, "web", "web");
    skopeo_push(
        &dir.join("layout"),
        "web",
        &format!("127.0.0.1:{}/{repo_tag}", reg.port),
    );
    let key = dir.join("image.key");
    run_ok(
        Command::new(herd())
            .args(["key", "generate", "--out"])
            .arg(&key),
    );
    (reg, web, key)
}

#[test]
fn herd_sign_image_signs_registry_images_and_layouts() {
    let t = tempfile::tempdir().unwrap();
    let (reg, web, key) = web_pushed_and_key(t.path(), "herd/web:1");
    let dir = t.path().join("layout");
    let host = format!("127.0.0.1:{}", reg.port);
    let k = herd_release::SigningKey::load(&key).unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();

    // A registry image by tag.
    let out = run_ok(
        Command::new(herd())
            .args(["sign-image", &format!("{host}/herd/web:1"), "--key"])
            .arg(&key),
    );
    assert!(out.contains(&web.to_string()), "{out}");
    let r = Reference::parse(&format!("{host}/herd/web:1")).unwrap();
    pull(&r, &store, &[key_of(&k)]).unwrap();

    // A layout, signed before it is pushed: the signature travels with it.
    let name = format!("{host}/herd/offline");
    run_ok(
        Command::new(herd())
            .args([
                "sign-image",
                &format!("oci:{}:web", dir.display()),
                "--name",
                &name,
                "--key",
            ])
            .arg(&key),
    );
    skopeo_push(&dir, "web", &format!("{name}:1"));
    let sig = cosign::signature_tag(&web);
    skopeo_push(&dir, &sig, &format!("{name}:{sig}"));
    let r = Reference::parse(&format!("{name}:1")).unwrap();
    pull(&r, &store, &[key_of(&k)]).unwrap();

    // Bad inputs.
    let fails = |args: &[&str], msg: &str| {
        let o = run(Command::new(herd()).arg("sign-image").args(args));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains(msg), "{args:?}: {err}");
    };
    let key_s = key.to_str().unwrap();
    fails(
        &[&format!("oci:{}:web", dir.display()), "--key", key_s],
        "needs --name",
    );
    fails(
        &[&format!("{host}/herd/nothing:1"), "--key", key_s],
        "not found",
    );
    fails(
        &[
            &format!("oci:{}:nope", dir.display()),
            "--name",
            &name,
            "--key",
            key_s,
        ],
        "nope",
    );
    fails(
        &[&format!("{host}/herd/web:1"), "--key", "/nonexistent.key"],
        "/nonexistent.key",
    );
    fails(&["Not A Reference", "--key", key_s], "image reference");
}

/// The attack of issue 15: an image signed (by `herd sign-image`, for
/// `team/web`) is copied byte for byte with its `.sig` under `team/other`;
/// asked for as `team/other:1` it is refused with its own error naming
/// both references, though key, payload type and digest all check. The key's
/// `remapIdentity` opt-in accepts it.
#[test]
fn a_signature_vouches_only_for_the_image_it_names() {
    let t = tempfile::tempdir().unwrap();
    let (reg, web, key) = web_pushed_and_key(t.path(), "team/web:1");
    let host = format!("127.0.0.1:{}", reg.port);
    run_ok(
        Command::new(herd())
            .args(["sign-image", &format!("{host}/team/web:1"), "--key"])
            .arg(&key),
    );
    let k = herd_release::SigningKey::load(&key).unwrap();
    // herd signs the repository without a tag, as cosign does: the image
    // runs under its own name, by tag or by digest.
    let store = Store::open(&t.path().join("store")).unwrap();
    let web_ref = Reference::parse(&format!("{host}/team/web:1")).unwrap();
    pull(&web_ref, &store, &[key_of(&k)]).unwrap();
    let pinned = Reference::parse(&format!("{host}/team/web@{web}")).unwrap();
    pull(&pinned, &store, &[key_of(&k)]).unwrap();

    let sig = cosign::signature_tag(&web);
    copy_image(reg.port, "team/web", "team/other", "1");
    let copied = copy_image(reg.port, "team/web", "team/other", &sig);
    let registry = Registry::for_reference(&web_ref);
    assert_eq!(registry.manifest("team/web", &sig).unwrap().0, copied);

    let fresh = Store::open(&t.path().join("fresh")).unwrap();
    for asked in [
        format!("{host}/team/other:1"),
        format!("{host}/team/other@{web}"),
    ] {
        let r = Reference::parse(&asked).unwrap();
        let e = pull(&r, &fresh, &[key_of(&k)]).unwrap_err();
        let Error::WrongIdentity(w) = &e else {
            panic!("{asked}: expected WrongIdentity, got {e}");
        };
        assert_eq!(w.asked, asked);
        assert_eq!(w.signed, format!("{host}/team/web"));
        assert_eq!(w.key, key_of(&k).id());
        let msg = e.to_string();
        assert!(
            msg.contains(&asked)
                && msg.contains(&format!("{host}/team/web\""))
                && msg.contains("re-sign the image")
                && msg.contains("signed_identity"),
            "{msg}"
        );
    }
    assert_eq!(
        std::fs::read_dir(t.path().join("fresh/blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "nothing of a refused image lands in the store"
    );

    // The opt-in: this key's signatures for team/web vouch for team/other.
    let remap = key_of(&k).with_identity(SignedIdentity::RemapIdentity {
        prefix: format!("{host}/team/other"),
        signed_prefix: format!("{host}/team/web"),
    });
    let other = Reference::parse(&format!("{host}/team/other:1")).unwrap();
    assert_eq!(
        pull(&other, &fresh, &[remap]).unwrap().reference.digest,
        Some(web.clone())
    );
    // matchRepoDigestOrExact wants the tag in the signature: herd's tagless
    // one does for a digest, not for a tag.
    let exact = key_of(&k).with_identity(SignedIdentity::MatchRepoDigestOrExact);
    pull(&pinned, &fresh, std::slice::from_ref(&exact)).unwrap();
    let e = pull(&web_ref, &fresh, &[exact]).unwrap_err();
    assert!(matches!(e, Error::WrongIdentity(_)), "{e}");
}

/// A token server for docker-registry's `auth: token` mode, on 127.0.0.1:
/// hands out ES256 JWTs (its certificate in the `x5c` header, the same
/// certificate in the registry's root bundle) granting what was asked, and
/// counts the requests. `refuse` makes it answer 403 instead.
struct TokenServer {
    port: u16,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// When set, the `Authorization` value a token request must carry
    /// (else 401), as a token service for private repositories wants.
    want_auth: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

const SERVICE: &str = "herd-test-registry";
const ISSUER: &str = "herd-test-issuer";

fn b64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn jwt(key: &p256::ecdsa::SigningKey, cert_der: &[u8], scope: &str) -> String {
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // scope: repository:NAME:ACTION[,ACTION]
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": "", "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{scope}"),
        "access": [{"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}],
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig: p256::ecdsa::Signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(&sig.to_bytes()))
}

fn token_server(dir: &std::path::Path) -> (TokenServer, std::path::PathBuf) {
    use p256::pkcs8::DecodePrivateKey;
    use std::io::{BufRead, BufReader, Write};
    let key_pem = dir.join("token.key");
    let cert_pem = dir.join("token.crt");
    run_ok(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&key_pem),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-new",
                "-subj",
                "/CN=herd test token issuer",
                "-days",
                "2",
                "-key",
            ])
            .arg(&key_pem)
            .arg("-out")
            .arg(&cert_pem),
    );
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert_pem)
        .output()
        .unwrap()
        .stdout;
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&key_pem).unwrap())
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let want_auth = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let (a, r, w) = (asked.clone(), refuse.clone(), want_auth.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut auth = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("authorization") {
                        auth = Some(v.trim().to_string());
                    }
                }
            }
            let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
            let scope = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("scope="))
                .map(|s| {
                    s.replace("%3A", ":")
                        .replace("%2F", "/")
                        .replace("%2C", ",")
                })
                .unwrap_or_default();
            a.lock().unwrap().push(target.clone());
            let wanted = w.lock().unwrap().clone();
            let (status, body) = if wanted.is_some() && auth != wanted {
                (
                    "401 Unauthorized",
                    "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}".to_string(),
                )
            } else if r.load(std::sync::atomic::Ordering::SeqCst) {
                (
                    "403 Forbidden",
                    "{\"errors\":[{\"code\":\"DENIED\"}]}".to_string(),
                )
            } else {
                (
                    "200 OK",
                    serde_json::json!({"token": jwt(&key, &der, &scope)}).to_string(),
                )
            };
            let mut w = conn;
            let _ = write!(
                w,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (
        TokenServer {
            port,
            asked,
            refuse,
            want_auth,
        },
        cert_pem,
    )
}

/// A docker-registry in `dir` that wants Bearer tokens from a token server
/// of the test's own; returns both and the registry's host:port.
fn token_registry(dir: &std::path::Path) -> (TokenServer, herd_tests::registry::Reg, String) {
    let (tokens, cert) = token_server(dir);
    let reg = herd_tests::registry::registry_with(
        dir,
        &format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            tokens.port,
            cert.display()
        ),
    );
    let host = format!("127.0.0.1:{}", reg.port);
    (tokens, reg, host)
}

#[test]
fn pulls_and_signs_through_a_registry_that_wants_bearer_tokens() {
    let t = tempfile::tempdir().unwrap();
    let (tokens, reg, host) = token_registry(t.path());
    // Without a token the registry refuses, as Docker Hub or GHCR do.
    let answer = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
        s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(
        answer.starts_with("HTTP/1.0 401") && answer.contains("Bearer realm="),
        "the registry does not ask for a token: {answer}"
    );

    let layout = Layout::create(&t.path().join("layout")).unwrap();
    let web = make_image(&layout, "web", "web");
    skopeo_push(
        &t.path().join("layout"),
        "web",
        &format!("{host}/herd/web:1"),
    );
    let web_ref = Reference::parse(&format!("{host}/herd/web:1")).unwrap();
    let signer = herd_release::SigningKey::generate().unwrap();
    cosign::sign(&Registry::for_reference(&web_ref), &web_ref, &web, &signer).unwrap();
    assert!(
        tokens
            .asked
            .lock()
            .unwrap()
            .iter()
            .any(|q| q.contains("push")),
        "signing fetched no push token: {:?}",
        tokens.asked.lock().unwrap()
    );

    let store = Store::open(&t.path().join("store")).unwrap();
    let before = tokens.asked.lock().unwrap().len();
    let p = pull(&web_ref, &store, &[key_of(&signer)]).unwrap();
    assert_eq!(p.reference.digest.as_ref(), Some(&web));
    let asked = tokens.asked.lock().unwrap()[before..].to_vec();
    assert!(
        asked
            .iter()
            .any(|q| q.contains(&format!("service={SERVICE}"))
                && q.contains("scope=repository%3Aherd%2Fweb%3Apull")),
        "the pull fetched no pull token: {asked:?}"
    );

    // A token server that says no: a clear error, nothing stored.
    tokens
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let store2 = Store::open(&t.path().join("store2")).unwrap();
    let e = pull(&web_ref, &store2, &[key_of(&signer)]).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("127.0.0.1:{}/token", tokens.port)) && msg.contains("403"),
        "{msg}"
    );
}

/// A credentials file `dir/<host>.toml` with `text`, mode 0600.
fn credentials_file(dir: &std::path::Path, host: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let f = herd_oci::credentials::file_for(dir, host);
    std::fs::write(&f, text).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

/// Everything herd-oci and herd-agent log (and the `log` records of the
/// libraries under them), at every level, into a buffer.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Logs {
        use tracing_subscriber::util::SubscriberInitExt;
        let logs = Logs::default();
        let l = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || l.clone())
            .finish()
            .try_init()
            .expect("the only test of this binary that sets a subscriber");
        logs
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

const PASSWORD: &str = "pw-Htpasswd-7c1e9";

#[test]
fn pulls_from_a_private_registry_with_credentials_from_a_0600_file() {
    let logs = Logs::capture();
    let t = tempfile::tempdir().unwrap();
    let htpasswd = t.path().join("htpasswd");
    herd_tests::registry::need("htpasswd");
    let out = run_ok(Command::new("htpasswd").args(["-Bbn", "robot", PASSWORD]));
    std::fs::write(&htpasswd, out.trim()).unwrap();
    let reg = herd_tests::registry::registry_with(
        t.path(),
        &format!(
            "auth:\n  htpasswd:\n    realm: herd-test\n    path: {}\n",
            htpasswd.display()
        ),
    );
    let host = format!("127.0.0.1:{}", reg.port);
    let layout = Layout::create(&t.path().join("layout")).unwrap();
    let web = make_image(&layout, "web", "web");
    herd_tests::registry::skopeo_push_as(
        &t.path().join("layout"),
        "web",
        &format!("{host}/herd/web:1"),
        Some(&format!("robot:{PASSWORD}")),
    );
    let web_ref = Reference::parse(&format!("{host}/herd/web:1")).unwrap();
    let signer = herd_release::SigningKey::generate().unwrap();
    let dir = t.path().join("registries");
    let mut errors = Vec::new();

    // No credentials file: the error names the file to create.
    std::fs::create_dir_all(&dir).unwrap();
    let reg_client = || Registry::for_reference(&web_ref).with_credentials_dir(&dir);
    let store = Store::open(&t.path().join("store")).unwrap();
    let e =
        herd_oci::pull::pull_from(&reg_client(), &web_ref, &store, &[key_of(&signer)]).unwrap_err();
    let Error::NeedsCredentials { registry, file } = &e else {
        panic!("expected NeedsCredentials, got {e}");
    };
    assert_eq!(registry, &host);
    assert_eq!(file, &dir.join(format!("{host}.toml")));
    assert!(e.to_string().contains(&format!("{host}.toml")), "{e}");
    errors.push(e.to_string());

    // A wrong password: refused, and said so.
    let f = credentials_file(
        &dir,
        &host,
        "username = \"robot\"\npassword = \"pw-Wrong-0000\"\n",
    );
    let e =
        herd_oci::pull::pull_from(&reg_client(), &web_ref, &store, &[key_of(&signer)]).unwrap_err();
    assert!(
        matches!(&e, Error::CredentialsRefused { file, .. } if file == &f),
        "{e}"
    );
    errors.push(e.to_string());

    // The right password in a file others may read: refused before use.
    credentials_file(
        &dir,
        &host,
        &format!("username = \"robot\"\npassword = \"{PASSWORD}\"\n"),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let e =
        herd_oci::pull::pull_from(&reg_client(), &web_ref, &store, &[key_of(&signer)]).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Credentials(herd_oci::credentials::CredentialsError::Exposed {
                mode: 0o644,
                ..
            })
        ),
        "{e}"
    );
    errors.push(e.to_string());

    // 0600: signing (push) and pulling work, through herd-agent's cache too.
    credentials_file(
        &dir,
        &host,
        &format!("username = \"robot\"\npassword = \"{PASSWORD}\"\n"),
    );
    cosign::sign(&reg_client(), &web_ref, &web, &signer).unwrap();
    let p = herd_oci::pull::pull_from(&reg_client(), &web_ref, &store, &[key_of(&signer)]).unwrap();
    assert_eq!(p.reference.digest.as_ref(), Some(&web));
    let images = herd_agent::images::Images::open(&t.path().join("agent"), Vec::new())
        .unwrap()
        .with_registries(&dir);
    let policy = herd_agent::policy::Policy {
        keys: vec![key_of(&signer)],
        ..Default::default()
    };
    let ready = images
        .get(&format!("{host}/herd/web:1"), Some("Always"), &policy)
        .unwrap();
    assert!(ready.fetched);
    // Without the file, the agent's error names it.
    let bare = herd_agent::images::Images::open(&t.path().join("agent2"), Vec::new())
        .unwrap()
        .with_registries(&t.path().join("none"));
    let e = bare
        .get(&format!("{host}/herd/web:1"), Some("Always"), &policy)
        .unwrap_err();
    assert!(e.to_string().contains("none/127.0.0.1:"), "{e}");
    errors.push(e.to_string());

    let logs = logs.text();
    assert!(
        logs.contains("127.0.0.1"),
        "the capture saw no log line at all: {logs}"
    );
    for (what, text) in [("logs", &logs), ("errors", &errors.join("\n"))] {
        assert!(!text.contains(PASSWORD), "the password is in the {what}");
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("robot:{PASSWORD}"));
        assert!(
            !text.contains(&b64),
            "the Basic credentials are in the {what}"
        );
        assert!(
            !text.contains("pw-Wrong"),
            "the wrong password is in the {what}"
        );
    }
}

#[test]
fn token_services_get_the_password_and_registries_get_the_token() {
    let t = tempfile::tempdir().unwrap();
    let (tokens, _reg, host) = token_registry(t.path());
    let layout = Layout::create(&t.path().join("layout")).unwrap();
    let web = make_image(&layout, "web", "web");
    skopeo_push(
        &t.path().join("layout"),
        "web",
        &format!("{host}/herd/web:1"),
    );
    let web_ref = Reference::parse(&format!("{host}/herd/web:1")).unwrap();
    let signer = herd_release::SigningKey::generate().unwrap();
    cosign::sign(&Registry::for_reference(&web_ref), &web_ref, &web, &signer).unwrap();

    // The token service now wants robot's password.
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("robot:{PASSWORD}"))
    );
    *tokens.want_auth.lock().unwrap() = Some(basic);
    let dir = t.path().join("registries");
    std::fs::create_dir_all(&dir).unwrap();
    let client = || Registry::for_reference(&web_ref).with_credentials_dir(&dir);
    let store = Store::open(&t.path().join("store")).unwrap();
    let e = herd_oci::pull::pull_from(&client(), &web_ref, &store, &[key_of(&signer)]).unwrap_err();
    assert!(matches!(e, Error::NeedsCredentials { .. }), "{e}");
    credentials_file(&dir, &host, "username = \"robot\"\npassword = \"nope\"\n");
    let e = herd_oci::pull::pull_from(&client(), &web_ref, &store, &[key_of(&signer)]).unwrap_err();
    assert!(matches!(e, Error::CredentialsRefused { .. }), "{e}");
    credentials_file(
        &dir,
        &host,
        &format!("username = \"robot\"\npassword = \"{PASSWORD}\"\n"),
    );
    let p = herd_oci::pull::pull_from(&client(), &web_ref, &store, &[key_of(&signer)]).unwrap();
    assert_eq!(p.reference.digest.as_ref(), Some(&web));

    // A token file: sent to the registry as the Bearer token, the token
    // service is not asked (it refuses everything now).
    let token = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", tokens.port)).unwrap();
        write!(
            s,
            "GET /token?service={SERVICE}&scope=repository%3Aherd%2Fweb%3Apull HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
            tokens.want_auth.lock().unwrap().clone().unwrap()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap().to_string();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    tokens
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let before = tokens.asked.lock().unwrap().len();
    credentials_file(&dir, &host, &format!("token = \"{token}\"\n"));
    let fresh = Store::open(&t.path().join("fresh")).unwrap();
    let p = herd_oci::pull::pull_from(&client(), &web_ref, &fresh, &[key_of(&signer)]).unwrap();
    assert_eq!(p.reference.digest.as_ref(), Some(&web));
    assert_eq!(tokens.asked.lock().unwrap().len(), before);
    // A token the registry does not take.
    credentials_file(&dir, &host, "token = \"not.a.jwt\"\n");
    let e = herd_oci::pull::pull_from(&client(), &web_ref, &fresh, &[key_of(&signer)]).unwrap_err();
    assert!(matches!(e, Error::CredentialsRefused { .. }), "{e}");
}

/// A cosign v3 bundle for `digest`, as cosign v3 writes it for `cosign sign
/// --key` with a P-256 key: built here by hand from the published formats
/// (the Sigstore bundle v0.3 protobuf-specs JSON, the DSSE v1 envelope and
/// its PAE, the in-toto Statement v1, and cosign's sign.go/write.go for
/// what goes where: the subject names the digest only, the predicate is
/// empty, the referrer's artifactType is the bundle media type), with its
/// own PAE and the p256 crate, not with herd's signing code. No
/// independent signer with a local key installs here: the sigstore Python
/// package signs keyless only, the Rust sigstore crate's bundle signing
/// wants a Fulcio certificate, and there is no cosign in Debian 12.
fn cosign_v3_bundle(digest: &Digest, key: &p256::ecdsa::SigningKey, name: Option<&str>) -> Vec<u8> {
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    let std = base64::engine::general_purpose::STANDARD;
    let mut subject = serde_json::json!({
        "digest": {"sha256": digest.hex()},
        "annotations": {"team": "web"},
    });
    if let Some(n) = name {
        subject["name"] = n.into();
    }
    let statement = serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [subject],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    })
    .to_string();
    let payload_type = "application/vnd.in-toto+json";
    let pae = format!(
        "DSSEv1 {} {payload_type} {} {statement}",
        payload_type.len(),
        statement.len()
    );
    let sig: p256::ecdsa::Signature = key.sign(pae.as_bytes());
    serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {
            "publicKey": {"hint": "ZmFrZS1oaW50"},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": std.encode(&statement),
            "payloadType": payload_type,
            "signatures": [{"sig": std.encode(sig.to_der().as_bytes()), "keyid": ""}],
        },
    })
    .to_string()
    .into_bytes()
}

/// Attaches `bundle` to `subject` (an OCI manifest of `size` bytes) in
/// `repo` as cosign does on a registry without the referrers API: a
/// referrer manifest pushed by digest, listed in the `sha256-<hex>` index
/// (written here from the OCI distribution spec, not by herd).
fn attach_referrer(reg: &Registry, repo: &str, subject: &Digest, size: u64, bundle: &[u8]) {
    let bt = "application/vnd.dev.sigstore.bundle.v0.3+json";
    reg.push_blob(repo, b"{}").unwrap();
    let bd = reg.push_blob(repo, bundle).unwrap();
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": bt,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": Digest::of(b"{}").to_string(), "size": 2},
        "layers": [{"mediaType": bt, "digest": bd.to_string(), "size": bundle.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": size},
        "annotations": {"dev.sigstore.bundle.content": "dsse-envelope", "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
    })
    .to_string();
    let md = reg
        .push_manifest(
            repo,
            &Digest::of(m.as_bytes()).to_string(),
            m.as_bytes(),
            OCI_MANIFEST,
        )
        .unwrap();
    let tag = format!("sha256-{}", subject.hex());
    let mut index = match reg.manifest(repo, &tag) {
        Ok((b, _, _)) => serde_json::from_slice::<serde_json::Value>(&b).unwrap(),
        Err(_) => {
            serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
        }
    };
    index["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": OCI_MANIFEST, "digest": md.to_string(), "size": m.len(), "artifactType": bt,
    }));
    let ib = index.to_string();
    reg.push_manifest(
        repo,
        &tag,
        ib.as_bytes(),
        "application/vnd.oci.image.index.v1+json",
    )
    .unwrap();
}

fn p256_key(seed: u8) -> (p256::ecdsa::SigningKey, TrustedKey) {
    use p256::pkcs8::EncodePublicKey;
    let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
    let pem = sk
        .verifying_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    let k = TrustedKey::parse(&pem, "cosign.pub").unwrap();
    (sk, k)
}

#[test]
fn cosign_v3_bundles_found_through_the_referrers_tag_are_checked_like_sig() {
    let t = tempfile::tempdir().unwrap();
    let (reg, web, key) = web_pushed_and_key(t.path(), "team/web:1");
    let host = format!("127.0.0.1:{}", reg.port);
    let web_ref = Reference::parse(&format!("{host}/team/web:1")).unwrap();
    let registry = Registry::for_reference(&web_ref);
    let (mbytes, _, _) = registry.manifest("team/web", "1").unwrap();
    let size = mbytes.len() as u64;
    // Debian's docker-registry (distribution 2.8) has no referrers API:
    // this test is of the tag schema.
    assert!(registry.referrers("team/web", &web).unwrap().is_none());

    // A bundle as cosign v3 makes it (P-256, no image name in it).
    let (sk, cosign_pub) = p256_key(9);
    attach_referrer(
        &registry,
        "team/web",
        &web,
        size,
        &cosign_v3_bundle(&web, &sk, None),
    );
    let store = Store::open(&t.path().join("store")).unwrap();
    // No name: refused unless the key's policy opts in.
    let e = pull(&web_ref, &store, std::slice::from_ref(&cosign_pub)).unwrap_err();
    assert!(
        matches!(&e, Error::NoIdentity { image, key } if image == &web_ref.to_string() && key == &cosign_pub.id()),
        "{e}"
    );
    assert!(e.to_string().contains("bundle_without_identity"), "{e}");
    let opted = cosign_pub.clone().with_bundle_without_identity(true);
    let p = pull(&web_ref, &store, std::slice::from_ref(&opted)).unwrap();
    assert_eq!(p.reference.digest.as_ref(), Some(&web));
    assert_eq!(p.signed_by, cosign_pub.id());

    // Wrong key: the bundle's signature is by a key the node does not trust.
    let (_, stranger) = p256_key(10);
    let e = pull(
        &web_ref,
        &store,
        &[stranger.with_bundle_without_identity(true)],
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Untrusted { message, .. } if message.contains("a bundle signed by a key this node does not trust")),
        "{e}"
    );

    // `herd sign-image --bundle` (ed25519, names the image): accepted by
    // the default rule, no opt-in needed.
    let fresh = Store::open(&t.path().join("fresh")).unwrap();
    let k = herd_release::SigningKey::load(&key).unwrap();
    run_ok(
        Command::new(herd())
            .args([
                "sign-image",
                "--bundle",
                &format!("{host}/team/web:1"),
                "--key",
            ])
            .arg(&key),
    );
    // Not as a .sig: only the bundle signs it.
    assert!(matches!(
        registry.manifest("team/web", &cosign::signature_tag(&web)),
        Err(Error::NotFound(_))
    ));
    let (index, mt, _) = registry
        .manifest("team/web", &format!("sha256-{}", web.hex()))
        .unwrap();
    assert!(
        mt.starts_with("application/vnd.oci.image.index.v1+json"),
        "{mt}"
    );
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    let p = pull(&web_ref, &fresh, &[key_of(&k)]).unwrap();
    assert_eq!(p.signed_by, key_of(&k).id());

    // Identity of another repository: the bundle and its referrer copied
    // byte for byte to team/other (with the image) name team/web.
    copy_image(reg.port, "team/web", "team/other", "1");
    for d in index["manifests"].as_array().unwrap() {
        copy_image(
            reg.port,
            "team/web",
            "team/other",
            d["digest"].as_str().unwrap(),
        );
    }
    let tag = format!("sha256-{}", web.hex());
    let (ib, mt, _) = registry.manifest("team/web", &tag).unwrap();
    registry
        .push_manifest("team/other", &tag, &ib, &mt)
        .unwrap();
    let other = Reference::parse(&format!("{host}/team/other:1")).unwrap();
    let e = pull(&other, &fresh, &[key_of(&k)]).unwrap_err();
    let Error::WrongIdentity(w) = &e else {
        panic!("expected WrongIdentity, got {e}");
    };
    assert_eq!(w.signed, format!("{host}/team/web"));
    // The nameless cosign bundle copied along vouches for team/other only
    // for a key that opted in.
    let e = pull(&other, &fresh, std::slice::from_ref(&cosign_pub)).unwrap_err();
    assert!(matches!(e, Error::NoIdentity { .. }), "{e}");

    // A bundle for another digest, attached to this image: the statement
    // names the other manifest.
    let layout = Layout::open(&t.path().join("layout")).unwrap();
    let second = make_image(&layout, "second", "second");
    skopeo_push(
        &t.path().join("layout"),
        "second",
        &format!("{host}/team/second:1"),
    );
    let second_ref = Reference::parse(&format!("{host}/team/second:1")).unwrap();
    let (sb, _, _) = registry.manifest("team/second", "1").unwrap();
    attach_referrer(
        &registry,
        "team/second",
        &second,
        sb.len() as u64,
        &cosign_v3_bundle(&web, &sk, Some(&format!("{host}/team/second"))),
    );
    let e = pull(&second_ref, &fresh, std::slice::from_ref(&opted)).unwrap_err();
    let want = format!("a bundle signed for another manifest ({web})");
    assert!(
        matches!(&e, Error::Untrusted { message, .. } if message.contains(&want)),
        "{e}"
    );
    // ... and a referrer whose subject is another manifest, listed in this
    // image's index (web's referrer put in second's index): skipped.
    let web_referrer = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    copy_image(reg.port, "team/web", "team/second", &web_referrer);
    let tag = format!("sha256-{}", second.hex());
    let (ib, _, _) = registry.manifest("team/second", &tag).unwrap();
    let mut i: serde_json::Value = serde_json::from_slice(&ib).unwrap();
    i["manifests"]
        .as_array_mut()
        .unwrap()
        .push(index["manifests"][0].clone());
    registry
        .push_manifest(
            "team/second",
            &tag,
            i.to_string().as_bytes(),
            "application/vnd.oci.image.index.v1+json",
        )
        .unwrap();
    let e = pull(&second_ref, &fresh, &[opted]).unwrap_err();
    assert!(
        matches!(&e, Error::Untrusted { message, .. } if message.contains("a referrer of another manifest")),
        "{e}"
    );
    assert!(
        !fresh.has(&second),
        "nothing of a refused image lands in the store"
    );
}
