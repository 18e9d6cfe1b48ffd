//! A minimal QMP client: capabilities handshake, then one command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::Error;

/// Runs `command` (e.g. `system_powerdown`) on the QMP socket at `path`.
pub fn execute(path: &Path, command: &str) -> Result<(), Error> {
    let q = |e: std::io::Error| Error::Qmp(format!("{}: {e}", path.display()));
    let s = UnixStream::connect(path).map_err(q)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(q)?;
    let mut r = BufReader::new(s.try_clone().map_err(q)?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).map_err(q)?; // greeting
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\": \"{cmd}\"}}").map_err(q)?;
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(q)? == 0 {
                return Err(Error::Qmp(format!("connection closed during {cmd}")));
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| Error::Qmp(e.to_string()))?;
            if v.get("return").is_some() {
                break;
            }
            if let Some(e) = v.get("error") {
                return Err(Error::Qmp(format!("{cmd}: {e}")));
            }
        }
    }
    Ok(())
}
