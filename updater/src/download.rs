//! Streaming a release's `/usr` and verity payloads into a slot's two
//! partitions: no temporary copy, every byte hashed on its way to the
//! disk (sha256 against the signed metadata, and the dm-verity tree
//! against the signed root hash), resumable with HTTP Range requests.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, TrySendError};
use std::sync::Arc;

use herd_contract::payload::{USR_IMG, USR_VERITY};
use herd_release::{PayloadCheck, Release};
use herd_verity::StreamVerifier;

use crate::state::{Partial, State};
use crate::{http, io, Error};

/// How often the written bytes are flushed and the resume point saved.
const SAVE_EVERY: u64 = 16 << 20;

/// How often written bytes are handed to the disk without waiting, so the
/// flushes at save points and at the end find little left to do.
const KICK_EVERY: u64 = 8 << 20;

/// Starts writeback of everything written before `end` (does not wait).
fn start_writeback(f: &File, end: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range(2) on an open descriptor with plain integers;
    // SYNC_FILE_RANGE_WRITE only queues writeback. A failure is harmless:
    // the fsync that follows reports real errors.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            0,
            end as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

fn open_target(dev: &str, size: u64, role: &str) -> Result<File, Error> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(io(format!("opening {dev}")))?;
    let cap = f
        .seek(SeekFrom::End(0))
        .map_err(io(format!("sizing {dev}")))?;
    // A plain file (benchmarks, tests) may grow; a partition may not.
    let is_file = f.metadata().map(|m| m.is_file()).unwrap_or(false);
    if size > cap && !is_file {
        return Err(Error::Disk(format!(
            "{role} is {size} bytes but the slot partition {dev} holds only {cap}: the release does not fit this disk's layout"
        )));
    }
    Ok(f)
}

/// Feeds the first `len` bytes of `f` to `sink`.
fn reread(
    f: &mut File,
    dev: &str,
    len: u64,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    f.seek(SeekFrom::Start(0))
        .map_err(io(format!("reading {dev}")))?;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n])
            .map_err(io(format!("reading back {dev}")))?;
        sink(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Where a payload goes and who else wants to see its bytes.
struct Job<'a> {
    client: &'a http::Client,
    base: &'a str,
    rel: &'a Release,
    role: &'a str,
    dev: &'a str,
    state_dir: &'a Path,
    log: &'a dyn Fn(&str),
    /// The running slot's partition for this payload: chunks a delta
    /// update may copy instead of fetching (None: full download only).
    source: Option<&'a str>,
}

/// The running slot's partitions, sources of chunks for delta updates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources<'a> {
    /// The running `/usr` partition (or a file holding the running usr.img).
    pub usr: Option<&'a str>,
    /// The running verity partition.
    pub verity: Option<&'a str>,
}

/// At most this much of a source is chunked: twice the new payload (a slot
/// partition is larger than the image in it; past the image there is
/// nothing to find).
fn source_limit(payload: u64) -> u64 {
    payload.saturating_mul(2) + (1 << 20)
}

/// Tries to assemble payload `p` in `f` from local chunks and Range
/// requests. `Ok(None)`: no delta (no index on the server, the server does
/// not do Range, or too little found here); the caller downloads in full.
/// The result is checked as it is written (see [`SlotSink`]): the payload
/// sha256 against the signed one and, with `verifier`, the verity tree.
fn try_delta(
    job: &Job,
    p: &herd_release::Payload,
    f: &File,
    verifier: Option<&mut StreamVerifier>,
) -> Result<Option<crate::delta::DeltaStats>, Error> {
    use crate::delta;
    let (Some(src), Some(r)) = (job.source, p.chunks.as_ref()) else {
        return Ok(None);
    };
    let (role, log) = (job.role, job.log);
    let Some(idx) = delta::fetch_index(job.client, job.base, role, p, r)? else {
        log(&format!(
            "{role}: the repository has no chunk index {}: full download",
            r.sha256
        ));
        return Ok(None);
    };
    let source = match File::open(src) {
        Ok(s) => Some(s),
        Err(e) => {
            log(&format!(
                "{role}: cannot read the running slot {src} ({e}): only chunks already in place are reused"
            ));
            None
        }
    };
    let limit = source_limit(p.size);
    let chunking = || io(format!("chunking {src}"));
    let (scanned, found) = match &source {
        Some(s) => match delta::scan_in_memory(s, limit, &idx).map_err(chunking())? {
            Some((m, found)) => (Some(m), found),
            None => (
                None,
                delta::scan_source(s, limit, &idx).map_err(chunking())?,
            ),
        },
        None => Default::default(),
    };
    let source: Option<&dyn delta::ReadAt> = match (&scanned, &source) {
        (Some(m), _) => Some(m),
        (None, Some(s)) => Some(s),
        (None, None) => None,
    };
    let here = delta::scan_in_place(f, &idx).map_err(io(format!("reading {}", job.dev)))?;
    let plan = delta::plan(&idx, &here, &found);
    let reuse = plan.reuse_bytes(&idx);
    if !herd_release::delta_worth(reuse, p.size) {
        log(&format!(
            "{role}: only {reuse} of {} bytes found locally (under {} %): full download",
            p.size,
            delta::MIN_REUSE_PERCENT
        ));
        return Ok(None);
    }
    let url = format!("{}/payloads/{}", job.base, p.sha256);
    let check = PayloadCheck::new(role, p);
    let (done, check) = checked(check, verifier, |hand_over| {
        let mut sink = SlotSink::new(f, job.dev, hand_over);
        let st = delta::execute(job.client, &url, &idx, &plan, source, Some(f), &mut sink)?;
        sink.flush()?;
        Ok(st)
    })?;
    let Some(mut st) = done else {
        log(&format!(
            "{role}: the server does not answer Range requests with 206: full download"
        ));
        return Ok(None);
    };
    check.finish()?;
    st.version = job.rel.version.clone();
    st.network += r.size;
    f.sync_all().map_err(io(format!("flushing {}", job.dev)))?;
    log(&format!("delta {role} of {}", st.line()));
    Ok(Some(st))
}

/// Bytes handed to the checks at once by a delta.
const BATCH: usize = 1 << 20;

/// Where a delta puts the payload: written into the slot at its offsets
/// (chunks already in place are not written again), and handed, in payload
/// order and in batches of about [`BATCH`] bytes, to the checks (see
/// [`checked`]). Nothing is read back.
struct SlotSink<'a> {
    f: &'a File,
    dev: &'a str,
    hand_over: &'a dyn Fn(Arc<Vec<u8>>) -> bool,
    batch: Vec<u8>,
    /// Where `batch` starts in the payload.
    at: u64,
    /// Whether `batch` is to be written.
    write: bool,
    /// Bytes written since writeback was last started.
    unkicked: u64,
}

impl<'a> SlotSink<'a> {
    fn new(f: &'a File, dev: &'a str, hand_over: &'a dyn Fn(Arc<Vec<u8>>) -> bool) -> Self {
        SlotSink {
            f,
            dev,
            hand_over,
            batch: Vec::with_capacity(BATCH),
            at: 0,
            write: true,
            unkicked: 0,
        }
    }

    /// Writes the batch (when it is to be written) and hands it over.
    fn flush(&mut self) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        if self.batch.is_empty() {
            return Ok(());
        }
        let n = self.batch.len() as u64;
        if self.write {
            self.f
                .write_all_at(&self.batch, self.at)
                .map_err(io(format!("writing {}", self.dev)))?;
            self.unkicked += n;
            if self.unkicked >= KICK_EVERY {
                start_writeback(self.f, self.at + n);
                self.unkicked = 0;
            }
        }
        let b = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        if !(self.hand_over)(Arc::new(b)) {
            // A check stopped; its own error is the one reported.
            return Err(Error::Disk("a check stopped the delta update".into()));
        }
        self.at += n;
        Ok(())
    }
}

impl crate::delta::Sink for SlotSink<'_> {
    fn put(&mut self, offset: u64, b: &[u8], write: bool) -> Result<(), Error> {
        let end = self.at + self.batch.len() as u64;
        if offset != end {
            return Err(Error::Disk(format!(
                "a delta handed over bytes from {offset} while the payload was complete to {end}"
            )));
        }
        if write != self.write || self.batch.len() + b.len() > BATCH {
            self.flush()?;
            self.write = write;
        }
        self.batch.extend_from_slice(b);
        Ok(())
    }
}

/// Runs `work` with a `hand_over` that feeds the payload, in order, to
/// `check` on a second thread and to `verifier` (when given) on a third,
/// so the checks cost no time on two cores; returns what `work` returned
/// and the check to finish.
fn checked<T>(
    mut check: PayloadCheck,
    verifier: Option<&mut StreamVerifier>,
    work: impl FnOnce(&dyn Fn(Arc<Vec<u8>>) -> bool) -> Result<T, Error>,
) -> Result<(T, PayloadCheck), Error> {
    std::thread::scope(|sc| {
        let (to_check, checks) = sync_channel::<Arc<Vec<u8>>>(4);
        let checker = sc.spawn(move || -> Result<PayloadCheck, Error> {
            for c in checks {
                check.update(&c)?;
            }
            Ok(check)
        });
        let (to_verity, blocks) = sync_channel::<Arc<Vec<u8>>>(4);
        let tree = verifier.map(|v| {
            sc.spawn(move || {
                for c in blocks {
                    v.update(&c);
                }
            })
        });
        let has_tree = tree.is_some();
        let hand_over = move |c: Arc<Vec<u8>>| -> bool {
            to_check.send(c.clone()).is_ok() && (!has_tree || to_verity.send(c).is_ok())
        };
        let r = work(&hand_over);
        drop(hand_over);
        if let Some(t) = tree {
            t.join().expect("the verity thread does not panic");
        }
        let check = checker.join().expect("the hash thread does not panic")?;
        Ok((r?, check))
    })
}

/// Streams one payload into `dev`, resuming from the saved offset. Every
/// byte (re-read or downloaded) is hashed on a second thread and, when a
/// verifier is given, checked against the verity tree on a third, so the
/// checks cost no time on two cores.
fn write_payload(
    job: &Job,
    state: &mut State,
    verifier: Option<&mut StreamVerifier>,
) -> Result<(), Error> {
    let Job {
        rel,
        role,
        dev,
        state_dir,
        ..
    } = *job;
    let p = rel
        .payloads
        .get(role)
        .ok_or_else(|| Error::Disk(format!("release {} has no {role} payload", rel.version)))?;
    let start = match &state.partial {
        Some(part) if part.version == rel.version && part.role == role && part.offset <= p.size => {
            part.offset
        }
        _ => 0,
    };
    if p.chunks.is_none() || job.source.is_none() {
        return write_payload_full(job, state, verifier, start);
    }
    let save = |state: &mut State, offset: u64| save_partial(rel, role, state_dir, state, offset);
    // Marks the payload as being written. A delta writes out of order, so
    // the resume point stays where a full download left it (a delta only
    // writes the payload's own bytes at their places: that prefix stays
    // right), and a resumed delta finds its chunks in place.
    save(state, start)?;
    let f = open_target(dev, p.size, role)?;
    let mut verifier = verifier;
    let delta = match try_delta(job, p, &f, verifier.as_deref_mut()) {
        Ok(None) => {
            write_payload_full(job, state, verifier, start)?;
            // Counted too, so the totals say what the update cost.
            let st = crate::delta::DeltaStats {
                version: rel.version.clone(),
                in_place: start,
                network: p.size - start,
                total: p.size,
                ..Default::default()
            };
            state.count_delta(st);
            return state.save(state_dir);
        }
        Ok(Some(st)) => Ok(st),
        Err(e) => Err(e),
    };
    match delta {
        Ok(st) => {
            state.count_delta(st);
            save(state, p.size)
        }
        Err(e) => {
            if matches!(e, Error::Release(_)) {
                // The index or the result is wrong: start over next time.
                state.partial = None;
                state.save(state_dir)?;
            }
            Err(e)
        }
    }
}

/// Records in the state that payload `role` of `rel` is written up to
/// `offset` (the resume point), and saves the state in `state_dir`.
fn save_partial(
    rel: &Release,
    role: &str,
    state_dir: &Path,
    state: &mut State,
    offset: u64,
) -> Result<(), Error> {
    state.partial = Some(Partial {
        version: rel.version.clone(),
        role: role.to_string(),
        offset,
        size: rel.payloads[role].size,
    });
    state.save(state_dir)
}

/// [`write_payload`] by a full download from byte `start`.
fn write_payload_full(
    job: &Job,
    state: &mut State,
    verifier: Option<&mut StreamVerifier>,
    start: u64,
) -> Result<(), Error> {
    let Job {
        base,
        rel,
        role,
        dev,
        state_dir,
        log,
        ..
    } = *job;
    let p = &rel.payloads[role];
    let mut f = open_target(dev, p.size, role)?;
    let mut check = PayloadCheck::new(role, p);
    let save = |state: &mut State, offset: u64| save_partial(rel, role, state_dir, state, offset);
    let chatty = p.size >= 8 << 20;
    // Resume points are saved on their own thread (flush the slot, then
    // record the offset): the download does not wait for the disk.
    let flusher = f
        .try_clone()
        .map_err(io(format!("opening {dev} a second time")))?;
    let streamed = std::thread::scope(|sc| -> Result<(), Error> {
        let (to_saver, offsets) = sync_channel::<u64>(1);
        let (save, state) = (&save, &mut *state);
        let saver = sc.spawn(move || -> Result<(), Error> {
            for offset in offsets {
                // Everything before `offset` was written before it was sent.
                flusher.sync_data().map_err(io(format!("flushing {dev}")))?;
                save(state, offset)?;
            }
            Ok(())
        });
        let (to_check, checks) = sync_channel::<Arc<Vec<u8>>>(4);
        let checker = sc.spawn(move || -> Result<PayloadCheck, Error> {
            for c in checks {
                check.update(&c)?;
            }
            Ok(check)
        });
        let (to_verity, blocks) = sync_channel::<Arc<Vec<u8>>>(4);
        let tree = verifier.map(|v| {
            sc.spawn(move || {
                for c in blocks {
                    v.update(&c);
                }
            })
        });
        let hand_over = |c: Arc<Vec<u8>>| -> bool {
            to_check.send(c.clone()).is_ok() && (tree.is_none() || to_verity.send(c).is_ok())
        };
        let mut run = || -> Result<(), Error> {
            let mut offset = start;
            if offset > 0 {
                reread(&mut f, dev, offset, &mut |b| {
                    hand_over(Arc::new(b.to_vec()));
                    Ok(())
                })?;
                log(&format!(
                    "resuming {role} of {} at byte {offset} of {} ({}%)",
                    rel.version,
                    p.size,
                    offset * 100 / p.size.max(1)
                ));
            }
            f.seek(SeekFrom::Start(offset))
                .map_err(io(format!("seeking {dev}")))?;
            let url = format!("{base}/payloads/{}", p.sha256);
            let mut since_save = 0u64;
            let mut in_flight = std::collections::VecDeque::new();
            let quarter = (p.size / 4).max(1);
            let mut next_report = (offset / quarter + 1) * quarter;
            if offset < p.size {
                job.client.stream(&url, offset, p.size, &mut |chunk| {
                    let n = chunk.len() as u64;
                    if offset + n > p.size {
                        return Err(herd_release::Error::PayloadSize {
                            role: role.to_string(),
                            size: offset + n,
                            expected: p.size,
                        }
                        .into());
                    }
                    let chunk = Arc::new(chunk);
                    in_flight.push_back(chunk.clone());
                    if !hand_over(chunk.clone()) {
                        // A check stopped; its own error is the one reported.
                        return Err(Error::Disk("a check stopped the download".into()));
                    }
                    f.write_all(&chunk).map_err(io(format!("writing {dev}")))?;
                    offset += n;
                    since_save += n;
                    if offset % KICK_EVERY < n {
                        start_writeback(&f, offset);
                    }
                    if since_save >= SAVE_EVERY {
                        match to_saver.try_send(offset) {
                            Ok(()) => since_save = 0,
                            // Still saving the last one: try again next chunk.
                            Err(TrySendError::Full(_)) => {}
                            // The saver failed; its error is the one reported.
                            Err(TrySendError::Disconnected(_)) => {
                                return Err(Error::Disk("saving the resume point failed".into()))
                            }
                        }
                    }
                    if chatty && offset >= next_report && offset < p.size {
                        log(&format!(
                            "downloading {role} of {}: {offset} of {} bytes ({}%)",
                            rel.version,
                            p.size,
                            offset * 100 / p.size.max(1)
                        ));
                        next_report += quarter;
                    }
                    drop(chunk);
                    // The oldest chunk both checkers are done with goes back.
                    let mut free = None;
                    while in_flight.front().is_some_and(|c| Arc::strong_count(c) == 1) {
                        free = in_flight.pop_front().and_then(|c| Arc::try_unwrap(c).ok());
                    }
                    Ok(free)
                })?;
            }
            f.sync_all().map_err(io(format!("flushing {dev}")))?;
            Ok(())
        };
        let r = run();
        drop((to_check, to_verity, to_saver));
        let saved = saver.join().expect("the saver thread does not panic");
        if let Some(t) = tree {
            t.join().expect("the verity thread does not panic");
        }
        let check = checker.join().expect("the hash thread does not panic")?;
        saved?;
        r?;
        check.finish()?;
        Ok(())
    });
    match streamed {
        Ok(()) => save(state, p.size),
        Err(e) => {
            if matches!(e, Error::Release(_)) {
                // What is on the disk is wrong: start over next time.
                state.partial = None;
                state.save(state_dir)?;
            }
            Err(e)
        }
    }
}

/// True when `dev` already starts with the payload `role` (its sha256
/// matches the signed one): an interrupted install need not fetch it again.
fn already_written(rel: &Release, role: &str, dev: &str) -> Result<bool, Error> {
    let p = &rel.payloads[role];
    let mut f = open_target(dev, p.size, role)?;
    let cap = f.seek(SeekFrom::End(0)).unwrap_or(0);
    if cap < p.size {
        return Ok(false);
    }
    let mut check = PayloadCheck::new(role, p);
    reread(&mut f, dev, p.size, &mut |b| {
        check.update(b).map_err(Error::from)
    })?;
    Ok(check.finish().is_ok())
}

fn read_prefix(dev: &str, len: u64) -> Result<Vec<u8>, Error> {
    let mut f = File::open(dev).map_err(io(format!("reading {dev}")))?;
    let mut v = vec![0u8; len as usize];
    f.read_exact(&mut v)
        .map_err(io(format!("reading back {dev}")))?;
    Ok(v)
}

/// Writes `rel`'s `/usr` image into `usr_dev` and its verity tree into
/// `verity_dev`, and proves the result: both payloads' sha256 and sizes
/// match the signed metadata, and the data verifies against the tree and
/// the signed `usrhash` — the same check the kernel makes at boot.
#[allow(clippy::too_many_arguments)]
pub fn write_slot(
    client: &http::Client,
    base: &str,
    rel: &Release,
    usr_dev: &str,
    verity_dev: &str,
    state: &mut State,
    state_dir: &Path,
    sources: Sources,
    log: &dyn Fn(&str),
) -> Result<(), Error> {
    let root = rel
        .root_hash()
        .ok_or_else(|| Error::Disk(format!("release {} has a malformed usrhash", rel.version)))?;
    let job = |role, dev, source| Job {
        client,
        base,
        rel,
        role,
        dev,
        state_dir,
        log,
        source,
    };
    // The tree first (small), so the data can be checked as it streams.
    let resuming_usr = state
        .partial
        .as_ref()
        .is_some_and(|p| p.version == rel.version && p.role == USR_IMG);
    if !(resuming_usr && already_written(rel, USR_VERITY, verity_dev)?) {
        write_payload(&job(USR_VERITY, verity_dev, sources.verity), state, None)?;
    }
    let tree = read_prefix(verity_dev, rel.payloads[USR_VERITY].size)?;
    let mut verifier = StreamVerifier::new(tree)?;
    write_payload(
        &job(USR_IMG, usr_dev, sources.usr),
        state,
        Some(&mut verifier),
    )?;
    verifier.finish(&root)?;
    if let Some(d) = state.delta.as_ref().filter(|d| d.version == rel.version) {
        log(&format!("delta update {}", d.line()));
    }
    state.partial = None;
    state.save(state_dir)?;
    Ok(())
}
