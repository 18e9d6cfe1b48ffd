//! The generated runtime config, run by a real runtime (crun, Debian's
//! package; scripts/setup.sh installs it) on this machine: the container
//! sees what the manifest asked for and nothing more. (cgroup limits are
//! checked on a node, not here: see below.)

use std::path::Path;
use std::process::Command;

use herd_agent::pod::Pod;
use herd_agent::spec::{runtime_spec, write_bundle, SpecInputs, VolumeSource};
use herd_oci::manifest::ImageConfig;

const SCRIPT: &str = r#"
echo "uid=$(id -u) gid=$(id -g)"
echo "mode=$MODE token=$TOKEN"
grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status
echo "host=$(hostname)"
echo "cwd=$(pwd)"
if touch /written 2>/dev/null; then echo root=rw; else echo root=ro; fi
if echo x > /data/out 2>/dev/null; then echo data=rw; else echo data=ro; fi
cat /conf/greeting
unshare -U true 2>&1 || true
echo "pid=$$"
"#;

#[test]
fn crun_runs_the_generated_spec() {
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg("command -v crun")
            .output()
            .unwrap()
            .status
            .success(),
        "crun is missing: run scripts/setup.sh (it installs Debian's crun)"
    );
    // SAFETY: getuid(2) has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(uid, 0, "running containers needs root (CI runs as root)");
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "data", "conf", "srv"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for tool in [
        "sh", "id", "grep", "hostname", "pwd", "touch", "cat", "unshare", "echo",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    let data = t.path().join("data");
    let conf = t.path().join("conf");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("greeting"), "hello from a config map\n").unwrap();
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: probe}}\nspec:\n  containers:\n  - name: c\n    image: 127.0.0.1:5000/probe:1\n    command: [/bin/sh, -c, {SCRIPT:?}]\n    workingDir: /srv\n    env:\n    - {{name: MODE, value: prod}}\n    - name: TOKEN\n      valueFrom: {{secretKeyRef: {{name: s, key: token}}}}\n    securityContext: {{runAsUser: 1000, runAsGroup: 1000}}\n    resources: {{limits: {{memory: 32Mi, cpu: 500m}}}}\n    volumeMounts:\n    - {{name: data, mountPath: /data, readOnly: true}}\n    - {{name: conf, mountPath: /conf}}\n  volumes:\n  - {{name: data, hostPath: {{path: /var/lib/probe}}}}\n  - {{name: conf, configMap: {{name: probe}}}}\n"
    );
    let pod = Pod::parse(&yaml, Path::new("probe.yaml")).unwrap();
    let mut inputs = SpecInputs {
        rootfs: rootfs.clone(),
        cgroup: format!("herd-test/{}", std::process::id()),
        ..Default::default()
    };
    inputs
        .volumes
        .insert("data".into(), VolumeSource { path: data });
    inputs
        .volumes
        .insert("conf".into(), VolumeSource { path: conf });
    inputs.env_from.insert("TOKEN".into(), "s3cret".into());
    let spec = runtime_spec(
        &pod,
        &pod.spec.containers[0],
        &ImageConfig::default(),
        &inputs,
    )
    .unwrap();
    let bundle = t.path().join("bundle");
    write_bundle(&bundle, &spec).unwrap();
    let id = format!("herd-test-{}", std::process::id());
    // This build host mixes cgroup v1 and v2, which crun refuses: run it in
    // a private mount namespace that sees only a cgroup2 hierarchy, with
    // cgroups off. On a node (pure cgroup v2) they are on.
    let crun = format!(
        "mount -t cgroup2 none /sys/fs/cgroup && exec crun --cgroup-manager=disabled --root {} run --bundle {} {id}",
        t.path().join("state").display(),
        bundle.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &crun])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "crun failed: {text}");
    for want in [
        "uid=1000 gid=1000",
        "mode=prod token=s3cret",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "host=probe",
        "cwd=/srv",
        "root=ro",
        "data=ro",
        "hello from a config map",
        "unshare(0x10000000): Operation not permitted",
        "pid=1",
    ] {
        assert!(
            text.contains(want),
            "{want:?} missing from the container's output:\n{text}"
        );
    }
}
