//! The real-root stage: services, health, blessing, shutdown.

use std::fs;
use std::time::Duration;

use herd_init::cmdline::Cmdline;
use herd_init::config::{parse_cidr, Config, Local, NetMode, LOCAL};

use crate::health::Health;
use crate::supervise::Supervisor;
use crate::sys::{MountFlags, RebootCommand, Signal};
use crate::{info, input, modules, provision, sys, tpm};
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
pub fn own_memory() -> String {
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
    mount_cgroup_and_tmp();
    tpm::phase(pcr::SYSINIT);
    let cmdline = Cmdline::parse(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let cfg = image_config();
    provision::run();
    let cfg = cfg.with_local(local_settings());
    let hostname = set_hostname(&cfg);
    let mut sup = Supervisor::new(&cfg.services);
    sup.start_due();
    start_late(&cfg, &hostname);
    input::watch_power_button();
    tpm::phase(pcr::READY);
    tpm::report();
    let version = herd_init::os_release::field("IMAGE_VERSION")
        .or_else(|| herd_init::os_release::field("VERSION_ID"))
        .unwrap_or_default();
    info!(
        "ready slot={} version={version} usrhash={} in {} ms",
        cmdline.slot.as_deref().unwrap_or("?"),
        cmdline.usrhash.as_deref().unwrap_or("?"),
        sys::boottime().as_millis()
    );
    provision::close_at_ready();
    let mut health = Health::new(&cfg.health);
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
        if health.check(&sup) {
            shutdown(&mut sup, Halt::Reboot)
        }
    }
}

/// cgroup2 on /sys/fs/cgroup and a tmpfs on /tmp.
fn mount_cgroup_and_tmp() {
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
}

/// The image's configuration (`/usr/lib/herd/init.toml`), or the defaults.
fn image_config() -> Config {
    match fs::read_to_string("/usr/lib/herd/init.toml").map(|t| Config::parse(&t)) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            info!("/usr/lib/herd/init.toml is invalid ({e}); using defaults");
            Config::default()
        }
        Err(_) => Config::default(),
    }
}

/// Sets the hostname: the configuration's, else /etc/hostname's, else
/// `herd`; returns it.
fn set_hostname(cfg: &Config) -> String {
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
    hostname
}

/// Late modules (network, ESP, EFI variables, power button) and the
/// network come up in the background, after the services started:
/// services do not wait for them.
fn start_late(cfg: &Config, hostname: &str) {
    let (cfg, hostname) = (cfg.clone(), hostname.to_string());
    let _ = std::thread::Builder::new()
        .name("late".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let n = late_modules();
            info!("loaded {n} modules from /usr");
            network(&cfg, &hostname);
        });
}
