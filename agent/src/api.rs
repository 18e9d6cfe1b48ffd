//! The agent's local API: HTTP/1.1 with JSON answers on a Unix socket
//! (`/run/herd/agent.sock`, mode 0600: root only). One request per
//! connection.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/pods` | every pod's status (JSON array) |
//! | `GET /v1/pods/NAME` | one pod (404 when unknown) |
//! | `GET /v1/pods/NAME/logs/CONTAINER` | the container's log (text, last 1 MiB) |
//! | `GET /v1/events` | recent events, oldest first |
//! | `GET /v1/health` | `{"ok":true}` |
//! | `GET /v1/measurements[?nonce=HEX]` | PCRs, herd-init's event log, a TPM quote over the nonce (docs/MEASURED-BOOT.md) |

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::logs;
use crate::status::Status;

/// A request line that is not one the API serves.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not `METHOD PATH HTTP/1.x`.
    #[error("malformed request line")]
    Malformed,
    /// Only GET is served.
    #[error("method {0} not allowed")]
    Method(String),
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v1/pods`
    Pods,
    /// `/v1/pods/NAME`
    Pod(String),
    /// `/v1/pods/NAME/logs/CONTAINER`
    Logs(String, String),
    /// `/v1/events`
    Events,
    /// `/v1/health`
    Health,
    /// `/v1/measurements`, with the nonce of `?nonce=HEX` if any.
    Measurements(Result<Option<Vec<u8>>, String>),
    /// Anything else.
    NotFound,
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses a request line, e.g. `GET /v1/pods HTTP/1.1`.
pub fn parse_request_line(line: &str) -> Result<Route, RequestError> {
    let mut parts = line.trim_end_matches(['\r', '\n']).split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(RequestError::Malformed);
    }
    if method != "GET" {
        return Err(RequestError::Method(method.chars().take(16).collect()));
    }
    let path = target.split('?').next().unwrap_or_default();
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    Ok(match segs.as_slice() {
        ["v1", "pods"] => Route::Pods,
        ["v1", "pods", p] if segment_ok(p) => Route::Pod(p.to_string()),
        ["v1", "pods", p, "logs", c] if segment_ok(p) && segment_ok(c) => {
            Route::Logs(p.to_string(), c.to_string())
        }
        ["v1", "events"] => Route::Events,
        ["v1", "health"] => Route::Health,
        ["v1", "measurements"] => {
            Route::Measurements(crate::measured::nonce_of(target).map_err(|e| e.to_string()))
        }
        _ => Route::NotFound,
    })
}

fn respond(s: &mut UnixStream, code: u16, kind: &str, body: &[u8]) {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
}

fn json(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("status serialises")
}

fn serve_one(mut s: UnixStream, status: &Status, log_dir: &Path) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut r = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    })
    .take(16 * 1024);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    // Skip the headers.
    let mut h = String::new();
    while r.read_line(&mut h).is_ok_and(|n| n > 2) {
        h.clear();
    }
    let not_found = |s: &mut UnixStream, what: &str| {
        respond(
            s,
            404,
            "application/json",
            &json(&serde_json::json!({"error": what})),
        )
    };
    match parse_request_line(&line) {
        Err(e @ RequestError::Method(_)) => respond(
            &mut s,
            405,
            "application/json",
            &json(&serde_json::json!({"error": e.to_string()})),
        ),
        Err(e) => respond(
            &mut s,
            400,
            "application/json",
            &json(&serde_json::json!({"error": e.to_string()})),
        ),
        Ok(Route::Pods) => respond(&mut s, 200, "application/json", &json(&status.pods())),
        Ok(Route::Pod(p)) => match status.pod(&p) {
            Some(p) => respond(&mut s, 200, "application/json", &json(&p)),
            None => not_found(&mut s, &format!("no pod {p}")),
        },
        Ok(Route::Logs(p, c)) => match logs::read_tail(log_dir, &p, &c, 1 << 20) {
            Ok(b) => respond(&mut s, 200, "text/plain; charset=utf-8", &b),
            Err(_) => not_found(&mut s, &format!("no log for container {c} of pod {p}")),
        },
        Ok(Route::Events) => respond(&mut s, 200, "application/json", &json(&status.events())),
        Ok(Route::Health) => respond(&mut s, 200, "application/json", b"{\"ok\":true}"),
        Ok(Route::Measurements(nonce)) => {
            let r = nonce.and_then(|n| {
                crate::measured::report(herd_tpm::DEVICE, herd_node::measure::LOG, n.as_deref())
                    .map_err(|e| e.to_string())
            });
            match r {
                Ok(r) => respond(&mut s, 200, "application/json", &json(&r)),
                Err(e) => not_found(&mut s, &e),
            }
        }
        Ok(Route::NotFound) => not_found(&mut s, "no such endpoint (see docs/PODS.md)"),
    }
}

/// Serves the API on `socket` from a thread of its own.
pub fn serve(socket: &Path, status: Status, log_dir: PathBuf) -> std::io::Result<()> {
    if let Some(d) = socket.parent() {
        std::fs::create_dir_all(d)?;
    }
    let _ = std::fs::remove_file(socket);
    let l = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for conn in l.incoming().flatten() {
                serve_one(conn, &status, &log_dir);
            }
        })?;
    Ok(())
}

/// Errors of the API client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket cannot be reached.
    #[error("cannot reach herd-agent at {socket}: {cause} (is the agent running? are you root?)")]
    Connect {
        /// the socket
        socket: String,
        /// why
        cause: std::io::Error,
    },
    /// The answer was an error.
    #[error("{0}")]
    Status(String),
    /// The answer could not be read.
    #[error("reading the agent's answer: {0}")]
    Io(#[from] std::io::Error),
}

/// GETs `path` from the agent at `socket`: the body of a 200 answer.
pub fn get(socket: &Path, path: &str) -> Result<Vec<u8>, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|cause| ClientError::Connect {
        socket: socket.display().to_string(),
        cause,
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: herd-agent\r\n\r\n")?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ClientError::Status("the agent's answer has no header end".into()))?;
    let body = all.split_off(split + 4);
    let head = String::from_utf8_lossy(&all);
    if !head.starts_with("HTTP/1.1 200") {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| head.lines().next().unwrap_or_default().to_string());
        return Err(ClientError::Status(msg));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            parse_request_line("GET /v1/pods HTTP/1.1\r\n"),
            Ok(Route::Pods)
        );
        assert_eq!(
            parse_request_line("GET /v1/pods/web HTTP/1.0"),
            Ok(Route::Pod("web".into()))
        );
        assert_eq!(
            parse_request_line("GET /v1/pods/web/logs/httpd?tail=1 HTTP/1.1"),
            Ok(Route::Logs("web".into(), "httpd".into()))
        );
        assert_eq!(
            parse_request_line("GET /v1/pods/../etc HTTP/1.1"),
            Ok(Route::NotFound)
        );
        assert_eq!(
            parse_request_line("POST /v1/pods HTTP/1.1"),
            Err(RequestError::Method("POST".into()))
        );
        assert_eq!(
            parse_request_line("GET /v1/pods"),
            Err(RequestError::Malformed)
        );
        assert_eq!(parse_request_line(""), Err(RequestError::Malformed));
        assert_eq!(
            parse_request_line("GET /v1/measurements?nonce=00ff HTTP/1.1"),
            Ok(Route::Measurements(Ok(Some(vec![0, 255]))))
        );
        assert_eq!(
            parse_request_line("GET /v1/measurements HTTP/1.1"),
            Ok(Route::Measurements(Ok(None)))
        );
        assert!(matches!(
            parse_request_line("GET /v1/measurements?nonce=zz HTTP/1.1"),
            Ok(Route::Measurements(Err(_)))
        ));
    }

    #[test]
    fn serves_status_over_the_socket() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("agent.sock");
        let status = Status::default();
        status.event("web", "Started", "1 container(s) running");
        serve(&sock, status, t.path().join("logs")).unwrap();
        let ev: serde_json::Value =
            serde_json::from_slice(&get(&sock, "/v1/events").unwrap()).unwrap();
        assert_eq!(ev[0]["reason"], "Started");
        assert_eq!(get(&sock, "/v1/pods").unwrap(), b"[]");
        if !Path::new(herd_tpm::DEVICE).exists() {
            let e = get(&sock, "/v1/measurements").unwrap_err();
            assert!(e.to_string().contains("has no TPM"), "{e}");
        }
        let e = get(&sock, "/v1/pods/nope").unwrap_err();
        assert_eq!(e.to_string(), "no pod nope");
        assert!(get(&t.path().join("missing.sock"), "/v1/pods")
            .unwrap_err()
            .to_string()
            .contains("is the agent running"));
    }
}
