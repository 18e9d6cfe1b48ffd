//! herd-verity against the referee, `veritysetup` (cryptsetup).

use std::process::Command;

use herd_verity::{build, verify, Params, Superblock};

fn data(blocks: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..blocks * 4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn params(seed: u8) -> Params {
    let mut uuid = [seed; 16];
    uuid[6] = 0x4f;
    uuid[8] = 0x8f;
    Params::new([seed.wrapping_add(7); 32], uuid)
}

fn uuid_str(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn veritysetup(args: &[&str]) -> (bool, String) {
    let out = Command::new("veritysetup")
        .args(args)
        .output()
        .expect("veritysetup not runnable: install cryptsetup-bin");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn check_against_veritysetup(blocks: usize) {
    let dir = tempfile::tempdir().unwrap();
    let d = data(blocks, blocks as u32);
    let p = params(blocks as u8);
    let t = build(&d, &p).unwrap();
    let dp = dir.path().join("data");
    let hp = dir.path().join("hash");
    let hp2 = dir.path().join("hash2");
    std::fs::write(&dp, &d).unwrap();
    std::fs::write(&hp, &t.hash_area).unwrap();
    let root = hex::encode(t.root_hash);
    let (dps, hps, hp2s) = (
        dp.to_str().unwrap(),
        hp.to_str().unwrap(),
        hp2.to_str().unwrap(),
    );

    let (ok, out) = veritysetup(&["verify", dps, hps, &root]);
    assert!(
        ok,
        "{blocks} blocks: veritysetup verify rejected our tree: {out}"
    );

    let salt = hex::encode(p.salt);
    let uuid = uuid_str(&p.uuid);
    let (ok, out) = veritysetup(&[
        "format",
        &format!("--salt={salt}"),
        &format!("--uuid={uuid}"),
        dps,
        hp2s,
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&root),
        "{blocks} blocks: veritysetup's root hash differs from {root}: {out}"
    );
    assert!(
        std::fs::read(&hp2).unwrap() == t.hash_area,
        "{blocks} blocks: hash areas differ"
    );

    let (ok, dump) = veritysetup(&["dump", hps]);
    assert!(ok, "{dump}");
    assert!(dump.contains(&salt) && dump.contains(&uuid), "{dump}");
    assert!(
        dump.contains(&format!("Data blocks:     \t{blocks}"))
            || dump.contains(&blocks.to_string()),
        "{dump}"
    );

    // One flipped byte: both referee and our verify refuse.
    let mut bad = d.clone();
    bad[d.len() / 2] ^= 1;
    std::fs::write(&dp, &bad).unwrap();
    let (ok, out) = veritysetup(&["verify", dps, hps, &root]);
    assert!(!ok, "veritysetup accepted corrupted data: {out}");
    let e = verify(&bad, &t.hash_area, &t.root_hash).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("data block {}", blocks / 2)),
        "{e}"
    );
    verify(&d, &t.hash_area, &t.root_hash).unwrap();
}

#[test]
fn one_block() {
    check_against_veritysetup(1);
}

#[test]
fn odd_sizes() {
    for n in [2, 127, 129, 1001] {
        check_against_veritysetup(n);
    }
}

#[test]
fn three_levels_64_mib() {
    // 129 * 128 + 5 blocks (~64 MiB) need three levels.
    check_against_veritysetup(129 * 128 + 5);
}

#[test]
fn superblock_roundtrip_and_errors() {
    let p = params(3);
    let sb = Superblock::new(&p, 42);
    assert_eq!(Superblock::parse(&sb.to_bytes()).unwrap(), sb);
    let mut b = sb.to_bytes();
    b[0] = b'x';
    assert!(Superblock::parse(&b)
        .unwrap_err()
        .to_string()
        .contains("signature"));
    assert!(build(&[0u8; 100], &p)
        .unwrap_err()
        .to_string()
        .contains("multiple"));
}
