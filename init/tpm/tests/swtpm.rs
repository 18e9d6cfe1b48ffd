//! Against a real swtpm (TPM 2.0 simulator, package swtpm) over its TCP
//! socket: extends and reads agree with the replayed event log and with
//! tpm2_pcrread (package tpm2-tools) reading the same TPM; a quote carries
//! the nonce and the digest of the quoted PCRs.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herd_tpm::{eventlog, Event, Tpm};
use sha2::{Digest, Sha256};

struct Swtpm {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn swtpm() -> Swtpm {
    let dir = tempfile::tempdir().unwrap();
    // tpm2-tools' swtpm TCTI expects the control port right after the data port.
    let port = free_port();
    let ctrl = port + 1;
    let child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.path().display()))
        .args([
            "--server",
            &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
            "--ctrl",
            &format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start swtpm (package swtpm)");
    let s = Swtpm {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("swtpm did not listen on 127.0.0.1:{port}");
}

fn connect(s: &Swtpm) -> Tpm<TcpStream> {
    let c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Tpm::new(c)
}

#[test]
fn extend_read_replay_and_tpm2_pcrread_agree() {
    let s = swtpm();
    let mut tpm = connect(&s);
    let before = tpm.pcr_read(&[15, 16]).unwrap();
    assert_eq!(before, vec![(15, [0u8; 32]), (16, [0u8; 32])]);
    let events = vec![
        Event::new(15, "usrhash", &format!("usrhash={}", "ab".repeat(32))),
        Event::new(15, "slot", "slot=a"),
        Event::new(16, "test", "debug PCR"),
    ];
    for e in &events {
        tpm.pcr_extend(e.pcr, &e.digest_bytes().unwrap()).unwrap();
    }
    let after: BTreeMap<u32, [u8; 32]> = tpm.pcr_read(&[15, 16, 0]).unwrap().into_iter().collect();
    let replayed = eventlog::replay(&BTreeMap::new(), &events).unwrap();
    assert_eq!(after[&15], replayed[&15]);
    assert_eq!(after[&16], replayed[&16]);
    // More than 8 PCRs in one read: answered in several round trips.
    let all = tpm.pcr_read(&(0..24).collect::<Vec<_>>()).unwrap();
    assert_eq!(all.len(), 24);
    assert_eq!(all[15], (15, after[&15]));
    drop(tpm);

    // An independent reader of the same TPM (swtpm serves one client at a time).
    let out = Command::new("tpm2_pcrread")
        .arg("sha256:15")
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={}", s.port),
        )
        .output()
        .expect("run tpm2_pcrread (package tpm2-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.to_ascii_lowercase().contains(&hex::encode(after[&15])),
        "{text}"
    );

    // Errors are named: PCR 24 does not exist.
    let mut tpm = connect(&s);
    assert!(tpm.pcr_extend(24, &[0; 32]).is_err());
    // Quote PCR 15 over a verifier's nonce.
    let nonce = b"verifier nonce 123";
    let q = tpm.quote(&[15], nonce).unwrap();
    let pos = q
        .attest
        .windows(nonce.len())
        .position(|w| w == nonce)
        .expect("the nonce is in the attestation");
    assert!(pos > 0);
    let pcr_digest = Sha256::digest(after[&15]);
    assert!(
        q.attest.ends_with(&pcr_digest),
        "the attestation ends with the digest of the quoted PCRs"
    );
    assert!(q.signature.len() > 64 && !q.public.is_empty());

    // The report a node's API serves: PCRs, the log, a quote over 11 and 15.
    let log: String = events.iter().map(|e| e.to_line() + "\n").collect();
    let r = tpm.report(&log, Some(b"n0nce")).unwrap();
    assert_eq!(r.pcrs.len(), 24);
    assert_eq!(r.pcrs[&15], hex::encode(after[&15]));
    assert_eq!(r.events, events);
    let q = r.quote.unwrap();
    assert_eq!(q.nonce, hex::encode(b"n0nce"));
    let mut both = Sha256::new();
    both.update([0u8; 32]); // PCR 11, untouched here
    both.update(after[&15]);
    assert!(q.attest.ends_with(&hex::encode(both.finalize())));
    assert!(tpm.report("not json\n", None).is_err());
}
