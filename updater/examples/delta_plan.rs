//! What a delta from OLD to NEW fetches (bench/delta.sh): NEW is chunked
//! as `herd release publish` does, OLD as a node chunks its running copy;
//! prints "FETCH INDEX SIZE": bytes of NEW's chunks not found in OLD, the
//! index's size, NEW's size.

fn main() -> std::io::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let (old, new) = match &a[..] {
        [_, old, new, ..] => (old, new),
        _ => {
            eprintln!("usage: delta_plan OLD NEW [MIN AVG MAX]");
            std::process::exit(2);
        }
    };
    let mut new = herd_release::ChunkIndex::of_reader(std::fs::File::open(new)?)?;
    if let [_, _, path, min, avg, max] = &a[..] {
        let n = |s: &str| s.parse::<u32>().expect("sizes are numbers");
        let (min, avg, max) = (n(min), n(avg), n(max));
        let chunks = herd_release::chunk_reader(std::fs::File::open(path)?, min, avg, max)?;
        new = herd_release::ChunkIndex {
            min,
            avg,
            max,
            size: new.size,
            chunks,
        };
    }
    let old = herd_release::chunk_reader(std::fs::File::open(old)?, new.min, new.avg, new.max)?;
    let have: std::collections::HashSet<_> = old.iter().map(|c| c.sha256).collect();
    let fetch: u64 = new
        .chunks
        .iter()
        .filter(|c| !have.contains(&c.sha256))
        .map(|c| u64::from(c.len))
        .sum();
    println!("{fetch} {} {}", new.to_bytes().len(), new.size);
    Ok(())
}
