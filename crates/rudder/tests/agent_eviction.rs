//! The node agent's evictions against real containers in `rudder server`:
//! local ephemeral storage limits (a container's writable layer, an
//! emptyDir's sizeLimit), and node-pressure eviction with memory pressure
//! forced by a threshold above the machine's memory. Root, namespaces,
//! cgroups and overlayfs are needed (CI runs as root).

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "127.0.0.1:5000/busybox:1.35";

/// Both tests use the same bridge and pod network: one at a time.
static ONE_NODE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Cluster {
    dir: tempfile::TempDir,
    server: Option<Child>,
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    /// `rudder server` on a node of its own, with extra flags.
    fn start(flags: &[&str]) -> Cluster {
        let turn = ONE_NODE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        support::build_test_images();
        let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("rudder-eviction-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let server = Command::new(env!("CARGO_BIN_EXE_rudder"))
            .arg("server")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--cluster-cidr",
                "10.79.0.0/16",
                "--service-cidr",
                "10.111.0.0/16",
                "--bridge-name",
                "rdtevict0",
                "--agent-port",
                "0",
            ])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let cluster = Cluster {
            dir,
            server: Some(server),
            _turn: turn,
        };
        eventually(&cluster, "the node to be Ready", 90, |c| {
            c.kubectl(&["get", "nodes", "--no-headers"])
                .1
                .contains(" Ready ")
        });
        cluster
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        support::kubectl(&self.dir.path().join("kubeconfig.yaml"), args)
    }

    fn apply(&self, yaml: &str) {
        support::kubectl_apply(&self.dir.path().join("kubeconfig.yaml"), yaml);
    }

    fn pod(&self, name: &str, path: &str) -> String {
        self.kubectl(&["get", "pod", name, "-o", &format!("jsonpath={path}")])
            .1
    }

    fn node(&self) -> String {
        self.kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"])
            .1
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
        let _ = Command::new(env!("CARGO_BIN_EXE_rudder"))
            .arg("reset")
            .arg("--data-dir")
            .arg(self.dir.path())
            .output();
    }
}

fn eventually(
    cluster: &Cluster,
    what: &str,
    seconds: u64,
    mut check: impl FnMut(&Cluster) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check(cluster) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\nserver log tail:\n{}",
            cluster.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn evicted(cluster: &Cluster, pod: &str) -> bool {
    cluster.pod(pod, "{.status.phase}/{.status.reason}") == "Failed/Evicted"
}

#[test]
fn pods_over_their_local_storage_limits_are_evicted() {
    // No node-pressure thresholds: only the pods' own limits count.
    let cluster = Cluster::start(&["--eviction-hard="]);
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: disk-hog}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=10; sleep 3600"]
    resources: {{limits: {{ephemeral-storage: 2Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: layer-hog}}
spec:
  containers:
  - name: writer
    image: {BUSYBOX}
    command: ["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=10; sleep 3600"]
    resources: {{limits: {{ephemeral-storage: 2Mi}}}}
  - name: idle
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    resources: {{limits: {{ephemeral-storage: 100Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: scratch-hog}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "dd if=/dev/zero of=/scratch/big bs=1M count=5; sleep 3600"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes:
  - {{name: scratch, emptyDir: {{sizeLimit: 1Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: calm}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "dd if=/dev/zero of=/scratch/small bs=1k count=100; sleep 3600"]
    resources: {{limits: {{ephemeral-storage: 50Mi}}}}
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes:
  - {{name: scratch, emptyDir: {{sizeLimit: 10Mi}}}}
"#
    ));
    for pod in ["disk-hog", "layer-hog", "scratch-hog"] {
        eventually(&cluster, &format!("{pod} to be evicted"), 120, |c| {
            evicted(c, pod)
        });
    }
    assert_eq!(
        cluster.pod("disk-hog", "{.status.message}"),
        "Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. "
    );
    assert_eq!(
        cluster.pod("layer-hog", "{.status.message}"),
        "Container writer exceeded its local ephemeral storage limit \"2Mi\". "
    );
    assert_eq!(
        cluster.pod("scratch-hog", "{.status.message}"),
        "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". "
    );
    // Limit evictions are not node-pressure disruptions.
    assert_eq!(
        cluster.pod(
            "disk-hog",
            "{.status.conditions[?(@.type==\"DisruptionTarget\")].status}"
        ),
        ""
    );
    // The containers are stopped and stay stopped (restartPolicy Always
    // notwithstanding).
    eventually(&cluster, "disk-hog's container to be stopped", 60, |c| {
        !c.pod(
            "disk-hog",
            "{.status.containerStatuses[0].state.terminated}",
        )
        .is_empty()
    });
    let events = cluster.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=disk-hog,reason=Evicted",
        "-o",
        "jsonpath={.items[*].type}",
    ]);
    assert_eq!(events.1, "Warning", "{events:?}");
    assert_eq!(cluster.pod("calm", "{.status.phase}"), "Running");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cluster.pod("disk-hog", "{.status.phase}"), "Failed");
    assert_eq!(
        cluster.pod("disk-hog", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
}

#[test]
fn memory_pressure_evicts_best_effort_pods_before_guaranteed_ones() {
    // A threshold above any machine's memory: the node is always under
    // memory pressure. A long monitoring interval leaves the pods time to
    // start between the first observation and the first eviction.
    let cluster = Cluster::start(&[
        "--eviction-hard",
        "memory.available<1Pi",
        "--eviction-monitoring-interval",
        "30s",
    ]);
    let node = cluster.node();
    eventually(&cluster, "the node to report MemoryPressure", 90, |c| {
        c.kubectl(&[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"MemoryPressure\")].status}",
        ])
        .1 == "True"
    });
    let reason = cluster.kubectl(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"MemoryPressure\")].reason}",
    ]);
    assert_eq!(reason.1, "KubeletHasInsufficientMemory");
    // The node lifecycle controller taints the node from the condition.
    eventually(&cluster, "the memory-pressure taint", 60, |c| {
        c.kubectl(&["get", "node", &node, "-o", "jsonpath={.spec.taints[*].key}"])
            .1
            .contains("node.kubernetes.io/memory-pressure")
    });

    // Bound directly: the scheduler would rightly keep them off this node.
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: best-effort}}
spec:
  nodeName: {node}
  tolerations: [{{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}}]
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: guaranteed}}
spec:
  nodeName: {node}
  tolerations: [{{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}}]
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    resources:
      requests: {{cpu: 50m, memory: 64Mi}}
      limits: {{cpu: 50m, memory: 64Mi}}
"#
    ));
    eventually(&cluster, "the best-effort pod to be evicted", 180, |c| {
        evicted(c, "best-effort")
    });
    eventually(&cluster, "the guaranteed pod to be evicted", 180, |c| {
        evicted(c, "guaranteed")
    });
    // In that order, as the agent's log tells.
    let log = cluster.log();
    let order: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("evicting pod"))
        .filter_map(|line| {
            ["best-effort", "guaranteed"]
                .into_iter()
                .find(|pod| line.contains(pod))
        })
        .collect();
    assert_eq!(
        order.first(),
        Some(&"best-effort"),
        "{}",
        cluster.log_tail()
    );

    let message = cluster.pod("best-effort", "{.status.message}");
    assert!(
        message.starts_with(
            "The node was low on resource: memory. Threshold quantity: 1Pi, available: "
        ),
        "{message}"
    );
    assert!(
        message.contains("Container c was using ")
            && message.ends_with(", request is 0, has larger consumption of memory. "),
        "{message}"
    );
    assert_eq!(
        cluster.pod(
            "best-effort",
            "{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}"
        ),
        "TerminationByKubelet"
    );
    // The guaranteed pod used less than it requested: no container named.
    let message = cluster.pod("guaranteed", "{.status.message}");
    assert!(!message.contains("Container c"), "{message}");
}
