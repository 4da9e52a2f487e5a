//! NetworkPolicy on the real kernel (needs root, `ip`, `nft`, busybox and
//! curl):
//! a "node" network namespace with a bridge, three "pods" in namespaces of
//! their own on it, busybox httpd in one of them, and real TCP connections
//! before and after the rendered table is installed in the node.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};

use rudder_apimachinery::selector::LabelSelector;
use rudder_network::policy::{
    render, ClusterState, NetworkPolicy, Peer, PolicyNamespace, PolicyPod, PolicyTable, PolicyType,
    PortMatch, PortRef, Protocol, Rule,
};

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn ok(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, args: &[&str]) -> Vec<String> {
    ["ip", "netns", "exec", ns]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect()
}

/// The namespaces and servers of one test, removed on drop.
struct Lab {
    prefix: String,
    subnet: u8,
    servers: Vec<Child>,
    dir: tempfile::TempDir,
}

const PODS: [(&str, u8); 3] = [("web", 10), ("front", 20), ("other", 30)];

impl Lab {
    fn new(test: u8) -> Lab {
        let id = std::process::id() % 0xffff;
        // 10.83.0.0/16 is this test's range; the third octet keeps two
        // concurrent runs (and the tests of one run) apart.
        let subnet = ((id as u8) % 100) * 2 + test;
        let lab = Lab {
            prefix: format!("rdting-{id:x}-{test}"),
            subnet,
            servers: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let node = lab.ns("n");
        ok(&["ip", "netns", "add", &node]);
        let gateway = format!("{}/24", lab.ip(1));
        for cmd in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "link", "add", "br0", "type", "bridge"],
            vec!["ip", "addr", "add", &gateway, "dev", "br0"],
            vec!["ip", "link", "set", "br0", "up"],
            // frames between two ports of the bridge reach the IPv4
            // forward hook only through br_netfilter
            vec!["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
        ] {
            ok(&in_ns(&node, &cmd)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>());
        }
        for (name, host) in PODS {
            let ns = lab.ns(name);
            ok(&["ip", "netns", "add", &ns]);
            let veth = format!("v{name}");
            let addr = format!("{}/24", lab.ip(host));
            let gw = lab.ip(1).to_string();
            ok(&[
                "ip", "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ok(&[
                "ip", "-n", &node, "link", "set", &veth, "master", "br0", "up",
            ]);
            ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            ok(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            ok(&["ip", "-n", &ns, "route", "add", "default", "via", &gw]);
        }
        lab
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 83, self.subnet, host)
    }

    /// busybox httpd in `pod` on `port`, answering `<pod><port>`.
    fn serve(&mut self, pod: &str, port: u16) {
        let root = self.dir.path().join(format!("{pod}{port}"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("index.html"), format!("{pod}{port}")).unwrap();
        let ns = self.ns(pod);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "busybox", "httpd", "-f", "-p"])
            .arg(port.to_string())
            .arg("-h")
            .arg(&root)
            .stdin(Stdio::null())
            .spawn()
            .expect("busybox httpd");
        self.servers.push(child);
        // Ready once it answers from the node (never filtered).
        assert!(
            (0..50).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                self.fetch_from(&self.ns("n"), pod, port, 1).is_some()
            }),
            "httpd in {pod} on {port} never answered"
        );
    }

    fn fetch_from(&self, from_ns: &str, pod: &str, port: u16, timeout: u32) -> Option<String> {
        let host = PODS.iter().find(|(n, _)| *n == pod).unwrap().1;
        let url = format!("http://{}:{port}/", self.ip(host));
        let t = timeout.to_string();
        let args = in_ns(from_ns, &["curl", "-s", "--max-time", &t, &url]);
        let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether `from` (a pod) gets `to`'s page on `port`: a few tries for
    /// "yes" (the first packet may wait for ARP); a 2 s timeout each.
    fn reaches(&self, from: &str, to: &str, port: u16) -> bool {
        (0..3).any(|_| {
            self.fetch_from(&self.ns(from), to, port, 2).as_deref()
                == Some(format!("{to}{port}").as_str())
        })
    }

    fn node_reaches(&self, to: &str, port: u16) -> bool {
        self.fetch_from(&self.ns("n"), to, port, 2).as_deref()
            == Some(format!("{to}{port}").as_str())
    }

    fn state(&self, policies: Vec<NetworkPolicy>) -> ClusterState {
        let labels = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        ClusterState {
            pods: vec![
                pod("web", self.ip(10), labels("app", "web")),
                pod("front", self.ip(20), labels("role", "frontend")),
                pod("other", self.ip(30), labels("role", "other")),
            ],
            namespaces: vec![PolicyNamespace {
                name: "lab".into(),
                labels: labels("kubernetes.io/metadata.name", "lab"),
            }],
            policies,
        }
    }

    fn table(&self) -> PolicyTable {
        PolicyTable {
            name: format!("{}-policy", self.prefix),
            node_ips: vec![self.ip(1)],
        }
    }

    fn install(&self, policies: Vec<NetworkPolicy>) {
        let script = render(&self.table(), &self.state(policies));
        let args = in_ns(&self.ns("n"), &["nft", "-f", "-"]);
        let mut child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in ["web", "front", "other", "n"] {
            let _ = run(&["ip", "netns", "del", &self.ns(name)]);
        }
    }
}

fn pod(name: &str, ip: Ipv4Addr, labels: BTreeMap<String, String>) -> PolicyPod {
    PolicyPod {
        namespace: "lab".into(),
        name: name.into(),
        ip,
        labels,
        ports: Vec::new(),
        local: true,
    }
}

fn select(key: &str, value: &str) -> LabelSelector {
    LabelSelector::from_match_labels(&BTreeMap::from([(key.to_string(), value.to_string())]))
        .unwrap()
}

fn tcp(port: u16) -> PortMatch {
    PortMatch {
        protocol: Protocol::Tcp,
        port: Some(PortRef::Number(port)),
        end_port: None,
    }
}

fn default_deny() -> NetworkPolicy {
    NetworkPolicy {
        namespace: "lab".into(),
        name: "default-deny".into(),
        pod_selector: LabelSelector::everything(),
        policy_types: vec![PolicyType::Ingress],
        ingress: vec![],
        egress: vec![],
    }
}

fn allow_frontend_to_web() -> NetworkPolicy {
    NetworkPolicy {
        namespace: "lab".into(),
        name: "web-from-frontend".into(),
        pod_selector: select("app", "web"),
        policy_types: vec![PolicyType::Ingress],
        ingress: vec![Rule {
            peers: Some(vec![Peer::Pods {
                namespace_selector: None,
                pod_selector: select("role", "frontend"),
            }]),
            ports: vec![tcp(80)],
        }],
        egress: vec![],
    }
}

#[test]
fn default_deny_and_allow_from_label() {
    let mut lab = Lab::new(0);
    lab.serve("web", 80);
    lab.serve("web", 8080);
    assert!(lab.reaches("front", "web", 80), "open before any policy");
    assert!(lab.reaches("other", "web", 80), "open before any policy");

    lab.install(vec![default_deny(), allow_frontend_to_web()]);
    assert!(lab.reaches("front", "web", 80), "the frontend is allowed");
    assert!(!lab.reaches("other", "web", 80), "another pod is denied");
    assert!(
        !lab.reaches("front", "web", 8080),
        "the frontend only on port 80"
    );
    assert!(
        lab.node_reaches("web", 80) && lab.node_reaches("web", 8080),
        "the node (kubelet probes) always gets in"
    );

    // Deleting the allow policy leaves the default deny alone.
    lab.install(vec![default_deny()]);
    assert!(!lab.reaches("front", "web", 80));

    // No policy: open again, in one replacement of the table.
    lab.install(vec![]);
    assert!(lab.reaches("other", "web", 80));
}

#[test]
fn egress_allows_only_what_a_rule_names() {
    let mut lab = Lab::new(1);
    lab.serve("web", 80);
    lab.serve("web", 8080);
    let front_egress = NetworkPolicy {
        namespace: "lab".into(),
        name: "front-egress".into(),
        pod_selector: select("role", "frontend"),
        policy_types: vec![PolicyType::Egress],
        ingress: vec![],
        egress: vec![Rule {
            peers: Some(vec![Peer::Pods {
                namespace_selector: None,
                pod_selector: select("app", "web"),
            }]),
            ports: vec![tcp(8080)],
        }],
    };
    lab.install(vec![front_egress]);
    assert!(lab.reaches("front", "web", 8080));
    assert!(!lab.reaches("front", "web", 80));
    assert!(
        lab.reaches("other", "web", 80),
        "other pods are not selected"
    );
}
