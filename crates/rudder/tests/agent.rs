//! `rudder server` with its node agent, as a user runs a single-node
//! cluster: real containers from the images `shared/acceptance/images/build.sh`
//! serves, driven with the real kubectl. Root, namespaces, cgroups, overlayfs
//! and iptables/nft are needed (CI runs as root).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "127.0.0.1:5000/busybox:1.35";
const WEB: &str = "127.0.0.1:5000/web:1.0";

struct Cluster {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    server: Option<Child>,
}

/// Flags that keep this test's node apart from any other on the host; and
/// no disk eviction thresholds, so a nearly full disk on the test machine
/// does not evict the test's pods (`agent_eviction.rs` tests eviction).
const NODE_FLAGS: [&str; 10] = [
    "--cluster-cidr",
    "10.78.0.0/16",
    "--service-cidr",
    "10.110.0.0/16",
    "--bridge-name",
    "rdtagent0",
    "--agent-port",
    "0",
    "--eviction-hard",
    "memory.available<100Mi",
];

impl Cluster {
    fn start() -> Cluster {
        support::build_test_images();
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut cluster = Cluster {
            dir: tempfile::Builder::new()
                .prefix("rudder-agent-")
                .tempdir()
                .unwrap(),
            addr,
            server: None,
        };
        cluster.launch();
        cluster
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rudder"))
            .arg("server")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(NODE_FLAGS)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.server = Some(child);
        eventually(self, "the node to be Ready", 60, |c| {
            c.kubectl(&["get", "nodes", "--no-headers"])
                .1
                .contains(" Ready ")
        });
    }

    /// SIGTERM, as a service manager stops it.
    fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        support::kubectl(&self.dir.path().join("kubeconfig.yaml"), args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.kubectl(args);
        assert!(
            ok,
            "kubectl {args:?}: {out}\nserver log tail: {}",
            self.log_tail()
        );
        out
    }

    fn apply(&self, yaml: &str) {
        support::kubectl_apply(&self.dir.path().join("kubeconfig.yaml"), yaml);
    }

    fn jsonpath(&self, pod: &str, path: &str) -> String {
        self.kubectl(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
            .1
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
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
            "timed out waiting for {what}\nserver log tail: {}",
            cluster.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn http_get(ip: &str, port: u16, path: &str) -> Option<String> {
    let addr: SocketAddr = format!("{ip}:{port}").parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

#[test]
fn a_single_node_cluster_runs_pods_for_real() {
    let mut cluster = Cluster::start();
    let node = cluster.ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    assert!(cluster
        .ok(&["-n", "kube-node-lease", "get", "lease", &node])
        .contains(&node));

    cluster.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
    ]);
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  initContainers:
  - name: fill
    image: {BUSYBOX}
    command: ["sh", "-c", "echo from-init > /data/index.html"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  containers:
  - name: httpd
    image: {WEB}
    command: ["httpd", "-f", "-p", "8080", "-h", "/data"]
    env:
    - name: MODE
      valueFrom: {{configMapKeyRef: {{name: settings, key: mode}}}}
    volumeMounts:
    - {{name: data, mountPath: /data}}
    - {{name: cfg, mountPath: /etc/cfg}}
    readinessProbe:
      httpGet: {{path: /index.html, port: 8080}}
      periodSeconds: 1
  volumes:
  - {{name: data, emptyDir: {{}}}}
  - {{name: cfg, configMap: {{name: settings}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crash}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "echo attempt; exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {{name: done}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "exit 7"]
"#
    ));
    eventually(&cluster, "web to be Ready", 90, |c| {
        c.jsonpath("web", "{.status.conditions[?(@.type==\"Ready\")].status}") == "True"
    });
    assert_eq!(
        cluster.jsonpath(
            "web",
            "{.status.initContainerStatuses[0].state.terminated.reason}"
        ),
        "Completed"
    );
    let ip = cluster.jsonpath("web", "{.status.podIP}");
    assert!(ip.starts_with("10.78."), "pod IP {ip}");
    assert_eq!(
        http_get(&ip, 8080, "/index.html").as_deref(),
        Some("from-init\n")
    );
    assert_eq!(
        cluster
            .ok(&["exec", "web", "-c", "httpd", "--", "hostname"])
            .trim(),
        "web"
    );
    assert_eq!(
        cluster.ok(&[
            "exec",
            "web",
            "-c",
            "httpd",
            "--",
            "sh",
            "-c",
            "echo $MODE; cat /etc/cfg/mode"
        ]),
        "fast\nfast"
    );
    let (ok, out) = cluster.kubectl(&["exec", "web", "-c", "httpd", "--", "sh", "-c", "exit 4"]);
    assert!(!ok && out.contains("exit code 4"), "{out}");

    eventually(&cluster, "crash to restart", 60, |c| {
        c.jsonpath("crash", "{.status.containerStatuses[0].restartCount}")
            .parse::<u32>()
            .unwrap_or(0)
            >= 1
    });
    assert!(cluster
        .ok(&["logs", "crash", "--previous"])
        .contains("attempt"));
    eventually(&cluster, "done to fail", 60, |c| {
        c.jsonpath("done", "{.status.phase}") == "Failed"
    });
    assert_eq!(
        cluster.jsonpath(
            "done",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "7"
    );

    // A static pod from the manifest directory, mirrored into the API.
    let manifests = cluster.dir.path().join("agent").join("pod-manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("static-web.yaml"),
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: static-web, labels: {{tier: static}}}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sleep", "3600"]
"#
        ),
    )
    .unwrap();
    let mirror = format!("static-web-{}", node.to_lowercase());
    eventually(&cluster, "the mirror pod to run", 60, |c| {
        c.jsonpath(&mirror, "{.status.phase}") == "Running"
    });
    assert_eq!(
        cluster.jsonpath(&mirror, "{.metadata.ownerReferences[0].kind}"),
        "Node"
    );
    let hash = cluster.jsonpath(
        &mirror,
        "{.metadata.annotations.kubernetes\\.io/config\\.mirror}",
    );
    assert_eq!(hash.len(), 32, "{hash}");
    let static_container = cluster.jsonpath(&mirror, "{.status.containerStatuses[0].containerID}");
    assert!(
        static_container.starts_with("rudder://"),
        "{static_container}"
    );
    // Deleting the mirror does not stop the static pod: the mirror returns.
    let first_uid = cluster.jsonpath(&mirror, "{.metadata.uid}");
    cluster.ok(&["delete", "pod", &mirror, "--wait=false"]);
    eventually(
        &cluster,
        "a new mirror pod with the same container",
        60,
        |c| {
            let uid = c.jsonpath(&mirror, "{.metadata.uid}");
            !uid.is_empty()
                && uid != first_uid
                && c.jsonpath(&mirror, "{.status.containerStatuses[0].containerID}")
                    == static_container
        },
    );

    // The agent restarts; the containers do not.
    let container_id = cluster.jsonpath("web", "{.status.containerStatuses[0].containerID}");
    cluster.stop();
    assert!(
        http_get(&ip, 8080, "/index.html").is_some(),
        "the pod serves while the agent is down"
    );
    cluster.launch();
    eventually(&cluster, "web Ready again", 60, |c| {
        c.jsonpath("web", "{.status.conditions[?(@.type==\"Ready\")].status}") == "True"
    });
    assert_eq!(
        cluster.jsonpath("web", "{.status.containerStatuses[0].containerID}"),
        container_id
    );
    assert_eq!(
        cluster.jsonpath("web", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );

    assert_eq!(
        cluster.jsonpath(&mirror, "{.status.containerStatuses[0].containerID}"),
        static_container,
        "the static pod survives the agent's restart"
    );
    // Removing the manifest stops the static pod and deletes its mirror.
    std::fs::remove_file(manifests.join("static-web.yaml")).unwrap();
    eventually(&cluster, "the mirror pod to go", 60, |c| {
        c.kubectl(&["get", "pod", &mirror]).1.contains("NotFound")
    });

    // Deleting stops the containers and removes the pod object.
    cluster.ok(&["delete", "pod", "web", "crash", "done", "--timeout=60s"]);
    assert!(http_get(&ip, 8080, "/index.html").is_none());

    // reset: nothing of the node remains.
    let data_dir = cluster.dir.path().to_path_buf();
    cluster.stop();
    let output = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .arg("reset")
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!data_dir.join("agent").exists());
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("rdtagent0"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&data_dir.to_string_lossy().to_string()));
}
