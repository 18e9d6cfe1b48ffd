//! Makes a release repository for `bench/update.sh`: a `/usr` payload of
//! SIZE MiB (incompressible bytes), its real dm-verity tree, a signed
//! channel `stable`. Usage: bench_repo DIR SIZE_MIB
//! Prints the usr.img payload's sha256 (for the curl baseline's URL).

use std::collections::BTreeMap;
use std::path::Path;

use herd_contract::payload;
use herd_release::{Release, Repo, SigningKey};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, mib) = match args.as_slice() {
        [_, d, m] => (
            Path::new(d),
            m.parse::<usize>().expect("SIZE_MIB: a number"),
        ),
        _ => {
            eprintln!("usage: bench_repo DIR SIZE_MIB");
            std::process::exit(2);
        }
    };
    std::fs::create_dir_all(dir).unwrap();
    // xorshift: fast, incompressible enough, and the same every run.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = vec![0u8; mib << 20];
    for w in data.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    let tree = herd_verity::build(&data, &herd_verity::Params::new([7; 32], [9; 16])).unwrap();
    let files = [
        (payload::USR_IMG, data.as_slice()),
        (payload::USR_VERITY, tree.hash_area.as_slice()),
        (payload::UKI_A, b"uki of slot a".as_slice()),
        (payload::UKI_B, b"uki of slot b".as_slice()),
    ];
    let key = SigningKey::generate().unwrap();
    let repo = Repo::at(&dir.join("repo"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    repo.init(&[&key], 1, now, now + 86_400).unwrap();
    let mut payloads = BTreeMap::new();
    for (role, bytes) in files {
        let f = dir.join(role);
        std::fs::write(&f, bytes).unwrap();
        payloads.insert(role.to_string(), repo.add_payload(&f).unwrap());
        std::fs::remove_file(&f).unwrap();
    }
    let sha = payloads[payload::USR_IMG].sha256.clone();
    let rel = Release {
        image: "bench".into(),
        version: "1.0.0".into(),
        usrhash: hex::encode(tree.root_hash),
        cmdline: vec![],
        payloads,
        rollout: None,
        pcrs: BTreeMap::new(),
    };
    repo.publish("stable", rel, &[&key], now, now + 86_400)
        .unwrap();
    println!("{sha}");
}
