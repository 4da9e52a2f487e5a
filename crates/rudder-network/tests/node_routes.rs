//! Routes between nodes on the real kernel (needs root, `ip`, `bridge`,
//! `ping` or busybox): two "nodes" are network namespaces joined by a veth
//! pair, each holding its pod CIDR's gateway on an empty bridge (as the pod bridge). With either
//! backend, each node's pod gateway reaches the other's once both synced,
//! and not after the peer is dropped.
//!
//! The library programs the namespace it runs in, so the per-node steps run
//! in this test binary re-executed under `ip netns exec` (the ignored
//! `node_step` test, told what to do through the environment).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use rudder_network::routes::{self, NodeRoutes, PeerNode, PodNetworkBackend};

const STEP_ENV: &str = "RDT_ROUTES_STEP";

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn ok(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Nodes {
    names: [String; 2],
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 1 + i as u8)
}

fn pod_cidr(i: usize) -> String {
    format!("10.77.{}.0/24", 1 + i)
}

fn gateway(i: usize) -> String {
    format!("10.77.{}.1", 1 + i)
}

/// Runs one step of `node` (its namespace) in a child of this binary.
fn step(nodes: &Nodes, node: usize, backend: &str, what: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &nodes.names[node]])
        .arg(exe)
        .args(["--exact", "node_step", "--ignored", "--nocapture"])
        .env(STEP_ENV, format!("{node} {backend} {what}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "step {what} on node {node}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pings(nodes: &Nodes, from: usize, to: usize) -> bool {
    let has_ping = Command::new("ping").arg("-V").output().is_ok();
    let ping = if has_ping {
        vec!["ping"]
    } else {
        vec!["busybox", "ping"]
    };
    let source = gateway(from);
    let target = gateway(to);
    let mut args = vec!["ip", "netns", "exec", &nodes.names[from]];
    args.extend(ping);
    args.extend(["-c", "1", "-W", "2", "-I", &source, &target]);
    (0..3).any(|_| sh(&args).status.success())
}

#[test]
#[ignore = "a step of pod_cidrs_route_between_nodes, run inside a node's namespace"]
fn node_step() {
    let Ok(spec) = std::env::var(STEP_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let me: usize = parts[0].parse().unwrap();
    let backend: PodNetworkBackend = parts[1].parse().unwrap();
    let node = NodeRoutes {
        backend,
        node_ip: node_ip(me),
        pod_cidr: pod_cidr(me).parse().unwrap(),
    };
    let peers: Vec<PeerNode> = (0..2)
        .map(|i| PeerNode {
            ip: node_ip(i),
            pod_cidr: pod_cidr(i).parse().unwrap(),
        })
        .collect();
    match parts[2] {
        "sync" => {
            node.ensure().unwrap();
            // Twice: a sync is idempotent.
            node.sync(&peers).unwrap();
            node.sync(&peers).unwrap();
        }
        "alone" => node.sync(&peers[me..=me]).unwrap(),
        "reset" => routes::remove_all().unwrap(),
        other => panic!("unknown step {other}"),
    }
}

fn run_backend(backend: &str) {
    let tag = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 100_000;
    let nodes = Nodes {
        names: [format!("rdtrt-a{tag}"), format!("rdtrt-b{tag}")],
    };
    for ns in &nodes.names {
        ok(&["ip", "netns", "add", ns]);
    }
    let (a, b) = (&nodes.names[0], &nodes.names[1]);
    ok(&[
        "ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b,
    ]);
    for (i, ns) in nodes.names.iter().enumerate() {
        let addr = format!("{}/24", node_ip(i));
        ok(&["ip", "-n", ns, "addr", "add", &addr, "dev", "eth0"]);
        ok(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        ok(&["ip", "-n", ns, "link", "add", "pods", "type", "bridge"]);
        let gw = format!("{}/24", gateway(i));
        ok(&["ip", "-n", ns, "addr", "add", &gw, "dev", "pods"]);
        ok(&["ip", "-n", ns, "link", "set", "pods", "up"]);
    }
    assert!(!pings(&nodes, 0, 1), "no route yet");
    step(&nodes, 0, backend, "sync");
    step(&nodes, 1, backend, "sync");
    assert!(
        pings(&nodes, 0, 1),
        "{backend}: node a's pods reach node b's"
    );
    assert!(pings(&nodes, 1, 0), "{backend}: and back");
    if backend == "vxlan" {
        let link = String::from_utf8(
            sh(&["ip", "-n", a, "-d", "link", "show", routes::VXLAN_DEVICE]).stdout,
        )
        .unwrap();
        assert!(link.contains("mtu 1450"), "{link}");
        assert!(link.contains("vxlan id 1"), "{link}");
    }
    // Node b leaves a's view: its routes go.
    step(&nodes, 0, backend, "alone");
    assert!(
        !pings(&nodes, 0, 1),
        "{backend}: routes of a gone node are removed"
    );
    step(&nodes, 1, backend, "reset");
    let left = String::from_utf8(
        sh(&["ip", "-n", b, "route", "show", "proto", routes::ROUTE_PROTO]).stdout,
    )
    .unwrap();
    assert!(left.trim().is_empty(), "reset leaves routes: {left}");
    assert!(
        !sh(&["ip", "-n", b, "link", "show", routes::VXLAN_DEVICE])
            .status
            .success(),
        "reset removes the vxlan device"
    );
}

#[test]
fn pod_cidrs_route_between_nodes_with_host_gw() {
    run_backend("host-gw");
}

#[test]
fn pod_cidrs_route_between_nodes_with_vxlan() {
    run_backend("vxlan");
}
