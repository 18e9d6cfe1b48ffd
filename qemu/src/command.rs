//! Preparing the QEMU (and swtpm) command lines and private files.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{io, Accel, DiskFormat, Error, OnReboot, VmConfig};

pub const QEMU: &str = "qemu-system-x86_64";

/// Files and helper processes that live as long as one VM.
pub struct Prepared {
    /// Private files (OVMF variables, QMP socket, TPM state); removed on
    /// drop, or by a later [`prepare`] once this process is gone (see
    /// [`sweep`]).
    pub _dir: tempfile::TempDir,
    pub qmp: PathBuf,
    pub swtpm: Option<Child>,
    pub args: Vec<String>,
    /// Children die with the thread that spawned them (see [`tie`]).
    pub tied: bool,
}

impl Prepared {
    /// The QEMU command, tied to this process like swtpm.
    pub fn qemu(&self) -> Command {
        let mut c = Command::new(QEMU);
        c.args(&self.args);
        tie(&mut c, self.tied);
        c
    }
}

/// Puts a child in its own process group, so a terminal's Ctrl-C (sent to
/// the foreground group) reaches herd, which shuts the guest down, and not
/// QEMU or swtpm directly. With `die_with_parent` the child also gets
/// SIGKILL when its parent goes away, even by SIGKILL, so QEMU never
/// outlives `herd vm run`.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits,
/// not the process: only ask for it from a thread that lives as long as the
/// child. [`crate::run`] does, as it blocks its caller's thread until QEMU
/// has been reaped; [`crate::Vm`] does not (tests may move a `Vm` between
/// threads), so it kills QEMU on drop instead.
pub(crate) fn tie(cmd: &mut Command, die_with_parent: bool) {
    cmd.process_group(0);
    if !die_with_parent {
        return;
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only
    // calls async-signal-safe functions (prctl, getppid) and builds an
    // io::Error from a raw code, which does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died between fork and prctl: no signal will come.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The start time of process `pid` (clock ticks after boot, field 22 of
/// /proc/PID/stat): with the pid it names one process, even after the pid
/// is reused.
fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces and ')')
    // start at field 3.
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()
}

const DIR_PREFIX: &str = "herd-vm-";

/// The private directory's name prefix: `herd-vm-PID-START-`, naming the
/// process that owns it.
fn dir_prefix() -> String {
    let pid = std::process::id();
    format!("{DIR_PREFIX}{pid}-{}-", start_time(pid).unwrap_or(0))
}

/// Removes the private directories in `tmp` whose owner process is gone:
/// a runner killed by SIGKILL cannot clean up after itself (its QEMU and
/// swtpm die with it, see [`tie`]), so the next one does. Directories of
/// live processes, of other users, and of other names are left alone.
/// Returns the directories removed.
pub(crate) fn sweep(tmp: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return removed;
    };
    // SAFETY: geteuid has no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let mut parts = rest.splitn(3, '-');
        let (Some(Ok(pid)), Some(Ok(start)), Some(_)) = (
            parts.next().map(str::parse::<u32>),
            parts.next().map(str::parse::<u64>),
            parts.next(),
        ) else {
            continue;
        };
        if start_time(pid) == Some(start) {
            continue;
        }
        let path = e.path();
        match path.symlink_metadata() {
            Ok(m) if m.is_dir() && m.uid() == me => {}
            _ => continue,
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(
                    "removed {}, left by herd process {pid}, which is gone",
                    path.display()
                );
                removed.push(path);
            }
            Err(e) => tracing::warn!(
                "cannot remove {} (left by herd process {pid}, which is gone): {e}; remove it by hand",
                path.display()
            ),
        }
    }
    removed
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(mut s) = self.swtpm.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

pub(crate) fn format_of(cfg: &VmConfig) -> Result<&'static str, Error> {
    let disk = cfg.disk.display().to_string();
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(&cfg.disk).map_err(|e| Error::Disk {
        path: disk.clone(),
        message: e.to_string(),
    })?;
    Ok(match cfg.disk_format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
        DiskFormat::Detect => {
            let _ = f.read(&mut magic);
            if &magic == b"QFI\xfb" {
                "qcow2"
            } else {
                "raw"
            }
        }
    })
}

fn start_swtpm(dir: &Path, tied: bool) -> Result<Child, Error> {
    let state = dir.join("tpm");
    std::fs::create_dir_all(&state).map_err(io("creating the TPM state directory"))?;
    let sock = dir.join("tpm.sock");
    let mut cmd = Command::new("swtpm");
    tie(&mut cmd, tied);
    let child = cmd
        .arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", sock.display()))
        .arg("--terminate")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(io("starting swtpm"))?;
    let t0 = Instant::now();
    while !sock.exists() {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(Error::Io {
                what: "waiting for swtpm".into(),
                source: std::io::Error::other("its control socket did not appear within 10 s"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// The fw_cfg item name of a herd node configuration.
pub const FW_CFG_CONFIG: &str = "opt/herd/config";

/// A node configuration file, checked to be readable, made absolute.
pub(crate) fn config_file(c: &Path) -> Result<PathBuf, Error> {
    let meta = std::fs::metadata(c).map_err(io(format!(
        "node configuration {}: cannot read it",
        c.display()
    )))?;
    if !meta.is_file() {
        return Err(Error::Io {
            what: format!("node configuration {}", c.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    std::path::absolute(c).map_err(io(format!("node configuration {}", c.display())))
}

/// `-fw_cfg name=opt/herd/config,file=PATH`, commas in PATH doubled as
/// QEMU's option syntax wants.
pub(crate) fn fw_cfg_arg(c: &Path) -> Result<String, Error> {
    let p = config_file(c)?;
    Ok(format!(
        "name={FW_CFG_CONFIG},file={}",
        p.display().to_string().replace(',', ",,")
    ))
}

/// Checks the host, makes the private files, starts swtpm, and returns the
/// QEMU arguments (serial console on stdio). `tied`: the children die with
/// the calling thread (see [`tie`]).
pub fn prepare(cfg: &VmConfig, tied: bool) -> Result<Prepared, Error> {
    if which(QEMU).is_none() {
        return Err(Error::Missing {
            what: "qemu-system-x86_64",
            path: "$PATH".into(),
            package: "qemu-system-x86",
        });
    }
    for (f, what) in [
        (&cfg.ovmf_code, "OVMF firmware"),
        (&cfg.ovmf_vars_template, "OVMF variables template"),
    ] {
        if !f.is_file() {
            return Err(Error::Missing {
                what,
                path: f.display().to_string(),
                package: "ovmf",
            });
        }
    }
    if cfg.tpm && which("swtpm").is_none() {
        return Err(Error::Missing {
            what: "swtpm",
            path: "$PATH".into(),
            package: "swtpm",
        });
    }
    let format = format_of(cfg)?;
    sweep(&std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix(&dir_prefix())
        .tempdir()
        .map_err(io("creating a private VM directory"))?;
    let vars = match &cfg.vars {
        Some(v) => {
            if !v.exists() {
                std::fs::copy(&cfg.ovmf_vars_template, v)
                    .map_err(io(format!("creating {}", v.display())))?;
            }
            v.clone()
        }
        None => {
            let v = dir.path().join("OVMF_VARS.fd");
            std::fs::copy(&cfg.ovmf_vars_template, &v).map_err(io("copying the OVMF variables"))?;
            v
        }
    };
    let qmp = dir.path().join("qmp.sock");
    let mut net = "user,id=n0,restrict=on".to_string();
    for f in &cfg.forwards {
        net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
    }
    if !cfg.guest_forwards.is_empty() && which("busybox").is_none() {
        return Err(Error::Missing {
            what: "busybox (relays guest forwards)",
            path: "$PATH".into(),
            package: "busybox-static",
        });
    }
    for g in &cfg.guest_forwards {
        // A `tcp:` chardev carries one connection for the VM's lifetime; a
        // command is started per guest connection, so every connection
        // (and every reboot) gets its own relay to the host's loopback.
        net.push_str(&format!(
            ",guestfwd=tcp:10.0.2.100:{}-cmd:busybox nc 127.0.0.1 {}",
            g.guest, g.host
        ));
    }
    let before = cfg.disks_before.iter().flat_map(|d| {
        [
            "-drive".to_string(),
            format!(
                "if=virtio,format=raw,file={}",
                d.display().to_string().replace(',', ",,")
            ),
        ]
    });
    let mut args: Vec<String> = vec![
        "-machine".into(),
        if cfg.secure_boot {
            "q35,smm=on".into()
        } else {
            "q35".into()
        },
        "-accel".into(),
        match cfg.accel {
            Accel::Tcg => "tcg".into(),
            Accel::Kvm => "kvm".into(),
        },
        "-m".into(),
        cfg.memory_mib.to_string(),
        "-smp".into(),
        cfg.cpus.to_string(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        "stdio".into(),
        "-drive".into(),
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            cfg.ovmf_code.display()
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ];
    // Disks attached ahead of the boot disk get the lower PCI slots, so the
    // guest probes and names them first.
    args.extend(before);
    args.extend([
        "-drive".into(),
        format!(
            "if=virtio,format={format},file={}{}",
            cfg.disk.display(),
            if cfg.snapshot { ",snapshot=on" } else { "" }
        ),
        "-netdev".into(),
        net,
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ]);
    if cfg.on_reboot == OnReboot::Exit {
        args.push("-no-reboot".into());
    }
    let swtpm = if cfg.tpm {
        let child = start_swtpm(dir.path(), tied)?;
        args.extend([
            "-chardev".into(),
            format!(
                "socket,id=chrtpm,path={}",
                dir.path().join("tpm.sock").display()
            ),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-tis,tpmdev=tpm0".into(),
        ]);
        Some(child)
    } else {
        None
    };
    if let Some(c) = &cfg.config {
        args.extend(["-fw_cfg".into(), fw_cfg_arg(c)?]);
    }
    if cfg.secure_boot {
        // The secboot firmware keeps its variables behind SMM.
        args.extend([
            "-global".into(),
            "driver=cfi.pflash01,property=secure,value=on".into(),
        ]);
    }
    args.extend(cfg.extra_args.iter().cloned());
    Ok(Prepared {
        _dir: dir,
        qmp,
        swtpm,
        args,
        tied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_only_dirs_whose_owner_is_gone() {
        let t = tempfile::tempdir().unwrap();
        // A process that has exited and been reaped: its pid names no one
        // with that start time any more.
        let mut c = Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = c.id();
        let start = start_time(pid).expect("start time of a live child");
        c.wait().unwrap();
        let dead = t.path().join(format!("{DIR_PREFIX}{pid}-{start}-abc123"));
        std::fs::create_dir_all(dead.join("tpm")).unwrap();
        std::fs::write(dead.join("OVMF_VARS.fd"), b"x").unwrap();
        // This live process's own directory.
        let mine = t.path().join(format!("{}xyz789", dir_prefix()));
        std::fs::create_dir(&mine).unwrap();
        // A live pid (ours) with another start time: the pid was reused.
        let reused = t
            .path()
            .join(format!("{DIR_PREFIX}{}-1-def456", std::process::id()));
        std::fs::create_dir(&reused).unwrap();
        // Names that say no owner are not ours to judge.
        let old = t.path().join("herd-vm-Ab3dEf");
        std::fs::create_dir(&old).unwrap();
        let mut removed = sweep(t.path());
        removed.sort();
        let mut want = vec![dead.clone(), reused.clone()];
        want.sort();
        assert_eq!(removed, want);
        assert!(!dead.exists() && !reused.exists());
        assert!(mine.exists() && old.exists());
    }

    #[test]
    fn fw_cfg_argument() {
        let t = tempfile::tempdir().unwrap();
        let c = t.path().join("a,b.toml");
        std::fs::write(&c, "hostname = \"n\"\n").unwrap();
        let a = fw_cfg_arg(&c).unwrap();
        assert_eq!(
            a,
            format!("name=opt/herd/config,file={}/a,,b.toml", t.path().display())
        );
        assert!(fw_cfg_arg(&t.path().join("missing")).is_err());
        assert!(fw_cfg_arg(t.path()).is_err());
    }
}
