//! HTTP and HTTPS GETs with bounds: metadata capped, payloads stopped at
//! their signed size, resumable with Range, and every transfer within an
//! overall deadline (a server that trickles bytes cannot hold the
//! updater). HTTPS trust is in [`crate::tls`].

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::tls::Tls;
use crate::Error;
use herd_byteranges as byteranges;

/// How to reach one repository: plain HTTP, or HTTPS with its trust
/// ([`Tls`]) and never a step down to plain HTTP (a redirect from https to
/// http is refused).
#[derive(Clone)]
pub struct Client {
    tls: Option<Tls>,
}

impl Client {
    /// A client for `repository` (`http://` or `https://`); for https,
    /// `ca_file` pins the CA (else the built-in Mozilla roots).
    pub fn new(repository: &str, ca_file: Option<&Path>) -> Result<Client, Error> {
        let https = repository.starts_with("https://");
        if !https && ca_file.is_some() {
            return Err(Error::Config(format!(
                "a ca_file pins the CA of an https:// repository, but the repository is {repository:?}: write https://, or remove ca_file"
            )));
        }
        Ok(Client {
            tls: if https {
                Some(Tls::new(ca_file)?)
            } else {
                None
            },
        })
    }

    /// The client for the configured repository.
    pub fn for_config(cfg: &crate::config::UpdateConfig) -> Result<Client, Error> {
        Client::new(&cfg.repository, cfg.ca_file.as_deref().map(Path::new))
    }
}

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
#[derive(Clone)]
struct Transfer {
    client: Client,
    url: String,
    start: Instant,
    deadline: Duration,
}

impl Transfer {
    fn new(client: &Client, url: &str, deadline: Duration) -> Self {
        Transfer {
            client: client.clone(),
            url: url.to_string(),
            start: Instant::now(),
            deadline,
        }
    }

    /// A GET whose connect, and each read and write, are bounded (never
    /// past the deadline).
    fn agent(&self) -> ureq::AgentBuilder {
        let a = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(30).min(self.deadline))
            .timeout_write(Duration::from_secs(30).min(self.deadline));
        match &self.client.tls {
            // Every hop, redirects included, stays on https.
            Some(t) => a.tls_config(t.config.clone()).https_only(true),
            None => a,
        }
    }

    /// A GET bounded as a whole by the deadline (ureq checks it at every
    /// read: fine for small bodies, see [`Client::stream_within`] for payloads).
    fn get(&self) -> ureq::Request {
        self.request(self.agent().timeout(self.deadline))
    }

    fn request(&self, agent: ureq::AgentBuilder) -> ureq::Request {
        agent.build().get(&self.url).set("Connection", "close")
    }

    fn passed(&self) -> bool {
        self.start.elapsed() >= self.deadline
    }

    fn deadline_error(&self) -> Error {
        Error::Deadline {
            url: self.url.clone(),
            secs: self.deadline.as_secs_f64().ceil() as u64,
        }
    }

    /// The error for `m`: [`Error::Deadline`] once the deadline is (all but) reached.
    fn err(&self, m: impl ToString) -> Error {
        if self.start.elapsed() + Duration::from_millis(100) >= self.deadline {
            return self.deadline_error();
        }
        err(&self.url, m)
    }

    /// The error for a failed request: a refused TLS connection or a
    /// redirect to plain HTTP says so, and what to do.
    fn call_err(&self, e: ureq::Error) -> Error {
        if let ureq::Error::Transport(t) = &e {
            match t.kind() {
                ureq::ErrorKind::InsecureRequestHttpsOnly => {
                    return err(
                        &self.url,
                        format!("the server redirected to a plain http:// URL ({e}): refused, an https repository is never left for plain HTTP; fix the redirect on the server"),
                    )
                }
                ureq::ErrorKind::ConnectionFailed => {
                    if let Some(tls) = &self.client.tls {
                        let host = t.url().and_then(|u| u.host_str()).unwrap_or_else(|| host(&self.url));
                        if let Some(m) = crate::tls::explain(t, host, &tls.trust) {
                            return err(&self.url, m);
                        }
                    }
                }
                _ => {}
            }
        }
        self.err(e)
    }
}

/// The host of `url` (`https://HOST[:PORT]/…`), for messages.
fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn err(url: &str, m: impl ToString) -> Error {
    Error::Http {
        url: url.to_string(),
        message: m.to_string(),
    }
}

impl Client {
    /// GETs `url` into memory; `Ok(None)` on 404; errors past `limit` bytes
    /// or past [`METADATA_DEADLINE`].
    pub fn get_small(&self, url: &str, limit: u64) -> Result<Option<Vec<u8>>, Error> {
        self.get_small_within(url, limit, METADATA_DEADLINE)
    }

    /// [`Client::get_small`] with its own deadline.
    pub fn get_small_within(
        &self,
        url: &str,
        limit: u64,
        deadline: Duration,
    ) -> Result<Option<Vec<u8>>, Error> {
        let t = Transfer::new(self, url, deadline);
        let resp = match t.get().call() {
            Ok(r) => r,
            Err(ureq::Error::Status(404, _)) => return Ok(None),
            Err(e) => return Err(t.call_err(e)),
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
}

/// What a Range GET got.
#[derive(Debug)]
pub enum Ranged {
    /// Exactly the bytes asked for (206 Partial Content).
    Bytes(Vec<u8>),
    /// The server answered with this status instead of 206: it does not do
    /// Range requests (a 200 would send the whole file).
    Refused(u16),
}

impl Client {
    /// GETs bytes `start..start + len` of `url` into memory (a delta update's
    /// missing range). The answer must be 206 with exactly those bytes; any
    /// other success status is [`Ranged::Refused`] and the body is not read.
    pub fn get_range(&self, url: &str, start: u64, len: u64) -> Result<Ranged, Error> {
        let t = Transfer::new(self, url, payload_deadline(len));
        let last = start + len.max(1) - 1;
        let resp = t
            .get()
            .set("Range", &format!("bytes={start}-{last}"))
            .call()
            .map_err(|e| t.call_err(e))?;
        if resp.status() != 206 {
            return Ok(Ranged::Refused(resp.status()));
        }
        let want = format!("bytes {start}-{last}/");
        let got = resp.header("Content-Range").unwrap_or("-").to_string();
        if !got.starts_with(&want) {
            return Err(err(
            url,
            format!("asked for bytes {start}-{last}, the server sent Content-Range {got}: refusing bytes from elsewhere in the file"),
        ));
        }
        let mut body = Vec::with_capacity(len as usize);
        resp.into_reader()
            .take(len + 1)
            .read_to_end(&mut body)
            .map_err(|e| t.err(e))?;
        if body.len() as u64 != len {
            return Err(err(
                url,
                format!(
                    "asked for {len} bytes from byte {start}, got {}",
                    body.len()
                ),
            ));
        }
        Ok(Ranged::Bytes(body))
    }

    /// GETs several ranges `(start, len)` of `url` in one request (`Range:
    /// bytes=A-B,C-D,…`), their bytes in `want`'s order. A server that
    /// cannot answer that way (any status but 206, a body that is not
    /// `multipart/byteranges` or a single range holding all of them, parts
    /// that miss a range, more than the ranges plus part headers) gives
    /// [`MultiRanged::Unusable`] and the caller asks one range per request;
    /// transport errors are errors.
    pub fn get_ranges(&self, url: &str, want: &[(u64, u64)]) -> Result<MultiRanged, Error> {
        let total: u64 = want.iter().map(|w| w.1).sum();
        let spec: Vec<String> = want
            .iter()
            .map(|&(s, l)| format!("{s}-{}", s + l.max(1) - 1))
            .collect();
        let t = Transfer::new(self, url, payload_deadline(total));
        let resp = t
            .get()
            .set("Range", &format!("bytes={}", spec.join(",")))
            .call()
            .map_err(|e| t.call_err(e))?;
        if resp.status() != 206 {
            return Ok(MultiRanged::Unusable(format!(
                "status {} instead of 206",
                resp.status()
            )));
        }
        let ctype = resp.header("Content-Type").unwrap_or("").to_string();
        let single = resp
            .header("Content-Range")
            .and_then(byteranges::content_range);
        // The ranges, each part's headers (a few hundred bytes at most from
        // any server seen), the delimiters.
        let limit = total + 512 * want.len() as u64 + 4096;
        let mut body = Vec::with_capacity(total as usize);
        resp.into_reader()
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| t.err(e))?;
        if body.len() as u64 > limit {
            return Ok(MultiRanged::Unusable(format!(
                "more than {limit} bytes for {total} bytes asked"
            )));
        }
        let parts = match (byteranges::boundary(&ctype), single) {
            (Ok(b), _) => match byteranges::parse(&body, b) {
                Ok(p) => p,
                Err(e) => return Ok(MultiRanged::Unusable(e.to_string())),
            },
            // One range holding them all (a server may coalesce).
            (Err(_), Some((a, b))) if b - a + 1 == body.len() as u64 => vec![byteranges::Part {
                start: a,
                bytes: &body,
            }],
            (Err(e), _) => return Ok(MultiRanged::Unusable(e.to_string())),
        };
        Ok(match byteranges::pick(&parts, want) {
            Ok(got) => MultiRanged::Bytes(got),
            Err(e) => MultiRanged::Unusable(e.to_string()),
        })
    }
}

/// What a multi-range GET got.
#[derive(Debug)]
pub enum MultiRanged {
    /// The bytes of each range asked for, in the order asked.
    Bytes(Vec<Vec<u8>>),
    /// Why this server's answer cannot be used (ask one range at a time).
    Unusable(String),
}

/// Bytes handed over per chunk.
pub const CHUNK: usize = 1 << 20;

impl Client {
    /// Streams `url` from byte `offset` into `sink` in chunks of up to
    /// [`CHUNK`] bytes (the sink may hand a used buffer back for reuse), never
    /// more than `limit` bytes in total (one byte past it is passed on, so the
    /// caller sees an oversized payload); returns the bytes received. The
    /// transfer must end within the [`payload_deadline`] of the bytes left.
    pub fn stream(
        &self,
        url: &str,
        offset: u64,
        limit: u64,
        sink: &mut dyn FnMut(Vec<u8>) -> Result<Option<Vec<u8>>, Error>,
    ) -> Result<u64, Error> {
        let deadline = payload_deadline(limit.saturating_sub(offset));
        self.stream_within(url, offset, limit, deadline, sink)
    }
}

/// What the reading thread hands over: a chunk, or why it stopped.
type Piece = Result<Vec<u8>, Error>;

impl Client {
    /// [`Client::stream`] with its own deadline.
    ///
    /// The GET runs on its own thread while `sink` runs on the caller's, so
    /// the network and the disk overlap. The thread's request has no ureq
    /// overall timeout: with one, ureq sets the socket's timeouts again before
    /// every 8 KiB read (two `setsockopt` calls each, ~65000 for 256 MiB). The
    /// deadline is kept here instead: the caller stops waiting at the deadline
    /// whatever the thread is doing, and the thread checks it between reads and
    /// stops too (a server that stalls completely is left by ureq's read
    /// timeout).
    pub fn stream_within(
        &self,
        url: &str,
        offset: u64,
        limit: u64,
        deadline: Duration,
        sink: &mut dyn FnMut(Vec<u8>) -> Result<Option<Vec<u8>>, Error>,
    ) -> Result<u64, Error> {
        let t = Transfer::new(self, url, deadline);
        let (to_sink, pieces) = std::sync::mpsc::sync_channel::<Piece>(2);
        let (give_back, spares) = std::sync::mpsc::channel::<Vec<u8>>();
        let reader = Reader {
            t: t.clone(),
            offset,
            left: limit.saturating_sub(offset) + 1,
        };
        std::thread::Builder::new()
            .name("herd-update-get".into())
            .spawn(move || reader.run(&to_sink, &spares))
            .map_err(|e| err(url, format!("starting the download thread: {e}")))?;
        let mut got = 0u64;
        loop {
            let left = deadline.saturating_sub(t.start.elapsed());
            match pieces.recv_timeout(left) {
                Ok(Ok(chunk)) => {
                    got += chunk.len() as u64;
                    if let Some(spare) = sink(chunk)? {
                        // The reader may be gone already; the buffer is then freed.
                        let _ = give_back.send(spare);
                    }
                }
                Ok(Err(e)) => return Err(e),
                // The reader ends the transfer by hanging up.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(got),
                // Dropping the channels tells the reader to stop.
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Err(t.deadline_error()),
            }
        }
    }
}

/// The payload GET, on its own thread.
struct Reader {
    t: Transfer,
    offset: u64,
    /// Bytes still wanted (one past the limit, to see an oversized payload).
    left: u64,
}

impl Reader {
    /// Sends chunks until the body ends, an error, the deadline, or the
    /// receiver hanging up (it gave up, or the sink failed).
    fn run(
        mut self,
        to_sink: &std::sync::mpsc::SyncSender<Piece>,
        spares: &std::sync::mpsc::Receiver<Vec<u8>>,
    ) {
        let mut r = match self.open() {
            Ok(r) => r,
            Err(e) => {
                let _ = to_sink.send(Err(e));
                return;
            }
        };
        loop {
            // Reuse a buffer the sink handed back: no fresh pages per chunk.
            let mut buf = spares.try_recv().unwrap_or_default();
            // Full length up front (zeroed once per buffer, not per chunk);
            // cut to what was read below.
            buf.resize(CHUNK, 0);
            let want = (CHUNK as u64).min(self.left) as usize;
            let mut n = 0;
            while n < want {
                if self.t.passed() {
                    let _ = to_sink.send(Err(self.t.deadline_error()));
                    return;
                }
                match r.read(&mut buf[n..want]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = to_sink.send(Err(self.t.err(e)));
                        return;
                    }
                }
            }
            if n == 0 {
                return;
            }
            buf.truncate(n);
            self.left -= n as u64;
            if to_sink.send(Ok(buf)).is_err() || self.left == 0 {
                return;
            }
        }
    }

    /// Sends the GET and checks the answer; returns the body.
    fn open(&self) -> Result<Box<dyn Read + Send + Sync + 'static>, Error> {
        // No overall timeout (see [`stream_within`]): the deadline is kept
        // by this thread and the caller.
        let t = &self.t;
        let mut req = t.request(t.agent());
        if self.offset > 0 {
            req = req.set("Range", &format!("bytes={}-", self.offset));
        }
        let resp = req.call().map_err(|e| t.call_err(e))?;
        if self.offset > 0 && resp.status() != 206 {
            return Err(err(
                &t.url,
                format!(
                    "asked for bytes from {}, got status {} (the server does not do Range requests)",
                    self.offset,
                    resp.status()
                ),
            ));
        }
        Ok(resp.into_reader())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use crate::Error;

    fn plain() -> super::Client {
        super::Client::new("http://127.0.0.1", None).unwrap()
    }

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
        let e = plain()
            .get_small_within(&url, 1 << 20, Duration::from_secs(1))
            .unwrap_err();
        assert_deadline(e, &url, started);
    }

    #[test]
    fn a_trickling_payload_server_hits_the_deadline() {
        let url = trickler();
        let started = Instant::now();
        let mut got = 0;
        let e = plain()
            .stream_within(&url, 0, 100_000, Duration::from_secs(1), &mut |c| {
                got += c.len();
                Ok(None)
            })
            .unwrap_err();
        assert_deadline(e, &url, started);
        assert!(got < 100_000);
    }

    /// A server that sends the headers of a long body, then nothing.
    fn staller() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/payloads/stalled", l.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nxyz");
            std::thread::sleep(Duration::from_secs(30));
        });
        url
    }

    #[test]
    fn a_stalled_payload_server_hits_the_deadline() {
        let url = staller();
        let started = Instant::now();
        let e = plain()
            .stream_within(&url, 0, 100_000, Duration::from_secs(1), &mut |_| Ok(None))
            .unwrap_err();
        assert_deadline(e, &url, started);
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
