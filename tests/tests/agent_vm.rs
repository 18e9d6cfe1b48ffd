//! herd-agent on a booted node, in QEMU: the default image (crun and the
//! agent in its verified /usr) plus a trusted key, two static pods and a
//! busybox "chaos" service. The node pulls from a real registry on the
//! host's loopback (reached only through a QEMU guestfwd) and:
//! - runs the signed pod, reachable from the host through a forward to its
//!   hostPort, with its cgroup v2 limits (cpu, memory, io) applied, its
//!   root an unprivileged uid of the node (a user namespace per pod);
//! - refuses the unsigned pod beside it, saying why;
//! - restarts the signed pod after the chaos service kills its process.

use std::path::Path;
use std::time::{Duration, Instant};

use herd_oci::cosign;
use herd_oci::layout::Layout;
use herd_oci::registry::Registry;
use herd_oci::Reference;
use herd_qemu::{Forward, GuestForward, Vm, VmConfig};
use herd_tests::registry::{make_image, registry, skopeo_push};
use herd_tests::{free_port, herd_build, http_get, run_ok, workspace};

const BOOT: Duration = Duration::from_secs(180);

const CHAOS: &str = r#"
bb=/usr/bin/busybox
i=0
while [ $i -lt 600 ]; do
  pid=$(/usr/bin/herd-agent ps --json | $bb grep -o '"pid": [0-9][0-9]*' | $bb head -1 | $bb grep -o '[0-9]*$')
  [ -n "$pid" ] && break
  i=$((i+1)); $bb sleep 0.5
done
echo "memory.max $($bb cat /sys/fs/cgroup/herd/pods/web/httpd/memory.max 2>&1)"
echo "cpu.max $($bb cat /sys/fs/cgroup/herd/pods/web/httpd/cpu.max 2>&1)"
echo "vda $($bb cat /sys/block/vda/dev)"
echo "host $($bb grep Uid: /proc/$pid/status)"
echo "io.max $($bb cat /sys/fs/cgroup/herd/pods/web/httpd/io.max 2>&1)"
$bb sleep 20
echo "killing httpd pid $pid"
$bb kill -9 "$pid"
"#;

/// The default image plus what this test needs, as one image description.
fn image_toml(dir: &Path, key_pub: &str) -> std::path::PathBuf {
    let default = std::fs::read_to_string(workspace().join("images/default.toml")).unwrap();
    let lock = workspace().join("buildroot/debian.lock");
    let default = default.replace(
        "lock = \"../buildroot/debian.lock\"",
        &format!("lock = {:?}", lock.display().to_string()),
    );
    assert!(default.contains(&lock.display().to_string()));
    let web = r#"apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: 10.0.2.100/herd/web:1
    command: [/bin/busybox, sh, -c, "mkdir -p /tmp/www && echo hello from a signed pod on herd > /tmp/www/index.html && exec /bin/busybox httpd -f -p 8080 -h /tmp/www"]
    ports: [{containerPort: 8080, hostPort: 8080}]
    resources: {limits: {memory: 64Mi, cpu: 500m, herd.dev/io-write-bps: 4Mi, herd.dev/io-read-iops: 500}}
"#;
    let unsigned = "apiVersion: v1\nkind: Pod\nmetadata: {name: unsigned}\nspec:\n  containers:\n  - name: c\n    image: 10.0.2.100/herd/unsigned:1\n";
    let extra = format!(
        r#"
[[usr.package]]
name = "busybox-static"
files = {{ "bin/busybox" = "bin/busybox" }}

[[usr.file]]
path = "lib/herd/policy/keys/test.pub"
content = "{key_pub}"

[[usr.file]]
path = "lib/herd/policy/policy.toml"
content = 'insecure_registries = ["10.0.2.100"]'

[[usr.file]]
path = "share/factory/etc/herd/pods/web.yaml"
content = '''{web}'''

[[usr.file]]
path = "share/factory/etc/herd/pods/unsigned.yaml"
content = '''{unsigned}'''

[[usr.file]]
path = "lib/herd/chaos.sh"
mode = 0o755
content = '''{CHAOS}'''

[[init.service]]
name = "chaos"
exec = ["/usr/bin/busybox", "sh", "/usr/lib/herd/chaos.sh"]
restart = "never"
"#
    );
    let p = dir.join("agent-node.toml");
    std::fs::write(&p, default + &extra).unwrap();
    p
}

#[test]
fn node_runs_a_signed_pod_refuses_an_unsigned_one_and_restarts_a_killed_one() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("registry")).unwrap();
    let reg = registry(&d.join("registry"));
    let host = format!("127.0.0.1:{}", reg.port);
    let layout_dir = d.join("layout");
    let layout = Layout::create(&layout_dir).unwrap();
    let web = make_image(&layout, "web", "web");
    make_image(&layout, "unsigned", "unsigned");
    skopeo_push(&layout_dir, "web", &format!("{host}/herd/web:1"));
    skopeo_push(&layout_dir, "unsigned", &format!("{host}/herd/unsigned:1"));
    let key = herd_release::SigningKey::generate().unwrap();
    // Pushed through the host's loopback, signed for the name the node pulls
    // it by (a signature vouches only for the image it names).
    let web_ref = Reference::parse(&format!("{host}/herd/web:1")).unwrap();
    let node_ref = Reference::parse("10.0.2.100/herd/web:1").unwrap();
    cosign::sign(&Registry::for_reference(&web_ref), &node_ref, &web, &key).unwrap();

    let out = d.join("out");
    run_ok(herd_build(&image_toml(d, &key.public().0), &out, 1_700_000_000).arg("--quiet"));

    let http = free_port();
    let mut cfg = VmConfig::new(out.join("disk.raw"));
    cfg.memory_mib = 512;
    cfg.snapshot = true;
    cfg.guest_forwards.push(GuestForward {
        guest: 80,
        host: reg.port,
    });
    cfg.forwards.push(Forward {
        host: http,
        guest: 8080,
    });
    let vm = Vm::start(&cfg, &d.join("console.log")).unwrap();
    vm.wait_for("herd-init: ready slot=a", BOOT).unwrap();
    vm.wait_for("agent: AgentStarted", BOOT).unwrap();

    // The signed pod runs and answers through the node's port.
    let pulled = vm
        .wait_for("pod web: Pulled: container httpd", BOOT)
        .unwrap();
    assert!(pulled.contains(&web.to_string()), "{pulled}");
    vm.wait_for("pod web: Started: 1 container(s) running (start 1)", BOOT)
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    let page = loop {
        if let Some(p) = http_get(http, Duration::from_secs(10))
            .filter(|p| p.contains("hello from a signed pod on herd"))
        {
            break p;
        }
        assert!(
            Instant::now() < end,
            "the pod did not answer through the forward; console:\n{}",
            vm.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(page.contains(" 200 "), "{page}");

    // The unsigned pod beside it is refused.
    let refused = vm.wait_for("pod unsigned: Untrusted", BOOT).unwrap();
    assert!(
        refused.contains("is not signed") && refused.contains("nothing of it runs"),
        "{refused}"
    );

    // Root in the pod is an unprivileged uid of the node (the pod's own
    // user namespace, on the node's kernel and ext4 STATE).
    let uid = vm.wait_for("chaos: host Uid:", BOOT).unwrap();
    let ids: Vec<u32> = uid
        .split("Uid:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{uid}");
    assert!(ids.iter().all(|u| *u >= 0x2_0000), "{uid}");

    // Its limits are the node's cgroup v2 settings.
    vm.wait_for("chaos: memory.max 67108864", BOOT).unwrap();
    vm.wait_for("chaos: cpu.max 50000 100000", BOOT).unwrap();
    // I/O limits go to the disk holding /var (vda), not to its partition.
    let io = vm.wait_for("chaos: io.max ", BOOT).unwrap();
    let vda = vm
        .lines()
        .iter()
        .find_map(|l| l.split("chaos: vda ").nth(1).map(|s| s.trim().to_string()))
        .expect("the chaos service printed vda's device number");
    assert!(
        io.contains(&format!("{vda} rbps=max wbps=4194304 riops=500 wiops=max")),
        "{io} (vda is {vda})"
    );

    // Killed, the container comes back after the back-off.
    vm.wait_for("chaos: killing httpd pid", BOOT).unwrap();
    vm.wait_for("pod web: Exited: container httpd ended with signal 9", BOOT)
        .unwrap();
    vm.wait_for("pod web: BackOff: starting again in 10 s", BOOT)
        .unwrap();
    vm.wait_for("pod web: Started: 1 container(s) running (start 2)", BOOT)
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while http_get(http, Duration::from_secs(10))
        .is_none_or(|p| !p.contains("hello from a signed pod on herd"))
    {
        assert!(Instant::now() < end, "the restarted pod does not answer");
        std::thread::sleep(Duration::from_millis(500));
    }
    let lines = vm.lines().join("\n");
    assert!(
        !lines.contains("pod unsigned: Started"),
        "the unsigned pod must never start:\n{lines}"
    );
    vm.kill();
}
