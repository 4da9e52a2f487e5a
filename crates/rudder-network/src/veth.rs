//! A pod's link to the bridge: a veth pair whose host end (named from the
//! sandbox id) is a port of the bridge and whose other end is `eth0` in the
//! pod's network namespace, with the pod's address and a default route via
//! the gateway (as the CNI `bridge` plugin does).

use std::net::Ipv4Addr;
use std::path::Path;

use crate::bridge;
use crate::cmd::Tool;
use crate::NetworkError;

/// The interface name inside the pod.
pub const POD_IFNAME: &str = "eth0";

/// The host end's name for a sandbox: `veth` and 8 hex digits of a hash of
/// the id (FNV-1a, folded to 32 bits): stable across restarts, 12 characters
/// (the kernel allows 15).
pub fn host_name(sandbox_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sandbox_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veth{:08x}", (hash ^ (hash >> 32)) as u32)
}

/// The pod end's MAC address: `0a:58:` and the four bytes of its IPv4
/// address (the CNI plugins' private prefix, as kubenet did). A pair rebuilt
/// for the same address keeps its MAC, so the neighbours' ARP caches stay
/// right.
pub fn pod_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// What a pod's end gets.
pub(crate) struct PodLink<'a> {
    pub host: &'a str,
    pub netns: &'a Path,
    pub bridge: &'a str,
    pub mtu: u32,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// Creates the pair (replacing a host end left by an earlier attempt),
/// attaches the host end to the bridge and configures the pod's end. On a
/// failure the pair is deleted again.
pub(crate) fn create(link: &PodLink<'_>) -> Result<(), NetworkError> {
    if bridge::link_exists(link.host) {
        bridge::delete_link(link.host)?;
    }
    let netns = link.netns.to_str().ok_or_else(|| NetworkError::Netns {
        path: link.netns.to_path_buf(),
        reason: "the path is not UTF-8".into(),
    })?;
    let mtu = link.mtu.to_string();
    // Created from inside the pod's namespace with the peer sent to ours
    // (named by our PID, which `nsenter --net` leaves in our PID namespace):
    // both ends appear at once, whatever kind of path `netns` is.
    let our_pid = std::process::id().to_string();
    let mac = pod_mac(link.ip);
    Tool::new("nsenter")
        .arg(format!("--net={netns}"))
        .args([
            "ip", "link", "add", POD_IFNAME, "address", &mac, "mtu", &mtu, "type", "veth",
        ])
        .args(["peer", "name", link.host, "mtu", &mtu, "netns", &our_pid])
        .run()?;
    let configured = configure(link, netns);
    if configured.is_err() {
        if let Err(e) = bridge::delete_link(link.host) {
            tracing::warn!(host = link.host, "removing a half-configured veth: {e}");
        }
    }
    configured
}

fn configure(link: &PodLink<'_>, netns: &str) -> Result<(), NetworkError> {
    let host = link.host;
    // Hairpin: a pod reaching itself through a Service address gets the
    // packet back through its own port (the CNI bridge's hairpinMode).
    Tool::new("ip")
        .args(["-batch", "-"])
        .stdin(format!(
            "link set dev {host} master {bridge}\n\
             link set dev {host} type bridge_slave hairpin on\n\
             link set dev {host} up\n",
            bridge = link.bridge
        ))
        .run()?;
    Tool::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "-batch", "-"])
        .stdin(format!(
            "addr replace {ip}/{prefix} brd + dev {POD_IFNAME}\n\
             link set dev {POD_IFNAME} up\n\
             link set dev lo up\n\
             route replace default via {gateway} dev {POD_IFNAME}\n",
            ip = link.ip,
            prefix = link.prefix,
            gateway = link.gateway,
        ))
        .run()?;
    Ok(())
}

/// Deletes the host end (the kernel deletes the pod's end with it); nothing
/// if it is already gone.
pub(crate) fn delete(host: &str) -> Result<(), NetworkError> {
    bridge::delete_link(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_macs_are_derived_from_the_address() {
        assert_eq!(pod_mac(Ipv4Addr::new(10, 42, 0, 12)), "0a:58:0a:2a:00:0c");
    }

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_name("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        assert_eq!(
            a,
            host_name("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth"));
        assert!(a[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let names: std::collections::HashSet<String> = (0..10_000)
            .map(|i| host_name(&format!("sandbox-{i}")))
            .collect();
        assert_eq!(names.len(), 10_000);
        // FNV-1a of the empty string, folded: a fixed known value.
        assert_eq!(
            host_name(""),
            format!("veth{:08x}", 0xcbf2_9ce4_u32 ^ 0x8422_2325_u32)
        );
    }
}
