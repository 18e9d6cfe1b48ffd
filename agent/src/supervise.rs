//! One thread per pod runs its life: verify and pull the images, make the
//! volumes, start the containers (the first creates the pod's network,
//! IPC and UTS namespaces, the others join them), carry host ports in,
//! probe liveness, and when any container ends or fails its probe, stop
//! the others — a pod's containers live and die together — and start the
//! pod again as its restartPolicy says, after the kubelet's back-off.
//!
//! Containers run detached: nothing but the container stays per container
//! outside the agent. Per container the agent keeps two threads (one
//! waits for its exit on a pidfd, [`crate::reaper`]; one copies its output
//! FIFO to the log, [`crate::logs`]) and, with a liveness probe, a third.
//! A worker first adopts the containers an earlier agent left running
//! ([`crate::adopt`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::adopt::{self, Record};
use crate::backoff::{Backoff, KUBELET};
use crate::images::{ImageError, Images, Ready};
use crate::logs::{self, LogFile, Output};
use crate::net::{self, NetNs, PortForward};
use crate::pod::{Pod, Probe, RestartPolicy};
use crate::policy::Policy;
use crate::reaper::{self, Exit};
use crate::rootfs;
use crate::runtime::{Runtime, State};
use crate::spec::{self, SpecInputs, VolumeSource};
use crate::status::{ContainerStatus, Phase, PodStatus, Status};
use crate::userns::{self, IdRange, Ranges};
use crate::volumes::{self, Sources};

/// What every pod worker shares.
pub struct Env {
    /// crun.
    pub runtime: Runtime,
    /// The image cache.
    pub images: Images,
    /// Policy directories, read again before every pod start.
    pub policy_dirs: Vec<PathBuf>,
    /// Where secrets, config maps and pod directories are.
    pub sources: Sources,
    /// OCI bundles (on a tmpfs: they hold resolved secrets).
    pub bundles: PathBuf,
    /// Container logs.
    pub log_dir: PathBuf,
    /// Bound of each container log file.
    pub log_max: u64,
    /// Status and events.
    pub status: Status,
    /// The node address host ports listen on.
    pub host_ip: std::net::IpAddr,
    /// Pods between "pulling" and "status knows the digests" (the garbage
    /// collector waits for zero).
    pub preparing: AtomicUsize,
    /// The disk I/O limits apply to (the one holding the agent's state);
    /// None when that is not a block device.
    pub io_device: Option<(u64, u64)>,
    /// The host-id ranges of pods with user namespaces.
    pub ranges: Ranges,
    policy_problems: Mutex<Vec<String>>,
}

impl Env {
    /// Everything a worker needs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        runtime: Runtime,
        images: Images,
        policy_dirs: Vec<PathBuf>,
        sources: Sources,
        bundles: PathBuf,
        log_dir: PathBuf,
        log_max: u64,
        status: Status,
        host_ip: std::net::IpAddr,
        ranges: Ranges,
    ) -> Env {
        Env {
            runtime,
            images,
            policy_dirs,
            sources,
            bundles,
            log_dir,
            log_max,
            status,
            host_ip,
            preparing: AtomicUsize::new(0),
            io_device: None,
            ranges,
            policy_problems: Mutex::new(Vec::new()),
        }
    }

    /// The policy now; problems are reported once each.
    pub fn policy(&self) -> Policy {
        let (p, problems) = Policy::load(&self.policy_dirs);
        let mut seen = self.policy_problems.lock().expect("lock");
        for m in problems {
            if !seen.contains(&m) {
                self.status.event("", "PolicyProblem", m.clone());
                seen.push(m);
            }
        }
        p
    }
}

/// Messages to a pod worker.
#[derive(Debug)]
pub enum Msg {
    /// Stop the pod for good.
    Stop,
    /// Container `idx` of start `gen` ended.
    Exited {
        /// start number
        gen: u64,
        /// container index
        idx: usize,
        /// how
        status: Exit,
    },
    /// Container `idx` of start `gen` failed its liveness probe.
    Unhealthy {
        /// start number
        gen: u64,
        /// container index
        idx: usize,
        /// why
        reason: String,
    },
}

/// A running pod worker.
pub struct Handle {
    /// metadata.name.
    pub name: String,
    tx: Sender<Msg>,
    thread: JoinHandle<()>,
}

impl Handle {
    /// Asks the pod to stop (containers get SIGTERM, then SIGKILL after
    /// the grace period).
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }

    /// Whether the pod has stopped (its thread ended).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits until the pod has stopped and its volumes are gone.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Starts the worker for `pod` (read from `file`, whose bytes hash to
/// `manifest`, [`adopt::manifest_hash`]); `found` are the pod's
/// containers an earlier agent left (one entry per container of the pod,
/// [`adopt::Survivors::take`]), adopted when they still fit.
pub fn spawn(
    env: Arc<Env>,
    pod: Pod,
    file: PathBuf,
    manifest: String,
    found: Vec<Option<State>>,
) -> Handle {
    let (tx, rx) = channel();
    let name = pod.metadata.name.clone();
    let tx2 = tx.clone();
    let thread = std::thread::Builder::new()
        .name(format!("pod-{name}"))
        .spawn(move || {
            Worker {
                env,
                pod,
                manifest,
                tx: tx2,
                rx,
            }
            .life(file, found)
        })
        .expect("spawning a pod thread");
    Handle { name, tx, thread }
}

struct Prepared {
    /// The pod's user namespace: its host ids and a descriptor of a
    /// namespace with that mapping (for idmapped mounts).
    userns: Option<(IdRange, Arc<std::os::fd::OwnedFd>)>,
    images: Vec<Ready>,
    env: Vec<BTreeMap<String, String>>,
    volumes: BTreeMap<String, VolumeSource>,
}

struct Started {
    gen: u64,
    ids: Vec<String>,
    exited: Vec<bool>,
    forwards: Vec<PortForward>,
    probes_stop: Arc<AtomicBool>,
}

impl Started {
    /// Nothing started yet of start `gen`.
    fn new(gen: u64) -> Started {
        Started {
            gen,
            ids: Vec::new(),
            exited: Vec::new(),
            forwards: Vec::new(),
            probes_stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Which container of which start [`Worker::start_container`] starts.
struct StartAt {
    /// The container's index in the pod.
    idx: usize,
    /// The first container's PID, whose namespaces the others join.
    join: Option<u32>,
    /// The pod's start number (kept in the adoption record).
    nth: u32,
    /// When the pod's start began (seconds since the epoch).
    began_at: u64,
}

struct Worker {
    env: Arc<Env>,
    pod: Pod,
    /// The manifest's hash, kept in each container's [`Record`].
    manifest: String,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
}

/// What became of the containers an earlier agent left.
enum Adoption {
    /// They run on, supervised again; the pod's start number.
    Adopted(Started, u32),
    /// There were none, or they were stopped.
    No,
    /// They were stopped, and meanwhile the pod was asked to stop.
    Stopped,
}

/// Why a start failed, and the event reason for it.
struct Failure {
    reason: &'static str,
    message: String,
}

fn image_failure(container: &str, e: ImageError) -> Failure {
    let reason = match &e {
        ImageError::Pull {
            source:
                herd_oci::Error::Untrusted { .. }
                | herd_oci::Error::DigestMismatch { .. }
                | herd_oci::Error::Layer { .. },
        }
        | ImageError::KeyRevoked { .. } => "Untrusted",
        _ => "PullFailed",
    };
    Failure {
        reason,
        message: format!("container {container}: {e}; nothing of it runs"),
    }
}

impl Worker {
    fn name(&self) -> &str {
        &self.pod.metadata.name
    }

    fn set(&self, f: impl FnOnce(&mut PodStatus)) {
        self.env.status.modify(self.name(), f);
    }

    fn life(self, file: PathBuf, found: Vec<Option<State>>) {
        let name = self.name().to_string();
        self.show_pending(&file);
        let mut backoff = Backoff::with(KUBELET);
        let mut gen = 0u64;
        // Successful starts (restarts = starts - 1, as the kubelet counts).
        let mut starts = 0u32;
        let mut found = Some(found);
        loop {
            gen += 1;
            self.set(|p| {
                p.phase = Phase::Pending;
                p.message = None;
            });
            let began = Instant::now();
            let adopted = match found.take().map(|f| self.adopt(f, gen)) {
                Some(Adoption::Adopted(started, start)) => Some((started, start)),
                Some(Adoption::Stopped) => break,
                Some(Adoption::No) | None => None,
            };
            let outcome = if let Some((started, start)) = adopted {
                starts = start;
                self.watch(started)
            } else {
                self.start_afresh(gen, &mut starts)
            };
            let (failed, message) = match outcome {
                Outcome::Stop => break,
                Outcome::Ended { stop: true, .. } => break,
                Outcome::Ended {
                    failed, message, ..
                } => (failed, message),
            };
            if !self.restarts_after(failed) {
                self.complete(failed, message);
                break;
            }
            let delay = backoff.next_delay(began.elapsed());
            if self.back_off(delay, &message) {
                break;
            }
        }
        volumes::teardown(&name, &self.env.sources);
        self.env.status.event(&name, "Stopped", "pod stopped");
    }

    /// The pod's first status: pending, from `file`, every container waiting.
    fn show_pending(&self, file: &Path) {
        let name = self.name().to_string();
        let containers = self
            .pod
            .spec
            .containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                state: "waiting".into(),
                ..Default::default()
            })
            .collect();
        self.env.status.update(
            &name,
            || PodStatus {
                name: name.clone(),
                file: file.display().to_string(),
                phase: Phase::Pending,
                restarts: 0,
                message: None,
                started_at: None,
                containers,
            },
            |_| {},
        );
    }

    /// Whether the restartPolicy starts the pod again after it ended
    /// (`failed`: with a failure).
    fn restarts_after(&self, failed: bool) -> bool {
        match self.pod.spec.restart_policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        }
    }

    /// The pod ended for good (`message`: how): its final phase, then wait
    /// for the Stop that removes it.
    fn complete(&self, failed: bool, message: String) {
        let phase = if failed {
            Phase::Failed
        } else {
            Phase::Succeeded
        };
        self.set(|p| {
            p.phase = phase;
            p.message = Some(message);
        });
        self.env.status.event(
            self.name(),
            "Completed",
            format!("{phase:?}; restartPolicy does not restart it"),
        );
        while !matches!(self.rx.recv(), Ok(Msg::Stop) | Err(_)) {}
    }

    /// Waits `delay` before the next start, showing why (`message`);
    /// true when asked to stop meanwhile.
    fn back_off(&self, delay: Duration, message: &str) -> bool {
        self.set(|p| {
            p.phase = Phase::BackOff;
            p.message = Some(format!(
                "{message}; starting again in {} s",
                delay.as_secs()
            ));
        });
        self.env.status.event(
            self.name(),
            "BackOff",
            format!("starting again in {} s", delay.as_secs()),
        );
        self.wait_for_stop(delay)
    }

    /// Prepares and starts the pod, then watches it until it ends.
    fn start_afresh(&self, gen: u64, starts: &mut u32) -> Outcome {
        let name = self.name();
        let f = match self.prepare() {
            Ok(prep) => match self.start(&prep, gen, *starts + 1) {
                Ok(started) => {
                    *starts += 1;
                    let restarts = *starts - 1;
                    self.set(|p| p.restarts = restarts);
                    return self.watch(started);
                }
                Err((f, started)) => {
                    let stop = self.stop_containers(started);
                    self.env.status.event(name, f.reason, &f.message);
                    return Outcome::Ended {
                        failed: true,
                        message: f.message,
                        stop,
                    };
                }
            },
            Err(f) => f,
        };
        self.env.status.event(name, f.reason, &f.message);
        Outcome::Ended {
            failed: true,
            message: f.message,
            stop: false,
        }
    }

    /// Sleeps `d` unless asked to stop (true) first.
    fn wait_for_stop(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return true,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    fn prepare(&self) -> Result<Prepared, Failure> {
        struct Counted<'a>(&'a AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.env.preparing.fetch_add(1, Ordering::SeqCst);
        let _counted = Counted(&self.env.preparing);
        let images = self.pull_images()?;
        let mut env = Vec::new();
        for c in &self.pod.spec.containers {
            env.push(
                volumes::env_from(c, &self.env.sources).map_err(|e| Failure {
                    reason: "ConfigError",
                    message: e.0,
                })?,
            );
        }
        let userns = if self.pod.user_namespace() {
            let failure = |e: userns::UsernsError| Failure {
                reason: "UserNamespace",
                message: format!("the pod's user namespace: {e}"),
            };
            let range = self.env.ranges.assign(self.name()).map_err(failure)?;
            let ns = userns::namespace(range).map_err(failure)?;
            Some((range, Arc::new(ns)))
        } else {
            None
        };
        let volumes = volumes::prepare(
            &self.pod,
            &self.env.sources,
            userns.as_ref().map(|(r, _)| *r),
        )
        .map_err(|e| Failure {
            reason: "ConfigError",
            message: e.0,
        })?;
        Ok(Prepared {
            userns,
            images,
            env,
            volumes,
        })
    }

    /// Container by container: refuses a UDP host port, then verifies
    /// (pulling if needed) its image against the policy now and shows the
    /// digest and signer.
    fn pull_images(&self) -> Result<Vec<Ready>, Failure> {
        let policy = self.env.policy();
        let mut images = Vec::new();
        for (i, c) in self.pod.spec.containers.iter().enumerate() {
            if let Some(p) = c
                .ports
                .iter()
                .find(|p| p.host_port.is_some() && p.protocol.as_deref() == Some("UDP"))
            {
                return Err(Failure {
                    reason: "Unsupported",
                    message: format!(
                        "container {}: hostPort {} is UDP; herd carries only TCP host ports into pods (use hostNetwork for UDP)",
                        c.name,
                        p.host_port.unwrap_or_default()
                    ),
                });
            }
            let ready = self
                .env
                .images
                .get(&c.image, c.image_pull_policy.as_deref(), &policy)
                .map_err(|e| image_failure(&c.name, e))?;
            let digest = ready
                .pulled
                .reference
                .digest
                .as_ref()
                .map(|d| d.to_string());
            self.env.status.event(
                self.name(),
                if ready.fetched { "Pulled" } else { "Verified" },
                format!(
                    "container {}: {} signed by key {}",
                    c.name, ready.pulled.reference, ready.pulled.signed_by
                ),
            );
            let signer = ready.pulled.signed_by.clone();
            self.set(|p| {
                p.containers[i].digest = digest;
                p.containers[i].signed_by = Some(signer);
            });
            images.push(ready);
        }
        Ok(images)
    }

    /// Starts every container; on failure returns what did start, to be
    /// stopped.
    #[allow(clippy::result_large_err)] // built once per pod start
    fn start(&self, prep: &Prepared, gen: u64, nth: u32) -> Result<Started, (Failure, Started)> {
        let fail = |message: String| Failure {
            reason: "StartFailed",
            message,
        };
        let mut started = Started::new(gen);
        let began_at = logs::now();
        let mut first_pid = None;
        let mut netns: Option<Arc<NetNs>> = None;
        for (i, c) in self.pod.spec.containers.iter().enumerate() {
            let at = StartAt {
                idx: i,
                join: first_pid,
                nth,
                began_at,
            };
            let pid = match self.start_container(prep, &at, &mut started) {
                Ok(pid) => pid,
                Err(message) => return Err((fail(message), started)),
            };
            if i == 0 {
                first_pid = Some(pid);
                if !self.pod.spec.host_network {
                    netns = NetNs::of_pid(pid).ok().map(Arc::new);
                }
            }
            if let Some(probe) = &c.liveness_probe {
                let id = &started.ids[i];
                let label = format!("{}/{}", self.name(), c.name);
                self.probe(probe.clone(), id, &label, netns.clone(), &started, i);
            }
        }
        if let Some(ns) = &netns {
            if let Err(m) = self.carry_ports(ns, &mut started) {
                return Err((fail(m), started));
            }
        }
        self.set(|p| {
            p.phase = Phase::Running;
            p.started_at = Some(began_at);
        });
        self.env.status.event(
            self.name(),
            "Started",
            format!(
                "{} container(s) running (start {nth})",
                self.pod.spec.containers.len()
            ),
        );
        Ok(started)
    }

    /// Starts container `at.idx` detached, with its log pump and exit
    /// watcher; records it in `started` once the runtime was asked. Returns
    /// its PID, or why it did not start.
    fn start_container(
        &self,
        prep: &Prepared,
        at: &StartAt,
        started: &mut Started,
    ) -> Result<u32, String> {
        let (name, c) = (self.name(), &self.pod.spec.containers[at.idx]);
        let id = adopt::container_id(name, &c.name);
        // Leftovers of an agent that died without stopping its pods.
        if self.env.runtime.root.join(&id).exists() {
            self.env.runtime.kill(&id, "KILL");
            self.env.runtime.delete(&id);
        }
        if c.resources.limits.has_io() && self.env.io_device.is_none() {
            return Err(format!(
                "container {}: its I/O limits need the node's state on a block device, and {} is not on one",
                c.name,
                self.env.sources.pods_state.display()
            ));
        }
        let bundle = self.env.bundles.join(&id);
        self.make_bundle(prep, at, &bundle)?;
        let output = Output::create(&bundle.join("output")).map_err(|e| {
            rootfs::remove_bundle(&bundle);
            format!("container {}: making its output FIFO: {e}", c.name)
        })?;
        let label = format!("{name}/{}", c.name);
        self.pump_logs(&id, &label, &c.name, output.reader);
        let result = self
            .env
            .runtime
            .start(&id, &bundle, &bundle.join("pid"), &output.writer);
        // The container holds its own end; the log sees EOF when it ends.
        drop(output.writer);
        started.ids.push(id);
        let pid = result.map_err(|e| {
            started.exited.push(true);
            format!(
                "container {}: {e} (herd-agent logs {name} {})",
                c.name, c.name
            )
        })?;
        started.exited.push(false);
        self.wait_for_exit(reaper::open(pid), started.gen, at.idx);
        self.write_record(prep, at, &bundle, &label);
        self.set(|p| {
            p.containers[at.idx].pid = Some(pid);
            p.containers[at.idx].state = "running".into();
        });
        Ok(pid)
    }

    /// Mounts container `at.idx`'s root and writes its OCI bundle at
    /// `bundle` (emptied first).
    fn make_bundle(&self, prep: &Prepared, at: &StartAt, bundle: &Path) -> Result<(), String> {
        let (name, c) = (self.name(), &self.pod.spec.containers[at.idx]);
        rootfs::remove_bundle(bundle);
        // The image root is only ever the overlay's lower layer; the
        // container writes (if it may) into its own upper layer.
        let layers = rootfs::Layers {
            image: prep.images[at.idx].rootfs.clone(),
            scratch: if c.security_context.read_only_root_filesystem == Some(false) {
                self.env
                    .sources
                    .pods_state
                    .join(name)
                    .join("rootfs")
                    .join(&c.name)
            } else {
                bundle.join("layer")
            },
            target: bundle.join("rootfs"),
            userns: prep.userns.clone(),
        };
        rootfs::mount(&layers)
            .map_err(|e| format!("container {}: making its root: {e}", c.name))?;
        let inputs = SpecInputs {
            rootfs: layers.target,
            volumes: prep.volumes.clone(),
            env_from: prep.env[at.idx].clone(),
            join: at.join,
            cgroup: format!("/herd/pods/{name}/{}", c.name),
            io_device: self.env.io_device,
            userns: prep.userns.as_ref().map(|(r, _)| *r),
        };
        let config = &prep.images[at.idx].pulled.config;
        spec::runtime_spec(&self.pod, c, config, &inputs)
            .map_err(|e| e.to_string())
            .and_then(|spec| spec::write_bundle(bundle, &spec).map_err(|e| e.to_string()))
            .map_err(|e| {
                rootfs::remove_bundle(bundle);
                format!("container {}: writing its bundle: {e}", c.name)
            })
    }

    /// Writes the adoption record of container `at.idx` into its bundle.
    fn write_record(&self, prep: &Prepared, at: &StartAt, bundle: &Path, label: &str) {
        let pulled = &prep.images[at.idx].pulled;
        let record = Record {
            manifest: self.manifest.clone(),
            start: at.nth,
            started_at: at.began_at,
            digest: pulled.reference.digest.as_ref().map(|d| d.to_string()),
            signed_by: Some(pulled.signed_by.clone()),
        };
        if let Err(e) = record.write(bundle) {
            // Not fatal: an agent restart would start the pod again
            // instead of adopting it.
            println!("{label}: cannot write its adoption record: {e}");
        }
    }

    /// Listens on the pod's host ports and carries them into `ns`.
    fn carry_ports(&self, ns: &Arc<NetNs>, started: &mut Started) -> Result<(), String> {
        for c in &self.pod.spec.containers {
            for p in &c.ports {
                let Some(hp) = p.host_port else { continue };
                let f = PortForward::start(
                    self.env.host_ip,
                    hp,
                    ns.clone(),
                    p.container_port,
                    format!("{}/{}", self.name(), c.name),
                )
                .map_err(|e| {
                    format!(
                        "container {}: hostPort {hp}: cannot listen on the node: {e}",
                        c.name
                    )
                })?;
                started.forwards.push(f);
            }
        }
        Ok(())
    }

    /// Copies the container's output (the agent's end of its FIFO) to the
    /// console and its log file, until every writer is gone.
    fn pump_logs(&self, id: &str, label: &str, container: &str, reader: File) {
        let log = LogFile::open(
            logs::path(&self.env.log_dir, self.name(), container),
            self.env.log_max,
        );
        let label = label.to_string();
        let _ = std::thread::Builder::new()
            .name(format!("log-{id}"))
            .stack_size(THREAD_STACK)
            .spawn(move || logs::pump(reader, &label, log));
    }

    /// Reports the end of container `idx` of start `gen` (its pidfd, or
    /// the error opening it: the process is gone) to this worker.
    fn wait_for_exit(&self, pidfd: std::io::Result<OwnedFd>, gen: u64, idx: usize) {
        let tx = self.tx.clone();
        let _ = std::thread::Builder::new()
            .name(format!("wait-{}-{idx}", self.name()))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let status = match pidfd {
                    Ok(fd) => reaper::wait(&fd),
                    Err(_) => Exit::Unknown,
                };
                let _ = tx.send(Msg::Exited { gen, idx, status });
            });
    }

    /// Takes over the containers an earlier agent left running for this
    /// pod (see [`crate::adopt`]): all of them run and were started from
    /// the same manifest bytes, or they are stopped and the pod starts
    /// afresh.
    fn adopt(&self, found: Vec<Option<State>>, gen: u64) -> Adoption {
        if found.iter().all(Option::is_none) {
            return Adoption::No;
        }
        let mut started = Started::new(gen);
        match self.take_over(found, &mut started) {
            Ok(adopted) => self.resume(started, adopted),
            Err(why) => {
                self.env.status.event(
                    self.name(),
                    "NotAdopted",
                    format!("the containers an earlier agent left are stopped: {why}"),
                );
                self.give_up(started)
            }
        }
    }

    /// Watches every container of `found` that still runs (its exit, its
    /// output), recording each in `started`; returns each one's PID and
    /// adoption record, or why the pod cannot be adopted.
    fn take_over(
        &self,
        found: Vec<Option<State>>,
        started: &mut Started,
    ) -> Result<Vec<(u32, Record)>, String> {
        let name = self.name();
        let mut why_not: Option<String> = None;
        let mut adopted = Vec::new();
        for (i, (c, state)) in self.pod.spec.containers.iter().zip(found).enumerate() {
            let id = adopt::container_id(name, &c.name);
            started.ids.push(id.clone());
            let Some((state, pidfd)) = self.still_running(&id, state) else {
                started.exited.push(true);
                why_not.get_or_insert(format!("container {} is not running", c.name));
                continue;
            };
            started.exited.push(false);
            self.wait_for_exit(Ok(pidfd), started.gen, i);
            let label = format!("{name}/{}", c.name);
            match Output::reopen(&state.bundle.join("output")) {
                Ok(reader) => self.pump_logs(&id, &label, &c.name, reader),
                Err(e) => println!("{label}: its output cannot be read again: {e}"),
            }
            match Record::read(&state.bundle) {
                Some(r) if r.manifest == self.manifest => adopted.push((state.pid, r)),
                Some(_) => {
                    why_not.get_or_insert("its manifest changed while the agent was away".into());
                }
                None => {
                    why_not.get_or_insert(format!("container {} has no adoption record", c.name));
                }
            }
        }
        match why_not {
            Some(why) => Err(why),
            None => Ok(adopted),
        }
    }

    /// `state` of container `id` with a pidfd of its process, if it still
    /// runs and is still the container.
    fn still_running(&self, id: &str, state: Option<State>) -> Option<(State, OwnedFd)> {
        state.filter(State::running).and_then(|s| {
            let fd = reaper::open(s.pid).ok()?;
            // The PID may have been reused between crun's answer and
            // pidfd_open: crun checks the process is its container.
            let again = self.env.runtime.state(id)?;
            (again.running() && again.pid == s.pid).then_some((s, fd))
        })
    }

    /// Supervises the adopted containers (`adopted`: each one's PID and
    /// record) again: status, host ports and liveness probes.
    fn resume(&self, mut started: Started, adopted: Vec<(u32, Record)>) -> Adoption {
        let name = self.name();
        let start = adopted[0].1.start;
        let started_at = adopted[0].1.started_at;
        self.set(|p| {
            for (c, (pid, r)) in p.containers.iter_mut().zip(&adopted) {
                c.pid = Some(*pid);
                c.state = "running".into();
                c.digest = r.digest.clone();
                c.signed_by = r.signed_by.clone();
            }
            p.restarts = start.saturating_sub(1);
            p.started_at = Some(started_at);
        });
        let netns = if self.pod.spec.host_network {
            None
        } else {
            NetNs::of_pid(adopted[0].0).ok().map(Arc::new)
        };
        if let Some(ns) = &netns {
            if let Err(m) = self.carry_ports(ns, &mut started) {
                self.env.status.event(name, "StartFailed", &m);
                return self.give_up(started);
            }
        }
        for (i, c) in self.pod.spec.containers.iter().enumerate() {
            if let Some(probe) = &c.liveness_probe {
                let label = format!("{name}/{}", c.name);
                let id = &started.ids[i];
                self.probe(probe.clone(), id, &label, netns.clone(), &started, i);
            }
        }
        self.set(|p| p.phase = Phase::Running);
        self.env.status.event(
            name,
            "Adopted",
            format!(
                "{} container(s) still running from before the agent restarted (start {start})",
                adopted.len()
            ),
        );
        Adoption::Adopted(started, start)
    }

    /// Stops the containers of a pod that is not adopted after all.
    fn give_up(&self, started: Started) -> Adoption {
        if self.stop_containers(started) {
            Adoption::Stopped
        } else {
            Adoption::No
        }
    }

    fn probe(
        &self,
        probe: Probe,
        id: &str,
        label: &str,
        ns: Option<Arc<NetNs>>,
        started: &Started,
        idx: usize,
    ) {
        let stop = started.probes_stop.clone();
        let tx = self.tx.clone();
        let gen = started.gen;
        let runtime = self.env.runtime.clone();
        let id = id.to_string();
        let label = label.to_string();
        let _ = std::thread::Builder::new()
            .name(format!("probe-{id}"))
            .spawn(move || {
                if probe.http_get.is_some() {
                    if let Some(ns) = &ns {
                        if let Err(e) = ns.enter() {
                            println!("{label}: liveness probe cannot enter the pod's network: {e}");
                            return;
                        }
                    }
                }
                let sleep = |d: Duration| {
                    let end = Instant::now() + d;
                    while Instant::now() < end {
                        if stop.load(Ordering::SeqCst) {
                            return false;
                        }
                        std::thread::sleep(Duration::from_millis(100).min(d));
                    }
                    !stop.load(Ordering::SeqCst)
                };
                if !sleep(Duration::from_secs(probe.initial_delay_seconds)) {
                    return;
                }
                let timeout = Duration::from_secs(probe.timeout_seconds.max(1));
                let mut failures = 0;
                loop {
                    let Some(result) = probe_once(&probe, &runtime, &id, timeout) else {
                        return;
                    };
                    match result {
                        Ok(()) => failures = 0,
                        Err(why) => {
                            failures += 1;
                            println!(
                                "{label}: liveness probe failed ({failures}/{}): {why}",
                                probe.failure_threshold
                            );
                            if failures >= probe.failure_threshold {
                                let _ = tx.send(Msg::Unhealthy {
                                    gen,
                                    idx,
                                    reason: why,
                                });
                                return;
                            }
                        }
                    }
                    if !sleep(Duration::from_secs(probe.period_seconds.max(1))) {
                        return;
                    }
                }
            });
    }

    /// Waits until a container ends, fails its probe, or the pod is
    /// stopped; then stops the rest.
    fn watch(&self, mut started: Started) -> Outcome {
        let name = self.name().to_string();
        let (failed, message) = loop {
            match self.rx.recv() {
                Ok(Msg::Stop) | Err(_) => {
                    self.set(|p| p.phase = Phase::Terminating);
                    self.stop_containers(started);
                    return Outcome::Stop;
                }
                Ok(Msg::Exited { gen, idx, status }) if gen == started.gen => {
                    started.exited[idx] = true;
                    let c = &self.pod.spec.containers[idx].name;
                    let how = status.describe();
                    self.set(|p| {
                        p.containers[idx].state = "exited".into();
                        p.containers[idx].pid = None;
                        p.containers[idx].last_exit = Some(how.clone());
                    });
                    self.env.status.event(
                        &name,
                        "Exited",
                        format!("container {c} ended with {how}"),
                    );
                    break (!status.success(), format!("container {c} ended with {how}"));
                }
                Ok(Msg::Unhealthy { gen, idx, reason }) if gen == started.gen => {
                    let c = &self.pod.spec.containers[idx].name;
                    self.env.status.event(
                        &name,
                        "Unhealthy",
                        format!("container {c} failed its liveness probe ({reason}); restarting the pod"),
                    );
                    break (true, format!("container {c} failed its liveness probe"));
                }
                Ok(_) => continue,
            }
        };
        let stop = self.stop_containers(started);
        Outcome::Ended {
            failed,
            message,
            stop,
        }
    }

    /// Stops what is still running of `started`: SIGTERM, then SIGKILL
    /// after the grace period. Returns whether a Stop came meanwhile.
    fn stop_containers(&self, mut s: Started) -> bool {
        s.probes_stop.store(true, Ordering::SeqCst);
        s.forwards.clear();
        let grace =
            Duration::from_secs(self.pod.spec.termination_grace_period_seconds.unwrap_or(30));
        let mut stop_asked = false;
        for (id, gone) in s.ids.iter().zip(&s.exited) {
            if !gone {
                self.env.runtime.kill(id, "TERM");
            }
        }
        let mut end = Instant::now() + grace;
        let mut killed = false;
        while s.exited.iter().any(|e| !e) {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Msg::Stop) => stop_asked = true,
                Ok(Msg::Exited { gen, idx, status }) if gen == s.gen => {
                    s.exited[idx] = true;
                    let how = status.describe();
                    self.set(|p| {
                        p.containers[idx].state = "exited".into();
                        p.containers[idx].pid = None;
                        p.containers[idx].last_exit = Some(how);
                    });
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if !killed => {
                    for (id, gone) in s.ids.iter().zip(&s.exited) {
                        if !gone {
                            println!(
                                "{}: {id} did not stop within {} s; killing it",
                                self.name(),
                                grace.as_secs()
                            );
                            self.env.runtime.kill(id, "KILL");
                        }
                    }
                    killed = true;
                    end = Instant::now() + Duration::from_secs(10);
                }
                Err(_) => break,
            }
        }
        for id in &s.ids {
            self.env.runtime.delete(id);
            rootfs::remove_bundle(&self.env.bundles.join(id));
        }
        stop_asked
    }
}

/// Runs `probe` once against container `id`: None when it has no check.
/// An httpGet probe runs on a thread already inside the pod's network.
fn probe_once(
    probe: &Probe,
    runtime: &Runtime,
    id: &str,
    timeout: Duration,
) -> Option<Result<(), String>> {
    if let Some(e) = &probe.exec {
        Some(match runtime.exec(id, &e.command, timeout) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{:?} failed", e.command)),
            Err(err) => Err(format!("cannot run the probe: {err}")),
        })
    } else if let Some(h) = &probe.http_get {
        let path = h.path.as_deref().unwrap_or("/");
        Some(match net::http_get(None, h.port, path, timeout) {
            Ok(code) if (200..400).contains(&code) => Ok(()),
            Ok(code) => Err(format!("GET {path} on port {}: status {code}", h.port)),
            Err(e) => Err(format!("GET {path} on port {}: {e}", h.port)),
        })
    } else {
        None
    }
}

/// Stack of the per-container threads (they hold little: a pidfd wait,
/// a line buffer on the heap).
const THREAD_STACK: usize = 128 * 1024;

enum Outcome {
    /// Asked to stop.
    Stop,
    /// The pod ended (`stop`: and a Stop came while it was being ended).
    Ended {
        failed: bool,
        message: String,
        stop: bool,
    },
}
