//! The node runtime's CRI interface (`rudder_cri::RuntimeService` and
//! `ImageService` on `NodeRuntime`), driven as the node agent will: pods with
//! real pause processes and containers from the images
//! `shared/acceptance/images/build.sh` serves at 127.0.0.1:5000. Needs root,
//! overlayfs, namespaces and cgroups (this suite runs as root in CI).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rudder_cri::cri::*;
use rudder_cri::{ImageService, NodeRuntime, RuntimeService};

const BUSYBOX: &str = "127.0.0.1:5000/busybox:1.35";

/// A node runtime over a fresh data dir with busybox pulled through the
/// ImageService; everything it ran is reset on drop.
struct Node {
    dir: tempfile::TempDir,
    runtime: NodeRuntime,
}

impl Node {
    fn new() -> Node {
        support::build_test_images();
        let dir = tempfile::Builder::new()
            .prefix("rudder-cri-")
            .tempdir()
            .unwrap();
        let runtime = open(dir.path());
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let id = tokio
            .block_on(runtime.pull_image(&ImageSpec::new(BUSYBOX), None))
            .unwrap();
        assert!(id.starts_with("sha256:"), "{id}");
        Node { dir, runtime }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.runtime.reset();
    }
}

fn open(dir: &Path) -> NodeRuntime {
    NodeRuntime::open(dir, PathBuf::from(env!("CARGO_BIN_EXE_rudder"))).unwrap()
}

fn pod(name: &str, namespaces: NamespaceOption) -> PodSandboxConfig {
    let uid = rudder_cri::sandbox::random_id().unwrap();
    let mut config = PodSandboxConfig {
        metadata: PodSandboxMetadata {
            name: name.into(),
            uid,
            namespace: "default".into(),
            attempt: 0,
        },
        hostname: format!("{name}-host"),
        ..Default::default()
    };
    config.labels.insert("app".into(), name.into());
    config.linux.security_context.namespace_options = namespaces;
    config
}

fn container(name: &str, command: &[&str]) -> ContainerConfig {
    let mut config = ContainerConfig {
        metadata: ContainerMetadata {
            name: name.into(),
            attempt: 0,
        },
        image: ImageSpec::new(BUSYBOX),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    };
    config.labels.insert("role".into(), name.into());
    config
}

fn run(node: &NodeRuntime, sandbox: &str, config: &PodSandboxConfig, c: ContainerConfig) -> String {
    let id = RuntimeService::create_container(node, sandbox, &c, config).unwrap();
    node.start_container(&id).unwrap();
    id
}

fn exec(node: &NodeRuntime, id: &str, cmd: &[&str]) -> ExecSyncResult {
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    node.exec_sync(id, &cmd, Duration::from_secs(20)).unwrap()
}

fn stdout(node: &NodeRuntime, id: &str, cmd: &[&str]) -> String {
    let result = exec(node, id, cmd);
    assert_eq!(
        result.exit_code,
        0,
        "{cmd:?}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    String::from_utf8(result.stdout).unwrap().trim().to_string()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pause_pid(node: &NodeRuntime, sandbox: &str) -> i32 {
    rudder_container::runtime::init_pid(&node.containers().state(sandbox).unwrap()).unwrap()
}

fn init_pid(node: &NodeRuntime, id: &str) -> i32 {
    rudder_container::runtime::init_pid(&node.containers().state(id).unwrap()).unwrap()
}

fn sleeper(name: &str) -> ContainerConfig {
    container(name, &["sleep", "1000"])
}

#[test]
fn containers_of_a_pod_share_its_network_uts_and_ipc_namespaces() {
    let node = Node::new();
    let rt = &node.runtime;
    let mut config = pod("net", NamespaceOption::kubernetes_default());
    config.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    config.log_directory = node
        .dir
        .path()
        .join("pod-logs")
        .to_string_lossy()
        .into_owned();
    let sandbox = rt.run_pod_sandbox(&config).unwrap();
    let status = rt.pod_sandbox_status(&sandbox).unwrap();
    assert_eq!(status.state, PodSandboxState::SandboxReady);
    assert_eq!(status.metadata, config.metadata);

    let a = run(rt, &sandbox, &config, sleeper("a"));
    let b = run(
        rt,
        &sandbox,
        &config,
        container("b", &["sh", "-c", "echo hello from b; sleep 1000"]),
    );
    let pause = pause_pid(rt, &sandbox);
    for kind in ["net", "uts", "ipc"] {
        let path = format!("/proc/self/ns/{kind}");
        let in_a = stdout(rt, &a, &["busybox", "readlink", &path]);
        let in_b = stdout(rt, &b, &["busybox", "readlink", &path]);
        let in_pause = std::fs::read_link(format!("/proc/{pause}/ns/{kind}")).unwrap();
        assert_eq!(in_a, in_b, "{kind}");
        assert_eq!(in_a, in_pause.to_string_lossy(), "{kind}");
        let host = std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        assert_ne!(in_a, host.to_string_lossy(), "{kind} is the host's");
    }
    // Each container has its own PID namespace by default.
    assert_ne!(
        stdout(rt, &a, &["busybox", "readlink", "/proc/self/ns/pid"]),
        stdout(rt, &b, &["busybox", "readlink", "/proc/self/ns/pid"])
    );
    assert_eq!(stdout(rt, &b, &["hostname"]), "net-host");
    assert_eq!(
        stdout(rt, &b, &["cat", "/etc/resolv.conf"]),
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5"
    );
    assert!(stdout(rt, &a, &["cat", "/etc/hosts"]).contains("127.0.1.1\tnet-host"));
    // The sandbox brought the pod's loopback up (IFF_UP | IFF_LOOPBACK).
    assert_eq!(stdout(rt, &a, &["cat", "/sys/class/net/lo/flags"]), "0x9");

    // The log goes to <log_directory>/<log_path> in the CRI format.
    let b_status = rt.container_status(&b).unwrap();
    assert_eq!(
        Path::new(&b_status.log_path),
        node.dir.path().join("pod-logs/b/0.log")
    );
    eventually("b's log line", || {
        std::fs::read_to_string(&b_status.log_path)
            .unwrap_or_default()
            .contains(" stdout F hello from b")
    });
    assert_eq!(b_status.labels.get(LABEL_POD_NAME).unwrap(), "net");
    assert_eq!(b_status.labels.get(LABEL_CONTAINER_NAME).unwrap(), "b");
    assert_eq!(b_status.labels.get(LABEL_SANDBOX_ID).unwrap(), &sandbox);
    assert_eq!(b_status.labels.get("role").unwrap(), "b");
}

#[test]
fn a_shared_pid_namespace_shows_the_pods_processes_to_each_container() {
    let node = Node::new();
    let rt = &node.runtime;
    let config = pod(
        "pid",
        NamespaceOption {
            network: NamespaceMode::Pod,
            pid: NamespaceMode::Pod,
            ipc: NamespaceMode::Pod,
        },
    );
    let sandbox = rt.run_pod_sandbox(&config).unwrap();
    let a = run(rt, &sandbox, &config, container("a", &["sleep", "4242"]));
    let b = run(rt, &sandbox, &config, sleeper("b"));
    let ps = stdout(rt, &b, &["ps", "-o", "pid,args"]);
    assert!(ps.contains("sleep 4242"), "{ps}");
    // The pause process is the namespace's init.
    let init = stdout(rt, &b, &["cat", "/proc/1/cmdline"]);
    assert!(
        init.ends_with("pause\0") || init.ends_with("pause"),
        "{init:?}"
    );
    assert_eq!(
        stdout(rt, &a, &["busybox", "readlink", "/proc/self/ns/pid"]),
        stdout(rt, &b, &["busybox", "readlink", "/proc/self/ns/pid"])
    );
}

#[test]
fn exec_sync_returns_output_and_exit_code_and_status_records_the_exit() {
    let node = Node::new();
    let rt = &node.runtime;
    let config = pod("exec", NamespaceOption::kubernetes_default());
    let sandbox = rt.run_pod_sandbox(&config).unwrap();
    let a = run(rt, &sandbox, &config, sleeper("a"));
    let result = exec(rt, &a, &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(result.exit_code, 3);
    assert_eq!(result.stdout, b"out\n");
    assert_eq!(result.stderr, b"err\n");
    let missing = exec(rt, &a, &["no-such-command"]);
    assert_eq!(missing.exit_code, 127);

    let mut env_cmd = rt
        .exec(
            &a,
            &["sh".into(), "-c".into(), "echo $GREETING".into()],
            &[KeyValue {
                key: "GREETING".into(),
                value: "hi".into(),
            }],
            false,
        )
        .unwrap();
    let output = env_cmd.output().unwrap();
    assert_eq!(output.stdout, b"hi\n");

    let quitter = run(
        rt,
        &sandbox,
        &config,
        container("quitter", &["sh", "-c", "exit 7"]),
    );
    eventually("the container to exit", || {
        rt.container_status(&quitter).unwrap().state == ContainerState::ContainerExited
    });
    let status = rt.container_status(&quitter).unwrap();
    assert_eq!(status.exit_code, 7);
    assert_eq!(status.reason, "Error");
    assert!(status.started_at > 0);
    assert!(status.finished_at >= status.started_at);
    assert!(status.image_ref.starts_with("sha256:"));
    assert_eq!(status.metadata.name, "quitter");
    assert!(rt
        .exec_sync(&quitter, &["true".into()], Duration::ZERO)
        .is_err());

    // stop_container: `sleep` is its PID namespace's init, which ignores
    // SIGTERM: SIGKILL ends it after the grace period.
    RuntimeService::stop_container(rt, &a, Duration::from_secs(1)).unwrap();
    let stopped = rt.container_status(&a).unwrap();
    assert_eq!(stopped.state, ContainerState::ContainerExited);
    assert_eq!(stopped.exit_code, 128 + 9);

    let stats = rt.container_stats(&quitter).unwrap();
    assert_eq!(stats.attributes.id, quitter);
    assert!(stats.writable_layer.inodes_used >= 1);
}

#[test]
fn list_filters_and_sandbox_removal() {
    let node = Node::new();
    let rt = &node.runtime;
    let web = pod("web", NamespaceOption::kubernetes_default());
    let db = pod("db", NamespaceOption::kubernetes_default());
    let web_id = rt.run_pod_sandbox(&web).unwrap();
    let db_id = rt.run_pod_sandbox(&db).unwrap();
    let web_a = run(rt, &web_id, &web, sleeper("a"));
    let web_b = RuntimeService::create_container(rt, &web_id, &sleeper("b"), &web).unwrap();
    let db_a = run(rt, &db_id, &db, sleeper("a"));

    let ids = |filter: ContainerFilter| {
        let mut ids: Vec<String> = rt
            .list_containers(&filter)
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        ids(ContainerFilter::default()),
        sorted(vec![web_a.clone(), web_b.clone(), db_a.clone()])
    );
    assert_eq!(
        ids(ContainerFilter {
            pod_sandbox_id: Some(web_id.clone()),
            ..Default::default()
        }),
        sorted(vec![web_a.clone(), web_b.clone()])
    );
    assert_eq!(
        ids(ContainerFilter {
            state: Some(ContainerState::ContainerCreated),
            ..Default::default()
        }),
        vec![web_b.clone()]
    );
    assert_eq!(
        ids(ContainerFilter {
            label_selector: BTreeMap::from([
                (LABEL_POD_NAME.to_string(), "db".to_string()),
                ("role".to_string(), "a".to_string())
            ]),
            ..Default::default()
        }),
        vec![db_a.clone()]
    );
    assert_eq!(
        ids(ContainerFilter {
            id: Some(web_a.clone()),
            state: Some(ContainerState::ContainerRunning),
            ..Default::default()
        }),
        vec![web_a.clone()]
    );
    let stats = rt
        .list_container_stats(&ContainerStatsFilter {
            pod_sandbox_id: Some(db_id.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(stats.len(), 1);
    assert!(stats[0].memory.usage_bytes.is_some());

    let sandboxes = rt
        .list_pod_sandbox(&PodSandboxFilter {
            label_selector: BTreeMap::from([("app".to_string(), "web".to_string())]),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(sandboxes.len(), 1);
    assert_eq!(sandboxes[0].id, web_id);

    // Stopping the pod stops its containers and the pause process.
    rt.stop_pod_sandbox(&web_id).unwrap();
    assert_eq!(
        rt.pod_sandbox_status(&web_id).unwrap().state,
        PodSandboxState::SandboxNotReady
    );
    assert_eq!(
        rt.container_status(&web_a).unwrap().state,
        ContainerState::ContainerExited
    );
    assert_eq!(
        rt.list_pod_sandbox(&PodSandboxFilter {
            state: Some(PodSandboxState::SandboxReady),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect::<Vec<_>>(),
        vec![db_id.clone()]
    );
    // Removing it removes them all; twice is fine.
    rt.remove_pod_sandbox(&web_id).unwrap();
    rt.remove_pod_sandbox(&web_id).unwrap();
    assert_eq!(ids(ContainerFilter::default()), vec![db_a.clone()]);
    assert!(rt.containers().state(&web_a).is_err());
    assert!(rt.containers().state(&web_id).is_err());
    assert!(rt.pod_sandbox_status(&web_id).is_err());
    assert!(!node.dir.path().join("sandboxes").join(&web_id).exists());

    // Removing a pod with running containers stops them first.
    let db_pid = init_pid(rt, &db_a);
    rt.remove_pod_sandbox(&db_id).unwrap();
    eventually("the container's process to go", || {
        !Path::new(&format!("/proc/{db_pid}")).exists()
    });
    assert!(rt
        .list_containers(&ContainerFilter::default())
        .unwrap()
        .is_empty());
    // The image is free again.
    ImageService::remove_image(rt, &ImageSpec::new(BUSYBOX)).unwrap();
    assert!(rt.image_status(&ImageSpec::new(BUSYBOX)).unwrap().is_none());
}

/// The cgroup line of `/proc/PID/cgroup` for a controller (v1) or the unified one.
fn cgroup_of(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_string))
        .collect()
}

#[test]
fn containers_are_placed_in_the_pods_cgroup_under_its_qos_class() {
    let node = Node::new();
    let rt = &node.runtime;
    let mut config = pod("qos", NamespaceOption::kubernetes_default());
    config.linux.resources = Some(LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 102,
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    });
    let sandbox = rt.run_pod_sandbox(&config).unwrap();
    let mut limited = sleeper("limited");
    limited.linux.resources.memory_limit_in_bytes = 32 << 20;
    let id = run(rt, &sandbox, &config, limited);
    let pod_cgroup = format!("/rudder/kubepods/burstable/pod{}", config.metadata.uid);
    let expected = format!("{pod_cgroup}/{id}");
    let cgroups = cgroup_of(init_pid(rt, &id));
    assert!(
        cgroups.iter().any(|c| c == &expected),
        "{cgroups:?} lacks {expected}"
    );
    let pause_cgroups = cgroup_of(pause_pid(rt, &sandbox));
    assert!(
        pause_cgroups
            .iter()
            .any(|c| c == &format!("{pod_cgroup}/{sandbox}")),
        "{pause_cgroups:?}"
    );
    let layout = rudder_cgroups::Layout::detect().unwrap();
    let pod_dirs = rudder_cgroups::Cgroup::new(layout, pod_cgroup.trim_start_matches('/')).paths();
    assert!(pod_dirs.iter().any(|d| d.is_dir()));
    let stats = rt.container_stats(&id).unwrap();
    assert!(stats.memory.usage_bytes.unwrap() > 0);

    rt.remove_pod_sandbox(&sandbox).unwrap();
    assert!(pod_dirs.iter().all(|d| !d.exists()), "{pod_dirs:?} remain");
}

#[test]
fn a_second_runtime_over_the_same_data_dir_adopts_the_running_pods() {
    let node = Node::new();
    let config = pod("adopt", NamespaceOption::kubernetes_default());
    let sandbox = node.runtime.run_pod_sandbox(&config).unwrap();
    let a = run(&node.runtime, &sandbox, &config, sleeper("a"));

    // As a restarted agent: nothing but the data dir in common.
    let again = open(node.dir.path());
    let sandboxes = again
        .list_pod_sandbox(&PodSandboxFilter::default())
        .unwrap();
    assert_eq!(sandboxes.len(), 1);
    assert_eq!(sandboxes[0].id, sandbox);
    assert_eq!(sandboxes[0].state, PodSandboxState::SandboxReady);
    assert_eq!(sandboxes[0].metadata, config.metadata);
    let containers = again.list_containers(&ContainerFilter::default()).unwrap();
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].id, a);
    assert_eq!(containers[0].pod_sandbox_id, sandbox);
    assert_eq!(containers[0].state, ContainerState::ContainerRunning);
    assert_eq!(containers[0].metadata.name, "a");
    assert_eq!(stdout(&again, &a, &["hostname"]), "adopt-host");
    // It can add to the pod and tear it down.
    let b = run(&again, &sandbox, &config, sleeper("b"));
    assert_eq!(
        stdout(&again, &b, &["busybox", "readlink", "/proc/self/ns/net"]),
        stdout(
            &node.runtime,
            &a,
            &["busybox", "readlink", "/proc/self/ns/net"]
        )
    );
    again.remove_pod_sandbox(&sandbox).unwrap();
    assert!(node
        .runtime
        .list_pod_sandbox(&PodSandboxFilter::default())
        .unwrap()
        .is_empty());
    let images = again.list_images(&ImageFilter::default()).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].repo_tags, [BUSYBOX]);
    assert!(again.image_fs_info().unwrap()[0].used_bytes > 0);
}
