//! Supervised services: start, log forwarding, restart with back-off, stop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herd_init::backoff::Backoff;
use herd_init::config::{Restart, Service};

use crate::{info, sys};

struct Svc {
    cfg: Service,
    pid: Option<i32>,
    started: Instant,
    backoff: Backoff,
    next_start: Option<Instant>,
    done: bool,
    restarts: u32,
}

/// All services of the node.
pub struct Supervisor {
    svcs: Vec<Svc>,
    /// When a service last (re)started, or the supervisor began.
    pub last_change: Instant,
}

fn spawn(cfg: &Service) -> std::io::Result<i32> {
    let (r, w) = std::io::pipe()?;
    let mut cmd = Command::new(&cfg.exec[0]);
    cmd.args(&cfg.exec[1..])
        .env_clear()
        .env("PATH", "/usr/bin")
        .envs(&cfg.env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(w.try_clone()?)
        .stderr(w);
    sys::child_setup(&mut cmd, true);
    let child = cmd.spawn()?;
    drop(cmd);
    let pid = child.id() as i32;
    // PID 1 reaps with waitpid(-1); the Child handle is not waited on.
    drop(child);
    let name = cfg.name.clone();
    std::thread::Builder::new()
        .name(format!("log-{name}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                crate::log::service_line(&name, &line);
            }
        })?;
    Ok(pid)
}

impl Supervisor {
    /// Services from the configuration, not started yet.
    pub fn new(services: &[Service]) -> Self {
        let now = Instant::now();
        Supervisor {
            svcs: services
                .iter()
                .map(|s| Svc {
                    cfg: s.clone(),
                    pid: None,
                    started: now,
                    backoff: Backoff::new(),
                    next_start: Some(now),
                    done: false,
                    restarts: 0,
                })
                .collect(),
            last_change: now,
        }
    }

    /// Starts every service whose (re)start time has come.
    pub fn start_due(&mut self) {
        let now = Instant::now();
        for s in &mut self.svcs {
            if s.next_start.is_some_and(|t| t <= now) {
                s.next_start = None;
                match spawn(&s.cfg) {
                    Ok(pid) => {
                        info!("started {} (pid {pid})", s.cfg.name);
                        s.pid = Some(pid);
                        s.started = now;
                        self.last_change = now;
                    }
                    Err(e) => {
                        let d = s.backoff.next_delay(Duration::ZERO);
                        info!(
                            "cannot start {} ({}): {e}; retrying in {} s",
                            s.cfg.name,
                            s.cfg.exec[0],
                            d.as_secs()
                        );
                        s.next_start = Some(now + d);
                        self.last_change = now;
                    }
                }
            }
        }
    }

    /// Handles a reaped child; false if it was not a service.
    pub fn exited(&mut self, pid: i32, status: sys::WaitStatus, stopping: bool) -> bool {
        let Some(s) = self.svcs.iter_mut().find(|s| s.pid == Some(pid)) else {
            return false;
        };
        s.pid = None;
        let ran = s.started.elapsed();
        let ok = status.exit_status() == Some(0);
        let how = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => format!("ended ({status:?})"),
        };
        let restart = !stopping
            && match s.cfg.restart {
                Restart::Always => true,
                Restart::OnFailure => !ok,
                Restart::Never => false,
            };
        if restart {
            let d = s.backoff.next_delay(ran);
            info!(
                "{} {how} after {:.1} s; restarting in {} s",
                s.cfg.name,
                ran.as_secs_f64(),
                d.as_secs()
            );
            s.next_start = Some(Instant::now() + d);
            s.restarts += 1;
        } else {
            info!("{} {how}", s.cfg.name);
            s.done = true;
        }
        self.last_change = Instant::now();
        true
    }

    /// True when no service waits for a restart.
    pub fn healthy(&self) -> bool {
        self.svcs
            .iter()
            .all(|s| s.pid.is_some() || (s.done && s.cfg.restart != Restart::Always))
    }

    /// What keeps the boot from being good: each service that waits for a
    /// restart or has not stayed up `stable` yet, with its restart count.
    pub fn unhealthy(&self, stable: Duration) -> Vec<String> {
        self.svcs
            .iter()
            .filter_map(|s| {
                let state = match s.pid {
                    None if s.done && s.cfg.restart != Restart::Always => return None,
                    None => "down",
                    Some(_) if s.started.elapsed() < stable => "up only briefly",
                    Some(_) => return None,
                };
                Some(format!(
                    "{} ({state}, restarted {} times)",
                    s.cfg.name, s.restarts
                ))
            })
            .collect()
    }

    /// Stops every service: SIGTERM to its process group, SIGKILL after `grace`.
    pub fn stop_all(&mut self, grace: Duration) {
        for s in &mut self.svcs {
            s.next_start = None;
            if let Some(pid) = s.pid {
                info!("stopping {} (pid {pid})", s.cfg.name);
                let _ = sys::kill(pid, sys::Signal::TERM, true);
                let _ = sys::kill(pid, sys::Signal::TERM, false);
            }
        }
        let deadline = Instant::now() + grace;
        while self.svcs.iter().any(|s| s.pid.is_some()) && Instant::now() < deadline {
            while let Some((pid, st)) = sys::reap() {
                self.exited(pid, st, true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for s in &mut self.svcs {
            if let Some(pid) = s.pid.take() {
                info!(
                    "{} did not stop within {} s; killing it",
                    s.cfg.name,
                    grace.as_secs()
                );
                let _ = sys::kill(pid, sys::Signal::KILL, true);
                let _ = sys::kill(pid, sys::Signal::KILL, false);
            }
        }
        while sys::reap().is_some() {}
    }
}
