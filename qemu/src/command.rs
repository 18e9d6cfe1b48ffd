//! Preparing the QEMU (and swtpm) command lines and private files.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{io, Accel, DiskFormat, Error, OnReboot, VmConfig};

pub const QEMU: &str = "qemu-system-x86_64";

/// Files and helper processes that live as long as one VM.
pub struct Prepared {
    /// Private files (OVMF variables, QMP socket, TPM state); removed on drop.
    pub _dir: tempfile::TempDir,
    pub qmp: PathBuf,
    pub swtpm: Option<Child>,
    pub args: Vec<String>,
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

fn start_swtpm(dir: &Path) -> Result<Child, Error> {
    let state = dir.join("tpm");
    std::fs::create_dir_all(&state).map_err(io("creating the TPM state directory"))?;
    let sock = dir.join("tpm.sock");
    let child = Command::new("swtpm")
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
/// QEMU arguments (serial console on stdio).
pub fn prepare(cfg: &VmConfig) -> Result<Prepared, Error> {
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
    let dir = tempfile::Builder::new()
        .prefix("herd-vm-")
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
        let child = start_swtpm(dir.path())?;
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
