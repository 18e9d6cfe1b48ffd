//! What VM to start.

use std::path::PathBuf;

/// Disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Look at the file's first bytes.
    Detect,
    /// Raw disk image.
    Raw,
    /// qcow2.
    Qcow2,
}

/// CPU emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// Software emulation; works everywhere.
    #[default]
    Tcg,
    /// Hardware virtualisation; only when asked.
    Kvm,
}

/// What a guest reboot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReboot {
    /// Reset the machine, like hardware.
    #[default]
    Reset,
    /// Exit QEMU (`-no-reboot`), so a caller sees each boot separately.
    Exit,
}

/// `hostfwd`: host 127.0.0.1:`host` → guest port `guest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Host port (bound on 127.0.0.1 only).
    pub host: u16,
    /// Guest port.
    pub guest: u16,
}

/// `guestfwd`: guest 10.0.2.100:`guest` → host 127.0.0.1:`host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestForward {
    /// Port the guest connects to on 10.0.2.100.
    pub guest: u16,
    /// Port on the host's loopback.
    pub host: u16,
}

/// A VM to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Disk image.
    pub disk: PathBuf,
    /// Its format.
    pub disk_format: DiskFormat,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// TCG or KVM.
    pub accel: Accel,
    /// Attach an emulated TPM 2.0 (swtpm).
    pub tpm: bool,
    /// Host → guest TCP forwards.
    pub forwards: Vec<Forward>,
    /// Guest → host loopback TCP forwards.
    pub guest_forwards: Vec<GuestForward>,
    /// OVMF code.
    pub ovmf_code: PathBuf,
    /// OVMF variables template.
    pub ovmf_vars_template: PathBuf,
    /// Persistent variables file (created from the template when missing);
    /// `None` = a private copy that goes away with the VM.
    pub vars: Option<PathBuf>,
    /// Secure Boot firmware: `ovmf_code` is then the secboot build, which
    /// needs SMM and a secure pflash (see [`crate::secureboot`]).
    pub secure_boot: bool,
    /// What a guest reboot does.
    pub on_reboot: OnReboot,
    /// Discard disk writes.
    pub snapshot: bool,
    /// A herd node configuration handed to the guest through QEMU's
    /// fw_cfg as `opt/herd/config` (read by herd-provision on first boot).
    pub config: Option<PathBuf>,
    /// Raw disk images attached (virtio, writable) ahead of `disk`, so the
    /// guest finds and names them first (`vda`, …; `disk` comes after).
    pub disks_before: Vec<PathBuf>,
    /// More QEMU arguments.
    pub extra_args: Vec<String>,
}

impl VmConfig {
    /// Defaults: 1 GiB, 2 CPUs, TCG, no TPM, no forwards, Debian's OVMF.
    pub fn new(disk: PathBuf) -> Self {
        VmConfig {
            disk,
            disk_format: DiskFormat::Detect,
            memory_mib: 1024,
            cpus: 2,
            accel: Accel::Tcg,
            tpm: false,
            forwards: Vec::new(),
            guest_forwards: Vec::new(),
            ovmf_code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            ovmf_vars_template: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            vars: None,
            secure_boot: false,
            on_reboot: OnReboot::Reset,
            snapshot: false,
            config: None,
            disks_before: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}
