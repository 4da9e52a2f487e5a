//! The Service proxy on the real kernel (needs root, `ip`, `nft`): each
//! test builds its own world of named network namespaces (`rdtpx-…`): a
//! "node" with a bridge for its pods and the proxy's table, "pods" on the
//! bridge running small TCP servers that answer with their name and the
//! client's address, and an "outside" host on a link of the node. The
//! proxy is driven from a thread that entered the node's namespace, and
//! every check is a real TCP connection from a thread in the client's
//! namespace. Addresses: pods 10.81.1.0/24 (gateway .1), outside link
//! 10.81.0.0/24 (node .1, outside .2), cluster IPs 10.81.100.0/24.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use rudder_network::proxy::{
    self, Endpoint, LocalDetector, Protocol, Proxier, ProxyConfig, ServicePort, ServicePortName,
    ServiceState,
};

const TABLE: &str = "rdtpx-proxy";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 1);
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 81, 1, 1);

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread inside the named network namespace. Processes it
/// starts (`nft`) run there too: a child inherits its thread's namespace.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .unwrap()
    })
}

fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
}

/// Connects from `ns` to `to` and returns what the server says (its name
/// and the client address it saw), or the error.
fn get(ns: &str, to: SocketAddr) -> std::io::Result<String> {
    in_ns(ns, || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.trim().to_string())
    })
}

/// The server names seen over `n` connections.
fn names(ns: &str, to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let answer = get(ns, to).unwrap_or_else(|e| panic!("{ns} -> {to}: {e}"));
        let name = answer.split_whitespace().next().unwrap_or("").to_string();
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// A TCP server in a namespace: answers every connection with
/// `NAME CLIENT-IP` and closes it.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, name: &str, ports: &[u16]) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, name, ports) = (ns.to_string(), name.to_string(), ports.to_vec());
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let listeners: Vec<TcpListener> = ports
                .iter()
                .map(|p| {
                    let l = TcpListener::bind(("0.0.0.0", *p)).unwrap();
                    l.set_nonblocking(true).unwrap();
                    l
                })
                .collect();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::SeqCst) {
                let mut idle = true;
                for l in &listeners {
                    match l.accept() {
                        Ok((mut s, peer)) => {
                            idle = false;
                            let _ = s.set_nonblocking(false);
                            let _ = writeln!(s, "{name} {}", peer.ip());
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => panic!("accept: {e}"),
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        ready_rx.recv().unwrap();
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

static WORLDS: AtomicUsize = AtomicUsize::new(0);

/// A node with pods and an outside host; everything goes when dropped.
struct World {
    node: String,
    outside: String,
    pods: Vec<String>,
    namespaces: Vec<String>,
    servers: Vec<Server>,
}

impl World {
    /// `pods` pods (10.81.1.10, .11, …), each serving on ports 80 and 8080.
    fn new(pods: usize) -> World {
        let id = format!(
            "rdtpx-{}-{}",
            std::process::id(),
            WORLDS.fetch_add(1, Ordering::SeqCst)
        );
        let mut world = World {
            node: format!("{id}-node"),
            outside: format!("{id}-out"),
            pods: Vec::new(),
            namespaces: Vec::new(),
            servers: Vec::new(),
        };
        let node = world.node.clone();
        let outside = world.outside.clone();
        for ns in [&node, &outside] {
            sh(&["ip", "netns", "add", ns]);
            world.namespaces.push(ns.clone());
        }
        let n = |args: &[&str]| {
            let mut all = vec!["ip", "-n", node.as_str()];
            all.extend(args);
            sh(&all);
        };
        n(&["link", "set", "lo", "up"]);
        n(&["link", "add", "rdtpx0", "type", "bridge"]);
        n(&["addr", "add", &format!("{GATEWAY}/24"), "dev", "rdtpx0"]);
        n(&["link", "set", "rdtpx0", "up"]);
        n(&[
            "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", &outside,
        ]);
        n(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "ext0"]);
        n(&["link", "set", "ext0", "up"]);
        // The node's own connections to cluster IPs need a route before
        // the output hook DNATs them, as any real node has.
        n(&["route", "add", "default", "via", &OUTSIDE_IP.to_string()]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let o = |args: &[&str]| {
            let mut all = vec!["ip", "-n", outside.as_str()];
            all.extend(args);
            sh(&all);
        };
        o(&["link", "set", "lo", "up"]);
        o(&["addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "eth0"]);
        o(&["link", "set", "eth0", "up"]);
        o(&["route", "add", "default", "via", &NODE_IP.to_string()]);
        for i in 0..pods {
            world.add_pod(i);
        }
        world
    }

    fn pod_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 81, 1, 10 + i as u8)
    }

    fn add_pod(&mut self, i: usize) {
        let ns = format!("{}-pod{i}", self.node.trim_end_matches("-node"));
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        let veth = format!("vp{i}");
        sh(&[
            "ip", "-n", &self.node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        sh(&[
            "ip", "-n", &self.node, "link", "set", &veth, "master", "rdtpx0", "up",
        ]);
        // As the pod network sets it: with br_netfilter, a pod reaching
        // itself through a Service is DNATed while bridged, and the frame
        // goes back out of the port it came in by.
        sh(&[
            "ip",
            "-n",
            &self.node,
            "link",
            "set",
            &veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ]);
        let ip = format!("{}/24", World::pod_ip(i));
        sh(&["ip", "-n", &ns, "addr", "add", &ip, "dev", "eth0"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY.to_string(),
        ]);
        self.servers
            .push(Server::start(&ns, &format!("pod{i}"), &[80, 8080]));
        self.pods.push(ns);
    }

    fn proxier(&self) -> Proxier {
        let mut config =
            ProxyConfig::new(LocalDetector::ClusterCidr("10.81.1.0/24".parse().unwrap()));
        config.table = TABLE.to_string();
        Proxier::new(config).unwrap()
    }

    /// Syncs `services` in the node's namespace.
    fn sync(&self, proxier: &mut Proxier, services: &[ServiceState]) -> proxy::SyncReport {
        let wanted: BTreeMap<ServicePortName, ServiceState> = services
            .iter()
            .map(|s| (s.port.name.clone(), s.clone()))
            .collect();
        in_ns(&self.node, || proxier.sync(&wanted)).unwrap()
    }

    fn nft(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", self.node.as_str(), "nft"];
        all.extend(args);
        sh(&all)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.servers.clear();
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn service(name: &str, port_name: &str, last: u8, port: u16) -> ServicePort {
    ServicePort::cluster_ip(
        ServicePortName::new("rdtpx", name, port_name, Protocol::Tcp),
        Ipv4Addr::new(10, 81, 100, last),
        port,
    )
}

fn ep(pod: usize, port: u16, is_local: bool) -> Endpoint {
    Endpoint::ready(World::pod_ip(pod), port, is_local)
}

fn state(port: ServicePort, endpoints: Vec<Endpoint>) -> ServiceState {
    ServiceState { port, endpoints }
}

#[test]
fn cluster_ip_balances_over_both_endpoints_from_pods_the_node_and_itself() {
    let w = World::new(3);
    let mut p = w.proxier();
    let web = service("web", "", 10, 80);
    let report = w.sync(
        &mut p,
        &[state(web, vec![ep(0, 80, true), ep(1, 80, true)])],
    );
    assert!(report.full);
    assert_eq!(report.services, 1);
    let vip = addr(Ipv4Addr::new(10, 81, 100, 10), 80);
    // pod2 is a client on the same bridge: the replies of pod0 and pod1
    // come back over the bridge and must still be un-DNATed.
    let seen = names(&w.pods[2], vip, 40);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["pod0", "pod1"],
        "{seen:?}"
    );
    // The node itself (the output hook).
    let seen = names(&w.node, vip, 40);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["pod0", "pod1"],
        "{seen:?}"
    );
    // Hairpin: pod0 reaches the service and sometimes lands on itself,
    // which only works masqueraded (it sees the gateway as the client).
    let mut itself = None;
    for _ in 0..60 {
        let answer = get(&w.pods[0], vip).unwrap();
        if answer.starts_with("pod0 ") {
            itself = Some(answer);
            break;
        }
    }
    assert_eq!(itself.as_deref(), Some("pod0 10.81.1.1"));
    // Another pod keeps its own address (no masquerade for pods).
    let answer = get(&w.pods[2], vip).unwrap();
    assert!(answer.ends_with(" 10.81.1.12"), "{answer}");
    // A port the Service does not have is refused.
    let e = get(&w.pods[2], addr(Ipv4Addr::new(10, 81, 100, 10), 81)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn a_named_port_reaches_its_target_port() {
    let w = World::new(2);
    let mut p = w.proxier();
    // Service port 8088 named "http"; the EndpointSlice resolved the named
    // target port to 8080 on the pods.
    let web = service("web", "http", 11, 8088);
    w.sync(&mut p, &[state(web, vec![ep(0, 8080, true)])]);
    assert_eq!(
        get(&w.pods[1], addr(Ipv4Addr::new(10, 81, 100, 11), 8088)).unwrap(),
        "pod0 10.81.1.11"
    );
    let listing = w.nft(&["list", "chain", "ip", TABLE, "svc-rdtpx/web/tcp/http"]);
    assert!(
        listing.contains("goto ep-rdtpx/web/tcp/http__10.81.1.10/8080"),
        "{listing}"
    );
}

#[test]
fn node_ports_and_load_balancer_ips_answer_on_node_addresses() {
    let w = World::new(2);
    let mut p = w.proxier();
    let mut web = service("web", "", 12, 80);
    web.node_port = Some(30080);
    web.load_balancer_ips = vec![NODE_IP];
    web.port = 8088;
    w.sync(
        &mut p,
        &[state(web, vec![ep(0, 80, true), ep(1, 80, true)])],
    );
    // From outside, on the node's address: both endpoints, masqueraded.
    let seen = names(&w.outside, addr(NODE_IP, 30080), 40);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["pod0", "pod1"],
        "{seen:?}"
    );
    let answer = get(&w.outside, addr(NODE_IP, 30080)).unwrap();
    assert!(answer.ends_with(" 10.81.1.1"), "masqueraded: {answer}");
    // Every local address, from the node itself too; not 127.0.0.1.
    assert!(get(&w.node, addr(GATEWAY, 30080))
        .unwrap()
        .starts_with("pod"));
    assert!(get(&w.node, addr(NODE_IP, 30080))
        .unwrap()
        .starts_with("pod"));
    assert!(get(&w.pods[1], addr(GATEWAY, 30080))
        .unwrap()
        .starts_with("pod"));
    assert!(get(&w.node, addr(Ipv4Addr::LOCALHOST, 30080)).is_err());
    // The load-balancer IP (a node address) on the service port.
    assert!(get(&w.outside, addr(NODE_IP, 8088))
        .unwrap()
        .starts_with("pod"));
}

#[test]
fn external_traffic_policy_local_keeps_the_client_and_drops_without_a_local_endpoint() {
    let w = World::new(2);
    let mut p = w.proxier();
    let mut web = service("web-local", "", 13, 80);
    web.node_port = Some(30081);
    web.external_policy_local = true;
    // pod0 is on this node, pod1 counts as another node's.
    w.sync(
        &mut p,
        &[state(web.clone(), vec![ep(0, 80, true), ep(1, 80, false)])],
    );
    for _ in 0..20 {
        assert_eq!(
            get(&w.outside, addr(NODE_IP, 30081)).unwrap(),
            "pod0 10.81.0.2",
            "local endpoint only, client address kept"
        );
    }
    // Internal traffic still uses every endpoint.
    let seen = names(&w.pods[1], addr(Ipv4Addr::new(10, 81, 100, 13), 80), 40);
    assert_eq!(seen.len(), 2, "{seen:?}");

    // No local endpoint: outside traffic is dropped, pods still get
    // through to the cluster's endpoints.
    let report = w.sync(&mut p, &[state(web, vec![ep(1, 80, false)])]);
    assert!(!report.full);
    let e = get(&w.outside, addr(NODE_IP, 30081)).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "dropped, not refused: {e}"
    );
    assert_eq!(
        get(&w.pods[0], addr(GATEWAY, 30081)).unwrap(),
        "pod1 10.81.1.10"
    );
}

#[test]
fn internal_traffic_policy_local_uses_only_local_endpoints() {
    let w = World::new(3);
    let mut p = w.proxier();
    let mut dns = service("dns", "", 14, 80);
    dns.internal_policy_local = true;
    w.sync(
        &mut p,
        &[state(dns.clone(), vec![ep(0, 80, false), ep(1, 80, true)])],
    );
    let seen = names(&w.pods[2], addr(Ipv4Addr::new(10, 81, 100, 14), 80), 20);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["pod1"], "{seen:?}");
    // None local: dropped (not refused, there are endpoints elsewhere).
    w.sync(&mut p, &[state(dns, vec![ep(0, 80, false)])]);
    let e = get(&w.pods[2], addr(Ipv4Addr::new(10, 81, 100, 14), 80)).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "{e}"
    );
}

#[test]
fn session_affinity_sticks_to_one_endpoint() {
    let w = World::new(3);
    let mut p = w.proxier();
    let mut sticky = service("sticky", "", 15, 80);
    sticky.session_affinity = Some(600);
    w.sync(
        &mut p,
        &[state(sticky, vec![ep(0, 80, true), ep(1, 80, true)])],
    );
    let vip = addr(Ipv4Addr::new(10, 81, 100, 15), 80);
    let seen = names(&w.pods[2], vip, 20);
    assert_eq!(seen.len(), 1, "{seen:?}");
    // Another client may land elsewhere but sticks too.
    assert_eq!(names(&w.node, vip, 20).len(), 1);
    let listing = w.nft(&["list", "sets", "ip"]);
    assert!(
        listing.contains("10.81.1.12"),
        "the client is remembered: {listing}"
    );
}

#[test]
fn services_without_endpoints_are_refused() {
    let w = World::new(1);
    let mut p = w.proxier();
    let mut empty = service("empty", "", 16, 80);
    empty.node_port = Some(30082);
    w.sync(&mut p, &[state(empty, vec![])]);
    let vip = addr(Ipv4Addr::new(10, 81, 100, 16), 80);
    for (ns, to) in [
        (&w.pods[0], vip),
        (&w.node, vip),
        (&w.outside, addr(NODE_IP, 30082)),
        (&w.node, addr(NODE_IP, 30082)),
    ] {
        let e = get(ns, to).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{ns} -> {to}: {e}");
    }
}

#[test]
fn endpoint_changes_take_effect_through_partial_syncs() {
    let w = World::new(3);
    let mut p = w.proxier();
    let web = service("web", "", 17, 80);
    let other = service("other", "", 18, 80);
    let vip = addr(Ipv4Addr::new(10, 81, 100, 17), 80);
    let r = w.sync(
        &mut p,
        &[
            state(web.clone(), vec![ep(0, 80, true)]),
            state(other.clone(), vec![ep(2, 80, true)]),
        ],
    );
    assert!(r.full);
    assert_eq!(
        names(&w.pods[2], vip, 10).keys().collect::<Vec<_>>(),
        ["pod0"]
    );

    let r = w.sync(
        &mut p,
        &[
            state(web.clone(), vec![ep(1, 80, true)]),
            state(other.clone(), vec![ep(2, 80, true)]),
        ],
    );
    assert!(!r.full);
    assert_eq!(r.changed, 1, "only web is rewritten");
    assert_eq!(
        names(&w.pods[2], vip, 10).keys().collect::<Vec<_>>(),
        ["pod1"]
    );
    let chains = w.nft(&["list", "chains", "ip"]);
    assert!(
        !chains.contains("__10.81.1.10/80"),
        "the old endpoint's chain went: {chains}"
    );

    // A not-ready endpoint is not used; a terminating one is, while no
    // other serves.
    let terminating = Endpoint {
        ready: false,
        serving: true,
        terminating: true,
        ..ep(0, 80, true)
    };
    let not_ready = Endpoint {
        ready: false,
        serving: false,
        ..ep(1, 80, true)
    };
    w.sync(
        &mut p,
        &[
            state(web.clone(), vec![terminating, not_ready]),
            state(other.clone(), vec![ep(2, 80, true)]),
        ],
    );
    assert_eq!(
        names(&w.pods[2], vip, 10).keys().collect::<Vec<_>>(),
        ["pod0"]
    );

    // Nothing changed: nothing is run.
    let same = [
        state(web.clone(), vec![terminating, not_ready]),
        state(other.clone(), vec![ep(2, 80, true)]),
    ];
    let r = w.sync(&mut p, &same);
    assert_eq!((r.changed, r.commands), (0, 0));

    // The service goes: its address is no longer served at all.
    let r = w.sync(&mut p, &[state(other, vec![ep(2, 80, true)])]);
    assert!(!r.full);
    assert!(get(&w.pods[2], vip).is_err());
    let listing = w.nft(&["list", "table", "ip", TABLE]);
    assert!(!listing.contains("rdtpx/web/"), "{listing}");
}

#[test]
fn a_restarted_proxy_replaces_the_table_and_removal_leaves_nothing() {
    let w = World::new(2);
    let vip = addr(Ipv4Addr::new(10, 81, 100, 19), 80);
    let gone = service("gone", "", 20, 80);
    let web = service("web", "", 19, 80);
    {
        let mut p = w.proxier();
        w.sync(
            &mut p,
            &[
                state(web.clone(), vec![ep(0, 80, true)]),
                state(gone, vec![ep(1, 80, true)]),
            ],
        );
    }
    // A new agent: the old table serves until its first sync…
    assert!(get(&w.pods[1], vip).unwrap().starts_with("pod0"));
    let mut p = w.proxier();
    assert!(p.needs_full_sync());
    let r = w.sync(&mut p, &[state(web, vec![ep(1, 80, true)])]);
    assert!(r.full);
    // …which replaces it whole: the service that went meanwhile is gone.
    assert!(get(&w.pods[0], vip).unwrap().starts_with("pod1"));
    let listing = w.nft(&["list", "table", "ip", TABLE]);
    assert!(!listing.contains("rdtpx/gone/"), "{listing}");
    assert!(in_ns(&w.node, || p.table_exists()).unwrap());

    // Deleted behind the proxy's back: the next change cannot be written
    // as a partial sync, and the table is rebuilt whole at once.
    w.nft(&["delete", "table", "ip", TABLE]);
    let r = w.sync(
        &mut p,
        &[state(service("web", "", 19, 80), vec![ep(0, 80, true)])],
    );
    assert!(r.full, "{r:?}");
    assert!(get(&w.pods[1], vip).unwrap().starts_with("pod0"));

    assert!(in_ns(&w.node, || proxy::remove(TABLE)).unwrap());
    assert!(!w.nft(&["list", "tables"]).contains(TABLE));
    assert!(
        !in_ns(&w.node, || proxy::remove(TABLE)).unwrap(),
        "twice is fine"
    );
    assert!(get(&w.pods[0], vip).is_err());
}

#[test]
fn bridged_replies_need_bridge_netfilter_or_masquerading() {
    let w = World::new(2);
    let vip = addr(Ipv4Addr::new(10, 81, 100, 21), 80);
    let web = service("web", "", 21, 80);
    let sysctl = |value: &str| {
        sh(&[
            "ip",
            "netns",
            "exec",
            &w.node,
            "sysctl",
            "-qw",
            &format!("net.bridge.bridge-nf-call-iptables={value}"),
        ])
    };
    let current = || {
        sh(&[
            "ip",
            "netns",
            "exec",
            &w.node,
            "sysctl",
            "-n",
            "net.bridge.bridge-nf-call-iptables",
        ])
        .trim()
        .to_string()
    };
    sysctl("0");
    let mut p = w.proxier();
    w.sync(&mut p, &[state(web.clone(), vec![ep(0, 80, true)])]);
    // pod0's reply to pod1 is bridged past the conntrack entry: pod1 sees
    // a SYN-ACK from an address it never called and the connection fails.
    assert!(get(&w.pods[1], vip).is_err());

    // Turning br_netfilter's hook on (in this namespace only) fixes it.
    let state_of = in_ns(&w.node, proxy::ensure_bridge_netfilter).unwrap();
    assert_eq!(state_of, proxy::BridgeNetfilter::Enabled);
    assert_eq!(current(), "1");
    assert_eq!(get(&w.pods[1], vip).unwrap(), "pod0 10.81.1.11");

    // Without it, masquerading every cluster-IP connection works too
    // (the reply goes to the gateway, through the node).
    sysctl("0");
    let mut config = p.config().clone();
    config.masquerade_all = true;
    let mut p = Proxier::new(config).unwrap();
    w.sync(&mut p, &[state(web, vec![ep(0, 80, true)])]);
    assert_eq!(get(&w.pods[1], vip).unwrap(), "pod0 10.81.1.1");
    sysctl("1");
}

#[test]
fn many_services_sync_fully_then_partially() {
    let w = World::new(2);
    let mut p = w.proxier();
    let mut all: Vec<ServiceState> = (0..200u32)
        .map(|i| {
            let mut svc = ServicePort::cluster_ip(
                ServicePortName::new("rdtpx", format!("s{i}"), "", Protocol::Tcp),
                Ipv4Addr::new(10, 81, 101 + (i / 200) as u8, (i % 200) as u8 + 1),
                80,
            );
            if i % 3 == 0 {
                svc.session_affinity = Some(60);
            }
            state(svc, vec![ep(0, 80, true), ep(1, 80, true)])
        })
        .collect();
    let r = w.sync(&mut p, &all);
    assert!(r.full && r.services == 200);
    all[150].endpoints = vec![ep(1, 80, true)];
    all[3].port.session_affinity = Some(30);
    let r = w.sync(&mut p, &all);
    assert!(!r.full);
    assert_eq!(r.changed, 2);
    let vip = addr(Ipv4Addr::new(10, 81, 101, 151), 80);
    assert_eq!(
        names(&w.outside, vip, 10).keys().collect::<Vec<_>>(),
        ["pod1"]
    );
    let set = w.nft(&[
        "list",
        "set",
        "ip",
        TABLE,
        "aff-rdtpx/s3/tcp/__10.81.1.10/80",
    ]);
    assert!(set.contains("timeout 30s"), "{set}");
    let distinct: BTreeSet<String> = names(&w.outside, addr(Ipv4Addr::new(10, 81, 101, 2), 80), 30)
        .into_keys()
        .collect();
    assert_eq!(distinct.len(), 2);
}
