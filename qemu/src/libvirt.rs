//! A libvirt domain for a herd disk image (`herd vm libvirt-xml`): UEFI
//! with OVMF and a per-domain copy of its variables, q35, the disk and a
//! NIC on virtio, an emulated TPM 2.0 when asked, and the serial console.
//! `virt-xml-validate` (libvirt-clients) is the referee in the tests.

use crate::command::format_of;
use crate::{Accel, Error, VmConfig};

/// Escapes text for XML attributes and content.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// The domain XML for `cfg`'s disk under `name`. The disk path is made
/// absolute (libvirt needs it). `cfg.forwards` become `<portForward>`s on
/// 127.0.0.1, which libvirt supports only with the passt backend of user
/// networking (Debian package `passt`), so the NIC uses passt when there are
/// forwards and libvirt's default (SLIRP) otherwise. Guest-to-host forwards
/// have no libvirt counterpart and are refused.
pub fn domain_xml(cfg: &VmConfig, name: &str) -> Result<String, Error> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::Disk {
            path: cfg.disk.display().to_string(),
            message: format!("domain name {name:?}: give a non-empty name without '/'"),
        });
    }
    if !cfg.guest_forwards.is_empty() {
        return Err(Error::Disk {
            path: cfg.disk.display().to_string(),
            message: "guest-to-host forwards have no libvirt equivalent: drop them".into(),
        });
    }
    let meta = std::fs::metadata(&cfg.disk).map_err(|e| Error::Disk {
        path: cfg.disk.display().to_string(),
        message: e.to_string(),
    })?;
    let block = std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type());
    if !meta.is_file() && !block {
        return Err(Error::Disk {
            path: cfg.disk.display().to_string(),
            message: "not a regular file or block device".into(),
        });
    }
    let format = format_of(cfg)?;
    let disk = std::fs::canonicalize(&cfg.disk).map_err(|e| Error::Disk {
        path: cfg.disk.display().to_string(),
        message: e.to_string(),
    })?;
    let kind = match cfg.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "qemu",
    };
    let tpm = if cfg.tpm {
        "\n    <tpm model='tpm-crb'>\n      <backend type='emulator' version='2.0'/>\n    </tpm>"
    } else {
        ""
    };
    let mut net = String::new();
    if !cfg.forwards.is_empty() {
        net.push_str("\n      <backend type='passt'/>");
        for f in &cfg.forwards {
            if f.host == 0 || f.guest == 0 {
                return Err(Error::Disk {
                    path: cfg.disk.display().to_string(),
                    message: format!("forward {}:{}: ports must be 1-65535", f.host, f.guest),
                });
            }
            net.push_str(&format!(
                "\n      <portForward proto='tcp' address='127.0.0.1'>\n        \
                 <range start='{}' to='{}'/>\n      </portForward>",
                f.host, f.guest
            ));
        }
    }
    Ok(format!(
        "<domain type='{kind}'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>{cpus}</vcpu>{sysinfo}
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>{code}</loader>
    <nvram template='{vars}'/>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='{cpu_mode}'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='{disk_type}' device='disk'>
      <driver name='qemu' type='{format}'/>
      <source {source}='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <model type='virtio'/>{net}
    </interface>
    <serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>{tpm}
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
  </devices>
</domain>
",
        name = esc(name),
        sysinfo = match &cfg.config {
            Some(c) => format!(
                "\n  <sysinfo type='fwcfg'>\n    <entry name='{}' file='{}'/>\n  </sysinfo>",
                crate::command::FW_CFG_CONFIG,
                esc(&crate::command::config_file(c)?.display().to_string())
            ),
            None => String::new(),
        },
        mem = cfg.memory_mib,
        cpus = cfg.cpus,
        code = esc(&cfg.ovmf_code.display().to_string()),
        vars = esc(&cfg.ovmf_vars_template.display().to_string()),
        cpu_mode = if cfg.accel == Accel::Kvm {
            "host-passthrough"
        } else {
            "host-model"
        },
        disk = esc(&disk.display().to_string()),
        disk_type = if block { "block" } else { "file" },
        source = if block { "dev" } else { "file" },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_use_passt() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.raw");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let mut cfg = VmConfig::new(p);
        let x = domain_xml(&cfg, "n").unwrap();
        assert!(!x.contains("passt") && !x.contains("portForward"), "{x}");
        assert!(x.contains("type='raw'") && !x.contains("<tpm"), "{x}");
        cfg.forwards.push(crate::Forward {
            host: 8080,
            guest: 80,
        });
        cfg.forwards.push(crate::Forward {
            host: 2222,
            guest: 22,
        });
        let x = domain_xml(&cfg, "n").unwrap();
        assert!(x.contains("<backend type='passt'/>"), "{x}");
        assert!(x.contains("<range start='8080' to='80'/>"), "{x}");
        assert!(x.contains("<range start='2222' to='22'/>"), "{x}");
        cfg.guest_forwards
            .push(crate::GuestForward { guest: 1, host: 2 });
        assert!(domain_xml(&cfg, "n").is_err());
    }

    #[test]
    fn escapes_and_detects_the_format() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a&b<c>.qcow2");
        std::fs::write(&p, b"QFI\xfb....").unwrap();
        let mut cfg = VmConfig::new(p);
        cfg.tpm = true;
        let x = domain_xml(&cfg, "n'1").unwrap();
        assert!(x.contains("a&amp;b&lt;c&gt;.qcow2"), "{x}");
        assert!(x.contains("<name>n&apos;1</name>"));
        assert!(x.contains("type='qcow2'") && x.contains("tpm-crb"));
        assert!(domain_xml(&VmConfig::new(t.path().join("missing.raw")), "x").is_err());
    }

    #[test]
    fn node_configuration_through_fw_cfg() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.raw");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let c = t.path().join("node.toml");
        std::fs::write(&c, "hostname = \"n\"\n").unwrap();
        let mut cfg = VmConfig::new(p);
        assert!(!domain_xml(&cfg, "n").unwrap().contains("sysinfo"));
        cfg.config = Some(c.clone());
        let x = domain_xml(&cfg, "n").unwrap();
        assert!(
            x.contains(&format!(
                "<sysinfo type='fwcfg'>\n    <entry name='opt/herd/config' file='{}'/>",
                c.display()
            )),
            "{x}"
        );
        cfg.config = Some(t.path().join("missing.toml"));
        let e = domain_xml(&cfg, "n").unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }
}
