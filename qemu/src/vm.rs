//! Running VMs.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::command::{prepare, Prepared};
use crate::signals::{self, Catch};
use crate::{io, qmp, Error, VmConfig};

/// How [`run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// QEMU exited with status 0 (the guest powered off).
    pub success: bool,
    /// The timeout hit and the VM was stopped.
    pub timed_out: bool,
    /// QEMU's exit code, if it exited by itself.
    pub code: Option<i32>,
    /// The first SIGTERM, SIGINT or SIGHUP the runner got, if any.
    pub signal: Option<i32>,
    /// QEMU had to be quit after a signal, and why.
    pub forced: Option<Forced>,
}

/// Why QEMU was quit instead of the guest powering off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// The guest did not power off within the grace period.
    Grace,
    /// A second signal came (this one).
    SecondSignal(i32),
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Stops QEMU at once: QMP `quit`, SIGKILL if it has not exited 5 s later.
fn quit(qmp_sock: &Path, child: &mut Child) {
    if let Err(e) = qmp::execute(qmp_sock, "quit") {
        // QEMU may close the socket before it answers `quit`.
        debug!("QMP quit: {e}");
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    warn!("QEMU did not quit within 5 s; killing it");
    kill(child);
}

/// How often the power button is pressed again while waiting: a press
/// before the guest watches the button is lost, as on hardware.
const REPRESS: Duration = Duration::from_secs(5);

/// Boots `cfg` with the serial console on stdout and waits for QEMU to
/// exit, or for `timeout` (then the VM is killed).
///
/// SIGTERM, SIGINT and SIGHUP press the guest's ACPI power button (QMP
/// `system_powerdown`, again every 5 s) and wait up to `grace` for the
/// guest to power off, then quit QEMU; a second signal quits it at once.
/// QEMU and swtpm get SIGKILL if this process dies, and run in their own
/// process group, so a terminal's Ctrl-C comes here first. Call it from a
/// thread that is not expected to exit early (it blocks until QEMU is
/// reaped), with no other `run` in the process at the same time.
pub fn run(cfg: &VmConfig, timeout: Option<Duration>, grace: Duration) -> Result<Outcome, Error> {
    // Before anything is started, so no signal between here and the end
    // leaves a child behind.
    let signals = Catch::install()?;
    let prep = prepare(cfg, true)?;
    let mut child = prep
        .qemu()
        .stdin(Stdio::null())
        .spawn()
        .map_err(io("starting qemu-system-x86_64"))?;
    let t0 = Instant::now();
    // When the first signal came, and when the button was last pressed.
    let mut stopping: Option<(Instant, Option<Instant>)> = None;
    let outcome = |signal: libc::c_int, forced| Outcome {
        success: false,
        timed_out: false,
        code: None,
        signal: (signal != 0).then_some(signal),
        forced,
    };
    loop {
        if let Some(st) = child.try_wait().map_err(io("waiting for QEMU"))? {
            return Ok(Outcome {
                success: st.success(),
                code: st.code(),
                ..outcome(signals.first(), None)
            });
        }
        let n = signals.count();
        if n >= 1 && stopping.is_none() {
            warn!(
                "got {}: pressing the guest's power button; QEMU is quit if it has not powered off within {} s (send another signal to quit now)",
                signals::name(signals.first()),
                grace.as_secs()
            );
            stopping = Some((Instant::now(), None));
        }
        if let Some((since, pressed)) = &mut stopping {
            if n >= 2 {
                quit(&prep.qmp, &mut child);
                let last = signals.last();
                return Ok(outcome(signals.first(), Some(Forced::SecondSignal(last))));
            }
            if since.elapsed() >= grace {
                quit(&prep.qmp, &mut child);
                return Ok(outcome(signals.first(), Some(Forced::Grace)));
            }
            if pressed.is_none_or(|p| p.elapsed() >= REPRESS) {
                match qmp::execute(&prep.qmp, "system_powerdown") {
                    Ok(()) => *pressed = Some(Instant::now()),
                    // QEMU may not have opened its QMP socket yet.
                    Err(e) => debug!("pressing the power button: {e}"),
                }
            }
        }
        if timeout.is_some_and(|t| t0.elapsed() >= t) {
            kill(&mut child);
            return Ok(Outcome {
                timed_out: true,
                ..outcome(signals.first(), None)
            });
        }
        std::thread::sleep(Duration::from_millis(50));
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
        let prep = prepare(cfg, false)?;
        let mut child = prep
            .qemu()
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
