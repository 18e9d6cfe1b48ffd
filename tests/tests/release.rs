//! Publishing signed releases and serving them: `herd key`, `herd release`,
//! `herd serve`, checked with herd-release's node-side verification.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use herd_release::{verify_channel, verify_root_chain, Envelope, NodeState, Root};
use herd_tests::*;

/// (status line, body) of a GET with optional extra headers.
fn get(port: u16, path: &str, headers: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n{headers}\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    (
        head.lines().next().unwrap().to_string(),
        all[split + 4..].to_vec(),
    )
}

fn herd_ok(args: &[&str]) -> String {
    run_ok(Command::new(herd()).args(args))
}

#[test]
fn publish_serve_verify_rotate() {
    let image = default_image();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key.json");
    let key_s = key.to_str().unwrap();
    herd_ok(&["key", "generate", "--out", key_s]);
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let again = run(Command::new(herd()).args(["key", "generate", "--out", key_s]));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    let repo = tmp.path().join("repo");
    let repo_s = repo.to_str().unwrap();
    herd_ok(&["release", "init", "--repo", repo_s, "--key", key_s]);
    let out = herd_ok(&[
        "release",
        "publish",
        "--image-out",
        image.to_str().unwrap(),
        "--repo",
        repo_s,
        "--key",
        key_s,
    ]);
    assert!(out.contains("sequence 1"), "{out}");

    let (_srv, port) = herd_serve(&repo);
    let (status, root1) = get(port, "/root/1.json", "");
    assert!(status.contains("200"), "{status}");
    let env = Envelope::parse(&root1, "root").unwrap();
    let trusted: Root = env.document("root").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (status, chan) = get(port, "/channels/stable.json", "");
    assert!(status.contains("200"));
    let state = NodeState {
        highest_seq: 0,
        installed: "0.0.1".into(),
        bad: vec![],
    };
    let (c, take) = verify_channel(&trusted, &chan, "stable", &state, "node-1", now).unwrap();
    assert!(take);
    let m = manifest(image);
    assert_eq!(c.release.usrhash, m["usr"]["usrhash"].as_str().unwrap());
    assert_eq!(c.release.version, "0.1.0");

    // Payloads are content-addressed and served with byte ranges (resume).
    let usr = &c.release.payloads["usr.img"];
    let (status, body) = get(port, &format!("/payloads/{}", usr.sha256), "");
    assert!(status.contains("200"));
    assert_eq!(body.len() as u64, usr.size);
    let whole = std::fs::read(image.join("usr.img")).unwrap();
    assert!(body == whole);
    let (status, tail) = get(
        port,
        &format!("/payloads/{}", usr.sha256),
        "Range: bytes=4096-\r\n",
    );
    assert!(status.contains("206"), "{status}");
    assert!(tail == whole[4096..]);
    let (status, _) = get(port, "/../../etc/passwd", "");
    assert!(status.contains("404"), "{status}");

    // Publishing again moves the sequence forward.
    let out = herd_ok(&[
        "release",
        "publish",
        "--image-out",
        image.to_str().unwrap(),
        "--repo",
        repo_s,
        "--key",
        key_s,
    ]);
    assert!(out.contains("sequence 2"), "{out}");

    // Rotate to a new key; the node follows the root chain; the old key alone is refused now.
    let key2 = tmp.path().join("key2.json");
    herd_ok(&["key", "generate", "--out", key2.to_str().unwrap()]);
    herd_ok(&[
        "release",
        "rotate",
        "--repo",
        repo_s,
        "--key",
        key_s,
        "--new-key",
        key2.to_str().unwrap(),
    ]);
    let refused = run(Command::new(herd()).args([
        "release",
        "publish",
        "--image-out",
        image.to_str().unwrap(),
        "--repo",
        repo_s,
        "--key",
        key_s,
    ]));
    assert!(
        !refused.status.success(),
        "the rotated-out key could still publish"
    );
    herd_ok(&[
        "release",
        "publish",
        "--image-out",
        image.to_str().unwrap(),
        "--repo",
        repo_s,
        "--key",
        key2.to_str().unwrap(),
    ]);
    let (_, root2) = get(port, "/root/2.json", "");
    let current = verify_root_chain(&trusted, &[root2], now).unwrap();
    let (_, chan) = get(port, "/channels/stable.json", "");
    let (c, _) = verify_channel(&current, &chan, "stable", &state, "node-1", now).unwrap();
    assert_eq!(c.seq, 3);
    assert!(verify_channel(&trusted, &chan, "stable", &state, "node-1", now).is_err());
}

#[test]
fn publish_without_a_build_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k.json");
    herd_ok(&["key", "generate", "--out", key.to_str().unwrap()]);
    let repo = tmp.path().join("repo");
    let o = run(Command::new(herd())
        .args([
            "release",
            "publish",
            "--image-out",
            "/nonexistent",
            "--repo",
        ])
        .arg(&repo)
        .arg("--key")
        .arg(&key));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("herd release init"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    herd_ok(&[
        "release",
        "init",
        "--repo",
        repo.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let o = run(Command::new(herd())
        .args([
            "release",
            "publish",
            "--image-out",
            "/nonexistent",
            "--repo",
        ])
        .arg(&repo)
        .arg("--key")
        .arg(&key));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a finished build"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `herd-update write-slot` (the node's updater binary) against `port`,
/// with the node-side state in `state`.
fn write_slot(port: u16, tmp: &Path, baked: &Path, state: &Path) -> std::process::Output {
    run(Command::new(bin_dir().join("herd-update"))
        .arg("write-slot")
        .args(["--repository", &format!("http://127.0.0.1:{port}")])
        .arg("--root")
        .arg(baked)
        .arg("--usr")
        .arg(tmp.join("usr"))
        .arg("--verity")
        .arg(tmp.join("verity"))
        .arg("--state-dir")
        .arg(state))
}

fn state_json(state: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(state.join("state.json")).unwrap()).unwrap()
}

/// The attack of issue 14: after the operator rotated away from a leaked
/// key, whoever controls the repository answers 404 for root/2.json and
/// serves a higher sequence signed by the leaked key. herd-update keeps the
/// newest root it verified and refuses; and the newest signing time it saw
/// stays its "now" when the clock is behind.
#[test]
fn write_slot_keeps_the_rotation_and_the_trusted_time() {
    let image = default_image();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (k1, k2) = (t.join("k1.json"), t.join("k2.json"));
    for k in [&k1, &k2] {
        herd_ok(&["key", "generate", "--out", k.to_str().unwrap()]);
    }
    let (repo, old) = (t.join("repo"), t.join("old"));
    let release = |cmd: &str, repo: &Path, key: &Path, more: &[&str]| {
        let mut args = vec!["release", cmd, "--repo", repo.to_str().unwrap()];
        args.extend(["--key", key.to_str().unwrap()]);
        args.extend(more);
        herd_ok(&args)
    };
    let publish = |repo: &Path, key: &Path| {
        release(
            "publish",
            repo,
            key,
            &["--image-out", image.to_str().unwrap()],
        )
    };
    release("init", &repo, &k1, &[]);
    publish(&repo, &k1);
    // The node's image bakes root 1; the attacker keeps this copy.
    let baked = t.join("update-root.json");
    std::fs::copy(repo.join("root/1.json"), &baked).unwrap();
    run_ok(Command::new("cp").arg("-al").arg(&repo).arg(&old));
    release("rotate", &repo, &k1, &["--new-key", k2.to_str().unwrap()]);
    publish(&repo, &k2);

    let state = t.join("state");
    {
        let (_srv, port) = herd_serve(&repo);
        let o = write_slot(port, t, &baked, &state);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let s = state_json(&state);
    assert_eq!(s["highest_seq"], 2);
    let roots = s["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1, "{s}");
    assert!(
        roots[0]["signed"]
            .as_str()
            .unwrap()
            .contains("\"version\": 2"),
        "{s}"
    );

    // The leaked key 1 publishes sequences 2 and 3 where root/2.json is 404.
    publish(&old, &k1);
    assert!(publish(&old, &k1).contains("sequence 3"));
    let refused = "the repository offers key set (root) 1, but this node already trusts root 2: refusing a rollback of keys";
    {
        let (_srv, port) = herd_serve(&old);
        let o = write_slot(port, t, &baked, &state);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(refused), "{err}");
        // Without the kept root, the same repository is taken: that is the hole.
        let fresh = write_slot(port, t, &baked, &t.join("fresh-state"));
        assert!(
            fresh.status.success(),
            "{}",
            String::from_utf8_lossy(&fresh.stderr)
        );
        // Serving root/2.json (it is public) does not help the attacker.
        std::fs::copy(repo.join("root/2.json"), old.join("root/2.json")).unwrap();
        let o = write_slot(port, t, &baked, &state);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(refused), "{err}");
    }
    assert_eq!(state_json(&state)["highest_seq"], 2);

    // This host's clock is 40 days behind metadata the node verified (as a
    // node whose clock reset would be): the channel that expires in 30 days
    // by the clock is expired by the trusted time, and refused.
    let mut s = state_json(&state);
    let seen = s["trusted_time"].as_u64().unwrap();
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(seen + 60 > clock && seen <= clock, "{seen} vs {clock}");
    s["trusted_time"] = (clock + 40 * 86_400).into();
    std::fs::write(state.join("state.json"), s.to_string()).unwrap();
    let (_srv, port) = herd_serve(&repo);
    let o = write_slot(port, t, &baked, &state);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("channel metadata expired at")
            && err.contains(&format!("(now {})", clock + 40 * 86_400)),
        "{err}"
    );
}

/// `herd release halt` and `resume` (issue 18): a node that does not run
/// the release yet refuses it while the rollout is halted, and says why
/// (here `herd-update write-slot`, the host mode of the updater); after
/// `resume` it takes it.
#[test]
fn a_halted_rollout_is_not_installed_until_resumed() {
    let image = default_image();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (key, stranger) = (t.join("k.json"), t.join("stranger.json"));
    for k in [&key, &stranger] {
        herd_ok(&["key", "generate", "--out", k.to_str().unwrap()]);
    }
    let repo = t.join("repo");
    let release = |cmd: &str, key: &Path, more: &[&str]| {
        let mut c = Command::new(herd());
        c.args(["release", cmd, "--repo", repo.to_str().unwrap()])
            .args(["--key", key.to_str().unwrap()])
            .args(more);
        run(&mut c)
    };
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let refused = |o: std::process::Output, why: &str| {
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains(why), "{err}");
    };
    ok(release("init", &key, &[]));
    refused(release("halt", &key, &[]), "channel stable has no release");
    ok(release(
        "publish",
        &key,
        &[
            "--image-out",
            image.to_str().unwrap(),
            "--rollout",
            "0:50,3600:100",
        ],
    ));
    let version = "0.1.0";
    refused(release("resume", &key, &[]), "is not halted");
    refused(
        release("halt", &stranger, &["--reason", "x"]),
        "signed by unknown key",
    );
    let out = ok(release("halt", &key, &["--reason", "disks fill up"]));
    assert!(
        out.contains(&format!(
            "halted the rollout of herd {version} on channel stable (sequence 2"
        )),
        "{out}"
    );
    refused(
        release("halt", &key, &["--reason", "again"]),
        &format!("already halted (rollout of {version}: disks fill up)"),
    );

    let baked = t.join("update-root.json");
    std::fs::copy(repo.join("root/1.json"), &baked).unwrap();
    let state = t.join("state");
    let (_srv, port) = herd_serve(&repo);
    let o = write_slot(port, t, &baked, &state);
    refused(
        o,
        &format!("rollout of {version} halted by the publisher: disks fill up"),
    );
    assert_eq!(std::fs::metadata(t.join("usr")).unwrap().len(), 0);
    assert_eq!(state_json(&state)["highest_seq"], 2);

    let out = ok(release("resume", &key, &[]));
    assert!(
        out.contains(&format!(
            "resumed the rollout of herd {version} on channel stable (sequence 3"
        )) && out.contains("waves keep their schedule"),
        "{out}"
    );
    ok(write_slot(port, t, &baked, &state));
    assert_eq!(state_json(&state)["highest_seq"], 3);
    assert!(
        std::fs::read(t.join("usr")).unwrap() == std::fs::read(image.join("usr.img")).unwrap(),
        "the slot holds the published /usr after the resume"
    );
}
