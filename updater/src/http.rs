//! HTTP GETs with bounds: metadata capped, payloads stopped at their
//! signed size, resumable with Range, and every transfer within an overall
//! deadline (a server that trickles bytes cannot hold the updater).

use std::io::Read;
use std::time::{Duration, Instant};

use crate::Error;

/// The deadline of a metadata GET.
pub const METADATA_DEADLINE: Duration = Duration::from_secs(60);

/// A payload transfer gets this long ...
const PAYLOAD_BASE: Duration = Duration::from_secs(60);

/// ... plus its bytes at this rate (bytes per second), the slowest link
/// herd-update waits for; past the deadline the transfer stops and resumes
/// at the next check.
const PAYLOAD_FLOOR: u64 = 128 << 10;

/// The deadline of a payload transfer of `bytes`.
pub fn payload_deadline(bytes: u64) -> Duration {
    PAYLOAD_BASE + Duration::from_secs(bytes / PAYLOAD_FLOOR)
}

/// One transfer: its URL, start and deadline.
struct Transfer<'a> {
    url: &'a str,
    start: Instant,
    deadline: Duration,
}

impl<'a> Transfer<'a> {
    fn new(url: &'a str, deadline: Duration) -> Self {
        Transfer {
            url,
            start: Instant::now(),
            deadline,
        }
    }

    fn get(&self) -> ureq::Request {
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(30))
            // The whole request, body included (ureq bounds every read by it).
            .timeout(self.deadline)
            .build()
            .get(self.url)
            .set("Connection", "close")
    }

    /// The error for `m`: [`Error::Deadline`] once the deadline is (all but) reached.
    fn err(&self, m: impl ToString) -> Error {
        if self.start.elapsed() + Duration::from_millis(100) >= self.deadline {
            return Error::Deadline {
                url: self.url.to_string(),
                secs: self.deadline.as_secs_f64().ceil() as u64,
            };
        }
        err(self.url, m)
    }
}

fn err(url: &str, m: impl ToString) -> Error {
    Error::Http {
        url: url.to_string(),
        message: m.to_string(),
    }
}

/// GETs `url` into memory; `Ok(None)` on 404; errors past `limit` bytes
/// or past [`METADATA_DEADLINE`].
pub fn get_small(url: &str, limit: u64) -> Result<Option<Vec<u8>>, Error> {
    get_small_within(url, limit, METADATA_DEADLINE)
}

/// [`get_small`] with its own deadline.
pub fn get_small_within(
    url: &str,
    limit: u64,
    deadline: Duration,
) -> Result<Option<Vec<u8>>, Error> {
    let t = Transfer::new(url, deadline);
    let resp = match t.get().call() {
        Ok(r) => r,
        Err(ureq::Error::Status(404, _)) => return Ok(None),
        Err(e) => return Err(t.err(e)),
    };
    let mut body = Vec::new();
    resp.into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| t.err(e))?;
    if body.len() as u64 > limit {
        return Err(err(
            url,
            format!("more than {limit} bytes: refusing an oversized response"),
        ));
    }
    Ok(Some(body))
}

/// Bytes handed over per chunk.
pub const CHUNK: usize = 1 << 20;

/// Streams `url` from byte `offset` into `sink` in chunks of up to
/// [`CHUNK`] bytes (the sink may hand a used buffer back for reuse), never more than `limit` bytes in total (one byte past
/// it is passed on, so the caller sees an oversized payload); returns the
/// bytes received. The transfer must end within the
/// [`payload_deadline`] of the bytes left.
pub fn stream(
    url: &str,
    offset: u64,
    limit: u64,
    sink: &mut dyn FnMut(Vec<u8>) -> Result<Option<Vec<u8>>, Error>,
) -> Result<u64, Error> {
    let deadline = payload_deadline(limit.saturating_sub(offset));
    stream_within(url, offset, limit, deadline, sink)
}

/// [`stream`] with its own deadline.
pub fn stream_within(
    url: &str,
    offset: u64,
    limit: u64,
    deadline: Duration,
    sink: &mut dyn FnMut(Vec<u8>) -> Result<Option<Vec<u8>>, Error>,
) -> Result<u64, Error> {
    let t = Transfer::new(url, deadline);
    let mut req = t.get();
    if offset > 0 {
        req = req.set("Range", &format!("bytes={offset}-"));
    }
    let resp = req.call().map_err(|e| t.err(e))?;
    if offset > 0 && resp.status() != 206 {
        return Err(err(
            url,
            format!(
                "asked for bytes from {offset}, got status {} (the server does not do Range requests)",
                resp.status()
            ),
        ));
    }
    let mut r = resp.into_reader().take(limit.saturating_sub(offset) + 1);
    let mut got = 0u64;
    let mut spare: Option<Vec<u8>> = None;
    loop {
        // Reuse a buffer the sink handed back: no fresh pages per chunk.
        let mut buf = spare.take().unwrap_or_else(|| Vec::with_capacity(CHUNK));
        buf.clear();
        (&mut r)
            .take(CHUNK as u64)
            .read_to_end(&mut buf)
            .map_err(|e| t.err(e))?;
        if buf.is_empty() {
            return Ok(got);
        }
        got += buf.len() as u64;
        spare = sink(buf)?;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use crate::Error;

    /// A server that answers one request with a long body, one byte every
    /// 50 ms: never idle long enough for a read timeout.
    fn trickler() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/payloads/slow", l.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
            for _ in 0..100_000 {
                if s.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        url
    }

    fn assert_deadline(e: Error, url: &str, started: Instant) {
        assert!(
            matches!(&e, Error::Deadline { url: u, secs: 1 } if u == url),
            "{e}"
        );
        assert!(e.to_string().contains("not finished after 1 s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "{e}");
    }

    #[test]
    fn a_trickling_metadata_server_hits_the_deadline() {
        let url = trickler();
        let started = Instant::now();
        let e = super::get_small_within(&url, 1 << 20, Duration::from_secs(1)).unwrap_err();
        assert_deadline(e, &url, started);
    }

    #[test]
    fn a_trickling_payload_server_hits_the_deadline() {
        let url = trickler();
        let started = Instant::now();
        let mut got = 0;
        let e = super::stream_within(&url, 0, 100_000, Duration::from_secs(1), &mut |c| {
            got += c.len();
            Ok(None)
        })
        .unwrap_err();
        assert_deadline(e, &url, started);
        assert!(got < 100_000);
    }

    #[test]
    fn payload_deadlines_grow_with_size() {
        assert_eq!(super::payload_deadline(0), Duration::from_secs(60));
        // 1 GiB at the 128 KiB/s floor: 8192 s more.
        assert_eq!(
            super::payload_deadline(1 << 30),
            Duration::from_secs(60 + 8192)
        );
    }
}
