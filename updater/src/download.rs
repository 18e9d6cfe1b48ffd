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
    base: &'a str,
    rel: &'a Release,
    role: &'a str,
    dev: &'a str,
    state_dir: &'a Path,
    log: &'a dyn Fn(&str),
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
        base,
        rel,
        role,
        dev,
        state_dir,
        log,
    } = *job;
    let p = rel
        .payloads
        .get(role)
        .ok_or_else(|| Error::Disk(format!("release {} has no {role} payload", rel.version)))?;
    let mut f = open_target(dev, p.size, role)?;
    let mut check = PayloadCheck::new(role, p);
    let start = match &state.partial {
        Some(part) if part.version == rel.version && part.role == role && part.offset <= p.size => {
            part.offset
        }
        _ => 0,
    };
    let save = |state: &mut State, offset: u64| -> Result<(), Error> {
        state.partial = Some(Partial {
            version: rel.version.clone(),
            role: role.to_string(),
            offset,
            size: p.size,
        });
        state.save(state_dir)
    };
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
                http::stream(&url, offset, p.size, &mut |chunk| {
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
    base: &str,
    rel: &Release,
    usr_dev: &str,
    verity_dev: &str,
    state: &mut State,
    state_dir: &Path,
    log: &dyn Fn(&str),
) -> Result<(), Error> {
    let root = rel
        .root_hash()
        .ok_or_else(|| Error::Disk(format!("release {} has a malformed usrhash", rel.version)))?;
    let job = |role, dev| Job {
        base,
        rel,
        role,
        dev,
        state_dir,
        log,
    };
    // The tree first (small), so the data can be checked as it streams.
    let resuming_usr = state
        .partial
        .as_ref()
        .is_some_and(|p| p.version == rel.version && p.role == USR_IMG);
    if !(resuming_usr && already_written(rel, USR_VERITY, verity_dev)?) {
        write_payload(&job(USR_VERITY, verity_dev), state, None)?;
    }
    let tree = read_prefix(verity_dev, rel.payloads[USR_VERITY].size)?;
    let mut verifier = StreamVerifier::new(tree)?;
    write_payload(&job(USR_IMG, usr_dev), state, Some(&mut verifier))?;
    verifier.finish(&root)?;
    state.partial = None;
    state.save(state_dir)?;
    Ok(())
}
