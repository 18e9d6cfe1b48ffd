//! Delta updates (issue 17): a payload with a chunk index in the signed
//! metadata is assembled from chunks this node already has (in the running
//! slot, or already in place in the partly written target after a power
//! cut) plus the missing byte ranges of the static payload file, fetched
//! with HTTP Range requests.
//!
//! Nothing local is trusted: every chunk copied or fetched is hashed
//! against the index before it is written, and the caller verifies the
//! whole result exactly as after a full download (payload sha256, verity
//! tree against the signed `usrhash`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;

use herd_release::{Chunk, ChunkIndex, IndexRef, Payload, PayloadCheck};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::http::{Client, MultiRanged, Ranged};
use crate::{io, Error};

pub use herd_release::MIN_REUSE_PERCENT;

/// Fetched ranges are split at about this size (whole chunks), bounding the
/// memory one request needs; several ranges asked in one request add up
/// to at most this too.
const MAX_RANGE: u64 = 8 << 20;

/// Ranges asked for in one request at most.
const MAX_RANGES_PER_REQUEST: usize = 32;

/// Where a delta's bytes came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaStats {
    /// The release.
    pub version: String,
    /// Bytes already in place in the target (a resumed delta).
    pub in_place: u64,
    /// Bytes copied from the running slot.
    pub local: u64,
    /// Bytes fetched from the repository (chunks plus the index).
    pub network: u64,
    /// Local chunks whose bytes did not match the index when copied, and
    /// were fetched instead.
    pub refetched: u64,
    /// Bytes of the payloads assembled.
    pub total: u64,
    /// HTTP Range requests made for the missing bytes (several ranges go
    /// in one request where the server answers `multipart/byteranges`).
    #[serde(default)]
    pub requests: u64,
}

impl DeltaStats {
    /// Adds another payload's figures.
    pub fn add(&mut self, o: &DeltaStats) {
        self.in_place += o.in_place;
        self.local += o.local;
        self.network += o.network;
        self.refetched += o.refetched;
        self.total += o.total;
        self.requests += o.requests;
    }

    /// One line for the log and `herd-update status`.
    pub fn line(&self) -> String {
        format!(
            "{}: {} bytes from the local slot, {} already in place, {} from the network ({:.1} % of {} bytes, {} Range request(s)){}",
            self.version,
            self.local,
            self.in_place,
            self.network,
            self.network as f64 * 100.0 / self.total.max(1) as f64,
            self.total,
            self.requests,
            if self.refetched > 0 {
                format!(", {} local chunk(s) did not match and were fetched", self.refetched)
            } else {
                String::new()
            }
        )
    }
}

/// Where copied chunks are read from: a slot partition, or bytes in memory.
pub trait ReadAt {
    /// Fills `b` from byte `offset`.
    fn read_at(&self, b: &mut [u8], offset: u64) -> std::io::Result<()>;

    /// True when these are the very bytes the scan hashed and they cannot
    /// have changed since (see [`Scanned`]): a copy need not be hashed again.
    fn hashed(&self) -> bool {
        false
    }
}

/// What a scan found: chunk sha256 → its offset in the source.
pub type Found = HashMap<[u8; 32], u64>;

/// A source read into memory once and chunked there (see
/// [`scan_in_memory`]): a copy from it is neither read from the disk again
/// nor hashed again, since the scan found each chunk by the sha256 of
/// exactly these bytes.
pub struct Scanned(Vec<u8>);

impl ReadAt for Scanned {
    fn read_at(&self, b: &mut [u8], offset: u64) -> std::io::Result<()> {
        (&self.0[..]).read_at(b, offset)
    }

    fn hashed(&self) -> bool {
        true
    }
}

/// A source is read into memory when what is chunked of it is at most this
/// large (a node's `/usr` slot; larger ones are read twice instead).
pub const IN_MEMORY_SOURCE: u64 = 64 << 20;

/// Reads the first `limit` bytes of `src` into memory and chunks them the
/// way `idx` was made, when they are at most [`IN_MEMORY_SOURCE`] bytes;
/// `Ok(None)` when larger (use [`scan_source`]).
pub fn scan_in_memory(
    src: &File,
    limit: u64,
    idx: &ChunkIndex,
) -> std::io::Result<Option<(Scanned, Found)>> {
    use std::io::{Seek, SeekFrom};
    // A block device's metadata says 0 bytes: ask for its end instead.
    let len = (&*src).seek(SeekFrom::End(0))?.min(limit);
    if len > IN_MEMORY_SOURCE {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    src.read_exact_at(&mut buf, 0)?;
    let found = scan_slice(&buf, idx);
    Ok(Some((Scanned(buf), found)))
}

/// Chunks `b` the way `idx` was made (the cut points of [`scan`], found in
/// place without copying) and hashes the chunks on two threads: the scan
/// is the one pass a delta makes before its first byte can be placed.
fn scan_slice(b: &[u8], idx: &ChunkIndex) -> Found {
    let cuts: Vec<(u64, usize)> = fastcdc::v2020::FastCDC::new(b, idx.min, idx.avg, idx.max)
        .map(|c| (c.offset as u64, c.length))
        .collect();
    let hash = |part: &[(u64, usize)]| -> Vec<([u8; 32], u64)> {
        part.iter()
            .map(|&(off, len)| (sha(&b[off as usize..off as usize + len]), off))
            .collect()
    };
    let (first, second) = cuts.split_at(cuts.len() / 2);
    let (a, z) = std::thread::scope(|sc| {
        let other = sc.spawn(|| hash(second));
        (
            hash(first),
            other.join().expect("the hash thread does not panic"),
        )
    });
    // Later duplicates win, as when collecting the chunks in order.
    a.into_iter().chain(z).collect()
}

impl ReadAt for File {
    fn read_at(&self, b: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_exact_at(b, offset)
    }
}

impl ReadAt for &[u8] {
    fn read_at(&self, b: &mut [u8], offset: u64) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(b.len())?))
            .ok_or_else(|| std::io::Error::other("past the end of the source"))?;
        b.copy_from_slice(src);
        Ok(())
    }
}

/// Assembles payload `p` in memory from `source` (the running slot's copy
/// of the same role, e.g. its UKI) and Range requests; the result's sha256
/// is checked against the signed one. `Ok(None)`: no delta (no index, no
/// Range, too little found); the caller downloads in full.
pub fn assemble(
    client: &Client,
    base: &str,
    role: &str,
    p: &Payload,
    source: &[u8],
) -> Result<Option<(Vec<u8>, DeltaStats)>, Error> {
    let Some(r) = p.chunks.as_ref() else {
        return Ok(None);
    };
    let Some(idx) = fetch_index(client, base, role, p, r)? else {
        return Ok(None);
    };
    let found = scan(source, &idx).map_err(io(format!("chunking the running {role}")))?;
    let plan = plan(&idx, &[], &found);
    if !herd_release::delta_worth(plan.reuse_bytes(&idx), p.size) {
        return Ok(None);
    }
    let url = format!("{base}/payloads/{}", p.sha256);
    /// The payload in memory, checked as it grows.
    struct Out(Vec<u8>, PayloadCheck);
    impl Sink for Out {
        fn put(&mut self, _offset: u64, b: &[u8], _write: bool) -> Result<(), Error> {
            self.1.update(b)?;
            self.0.extend_from_slice(b);
            Ok(())
        }
    }
    let mut out = Out(
        Vec::with_capacity(p.size as usize),
        PayloadCheck::new(role, p),
    );
    let Some(mut st) = execute(client, &url, &idx, &plan, Some(&source), None, &mut out)? else {
        return Ok(None);
    };
    st.network += r.size;
    out.1.finish()?;
    Ok(Some((out.0, st)))
}

/// What to do for one chunk of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The target already holds it at its place.
    InPlace,
    /// Copy it from this offset of the source.
    Copy(u64),
    /// Fetch it from the server.
    Fetch,
}

/// The steps, one per chunk of the index.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One per chunk, in index order.
    pub steps: Vec<Step>,
}

impl Plan {
    fn bytes(&self, idx: &ChunkIndex, f: impl Fn(&Step) -> bool) -> u64 {
        idx.chunks
            .iter()
            .zip(&self.steps)
            .filter(|(_, s)| f(s))
            .map(|(c, _)| u64::from(c.len))
            .sum()
    }

    /// Bytes the plan fetches.
    pub fn fetch_bytes(&self, idx: &ChunkIndex) -> u64 {
        self.bytes(idx, |s| *s == Step::Fetch)
    }

    /// Bytes found on this node (in place or in the source).
    pub fn reuse_bytes(&self, idx: &ChunkIndex) -> u64 {
        self.bytes(idx, |s| *s != Step::Fetch)
    }
}

/// Chunks `src` (its first `limit` bytes) the way `idx` was made: sha256 →
/// offset in `src`.
pub fn scan_source(
    src: &File,
    limit: u64,
    idx: &ChunkIndex,
) -> std::io::Result<HashMap<[u8; 32], u64>> {
    scan(BufReader::with_capacity(1 << 20, src.take(limit)), idx)
}

/// Chunks `r` the way `idx` was made: sha256 → offset in `r`.
fn scan(r: impl Read, idx: &ChunkIndex) -> std::io::Result<HashMap<[u8; 32], u64>> {
    let chunks = herd_release::chunk_reader(r, idx.min, idx.avg, idx.max)?;
    Ok(chunks.into_iter().map(|c| (c.sha256, c.offset)).collect())
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Which chunks `target` already holds at their place.
pub fn scan_in_place(target: &File, idx: &ChunkIndex) -> std::io::Result<Vec<bool>> {
    use std::io::{Seek, SeekFrom};
    // A block device's metadata says 0 bytes (a node's slot partition):
    // ask for its end instead, or nothing is ever found in place there.
    let len = (&*target).seek(SeekFrom::End(0))?;
    let mut buf = vec![0u8; idx.max as usize];
    let mut out = Vec::with_capacity(idx.chunks.len());
    for c in &idx.chunks {
        let ok = c.end() <= len && {
            let b = &mut buf[..c.len as usize];
            target.read_exact_at(b, c.offset)?;
            sha(b) == c.sha256
        };
        out.push(ok);
    }
    Ok(out)
}

/// The plan: in place first, then the source, else fetch.
pub fn plan(idx: &ChunkIndex, in_place: &[bool], source: &HashMap<[u8; 32], u64>) -> Plan {
    let steps = idx
        .chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if in_place.get(i).copied().unwrap_or(false) {
                Step::InPlace
            } else if let Some(&off) = source.get(&c.sha256) {
                Step::Copy(off)
            } else {
                Step::Fetch
            }
        })
        .collect();
    Plan { steps }
}

/// Runs of chunks to fetch: adjacent chunks coalesced into one range, split
/// near [`MAX_RANGE`].
pub fn ranges(chunks: &[Chunk], fetch: &[bool]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        if !fetch[i] {
            continue;
        }
        match out.last_mut() {
            Some(r)
                if r.end == i
                    && c.end() - chunks[r.start].offset <= MAX_RANGE.max(c.len.into()) =>
            {
                r.end = i + 1
            }
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// Where [`execute`] puts the payload: every chunk once, in payload order.
pub trait Sink {
    /// Bytes `b` of the payload from byte `offset`. `write` is false for a
    /// chunk already in place in the target: it is only seen (hashed), not
    /// written again.
    fn put(&mut self, offset: u64, b: &[u8], write: bool) -> Result<(), Error>;
}

/// A [`Sink`] that writes into `f` at the payload's offsets (no checks).
pub fn write_into(f: &File) -> impl Sink + '_ {
    struct W<'a>(&'a File);
    impl Sink for W<'_> {
        fn put(&mut self, offset: u64, b: &[u8], write: bool) -> Result<(), Error> {
            if write {
                self.0
                    .write_all_at(b, offset)
                    .map_err(io("writing the target"))?;
            }
            Ok(())
        }
    }
    W(f)
}

/// What the fetching thread hands over: one range's body, in range order.
type Fetched = Result<Ranged, Error>;

/// Executes `plan` into `sink` in payload order, so the caller checks the
/// payload (sha256, verity tree) on the bytes as they are written and never
/// reads them back. Chunks in place are read from `placed` (the target)
/// and re-hashed; copies are read from `source` and re-hashed (a mismatch
/// is fetched instead); the missing ranges are fetched from `url` on a
/// second thread while the copies are made, and each fetched chunk is
/// hashed before it is handed on. `Ok(None)`: the server refused Range on
/// the first request, before anything was handed to `sink`, so the caller
/// downloads in full.
#[allow(clippy::too_many_arguments)]
pub fn execute(
    client: &Client,
    url: &str,
    idx: &ChunkIndex,
    plan: &Plan,
    source: Option<&dyn ReadAt>,
    placed: Option<&dyn ReadAt>,
    sink: &mut dyn Sink,
) -> Result<Option<DeltaStats>, Error> {
    let fetch: Vec<bool> = plan.steps.iter().map(|s| *s == Step::Fetch).collect();
    let runs = ranges(&idx.chunks, &fetch);
    let requests = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|sc| {
        let (to_main, bodies) = std::sync::mpsc::sync_channel::<Fetched>(1);
        let runs_ref = &runs;
        let requests_ref = &requests;
        sc.spawn(move || {
            let bounds = |r: &std::ops::Range<usize>| {
                (idx.chunks[r.start].offset, idx.chunks[r.end - 1].end())
            };
            let count = || requests_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut multi = true;
            let mut k = 0;
            while k < runs_ref.len() {
                let batch = &runs_ref[k..k + batch_len(&runs_ref[k..], bounds)];
                if multi && batch.len() > 1 {
                    let want: Vec<(u64, u64)> = batch
                        .iter()
                        .map(&bounds)
                        .map(|(s, e)| (s, e - s))
                        .collect();
                    count();
                    match client.get_ranges(url, &want) {
                        Ok(MultiRanged::Bytes(bodies)) => {
                            for b in bodies {
                                if to_main.send(Ok(Ranged::Bytes(b))).is_err() {
                                    return;
                                }
                            }
                            k += batch.len();
                            continue;
                        }
                        Ok(MultiRanged::Unusable(why)) => {
                            tracing::info!(
                                "{url}: a request for {} ranges got {why}; asking one range per request",
                                want.len()
                            );
                            multi = false;
                        }
                        Err(e) => {
                            let _ = to_main.send(Err(e));
                            return;
                        }
                    }
                }
                let (start, end) = bounds(&runs_ref[k]);
                count();
                let got = client.get_range(url, start, end - start);
                let stop = !matches!(got, Ok(Ranged::Bytes(_)));
                // The receiver hangs up when it stops early.
                if to_main.send(got).is_err() || stop {
                    return;
                }
                k += 1;
            }
        });
        let mut next = bodies.iter();
        // The first answer decides whether the server does Range at all:
        // wait for it before anything reaches the sink.
        let mut first = match runs.is_empty() {
            true => None,
            false => match next.next() {
                Some(Ok(Ranged::Refused(_))) => return Ok(None),
                Some(Ok(Ranged::Bytes(b))) => Some(b),
                Some(Err(e)) => return Err(e),
                None => unreachable!("the fetching thread answers every range it starts"),
            },
        };
        let mut st = DeltaStats {
            total: idx.size,
            ..Default::default()
        };
        let mut buf = vec![0u8; idx.max as usize];
        let mut run = runs.iter().peekable();
        let mut i = 0;
        while i < idx.chunks.len() {
            let c = &idx.chunks[i];
            match plan.steps[i] {
                Step::InPlace => {
                    let b = &mut buf[..c.len as usize];
                    let ok = placed.is_some_and(|t| t.read_at(b, c.offset).is_ok())
                        && sha(b) == c.sha256;
                    if put_or_refetch(sink, client, url, c, ok.then_some(&*b), false, &mut st)? {
                        st.in_place += u64::from(c.len);
                    }
                    i += 1;
                }
                Step::Copy(from) => {
                    let b = &mut buf[..c.len as usize];
                    let read = source.map(|f| (f.read_at(b, from), f.hashed()));
                    let ok = match read {
                        Some((Ok(()), true)) => true,
                        Some((Ok(()), false)) => sha(b) == c.sha256,
                        _ => false,
                    };
                    if put_or_refetch(sink, client, url, c, ok.then_some(&*b), true, &mut st)? {
                        st.local += u64::from(c.len);
                    }
                    i += 1;
                }
                Step::Fetch => {
                    let r = run.next().expect("every fetched chunk is in a range");
                    debug_assert_eq!(r.start, i);
                    let body = match first.take() {
                        Some(b) => b,
                        None => match next.next() {
                            Some(Ok(Ranged::Bytes(b))) => b,
                            Some(Ok(Ranged::Refused(status))) => {
                                return Err(Error::Http {
                                    url: url.to_string(),
                                    message: format!("answered a Range request with status {status} after answering others with 206: try again later"),
                                })
                            }
                            Some(Err(e)) => return Err(e),
                            None => unreachable!("the fetching thread answers every range it starts"),
                        },
                    };
                    let start = idx.chunks[r.start].offset;
                    for c in &idx.chunks[r.clone()] {
                        let b = &body[(c.offset - start) as usize..(c.end() - start) as usize];
                        check_fetched(url, c, b)?;
                    }
                    sink.put(start, &body, true)?;
                    st.network += body.len() as u64;
                    i = r.end;
                }
            }
        }
        st.requests += requests.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Some(st))
    })
}

/// How many of `runs` (from the first) go in one request: at most
/// [`MAX_RANGES_PER_REQUEST`], adding up to at most [`MAX_RANGE`] bytes
/// (always at least one).
fn batch_len(
    runs: &[std::ops::Range<usize>],
    bounds: impl Fn(&std::ops::Range<usize>) -> (u64, u64),
) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for r in runs.iter().take(MAX_RANGES_PER_REQUEST) {
        let (s, e) = bounds(r);
        if n > 0 && bytes + (e - s) > MAX_RANGE {
            break;
        }
        bytes += e - s;
        n += 1;
    }
    n.max(1).min(runs.len())
}

/// Hands chunk `c` to `sink`: its `local` bytes when they matched the index
/// (`write` as for [`Sink::put`]), else the chunk fetched again from `url`
/// and counted as refetched. True when the local bytes were used.
fn put_or_refetch(
    sink: &mut dyn Sink,
    client: &Client,
    url: &str,
    c: &Chunk,
    local: Option<&[u8]>,
    write: bool,
    st: &mut DeltaStats,
) -> Result<bool, Error> {
    if let Some(b) = local {
        sink.put(c.offset, b, write)?;
        return Ok(true);
    }
    let b = refetch(client, url, c)?;
    sink.put(c.offset, &b, true)?;
    st.refetched += 1;
    st.requests += 1;
    st.network += u64::from(c.len);
    Ok(false)
}

/// Fetches chunk `c` alone (a local copy that did not match the index).
fn refetch(client: &Client, url: &str, c: &Chunk) -> Result<Vec<u8>, Error> {
    match client.get_range(url, c.offset, u64::from(c.len))? {
        Ranged::Bytes(b) => {
            check_fetched(url, c, &b)?;
            Ok(b)
        }
        Ranged::Refused(status) => Err(Error::Http {
            url: url.to_string(),
            message: format!("answered the Range request for a chunk the local copy of which did not match with status {status}: the delta cannot finish; try again later"),
        }),
    }
}

/// Refuses fetched bytes `b` that are not chunk `c`.
fn check_fetched(url: &str, c: &Chunk, b: &[u8]) -> Result<(), Error> {
    let got = sha(b);
    if got != c.sha256 {
        return Err(Error::ChunkHash {
            url: url.to_string(),
            offset: c.offset,
            end: c.end(),
            got: hex::encode(got),
            expected: hex::encode(c.sha256),
        });
    }
    Ok(())
}

/// Fetches the index of payload `role` and checks it against the signed
/// reference and the payload. `Ok(None)` when the server has none (a
/// repository copied without them): the caller downloads in full.
pub fn fetch_index(
    client: &Client,
    base: &str,
    role: &str,
    p: &Payload,
    r: &IndexRef,
) -> Result<Option<ChunkIndex>, Error> {
    let what = format!("{role} chunk index");
    if r.size > herd_release::MAX_INDEX_BYTES {
        return Err(herd_release::Error::TooLarge {
            what: "chunk index",
            size: r.size,
            limit: herd_release::MAX_INDEX_BYTES,
        }
        .into());
    }
    let url = format!("{base}/payloads/{}", r.sha256);
    let Some(bytes) = client.get_small(&url, r.size)? else {
        return Ok(None);
    };
    let signed = Payload {
        sha256: r.sha256.clone(),
        size: r.size,
        chunks: None,
    };
    let mut check = PayloadCheck::new(&what, &signed);
    check.update(&bytes)?;
    check.finish()?;
    let idx = ChunkIndex::parse(&bytes)?;
    if idx.size != p.size {
        return Err(herd_release::Error::Mismatch(format!(
            "the {what} describes {} bytes, the signed payload has {}: refusing an index signed for another payload",
            idx.size, p.size
        ))
        .into());
    }
    Ok(Some(idx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// An "image" of files laid end to end.
    fn image(files: &[Vec<u8>]) -> Vec<u8> {
        files.concat()
    }

    fn file_with(b: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut t, b).unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .open(t.path())
            .unwrap();
        (t, f)
    }

    #[test]
    fn chunks_are_reused_around_an_inserted_a_removed_and_a_changed_file() {
        let files: Vec<Vec<u8>> = (0..12).map(|i| noise(i + 1, 700_000)).collect();
        let old = image(&files);
        let mut new_files = files.clone();
        new_files.insert(3, noise(100, 300_000)); // inserted
        new_files.remove(7); // removed
        new_files[9] = noise(200, 650_000); // changed
        let new = image(&new_files);
        let idx = ChunkIndex::of_reader(&new[..]).unwrap();
        let (_s, src) = file_with(&old);
        let found = scan_source(&src, old.len() as u64, &idx).unwrap();
        let p = plan(&idx, &vec![false; idx.chunks.len()], &found);
        let fetch = p.fetch_bytes(&idx);
        let floor = 300_000 + 650_000;
        // The new bytes plus at most a few chunks around each change.
        assert!(fetch >= floor, "{fetch}");
        assert!(
            fetch <= floor + 6 * u64::from(idx.max),
            "fetches {fetch} of {} bytes",
            new.len()
        );
        // Assembling from the plan gives the new image (fetch by hand here).
        let (_t, target) = file_with(&[]);
        for (c, s) in idx.chunks.iter().zip(&p.steps) {
            let bytes = match s {
                Step::Copy(off) => &old[*off as usize..*off as usize + c.len as usize],
                _ => &new[c.offset as usize..c.end() as usize],
            };
            target.write_all_at(bytes, c.offset).unwrap();
        }
        let mut got = Vec::new();
        (&target).read_to_end(&mut got).unwrap();
        assert!(got == new);
    }

    #[test]
    fn a_source_in_memory_finds_the_same_chunks_and_assembles_the_payload() {
        let (old, new, idx) = releases();
        let (_s, src) = file_with(&old);
        let on_disk = scan_source(&src, u64::MAX, &idx).unwrap();
        let (mem, found) = scan_in_memory(&src, u64::MAX, &idx).unwrap().unwrap();
        assert_eq!(found, on_disk);
        let p = plan(&idx, &vec![false; idx.chunks.len()], &found);
        let url = server(new.clone(), true);
        let mut seen = Seen::default();
        let st = execute(&client(), &url, &idx, &p, Some(&mem), None, &mut seen)
            .unwrap()
            .unwrap();
        assert!(seen.bytes == new);
        assert_eq!(st.local, p.reuse_bytes(&idx));
    }

    #[test]
    fn a_resumed_target_is_found_in_place() {
        let new = noise(5, 2 << 20);
        let idx = ChunkIndex::of_reader(&new[..]).unwrap();
        // A power cut after the first half was written.
        let (_t, target) = file_with(&new[..1 << 20]);
        let here = scan_in_place(&target, &idx).unwrap();
        let p = plan(&idx, &here, &HashMap::new());
        let in_place = p.reuse_bytes(&idx);
        assert!(in_place > (1 << 20) - u64::from(idx.max), "{in_place}");
        assert!(in_place <= 1 << 20);
    }

    #[test]
    fn adjacent_fetches_coalesce_into_bounded_ranges() {
        let c = |offset, len| Chunk {
            offset,
            len,
            sha256: [0; 32],
        };
        let chunks: Vec<Chunk> = (0..200).map(|i| c(i * 65536, 65536)).collect();
        let mut fetch = vec![false; 200];
        for f in fetch.iter_mut().take(5).skip(2) {
            *f = true;
        }
        fetch[7] = true;
        for f in fetch.iter_mut().skip(10) {
            *f = true;
        }
        let r = ranges(&chunks, &fetch);
        assert_eq!(r[0], 2..5);
        assert_eq!(r[1], 7..8);
        // 190 chunks of 64 KiB (11.9 MiB) in pieces of at most 8 MiB.
        assert_eq!(r[2], 10..138);
        assert_eq!(r[3], 138..200);
    }

    /// What a test server does with Range.
    #[derive(Clone, Copy, PartialEq)]
    enum Serve {
        /// Always 200 and the whole body.
        Whole,
        /// One range per request (several: 200 and the whole body, as S3).
        OneRange,
        /// Several ranges in one `multipart/byteranges` answer.
        ManyRanges,
    }

    /// A static server for `body` on 127.0.0.1, honouring `Range:
    /// bytes=A-B[,C-D…]` when `ranges` (else always 200 and the whole body).
    fn server(body: Vec<u8>, ranges: bool) -> String {
        server_as(
            body,
            if ranges {
                Serve::ManyRanges
            } else {
                Serve::Whole
            },
        )
    }

    fn server_as(body: Vec<u8>, mode: Serve) -> String {
        use std::io::{BufRead, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/payloads/p", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut ranges = Vec::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap() == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.strip_prefix("Range: bytes=") {
                        for spec in v.trim().split(',') {
                            let (a, b) = spec.split_once('-').unwrap();
                            ranges.push((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
                        }
                    }
                }
                let len = body.len() as u64;
                let _ = match (mode, &ranges[..]) {
                    (Serve::OneRange | Serve::ManyRanges, &[(a, b)]) => write!(
                        s,
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{len}\r\nContent-Length: {}\r\n\r\n",
                        b + 1 - a
                    )
                    .and_then(|_| s.write_all(&body[a as usize..=b as usize])),
                    (Serve::ManyRanges, [_, _, ..]) => write!(
                        s,
                        "HTTP/1.1 206 Partial Content\r\nContent-Type: multipart/byteranges; boundary=B\r\nContent-Length: {}\r\n\r\n",
                        herd_byteranges::body_len("B", &ranges, len)
                    )
                    .and_then(|_| {
                        herd_byteranges::write_body(&mut s, "B", &ranges, len, &mut |a, n, w| {
                            w.write_all(&body[a as usize..(a + n) as usize])
                        })
                    }),
                    _ => write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")
                        .and_then(|_| s.write_all(&body)),
                };
            }
        });
        url
    }

    /// Old and new images differing by one changed file, the new one's
    /// index and the plan against the old one.
    fn releases() -> (Vec<u8>, Vec<u8>, ChunkIndex) {
        let files: Vec<Vec<u8>> = (0..8).map(|i| noise(i + 1, 500_000)).collect();
        let old = image(&files);
        let mut files = files;
        files[4] = noise(99, 520_000);
        let new = image(&files);
        let idx = ChunkIndex::of_reader(&new[..]).unwrap();
        (old, new, idx)
    }

    #[test]
    fn a_corrupted_local_chunk_is_detected_and_fetched_from_the_server() {
        let (old, new, idx) = releases();
        let (_s, src) = file_with(&old);
        let found = scan_source(&src, old.len() as u64, &idx).unwrap();
        let p = plan(&idx, &vec![false; idx.chunks.len()], &found);
        // The running slot's bytes change after the scan (a bad sector, or
        // someone writing to it): the first chunk planned as a copy.
        let (i, off) = p
            .steps
            .iter()
            .enumerate()
            .find_map(|(i, s)| match s {
                Step::Copy(o) => Some((i, *o)),
                _ => None,
            })
            .unwrap();
        src.write_all_at(b"corrupted", off + 100).unwrap();
        let url = server(new.clone(), true);
        let (_t, target) = file_with(&[]);
        let st = execute(
            &client(),
            &url,
            &idx,
            &p,
            Some(&src),
            None,
            &mut write_into(&target),
        )
        .unwrap()
        .unwrap();
        assert_eq!(st.refetched, 1);
        assert_eq!(
            st.network,
            p.fetch_bytes(&idx) + u64::from(idx.chunks[i].len)
        );
        assert_eq!(st.local + st.network, new.len() as u64);
        let mut got = Vec::new();
        (&target).read_to_end(&mut got).unwrap();
        assert!(got == new, "the target is the new image");
    }

    #[test]
    fn a_tampered_chunk_on_the_server_is_refused() {
        let (old, mut new, idx) = releases();
        let (_s, src) = file_with(&old);
        let found = scan_source(&src, old.len() as u64, &idx).unwrap();
        let p = plan(&idx, &vec![false; idx.chunks.len()], &found);
        let c = idx.chunks[p.steps.iter().position(|s| *s == Step::Fetch).unwrap()];
        new[c.offset as usize + 7] ^= 0x40;
        let url = server(new, true);
        let (_t, target) = file_with(&[]);
        let e = execute(
            &client(),
            &url,
            &idx,
            &p,
            Some(&src),
            None,
            &mut write_into(&target),
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::ChunkHash { offset, end, .. } if *offset == c.offset && *end == c.end()),
            "{e}"
        );
        assert!(e.to_string().contains("tampered or damaged"), "{e}");
    }

    #[test]
    fn a_server_without_range_means_a_full_download() {
        let (old, new, idx) = releases();
        let (_s, src) = file_with(&old);
        let found = scan_source(&src, old.len() as u64, &idx).unwrap();
        let p = plan(&idx, &vec![false; idx.chunks.len()], &found);
        let url = server(new, false);
        // Nothing reached the sink: the caller's checks are untouched.
        let mut seen = Seen::default();
        assert!(
            execute(&client(), &url, &idx, &p, Some(&src), None, &mut seen)
                .unwrap()
                .is_none()
        );
        assert!(seen.bytes.is_empty());
    }

    #[test]
    fn several_ranges_go_in_one_request_where_the_server_can() {
        let files: Vec<Vec<u8>> = (0..8).map(|i| noise(i + 1, 300_000)).collect();
        let old = image(&files);
        let mut files = files;
        for i in [1, 4, 6] {
            files[i] = noise(50 + i as u64, 310_000);
        }
        let new = image(&files);
        let idx = ChunkIndex::of_reader(&new[..]).unwrap();
        let (_s, src) = file_with(&old);
        let found = scan_source(&src, old.len() as u64, &idx).unwrap();
        let p = plan(&idx, &vec![false; idx.chunks.len()], &found);
        let fetch: Vec<bool> = p.steps.iter().map(|s| *s == Step::Fetch).collect();
        let runs = ranges(&idx.chunks, &fetch).len() as u64;
        assert!(
            runs >= 3,
            "three changed files are three runs at least: {runs}"
        );
        for (mode, requests) in [
            (Serve::ManyRanges, 1),
            // The multi-range request is answered with 200 and the whole
            // file (not read): then one request per range.
            (Serve::OneRange, 1 + runs),
        ] {
            let url = server_as(new.clone(), mode);
            let mut seen = Seen::default();
            let st = execute(&client(), &url, &idx, &p, Some(&src), None, &mut seen)
                .unwrap()
                .unwrap();
            assert!(seen.bytes == new, "the sink saw exactly the new payload");
            assert_eq!(st.requests, requests);
            assert_eq!(st.network, p.fetch_bytes(&idx));
        }
        // A tampered byte in one part of the multi-range answer is refused.
        let c = idx.chunks[fetch.iter().rposition(|f| *f).unwrap()];
        let mut tampered = new.clone();
        tampered[c.offset as usize + 1] ^= 1;
        let url = server_as(tampered, Serve::ManyRanges);
        let e = execute(
            &client(),
            &url,
            &idx,
            &p,
            Some(&src),
            None,
            &mut Seen::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::ChunkHash { offset, .. } if *offset == c.offset),
            "{e}"
        );
    }

    fn client() -> Client {
        Client::new("http://127.0.0.1", None).unwrap()
    }

    /// A sink that records what it is handed and refuses anything out of
    /// order (the caller hashes the payload as it arrives).
    #[derive(Default)]
    struct Seen {
        bytes: Vec<u8>,
        written: u64,
    }

    impl Sink for Seen {
        fn put(&mut self, offset: u64, b: &[u8], write: bool) -> Result<(), Error> {
            assert_eq!(
                offset,
                self.bytes.len() as u64,
                "handed over in payload order"
            );
            self.bytes.extend_from_slice(b);
            if write {
                self.written += b.len() as u64;
            }
            Ok(())
        }
    }

    #[test]
    fn the_payload_is_handed_over_in_order_and_a_damaged_chunk_in_place_is_fetched() {
        let (old, new, idx) = releases();
        let (_s, src) = file_with(&old);
        let found = scan_source(&src, old.len() as u64, &idx).unwrap();
        // A resumed delta: the first half is in place, then one chunk of it
        // is damaged after the scan.
        let (_t, target) = file_with(&new[..new.len() / 2]);
        let here = scan_in_place(&target, &idx).unwrap();
        let p = plan(&idx, &here, &found);
        let i = p.steps.iter().position(|s| *s == Step::InPlace).unwrap();
        let c = idx.chunks[i];
        target.write_all_at(b"damaged", c.offset + 3).unwrap();
        let url = server(new.clone(), true);
        let mut seen = Seen::default();
        let st = execute(
            &client(),
            &url,
            &idx,
            &p,
            Some(&src),
            Some(&target),
            &mut seen,
        )
        .unwrap()
        .unwrap();
        assert!(seen.bytes == new, "the sink saw exactly the new payload");
        assert_eq!(st.refetched, 1);
        assert_eq!(
            st.in_place,
            p.reuse_bytes(&idx) - st.local - u64::from(c.len)
        );
        // Only the in-place chunks were not written again.
        assert_eq!(seen.written, new.len() as u64 - st.in_place);
        assert_eq!(st.in_place + st.local + st.network, new.len() as u64);
    }
}
