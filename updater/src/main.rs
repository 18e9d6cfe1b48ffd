//! `herd-update`: the node's updater service and its local commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use herd_contract::{EntryKind, Tries};
use herd_update::apply::{
    boot_is_good, check, install, install_blocked, reconcile, rollback_refusal, trusted_root, Found,
};
use herd_update::config::{Reboot, UpdateConfig, CONFIG, LOCAL, STATE_DIR, TRUSTED_ROOT};
use herd_update::coordinate::{backoff, record, status_line, Coordinator, Take};
use herd_update::esp::Esp;
use herd_update::slots::Slots;
use herd_update::state::{boot_id, node_id, State};
use tracing::{error, info};

/// herd's over-the-air updater. As a service (`run`, started by herd-init)
/// it polls the release repository named in /usr/lib/herd/update.toml,
/// verifies the signed metadata with the keys baked into /usr, streams the
/// newest release into the inactive slot while verifying it, installs a boot
/// entry with limited tries, and reboots by policy. A release whose boot
/// herd-init never blesses is rolled back by the boot loader and marked bad
/// here; nothing is installed from a boot that is not blessed.
#[derive(Parser)]
#[command(name = "herd-update", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per run: the size of write-slot's options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// The service: check every interval (with jitter), install, reboot by policy.
    Run {
        /// Install but never reboot; an operator runs `herd-init reboot`.
        #[arg(long)]
        no_reboot: bool,
    },
    /// Show the slots, versions, a pending install, download progress and the last error.
    Status,
    /// Fetch and verify the metadata once and say what would happen.
    Check,
    /// Check once and install into the inactive slot; reboot only with --reboot.
    Apply {
        /// Reboot into the new slot when it is installed.
        #[arg(long)]
        reboot: bool,
    },
    /// Make the other slot boot next (on purpose) and reboot.
    Rollback,
    /// Download and verify the newest release's /usr and verity tree into
    /// the given files or devices. Touches no boot entry: for recovery and
    /// benchmarks.
    WriteSlot {
        /// Repository base URL.
        #[arg(long)]
        repository: String,
        /// Channel.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// The repository's trusted key set (root/1.json), as baked into a
        /// node's image.
        #[arg(long)]
        root: PathBuf,
        /// Where the /usr image goes.
        #[arg(long)]
        usr: PathBuf,
        /// Where the verity tree goes.
        #[arg(long)]
        verity: PathBuf,
        /// The updater state, as a node keeps it in /var/lib/herd/update:
        /// newest verified key set, highest sequence, trusted time, bad
        /// versions, resume point. Checked and updated like a node's.
        #[arg(long)]
        state_dir: PathBuf,
        /// The running /usr image (partition or file): with --from-verity,
        /// chunks a delta update copies instead of downloading.
        #[arg(long)]
        from_usr: Option<PathBuf>,
        /// The running verity tree (partition or file).
        #[arg(long)]
        from_verity: Option<PathBuf>,
        /// For an https:// repository: trust only the CA certificate(s) in
        /// this PEM file (as `ca_file` in update.toml).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Test entry point for the reboot-slot coordination on a build host:
    /// take a slot of `[lock]` in CONFIG (retrying with back-off, the state
    /// and node id in --state-dir), run --hook in place of the reboot, then
    /// give the slot back as after a blessed boot.
    #[command(hide = true)]
    LockCycle {
        /// An update configuration with reboot = "coordinated" and [lock].
        #[arg(long)]
        config: PathBuf,
        /// The updater state directory (its node-id file names the node).
        #[arg(long)]
        state_dir: PathBuf,
        /// Run instead of rebooting while the slot is held.
        #[arg(long)]
        hook: PathBuf,
        /// The version this node "runs" before the hook, for its fleet
        /// status record.
        #[arg(long, default_value = "0.1.0")]
        from_version: String,
        /// The version it "runs" after the hook (the new boot, blessed).
        #[arg(long, default_value = "0.2.0")]
        to_version: String,
        /// Stay for this many seconds after giving the slot back (the
        /// status record stays alive with its lease meanwhile).
        #[arg(long, default_value_t = 0)]
        linger_secs: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .init();
    let cli = Cli::parse();
    match real_main(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd-update: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn log(m: &str) {
    info!("{m}");
}

fn reboot() {
    info!("rebooting into the new slot");
    // PID 1 (herd-init) reboots cleanly on SIGUSR1.
    if let Err(e) =
        rustix::process::kill_process(rustix::process::Pid::INIT, rustix::process::Signal::USR1)
    {
        tracing::error!("asking herd-init (PID 1) to reboot: {e}");
    }
}

/// One check; installs when asked. Returns whether a slot was installed.
fn once(
    cfg: &UpdateConfig,
    slots: &Slots,
    state: &mut State,
    dir: &Path,
    install_it: bool,
) -> herd_update::Result<(bool, String)> {
    if install_it {
        if let Some(why) = install_blocked(slots, boot_is_good()) {
            return Ok((false, why));
        }
    }
    let root = trusted_root(Path::new(TRUSTED_ROOT))?;
    let id = node_id(dir);
    let found = check(cfg, &root, slots, state, &id);
    state.save(dir)?;
    match found? {
        Found::Nothing(why) => Ok((false, why)),
        Found::Release(rel) if install_it => {
            install(cfg, &rel, slots, state, dir, &log)?;
            Ok((true, String::new()))
        }
        Found::Release(rel) => Ok((
            false,
            format!(
                "{} {} is available for slot {}",
                rel.image, rel.version, slots.other
            ),
        )),
    }
}

fn load() -> Result<(UpdateConfig, Slots, State)> {
    let text = std::fs::read_to_string(CONFIG)
        .with_context(|| format!("reading {CONFIG}: is this a herd node with updates enabled?"))?;
    let local = std::fs::read_to_string(LOCAL).ok();
    let cfg = UpdateConfig::parse_with_local(&text, local.as_deref())
        .with_context(|| format!("{CONFIG} with the node's {LOCAL}"))?;
    let slots = Slots::detect()?;
    let mut state = State::load(Path::new(STATE_DIR))?;
    if let Some(line) = settle(&slots, &mut state)? {
        log(&line);
    }
    Ok((cfg, slots, state))
}

/// Settles a pending release (saving what changed); the line to log.
fn settle(slots: &Slots, state: &mut State) -> herd_update::Result<Option<String>> {
    let before = state.clone();
    let line = reconcile(slots, state, boot_is_good());
    if *state != before {
        state.save(Path::new(STATE_DIR))?;
    }
    Ok(line)
}

fn real_main(cmd: Cmd) -> Result<()> {
    let dir = Path::new(STATE_DIR);
    match cmd {
        Cmd::WriteSlot {
            repository,
            channel,
            root,
            usr,
            verity,
            state_dir,
            from_usr,
            from_verity,
            ca_file,
        } => write_slot(
            (&repository, ca_file.as_deref()),
            &channel,
            &root,
            (&usr, &verity),
            &state_dir,
            (from_usr.as_deref(), from_verity.as_deref()),
        ),
        Cmd::LockCycle {
            config,
            state_dir,
            hook,
            from_version,
            to_version,
            linger_secs,
        } => lock_cycle(
            &config,
            &state_dir,
            &hook,
            (&from_version, &to_version),
            linger_secs,
        ),
        Cmd::Status => {
            let (_, slots, state) = load()?;
            print!("{}", status(&slots, &state));
            Ok(())
        }
        Cmd::Check => {
            let (cfg, slots, mut state) = load()?;
            let (_, why) = once(&cfg, &slots, &mut state, dir, false)?;
            log(&why);
            Ok(())
        }
        Cmd::Apply { reboot: r } => {
            let (cfg, slots, mut state) = load()?;
            let (installed, why) = once(&cfg, &slots, &mut state, dir, true)?;
            if !installed {
                log(&why);
            } else if r {
                reboot();
            } else {
                log("run `herd-init reboot` to boot it");
            }
            Ok(())
        }
        Cmd::Rollback => {
            let (_, slots, state) = load()?;
            rollback(&slots, &state)
        }
        Cmd::Run { no_reboot } => {
            let (mut cfg, slots, mut state) = load()?;
            if no_reboot {
                cfg.reboot = Reboot::Never;
            }
            serve(&cfg, &slots, &mut state, dir)
        }
    }
}

fn status(slots: &Slots, state: &State) -> String {
    let pending = state
        .pending
        .as_ref()
        .map(|p| {
            if p.boot_id == boot_id() {
                format!("{} in slot {}, waiting for a reboot", p.version, p.slot)
            } else {
                format!(
                    "{} in slot {}, waiting for this boot to be blessed",
                    p.version, p.slot
                )
            }
        })
        .unwrap_or("-".into());
    let downloading = state
        .partial
        .as_ref()
        .map(|p| {
            format!(
                "{} {}: {} of {} bytes ({}%)",
                p.version,
                p.role,
                p.offset,
                p.size,
                p.offset * 100 / p.size.max(1)
            )
        })
        .unwrap_or("-".into());
    let delta = state.delta.as_ref().map(|d| d.line()).unwrap_or("-".into());
    format!(
        "running:          {} {} from slot {}\nother slot:       {}\npending:          {pending}\ndownloading:      {downloading}\nlast delta:       {delta}\nbad versions:     {}\nhighest sequence: {}\ntrusted keys:     {}\ntrusted time:     {}\nlast check:       {}\nrollout:          {}\nlast error:       {}\nreboot lock:      {}\n",
        slots.image,
        slots.version,
        slots.running,
        slots.other,
        if state.bad.is_empty() { "-".to_string() } else { state.bad.join(", ") },
        state.highest_seq,
        trusted_keys(state),
        if state.trusted_time == 0 { "-".to_string() } else { format!("{} (unix seconds, newest signing time seen)", state.trusted_time) },
        if state.last_check == 0 { "never".to_string() } else { format!("{} (unix seconds)", state.last_check) },
        state.halted.as_deref().unwrap_or("-"),
        state.last_error.as_deref().unwrap_or("-"),
        status_line(state.lock.as_ref())
    )
}

/// The newest key set this node verified past the baked one.
fn trusted_keys(state: &State) -> String {
    state
        .roots
        .last()
        .and_then(|e| e.document::<herd_release::Root>("kept root").ok())
        .map_or("the image's root (no rotation seen)".to_string(), |r| {
            format!("root {} (rotated, kept in the state)", r.version)
        })
}

fn rollback(slots: &Slots, state: &State) -> Result<()> {
    let esp = Esp::mount(&slots.disk)?;
    let entries = esp.entries();
    let of = |slot| {
        entries
            .iter()
            .filter_map(move |e| Some((e, e.boot_entry()?)))
            .filter(move |(_, b)| slots.boots(b, slot))
    };
    // The UKI (type #2) first: it is what this updater installs.
    let target = of(slots.other)
        .max_by_key(|(_, b)| b.kind == EntryKind::Uki)
        .map(|(e, _)| e);
    let version = target.and_then(|e| esp.uki_version(e));
    rollback_refusal(
        slots,
        target.map(|e| e.name.as_str()),
        version.as_deref(),
        &state.bad,
    )?;
    for (e, b) in of(slots.running) {
        // Zero tries left: the boot loader skips it and boots the other slot.
        let spent = b.with_tries(Some(Tries { left: 0, done: 1 }));
        esp.rename_entry(e, &spent.file_name())?;
    }
    drop(esp);
    log(&format!("slot {} will boot next", slots.other));
    reboot();
    Ok(())
}

fn serve(cfg: &UpdateConfig, slots: &Slots, state: &mut State, dir: &Path) -> Result<()> {
    log(&format!(
        "following {} channel {} every {} s; running {} from slot {}; reboot policy {}",
        cfg.repository,
        cfg.channel,
        cfg.interval_secs,
        slots.version,
        slots.running,
        match cfg.reboot {
            Reboot::Immediate => "immediate".to_string(),
            Reboot::Never => "never".to_string(),
            Reboot::Window => format!("window {} UTC", cfg.window.as_deref().unwrap_or("")),
            Reboot::Coordinated => format!(
                "coordinated ({}){}",
                cfg.lock.as_ref().map_or("-".into(), |l| format!(
                    "{:?} group {}",
                    l.backend, l.group
                )
                .to_lowercase()),
                cfg.window
                    .as_deref()
                    .map_or(String::new(), |w| format!(", window {w} UTC"))
            ),
        }
    ));
    // A slot held from before a reboot is kept alive and given back even
    // when the policy changed meanwhile.
    let mut coord = cfg
        .lock
        .as_ref()
        .map(|l| Coordinator::new(l, &node_id(dir)).map(|c| c.paced(cfg.interval_secs)))
        .transpose()
        .context("setting up the reboot lock ([lock] in the update configuration)")?;
    let mut attempt = 0u32;
    let mut said_lock = String::new();
    let me = boot_id();
    let mut last = String::new();
    let mut said_waiting = false;
    let mut said_publish = String::new();
    // load() logged how the pending release stands; say only changes.
    let mut settled = settle(slots, state).ok().flatten();
    loop {
        if state.pending.is_some() {
            match settle(slots, state) {
                Ok(Some(l)) if Some(&l) != settled.as_ref() => {
                    log(&l);
                    settled = Some(l);
                }
                Ok(_) => {}
                Err(e) => error!("{e}"),
            }
        }
        if let Some(c) = coord.as_mut() {
            let before = state.clone();
            for l in [c.resume(state), c.release_if_settled(state)]
                .into_iter()
                .flatten()
            {
                log(&l);
            }
            if *state != before {
                let _ = state.save(dir);
            }
        }
        let line = match once(cfg, slots, state, dir, true) {
            Ok((_, why)) => why,
            Err(e) => {
                state.last_error = Some(e.to_string());
                let _ = state.save(dir);
                format!("update failed: {e}")
            }
        };
        // Say each outcome once, not every interval.
        if !line.is_empty() && line != last {
            if line.starts_with("update failed") {
                error!("{line}");
            } else {
                log(&line);
            }
            last = line;
        }
        let mut wait_lock = None;
        if state.pending.as_ref().is_some_and(|p| p.boot_id == me) {
            let now = herd_update::now();
            if cfg.reboot == Reboot::Coordinated && cfg.may_reboot(now) {
                let Some(c) = coord.as_mut() else {
                    unreachable!("the configuration check requires [lock]")
                };
                match c.take(state, now) {
                    Take::Holding => {
                        publish(c, &node_id(dir), slots, state, &mut said_publish);
                        // Recorded before the reboot: the next boot gives it back.
                        match state.save(dir) {
                            Ok(()) => reboot(),
                            Err(e) => {
                                error!("not rebooting: the reboot slot could not be recorded: {e}")
                            }
                        }
                    }
                    Take::Wait { line, after } => {
                        let _ = state.save(dir);
                        if line != said_lock {
                            log(&line);
                            said_lock = line;
                        }
                        wait_lock = Some(after.unwrap_or_else(|| {
                            backoff(attempt, cfg.interval_secs, salt(&node_id(dir), now))
                        }));
                        attempt += 1;
                    }
                }
            } else if cfg.may_reboot(now) {
                reboot();
            } else if !said_waiting {
                said_waiting = true;
                log(&match cfg.reboot {
                    Reboot::Window | Reboot::Coordinated => format!(
                        "the new slot boots in the next maintenance window ({} UTC)",
                        cfg.window.as_deref().unwrap_or("")
                    ),
                    _ => "reboot policy is never: run `herd-init reboot` to boot the new slot"
                        .to_string(),
                });
            }
        }
        if let Some(c) = coord.as_mut() {
            // Not asking for a slot this round (outside the window, nothing
            // pending): don't hold up the nodes queued behind this one.
            if wait_lock.is_none() {
                if let Some(l) = c.withdraw(state) {
                    log(&l);
                    let _ = state.save(dir);
                }
            }
            publish(c, &node_id(dir), slots, state, &mut said_publish);
        }
        // Until herd-init blesses this boot nothing is checked: look again soon.
        let wait = if boot_is_good() {
            cfg.interval_secs + (herd_update::now() % 10) * cfg.interval_secs / 100
        } else {
            cfg.interval_secs.min(2)
        };
        std::thread::sleep(wait_lock.unwrap_or(Duration::from_secs(wait)));
    }
}

/// Publishes this node's fleet status record when it changed (etcd lock
/// backends); a failure is logged once, the updater carries on.
fn publish(c: &mut Coordinator, id: &str, slots: &Slots, state: &State, said: &mut String) {
    let rec = record(
        id,
        &slots.version,
        slots.running.name(),
        boot_is_good(),
        state,
        herd_update::now(),
    );
    match c.publish(&rec) {
        Some(line) if line != *said => {
            error!("{line}");
            *said = line;
        }
        Some(_) => {}
        None => said.clear(),
    }
}

/// Spreads the retries of nodes that wait for a slot together.
fn salt(id: &str, now: u64) -> u64 {
    id.bytes()
        .fold(now, |h, b| h.wrapping_mul(131).wrapping_add(b.into()))
}

/// `lock-cycle`: the coordination code of `serve` around a hook.
fn lock_cycle(
    config: &Path,
    state_dir: &Path,
    hook: &Path,
    (from, to): (&str, &str),
    linger_secs: u64,
) -> Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let cfg = UpdateConfig::parse(&text).with_context(|| config.display().to_string())?;
    let lock = cfg.lock.as_ref().with_context(|| {
        format!(
            "{}: no [lock] table: lock-cycle needs one",
            config.display()
        )
    })?;
    let id = node_id(state_dir);
    let mut state = State::load(state_dir)?;
    let mut coord = Coordinator::new(lock, &id)
        .with_context(|| format!("{}: setting up the reboot lock ([lock])", config.display()))?
        .paced(cfg.interval_secs);
    let mut said = String::new();
    let mut said_publish = String::new();
    let mut publish = |c: &mut Coordinator, version: &str, state: &State| {
        let rec = record(&id, version, "-", true, state, herd_update::now());
        match c.publish(&rec) {
            Some(line) if line != said_publish => {
                error!("{line}");
                said_publish = line;
            }
            _ => {}
        }
    };
    for attempt in 0.. {
        let now = herd_update::now();
        let took = coord.take(&mut state, now);
        publish(&mut coord, from, &state);
        match took {
            Take::Holding => break,
            Take::Wait { line, after } => {
                state.save(state_dir)?;
                if line != said {
                    log(&line);
                    said = line;
                }
                std::thread::sleep(
                    after.unwrap_or_else(|| backoff(attempt, cfg.interval_secs, salt(&id, now))),
                );
            }
        }
    }
    state.save(state_dir)?;
    log(&format!(
        "{id} holds a reboot slot; running {}",
        hook.display()
    ));
    let st = std::process::Command::new(hook)
        .status()
        .with_context(|| format!("running {}", hook.display()))?;
    anyhow::ensure!(st.success(), "{} failed: {st}", hook.display());
    // As after the next boot, once it is blessed (nothing pending).
    let line = coord
        .release_if_settled(&mut state)
        .unwrap_or_else(|| "no slot to give back".into());
    state.save(state_dir)?;
    publish(&mut coord, to, &state);
    log(&line);
    anyhow::ensure!(state.lock.is_none(), "{line}");
    std::thread::sleep(Duration::from_secs(linger_secs));
    Ok(())
}

fn write_slot(
    (repository, ca_file): (&str, Option<&Path>),
    channel: &str,
    root: &Path,
    (usr, verity): (&Path, &Path),
    state_dir: &Path,
    from: (Option<&Path>, Option<&Path>),
) -> Result<()> {
    let mut text = format!("repository = {repository:?}\nchannel = {channel:?}\n");
    if let Some(ca) = ca_file {
        let ca = std::path::absolute(ca).context("resolving --ca-file")?;
        text += &format!("ca_file = {:?}\n", ca.to_string_lossy());
    }
    let cfg = UpdateConfig::parse(&text)?;
    let client = herd_update::http::Client::for_config(&cfg)?;
    let trusted = trusted_root(root)?;
    for target in [usr, verity] {
        if !target.exists() {
            std::fs::File::create(target)
                .with_context(|| format!("creating {}", target.display()))?;
        }
    }
    let mut state = State::load(state_dir)?;
    let found = herd_update::apply::newest(&cfg, &trusted, &mut state);
    // What was verified (a newer root, the trusted time) is kept even when
    // the channel is refused, as on a node.
    state.save(state_dir)?;
    let rel = found?;
    let start = std::time::Instant::now();
    let (from_usr, from_verity) = (
        from.0.map(|p| p.to_string_lossy().into_owned()),
        from.1.map(|p| p.to_string_lossy().into_owned()),
    );
    herd_update::download::write_slot(
        &client,
        repository.trim_end_matches('/'),
        &rel,
        &usr.to_string_lossy(),
        &verity.to_string_lossy(),
        &mut state,
        state_dir,
        herd_update::download::Sources {
            usr: from_usr.as_deref(),
            verity: from_verity.as_deref(),
        },
        &log,
    )?;
    log(&format!(
        "wrote and verified {} {} in {:.2} s (usrhash {})",
        rel.image,
        rel.version,
        start.elapsed().as_secs_f64(),
        rel.usrhash
    ));
    Ok(())
}
