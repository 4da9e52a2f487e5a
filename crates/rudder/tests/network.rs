//! A control plane and two `rudder agent` nodes, each in a network
//! namespace of its own on one bridge (the layout of acceptance scenario
//! 06, with addresses of its own), over the VXLAN backend: pods reach each
//! other across nodes without NAT, a ClusterIP Service answers by its short
//! name through cluster DNS and balances over both nodes' pods, and a
//! NodePort answers on both nodes. Root, `ip`, nftables and the test
//! images (`shared/acceptance/images/build.sh`) are needed; CI has them.
//!
//! `wget` runs under busybox `timeout` instead of with `-T`: Debian's
//! busybox-static 1.35 is built without FEATURE_WGET_TIMEOUT and its wget
//! crashes on `-T`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BRIDGE: &str = "rdtnet0";
const HOST_IP: &str = "10.76.0.1";
const CLUSTER_CIDR: &str = "10.75.0.0/16";
const SERVICE_CIDR: &str = "10.74.0.0/16";

fn node_ns(i: usize) -> String {
    format!("rdtnet-n{i}")
}

fn node_ip(i: usize) -> String {
    format!("10.76.0.1{i}")
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The bridge and the two node namespaces; removed on drop.
struct Hosts;

impl Hosts {
    fn create() -> Hosts {
        Hosts::remove();
        let must = |args: &[&str]| {
            let out = sh(args);
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        must(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
        must(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", BRIDGE]);
        must(&["ip", "link", "set", BRIDGE, "up"]);
        for i in 1..=2 {
            let ns = node_ns(i);
            let veth = format!("rdtnet-v{i}");
            must(&["ip", "netns", "add", &ns]);
            must(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            must(&["ip", "link", "set", &veth, "master", BRIDGE, "up"]);
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", node_ip(i)),
                "dev",
                "eth0",
            ]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            must(&["ip", "-n", &ns, "route", "add", "default", "via", HOST_IP]);
        }
        Hosts
    }

    fn remove() {
        for i in 1..=2 {
            let _ = sh(&["ip", "netns", "del", &node_ns(i)]);
            let _ = sh(&["ip", "link", "del", &format!("rdtnet-v{i}")]);
        }
        let _ = sh(&["ip", "link", "del", BRIDGE]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        Hosts::remove();
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    server: Child,
    agents: Vec<Child>,
    // Dropped last: the agents' resets need the namespaces.
    _hosts: Hosts,
}

impl Cluster {
    fn start() -> Cluster {
        support::build_test_images();
        let hosts = Hosts::create();
        let dir = tempfile::Builder::new()
            .prefix("rudder-net-")
            .tempdir()
            .unwrap();
        let port = std::net::TcpListener::bind(format!("{HOST_IP}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Command::new(env!("CARGO_BIN_EXE_rudder"))
            .args(["server", "--disable-agent", "--listen"])
            .arg(format!("{HOST_IP}:{port}"))
            .arg("--data-dir")
            .arg(dir.path().join("server"))
            .args([
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--service-cidr",
                SERVICE_CIDR,
            ])
            .stdout(Stdio::null())
            .stderr(log_file(dir.path(), "server.log"))
            .spawn()
            .unwrap();
        let mut cluster = Cluster {
            dir,
            server,
            agents: Vec::new(),
            _hosts: hosts,
        };
        cluster.eventually("the API server", 60, |c| {
            c.dir.path().join("server/kubeconfig.yaml").exists()
        });
        for i in 1..=2 {
            let agent_dir = cluster.agent_dir(i);
            // The test images come as archives: nodes in their own network
            // namespaces do not see the registry on the host's loopback.
            std::fs::create_dir_all(agent_dir.join("images")).unwrap();
            for image in ["busybox-1.35.tar", "web-1.0.tar"] {
                std::fs::copy(
                    Path::new("/tmp/rudder-images").join(image),
                    agent_dir.join("images").join(image),
                )
                .unwrap();
            }
            // Nodes join with the server's token (TLS bootstrapping).
            let token =
                std::fs::read_to_string(cluster.dir.path().join("server/node-token")).unwrap();
            let child = cluster.spawn_agent(
                i,
                &[
                    "--server",
                    &format!("https://{HOST_IP}:{port}"),
                    "--token",
                    token.trim(),
                ],
            );
            cluster.agents.push(child);
        }
        cluster.eventually("two Ready nodes", 120, |c| {
            c.kubectl(&["get", "nodes", "--no-headers"])
                .1
                .matches(" Ready ")
                .count()
                == 2
        });
        cluster
    }

    /// Starts node `i`'s agent in its network namespace, reaching the API
    /// server with `credentials`.
    fn spawn_agent(&self, i: usize, credentials: &[&str]) -> Child {
        let agent_dir = self.agent_dir(i);
        Command::new("ip")
            .args(["netns", "exec", &node_ns(i)])
            .arg(env!("CARGO_BIN_EXE_rudder"))
            .arg("agent")
            .args(credentials)
            .arg("--data-dir")
            .arg(&agent_dir)
            .args(["--node-name", &node_ns(i), "--node-ip", &node_ip(i)])
            .args([
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--service-cidr",
                SERVICE_CIDR,
            ])
            .args([
                "--pod-network",
                "vxlan",
                "--eviction-hard",
                "memory.available<100Mi",
            ])
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join(format!("agent-{i}.log")))
                    .unwrap(),
            )
            .spawn()
            .unwrap()
    }

    /// The HTTP status node `i`'s agent API answers an anonymous HTTPS
    /// request with ("000" while nothing answers over TLS).
    fn agent_api_status(&self, i: usize) -> String {
        let out = Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "3",
            ])
            .arg(format!("https://{}:10250/pods", node_ip(i)))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn agent_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{i}"))
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        support::kubectl(&self.dir.path().join("server/kubeconfig.yaml"), args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.kubectl(args);
        assert!(ok, "kubectl {args:?}: {out}\n{}", self.logs());
        out
    }

    fn apply(&self, yaml: &str) {
        support::kubectl_apply(&self.dir.path().join("server/kubeconfig.yaml"), yaml);
    }

    /// What `sh -c script` prints in the client pod (stdout only).
    fn in_client(&self, script: &str) -> String {
        let output = Command::new("kubectl")
            .args(["exec", "client", "--", "sh", "-c", script])
            .env("KUBECONFIG", self.dir.path().join("server/kubeconfig.yaml"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["server.log", "agent-1.log", "agent-2.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {name}\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn eventually(&self, what: &str, seconds: u64, mut check: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        for i in 1..=2 {
            let _ = Command::new("ip")
                .args(["netns", "exec", &node_ns(i)])
                .arg(env!("CARGO_BIN_EXE_rudder"))
                .arg("reset")
                .arg("--data-dir")
                .arg(self.agent_dir(i))
                .output();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(dir.join(name)).unwrap())
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      containers:
      - name: web
        image: 127.0.0.1:5000/web:1.0
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "hostname > /www/index.html; exec httpd -f -p 80 -h /www"]
        ports: [{containerPort: 80, name: http}]
        readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - {name: c, image: 127.0.0.1:5000/busybox:1.35, imagePullPolicy: IfNotPresent, command: ["sleep", "3600"]}
"#;

#[test]
fn two_nodes_reach_each_others_pods_services_and_names() {
    let mut cluster = Cluster::start();
    // A joined agent's API is HTTPS and refuses anonymous callers, and so
    // it stays when the agent restarts with the kubeconfig it joined with
    // (no token): that kubeconfig is the node's own, so the agent keeps
    // (or renews) its serving certificate.
    assert_eq!(cluster.agent_api_status(2), "401", "{}", cluster.logs());
    let mut joined = cluster.agents.remove(1);
    let _ = Command::new("kill")
        .args(["-TERM", &joined.id().to_string()])
        .status();
    let _ = joined.wait();
    let kubeconfig = cluster.agent_dir(2).join("kubelet.kubeconfig");
    let restarted = cluster.spawn_agent(2, &["--kubeconfig", kubeconfig.to_str().unwrap()]);
    cluster.agents.push(restarted);
    cluster.eventually("the restarted agent's API answers over HTTPS", 60, |c| {
        c.agent_api_status(2) != "000"
    });
    assert_eq!(cluster.agent_api_status(2), "401", "{}", cluster.logs());
    let cidrs = cluster.ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.spec.podCIDR}{\" \"}{end}",
    ]);
    let cidrs: std::collections::BTreeSet<&str> = cidrs.split_whitespace().collect();
    assert_eq!(
        cidrs.len(),
        2,
        "each node has a pod CIDR of its own: {cidrs:?}"
    );

    cluster.apply(WORKLOAD);
    cluster.eventually("both web pods Ready and the client Running", 180, |c| {
        let ready = c
            .kubectl(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\" \"}{end}",
            ])
            .1;
        let client = c
            .kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"])
            .1;
        ready.matches("True").count() == 2 && client == "Running"
    });
    let placement = cluster.ok(&[
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName}={.status.podIP}{\"\\n\"}{end}",
    ]);
    let pods: Vec<(String, String, String)> = placement
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('=');
            Some((
                parts.next()?.to_string(),
                parts.next()?.to_string(),
                parts.next()?.to_string(),
            ))
        })
        .collect();
    let client_node = pods.iter().find(|p| p.0 == "client").unwrap().1.clone();
    let web_nodes: std::collections::BTreeSet<&str> = pods
        .iter()
        .filter(|p| p.0.starts_with("web-"))
        .map(|p| p.1.as_str())
        .collect();
    assert_eq!(web_nodes.len(), 2, "web spreads over both nodes: {pods:?}");
    let remote = pods
        .iter()
        .find(|p| p.0.starts_with("web-") && p.1 != client_node)
        .unwrap();

    // Pod to pod across nodes, no NAT in between: the remote pod answers
    // with its hostname.
    let got = cluster.in_client(&format!("timeout 5 wget -qO- http://{}/", remote.2));
    assert_eq!(got, remote.0, "pod to pod across nodes\n{}", cluster.logs());

    // The Service by its short name (search path, cluster DNS), on its port
    // 8080 to the named target port, balanced over both pods.
    let cluster_ip = cluster.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let lookup = cluster.in_client("nslookup web.default.svc.cluster.local");
    assert!(lookup.contains(&cluster_ip), "{lookup}\n{}", cluster.logs());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let body = cluster.in_client("timeout 5 wget -qO- http://web:8080/");
        if body.starts_with("web-") {
            seen.insert(body);
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "both backends answer through the ClusterIP: {seen:?}"
    );

    // NodePort on both nodes' addresses, from outside the cluster.
    let node_port = cluster.ok(&[
        "get",
        "svc",
        "web-np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    for i in 1..=2 {
        let addr = format!("{}:{node_port}", node_ip(i));
        let body = http_get(&addr, "/").unwrap_or_default();
        assert!(body.starts_with("web-"), "NodePort on {addr}: {body:?}");
    }
}
