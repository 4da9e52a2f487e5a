//! `rudder-bench proxy`: the Service proxy's nftables programming at size
//! and the cost of going through a cluster IP.
//!
//! In network namespaces of its own (`rdtpx-bench-…`, addresses in
//! 10.81.0.0/16): a "node" with a bridge and the proxy's table, a "pod"
//! on the bridge running a small HTTP server, and two client pods: one
//! on a routed link of the node (as with routed pod networking), one on
//! the bridge. It times the first (full) sync of `--services` Services
//! with `--endpoints` endpoints each, then one endpoint change at that
//! size (partial syncs, `--updates` times), then HTTP requests per second
//! to the server pod's cluster IP and to its pod IP directly, in
//! alternating rounds, with a new connection per request (where the
//! proxy's rules are evaluated).
//!
//! The headline ratio is the routed client's: both of its paths are
//! routed by the node, so the ratio is the price of the proxy's rules and
//! NAT. The bridge client's direct path never leaves layer 2 while its
//! cluster-IP path is NATed in the node, so its ratio also holds the
//! difference between bridging and routing (`bridge_client_ratio`); the
//! routed client over kept-alive connections shows the per-packet cost
//! once NAT is set up (`keepalive_ratio`).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sched::{setns, CloneFlags};
use rudder_network::proxy::{
    ensure_bridge_netfilter, BridgeNetfilter, Endpoint, LocalDetector, Protocol, Proxier,
    ProxyConfig, ServicePort, ServicePortName, ServiceState,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::percentile;

#[derive(clap::Args, Clone)]
pub struct ProxyArgs {
    /// Services programmed (one port each).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Endpoint changes timed at full size.
    #[arg(long, default_value_t = 20)]
    updates: usize,
    /// Seconds per HTTP round (five rounds per target and mode).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Concurrent HTTP connections of the client.
    #[arg(long, default_value_t = 16)]
    connections: usize,
}

const TABLE: &str = "rudder-proxy";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 81, 200, 1);
const POD: Ipv4Addr = Ipv4Addr::new(10, 81, 200, 10);
/// The client on the bridge, and its second address for the direct
/// rounds: a connection to the pod IP from a port that just reached the
/// cluster IP would have the same reply tuple as the DNATed one still in
/// conntrack's TIME_WAIT, and conntrack would drop its first packet as a
/// clash.
const BRIDGE_CLIENT: [Ipv4Addr; 2] = [
    Ipv4Addr::new(10, 81, 200, 20),
    Ipv4Addr::new(10, 81, 200, 21),
];
/// The node's end of the routed client's link, and the client's two
/// addresses.
const ROUTED_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 81, 201, 1);
const ROUTED_CLIENT: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 81, 201, 2), Ipv4Addr::new(10, 81, 201, 3)];
/// The pods' addresses (both clients count as pods of the node).
const CLUSTER_CIDR: &str = "10.81.200.0/23";
const POD_PORT: u16 = 8080;
/// The cluster IP of the Service in front of the real pod.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 81, 99, 1);
/// Cluster IPs of the synthetic Services: 10.81.100.1 onwards, 250 per /24.
const SERVICE_BASE: u8 = 100;
/// Endpoint addresses of the synthetic Services: 10.81.150.1 onwards.
const ENDPOINT_BASE: u8 = 150;
const PER_SUBNET: usize = 250;
/// HTTP rounds per target and mode.
const ROUNDS: usize = 5;

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Moves the calling thread into a named network namespace; processes it
/// starts and threads it creates are there too.
fn enter(ns: &str) -> anyhow::Result<()> {
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering netns {ns}"))?;
    Ok(())
}

/// The namespaces, deleted when dropped.
struct Namespaces {
    node: String,
    pod: String,
    bridge_client: String,
    routed_client: String,
}

impl Namespaces {
    fn create() -> anyhow::Result<Namespaces> {
        let id = format!("rdtpx-bench-{}", std::process::id());
        let ns = Namespaces {
            node: format!("{id}-node"),
            pod: format!("{id}-pod"),
            bridge_client: format!("{id}-bclient"),
            routed_client: format!("{id}-rclient"),
        };
        for name in [&ns.node, &ns.pod, &ns.bridge_client, &ns.routed_client] {
            sh(&["ip", "netns", "add", name])?;
        }
        let node = ns.node.as_str();
        sh(&["ip", "-n", node, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", node, "link", "add", "br0", "type", "bridge"])?;
        sh(&[
            "ip",
            "-n",
            node,
            "addr",
            "add",
            &format!("{GATEWAY}/24"),
            "dev",
            "br0",
        ])?;
        sh(&["ip", "-n", node, "link", "set", "br0", "up"])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        let addresses = |peer: &str, ips: &[Ipv4Addr], gateway: Ipv4Addr| -> anyhow::Result<()> {
            for ip in ips {
                sh(&[
                    "ip",
                    "-n",
                    peer,
                    "addr",
                    "add",
                    &format!("{ip}/24"),
                    "dev",
                    "eth0",
                ])?;
            }
            sh(&["ip", "-n", peer, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", peer, "link", "set", "lo", "up"])?;
            sh(&[
                "ip",
                "-n",
                peer,
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
            ])
        };
        for (peer, ips, veth) in [
            (&ns.pod, &[POD][..], "vpod"),
            (&ns.bridge_client, &BRIDGE_CLIENT[..], "vbclient"),
        ] {
            sh(&[
                "ip", "-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                "netns", peer,
            ])?;
            sh(&["ip", "-n", node, "link", "set", veth, "master", "br0", "up"])?;
            sh(&[
                "ip",
                "-n",
                node,
                "link",
                "set",
                veth,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ])?;
            addresses(peer, ips, GATEWAY)?;
        }
        let routed = ns.routed_client.as_str();
        sh(&[
            "ip", "-n", node, "link", "add", "vrclient", "type", "veth", "peer", "name", "eth0",
            "netns", routed,
        ])?;
        sh(&[
            "ip",
            "-n",
            node,
            "addr",
            "add",
            &format!("{ROUTED_GATEWAY}/24"),
            "dev",
            "vrclient",
        ])?;
        sh(&["ip", "-n", node, "link", "set", "vrclient", "up"])?;
        addresses(routed, &ROUTED_CLIENT, ROUTED_GATEWAY)?;
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in [
            &self.routed_client,
            &self.bridge_client,
            &self.pod,
            &self.node,
        ] {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

fn nth(base: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        81,
        base + (i / PER_SUBNET) as u8,
        (i % PER_SUBNET) as u8 + 1,
    )
}

fn synthetic(services: usize, endpoints: usize) -> BTreeMap<ServicePortName, ServiceState> {
    let mut wanted = BTreeMap::new();
    for i in 0..services {
        let name = ServicePortName::new("bench", format!("svc-{i}"), "http", Protocol::Tcp);
        let port = ServicePort::cluster_ip(name.clone(), nth(SERVICE_BASE, i), 80);
        let eps = (0..endpoints)
            .map(|e| Endpoint::ready(nth(ENDPOINT_BASE, i * endpoints + e), 8080, e % 3 == 0))
            .collect();
        wanted.insert(
            name,
            ServiceState {
                port,
                endpoints: eps,
            },
        );
    }
    let name = ServicePortName::new("bench", "http", "", Protocol::Tcp);
    wanted.insert(
        name.clone(),
        ServiceState {
            port: ServicePort::cluster_ip(name, VIP, 80),
            endpoints: vec![Endpoint::ready(POD, POD_PORT, true)],
        },
    );
    wanted
}

struct Programming {
    sync_ms: f64,
    commands: usize,
    updates_ms: Vec<f64>,
    /// Of each update, the time `nft` ran.
    updates_nft_ms: Vec<f64>,
    bridge_netfilter: BridgeNetfilter,
}

/// In the node's namespace: the full sync, then one endpoint change at a
/// time.
fn program(args: &ProxyArgs, node: &str) -> anyhow::Result<Programming> {
    enter(node)?;
    let bridge_netfilter = ensure_bridge_netfilter()?;
    let mut config = ProxyConfig::new(LocalDetector::ClusterCidr(CLUSTER_CIDR.parse()?));
    config.table = TABLE.into();
    config.masquerade_all = bridge_netfilter == BridgeNetfilter::Unavailable;
    let mut proxier = Proxier::new(config)?;
    let mut wanted = synthetic(args.services, args.endpoints);
    let start = Instant::now();
    let report = proxier.sync(&wanted)?;
    let sync_ms = start.elapsed().as_secs_f64() * 1000.0;
    if !report.full || !report.rejected.is_empty() {
        bail!("unexpected first sync: {report:?}");
    }
    let fresh = args.services * args.endpoints;
    let mut updates_ms = Vec::new();
    let mut updates_nft_ms = Vec::new();
    for k in 0..args.updates {
        // A pod of some Service is replaced by one with a new address.
        let i = (k * 7919) % args.services.max(1);
        let name = ServicePortName::new("bench", format!("svc-{i}"), "http", Protocol::Tcp);
        let state = wanted.get_mut(&name).expect("synthetic service");
        state.endpoints[k % args.endpoints] =
            Endpoint::ready(nth(ENDPOINT_BASE, fresh + k), 8080, false);
        let start = Instant::now();
        let report = proxier.sync(&wanted)?;
        updates_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        updates_nft_ms.push(report.nft_elapsed.as_secs_f64() * 1000.0);
        if report.full || report.changed != 1 {
            bail!("unexpected update: {report:?}");
        }
    }
    Ok(Programming {
        sync_ms,
        commands: report.commands,
        updates_ms,
        updates_nft_ms,
        bridge_netfilter,
    })
}

/// A minimal HTTP/1.1 server: `200 ok` to every request, keep-alive
/// unless the client says `Connection: close`.
async fn serve(listener: tokio::net::TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        let Ok(Ok((mut stream, _))) = accepted else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut have = 0;
            loop {
                let n = match stream.read(&mut buf[have..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                have += n;
                let Some(end) = find(&buf[..have], b"\r\n\r\n") else {
                    if have == buf.len() {
                        return;
                    }
                    continue;
                };
                let close = find(&buf[..end], b"Connection: close").is_some();
                let response: &[u8] = if close {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                };
                if stream.write_all(response).await.is_err() || close {
                    return;
                }
                buf.copy_within(end + 4..have, 0);
                have -= end + 4;
            }
        });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Requests per second from `connections` concurrent clients for
/// `seconds`: a new connection per request, or kept-alive connections.
async fn load(
    from: Ipv4Addr,
    to: SocketAddr,
    connections: usize,
    seconds: f64,
    keep_alive: bool,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let request: &[u8] = if keep_alive {
                b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
            } else {
                b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
            };
            let mut stream: Option<tokio::net::TcpStream> = None;
            let mut buf = [0u8; 256];
            while Instant::now() < deadline {
                if stream.is_none() {
                    let connected = async {
                        let socket = tokio::net::TcpSocket::new_v4()?;
                        socket.bind(SocketAddr::from((from, 0)))?;
                        socket.connect(to).await
                    };
                    match connected.await {
                        // With `Connection: close` the server closes
                        // first, so TIME_WAIT stays on its side and the
                        // client's ports are free again at once.
                        Ok(s) => stream = Some(s),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                let s = stream.as_mut().expect("connected");
                let ok = async {
                    s.write_all(request).await?;
                    let mut got = Vec::new();
                    loop {
                        let n = s.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                        if got.ends_with(b"\r\n\r\nok") {
                            break;
                        }
                    }
                    Ok::<bool, std::io::Error>(got.ends_with(b"ok"))
                }
                .await;
                match ok {
                    Ok(true) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        stream = None;
                        continue;
                    }
                }
                if !keep_alive {
                    stream = None;
                }
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("{failed} request(s) to {to} failed");
    }
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
}

/// Rounds alternating between the cluster IP and the pod IP from the
/// client in `client` (its first address towards the cluster IP, its
/// second towards the pod); the median requests per second of each.
fn measure(
    args: &ProxyArgs,
    client: &str,
    from: [Ipv4Addr; 2],
    keep_alive: bool,
) -> anyhow::Result<(f64, f64)> {
    let seconds = args.seconds;
    let connections = args.connections;
    let client = client.to_string();
    std::thread::spawn(move || -> anyhow::Result<(f64, f64)> {
        enter(&client)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let vip = SocketAddr::from((VIP, 80));
            let direct = SocketAddr::from((POD, POD_PORT));
            let through_vip = |seconds| load(from[0], vip, connections, seconds, keep_alive);
            let to_pod = |seconds| load(from[1], direct, connections, seconds, keep_alive);
            // Warm up both paths (ARP, caches).
            through_vip(0.3).await?;
            to_pod(0.3).await?;
            let (mut through, mut straight) = (Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                // Alternate which goes first, so drift favours neither.
                if round % 2 == 0 {
                    through.push(through_vip(seconds).await?);
                    straight.push(to_pod(seconds).await?);
                } else {
                    straight.push(to_pod(seconds).await?);
                    through.push(through_vip(seconds).await?);
                }
            }
            // Medians: a round disturbed by another process on the
            // machine does not decide the figure.
            let median = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
                percentile(v, 50.0)
            };
            Ok((median(&mut through), median(&mut straight)))
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the HTTP client panicked"))?
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(args)).await?
}

fn run_blocking(args: ProxyArgs) -> anyhow::Result<()> {
    if args.services == 0 || args.endpoints == 0 {
        bail!("--services and --endpoints must be at least 1");
    }
    if args.services > PER_SUBNET * 50
        || (args.services * args.endpoints + args.updates) > PER_SUBNET * 50
    {
        bail!(
            "at most {} services and {} endpoints in all (the addresses stay in 10.81.0.0/16)",
            PER_SUBNET * 50,
            PER_SUBNET * 50
        );
    }
    let ns = Namespaces::create()?;

    // The pod's server, in its namespace, for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = {
        let (pod, stop) = (ns.pod.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            enter(&pod)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(SocketAddr::from((
                    Ipv4Addr::UNSPECIFIED,
                    POD_PORT,
                )))
                .await?;
                let _ = ready_tx.send(());
                serve(listener, stop).await;
                Ok(())
            })
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the pod's HTTP server did not start")?;

    let programmed = {
        let (node, args) = (ns.node.clone(), args.clone());
        std::thread::spawn(move || program(&args, &node))
            .join()
            .map_err(|_| anyhow::anyhow!("programming the rules panicked"))??
    };

    let (rps_vip, rps_direct) = measure(&args, &ns.routed_client, ROUTED_CLIENT, false)?;
    let (ka_vip, ka_direct) = measure(&args, &ns.routed_client, ROUTED_CLIENT, true)?;
    let (bridge_vip, bridge_direct) = measure(&args, &ns.bridge_client, BRIDGE_CLIENT, false)?;
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();

    let sorted = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        v
    };
    let updates = sorted(&programmed.updates_ms);
    let updates_nft = sorted(&programmed.updates_nft_ms);
    eprintln!(
        "first sync: {} nft commands; br_netfilter: {:?}",
        programmed.commands, programmed.bridge_netfilter
    );
    println!(
        "proxy services={} endpoints={} sync_{}_ms={:.0} update_ms={:.1} update_p90_ms={:.1} update_max_ms={:.1} update_nft_ms={:.1} rps_clusterip={:.0} rps_direct={:.0} clusterip_vs_direct_ratio={:.3} keepalive_rps_clusterip={:.0} keepalive_rps_direct={:.0} keepalive_ratio={:.3} bridge_client_rps_clusterip={:.0} bridge_client_rps_direct={:.0} bridge_client_ratio={:.3}",
        args.services,
        args.endpoints,
        args.services,
        programmed.sync_ms,
        percentile(&updates, 50.0),
        percentile(&updates, 90.0),
        updates.last().copied().unwrap_or(0.0),
        percentile(&updates_nft, 50.0),
        rps_vip,
        rps_direct,
        rps_vip / rps_direct,
        ka_vip,
        ka_direct,
        ka_vip / ka_direct,
        bridge_vip,
        bridge_direct,
        bridge_vip / bridge_direct,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_the_benchmark_range() {
        assert_eq!(nth(SERVICE_BASE, 0), Ipv4Addr::new(10, 81, 100, 1));
        assert_eq!(nth(SERVICE_BASE, 999), Ipv4Addr::new(10, 81, 103, 250));
        assert_eq!(nth(ENDPOINT_BASE, 10_019), Ipv4Addr::new(10, 81, 190, 20));
        let wanted = synthetic(3, 2);
        assert_eq!(wanted.len(), 4);
        let ips: std::collections::BTreeSet<Ipv4Addr> = wanted
            .values()
            .flat_map(|s| s.endpoints.iter().map(|e| e.ip))
            .collect();
        assert_eq!(ips.len(), 7, "every endpoint address distinct");
        assert_eq!(find(b"GET / HTTP/1.1\r\n\r\n", b"\r\n\r\n"), Some(14));
    }
}
