//! The compressed-block cache: same image bytes with and without it, hits
//! on a rebuild, and entries that lie are caught and replaced.

use std::collections::HashMap;
use std::sync::Mutex;

use herd_fstree::Tree;
use herd_squashfs::{write, write_cached, BlockCache, Options};

#[derive(Default)]
struct Memory(Mutex<HashMap<[u8; 32], Vec<u8>>>);

impl BlockCache for Memory {
    fn get(&self, key: &[u8; 32]) -> Option<Vec<u8>> {
        self.0.lock().unwrap().get(key).cloned()
    }
    fn put(&self, key: &[u8; 32], entry: &[u8]) {
        self.0.lock().unwrap().insert(*key, entry.to_vec());
    }
}

fn tree(seed: u8) -> Tree {
    let mut t = Tree::new();
    let text: Vec<u8> = (0..600_000u32)
        .map(|i| b"herd squashfs cache "[(i % 20) as usize] ^ ((i / 7919) as u8 & 3))
        .collect();
    t.insert_file("text", text, 0o644).unwrap();
    // Incompressible: stored raw, and cached as such.
    let mut x = 0x2545_f491u32;
    let noise: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    t.insert_file("noise", noise, 0o644).unwrap();
    t.insert_file("changes", vec![seed; 200_000], 0o644)
        .unwrap();
    t.insert_file("tail", b"a small file\n".to_vec(), 0o644)
        .unwrap();
    t
}

fn image(t: &Tree, cache: Option<&dyn BlockCache>) -> (Vec<u8>, herd_squashfs::Summary) {
    let mut out = Vec::new();
    let s = write_cached(t, &Options::default(), cache, &mut out).unwrap();
    (out, s)
}

#[test]
fn cached_images_are_the_same_bytes() {
    let cache = Memory::default();
    let t = tree(1);
    let mut plain = Vec::new();
    write(&t, &Options::default(), &mut plain).unwrap();

    let (cold, s) = image(&t, Some(&cache));
    assert_eq!(cold, plain);
    assert_eq!(s.cache_hits, 0);
    assert!(s.cache_misses >= 9, "{s:?}");
    let blocks = s.cache_misses;

    let (warm, s) = image(&t, Some(&cache));
    assert_eq!(warm, plain);
    assert_eq!((s.cache_hits, s.cache_misses), (blocks, 0), "{s:?}");

    // One file changed: only its blocks (and the fragment) are compressed.
    let t2 = tree(2);
    let mut plain2 = Vec::new();
    write(&t2, &Options::default(), &mut plain2).unwrap();
    let (changed, s) = image(&t2, Some(&cache));
    assert_eq!(changed, plain2);
    assert!(s.cache_misses >= 1 && s.cache_misses <= 3, "{s:?}");
    assert_eq!(s.cache_hits + s.cache_misses, blocks);
}

#[test]
fn lying_entries_are_rejected_and_replaced() {
    let cache = Memory::default();
    let t = tree(1);
    let (good, _) = image(&t, Some(&cache));
    // Swap every compressed entry's payload for another's and flip a byte in
    // the rest: a planted or corrupted cache.
    {
        let mut m = cache.0.lock().unwrap();
        let mut keys: Vec<[u8; 32]> = m.keys().copied().collect();
        keys.sort();
        // The payload swapped in is a compressed one: a planted raw entry is
        // the one gap the cache cannot check (see the cache module's doc).
        let first = m
            .values()
            .filter(|e| e.first() == Some(&b'z'))
            .min()
            .unwrap()
            .clone();
        for (i, k) in keys.iter().enumerate() {
            let e = m.get_mut(k).unwrap();
            if i % 2 == 0 {
                *e = first.clone();
            } else if let Some(b) = e.last_mut() {
                *b ^= 0x5a;
            }
        }
    }
    let (again, s) = image(&t, Some(&cache));
    assert_eq!(again, good, "a bad cache never changes the image");
    assert!(s.cache_rejected >= 1, "{s:?}");
    // The bad entries were overwritten: the next write hits everywhere.
    let (third, s) = image(&t, Some(&cache));
    assert_eq!(third, good);
    assert_eq!(s.cache_misses, 0, "{s:?}");
}
