//! `herd-agent`: runs the node's static pods (see docs/PODS.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use herd_agent::adopt::{self, Survivors};
use herd_agent::images::Images;
use herd_agent::pod::Pod;
use herd_agent::runtime::Runtime;
use herd_agent::status::{Phase, PodStatus, Status};
use herd_agent::supervise::{self, Env, Handle};
use herd_agent::volumes::Sources;
use herd_agent::watch::{Change, Notify, Watch};
use herd_agent::{api, logs, reaper};

/// herd's node agent: runs Kubernetes-style static pods, only from
/// container images signed by a key the node trusts.
#[derive(Parser)]
#[command(name = "herd-agent", version)]
struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, default_value = "/run/herd/agent.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the pods in the pod directory, and follow its changes: a new
    /// file starts a pod, an edited one replaces it, a removed one stops it.
    Run(Box<RunArgs>),
    /// List the pods, their phase, restarts and containers.
    Ps {
        /// Print the agent's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a container's log (the first container when none is named).
    Logs {
        /// The pod.
        pod: String,
        /// The container.
        container: Option<String>,
    },
    /// Print recent events (starts, exits, refusals, back-offs).
    Events {
        /// Print the agent's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check pod manifests offline: every error, with file and field.
    Check {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory of pod manifests (Kubernetes v1 Pod YAML, one per file).
    #[arg(long, default_value = "/etc/herd/pods")]
    pods: PathBuf,
    /// Image policy directories: keys/*.pub and policy.toml (see docs/PODS.md).
    #[arg(long = "policy", default_values = ["/etc/herd/policy", "/usr/lib/herd/policy"])]
    policy: Vec<PathBuf>,
    /// Secrets, one directory per secret, one file per key.
    #[arg(long, default_value = "/etc/herd/secrets")]
    secrets: PathBuf,
    /// Config maps, one directory per config map, one file per key.
    #[arg(long, default_value = "/etc/herd/configmaps")]
    configmaps: PathBuf,
    /// Private registries' credentials, one `<host[:port]>.toml` each
    /// (mode 0600, owned by root; see docs/PODS.md).
    #[arg(long, default_value = herd_oci::registry::CREDENTIALS_DIR)]
    registries: PathBuf,
    /// OCI image layouts holding `oci:NAME` images (signed in the layout
    /// with `herd sign-image oci:DIR:NAME`), searched in order.
    #[arg(long = "layout", default_values = ["/var/lib/herd/images", "/usr/share/herd/images"])]
    layouts: Vec<PathBuf>,
    /// Persistent state: image store, unpacked roots, pod directories.
    #[arg(long, default_value = "/var/lib/herd/agent")]
    state: PathBuf,
    /// Runtime state on a tmpfs: bundles, secret copies.
    #[arg(long, default_value = "/run/herd/agent")]
    run: PathBuf,
    /// Container logs, <dir>/<pod>/<container>.log.
    #[arg(long, default_value = "/var/log/herd/pods")]
    logs: PathBuf,
    /// Bytes kept per container log file (one older file is kept too).
    #[arg(long, default_value_t = 1 << 20)]
    log_max: u64,
    /// The OCI runtime binary.
    #[arg(long, default_value = "/usr/bin/crun")]
    runtime: PathBuf,
    /// Do not let the runtime manage cgroups (only for hosts whose cgroup
    /// v1/v2 mix the runtime refuses; resource limits are not enforced).
    #[arg(long)]
    no_cgroups: bool,
    /// The node address that pods' host ports listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host_ip: std::net::IpAddr,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(*a, &cli.socket),
        Cmd::Ps { json } => ps(&cli.socket, json),
        Cmd::Logs { pod, container } => logs_cmd(&cli.socket, &pod, container),
        Cmd::Events { json } => events(&cli.socket, json),
        Cmd::Check { files } => check(&files),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn check(files: &[PathBuf]) -> Result<()> {
    let mut bad = 0;
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        match Pod::parse(&text, f) {
            Ok(p) => println!("{}: ok (pod {})", f.display(), p.metadata.name),
            Err(e) => {
                println!("{e}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        bail!("{bad} of {} manifest(s) would not run", files.len());
    }
    Ok(())
}

fn ps(socket: &Path, as_json: bool) -> Result<()> {
    let body = api::get(socket, "/v1/pods")?;
    if as_json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let pods: Vec<PodStatus> = serde_json::from_slice(&body).context("the agent's pod list")?;
    println!(
        "{:<24} {:<12} {:>8}  CONTAINERS",
        "POD", "PHASE", "RESTARTS"
    );
    for p in pods {
        let cs: Vec<String> = p
            .containers
            .iter()
            .map(|c| {
                let mut s = format!("{}={}", c.name, c.state);
                if let Some(pid) = c.pid {
                    s += &format!("(pid {pid})");
                }
                if let Some(e) = &c.last_exit {
                    s += &format!("[last: {e}]");
                }
                s
            })
            .collect();
        println!(
            "{:<24} {:<12} {:>8}  {}",
            p.name,
            format!("{:?}", p.phase),
            p.restarts,
            cs.join(" ")
        );
        if let Some(m) = p.message.filter(|_| p.phase != Phase::Running) {
            println!("    {m}");
        }
    }
    Ok(())
}

fn logs_cmd(socket: &Path, pod: &str, container: Option<String>) -> Result<()> {
    let container = match container {
        Some(c) => c,
        None => {
            let p: PodStatus =
                serde_json::from_slice(&api::get(socket, &format!("/v1/pods/{pod}"))?)
                    .context("the agent's pod status")?;
            p.containers
                .first()
                .map(|c| c.name.clone())
                .context("the pod has no containers")?
        }
    };
    let body = api::get(socket, &format!("/v1/pods/{pod}/logs/{container}"))?;
    use std::io::Write;
    std::io::stdout().write_all(&body)?;
    Ok(())
}

fn events(socket: &Path, as_json: bool) -> Result<()> {
    let body = api::get(socket, "/v1/events")?;
    if as_json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let evs: Vec<herd_agent::status::Event> =
        serde_json::from_slice(&body).context("the agent's events")?;
    for e in evs {
        println!(
            "{} {:<12} {:<14} {}",
            logs::timestamp(e.time),
            e.pod,
            e.reason,
            e.message
        );
    }
    Ok(())
}

/// A pod file's pod and the hash of its bytes, or why it is refused.
fn load(path: &Path) -> Result<(Pod, String), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    let pod = Pod::parse(&text, path).map_err(|e| e.to_string())?;
    Ok((pod, adopt::manifest_hash(text.as_bytes())))
}

fn run(a: RunArgs, socket: &Path) -> Result<()> {
    install_signal_handlers();
    for d in [&a.pods, &a.state, &a.run, &a.logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    if !a.runtime.exists() {
        bail!(
            "the container runtime {} is missing: the image must ship crun (see images/default.toml), or pass --runtime",
            a.runtime.display()
        );
    }
    // Containers start detached and are re-parented to the agent, which
    // collects their exits (reaper.rs).
    reaper::become_subreaper().context("becoming the child subreaper of the containers")?;
    let status = Status::default();
    let env = open_env(&a, &status)?;
    api::serve(socket, status.clone(), a.logs.clone())
        .with_context(|| format!("serving the API on {}", socket.display()))?;
    let notify = Notify::new(&a.pods).with_context(|| format!("watching {}", a.pods.display()))?;
    announce(&a, socket, &env, &status);
    // What an earlier agent left running: adopted by the pods read in the
    // first scan below, the rest removed after it.
    let survivors = Survivors::scan(&env.runtime);
    if !survivors.is_empty() {
        status.event(
            "",
            "Found",
            format!("{} container(s) left by an earlier agent", survivors.len()),
        );
    }
    let mut pods = Pods::new(env, status, survivors);
    let mut sweeper = reaper::Sweeper::default();
    let mut watch = Watch::default();
    while !STOP.load(Ordering::SeqCst) {
        for change in watch.scan(&a.pods) {
            pods.apply(change);
        }
        pods.finish_stopped();
        pods.remove_unclaimed();
        sweeper.sweep();
        pods.collect_garbage_when_idle();
        notify.wait(pods.poll_interval());
    }
    pods.stop_all();
    Ok(())
}

fn install_signal_handlers() {
    // rustix has no signal handlers for programs on libc (its
    // runtime::kernel_sigaction is for libc-free runtimes), so signal(3)
    // stays raw.
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
}

/// What every pod worker shares, from the command line.
fn open_env(a: &RunArgs, status: &Status) -> Result<Arc<Env>> {
    let images = Images::open(&a.state.join("images"), a.layouts.clone())
        .context("opening the image store")?
        .with_registries(&a.registries);
    let mut env = Env::new(
        Runtime {
            bin: a.runtime.clone(),
            root: a.run.join("crun"),
            cgroups: !a.no_cgroups,
        },
        images,
        a.policy.clone(),
        Sources {
            secrets: a.secrets.clone(),
            configmaps: a.configmaps.clone(),
            pods_state: a.state.join("pods"),
            pods_run: a.run.join("pods"),
            host_root: "/".into(),
        },
        a.run.join("bundles"),
        a.logs.clone(),
        a.log_max,
        status.clone(),
        a.host_ip,
        herd_agent::userns::Ranges::load(&a.state.join("userns.json"))?,
    );
    env.io_device = herd_agent::disk::whole_disk_of(&a.state);
    Ok(Arc::new(env))
}

/// The agent's first events: what it watches and trusts, and whether
/// limits are enforced.
fn announce(a: &RunArgs, socket: &Path, env: &Env, status: &Status) {
    let keys = env.policy().keys.len();
    status.event(
        "",
        "AgentStarted",
        format!(
            "watching {}; {keys} trusted image key(s); API on {}",
            a.pods.display(),
            socket.display()
        ),
    );
    if a.no_cgroups {
        status.event(
            "",
            "Warning",
            "cgroups are off (--no-cgroups): resource limits are not enforced",
        );
    }
}

/// The pods of the manifests in the pod directory: running, stopping
/// (within their grace period), and the containers an earlier agent left.
struct Pods {
    env: Arc<Env>,
    status: Status,
    running: BTreeMap<PathBuf, Handle>,
    /// Pods asked to stop, still within their grace period.
    stopping: Vec<(PathBuf, Handle)>,
    /// Changed manifests whose new pod starts once the old pod is gone.
    start_after_stop: BTreeSet<PathBuf>,
    survivors: Survivors,
    /// When unused images are collected next.
    gc_at: Option<Instant>,
}

impl Pods {
    fn new(env: Arc<Env>, status: Status, survivors: Survivors) -> Pods {
        Pods {
            env,
            status,
            running: BTreeMap::new(),
            stopping: Vec::new(),
            start_after_stop: BTreeSet::new(),
            survivors,
            gc_at: Some(Instant::now() + Duration::from_secs(60)),
        }
    }

    /// Stops and starts pods as a manifest came, changed or went.
    fn apply(&mut self, change: Change) {
        let (stop, start) = match change {
            Change::Added(p) => (None, Some(p)),
            Change::Changed(p) => (Some(p.clone()), Some(p)),
            Change::Removed(p) => (Some(p), None),
        };
        if let Some(p) = &stop {
            if let Some(h) = self.running.remove(p) {
                self.status.event(
                    &h.name,
                    "Stopping",
                    format!("{} changed or went", p.display()),
                );
                h.stop();
                self.stopping.push((p.clone(), h));
            } else {
                self.status.remove(&refused_name(p));
            }
            self.gc_at = Some(Instant::now() + Duration::from_secs(10));
        }
        match start {
            Some(p) if self.stopping.iter().any(|(q, _)| *q == p) => {
                self.start_after_stop.insert(p);
            }
            Some(p) => self.start(p),
            None => {
                if let Some(p) = stop {
                    self.start_after_stop.remove(&p);
                }
            }
        }
    }

    fn start(&mut self, p: PathBuf) {
        start_pod(
            &self.env,
            &self.status,
            &mut self.running,
            &mut self.survivors,
            p,
        );
    }

    /// Joins the pods that finished stopping; frees the host ids of those
    /// whose manifest went and starts those whose manifest changed.
    fn finish_stopped(&mut self) {
        let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stopping)
            .into_iter()
            .partition(|(_, h)| h.is_finished());
        self.stopping = still;
        for (p, h) in done {
            let name = h.name.clone();
            h.join();
            let again = self.start_after_stop.remove(&p) && p.exists();
            if !self.running.values().any(|r| r.name == name) {
                self.status.remove(&name);
                // Its manifest went: the pod's host ids are free again (a
                // pod that only stops with the agent keeps them).
                if !again {
                    if let Err(e) = self.env.ranges.release(&name) {
                        self.status.event(&name, "Warning", e.to_string());
                    }
                }
            }
            if again {
                self.start(p);
            }
        }
    }

    /// Removes the containers of an earlier agent no manifest claimed.
    fn remove_unclaimed(&mut self) {
        if self.survivors.is_empty() {
            return;
        }
        for id in self.survivors.remove_rest(&self.env.runtime) {
            self.status.event(
                "",
                "Removed",
                format!("container {id} of an earlier agent: no pod manifest claims it"),
            );
        }
    }

    /// Collects unused images when due, but not while a pod is being
    /// pulled or still stopping (its image is in use until it is gone).
    fn collect_garbage_when_idle(&mut self) {
        if self.gc_at.is_some_and(|t| Instant::now() >= t)
            && self.stopping.is_empty()
            && self.env.preparing.load(Ordering::SeqCst) == 0
        {
            self.gc_at = None;
            collect_garbage(&self.env, &self.status);
        }
    }

    /// How long to wait for a change: shorter while pods are stopping.
    fn poll_interval(&self) -> Duration {
        if self.stopping.is_empty() {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(200)
        }
    }

    /// Stops every pod (the agent is stopping) and waits for them.
    fn stop_all(mut self) {
        self.running.extend(self.stopping);
        self.status.event(
            "",
            "AgentStopping",
            format!("stopping {} pod(s)", self.running.len()),
        );
        for h in self.running.values() {
            h.stop();
        }
        for (_, h) in self.running {
            h.join();
        }
    }
}

fn refused_name(p: &Path) -> String {
    format!("{}", p.file_stem().unwrap_or_default().to_string_lossy())
}

fn start_pod(
    env: &Arc<Env>,
    status: &Status,
    running: &mut BTreeMap<PathBuf, Handle>,
    survivors: &mut Survivors,
    p: PathBuf,
) {
    let refuse = |name: String, message: String| {
        status.event(
            &name,
            "Invalid",
            format!("{message}; the pod is not started"),
        );
        status.update(
            &name,
            || PodStatus {
                name: name.clone(),
                file: p.display().to_string(),
                phase: Phase::Refused,
                restarts: 0,
                message: None,
                started_at: None,
                containers: Vec::new(),
            },
            |s| {
                s.phase = Phase::Refused;
                s.message = Some(message.clone());
            },
        );
    };
    match load(&p) {
        Err(m) => refuse(refused_name(&p), m),
        Ok((pod, manifest)) => {
            if let Some((other, _)) = running.iter().find(|(_, h)| h.name == pod.metadata.name) {
                refuse(
                    refused_name(&p),
                    format!(
                        "{}: metadata.name: pod {} is already defined by {}",
                        p.display(),
                        pod.metadata.name,
                        other.display()
                    ),
                );
                return;
            }
            status.remove(&refused_name(&p));
            let found = survivors.take(
                &pod.metadata.name,
                pod.spec.containers.iter().map(|c| c.name.as_str()),
            );
            running.insert(
                p.clone(),
                supervise::spawn(env.clone(), pod, p, manifest, found),
            );
        }
    }
}

fn collect_garbage(env: &Env, status: &Status) {
    let in_use: BTreeSet<herd_oci::Digest> = status
        .pods()
        .iter()
        .flat_map(|p| p.containers.iter())
        .filter_map(|c| c.digest.as_deref())
        .filter_map(|d| herd_oci::Digest::parse(d).ok())
        .collect();
    match env.images.collect_garbage(&in_use) {
        Ok((0, 0)) => {}
        Ok((images, blobs)) => status.event(
            "",
            "ImagesCollected",
            format!("removed {images} unused image(s), {blobs} blob(s)"),
        ),
        Err(e) => status.event("", "Warning", format!("image garbage collection: {e}")),
    }
}
