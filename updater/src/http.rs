//! HTTP GETs with bounds: metadata capped, payloads stopped at their
//! signed size, resumable with Range.

use std::io::Read;
use std::time::Duration;

use crate::Error;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(30))
        .build()
}

fn err(url: &str, m: impl ToString) -> Error {
    Error::Http {
        url: url.to_string(),
        message: m.to_string(),
    }
}

/// GETs `url` into memory; `Ok(None)` on 404; errors past `limit` bytes.
pub fn get_small(url: &str, limit: u64) -> Result<Option<Vec<u8>>, Error> {
    let resp = match agent().get(url).set("Connection", "close").call() {
        Ok(r) => r,
        Err(ureq::Error::Status(404, _)) => return Ok(None),
        Err(e) => return Err(err(url, e)),
    };
    let mut body = Vec::new();
    resp.into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| err(url, e))?;
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
/// bytes received.
pub fn stream(
    url: &str,
    offset: u64,
    limit: u64,
    sink: &mut dyn FnMut(Vec<u8>) -> Result<Option<Vec<u8>>, Error>,
) -> Result<u64, Error> {
    let mut req = agent().get(url).set("Connection", "close");
    if offset > 0 {
        req = req.set("Range", &format!("bytes={offset}-"));
    }
    let resp = req.call().map_err(|e| err(url, e))?;
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
            .map_err(|e| err(url, e))?;
        if buf.is_empty() {
            return Ok(got);
        }
        got += buf.len() as u64;
        spare = sink(buf)?;
    }
}
