//! `herd serve`: a small static HTTP/1.1 file server for release
//! repositories (GET and HEAD, byte ranges for resumed downloads and delta
//! updates, several ranges in one `multipart/byteranges` answer). For local
//! use and tests; production puts the same files behind nginx, S3 or a CDN.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

/// Serves `root` on `listen` until the process ends.
pub fn serve(root: &Path, listen: &str) -> Result<()> {
    let root = Arc::new(
        root.canonicalize()
            .with_context(|| format!("repository {}", root.display()))?,
    );
    let l = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!(
        "herd serve: serving {} on http://{}",
        root.display(),
        l.local_addr()?
    );
    for conn in l.incoming() {
        let Ok(conn) = conn else { continue };
        let root = root.clone();
        std::thread::spawn(move || {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            if let Err(e) = handle(&root, conn) {
                tracing::debug!("{peer}: {e:#}");
            }
        });
    }
    Ok(())
}

/// The file for a request path, or None when it escapes the root.
fn resolve(root: &Path, url: &str) -> Option<PathBuf> {
    let path = url.split(['?', '#']).next()?.trim_start_matches('/');
    let rel = Path::new(path);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}

/// Ranges asked in one request at most; more are answered with the whole
/// file (as a server may).
const MAX_RANGES: usize = 64;

/// `bytes=A-B,C-,…` → the satisfiable ranges (start, end inclusive); None
/// when none is (416), Some(empty) when there are too many to serve.
fn parse_ranges(v: &str, len: u64) -> Option<Vec<(u64, u64)>> {
    let specs: Vec<&str> = v.trim().strip_prefix("bytes=")?.split(',').collect();
    if specs.len() > MAX_RANGES {
        return Some(Vec::new());
    }
    let ranges: Vec<(u64, u64)> = specs
        .iter()
        .filter_map(|spec| {
            let (a, b) = spec.trim().split_once('-')?;
            let start: u64 = a.parse().ok()?;
            let end: u64 = if b.is_empty() {
                len.checked_sub(1)?
            } else {
                b.parse::<u64>().ok()?.min(len.checked_sub(1)?)
            };
            (start <= end).then_some((start, end))
        })
        .collect();
    (!ranges.is_empty()).then_some(ranges)
}

/// The boundary of this server's multi-range answers.
const BOUNDARY: &str = "herd-byteranges-7f3c1a";

fn handle(root: &Path, conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, url) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("").to_string(),
        );
        let mut range = None;
        let mut close = line.contains("HTTP/1.0");
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.trim().to_string()),
                    "connection" if v.trim().eq_ignore_ascii_case("close") => close = true,
                    _ => {}
                }
            }
        }
        let reply = |w: &mut TcpStream, code: &str, extra: &str, len: u64| -> std::io::Result<()> {
            write!(
                w,
                "HTTP/1.1 {code}\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\n{extra}\r\n"
            )
        };
        if method != "GET" && method != "HEAD" {
            reply(&mut w, "405 Method Not Allowed", "", 0)?;
            continue;
        }
        let file = resolve(root, &url).and_then(|p| {
            std::fs::File::open(&p)
                .ok()
                .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
        });
        let Some(mut f) = file else {
            reply(&mut w, "404 Not Found", "", 0)?;
            tracing::info!("{method} {url} 404");
            if close {
                return Ok(());
            }
            continue;
        };
        let len = f.metadata()?.len();
        let ranges = match range.as_deref().map(|v| parse_ranges(v, len)) {
            None => Vec::new(),
            Some(Some(r)) => r,
            Some(None) => {
                reply(
                    &mut w,
                    "416 Range Not Satisfiable",
                    &format!("Content-Range: bytes */{len}\r\n"),
                    0,
                )?;
                continue;
            }
        };
        // One reply for the three cases: whole file, one range, several
        // ranges (multipart/byteranges).
        let code = if ranges.is_empty() {
            "200 OK"
        } else {
            "206 Partial Content"
        };
        let (extra, body, what) = match ranges.as_slice() {
            [] => (String::new(), len, format!("{len} bytes")),
            &[(s, e)] => (
                format!("Content-Range: bytes {s}-{e}/{len}\r\n"),
                e + 1 - s,
                format!("{} bytes", e + 1 - s),
            ),
            many => (
                format!("Content-Type: multipart/byteranges; boundary={BOUNDARY}\r\n"),
                herd_byteranges::body_len(BOUNDARY, many, len),
                format!("{} ranges", many.len()),
            ),
        };
        reply(&mut w, code, &extra, body)?;
        if method == "GET" {
            let mut copy = |a: u64, n: u64, w: &mut dyn Write| -> std::io::Result<()> {
                f.seek(SeekFrom::Start(a))?;
                std::io::copy(&mut (&mut f).take(n), w).map(|_| ())
            };
            match ranges.as_slice() {
                [] => copy(0, len, &mut w)?,
                &[(s, e)] => copy(s, e + 1 - s, &mut w)?,
                many => herd_byteranges::write_body(&mut w, BOUNDARY, many, len, &mut copy)?,
            }
        }
        w.flush()?;
        tracing::info!("{method} {url} {code} {what}");
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_ranges() {
        let parse_range = |v, len| parse_ranges(v, len).map(|r: Vec<_>| r[0]);
        let r = Path::new("/repo");
        assert_eq!(
            resolve(r, "/channels/stable.json"),
            Some(PathBuf::from("/repo/channels/stable.json"))
        );
        assert_eq!(resolve(r, "/../etc/passwd"), None);
        assert_eq!(resolve(r, "/payloads/../../x"), None);
        assert_eq!(parse_range("bytes=10-", 100), Some((10, 99)));
        assert_eq!(parse_range("bytes=10-19", 100), Some((10, 19)));
        assert_eq!(parse_range("bytes=10-999", 100), Some((10, 99)));
        assert_eq!(parse_range("bytes=200-", 100), None);
        assert_eq!(parse_range("items=1-2", 100), None);
        assert_eq!(
            parse_ranges("bytes=0-9, 50-59,200-300,90-", 100),
            Some(vec![(0, 9), (50, 59), (90, 99)])
        );
        assert_eq!(parse_ranges("bytes=200-300,400-", 100), None);
        let many = format!("bytes={}", vec!["1-2"; 65].join(","));
        assert_eq!(parse_ranges(&many, 100), Some(vec![]));
    }
}
