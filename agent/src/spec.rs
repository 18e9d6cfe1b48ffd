//! The OCI runtime configuration (`config.json`) for one container of a
//! pod: what the runtime (crun, shipped in the image) is told to create.
//! Every container gets its own mount and PID namespaces; the pod's
//! containers share network, IPC and UTS namespaces (the first container
//! creates them, the others join); unless the pod sets `hostUsers: true`,
//! a user namespace per pod too, mapping its ids 0..65535 to the pod's
//! host-id range ([`crate::userns`]); no_new_privs always; a default
//! capability set; the RuntimeDefault seccomp profile (see [`crate::seccomp`]); cgroup limits; a read-only
//! root unless the manifest asks otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use herd_oci::manifest::ImageConfig;
use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxBlockIo, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxCpuBuilder, LinuxIdMapping, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder, LinuxThrottleDevice, LinuxThrottleDeviceBuilder, Mount, MountBuilder,
    Process, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use oci_spec::OciSpecError;

use crate::pod::{Container, Pod};
use crate::userns::{IdRange, SIZE};
use crate::{quantity, seccomp};

/// The capabilities a container has unless its manifest changes them
/// (the set container runtimes have long used, without NET_RAW and MKNOD).
pub const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A resolved volume: where its content lives on the node.
#[derive(Debug, Clone)]
pub struct VolumeSource {
    /// Host path bound into the container.
    pub path: PathBuf,
}

/// What the agent decided beyond the manifest.
#[derive(Debug, Clone, Default)]
pub struct SpecInputs {
    /// The unpacked image root.
    pub rootfs: PathBuf,
    /// Volume name → host path.
    pub volumes: BTreeMap<String, VolumeSource>,
    /// Resolved environment values for `valueFrom` entries (name → value).
    pub env_from: BTreeMap<String, String>,
    /// The PID of the pod's first container, whose network, IPC and UTS
    /// namespaces this one joins; None for the first container.
    pub join: Option<u32>,
    /// cgroup path for this container (e.g. `herd/pods/web/httpd`).
    pub cgroup: String,
    /// The disk (major, minor) I/O limits apply to: the one holding the
    /// node's state.
    pub io_device: Option<(u64, u64)>,
    /// The pod's host ids when it has a user namespace (the first
    /// container creates it with this mapping, the others join it).
    pub userns: Option<IdRange>,
}

/// argv as Kubernetes defines it: `command` replaces the entrypoint and
/// `args` the cmd.
pub fn argv(c: &Container, image: &ImageConfig) -> Vec<String> {
    let ic = &image.config;
    match (&c.command, &c.args) {
        (Some(cmd), Some(args)) => cmd.iter().chain(args).cloned().collect(),
        (Some(cmd), None) => cmd.clone(),
        (None, Some(args)) => ic
            .entrypoint
            .iter()
            .flatten()
            .chain(args)
            .cloned()
            .collect(),
        (None, None) => ic
            .entrypoint
            .iter()
            .flatten()
            .chain(ic.cmd.iter().flatten())
            .cloned()
            .collect(),
    }
}

fn env(c: &Container, image: &ImageConfig, inputs: &SpecInputs) -> Vec<String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        vars.retain(|(n, _)| n != k);
        vars.push((k.into(), v.into()));
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for kv in image.config.env.iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            set(k, v);
        }
    }
    for e in &c.env {
        let v = e
            .value
            .clone()
            .or_else(|| inputs.env_from.get(&e.name).cloned())
            .unwrap_or_default();
        set(&e.name, &v);
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn caps(c: &Container) -> Vec<String> {
    let mut set: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    if let Some(k) = &c.security_context.capabilities {
        for d in &k.drop {
            let d = d.trim_start_matches("CAP_");
            if d == "ALL" {
                set.clear();
            } else {
                set.retain(|x| x != d);
            }
        }
        for a in &k.add {
            let a = a.trim_start_matches("CAP_").to_string();
            // ALL is refused in manifests (pod.rs).
            if a != "ALL" && !set.contains(&a) {
                set.push(a);
            }
        }
    }
    set.into_iter().map(|c| format!("CAP_{c}")).collect()
}

fn uid_gid(c: &Container, image: &ImageConfig) -> (u32, u32) {
    let from_image = image
        .config
        .user
        .as_deref()
        .map(|u| {
            let (a, b) = u.split_once(':').unwrap_or((u, "0"));
            (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
        })
        .unwrap_or((0, 0));
    (
        c.security_context.run_as_user.unwrap_or(from_image.0),
        c.security_context.run_as_group.unwrap_or(from_image.1),
    )
}

/// Why a runtime config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A capability name the OCI types do not know (manifests are checked
    /// against the same list, so this means the two lists drifted).
    #[error("capability {0} is not known to the OCI runtime types; remove it from the pod's securityContext.capabilities.add")]
    Capability(String),
    /// The OCI builders refused a value.
    #[error("building the OCI runtime config: {0}")]
    Oci(#[from] OciSpecError),
}

/// The typed capability set of `CAP_…` names.
fn capability_set(caps: &[String]) -> Result<Capabilities, SpecError> {
    caps.iter()
        .map(|c| {
            c.trim_start_matches("CAP_")
                .parse::<Capability>()
                .map_err(|_| SpecError::Capability(c.clone()))
        })
        .collect()
}

fn process(
    c: &Container,
    image: &ImageConfig,
    inputs: &SpecInputs,
    caps: &[String],
) -> Result<Process, SpecError> {
    let (uid, gid) = uid_gid(c, image);
    let set = capability_set(caps)?;
    let mut capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .build()?;
    // The builder starts from a default that fills these two too.
    capabilities.set_inheritable(None).set_ambient(None);
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| image.config.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(uid).gid(gid).build()?)
        .args(argv(c, image))
        .env(env(c, image, inputs))
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()?;
    // No rlimits: the container keeps the agent's (the builder's default
    // would cap open files at 1024).
    process.set_rlimits(None);
    Ok(process)
}

fn mount(
    destination: &str,
    kind: &str,
    source: &Path,
    options: &[&str],
) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ(kind)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn mounts(c: &Container, inputs: &SpecInputs) -> Result<Vec<Mount>, SpecError> {
    let p = Path::new;
    let mut mounts = vec![
        mount("/proc", "proc", p("proc"), &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            p("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            p("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            p("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            p("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            p("sysfs"),
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/tmp",
            "tmpfs",
            p("tmpfs"),
            &["nosuid", "nodev", "mode=1777", "size=65536k"],
        )?,
    ];
    for m in &c.volume_mounts {
        if let Some(v) = inputs.volumes.get(&m.name) {
            let mut opts = vec!["rbind", "nosuid", "nodev"];
            if m.read_only {
                opts.push("ro");
            }
            mounts.push(mount(&m.mount_path, "bind", &v.path, &opts)?);
        }
    }
    Ok(mounts)
}

fn namespaces(pod: &Pod, inputs: &SpecInputs) -> Result<Vec<LinuxNamespace>, SpecError> {
    let own = |typ| LinuxNamespaceBuilder::default().typ(typ).build();
    // Shared with the pod: joined through the first container's PID.
    let shared = |typ: LinuxNamespaceType, proc_name: &str| match inputs.join {
        Some(pid) => LinuxNamespaceBuilder::default()
            .typ(typ)
            .path(format!("/proc/{pid}/ns/{proc_name}"))
            .build(),
        None => own(typ),
    };
    let mut namespaces = Vec::new();
    if inputs.userns.is_some() {
        namespaces.push(shared(LinuxNamespaceType::User, "user")?);
    }
    namespaces.push(own(LinuxNamespaceType::Pid)?);
    namespaces.push(own(LinuxNamespaceType::Mount)?);
    namespaces.push(shared(LinuxNamespaceType::Ipc, "ipc")?);
    namespaces.push(shared(LinuxNamespaceType::Uts, "uts")?);
    if !pod.spec.host_network {
        namespaces.push(shared(LinuxNamespaceType::Network, "net")?);
    }
    Ok(namespaces)
}

fn block_io(c: &Container, (major, minor): (u64, u64)) -> Result<Option<LinuxBlockIo>, SpecError> {
    let mut lists: [Vec<LinuxThrottleDevice>; 4] = Default::default();
    for (list, (_, value)) in lists.iter_mut().zip(c.resources.limits.io()) {
        if let Some(rate) = value.and_then(|v| quantity::io_rate(v).ok()) {
            list.push(
                LinuxThrottleDeviceBuilder::default()
                    .major(signed(major))
                    .minor(signed(minor))
                    .rate(rate)
                    .build()?,
            );
        }
    }
    if lists.iter().all(Vec::is_empty) {
        return Ok(None);
    }
    let mut io = LinuxBlockIo::default();
    let [read_bps, write_bps, read_iops, write_iops] = lists.map(|l| (!l.is_empty()).then_some(l));
    io.set_throttle_read_bps_device(read_bps)
        .set_throttle_write_bps_device(write_bps)
        .set_throttle_read_iops_device(read_iops)
        .set_throttle_write_iops_device(write_iops);
    Ok(Some(io))
}

/// The OCI types hold these numbers signed; ours never come near the top.
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn resources(c: &Container, inputs: &SpecInputs) -> Result<LinuxResources, SpecError> {
    let limits = &c.resources.limits;
    let mut r = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(1024).build()?)
        .build()?;
    if let Some(m) = limits
        .memory
        .as_deref()
        .and_then(|m| quantity::memory_bytes(m).ok())
    {
        r.set_memory(Some(
            LinuxMemoryBuilder::default().limit(signed(m)).build()?,
        ));
    }
    if let Some(cpu) = limits
        .cpu
        .as_deref()
        .and_then(|m| quantity::cpu_millis(m).ok())
    {
        let quota = signed(cpu.saturating_mul(100));
        r.set_cpu(Some(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(100_000u64)
                .build()?,
        ));
    }
    if let Some(dev) = inputs.io_device {
        r.set_block_io(block_io(c, dev)?);
    }
    Ok(r)
}

fn id_map(first: u32) -> Result<Vec<LinuxIdMapping>, SpecError> {
    Ok(vec![LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(first)
        .size(SIZE)
        .build()?])
}

fn linux(
    pod: &Pod,
    c: &Container,
    inputs: &SpecInputs,
    caps: &[String],
) -> Result<Linux, SpecError> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces(pod, inputs)?)
        .cgroups_path(&inputs.cgroup)
        .resources(resources(c, inputs)?)
        .seccomp(seccomp::runtime_default().oci(caps))
        .masked_paths(strings(&[
            "/proc/acpi",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
        ]))
        .readonly_paths(strings(&[
            "/proc/asound",
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ]))
        .build()?;
    if let Some(r) = inputs.userns {
        linux.set_uid_mappings(Some(id_map(r.first)?));
        linux.set_gid_mappings(Some(id_map(r.first)?));
    }
    Ok(linux)
}

/// The OCI runtime config for container `c` of `pod`.
pub fn runtime_spec(
    pod: &Pod,
    c: &Container,
    image: &ImageConfig,
    inputs: &SpecInputs,
) -> Result<Spec, SpecError> {
    let caps = caps(c);
    let root = RootBuilder::default()
        .path(&inputs.rootfs)
        .readonly(c.security_context.read_only_root_filesystem.unwrap_or(true))
        .build()?;
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .process(process(c, image, inputs, &caps)?)
        .root(root)
        .mounts(mounts(c, inputs)?)
        .linux(linux(pod, c, inputs, &caps)?)
        .build()?;
    // The pod's first container names the shared UTS namespace; the
    // others join it. (The builder's defaults carry a hostname and
    // empty annotations: neither is wanted.)
    spec.set_hostname(inputs.join.is_none().then(|| pod.metadata.name.clone()));
    spec.set_annotations(None);
    Ok(spec)
}

/// Writes `config.json` into `bundle`.
pub fn write_bundle(bundle: &Path, spec: &Spec) -> std::io::Result<()> {
    std::fs::create_dir_all(bundle)?;
    std::fs::write(bundle.join("config.json"), config_bytes(spec)?)
}

/// `spec` as `config.json` bytes, the same for the same spec: oci-spec
/// keeps capability sets in hash sets, whose order changes from one set to
/// the next, so the capability lists are sorted.
pub fn config_bytes(spec: &Spec) -> std::io::Result<Vec<u8>> {
    let mut v = serde_json::to_value(spec).map_err(std::io::Error::other)?;
    if let Some(caps) = v
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    {
        for list in caps.values_mut().filter_map(|l| l.as_array_mut()) {
            list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
    }
    serde_json::to_vec_pretty(&v).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_oci::manifest::RunConfig;
    use serde_json::{json, Value};

    /// The config as crun reads it.
    fn spec_json(p: &Pod, inputs: &SpecInputs) -> Value {
        let spec = runtime_spec(p, &p.spec.containers[0], &image(), inputs).unwrap();
        serde_json::to_value(spec).unwrap()
    }

    #[test]
    fn config_json_is_the_same_bytes_for_the_same_pod() {
        // The default set has several capabilities: hash sets order them
        // differently from one build of the spec to the next.
        let p = pod("");
        let write = || {
            let spec =
                runtime_spec(&p, &p.spec.containers[0], &image(), &SpecInputs::default()).unwrap();
            config_bytes(&spec).unwrap()
        };
        let first = write();
        for _ in 0..20 {
            assert!(write() == first, "config.json changed between builds");
        }
        let v: Value = serde_json::from_slice(&first).unwrap();
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.len() > 2);
        assert!(caps.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
    }

    fn pod(yaml_container: &str) -> Pod {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  - name: c\n    image: 127.0.0.1:5000/x:1\n{yaml_container}"
        );
        Pod::parse(&text, Path::new("t.yaml")).unwrap()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            config: RunConfig {
                entrypoint: Some(vec!["/ep".into()]),
                cmd: Some(vec!["default".into()]),
                env: Some(vec!["A=image".into(), "PATH=/bin".into()]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn argv_follows_kubernetes() {
        let img = image();
        assert_eq!(argv(&pod("").spec.containers[0], &img), ["/ep", "default"]);
        assert_eq!(
            argv(&pod("    args: [x]\n").spec.containers[0], &img),
            ["/ep", "x"]
        );
        assert_eq!(
            argv(&pod("    command: [/c]\n").spec.containers[0], &img),
            ["/c"]
        );
        assert_eq!(
            argv(
                &pod("    command: [/c]\n    args: [y]\n").spec.containers[0],
                &img
            ),
            ["/c", "y"]
        );
    }

    #[test]
    fn spec_carries_the_manifest() {
        let p = pod("    env: [{name: A, value: pod}, {name: S, valueFrom: {secretKeyRef: {name: s, key: k}}}]\n    resources: {limits: {cpu: 250m, memory: 32Mi, herd.dev/io-write-bps: 4Mi, herd.dev/io-read-iops: 100}}\n    securityContext: {runAsUser: 7, capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}\n");
        let mut inputs = SpecInputs {
            rootfs: "/r".into(),
            cgroup: "herd/web/c".into(),
            ..Default::default()
        };
        inputs.env_from.insert("S".into(), "secret".into());
        let s = spec_json(&p, &inputs);
        let env: Vec<&str> = s["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"A=pod") && env.contains(&"S=secret") && env.contains(&"PATH=/bin"),
            "{env:?}"
        );
        assert_eq!(s["process"]["user"]["uid"], 7);
        assert_eq!(
            s["process"]["capabilities"]["bounding"],
            json!(["CAP_NET_BIND_SERVICE"])
        );
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], 32 << 20);
        assert_eq!(s["linux"]["resources"]["cpu"]["quota"], 25_000);
        assert!(s["linux"]["resources"].get("blockIO").is_none());
        assert_eq!(s["hostname"], "web");
        let io = spec_json(
            &p,
            &SpecInputs {
                io_device: Some((254, 0)),
                ..inputs.clone()
            },
        );
        assert_eq!(
            io["linux"]["resources"]["blockIO"],
            json!({
                "throttleWriteBpsDevice": [{"major": 254, "minor": 0, "rate": 4 << 20}],
                "throttleReadIOPSDevice": [{"major": 254, "minor": 0, "rate": 100}],
            })
        );
        let joined = spec_json(
            &p,
            &SpecInputs {
                join: Some(42),
                ..inputs
            },
        );
        assert!(joined["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!({"type": "network", "path": "/proc/42/ns/net"})));
        assert!(joined.get("hostname").is_none());
        assert!(joined["linux"].get("uidMappings").is_none());
    }

    #[test]
    fn a_user_namespace_maps_the_pod_to_its_range() {
        let p = pod("");
        let inputs = SpecInputs {
            rootfs: "/r".into(),
            userns: Some(IdRange { first: 0x30000 }),
            ..Default::default()
        };
        let s = spec_json(&p, &inputs);
        let map = json!([{"containerID": 0, "hostID": 0x30000, "size": 65536}]);
        assert_eq!(s["linux"]["uidMappings"], map);
        assert_eq!(s["linux"]["gidMappings"], map);
        assert_eq!(s["linux"]["namespaces"][0], json!({"type": "user"}));
        // The pod's other containers join the first one's namespace.
        let joined = spec_json(
            &p,
            &SpecInputs {
                join: Some(42),
                ..inputs
            },
        );
        assert_eq!(
            joined["linux"]["namespaces"][0],
            json!({"type": "user", "path": "/proc/42/ns/user"})
        );
    }
}
