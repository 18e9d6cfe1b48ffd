//! The real-root stage: services, health, blessing, shutdown.

use std::fs;
use std::time::{Duration, Instant};

use herd_init::cmdline::Cmdline;
use herd_init::config::{parse_cidr, Config, Local, NetMode, BOOT_GOOD, LOCAL};

use crate::supervise::Supervisor;
use crate::sys::{MountFlags, RebootCommand, Signal};
use crate::{bless, info, input, modules, provision, sys, tpm};
use herd_contract::pcr;

const GRACE: Duration = Duration::from_secs(5);

fn late_modules() -> usize {
    // In the background, one at a time: PID 1 lives on, and threads would
    // leave heap arenas behind in its memory.
    modules::image_lists("/")
        .iter()
        .map(|list| modules::load_list(list.to_str().unwrap_or_default(), false))
        .sum()
}

fn network(cfg: &Config, hostname: &str) {
    if let Err(e) = herd_net::loopback_up() {
        info!("loopback: {e}");
    }
    if cfg.network.mode == NetMode::Off {
        info!("network: off (loopback only)");
        return;
    }
    let Some(iface) = cfg
        .network
        .interface
        .clone()
        .or_else(herd_net::first_ethernet)
    else {
        info!("network: no Ethernet interface");
        return;
    };
    if let Err(e) = herd_net::link_up(&iface) {
        info!("network: {e}");
        return;
    }
    match cfg.network.mode {
        NetMode::Static => {
            // Config::parse checked the address already.
            let Some(Ok((address, prefix_len))) = cfg.network.address.as_deref().map(parse_cidr)
            else {
                return;
            };
            let s = herd_net::StaticConfig {
                address,
                prefix_len,
                gateway: cfg.network.gateway,
                dns: cfg.network.dns.clone(),
            };
            match herd_net::configure_static(&iface, &s) {
                Ok(()) => info!("network: {iface} {address}/{prefix_len} (static)"),
                Err(e) => info!("network: {e}"),
            }
            if let Err(e) =
                herd_net::write_resolv_conf(std::path::Path::new("/etc/resolv.conf"), &s.dns)
            {
                info!("network: cannot write /etc/resolv.conf: {e}");
            }
        }
        NetMode::Dhcp => {
            info!("network: {iface} is up; DHCP runs in the background");
            let host = hostname.to_string();
            let _ = std::thread::Builder::new()
                .name("dhcp".into())
                .stack_size(128 * 1024)
                .spawn(move || herd_net::dhcp::run_forever(&iface, &host, &|m| info!("{m}")));
        }
        NetMode::Off => {}
    }
}

/// The node's own settings from provisioning (`/etc/herd/init.toml`).
fn local_settings() -> Local {
    match fs::read_to_string(LOCAL).map(|t| Local::parse(&t)) {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            info!("{LOCAL} is invalid ({e}); using the image's hostname and network");
            Local::default()
        }
        Err(_) => Local::default(),
    }
}

/// herd-init's own resident memory, from /proc/self/status: peak and
/// current, and the current split into private (anonymous) pages and pages
/// of the binary shared with the page cache.
fn own_memory() -> String {
    const FIELDS: [&str; 4] = ["VmHWM:", "VmRSS:", "RssAnon:", "RssFile:"];
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter(|l| FIELDS.iter().any(|f| l.starts_with(f)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

enum Halt {
    PowerOff,
    Reboot,
}

fn shutdown(sup: &mut Supervisor, how: Halt) -> ! {
    info!(
        "shutting down: stopping services (grace {} s)",
        GRACE.as_secs()
    );
    sup.stop_all(GRACE);
    sys::sync();
    let mut busy = Vec::new();
    for m in ["/var", "/etc", "/.state"] {
        if let Err(e) = sys::umount(m) {
            busy.push(format!("{m}: {e}"));
            let _ = sys::remount(m, MountFlags::RDONLY | MountFlags::BIND);
        }
    }
    let _ = sys::remount("/.state", MountFlags::RDONLY);
    sys::sync();
    if busy.is_empty() {
        info!("STATE unmounted");
    } else {
        info!(
            "STATE remounted read-only, not unmounted ({})",
            busy.join(", ")
        );
    }
    let (msg, cmd) = match how {
        Halt::PowerOff => ("powering off", RebootCommand::PowerOff),
        Halt::Reboot => ("rebooting", RebootCommand::Restart),
    };
    info!("{msg}");
    let e = sys::reboot(cmd);
    info!("reboot(2) failed: {e:?}");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Runs PID 1 in the real root; never returns.
pub fn run() -> ! {
    let _ = sys::block_signals(true);
    // Ctrl-Alt-Del becomes SIGINT to PID 1 instead of an instant reboot.
    let _ = sys::reboot(RebootCommand::CadOff);
    let _ = fs::create_dir_all("/sys/fs/cgroup");
    if let Err(e) = sys::mount(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    ) {
        info!("cannot mount cgroup2: {e}");
    }
    let _ = sys::mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=1777",
    );
    tpm::phase(pcr::SYSINIT);
    let cmdline = Cmdline::parse(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let cfg = match fs::read_to_string("/usr/lib/herd/init.toml").map(|t| Config::parse(&t)) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            info!("/usr/lib/herd/init.toml is invalid ({e}); using defaults");
            Config::default()
        }
        Err(_) => Config::default(),
    };
    provision::run();
    let cfg = cfg.with_local(local_settings());
    let hostname = cfg
        .hostname
        .clone()
        .or_else(|| {
            fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herd".into());
    if let Err(e) = sys::sethostname(&hostname) {
        info!("cannot set hostname {hostname}: {e}");
    }
    let version = herd_init::os_release::field("IMAGE_VERSION")
        .or_else(|| herd_init::os_release::field("VERSION_ID"))
        .unwrap_or_default();
    let mut sup = Supervisor::new(&cfg.services);
    sup.start_due();
    // Late modules (network, ESP, EFI variables, power button) and the
    // network come up in the background, after the services started:
    // services do not wait for them.
    let late_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (cfg, hostname, done) = (cfg.clone(), hostname.clone(), late_done.clone());
        let _ = std::thread::Builder::new()
            .name("late".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let n = late_modules();
                info!("loaded {n} modules from /usr");
                network(&cfg, &hostname);
                done.store(true, std::sync::atomic::Ordering::Release);
            });
    }
    input::watch_power_button();
    tpm::phase(pcr::READY);
    tpm::report();
    info!(
        "ready slot={} version={version} usrhash={} in {} ms",
        cmdline.slot.as_deref().unwrap_or("?"),
        cmdline.usrhash.as_deref().unwrap_or("?"),
        sys::boottime().as_millis()
    );
    provision::close_at_ready();
    let bless_after = Duration::from_secs(cfg.health.bless_after_secs);
    let deadline = Duration::from_secs(cfg.health.deadline_secs);
    // A failed bless (say the ESP could not be mounted for a moment) is
    // tried again with a growing pause, until the health deadline.
    let mut bless_failures = 0u32;
    let mut bless_again = Instant::now();
    let mut good = false;
    let mut overdue = false;
    let start = Instant::now();
    loop {
        let sig = sys::wait_signal(Duration::from_millis(250));
        while let Some((pid, status)) = sys::reap() {
            sup.exited(pid, status, false);
        }
        match sig {
            Some(Signal::TERM | Signal::POWER | Signal::USR2) => shutdown(&mut sup, Halt::PowerOff),
            Some(Signal::INT | Signal::USR1) => shutdown(&mut sup, Halt::Reboot),
            _ => {}
        }
        sup.start_due();
        if !good
            && !overdue
            && Instant::now() >= bless_again
            && sup.healthy()
            && sup.last_change.elapsed() >= bless_after
            && start.elapsed() >= bless_after
        {
            match bless::bless() {
                Ok(m) => {
                    good = true;
                    info!("boot is good: {m}");
                    if let Err(e) = fs::create_dir_all("/run/herd")
                        .and_then(|_| fs::write(BOOT_GOOD, format!("{m}\n")))
                    {
                        info!("cannot write {BOOT_GOOD} ({e}): the updater will wait for it");
                    }
                }
                Err(e) => {
                    bless_failures += 1;
                    let pause = bless_pause(bless_failures);
                    bless_again = Instant::now() + pause;
                    info!(
                        "could not bless this boot (try {bless_failures}): {e}; trying again in {} s",
                        pause.as_secs()
                    );
                }
            }
            if good || bless_failures == 1 {
                info!("memory: {}", own_memory());
            }
        }
        if !good && !overdue && !deadline.is_zero() && start.elapsed() >= deadline {
            overdue = true;
            let why = sup.unhealthy(bless_after);
            let why = if why.is_empty() {
                "it could not be blessed".to_string()
            } else {
                format!("unhealthy: {}", why.join(", "))
            };
            let secs = deadline.as_secs();
            match bless::counted_entry() {
                Ok(Some(entry)) => {
                    info!(
                        "boot is not good {secs} s after ready ({why}): rebooting, so the boot loader counts the try of {entry} and boots the other slot once its tries run out"
                    );
                    shutdown(&mut sup, Halt::Reboot)
                }
                Ok(None) => info!(
                    "boot is not good {secs} s after ready ({why}); the boot loader counts no tries for this entry, so a reboot would not fall back: staying up"
                ),
                Err(e) => info!(
                    "boot is not good {secs} s after ready ({why}); cannot tell whether the boot loader counts tries ({e}): staying up"
                ),
            }
        }
    }
}

/// The pause before bless try `failures + 1`: 2, 4, 8, ... s, at most 60 s.
fn bless_pause(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.min(6)).min(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bless_retries_back_off_to_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|n| bless_pause(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
