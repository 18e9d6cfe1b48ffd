//! Static pod manifests: the subset of Kubernetes `v1` Pod that herd-agent
//! honours (docs/PODS.md lists it field by field). Anything else is an
//! error naming the field and the file, so a pod never runs with part of
//! its manifest silently ignored.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

mod check;
pub mod host_path;
pub mod quantity;

/// Ids in a pod's user namespace (unless `hostUsers: true`): a whole 16-bit
/// id space, as images expect (nobody = 65534); the agent maps each pod's to
/// a range of this many host ids.
pub const USER_NAMESPACE_IDS: u32 = 0x1_0000;

/// A manifest that cannot run, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct PodError {
    /// the manifest file
    pub file: String,
    /// the field path, e.g. `spec.containers[0].image`
    pub field: String,
    /// what is wrong
    pub message: String,
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    /// `v1`.
    pub api_version: String,
    /// `Pod`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// What runs.
    pub spec: PodSpec,
}

/// Pod metadata.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// DNS label, unique on the node.
    pub name: String,
    /// Labels (shown by `herd-agent ps`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (kept, not acted on).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// When containers are restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum RestartPolicy {
    /// Always (the default).
    #[default]
    Always,
    /// When the exit status is not 0.
    OnFailure,
    /// Never.
    Never,
}

/// The pod spec.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    /// The containers; they share network, IPC and UTS namespaces.
    pub containers: Vec<Container>,
    /// Volumes the containers mount.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// Restart policy.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Use the node's network namespace.
    #[serde(default)]
    pub host_network: bool,
    /// Run in the node's user namespace (root in the pod is root on the
    /// node). Default false: the pod gets its own user namespace and range
    /// of host ids (see [`crate::userns`]).
    #[serde(default)]
    pub host_users: Option<bool>,
    /// Seconds between SIGTERM and SIGKILL when stopping (default 30).
    #[serde(default)]
    pub termination_grace_period_seconds: Option<u64>,
}

/// A container.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    /// DNS label, unique in the pod.
    pub name: String,
    /// Image reference (tag or digest); must be signed by a trusted key.
    pub image: String,
    /// Replaces the image's entrypoint.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Replaces the image's cmd.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Environment.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Ports (hostPort maps the node's port into the pod).
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Mounts of the pod's volumes.
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    /// Limits.
    #[serde(default)]
    pub resources: Resources,
    /// Security settings.
    #[serde(default)]
    pub security_context: SecurityContext,
    /// Liveness probe.
    #[serde(default)]
    pub liveness_probe: Option<Probe>,
    /// Accepted for compatibility: images are always checked and cached.
    #[serde(default)]
    pub image_pull_policy: Option<String>,
}

/// An environment variable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// Literal value.
    #[serde(default)]
    pub value: Option<String>,
    /// Value from a secret or config map.
    #[serde(default)]
    pub value_from: Option<EnvSource>,
}

/// Where an environment value comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvSource {
    /// A key of a secret.
    #[serde(default)]
    pub secret_key_ref: Option<KeyRef>,
    /// A key of a config map.
    #[serde(default)]
    pub config_map_key_ref: Option<KeyRef>,
}

/// A key in a secret or config map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyRef {
    /// The secret or config map.
    pub name: String,
    /// The key.
    pub key: String,
}

/// A port.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    /// Port inside the pod.
    pub container_port: u16,
    /// Port on the node (127.0.0.1 and the node's addresses).
    #[serde(default)]
    pub host_port: Option<u16>,
    /// TCP (default) or UDP.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
}

/// A mount.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    /// Which volume.
    pub name: String,
    /// Where in the container.
    pub mount_path: String,
    /// Read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// Resource settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    /// Hard limits (cgroup v2).
    #[serde(default)]
    pub limits: Limits,
    /// Accepted and shown; a single node does not schedule.
    #[serde(default)]
    pub requests: Limits,
}

/// cpu, memory and (herd's extended resources, limits only) I/O rates on
/// the disk that holds the node's state.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU, e.g. `500m`.
    #[serde(default)]
    pub cpu: Option<String>,
    /// Memory, e.g. `64Mi`.
    #[serde(default)]
    pub memory: Option<String>,
    /// Bytes read per second, e.g. `20Mi` (cgroup v2 io.max rbps).
    #[serde(default, rename = "herd.dev/io-read-bps")]
    pub io_read_bps: Option<String>,
    /// Bytes written per second (io.max wbps).
    #[serde(default, rename = "herd.dev/io-write-bps")]
    pub io_write_bps: Option<String>,
    /// Read operations per second (io.max riops).
    #[serde(default, rename = "herd.dev/io-read-iops")]
    pub io_read_iops: Option<String>,
    /// Write operations per second (io.max wiops).
    #[serde(default, rename = "herd.dev/io-write-iops")]
    pub io_write_iops: Option<String>,
}

/// The I/O limits' names (as written in a manifest) and values.
pub const IO_LIMITS: [&str; 4] = [
    "herd.dev/io-read-bps",
    "herd.dev/io-write-bps",
    "herd.dev/io-read-iops",
    "herd.dev/io-write-iops",
];

impl Limits {
    /// The I/O limits that are set, in [`IO_LIMITS`] order.
    pub fn io(&self) -> [(&'static str, Option<&str>); 4] {
        [
            (IO_LIMITS[0], self.io_read_bps.as_deref()),
            (IO_LIMITS[1], self.io_write_bps.as_deref()),
            (IO_LIMITS[2], self.io_read_iops.as_deref()),
            (IO_LIMITS[3], self.io_write_iops.as_deref()),
        ]
    }

    /// Whether any I/O limit is set.
    pub fn has_io(&self) -> bool {
        self.io().iter().any(|(_, v)| v.is_some())
    }
}

/// Security settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityContext {
    /// User id.
    #[serde(default)]
    pub run_as_user: Option<u32>,
    /// Group id.
    #[serde(default)]
    pub run_as_group: Option<u32>,
    /// Read-only image root (the default on herd: true).
    #[serde(default)]
    pub read_only_root_filesystem: Option<bool>,
    /// Only false is accepted (no new privileges, always).
    #[serde(default)]
    pub allow_privilege_escalation: Option<bool>,
    /// Only false is accepted.
    #[serde(default)]
    pub privileged: Option<bool>,
    /// Capabilities added to or dropped from the default set.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
}

/// Capability changes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Added, e.g. `NET_BIND_SERVICE`.
    #[serde(default)]
    pub add: Vec<String>,
    /// Dropped (`ALL` drops every one).
    #[serde(default)]
    pub drop: Vec<String>,
}

/// A liveness probe.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Probe {
    /// Run a command in the container; exit 0 is healthy.
    #[serde(default)]
    pub exec: Option<ExecAction>,
    /// GET a path; 200-399 is healthy.
    #[serde(default)]
    pub http_get: Option<HttpGet>,
    /// Seconds before the first probe (default 0).
    #[serde(default)]
    pub initial_delay_seconds: u64,
    /// Seconds between probes (default 10).
    #[serde(default = "ten")]
    pub period_seconds: u64,
    /// Seconds a probe may take (default 1).
    #[serde(default = "one")]
    pub timeout_seconds: u64,
    /// Failures in a row before a restart (default 3).
    #[serde(default = "three")]
    pub failure_threshold: u32,
}

fn ten() -> u64 {
    10
}
fn one() -> u64 {
    1
}
fn three() -> u32 {
    3
}

/// A command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecAction {
    /// argv.
    pub command: Vec<String>,
}

/// An HTTP GET in the pod's network.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGet {
    /// Path (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// Port.
    pub port: u16,
}

/// A volume.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    /// Name the mounts use.
    pub name: String,
    /// A fresh directory for the pod's lifetime.
    #[serde(default)]
    pub empty_dir: Option<EmptyDir>,
    /// A directory of the node, under /var.
    #[serde(default)]
    pub host_path: Option<HostPath>,
    /// A secret's keys as files, on a tmpfs.
    #[serde(default)]
    pub secret: Option<SecretVolume>,
    /// A config map's keys as files.
    #[serde(default)]
    pub config_map: Option<ConfigMapVolume>,
}

/// emptyDir.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EmptyDir {
    /// `Memory` for a tmpfs.
    #[serde(default)]
    pub medium: Option<String>,
    /// Size bound, e.g. `64Mi`.
    #[serde(default)]
    pub size_limit: Option<String>,
}

/// hostPath.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostPath {
    /// Absolute path under /var.
    pub path: String,
    /// `Directory` or `DirectoryOrCreate` (default).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// secret volume.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretVolume {
    /// The secret.
    pub secret_name: String,
}

/// configMap volume.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMapVolume {
    /// The config map.
    pub name: String,
}

impl Pod {
    /// Whether the pod runs in a user namespace of its own (`hostUsers`
    /// is not true).
    pub fn user_namespace(&self) -> bool {
        self.spec.host_users != Some(true)
    }

    /// Parses and checks a manifest; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Pod, PodError> {
        let file_s = file.display().to_string();
        let de = yaml_serde::Deserializer::from_str(text);
        let pod: Pod = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            PodError {
                file: file_s.clone(),
                field: if path == "." { "(top)".into() } else { path },
                message: e.into_inner().to_string(),
            }
        })?;
        pod.check(&file_s)?;
        Ok(pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 5
  containers:
  - name: httpd
    image: 127.0.0.1:5000/herd/web:1
    command: ["/bin/busybox", "httpd"]
    args: ["-f", "-p", "8080"]
    workingDir: /srv
    env:
    - {name: MODE, value: prod}
    - name: TOKEN
      valueFrom: {secretKeyRef: {name: web, key: token}}
    - name: COLOR
      valueFrom: {configMapKeyRef: {name: web, key: color}}
    ports: [{containerPort: 8080, hostPort: 18080, protocol: TCP, name: http}]
    volumeMounts:
    - {name: cache, mountPath: /cache}
    - {name: data, mountPath: /data}
    - {name: creds, mountPath: /run/creds, readOnly: true}
    - {name: conf, mountPath: /etc/web}
    resources:
      limits: {cpu: 500m, memory: 64Mi, herd.dev/io-write-bps: 20Mi, herd.dev/io-read-iops: 2k}
      requests: {cpu: "0.1", memory: 16Mi}
    securityContext:
      runAsUser: 1000
      runAsGroup: 1000
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
    livenessProbe:
      httpGet: {path: /, port: 8080}
      initialDelaySeconds: 2
      periodSeconds: 5
  - name: sidecar
    image: 127.0.0.1:5000/herd/web@sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
    livenessProbe: {exec: {command: [/bin/true]}}
  volumes:
  - {name: cache, emptyDir: {medium: Memory, sizeLimit: 16Mi}}
  - {name: data, hostPath: {path: /var/lib/web, type: DirectoryOrCreate}}
  - {name: creds, secret: {secretName: web}}
  - {name: conf, configMap: {name: web}}
"#;

    fn parse(t: &str) -> Result<Pod, PodError> {
        Pod::parse(t, Path::new("/etc/herd/pods/web.yaml"))
    }

    #[test]
    fn every_supported_field() {
        let p = parse(FULL).unwrap();
        assert_eq!(p.spec.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(p.spec.containers.len(), 2);
        let c = &p.spec.containers[0];
        assert_eq!(c.ports[0].host_port, Some(18080));
        assert_eq!(c.liveness_probe.as_ref().unwrap().failure_threshold, 3);
        assert_eq!(
            p.spec.volumes[1].host_path.as_ref().unwrap().path,
            "/var/lib/web"
        );
    }

    #[track_caller]
    fn refused(edit: (&str, &str), field: &str, msg: &str) {
        assert!(FULL.contains(edit.0), "{}", edit.0);
        let e = parse(&FULL.replacen(edit.0, edit.1, 1)).unwrap_err();
        assert_eq!(e.file, "/etc/herd/pods/web.yaml");
        assert!(e.field.contains(field), "field {:?} in {e}", field);
        assert!(e.message.contains(msg), "{msg:?} in {e}");
    }

    #[test]
    fn ids_outside_the_user_namespace_are_refused() {
        let with = |sc: &str, host_users: &str| {
            parse(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{host_users}  containers:\n  - name: c\n    image: 127.0.0.1:5000/x:1\n    securityContext: {sc}\n"))
        };
        let e = with("{runAsUser: 65536}", "").unwrap_err();
        assert_eq!(e.field, "spec.containers[0].securityContext.runAsUser");
        assert!(
            e.message
                .contains("not in the pod's user namespace (ids 0-65535)"),
            "{e}"
        );
        let e = with("{runAsGroup: 100000}", "  hostUsers: false\n").unwrap_err();
        assert_eq!(e.field, "spec.containers[0].securityContext.runAsGroup");
        assert!(with("{runAsUser: 65535}", "").unwrap().user_namespace());
        let opted_out = with("{runAsUser: 100000}", "  hostUsers: true\n").unwrap();
        assert!(!opted_out.user_namespace());
    }

    #[test]
    fn unknown_and_unsupported_fields_are_named() {
        refused(
            ("    workingDir:", "    workingDirr:"),
            "spec.containers[0]",
            "unknown field `workingDirr`",
        );
        refused(
            ("  restartPolicy: OnFailure", "  nodeSelector: {a: b}"),
            "spec",
            "unknown field `nodeSelector`",
        );
        refused(
            ("  restartPolicy: OnFailure", "  restartPolicy: Sometimes"),
            "spec.restartPolicy",
            "unknown variant",
        );
        refused(
            ("hostPath: {path: /var/lib/web", "hostPath: {path: /etc"),
            "spec.volumes[1].hostPath.path",
            "under /var",
        );
        refused(
            (
                "hostPath: {path: /var/lib/web",
                "hostPath: {path: /var/../etc",
            ),
            "hostPath.path",
            "under /var",
        );
        for (path, why) in [
            ("/var/lib/../lib/herd", "which is /var/lib/herd or under it"),
            ("//etc/herd/", "which is /etc/herd or under it"),
            ("/var/log/herd/agent", "which is /var/log/herd or under it"),
            ("/run/herd", "which is /run/herd or under it"),
            ("/var/lib", "which holds /var/lib/herd"),
        ] {
            refused(
                (
                    "hostPath: {path: /var/lib/web",
                    &format!("hostPath: {{path: {path}"),
                ),
                "spec.volumes[1].hostPath.path",
                why,
            );
        }
        refused(
            ("cpu: 500m", "cpu: lots"),
            "spec.containers[0].resources.limits.cpu",
            "not a valid cpu",
        );
        refused(
            ("memory: 64Mi", "memory: 64Mb"),
            "resources.limits.memory",
            "not a valid memory",
        );
        refused(
            ("io-read-iops: 2k", "io-read-iops: many"),
            "resources.limits.herd.dev/io-read-iops",
            "not a valid io",
        );
        refused(
            (
                "requests: {cpu: \"0.1\"",
                "requests: {herd.dev/io-read-bps: 1Mi, cpu: \"0.1\"",
            ),
            "resources.requests.herd.dev/io-read-bps",
            "under resources.limits",
        );
        refused(
            ("io-read-iops: 2k", "io-reads: 2k"),
            "resources.limits",
            "unknown field `herd.dev/io-reads`",
        );
        refused(
            ("{name: conf, mountPath", "{name: nope, mountPath"),
            "volumeMounts[3].name",
            "no volume named",
        );
        refused(
            ("allowPrivilegeEscalation: false", "privileged: true"),
            "securityContext.privileged",
            "not supported",
        );
        refused(
            ("add: [NET_BIND_SERVICE]", "add: [SYS_ADMIN]"),
            "capabilities.add",
            "SYS_ADMIN",
        );
        refused(
            ("add: [NET_BIND_SERVICE]", "add: [ALL]"),
            "capabilities.add",
            "ALL cannot be added",
        );
        refused(
            ("- name: sidecar", "- name: httpd"),
            "spec.containers[1].name",
            "used twice",
        );
        refused(
            ("name: web\n  labels", "name: Web_1\n  labels"),
            "metadata.name",
            "DNS label",
        );
        refused(
            ("image: 127.0.0.1:5000/herd/web:1", "image: Bad//Image"),
            "spec.containers[0].image",
            "image reference",
        );
        refused(
            ("    - {name: MODE, value: prod}", "    - {name: MODE}"),
            "env[0]",
            "give value",
        );
        refused(
            (
                "exec: {command: [/bin/true]}",
                "exec: {command: [/bin/true]}, httpGet: {port: 1}",
            ),
            "livenessProbe",
            "exactly one",
        );
        refused(
            ("medium: Memory", "medium: Disk"),
            "emptyDir.medium",
            "Memory",
        );
        refused(
            ("hostPort: 18080", "hostPort: 0"),
            "ports[0].hostPort",
            "0, or used twice",
        );
        refused(
            ("apiVersion: v1", "apiVersion: v2"),
            "apiVersion",
            "not v1/Pod",
        );
    }

    #[test]
    fn yaml_errors_say_where() {
        let e = parse("apiVersion: v1\nkind: [\n").unwrap_err();
        assert!(e.message.contains("line"), "{e}");
    }
}
