//! herd-agent on this machine, with real parts: Debian's docker-registry on
//! 127.0.0.1 holding images pushed by skopeo, cosign-format signatures, and
//! Debian's crun running the containers. A signed pod serves HTTP through
//! its host port and a sidecar sees it on the pod's loopback; an unsigned
//! pod and an invalid manifest are refused with their reasons while the
//! signed one keeps running; images of an OCI layout on the node run only
//! when signed in the layout; a killed container is restarted after the
//! kubelet's back-off; a removed manifest stops its pod and its image is
//! collected; SIGTERM stops the agent and its pods.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herd_oci::cosign;
use herd_oci::layout::Layout;
use herd_oci::registry::Registry;
use herd_oci::Reference;
use herd_tests::registry::{make_image, make_image_with, need, registry, skopeo_push};
use herd_tests::{bin_dir, free_port, http_get, run};

fn wait_for<T>(what: &str, secs: u64, log: &Path, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!(
                "timed out after {secs} s waiting for {what}; agent output:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Agent {
    child: Child,
    socket: std::path::PathBuf,
}

impl Agent {
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = run(Command::new(bin_dir().join("herd-agent"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn pods(&self) -> serde_json::Value {
        let (ok, out) = self.cli(&["ps", "--json"]);
        assert!(ok, "herd-agent ps failed: {out}");
        serde_json::from_str(&out).unwrap()
    }

    fn pod(&self, name: &str) -> Option<serde_json::Value> {
        self.pods()
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts herd-agent on the node directories under `d` (made here when
/// missing), with the OCI layout `layout_dir`; its output goes to the
/// returned log file.
fn start_agent(d: &Path, layout_dir: &Path) -> (Agent, std::path::PathBuf) {
    for sub in ["pods", "policy/keys", "secrets", "state", "run", "logs"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let agent_bin = bin_dir().join("herd-agent");
    let socket = d.join("run/agent.sock");
    let log = d.join("agent.log");
    // This build host mixes cgroup v1 and v2, which crun refuses: the agent
    // runs in a private mount namespace that sees only cgroup2, with the
    // runtime's cgroups off (on a node they are on).
    let script = format!(
        "mount -t cgroup2 none /sys/fs/cgroup && exec {} --socket {} run --pods {} --policy {} --secrets {} --state {} --run {} --logs {} --layout {} --no-cgroups --host-ip 127.0.0.1",
        agent_bin.display(),
        socket.display(),
        d.join("pods").display(),
        d.join("policy").display(),
        d.join("secrets").display(),
        d.join("state").display(),
        d.join("run").display(),
        d.join("logs").display(),
        layout_dir.display(),
    );
    let child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    (Agent { child, socket }, log)
}

#[test]
fn agent_runs_signed_pods_and_refuses_the_rest() {
    need_root();
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("registry")).unwrap();
    let reg = registry(&t.path().join("registry"));
    let host = format!("127.0.0.1:{}", reg.port);
    let layout_dir = t.path().join("layout");
    let layout = Layout::create(&layout_dir).unwrap();
    let web = make_image(&layout, "web", "web");
    make_image(&layout, "unsigned", "unsigned");
    skopeo_push(&layout_dir, "web", &format!("{host}/herd/web:1"));
    skopeo_push(&layout_dir, "unsigned", &format!("{host}/herd/unsigned:1"));
    let key = herd_release::SigningKey::generate().unwrap();
    let web_ref = Reference::parse(&format!("{host}/herd/web:1")).unwrap();
    cosign::sign(&Registry::for_reference(&web_ref), &web_ref, &web, &key).unwrap();
    // The same image, signed inside the layout too: the node runs it from
    // the layout (`oci:web`) with no registry at all.
    cosign::sign_layout(&layout, "registry.example/herd/web", &web, &key).unwrap();

    let d = t.path();
    for sub in [
        "pods",
        "policy/keys",
        "secrets/site",
        "state",
        "run",
        "logs",
    ] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("policy/keys/ops.pub"), &key.public().0).unwrap();
    std::fs::write(d.join("secrets/site/greeting"), "hello from a signed pod\n").unwrap();
    let port = free_port();
    let web_yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: {host}/herd/web:1
    command: [/bin/busybox, sh, -c, "mkdir -p /tmp/www && cp /site/greeting /tmp/www/index.html && exec /bin/busybox httpd -f -p 8080 -h /tmp/www"]
    ports: [{{containerPort: 8080, hostPort: {port}}}]
    volumeMounts: [{{name: site, mountPath: /site, readOnly: true}}]
    livenessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1, initialDelaySeconds: 1}}
  - name: sidecar
    image: {host}/herd/web:1
    command: [/bin/busybox, sh, -c, "sleep 1; /bin/busybox wget -q -O- http://127.0.0.1:8080/; echo sidecar saw httpd; exec /bin/busybox sleep 100000"]
    env: [{{name: GREETING, valueFrom: {{secretKeyRef: {{name: site, key: greeting}}}}}}]
  volumes:
  - {{name: site, secret: {{secretName: site}}}}
"#
    );
    std::fs::write(d.join("pods/web.yaml"), web_yaml).unwrap();
    std::fs::write(
        d.join("pods/unsigned.yaml"),
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: unsigned}}\nspec:\n  containers:\n  - name: c\n    image: {host}/herd/unsigned:1\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("pods/bad.yaml"),
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: bad}}\nspec:\n  containers:\n  - name: c\n    image: {host}/herd/web:1\n    workingDirr: /\n"),
    )
    .unwrap();

    std::fs::write(
        d.join("pods/local.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: local}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: oci:web\n    command: [/bin/busybox, sh, -c, 'echo local marker $(cat /etc/marker); exec /bin/busybox sleep 100000']\n",
    )
    .unwrap();
    std::fs::write(
        d.join("pods/local-unsigned.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: local-unsigned}\nspec:\n  containers:\n  - name: c\n    image: oci:unsigned\n",
    )
    .unwrap();

    let (mut agent, log) = start_agent(d, &layout_dir);

    // The signed pod serves through its host port.
    let page = wait_for("the web pod to answer on its host port", 90, &log, || {
        http_get(port, Duration::from_secs(5)).filter(|p| p.contains("hello from a signed pod"))
    });
    assert!(
        page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
        "{page}"
    );

    // The sidecar shares the pod's network: it reached httpd on 127.0.0.1.
    wait_for("the sidecar's log", 30, &log, || {
        let (ok, out) = agent.cli(&["logs", "web", "sidecar"]);
        (ok && out.contains("sidecar saw httpd") && out.contains("hello from a signed pod"))
            .then_some(())
    });

    // The unsigned pod is refused, the invalid one too, each with its reason.
    let unsigned = wait_for("the unsigned pod to be refused", 60, &log, || {
        agent.pod("unsigned").filter(|p| p["phase"] == "BackOff")
    });
    let m = unsigned["message"].as_str().unwrap();
    assert!(
        m.contains("is not signed") && m.contains("nothing of it runs"),
        "{m}"
    );
    // From the node's OCI layout: the signed image runs, the unsigned one does not.
    wait_for("the layout pod's output", 60, &log, || {
        let (ok, out) = agent.cli(&["logs", "local"]);
        (ok && out.contains("local marker web")).then_some(())
    });
    let lu = wait_for("the unsigned layout pod to be refused", 60, &log, || {
        agent
            .pod("local-unsigned")
            .filter(|p| p["phase"] == "BackOff")
    });
    let m = lu["message"].as_str().unwrap();
    assert!(m.contains("it is not signed (no sha256-"), "{m}");
    let bad = agent.pod("bad").expect("the invalid pod is listed");
    assert_eq!(bad["phase"], "Refused");
    assert!(
        bad["message"].as_str().unwrap().contains("workingDirr"),
        "{bad}"
    );
    let (ok, events) = agent.cli(&["events"]);
    assert!(ok, "{events}");
    for want in ["Untrusted", "Invalid", "Pulled", "Started"] {
        assert!(events.contains(want), "no {want} event in:\n{events}");
    }
    let (_, ps) = agent.cli(&["ps"]);
    assert!(ps.contains("web") && ps.contains("Running"), "{ps}");
    let web_pod = agent.pod("web").unwrap();
    assert_eq!(web_pod["containers"][0]["digest"], web.to_string());
    assert_eq!(web_pod["restarts"], 0);

    // Kill the container's process: the pod comes back after the back-off.
    let pid = web_pod["containers"][0]["pid"].as_u64().unwrap();
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for("the killed pod to be restarted", 60, &log, || {
        agent
            .pod("web")
            .filter(|p| p["restarts"] == 1 && p["phase"] == "Running")
    });
    wait_for("the restarted pod to answer", 30, &log, || {
        http_get(port, Duration::from_secs(5)).filter(|p| p.contains("hello from a signed pod"))
    });
    let (_, events) = agent.cli(&["events"]);
    assert!(
        events.contains("container httpd ended with signal 9") && events.contains("BackOff"),
        "{events}"
    );

    // Removing the manifest stops the pod and frees its port; its image
    // is collected.
    std::fs::remove_file(d.join("pods/web.yaml")).unwrap();
    std::fs::remove_file(d.join("pods/local.yaml")).unwrap();
    wait_for("the removed pods to go", 30, &log, || {
        (agent.pod("web").is_none() && agent.pod("local").is_none()).then_some(())
    });
    assert!(
        http_get(port, Duration::from_secs(5)).is_none(),
        "the host port is closed"
    );
    wait_for("the unused image to be collected", 60, &log, || {
        let roots = std::fs::read_dir(d.join("state/images/rootfs")).ok()?;
        (roots.count() == 0).then_some(())
    });

    // SIGTERM stops the agent.
    let pid = agent.child.id();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the agent did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "agent exit: {status}");
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.contains("AgentStopping"), "{out}");
    eprintln!("agent output:\n{out}");
}

/// A static program that tries what the seccomp profile refuses and prints
/// each result as `NAME ret=R errno=E`, then shows that ordinary calls
/// (fork, wait) still work.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void show(const char *name, long r) {
    printf("%s ret=%ld errno=%d\n", name, r, r < 0 ? errno : 0);
}

int main(void) {
    show("unshare-user", unshare(CLONE_NEWUSER));
    show("unshare-mount", unshare(CLONE_NEWNS));
    long c = syscall(SYS_clone, (long)(CLONE_NEWUSER | SIGCHLD), 0L, 0L, 0L, 0L);
    if (c == 0) _exit(0);
    show("clone-newuser", c);
    unsigned char params[120];
    memset(params, 0, sizeof params);
    show("io_uring_setup", syscall(425 /* io_uring_setup */, 8L, params));
    show("fsopen", syscall(430 /* fsopen */, "tmpfs", 0L));
    show("open_tree", syscall(428 /* open_tree */, -100L, "/", 0L));
    unsigned long long args[11];
    memset(args, 0, sizeof args);
    args[4] = SIGCHLD;
    long c3 = syscall(435 /* clone3 */, args, 88L);
    if (c3 == 0) _exit(0);
    show("clone3", c3);
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) _exit(7);
    int st = 0;
    waitpid(p, &st, 0);
    printf("fork ok=%d\n", p > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 7);
    return 0;
}
"#;

/// Builds [`PROBE_C`] statically in `dir`.
fn build_probe(dir: &Path) -> Vec<u8> {
    need("cc");
    let src = dir.join("probe.c");
    std::fs::write(&src, PROBE_C).unwrap();
    let out = run(Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.join("probe"))
        .arg(&src));
    assert!(
        out.status.success(),
        "cc -static failed (scripts/setup.sh installs gcc and libc6-dev): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.join("probe")).unwrap()
}

/// A node with an OCI layout holding `images` (name, marker, extra files),
/// each signed in the layout by a key the node trusts.
/// An image of [`layout_node`]: name, marker, extra files.
type TestImage<'a> = (&'a str, &'a str, &'a [(&'a str, &'a [u8], u32)]);

fn layout_node(d: &Path, images: &[TestImage]) -> std::path::PathBuf {
    let layout_dir = d.join("layout");
    let layout = Layout::create(&layout_dir).unwrap();
    let key = herd_release::SigningKey::generate().unwrap();
    for (name, marker, extra) in images {
        let digest = make_image_with(&layout, name, marker, extra);
        cosign::sign_layout(
            &layout,
            &format!("registry.example/herd/{name}"),
            &digest,
            &key,
        )
        .unwrap();
    }
    std::fs::create_dir_all(d.join("policy/keys")).unwrap();
    std::fs::write(d.join("policy/keys/ops.pub"), &key.public().0).unwrap();
    layout_dir
}

fn need_root() {
    need("crun");
    // SAFETY: getuid(2) has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(uid, 0, "running containers needs root (CI runs as root)");
}

/// The log of container `c` of pod `pod` once it contains `marker`.
fn log_with(agent: &Agent, log: &Path, pod: &str, c: &str, marker: &str) -> String {
    wait_for(&format!("{pod}/{c} to print {marker:?}"), 60, log, || {
        let (ok, out) = agent.cli(&["logs", pod, c]);
        (ok && out.contains(marker)).then_some(out)
    })
}

#[test]
fn pods_are_confined() {
    need_root();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let probe = build_probe(d);
    let layout_dir = layout_node(d, &[("confined", "confined", &[("probe", &probe, 0o755)])]);
    std::fs::create_dir_all(d.join("pods")).unwrap();
    std::fs::write(
        d.join("pods/confined.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: confined}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: oci:confined\n    command: [/bin/busybox, sh, -c, '/probe; /bin/busybox unshare -U /bin/busybox true; echo unshare-cli exit=$?; echo probe done']\n",
    )
    .unwrap();
    let (agent, log) = start_agent(d, &layout_dir);
    let out = log_with(&agent, &log, "confined", "c", "probe done");
    let result = |name: &str| -> (i64, i64) {
        let line = out
            .lines()
            .find_map(|l| l.split_once(&format!("{name} ret=")).map(|(_, r)| r))
            .unwrap_or_else(|| panic!("no {name} line in:\n{out}"));
        let (ret, errno) = line.split_once(" errno=").unwrap();
        (ret.parse().unwrap(), errno.trim().parse().unwrap())
    };
    const EPERM: i64 = 1;
    const ENOSYS: i64 = 38;
    // New namespaces: refused, through unshare and clone alike.
    assert_eq!(result("unshare-user"), (-1, EPERM), "{out}");
    assert_eq!(result("unshare-mount"), (-1, EPERM), "{out}");
    assert_eq!(result("clone-newuser"), (-1, EPERM), "{out}");
    // io_uring and the new mount API: not in the allow-list.
    assert_eq!(result("io_uring_setup"), (-1, EPERM), "{out}");
    assert_eq!(result("fsopen"), (-1, EPERM), "{out}");
    assert_eq!(result("open_tree"), (-1, EPERM), "{out}");
    // clone3: ENOSYS, so C libraries fall back to clone.
    assert_eq!(result("clone3"), (-1, ENOSYS), "{out}");
    // Ordinary programs still work, and unshare(1) fails.
    assert!(out.contains("fork ok=1"), "{out}");
    assert!(
        out.contains("Operation not permitted") && out.contains("unshare-cli exit=1"),
        "{out}"
    );
}

#[test]
fn a_pod_cannot_change_the_image_the_next_pod_runs() {
    need_root();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let layout_dir = layout_node(d, &[("shared", "signed bytes", &[])]);
    std::fs::create_dir_all(d.join("pods")).unwrap();
    let pod = |name: &str, extra: &str, script: &str| {
        std::fs::write(
            d.join(format!("pods/{name}.yaml")),
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: oci:shared\n{extra}    command: [/bin/busybox, sh, -c, '{script}']\n"),
        )
        .unwrap();
    };
    // A read-only root refuses the write; a writable one takes it, into the
    // pod's own layer; replacing the binary and planting a file too.
    let tamper = "echo tampered > /etc/marker; echo marker now $(cat /etc/marker); /bin/busybox cp /bin/busybox /bin/planted && echo did-plant; /bin/busybox mount -o remount,rw / && echo did-remount; echo writer done; exec /bin/busybox sleep 100000";
    pod("ro-writer", "", tamper);
    pod(
        "rw-writer",
        "    securityContext: {readOnlyRootFilesystem: false}\n",
        tamper,
    );
    let (agent, log) = start_agent(d, &layout_dir);
    let ro = log_with(&agent, &log, "ro-writer", "c", "writer done");
    assert!(ro.contains("Read-only file system"), "{ro}");
    assert!(ro.contains("marker now signed bytes"), "{ro}");
    assert!(
        !ro.contains("did-plant") && !ro.contains("did-remount"),
        "{ro}"
    );
    let rw = log_with(&agent, &log, "rw-writer", "c", "writer done");
    assert!(
        rw.contains("marker now tampered") && rw.contains("did-plant"),
        "{rw}"
    );
    assert!(!rw.contains("did-remount"), "{rw}");

    // While both writers still run, a new pod of the same image sees the
    // verified bytes and nothing planted.
    pod(
        "reader",
        "",
        "echo reader sees $(cat /etc/marker); ls /bin; echo reader done",
    );
    let out = log_with(&agent, &log, "reader", "c", "reader done");
    assert!(out.contains("reader sees signed bytes"), "{out}");
    assert!(!out.contains("planted"), "{out}");
    // On the node, the verified root holds exactly the image's files: not
    // the writes, not the mount points crun made (/proc, /dev, ...).
    let roots: Vec<_> = std::fs::read_dir(d.join("state/images/rootfs"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(roots.len(), 1, "{roots:?}");
    let root = roots[0].path();
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["bin", "etc"], "{}", root.display());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/marker")).unwrap(),
        "signed bytes"
    );
    assert!(!root.join("bin/planted").exists());
}

/// The `Uid:` and `Gid:` lines of `/proc/PID/status` as seen from the
/// node: (real, effective, saved, filesystem) each.
fn host_ids(pid: u64) -> (Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status:\n{status}"));
        line.split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    (ids("Uid:"), ids("Gid:"))
}

/// The owner and group `ls -ln /` (busybox) shows for entry `name`.
fn owner_in_listing(listing: &str, name: &str) -> (u32, u32) {
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().last() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in:\n{listing}"));
    // ... owner group size month day time name (logs prefix a timestamp).
    let f: Vec<&str> = line.split_whitespace().rev().collect();
    (f[6].parse().unwrap(), f[5].parse().unwrap())
}

#[test]
fn root_in_a_pod_is_not_root_on_the_node() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    need_root();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let layout_dir = layout_node(d, &[("plain", "plain", &[])]);
    std::fs::create_dir_all(d.join("pods")).unwrap();
    // A hostPath with a file of the node's root: the pod sees it owned by
    // nobody and cannot change it (hostPath is not idmapped).
    let host_dir =
        std::path::PathBuf::from(format!("/var/tmp/herd-userns-test-{}", std::process::id()));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(host_dir.clone());
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::set_permissions(&host_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(host_dir.join("node-file"), "node's\n").unwrap();
    std::fs::set_permissions(
        host_dir.join("node-file"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let script = "id; ls -ln /; echo in-pod > /scratch/f && echo wrote-scratch; ls -ln /scratch; cat /h/node-file; ls -ln /h; echo x >> /h/node-file && echo wrote-host-file; touch /h/new && echo made-host-file; /bin/busybox httpd -p 127.0.0.1:99 -h /tmp && echo bound-port-99; echo ids done; exec /bin/busybox sleep 100000";
    let pod = |name: &str, host_users: &str| {
        std::fs::write(
            d.join(format!("pods/{name}.yaml")),
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{host_users}  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: oci:plain\n    command: [/bin/busybox, sh, -c, '{script}']\n    livenessProbe: {{exec: {{command: [/bin/busybox, sh, -c, 'echo probed > /scratch/probed']}}, periodSeconds: 1, failureThreshold: 1}}\n    volumeMounts: [{{name: scratch, mountPath: /scratch}}, {{name: h, mountPath: /h}}]\n  volumes:\n  - {{name: scratch, emptyDir: {{}}}}\n  - {{name: h, hostPath: {{path: {}}}}}\n", host_dir.display()),
        )
        .unwrap();
    };
    pod("alpha", "");
    pod("beta", "");
    pod("opted-out", "  hostUsers: true\n");
    pod("host-net", "  hostNetwork: true\n");
    let (agent, log) = start_agent(d, &layout_dir);
    let mut ranges = Vec::new();
    for name in ["alpha", "beta", "host-net"] {
        let out = log_with(&agent, &log, name, "c", "ids done");
        // Inside: root, owning the image's files and its emptyDir.
        assert!(out.contains("uid=0 gid=0"), "{out}");
        assert_eq!(owner_in_listing(&out, "bin"), (0, 0), "{out}");
        assert_eq!(owner_in_listing(&out, "etc"), (0, 0), "{out}");
        assert!(out.contains("wrote-scratch"), "{out}");
        assert_eq!(owner_in_listing(&out, "f"), (0, 0), "{out}");
        // The node's file: readable, owned by nobody, not writable.
        assert!(out.contains("node's"), "{out}");
        assert_eq!(owner_in_listing(&out, "node-file"), (65534, 65534), "{out}");
        assert!(
            !out.contains("wrote-host-file") && !out.contains("made-host-file"),
            "{out}"
        );
        assert!(out.contains("Permission denied"), "{out}");
        // A port below 1024 needs CAP_NET_BIND_SERVICE over the network
        // namespace: the pod's own, yes; the node's (hostNetwork), no.
        assert_eq!(out.contains("bound-port-99"), name != "host-net", "{out}");
        // On the node: the container's process is an unprivileged uid.
        let p = agent.pod(name).unwrap();
        let pid = p["containers"][0]["pid"].as_u64().unwrap();
        let (uid, gid) = host_ids(pid);
        let first = uid[0];
        assert!(first >= 0x2_0000, "{name}: host uids {uid:?}");
        assert!(uid.iter().all(|u| *u == first), "{name}: {uid:?}");
        assert!(gid.iter().all(|g| *g == first), "{name}: {gid:?}");
        // The emptyDir's file on the node belongs to the same host id.
        let f = d.join(format!("state/pods/{name}/volumes/scratch/f"));
        assert_eq!(std::fs::metadata(&f).unwrap().uid(), first);
        ranges.push((first, pid));
    }
    // Two pods, disjoint ranges of 65536 ids.
    assert!(ranges[0].0.abs_diff(ranges[1].0) >= 65536, "{ranges:?}");

    // hostUsers: true is the explicit opt-out: root in the pod is root, and
    // the only write to the node's file is that pod's.
    let out = log_with(&agent, &log, "opted-out", "c", "ids done");
    assert!(out.contains("wrote-host-file"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host_dir.join("node-file")).unwrap(),
        "node's\nx\n"
    );
    assert_eq!(std::fs::metadata(host_dir.join("new")).unwrap().uid(), 0);
    let pid = agent.pod("opted-out").unwrap()["containers"][0]["pid"]
        .as_u64()
        .unwrap();
    assert_eq!(host_ids(pid).0, [0, 0, 0, 0]);

    // exec probes (crun exec) run in the pod's user namespace too: the
    // file they write is the pod root's, and none failed.
    for (name, (first, _)) in ["alpha", "beta"].iter().zip(&ranges) {
        let probed = d.join(format!("state/pods/{name}/volumes/scratch/probed"));
        let uid = wait_for("an exec probe to run", 30, &log, || {
            std::fs::metadata(&probed).ok().map(|m| m.uid())
        });
        assert_eq!(uid, *first, "{name}");
    }
    let (_, events) = agent.cli(&["events"]);
    assert!(!events.contains("Unhealthy"), "{events}");

    // A pod keeps its range when the agent restarts: the killed agent's
    // pod runs on and is adopted, and its next process (after the
    // container is killed) gets the same range.
    drop(agent);
    let (agent, log) = start_agent(d, &layout_dir);
    let alpha_pid = |agent: &Agent| -> Option<u64> {
        // The socket of the killed agent is there before the new one listens.
        let (ok, out) = agent.cli(&["ps", "--json"]);
        let pods: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let alpha = pods.as_array()?.iter().find(|p| p["name"] == "alpha")?;
        (alpha["phase"] == "Running").then(|| alpha["containers"][0]["pid"].as_u64())?
    };
    wait_for("alpha to be adopted", 60, &log, || {
        alpha_pid(&agent).filter(|p| *p == ranges[0].1)
    });
    kill9(ranges[0].1);
    let pid = wait_for("alpha's new pid", 60, &log, || {
        alpha_pid(&agent).filter(|p| *p != ranges[0].1)
    });
    assert_eq!(host_ids(pid).0[0], ranges[0].0);
    stop_agent(agent, &log);
}

fn kill9(pid: u64) {
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// SIGTERM, as on shutdown: the agent stops its pods and exits.
fn stop_agent(mut agent: Agent, log: &Path) {
    kill_term(agent.child.id());
    wait_for("the agent to stop on SIGTERM", 60, log, || {
        agent.child.try_wait().unwrap()
    });
}

fn kill_term(pid: u32) {
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Whether process `pid` runs (exists and is not a zombie).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(") ")?.1.starts_with(|c| c != 'Z')))
        .unwrap_or(false)
}

/// The children of process `pid` (of all its threads).
fn children(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// The container PIDs of a running pod.
fn running_pids(agent: &Agent, pod: &str) -> Option<Vec<u64>> {
    let (ok, out) = agent.cli(&["ps", "--json"]);
    let pods: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let p = pods.as_array()?.iter().find(|p| p["name"] == pod)?;
    if p["phase"] != "Running" {
        return None;
    }
    p["containers"]
        .as_array()?
        .iter()
        .map(|c| c["pid"].as_u64())
        .collect()
}

#[test]
fn pods_outlive_a_killed_agent_and_are_adopted() {
    need_root();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let layout_dir = layout_node(d, &[("ticker", "ticker", &[])]);
    std::fs::create_dir_all(d.join("pods")).unwrap();
    // The ticker writes a numbered line every 0.1 s: had its output pipe
    // died with the agent, its next write would kill it (SIGPIPE).
    std::fs::write(
        d.join("pods/tick.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: tick}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: ticker\n    image: oci:ticker\n    command: [/bin/busybox, sh, -c, 'i=0; while true; do echo tick $i; i=$((i+1)); /bin/busybox sleep 0.1; done']\n  - name: idle\n    image: oci:ticker\n    command: [/bin/busybox, sleep, '100000']\n    livenessProbe: {exec: {command: [/bin/busybox, true]}, periodSeconds: 1, failureThreshold: 1}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("pods/gone.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: gone}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: oci:ticker\n    command: [/bin/busybox, sleep, '100000']\n",
    )
    .unwrap();
    let (agent, log) = start_agent(d, &layout_dir);
    let pids = wait_for("the pod to run", 90, &log, || running_pids(&agent, "tick"));
    let gone = wait_for("the other pod to run", 90, &log, || {
        running_pids(&agent, "gone")
    })[0];
    log_with(&agent, &log, "tick", "ticker", "tick 5");
    // No runtime process beside the containers: their inits are the
    // agent's own children (it is their subreaper).
    let kids = children(agent.child.id());
    for p in pids.iter().chain([&gone]) {
        assert!(
            kids.contains(p),
            "container {p} is not a child of the agent: {kids:?}"
        );
    }

    // SIGKILL: nothing stops the pods. One manifest goes meanwhile.
    drop(agent);
    let log_file = d.join("logs/tick/ticker.log");
    let last_before = last_tick(&std::fs::read_to_string(&log_file).unwrap());
    std::fs::remove_file(d.join("pods/gone.yaml")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for p in pids.iter().chain([&gone]) {
        assert!(alive(*p), "container {p} died with the agent");
    }

    // The next agent adopts the pod (same processes, supervised again) and
    // removes the container no manifest claims.
    let (agent, log) = start_agent(d, &layout_dir);
    wait_for("the pod to be adopted", 60, &log, || {
        running_pids(&agent, "tick").filter(|p| *p == pids)
    });
    wait_for("the unclaimed container to be removed", 30, &log, || {
        (!alive(gone)).then_some(())
    });
    let (_, events) = agent.cli(&["events"]);
    assert!(
        events.contains("Adopted") && events.contains("container gone_c of an earlier agent"),
        "{events}"
    );
    assert_eq!(agent.pod("tick").unwrap()["restarts"], 0);
    // Its output went on: what it wrote while no agent read is in the log,
    // and later lines follow.
    let out = log_with(
        &agent,
        &log,
        "tick",
        "ticker",
        &format!("tick {}", last_before + 40),
    );
    for k in last_before + 1..=last_before + 40 {
        assert!(
            out.contains(&format!(" tick {k}\n")),
            "tick {k} is missing:\n{out}"
        );
    }

    // Supervised again: a killed container ends the pod, which is started
    // anew (the adopted process was not this agent's child: its status is
    // unknown).
    kill9(pids[0]);
    let new = wait_for("the pod to be restarted", 60, &log, || {
        running_pids(&agent, "tick").filter(|p| p.iter().all(|p| !pids.contains(p)))
    });
    assert_eq!(agent.pod("tick").unwrap()["restarts"], 1);
    let (_, events) = agent.cli(&["events"]);
    assert!(
        events.contains("container ticker ended with an unknown status"),
        "{events}"
    );
    assert!(
        !events.contains("Unhealthy"),
        "the adopted probe failed: {events}"
    );
    let kids = children(agent.child.id());
    assert!(new.iter().all(|p| kids.contains(p)), "{new:?} {kids:?}");
    stop_agent(agent, &log);
    assert!(!new.iter().any(|p| alive(*p)), "SIGTERM stops the pods");
}

/// The highest `tick N` in a log.
fn last_tick(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.rsplit_once(" tick ")?.1.trim().parse().ok())
        .max()
        .expect("the ticker printed")
}
