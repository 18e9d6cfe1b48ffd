//! The checks a parsed pod manifest must pass beyond its schema: names,
//! volumes, images, environment, ports, mounts, resources, security
//! context and probes. The first failing field is reported, in the order
//! the manifest gives them.

use std::collections::BTreeSet;

use crate::{host_path, quantity, Container, Pod, PodError, Volume, USER_NAMESPACE_IDS};

/// A field that fails a check, and why.
type Bad = (String, String);

fn bad(field: impl Into<String>, message: impl Into<String>) -> Result<(), Bad> {
    Err((field.into(), message.into()))
}

pub(crate) fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

const CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
    "NET_ADMIN",
    "SYS_TIME",
    "SYS_NICE",
    "SYS_RESOURCE",
    "IPC_LOCK",
    "SYS_PTRACE",
    "ALL",
];

impl Pod {
    /// Checks what the schema cannot; `file` names the manifest in errors.
    pub(crate) fn check(&self, file: &str) -> Result<(), PodError> {
        self.check_fields().map_err(|(field, message)| PodError {
            file: file.into(),
            field,
            message,
        })
    }

    fn check_fields(&self) -> Result<(), Bad> {
        if self.api_version != "v1" || self.kind != "Pod" {
            return bad(
                "apiVersion/kind",
                format!("{}/{} is not v1/Pod", self.api_version, self.kind),
            );
        }
        if !dns_label(&self.metadata.name) {
            return bad(
                "metadata.name",
                format!(
                    "{:?} is not a DNS label (lowercase letters, digits, -; at most 63)",
                    self.metadata.name
                ),
            );
        }
        if self.spec.containers.is_empty() {
            return bad("spec.containers", "a pod needs at least one container");
        }
        let mut volumes = BTreeSet::new();
        for (i, v) in self.spec.volumes.iter().enumerate() {
            let f = format!("spec.volumes[{i}]");
            if !dns_label(&v.name) || !volumes.insert(v.name.as_str()) {
                return bad(
                    format!("{f}.name"),
                    format!("{:?}: not a DNS label, or used twice", v.name),
                );
            }
            check_volume(&f, v)?;
        }
        let mut names = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        for (i, c) in self.spec.containers.iter().enumerate() {
            let f = format!("spec.containers[{i}]");
            if !dns_label(&c.name) || !names.insert(c.name.as_str()) {
                return bad(
                    format!("{f}.name"),
                    format!("{:?}: not a DNS label, or used twice", c.name),
                );
            }
            check_image(&f, c)?;
            check_env(&f, c)?;
            check_ports(&f, c, &mut host_ports)?;
            check_mounts(&f, c, &volumes)?;
            check_resources(&f, c)?;
            self.check_security(&f, c)?;
            check_probe(&f, c)?;
        }
        Ok(())
    }

    /// The security context of container `c` (field `f`).
    fn check_security(&self, f: &str, c: &Container) -> Result<(), Bad> {
        let sc = &c.security_context;
        for (key, id) in [
            ("runAsUser", sc.run_as_user),
            ("runAsGroup", sc.run_as_group),
        ] {
            if self.user_namespace() && id.is_some_and(|id| id >= USER_NAMESPACE_IDS) {
                return bad(
                    format!("{f}.securityContext.{key}"),
                    format!(
                        "{} is not in the pod's user namespace (ids 0-{}); use a smaller id, or hostUsers: true",
                        id.unwrap_or_default(),
                        USER_NAMESPACE_IDS - 1
                    ),
                );
            }
        }
        if sc.privileged == Some(true) {
            return bad(
                format!("{f}.securityContext.privileged"),
                "privileged containers are not supported on herd",
            );
        }
        if sc.allow_privilege_escalation == Some(true) {
            return bad(
                format!("{f}.securityContext.allowPrivilegeEscalation"),
                "herd always sets no_new_privs; only false is accepted",
            );
        }
        let Some(caps) = &sc.capabilities else {
            return Ok(());
        };
        if caps
            .add
            .iter()
            .any(|c| c.trim_start_matches("CAP_") == "ALL")
        {
            return bad(
                format!("{f}.securityContext.capabilities.add"),
                "ALL cannot be added on herd (it would mean every capability, which herd does not grant); name the capabilities the container needs",
            );
        }
        for (which, list) in [("add", &caps.add), ("drop", &caps.drop)] {
            if let Some(bad_cap) = list
                .iter()
                .find(|c| !CAPS.contains(&c.trim_start_matches("CAP_")))
            {
                return bad(
                    format!("{f}.securityContext.capabilities.{which}"),
                    format!("unknown or unsupported capability {bad_cap:?}"),
                );
            }
        }
        Ok(())
    }
}

/// Volume `v` (field `f`) past its name.
fn check_volume(f: &str, v: &Volume) -> Result<(), Bad> {
    let kinds = [
        v.empty_dir.is_some(),
        v.host_path.is_some(),
        v.secret.is_some(),
        v.config_map.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return bad(
            f,
            "give exactly one of emptyDir, hostPath, secret, configMap",
        );
    }
    if let Some(e) = &v.empty_dir {
        if let Some(m) = &e.medium {
            if m != "Memory" && !m.is_empty() {
                return bad(
                    format!("{f}.emptyDir.medium"),
                    format!("{m:?}: only \"\" or \"Memory\""),
                );
            }
        }
        if let Some(s) = &e.size_limit {
            if let Err(e) = quantity::memory_bytes(s) {
                return bad(format!("{f}.emptyDir.sizeLimit"), e.to_string());
            }
        }
    }
    if let Some(h) = &v.host_path {
        if let Err(why) = host_path::host_path_rule(&h.path) {
            return bad(format!("{f}.hostPath.path"), why);
        }
        if let Some(k) = &h.kind {
            if !["", "Directory", "DirectoryOrCreate"].contains(&k.as_str()) {
                return bad(
                    format!("{f}.hostPath.type"),
                    format!("{k:?}: only Directory or DirectoryOrCreate"),
                );
            }
        }
    }
    Ok(())
}

/// The image reference of container `c` (field `f`).
fn check_image(f: &str, c: &Container) -> Result<(), Bad> {
    if let Some(name) = c.image.strip_prefix(herd_oci::pull::LAYOUT_PREFIX) {
        if !herd_oci::pull::valid_layout_name(name) {
            return bad(
                format!("{f}.image"),
                format!("{name:?} is not an image name of an OCI layout (letters, digits, ._:/@-)"),
            );
        }
    } else if let Err(e) = herd_oci::Reference::parse(&c.image) {
        return bad(format!("{f}.image"), e.to_string());
    }
    Ok(())
}

/// The environment of container `c` (field `f`).
fn check_env(f: &str, c: &Container) -> Result<(), Bad> {
    for (j, e) in c.env.iter().enumerate() {
        let ef = format!("{f}.env[{j}]");
        if e.name.is_empty() || e.name.contains('=') {
            return bad(
                format!("{ef}.name"),
                format!("{:?} is not a variable name", e.name),
            );
        }
        let from = e.value_from.as_ref().map(|v| {
            [v.secret_key_ref.is_some(), v.config_map_key_ref.is_some()]
                .iter()
                .filter(|x| **x)
                .count()
        });
        match (e.value.is_some(), from) {
            (true, None) | (false, Some(1)) => {}
            _ => {
                return bad(
                    ef,
                    "give value, or valueFrom with exactly one of secretKeyRef, configMapKeyRef",
                )
            }
        }
    }
    Ok(())
}

/// The ports of container `c` (field `f`); `host_ports` holds the pod's
/// host ports so far, with their protocol.
fn check_ports<'a>(
    f: &str,
    c: &'a Container,
    host_ports: &mut BTreeSet<(u16, &'a str)>,
) -> Result<(), Bad> {
    for (j, p) in c.ports.iter().enumerate() {
        let pf = format!("{f}.ports[{j}]");
        if p.container_port == 0 {
            return bad(format!("{pf}.containerPort"), "must be 1-65535");
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if proto != "TCP" && proto != "UDP" {
            return bad(format!("{pf}.protocol"), format!("{proto:?}: TCP or UDP"));
        }
        if let Some(h) = p.host_port {
            if h == 0 || !host_ports.insert((h, proto)) {
                return bad(
                    format!("{pf}.hostPort"),
                    format!("{h}: 0, or used twice in this pod"),
                );
            }
        }
    }
    Ok(())
}

/// The volume mounts of container `c` (field `f`) against the pod's
/// `volumes`.
fn check_mounts(f: &str, c: &Container, volumes: &BTreeSet<&str>) -> Result<(), Bad> {
    for (j, m) in c.volume_mounts.iter().enumerate() {
        let mf = format!("{f}.volumeMounts[{j}]");
        if !volumes.contains(m.name.as_str()) {
            return bad(
                format!("{mf}.name"),
                format!("no volume named {:?} in spec.volumes", m.name),
            );
        }
        if !m.mount_path.starts_with('/') || m.mount_path.split('/').any(|c| c == "..") {
            return bad(
                format!("{mf}.mountPath"),
                format!("{:?}: an absolute path without ..", m.mount_path),
            );
        }
    }
    Ok(())
}

/// The resource limits and requests of container `c` (field `f`).
fn check_resources(f: &str, c: &Container) -> Result<(), Bad> {
    for (which, l) in [
        ("limits", &c.resources.limits),
        ("requests", &c.resources.requests),
    ] {
        if let Some(cpu) = &l.cpu {
            if let Err(e) = quantity::cpu_millis(cpu) {
                return bad(format!("{f}.resources.{which}.cpu"), e.to_string());
            }
        }
        if let Some(mem) = &l.memory {
            if let Err(e) = quantity::memory_bytes(mem) {
                return bad(format!("{f}.resources.{which}.memory"), e.to_string());
            }
        }
        for (key, value) in l.io() {
            let Some(value) = value else { continue };
            if which == "requests" {
                return bad(
                    format!("{f}.resources.requests.{key}"),
                    "I/O rates are limits: put them under resources.limits",
                );
            }
            if let Err(e) = quantity::io_rate(value) {
                return bad(format!("{f}.resources.limits.{key}"), e.to_string());
            }
        }
    }
    Ok(())
}

/// The liveness probe of container `c` (field `f`), if any.
fn check_probe(f: &str, c: &Container) -> Result<(), Bad> {
    let Some(p) = &c.liveness_probe else {
        return Ok(());
    };
    let pf = format!("{f}.livenessProbe");
    if p.exec.is_some() == p.http_get.is_some() {
        return bad(pf, "give exactly one of exec, httpGet");
    }
    if p.exec.as_ref().is_some_and(|e| e.command.is_empty()) {
        return bad(format!("{pf}.exec.command"), "is empty");
    }
    if p.period_seconds == 0 || p.timeout_seconds == 0 || p.failure_threshold == 0 {
        return bad(
            pf,
            "periodSeconds, timeoutSeconds and failureThreshold must be at least 1",
        );
    }
    Ok(())
}
