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
use herd_tests::registry::{make_image, need, registry, skopeo_push};
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

#[test]
fn agent_runs_signed_pods_and_refuses_the_rest() {
    need("crun");
    // SAFETY: getuid(2) has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(uid, 0, "running containers needs root (CI runs as root)");
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
    let mut agent = Agent { child, socket };

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
