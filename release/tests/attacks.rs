//! Every attack the metadata design must defeat, each refused with its own error.

use std::collections::BTreeMap;

use herd_release::*;

const NOW: u64 = 1_800_000_000;

fn root(version: u64, keys: &[&SigningKey], threshold: u32) -> Root {
    Root {
        kind: "root".into(),
        version,
        expires: NOW + 365 * 86400,
        threshold,
        keys: keys.iter().map(|k| (k.public().id(), k.public())).collect(),
        spec: herd_release::BASE_SPEC,
        signed_at: Some(NOW - 3600),
    }
}

fn payload(data: &[u8]) -> Payload {
    use sha2::Digest;
    Payload {
        sha256: hex::encode(sha2::Sha256::digest(data)),
        size: data.len() as u64,
        chunks: None,
    }
}

fn channel(version: &str, seq: u64, expires: u64) -> Channel {
    let mut payloads = BTreeMap::new();
    for role in ["usr.img", "usr.verity", "uki-a", "uki-b"] {
        payloads.insert(
            role.to_string(),
            payload(format!("{role} of {version}").as_bytes()),
        );
    }
    Channel {
        kind: "channel".into(),
        channel: "stable".into(),
        seq,
        expires,
        release: Release {
            image: "herd".into(),
            version: version.into(),
            usrhash: "ab".repeat(32),
            cmdline: vec!["console=ttyS0".into()],
            payloads,
            rollout: None,
            pcrs: BTreeMap::new(),
        },
        spec: herd_release::BASE_SPEC,
        signed_at: Some(NOW - 60),
        halted: None,
    }
}

fn state() -> NodeState {
    NodeState {
        highest_seq: 2,
        installed: "0.1.0".into(),
        bad: vec![],
    }
}

fn signed(c: &Channel, keys: &[&SigningKey]) -> Vec<u8> {
    Envelope::sign(c, keys).to_bytes()
}

#[test]
fn good_metadata_is_taken() {
    let k = SigningKey::generate().unwrap();
    let r = root(1, &[&k], 1);
    let (c, take) = verify_channel(
        &r,
        &signed(&channel("0.2.0", 3, NOW + 60), &[&k]),
        "stable",
        &state(),
        "node",
        NOW,
    )
    .unwrap();
    assert!(take);
    assert_eq!(c.release.version, "0.2.0");
    // The same version as installed: nothing to do, not an error.
    let mut s = state();
    s.installed = "0.2.0".into();
    let (_, take) = verify_channel(
        &r,
        &signed(&channel("0.2.0", 3, NOW + 60), &[&k]),
        "stable",
        &s,
        "node",
        NOW,
    )
    .unwrap();
    assert!(!take);
}

#[test]
fn tampered_metadata_is_refused() {
    let k = SigningKey::generate().unwrap();
    let r = root(1, &[&k], 1);
    let mut env = Envelope::parse(&signed(&channel("0.2.0", 3, NOW + 60), &[&k]), "x").unwrap();
    env.signed = env.signed.replace("0.2.0", "9.9.9");
    let e = verify_channel(&r, &env.to_bytes(), "stable", &state(), "n", NOW).unwrap_err();
    assert!(matches!(e, Error::Signatures { valid: 0, .. }), "{e}");
}

#[test]
fn unknown_key_is_refused_and_named() {
    let k = SigningKey::generate().unwrap();
    let evil = SigningKey::generate().unwrap();
    let r = root(1, &[&k], 1);
    let e = verify_channel(
        &r,
        &signed(&channel("0.2.0", 3, NOW + 60), &[&evil]),
        "stable",
        &state(),
        "n",
        NOW,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown key"), "{e}");
    // A valid signature moved under a trusted key's id does not count either.
    let mut env = Envelope::parse(&signed(&channel("0.2.0", 3, NOW + 60), &[&evil]), "x").unwrap();
    env.signatures[0].keyid = k.public().id();
    assert!(verify_channel(&r, &env.to_bytes(), "stable", &state(), "n", NOW).is_err());
}

#[test]
fn threshold_counts_distinct_keys() {
    let (a, b) = (
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
    );
    let r = root(1, &[&a, &b], 2);
    let ch = channel("0.2.0", 3, NOW + 60);
    assert!(verify_channel(&r, &signed(&ch, &[&a, &a]), "stable", &state(), "n", NOW).is_err());
    assert!(verify_channel(&r, &signed(&ch, &[&a, &b]), "stable", &state(), "n", NOW).is_ok());
}

#[test]
fn expired_metadata_is_refused() {
    let k = SigningKey::generate().unwrap();
    let e = verify_channel(
        &root(1, &[&k], 1),
        &signed(&channel("0.2.0", 3, NOW - 1), &[&k]),
        "stable",
        &state(),
        "n",
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Expired { .. }), "{e}");
}

#[test]
fn rollback_and_downgrade_and_known_bad_are_refused() {
    let k = SigningKey::generate().unwrap();
    let r = root(1, &[&k], 1);
    let e = verify_channel(
        &r,
        &signed(&channel("0.2.0", 1, NOW + 60), &[&k]),
        "stable",
        &state(),
        "n",
        NOW,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Rollback {
                got: 1,
                seen: 2,
                ..
            }
        ),
        "{e}"
    );
    let mut s = state();
    s.installed = "0.10.0".into();
    let e = verify_channel(
        &r,
        &signed(&channel("0.9.0", 3, NOW + 60), &[&k]),
        "stable",
        &s,
        "n",
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Downgrade { .. }), "{e}");
    let mut s = state();
    s.bad.push("0.2.0".into());
    let e = verify_channel(
        &r,
        &signed(&channel("0.2.0", 3, NOW + 60), &[&k]),
        "stable",
        &s,
        "n",
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, Error::KnownBad(_)), "{e}");
}

#[test]
fn oversized_and_wrong_channel_metadata_are_refused() {
    let k = SigningKey::generate().unwrap();
    let r = root(1, &[&k], 1);
    let huge = vec![b' '; (MAX_METADATA_BYTES + 1) as usize];
    assert!(matches!(
        verify_channel(&r, &huge, "stable", &state(), "n", NOW),
        Err(Error::TooLarge { .. })
    ));
    let e = verify_channel(
        &r,
        &signed(&channel("0.2.0", 3, NOW + 60), &[&k]),
        "beta",
        &state(),
        "n",
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Mismatch(_)), "{e}");
}

#[test]
fn payloads_tampered_mixed_or_endless_are_refused() {
    let ch = channel("0.2.0", 3, NOW + 60);
    let p = &ch.release.payloads["usr.img"];
    let mut ok = PayloadCheck::new("usr.img", p);
    ok.update(b"usr.img of 0.2.0").unwrap();
    ok.finish().unwrap();
    let mut bad = PayloadCheck::new("usr.img", p);
    bad.update(b"usr.img of 0.2.1").unwrap();
    assert!(matches!(bad.finish(), Err(Error::PayloadHash { .. })));
    // A payload from another release (same size): refused by hash.
    let other = channel("0.3.0", 4, NOW + 60);
    let mut mixed = PayloadCheck::new("usr.img", p);
    mixed.update(b"usr.img of 0.3.0").unwrap();
    assert_eq!(other.release.payloads["usr.img"].size, p.size);
    assert!(matches!(mixed.finish(), Err(Error::PayloadHash { .. })));
    let mut endless = PayloadCheck::new("usr.img", p);
    let e = endless.update(&vec![0u8; p.size as usize + 1]).unwrap_err();
    assert!(matches!(e, Error::PayloadSize { .. }), "{e}");
}

#[test]
fn keys_rotate_through_the_root_chain() {
    let (old, new) = (
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
    );
    let r1 = root(1, &[&old], 1);
    let r2 = root(2, &[&new], 1);
    let good = Envelope::sign(&r2, &[&old, &new]).to_bytes();
    let current = verify_root_chain(&r1, std::slice::from_ref(&good), NOW).unwrap();
    assert_eq!(current.version, 2);
    // After rotation the old key alone no longer signs channels.
    assert!(verify_channel(
        &current,
        &signed(&channel("0.2.0", 3, NOW + 60), &[&old]),
        "stable",
        &state(),
        "n",
        NOW
    )
    .is_err());
    assert!(verify_channel(
        &current,
        &signed(&channel("0.2.0", 3, NOW + 60), &[&new]),
        "stable",
        &state(),
        "n",
        NOW
    )
    .is_ok());
    // A new root signed only by the new key (not the old set) is refused.
    let e = verify_root_chain(&r1, &[Envelope::sign(&r2, &[&new]).to_bytes()], NOW).unwrap_err();
    assert!(e.to_string().contains("previous key set"), "{e}");
    // Skipping a version is refused.
    let r3 = root(3, &[&new], 1);
    assert!(verify_root_chain(&r1, &[Envelope::sign(&r3, &[&old, &new]).to_bytes()], NOW).is_err());
    // An expired newest root is refused.
    let mut r2x = r2.clone();
    r2x.expires = NOW - 1;
    assert!(matches!(
        verify_root_chain(&r1, &[Envelope::sign(&r2x, &[&old, &new]).to_bytes()], NOW),
        Err(Error::Expired { .. })
    ));
}

/// A repository as a node sees it: root files by version.
fn serving<'a>(roots: &'a [&'a Vec<u8>]) -> impl FnMut(u64) -> Result<Option<Vec<u8>>, Error> + 'a {
    move |n| Ok(roots.get(n as usize - 1).map(|b| b.to_vec()))
}

#[test]
fn a_repository_cannot_undo_a_key_rotation() {
    let (old, new) = (
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
    );
    let r1 = root(1, &[&old], 1);
    let f1 = Envelope::sign(&r1, &[&old]).to_bytes();
    let r2 = root(2, &[&new], 1);
    let f2 = Envelope::sign(&r2, &[&old, &new]).to_bytes();
    // The node starting from root 1 follows the rotation and keeps root 2's file.
    let (current, newer) = update_root(&r1, NOW, &mut serving(&[&f1, &f2])).unwrap();
    assert_eq!((current.version, newer), (2, vec![f2.clone()]));
    // From root 2, the same repository is fine (nothing newer).
    let (current, newer) = update_root(&r2, NOW, &mut serving(&[&f1, &f2])).unwrap();
    assert_eq!((current.version, newer.len()), (2, 0));

    let from_2_to_1 = |e: &Error| {
        matches!(
            e,
            Error::KeyRollback {
                trusted: 2,
                served: 1
            }
        )
    };
    // The attacker answers 404 for root/2.json: refused, naming both versions.
    let e = update_root(&r2, NOW, &mut serving(&[&f1])).unwrap_err();
    assert!(from_2_to_1(&e), "{e}");
    assert!(
        e.to_string().contains("offers key set (root) 1")
            && e.to_string().contains("already trusts root 2"),
        "{e}"
    );
    // ... or keeps root/2.json but signs the channel (higher seq) with the old key.
    let leaked = signed(&channel("0.9.0", 99, NOW + 60), &[&old]);
    let e = check_channel_keys(&r2, &leaked, &mut serving(&[&f1, &f2])).unwrap_err();
    assert!(from_2_to_1(&e), "{e}");
    // The current key passes; a stranger's key stays a plain signature error.
    let good = signed(&channel("0.9.0", 99, NOW + 60), &[&new]);
    check_channel_keys(&r2, &good, &mut serving(&[&f1, &f2])).unwrap();
    let stranger = SigningKey::generate().unwrap();
    let e = check_channel_keys(
        &r2,
        &signed(&channel("0.9.0", 99, NOW + 60), &[&stranger]),
        &mut serving(&[&f1, &f2]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Signatures { .. }), "{e}");
    // A different root 2 (signed by the leaked key and a key of the attacker's) is a fork.
    let mut forged = root(2, &[&stranger], 1);
    forged.signed_at = Some(NOW);
    let f2x = Envelope::sign(&forged, &[&old, &stranger]).to_bytes();
    let e = update_root(&r2, NOW, &mut serving(&[&f1, &f2x])).unwrap_err();
    assert!(e.to_string().contains("forked or altered"), "{e}");
}

#[test]
fn rollout_waves_pick_stable_shares() {
    let r = Rollout {
        start: NOW,
        waves: vec![
            Wave {
                after_secs: 0,
                percent: 10,
            },
            Wave {
                after_secs: 3600,
                percent: 100,
            },
        ],
    };
    let early = (0..2000)
        .filter(|i| in_wave(&r, &format!("node-{i}"), "0.2.0", NOW + 10))
        .count();
    assert!((100..300).contains(&early), "10% wave took {early} of 2000");
    assert_eq!(
        (0..200)
            .filter(|i| in_wave(&r, &format!("node-{i}"), "0.2.0", NOW + 3600))
            .count(),
        200
    );
    assert!(!in_wave(&r, "node-1", "0.2.0", NOW - 1));
    // Stable: the same node decides the same way every time.
    assert_eq!(
        in_wave(&r, "n7", "0.2.0", NOW + 5),
        in_wave(&r, "n7", "0.2.0", NOW + 5)
    );
}

#[test]
fn key_files_are_private_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.json");
    let k = SigningKey::generate().unwrap();
    k.save(&p).unwrap();
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(SigningKey::load(&p).unwrap().public(), k.public());
    let e = SigningKey::generate().unwrap().save(&p).unwrap_err();
    assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    assert_eq!(SigningKey::load(&p).unwrap().public(), k.public());
}

/// Signs `c` after `edit` changed its JSON text (fields this herd's types
/// cannot express: a newer publisher's).
fn signed_edited(c: &Channel, k: &SigningKey, edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let mut v = serde_json::to_value(c).unwrap();
    edit(&mut v);
    Envelope::sign(&v, &[k]).to_bytes()
}

#[test]
fn fields_from_a_newer_publisher_are_passed_over_but_a_newer_spec_is_refused() {
    let k = SigningKey::generate().unwrap();
    let r = root(1, &[&k], 1);
    let c = channel("0.2.0", 3, NOW + 60);
    // A field this node does not know, in the channel and in a payload:
    // signed, so it came from the keys; taken.
    let newer = signed_edited(&c, &k, |v| {
        v["mirrors"] = serde_json::json!(["http://mirror.example"]);
        v["release"]["payloads"]["usr.img"]["index"] = serde_json::json!({"sha256": "00"});
    });
    let (got, take) = verify_channel(&r, &newer, "stable", &state(), "n", NOW).unwrap();
    assert!(take);
    assert_eq!(
        got.release.payloads["usr.img"],
        c.release.payloads["usr.img"]
    );
    // A document for a spec this node does not implement: refused, named.
    let spec2 = signed_edited(&c, &k, |v| v["spec"] = serde_json::json!(SPEC + 1));
    let e = verify_channel(&r, &spec2, "stable", &state(), "n", NOW).unwrap_err();
    assert!(
        matches!(e, Error::NewerSpec { what: "channel metadata", spec, known } if spec == SPEC + 1 && known == SPEC),
        "{e}"
    );
    assert!(e.to_string().contains("update this node first"), "{e}");
    // The same for a new root in the chain.
    let mut r2 = root(2, &[&k], 1);
    r2.spec = SPEC + 1;
    let e = verify_root_chain(&r, &[Envelope::sign(&r2, &[&k]).to_bytes()], NOW).unwrap_err();
    assert!(matches!(e, Error::NewerSpec { what: "root", .. }), "{e}");
    // spec 1 is not written, so nodes from before `spec` read today's documents.
    assert!(!String::from_utf8(signed(&c, &[&k]))
        .unwrap()
        .contains("\"spec\""));
    // A spec that is not a number is malformed, not ignored.
    let odd = signed_edited(&c, &k, |v| v["spec"] = serde_json::json!("1"));
    let e = verify_channel(&r, &odd, "stable", &state(), "n", NOW).unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e}");
}

/// `herd release halt`: the halt is inside the signed text. Whoever serves
/// the repository can neither strip it from a halted document nor bring
/// back the un-halted document it replaced.
#[test]
fn a_halt_can_be_neither_stripped_nor_undone_by_a_replay() {
    let k = SigningKey::generate().unwrap();
    let r = root(1, &[&k], 1);
    let before = channel("0.2.0", 3, NOW + 60);
    let mut halted = channel("0.2.0", 4, NOW + 60);
    halted.halted = Some(Halt {
        reason: "0.2.0 corrupts disks".into(),
        at: NOW - 10,
    });
    halted.spec = halted.needed_spec();
    let halted_bytes = signed(&halted, &[&k]);
    let (c, take) = verify_channel(&r, &halted_bytes, "stable", &state(), "n", NOW).unwrap();
    assert!(!take, "a halted release is not taken");
    assert_eq!(c.halted.unwrap().reason, "0.2.0 corrupts disks");

    // The halt field stripped, the publisher's signature kept: refused.
    let mut env = Envelope::parse(&halted_bytes, "t").unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&env.signed).unwrap();
    v.as_object_mut().unwrap().remove("halted");
    v.as_object_mut().unwrap().remove("spec");
    env.signed = serde_json::to_string_pretty(&v).unwrap();
    assert!(!env.signed.contains("halted"));
    let e = verify_channel(&r, &env.to_bytes(), "stable", &state(), "n", NOW).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Signatures {
                valid: 0,
                threshold: 1,
                ..
            }
        ),
        "{e}"
    );

    // The older un-halted document, replayed to a node that saw the halt
    // (its highest sequence is the halted document's): a rollback.
    let seen = NodeState {
        highest_seq: 4,
        ..state()
    };
    let e = verify_channel(&r, &signed(&before, &[&k]), "stable", &seen, "n", NOW).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Rollback {
                got: 3,
                seen: 4,
                ..
            }
        ),
        "{e}"
    );

    // A node of metadata spec 1 would pass over the field and install:
    // the halted document carries a spec above 1, so such nodes refuse it.
    assert!(halted.spec > 1 && BASE_SPEC == 1);
    assert!(Envelope::parse(&halted_bytes, "t")
        .unwrap()
        .signed
        .contains(&format!("\"spec\": {SPEC_HALT}")));
}
