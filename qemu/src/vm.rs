//! Running VMs.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::command::{prepare, Prepared, QEMU};
use crate::{io, qmp, Error, VmConfig};

/// How [`run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// QEMU exited with status 0.
    pub success: bool,
    /// The timeout hit and the VM was stopped.
    pub timed_out: bool,
    /// QEMU's exit code, if it exited.
    pub code: Option<i32>,
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Boots `cfg` with the serial console on stdout and waits for QEMU to
/// exit, or for `timeout` (then the VM is killed).
pub fn run(cfg: &VmConfig, timeout: Option<Duration>) -> Result<Outcome, Error> {
    let prep = prepare(cfg)?;
    let mut child = Command::new(QEMU)
        .args(&prep.args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(io("starting qemu-system-x86_64"))?;
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().map_err(io("waiting for QEMU"))? {
            return Ok(Outcome {
                success: st.success(),
                timed_out: false,
                code: st.code(),
            });
        }
        if timeout.is_some_and(|t| t0.elapsed() >= t) {
            kill(&mut child);
            return Ok(Outcome {
                success: false,
                timed_out: true,
                code: None,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Default)]
struct Console {
    lines: Vec<String>,
    closed: bool,
}

/// A running VM whose console is collected for tests.
pub struct Vm {
    child: Mutex<Child>,
    console: Arc<(Mutex<Console>, Condvar)>,
    prep: Prepared,
}

impl Vm {
    /// Boots `cfg`; every console line is also appended to `log`.
    pub fn start(cfg: &VmConfig, log: &Path) -> Result<Vm, Error> {
        let prep = prepare(cfg)?;
        let mut child = Command::new(QEMU)
            .args(&prep.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(io("starting qemu-system-x86_64"))?;
        let out = child.stdout.take().expect("piped stdout");
        let mut logf =
            std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
        let console: Arc<(Mutex<Console>, Condvar)> = Arc::default();
        let c = console.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = logf.write_all(&buf);
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_string();
                        let (m, cv) = &*c;
                        m.lock().unwrap().lines.push(line);
                        cv.notify_all();
                    }
                }
            }
            let (m, cv) = &*c;
            m.lock().unwrap().closed = true;
            cv.notify_all();
        });
        Ok(Vm {
            child: Mutex::new(child),
            console,
            prep,
        })
    }

    fn tail(&self) -> String {
        let c = self.console.0.lock().unwrap();
        c.lines[c.lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until a console line (any since boot) contains one of
    /// `needles`; returns which one and the line.
    pub fn wait_for_any(
        &self,
        needles: &[&str],
        timeout: Duration,
    ) -> Result<(usize, String), Error> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.console;
        let mut c = m.lock().unwrap();
        loop {
            for line in &c.lines {
                if let Some(i) = needles.iter().position(|n| line.contains(n)) {
                    return Ok((i, line.clone()));
                }
            }
            let now = Instant::now();
            if c.closed || now >= deadline {
                let why = if c.closed {
                    "the VM stopped"
                } else {
                    "timed out"
                };
                drop(c);
                return Err(Error::Console {
                    message: format!(
                        "{why} after waiting {:?} for {needles:?} on the console",
                        timeout
                    ),
                    tail: self.tail(),
                });
            }
            c = cv.wait_timeout(c, deadline - now).unwrap().0;
        }
    }

    /// Waits for a console line containing `needle`; returns the line.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, Error> {
        self.wait_for_any(&[needle], timeout).map(|(_, l)| l)
    }

    /// All console lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.console.0.lock().unwrap().lines.clone()
    }

    /// Presses the ACPI power button (QMP `system_powerdown`).
    pub fn powerdown(&self) -> Result<(), Error> {
        qmp::execute(&self.prep.qmp, "system_powerdown")
    }

    /// Stops QEMU at once (QMP `quit`).
    pub fn quit(&self) -> Result<(), Error> {
        qmp::execute(&self.prep.qmp, "quit")
    }

    /// Kills QEMU (like pulling the power cord).
    pub fn kill(&self) {
        kill(&mut self.child.lock().unwrap());
    }

    /// Waits for QEMU to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self
                .child
                .lock()
                .unwrap()
                .try_wait()
                .map_err(io("waiting for QEMU"))?
            {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(Error::Console {
                    message: format!("QEMU did not exit within {timeout:?}"),
                    tail: self.tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        kill(&mut self.child.lock().unwrap());
    }
}
