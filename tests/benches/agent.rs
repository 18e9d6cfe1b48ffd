//! Benchmark (issue 5), run by `bench/agent.sh` (root, crun, docker-registry,
//! skopeo: scripts/setup.sh installs them).
//!
//! 1. Start latency of a pod from a cached, verified image: a pod whose one
//!    container runs `busybox true` (restartPolicy Never), from the moment
//!    its manifest lands in the pod directory until the agent reports the
//!    container's exit — against `crun run` of the same bundle (the same
//!    runtime config the agent writes, same image root) timed from spawn to
//!    exit. Alternating runs; medians; ratio (target ≤ 1.2x).
//! 2. The node's overhead for running pods (issue 20): the proportional
//!    and resident set sizes (`Pss:`/`Rss:` of `/proc/PID/smaps_rollup`) of
//!    the agent plus every process it keeps that is not a container's own
//!    (its descendants in its own PID namespace: with foreground `crun
//!    run`, one crun per container; detached, none), with 10 and with 100
//!    pods of one `busybox sleep` container each; target ≤ 15 MiB PSS with
//!    10 pods and ≤ 100 KiB per extra pod.
//!
//! `HERD_AGENT=PATH` measures another herd-agent binary (e.g. main's, for
//! the "before" figures) with the same harness.
//!
//! Both sides run in the same private mount namespace seeing only cgroup2,
//! with the runtime's cgroups off (this build host mixes cgroup v1 and v2).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use herd_agent::pod::Pod;
use herd_agent::spec::{runtime_spec, write_bundle, SpecInputs};
use herd_agent::userns::{self, IdRange};
use herd_oci::cosign;
use herd_oci::layout::Layout;
use herd_oci::registry::Registry;
use herd_oci::Reference;
use herd_tests::bin_dir;
use herd_tests::registry::{make_image, need, registry, skopeo_push};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `Pss:` and `Rss:` of a process, KiB.
fn pss_rss_kb(pid: u64) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Rss:"))
}

/// The number of PID namespaces process `pid` is seen in (`NSpid:`).
fn ns_levels(pid: u64) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map_or(0, |v| v.split_whitespace().count())
}

/// The children of `pid`, of all its threads.
fn children(pid: u64) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .flat_map(|c| {
                    c.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect::<Vec<u64>>()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The agent and its descendants that are not containers' (those live in
/// deeper PID namespaces): PIDs.
fn overhead_pids(agent: u64) -> Vec<u64> {
    let level = ns_levels(agent);
    let mut out = vec![agent];
    let mut todo = children(agent);
    while let Some(p) = todo.pop() {
        if ns_levels(p) == level {
            out.push(p);
            todo.extend(children(p));
        }
    }
    out
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    need("crun");
    // One private mount namespace that sees only cgroup2, for the agent and
    // for crun alone: this build host mixes cgroup v1 and v2, which crun
    // refuses. (Before any thread exists: unshare needs that.)
    // SAFETY: plain syscalls with valid NUL-terminated strings.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare(CLONE_NEWNS) needs root"
        );
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0
        );
        assert_eq!(
            libc::mount(
                c"none".as_ptr(),
                c"/sys/fs/cgroup".as_ptr(),
                c"cgroup2".as_ptr(),
                0,
                std::ptr::null()
            ),
            0,
            "mounting cgroup2"
        );
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("registry")).unwrap();
    let reg = registry(&d.join("registry"));
    let host = format!("127.0.0.1:{}", reg.port);
    let layout = Layout::create(&d.join("layout")).unwrap();
    let digest = make_image(&layout, "b", "bench");
    skopeo_push(&d.join("layout"), "b", &format!("{host}/bench/b:1"));
    let key = herd_release::SigningKey::generate().unwrap();
    let r = Reference::parse(&format!("{host}/bench/b:1")).unwrap();
    cosign::sign(&Registry::for_reference(&r), &r, &digest, &key).unwrap();
    for sub in ["pods", "policy/keys", "state", "run", "logs"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("policy/keys/k.pub"), &key.public().0).unwrap();

    let agent_bin = std::env::var_os("HERD_AGENT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| bin_dir().join("herd-agent"));
    println!("herd-agent: {}", agent_bin.display());
    let mut agent = Command::new(&agent_bin)
        .arg("--socket")
        .arg(d.join("run/agent.sock"))
        .arg("run")
        .arg("--pods")
        .arg(d.join("pods"))
        .arg("--policy")
        .arg(d.join("policy"))
        .arg("--state")
        .arg(d.join("state"))
        .arg("--run")
        .arg(d.join("run"))
        .arg("--logs")
        .arg(d.join("logs"))
        .args(["--no-cgroups", "--host-ip", "127.0.0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent_pid = agent.id();
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let out = agent.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let wait_line = |needle: &str, secs: u64| -> Instant {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((at, l)) if l.contains(needle) => return at,
                Ok(_) => {}
                Err(_) => panic!("no {needle:?} from the agent within {secs} s"),
            }
        }
    };
    wait_line("AgentStarted", 30);
    let pod_yaml = |name: &str, cmd: &str, policy: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {host}/bench/b:1\n    command: [/bin/busybox, {cmd}]\n")
    };
    let place = |name: &str, yaml: &str| -> Instant {
        let tmp = d.join(format!(".{name}.yaml"));
        std::fs::write(&tmp, yaml).unwrap();
        let at = Instant::now();
        std::fs::rename(&tmp, d.join("pods").join(format!("{name}.yaml"))).unwrap();
        at
    };
    // Pull and verify once: later starts use the cached image.
    place("warm", &pod_yaml("warm", "true", "Never"));
    wait_line("pod warm: Exited", 120);
    std::fs::remove_file(d.join("pods/warm.yaml")).unwrap();
    wait_line("pod warm: Stopped", 30);

    // The same bundle for crun alone: the agent's runtime config for the
    // same pod (with its user namespace: a range the agent does not give
    // out while the bench runs), on the agent's unpacked image root; and
    // that config without the user namespace, for comparison.
    let root = std::fs::read_dir(d.join("state/images/rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .expect("the agent unpacked the image");
    let pod = Pod::parse(&pod_yaml("base", "true", "Never"), Path::new("base.yaml")).unwrap();
    let img: herd_oci::manifest::ImageConfig = Default::default();
    let inputs = SpecInputs {
        rootfs: root,
        cgroup: "/herd/bench".into(),
        userns: Some(IdRange {
            first: userns::FIRST + (userns::SLOTS - 1) * userns::SIZE,
        }),
        ..Default::default()
    };
    let bundle = d.join("bundle");
    write_bundle(
        &bundle,
        &runtime_spec(&pod, &pod.spec.containers[0], &img, &inputs).unwrap(),
    )
    .unwrap();
    let plain_bundle = d.join("bundle-plain");
    let plain = SpecInputs {
        userns: None,
        ..inputs
    };
    write_bundle(
        &plain_bundle,
        &runtime_spec(&pod, &pod.spec.containers[0], &img, &plain).unwrap(),
    )
    .unwrap();

    // `crun run` of a bundle to its end: milliseconds.
    let crun_run = |bundle: &Path, id: &str, what: &str| -> f64 {
        let began = Instant::now();
        let st = Command::new("crun")
            .arg("--cgroup-manager=disabled")
            .arg("--root")
            .arg(d.join("crun-state"))
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "crun run ({what}) failed: {st}");
        began.elapsed().as_secs_f64() * 1000.0
    };
    let (mut base, mut mine, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        plain.push(crun_run(
            &plain_bundle,
            &format!("plain{i}"),
            "no user namespace",
        ));
        base.push(crun_run(&bundle, &format!("base{i}"), "same config"));

        let name = format!("p{i}");
        let at = place(&name, &pod_yaml(&name, "true", "Never"));
        let done = wait_line(&format!("pod {name}: Exited"), 60);
        mine.push(done.duration_since(at).as_secs_f64() * 1000.0);
        std::fs::remove_file(d.join("pods").join(format!("{name}.yaml"))).unwrap();
        wait_line(&format!("pod {name}: Stopped"), 30);
        eprintln!(
            "run {}: crun run {:.1} ms (no user namespace {:.1} ms), herd-agent pod start to exit {:.1} ms",
            i + 1,
            base[i],
            plain[i],
            mine[i]
        );
    }
    let (b, m, p) = (median(&mut base), median(&mut mine), median(&mut plain));
    println!(
        "start latency (busybox true, cached verified image, user namespace), median of {runs}: crun run {b:.1} ms, herd-agent {m:.1} ms -> {:.2}x (target <= 1.20x); crun run without a user namespace {p:.1} ms ({:.2}x)",
        m / b,
        m / p
    );

    // Long-running pods: 10, then 100.
    let mut started = std::collections::BTreeSet::new();
    let mut measured = Vec::new();
    for (from, to) in [(0, 10), (10, 100)] {
        for i in from..to {
            let name = format!("s{i}");
            place(&name, &pod_yaml(&name, "sleep, \"100000\"", "Always"));
        }
        let end = Instant::now() + Duration::from_secs(900);
        while started.len() < to {
            match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok((_, l)) if l.contains(": Started:") => {
                    started.insert(l);
                }
                Ok(_) => {}
                Err(_) => panic!("only {} of {to} pods started", started.len()),
            }
        }
        std::thread::sleep(Duration::from_secs(3));
        let pids = overhead_pids(agent_pid as u64);
        let (mut pss, mut rss) = (0, 0);
        for p in &pids {
            let (p, r) = pss_rss_kb(*p);
            pss += p;
            rss += r;
        }
        let (agent_pss, agent_rss) = pss_rss_kb(agent_pid as u64);
        println!(
            "{to} pods running: node overhead PSS {:.1} MiB, RSS {:.1} MiB ({} process(es): the agent PSS {:.1} MiB RSS {:.1} MiB, {} other(s) PSS {:.1} MiB RSS {:.1} MiB)",
            pss as f64 / 1024.0,
            rss as f64 / 1024.0,
            pids.len(),
            agent_pss as f64 / 1024.0,
            agent_rss as f64 / 1024.0,
            pids.len() - 1,
            (pss - agent_pss) as f64 / 1024.0,
            (rss - agent_rss) as f64 / 1024.0,
        );
        measured.push((to, pss, rss));
    }
    let (n0, pss0, rss0) = measured[0];
    let (n1, pss1, rss1) = measured[1];
    let per = |a: u64, b: u64| (b as f64 - a as f64) / (n1 - n0) as f64;
    println!(
        "node overhead: {:.1} MiB PSS with {n0} pods (target <= 15 MiB); per extra pod {:.0} KiB PSS, {:.0} KiB RSS (target <= 100 KiB)",
        pss0 as f64 / 1024.0,
        per(pss0, pss1),
        per(rss0, rss1)
    );
    for i in 0..100 {
        std::fs::remove_file(d.join("pods").join(format!("s{i}.yaml"))).unwrap();
    }
    let _ = Command::new("kill")
        .args(["-TERM", &agent_pid.to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(180);
    while agent.try_wait().unwrap().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = agent.kill();
}
