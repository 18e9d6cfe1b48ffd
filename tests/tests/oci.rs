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
    let (a, r) = (asked.clone(), refuse.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
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
            let (status, body) = if r.load(std::sync::atomic::Ordering::SeqCst) {
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
        },
        cert_pem,
    )
}

#[test]
fn pulls_and_signs_through_a_registry_that_wants_bearer_tokens() {
    let t = tempfile::tempdir().unwrap();
    let (tokens, cert) = token_server(t.path());
    let reg = herd_tests::registry::registry_with(
        t.path(),
        &format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            tokens.port,
            cert.display()
        ),
    );
    let host = format!("127.0.0.1:{}", reg.port);
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
