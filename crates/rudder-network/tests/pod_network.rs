//! The pod network on the real kernel (needs root, `ip`, `nsenter`, `nft` or
//! `iptables`, and `ping` or busybox): two "pods" are processes in their own
//! network namespaces, on a bridge and a pod CIDR of their own.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use rudder_network::{host_veth_name, Backend, NetworkConfig, PodNetwork};

/// A process in a new network namespace: the pod's pause process.
struct NetnsProcess(Child);

impl NetnsProcess {
    fn start() -> NetnsProcess {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare --net sleep");
        let p = NetnsProcess(child);
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        // unshare(2) happens right after the fork: wait for it.
        loop {
            match std::fs::read_link(p.path()) {
                Ok(ns) if ns != ours => break,
                _ => std::thread::yield_now(),
            }
        }
        p
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NetnsProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes whatever the test created even when an assertion fails.
struct Cleanup {
    network: PodNetwork,
    bridge: String,
    outside_link: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = self.network.reset() {
            eprintln!("reset in cleanup: {e}");
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.outside_link])
            .output();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &format!("rudder-{}", self.bridge)])
            .output();
    }
}

fn random() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn stdout(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_netns(netns: &Path, args: &[&str]) -> Output {
    let mut all = vec![format!("--net={}", netns.display())];
    all.extend(args.iter().map(|s| s.to_string()));
    Command::new("nsenter").args(&all).output().unwrap()
}

fn ping_command() -> Vec<&'static str> {
    if Command::new("ping").arg("-V").output().is_ok() {
        vec!["ping"]
    } else {
        vec!["busybox", "ping"]
    }
}

/// Whether `to` answers a ping sent from `from` (the host's namespace when
/// `None`); a few tries, as a first packet may wait for ARP.
fn pings(from: Option<&Path>, to: Ipv4Addr) -> bool {
    pings_within(from, to, 3)
}

fn pings_within(from: Option<&Path>, to: Ipv4Addr, tries: usize) -> bool {
    let target = to.to_string();
    let mut args = ping_command();
    args.extend(["-c", "1", "-W", "2", &target]);
    (0..tries).any(|_| {
        let out = match from {
            Some(netns) => in_netns(netns, &args),
            None => run(args[0], &args[1..]),
        };
        out.status.success()
    })
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn master_of(name: &str) -> Option<String> {
    std::fs::read_link(Path::new("/sys/class/net").join(name).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn rules_listing(network: &PodNetwork, bridge: &str) -> String {
    match network.backend().unwrap() {
        Backend::Nftables => stdout("nft", &["list", "table", "ip", &format!("rudder-{bridge}")]),
        Backend::Iptables => {
            stdout("iptables", &["-w", "-t", "nat", "-S"])
                + &stdout("iptables", &["-w", "-t", "filter", "-S"])
        }
    }
}

#[test]
fn two_pods_reach_each_other_and_everything_goes_away() {
    let r = random();
    let bridge = format!("rdt{:06x}", r & 0xff_ffff);
    let x = (r >> 8) % 250 + 1;
    let pod_cidr = format!("10.199.{x}.0/24");
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("network");
    let mut config = NetworkConfig::new(pod_cidr.parse().unwrap(), &state_dir);
    config.bridge = bridge.clone();
    config.cluster_cidr = Some("10.199.0.0/16".parse().unwrap());
    config.mtu = 1450;
    let guard = Cleanup {
        network: PodNetwork::new(config).unwrap(),
        bridge: bridge.clone(),
        outside_link: format!("rdo{:06x}", r & 0xff_ffff),
    };
    let net = &guard.network;
    let gateway: Ipv4Addr = format!("10.199.{x}.1").parse().unwrap();
    assert_eq!(net.gateway(), gateway);

    // The node side, twice: nothing doubles, and an address left from an
    // earlier pod CIDR goes.
    net.ensure_node().unwrap();
    stdout(
        "ip",
        &["addr", "add", &format!("10.194.{x}.1/24"), "dev", &bridge],
    );
    net.ensure_node().unwrap();
    assert!(link_exists(&bridge));
    let addrs = stdout("ip", &["-4", "-o", "addr", "show", "dev", &bridge]);
    assert_eq!(addrs.lines().count(), 1, "{addrs}");
    assert!(addrs.contains(&format!("inet {gateway}/24")), "{addrs}");
    let link = stdout("ip", &["-o", "link", "show", "dev", &bridge]);
    assert!(link.contains("mtu 1450") && link.contains(",UP"), "{link}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let rules = rules_listing(net, &bridge);
    assert_eq!(
        rules.matches("masquerade").count() + rules.matches("MASQUERADE").count(),
        1,
        "{rules}"
    );
    match net.backend().unwrap() {
        Backend::Nftables => {
            assert!(
                rules.contains(&format!(
                    "ip saddr {pod_cidr} ip daddr != 10.199.0.0/16 ip daddr != 224.0.0.0/4 masquerade"
                )),
                "{rules}"
            );
            assert_eq!(
                rules
                    .matches(&format!("iifname \"{bridge}\" accept"))
                    .count(),
                1,
                "{rules}"
            );
        }
        Backend::Iptables => {
            assert_eq!(
                rules.matches(&format!("-i {bridge} -j ACCEPT")).count(),
                1,
                "{rules}"
            );
        }
    }

    // Two pods set up at the same time.
    let mut a = NetnsProcess::start();
    let b = NetnsProcess::start();
    let (pa, pb) = std::thread::scope(|s| {
        let ha = s.spawn(|| net.setup_pod("sandbox-a", &a.path()).unwrap());
        let hb = s.spawn(|| net.setup_pod("sandbox-b", &b.path()).unwrap());
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert_ne!(pa.ip, pb.ip);
    for p in [pa, pb] {
        assert_eq!(p.prefix, 24);
        assert_eq!(p.gateway, gateway);
        let last = p.ip.octets()[3];
        assert!(
            p.ip.octets()[..3] == gateway.octets()[..3] && (2..=3).contains(&last),
            "{p:?}"
        );
    }
    assert_eq!(net.pod_ip("sandbox-a"), Some(pa.ip));
    assert_eq!(net.pod_ip("sandbox-b"), Some(pb.ip));
    let (va, vb) = (host_veth_name("sandbox-a"), host_veth_name("sandbox-b"));
    assert_eq!(master_of(&va).as_deref(), Some(bridge.as_str()));
    assert_eq!(master_of(&vb).as_deref(), Some(bridge.as_str()));

    // Inside a pod: eth0 with the address, lo up, the default route.
    let inside =
        String::from_utf8(in_netns(&a.path(), &["ip", "-4", "-o", "addr"]).stdout).unwrap();
    assert!(
        inside.contains(&format!("eth0    inet {}/24", pa.ip))
            || inside.contains(&format!("eth0 inet {}/24", pa.ip)),
        "{inside}"
    );
    assert!(
        inside.contains("lo    inet 127.0.0.1/8") || inside.contains("lo inet 127.0.0.1/8"),
        "{inside}"
    );
    let routes = String::from_utf8(in_netns(&a.path(), &["ip", "route"]).stdout).unwrap();
    assert!(
        routes.contains(&format!("default via {gateway} dev eth0")),
        "{routes}"
    );
    let eth0 = String::from_utf8(in_netns(&a.path(), &["ip", "-o", "link", "show", "eth0"]).stdout)
        .unwrap();
    assert!(eth0.contains("mtu 1450"), "{eth0}");
    assert!(
        eth0.contains(&format!("link/ether {} ", rudder_network::pod_mac(pa.ip))),
        "{eth0}"
    );

    // Connectivity: pod to pod both ways, host to pod, pod to gateway.
    assert!(pings(Some(&a.path()), pb.ip), "a cannot reach b");
    assert!(pings(Some(&b.path()), pa.ip), "b cannot reach a");
    assert!(pings(None, pa.ip), "the host cannot reach a");
    assert!(
        pings(Some(&b.path()), gateway),
        "b cannot reach the gateway"
    );

    // Masquerading: a host outside the cluster CIDR, with no route back to
    // the pods, answers them only if their packets leave with the node's
    // address.
    let outside = NetnsProcess::start();
    let link = &guard.outside_link;
    let pid = outside.0.id().to_string();
    let (host_side, far_side) = (format!("10.198.{x}.1"), format!("10.198.{x}.2"));
    stdout(
        "ip",
        &[
            "link", "add", link, "type", "veth", "peer", "name", "eth1", "netns", &pid,
        ],
    );
    stdout(
        "ip",
        &["addr", "add", &format!("{host_side}/30"), "dev", link],
    );
    stdout("ip", &["link", "set", link, "up"]);
    for args in [
        vec![
            "ip",
            "addr",
            "add",
            &format!("{far_side}/30"),
            "dev",
            "eth1",
        ],
        vec!["ip", "link", "set", "eth1", "up"],
    ] {
        assert!(
            in_netns(&outside.path(), &args).status.success(),
            "{args:?}"
        );
    }
    assert!(
        pings(Some(&b.path()), far_side.parse().unwrap()),
        "b's packets to outside the cluster are not masqueraded"
    );
    drop(outside);

    // Setting a pod up again keeps its address and its connectivity.
    let again = net.setup_pod("sandbox-a", &a.path()).unwrap();
    assert_eq!(again, pa);
    assert!(
        pings(Some(&b.path()), pa.ip),
        "b cannot reach a after a second setup"
    );

    // Teardown: the veth pair goes, the address is free, twice is fine.
    net.teardown_pod("sandbox-a").unwrap();
    assert!(!link_exists(&va));
    let gone = in_netns(&a.path(), &["ip", "link", "show", "eth0"]);
    assert!(!gone.status.success(), "eth0 still in pod a");
    assert_eq!(net.pod_ip("sandbox-a"), None);
    net.teardown_pod("sandbox-a").unwrap();
    assert!(
        !pings_within(None, pa.ip, 1),
        "a still answers after teardown"
    );

    // A pod whose namespace is already gone is torn down all the same.
    a.stop();
    let c = NetnsProcess::start();
    let pc = net.setup_pod("sandbox-c", &c.path()).unwrap();
    assert!(pc.ip != pa.ip && pc.ip != pb.ip, "{pc:?}");
    let vc = host_veth_name("sandbox-c");
    drop(c);
    net.teardown_pod("sandbox-c").unwrap();
    assert!(!link_exists(&vc));
    assert_eq!(net.pod_ip("sandbox-c"), None);

    // A namespace that does not exist is a clear error and holds no address.
    let err = net
        .setup_pod("sandbox-d", Path::new("/proc/999999999/ns/net"))
        .unwrap_err();
    assert!(err.to_string().contains("/proc/999999999/ns/net"), "{err}");
    assert_eq!(net.pod_ip("sandbox-d"), None);

    // Reset: b's veth, the bridge, the rules and the state all go.
    assert!(state_dir.join("ipam").exists());
    net.reset().unwrap();
    assert!(!link_exists(&vb));
    assert!(!link_exists(&bridge));
    assert!(!state_dir.exists());
    assert_eq!(net.pod_ip("sandbox-b"), None);
    let table = run("nft", &["list", "table", "ip", &format!("rudder-{bridge}")]);
    assert!(!table.status.success(), "the nft table is still there");
    let nat = stdout("iptables", &["-w", "-t", "nat", "-S"]);
    assert!(!nat.contains(&bridge), "{nat}");
    let filter = stdout("iptables", &["-w", "-t", "filter", "-S"]);
    assert!(!filter.contains(&bridge), "{filter}");
    // Resetting what is already gone is fine.
    net.reset().unwrap();
    drop(b);
}
