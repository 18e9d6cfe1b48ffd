//! Delta updates (issue 17) on the host: two real releases of the default
//! image published with `herd release publish` (chunk indexes included),
//! served by `herd serve`, and `herd-update write-slot` assembling the new
//! slot from the old slot's chunks plus Range requests — then the attacks:
//! a tampered chunk on the server, a tampered index, an index from another
//! release.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use herd_release::ChunkIndex;
use herd_tests::*;

fn herd_ok(args: &[&str]) -> String {
    run_ok(Command::new(herd()).args(args))
}

/// The default image at `version`, built into `out`.
fn build_version(dir: &Path, version: &str, out: &Path) {
    let lock = workspace().join("buildroot/debian.lock");
    let t = std::fs::read_to_string(workspace().join("images/default.toml"))
        .unwrap()
        .replace("version = \"0.1.0\"", &format!("version = \"{version}\""))
        .replace(
            "lock = \"../buildroot/debian.lock\"",
            &format!("lock = {:?}", lock.to_str().unwrap()),
        );
    let toml = dir.join(format!("default-{version}.toml"));
    std::fs::write(&toml, t).unwrap();
    run_ok(herd_build(&toml, out, 1_700_000_000).arg("--quiet"));
}

/// The signed channel document's release.
fn release(repo: &Path) -> serde_json::Value {
    let env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("channels/stable.json")).unwrap()).unwrap();
    let signed: serde_json::Value = serde_json::from_str(env["signed"].as_str().unwrap()).unwrap();
    signed["release"].clone()
}

fn index_of(repo: &Path, rel: &serde_json::Value, role: &str) -> (PathBuf, ChunkIndex) {
    let sha = rel["payloads"][role]["chunks"]["sha256"].as_str().unwrap();
    let p = repo.join("payloads").join(sha);
    let idx = ChunkIndex::parse(&std::fs::read(&p).unwrap()).unwrap();
    (p, idx)
}

/// `write-slot` into fresh files under `dir/name`, with the old release's
/// files as the running slot.
fn write_slot(port: u16, repo: &Path, old: &Path, dir: &Path, name: &str) -> (Output, PathBuf) {
    let t = dir.join(name);
    std::fs::create_dir_all(&t).unwrap();
    let o = run(Command::new(bin_dir().join("herd-update"))
        .arg("write-slot")
        .args(["--repository", &format!("http://127.0.0.1:{port}")])
        .arg("--root")
        .arg(repo.join("root/1.json"))
        .arg("--usr")
        .arg(t.join("usr"))
        .arg("--verity")
        .arg(t.join("verity"))
        .arg("--state-dir")
        .arg(t.join("state"))
        .arg("--from-usr")
        .arg(old.join("usr.img"))
        .arg("--from-verity")
        .arg(old.join("usr.verity")));
    (o, t)
}

/// What write-slot said (its log on stdout, the error on stderr).
fn stderr(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The refusal is the named error, and nothing was recorded as written.
fn assert_refused(o: &Output, t: &Path, what: &str) {
    let err = stderr(o);
    assert!(!o.status.success() && err.contains(what), "{err}");
    assert!(!err.contains("wrote and verified"), "{err}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.join("state/state.json")).unwrap()).unwrap();
    assert!(state["pending"].is_null(), "{state}");
}

#[test]
fn delta_between_two_releases_and_its_attacks() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (v1, v2) = (d.join("v1"), d.join("v2"));
    build_version(d, "0.1.0", &v1);
    build_version(d, "0.2.0", &v2);
    let repo = d.join("repo");
    let key = d.join("k.json");
    herd_ok(&["key", "generate", "--out", key.to_str().unwrap()]);
    let r = repo.to_str().unwrap();
    herd_ok(&[
        "release",
        "init",
        "--repo",
        r,
        "--key",
        key.to_str().unwrap(),
    ]);
    let publish = |out: &Path| {
        herd_ok(&[
            "release",
            "publish",
            "--repo",
            r,
            "--key",
            key.to_str().unwrap(),
            "--image-out",
            out.to_str().unwrap(),
        ])
    };
    publish(&v1);
    let rel1 = release(&repo);
    let said = publish(&v2);
    let rel2 = release(&repo);
    let usr_size = rel2["payloads"]["usr.img"]["size"].as_u64().unwrap();
    let (index_path, idx2) = index_of(&repo, &rel2, "usr.img");
    let (old_index_path, idx1) = index_of(&repo, &rel1, "usr.img");
    // The index is small against its payload (target <= 1 %).
    let index_size = rel2["payloads"]["usr.img"]["chunks"]["size"]
        .as_u64()
        .unwrap();
    assert!(index_size * 100 <= usr_size, "{index_size} of {usr_size}");
    let (_srv, port) = herd_serve(&repo);

    // Only the version differs: nearly everything comes from the old slot.
    let (o, t) = write_slot(port, &repo, &v1, d, "ok");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("wrote and verified herd 0.2.0"), "{err}");
    assert!(
        err.contains("delta usr.img of 0.2.0:") && err.contains("bytes from the local slot"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(t.join("usr")).unwrap(),
        std::fs::read(v2.join("usr.img")).unwrap()
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.join("state/state.json")).unwrap()).unwrap();
    let (local, network) = (
        state["delta"]["local"].as_u64().unwrap(),
        state["delta"]["network"].as_u64().unwrap(),
    );
    assert!(local > usr_size * 9 / 10, "{state}");
    assert!(network * 20 < usr_size, "{state}");
    // What `herd release publish` said nodes on 0.1.0 would download for
    // usr.img and usr.verity (the payloads write-slot writes) bounds what
    // the delta path downloaded, and is close to it: the running slot is
    // exactly the previous payload and the target is empty. (Seen: 248
    // bytes less than said — the node finds a little more locally than
    // the old index lists, never less.)
    let expected = |role: &str| -> u64 {
        let line = said
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{role}: ")))
            .unwrap_or_else(|| panic!("no expected size for {role} in {said}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert!(
        said.contains("expected download for nodes on 0.1.0"),
        "{said}"
    );
    let said_bytes = expected("usr.img") + expected("usr.verity");
    assert!(
        network <= said_bytes && (said_bytes - network) * 100 <= said_bytes,
        "downloaded {network}, publish said {said_bytes}: {said}{state}"
    );

    // A chunk the node must fetch is tampered on the server.
    let have: std::collections::HashSet<_> = idx1.chunks.iter().map(|c| c.sha256).collect();
    let fetched = idx2
        .chunks
        .iter()
        .find(|c| !have.contains(&c.sha256))
        .expect("0.2.0 has a chunk 0.1.0 lacks");
    let payload = repo
        .join("payloads")
        .join(rel2["payloads"]["usr.img"]["sha256"].as_str().unwrap());
    let good = std::fs::read(&payload).unwrap();
    let mut bad = good.clone();
    bad[fetched.offset as usize + 3] ^= 0x10;
    std::fs::write(&payload, &bad).unwrap();
    let (o, t) = write_slot(port, &repo, &v1, d, "tampered-chunk");
    assert_refused(
        &o,
        &t,
        &format!(
            "bytes {}..{} have sha256",
            fetched.offset,
            fetched.offset + u64::from(fetched.len)
        ),
    );
    assert!(stderr(&o).contains("the signed chunk index says"));
    std::fs::write(&payload, &good).unwrap();

    // The index is tampered: one chunk's hash changed.
    let index = std::fs::read(&index_path).unwrap();
    let mut bad = index.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&index_path, &bad).unwrap();
    let (o, t) = write_slot(port, &repo, &v1, d, "tampered-index");
    assert_refused(&o, &t, "payload usr.img chunk index: sha256");
    assert!(stderr(&o).contains("is not the signed"));

    // The index of another release (0.1.0's) is served in its place.
    std::fs::copy(&old_index_path, &index_path).unwrap();
    let (o, t) = write_slot(port, &repo, &v1, d, "other-index");
    assert_refused(&o, &t, "payload usr.img chunk index: sha256");
    std::fs::write(&index_path, &index).unwrap();

    // The running slot's bytes are corrupted: the chunks that no longer
    // match are fetched, and the result still verifies.
    let old = d.join("v1-corrupt");
    std::fs::create_dir_all(&old).unwrap();
    let mut usr = std::fs::read(v1.join("usr.img")).unwrap();
    let mid = usr.len() / 2;
    usr[mid] ^= 0xff;
    std::fs::write(old.join("usr.img"), usr).unwrap();
    std::fs::copy(v1.join("usr.verity"), old.join("usr.verity")).unwrap();
    let (o, t) = write_slot(port, &repo, &old, d, "corrupt-source");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(t.join("usr")).unwrap(),
        std::fs::read(v2.join("usr.img")).unwrap()
    );
}
