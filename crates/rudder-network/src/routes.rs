//! Routes to the other nodes' pod CIDRs, so every pod reaches every other
//! pod without NAT (what flannel's backends do for k3s):
//!
//! - **host-gw**: a route per peer node, `<podCIDR> via <node IP>`; the
//!   nodes must share an L2 segment.
//! - **vxlan**: one kernel VXLAN device per node (`rudder.vxlan`, VNI 1, UDP
//!   8472 like flannel's `flannel.1`) holding the pod CIDR's network
//!   address; per peer a route `<podCIDR> via <peer's network address>
//!   onlink` over the device, a permanent neighbour entry for that address
//!   and a forwarding entry sending the peer's VTEP MAC to its node IP. The
//!   VTEP MAC is derived from the node IP, so every node knows every
//!   other's without publishing it, and it survives restarts.
//!
//! The routes carry their own protocol number ([`ROUTE_PROTO`]) so a sync
//! can find and remove the ones whose node went away, and `reset` all of
//! them, without touching anyone else's routes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::cmd::Tool;
use crate::{Ipv4Cidr, NetworkError};

/// The `proto` of the routes this module installs (iproute2 takes any
/// number; 0x52 is free in /etc/iproute2/rt_protos).
pub const ROUTE_PROTO: &str = "82";
/// The VXLAN device's name.
pub const VXLAN_DEVICE: &str = "rudder.vxlan";
/// The VXLAN network identifier (flannel's default).
pub const VXLAN_VNI: u32 = 1;
/// The UDP port VXLAN uses (the Linux default, flannel's too).
pub const VXLAN_PORT: u16 = 8472;
/// What VXLAN encapsulation costs: outer IPv4 (20) + UDP (8) + VXLAN (8) +
/// inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// How pod traffic crosses nodes (`rudder agent --pod-network`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodNetworkBackend {
    /// Plain routes via the peers' addresses (one L2 segment).
    #[default]
    HostGw,
    /// Encapsulation in VXLAN (any IP connectivity between nodes).
    Vxlan,
}

impl std::str::FromStr for PodNetworkBackend {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "host-gw" => Ok(PodNetworkBackend::HostGw),
            "vxlan" => Ok(PodNetworkBackend::Vxlan),
            other => Err(format!(
                "unknown pod network backend {other:?} (host-gw or vxlan)"
            )),
        }
    }
}

impl std::fmt::Display for PodNetworkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PodNetworkBackend::HostGw => "host-gw",
            PodNetworkBackend::Vxlan => "vxlan",
        })
    }
}

/// Another node, as its Node object describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerNode {
    /// Its InternalIP.
    pub ip: Ipv4Addr,
    /// Its `spec.podCIDR`.
    pub pod_cidr: Ipv4Cidr,
}

/// The routes of one node to its peers.
#[derive(Clone, Debug)]
pub struct NodeRoutes {
    pub backend: PodNetworkBackend,
    /// This node's address (the VXLAN source address).
    pub node_ip: Ipv4Addr,
    /// This node's pod CIDR.
    pub pod_cidr: Ipv4Cidr,
}

/// The VTEP MAC of the node at `ip`: locally administered, unicast, and
/// the same on every node that computes it.
pub fn vtep_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0e:52:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The MTU pods get with `backend` when the node's uplink has `link_mtu`.
pub fn pod_mtu(backend: PodNetworkBackend, link_mtu: u32) -> u32 {
    match backend {
        PodNetworkBackend::HostGw => link_mtu,
        PodNetworkBackend::Vxlan => link_mtu.saturating_sub(VXLAN_OVERHEAD),
    }
}

/// The MTU of the interface that holds `ip` (1500 if it cannot be told).
pub fn link_mtu_of(ip: Ipv4Addr) -> u32 {
    let Ok(text) = Tool::new("ip").args(["-j", "addr", "show"]).run() else {
        return crate::DEFAULT_MTU;
    };
    let Ok(links) = serde_json::from_str::<serde_json::Value>(&text) else {
        return crate::DEFAULT_MTU;
    };
    links
        .as_array()
        .into_iter()
        .flatten()
        .find(|link| {
            link["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["local"].as_str() == Some(&ip.to_string()))
        })
        .and_then(|link| link["mtu"].as_u64())
        .map_or(crate::DEFAULT_MTU, |m| m as u32)
}

impl NodeRoutes {
    /// Creates (or refreshes) what the backend needs on this node: the
    /// VXLAN device for vxlan, nothing for host-gw. A VXLAN device left by
    /// a run with another address is recreated.
    pub fn ensure(&self) -> Result<(), NetworkError> {
        if self.backend != PodNetworkBackend::Vxlan {
            // Switching from vxlan to host-gw: the device must go.
            return remove_vxlan_device();
        }
        let mac = vtep_mac(self.node_ip);
        let local = self.node_ip.to_string();
        let existing = Tool::new("ip")
            .args(["-j", "-d", "link", "show", "dev", VXLAN_DEVICE])
            .run()
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        let matches = existing.as_ref().is_some_and(|links| {
            let link = &links[0];
            link["address"].as_str() == Some(&mac)
                && link["linkinfo"]["info_data"]["local"].as_str() == Some(&local)
                && link["linkinfo"]["info_data"]["id"].as_u64() == Some(u64::from(VXLAN_VNI))
        });
        if existing.is_some() && !matches {
            remove_vxlan_device()?;
        }
        if !matches {
            let mtu = link_mtu_of(self.node_ip).saturating_sub(VXLAN_OVERHEAD);
            Tool::new("ip")
                .args(["link", "add", VXLAN_DEVICE, "address", &mac, "mtu"])
                .arg(mtu.to_string())
                .args(["type", "vxlan", "id"])
                .arg(VXLAN_VNI.to_string())
                .args(["local", &local, "dstport"])
                .arg(VXLAN_PORT.to_string())
                .args(["nolearning"])
                .run()?;
        }
        // The device holds the pod CIDR's network address (as flannel's
        // flannel.1 does): the next hop peers' routes name.
        let address = format!("{}/32", self.pod_cidr.network());
        Tool::new("ip")
            .args(["addr", "replace", &address, "dev", VXLAN_DEVICE])
            .run()?;
        Tool::new("ip")
            .args(["link", "set", "dev", VXLAN_DEVICE, "up"])
            .run()?;
        Ok(())
    }

    /// Makes the routes (and VXLAN entries) exactly those of `peers`:
    /// missing ones added, changed ones replaced, ones of nodes that went
    /// away removed. One `ip -batch` for the additions; idempotent.
    pub fn sync(&self, peers: &[PeerNode]) -> Result<(), NetworkError> {
        let wanted: Vec<&PeerNode> = peers
            .iter()
            .filter(|p| p.ip != self.node_ip && p.pod_cidr != self.pod_cidr)
            .collect();
        let mut batch = String::new();
        for peer in &wanted {
            match self.backend {
                PodNetworkBackend::HostGw => {
                    batch.push_str(&format!(
                        "route replace {} via {} proto {ROUTE_PROTO}\n",
                        peer.pod_cidr, peer.ip
                    ));
                }
                PodNetworkBackend::Vxlan => {
                    let gateway = peer.pod_cidr.network();
                    let mac = vtep_mac(peer.ip);
                    batch.push_str(&format!(
                        "neigh replace {gateway} lladdr {mac} dev {VXLAN_DEVICE} nud permanent\n\
                         route replace {} via {gateway} dev {VXLAN_DEVICE} onlink proto {ROUTE_PROTO}\n",
                        peer.pod_cidr
                    ));
                }
            }
        }
        if !batch.is_empty() {
            Tool::new("ip").args(["-batch", "-"]).stdin(batch).run()?;
        }
        if self.backend == PodNetworkBackend::Vxlan {
            // `bridge` has no batch mode worth the name for fdb; a few
            // peers make a few calls.
            let fdb = Tool::new("bridge")
                .args(["-j", "fdb", "show", "dev", VXLAN_DEVICE])
                .run()
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .unwrap_or_default();
            let mut present = BTreeSet::new();
            for entry in fdb.as_array().into_iter().flatten() {
                if let (Some(mac), Some(dst)) = (entry["mac"].as_str(), entry["dst"].as_str()) {
                    present.insert((mac.to_owned(), dst.to_owned()));
                }
            }
            let mut wanted_fdb = BTreeSet::new();
            for peer in &wanted {
                let key = (vtep_mac(peer.ip), peer.ip.to_string());
                if !present.contains(&key) {
                    Tool::new("bridge")
                        .args(["fdb", "replace", &key.0, "dev", VXLAN_DEVICE, "dst", &key.1])
                        .args(["self", "permanent"])
                        .run()?;
                }
                wanted_fdb.insert(key);
            }
            for (mac, dst) in present.difference(&wanted_fdb) {
                if mac == "00:00:00:00:00:00" || !mac.starts_with("0e:52:") {
                    continue;
                }
                let _ = Tool::new("bridge")
                    .args(["fdb", "del", mac, "dev", VXLAN_DEVICE, "dst", dst, "self"])
                    .run();
            }
        }
        // Routes of nodes that went away.
        let wanted_cidrs: BTreeSet<String> =
            wanted.iter().map(|p| p.pod_cidr.to_string()).collect();
        for (dst, dev) in installed_routes()? {
            if !wanted_cidrs.contains(&dst) {
                Tool::new("ip")
                    .args(["route", "del", &dst, "proto", ROUTE_PROTO])
                    .run()?;
                if dev == VXLAN_DEVICE {
                    if let Ok(cidr) = dst.parse::<Ipv4Cidr>() {
                        let _ = Tool::new("ip")
                            .args(["neigh", "del"])
                            .arg(cidr.network().to_string())
                            .args(["dev", VXLAN_DEVICE])
                            .run();
                    }
                }
            }
        }
        Ok(())
    }
}

/// The routes this module installed: (destination, device).
fn installed_routes() -> Result<Vec<(String, String)>, NetworkError> {
    let text = Tool::new("ip")
        .args(["-j", "route", "show", "proto", ROUTE_PROTO])
        .run()?;
    let routes: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
    Ok(routes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["dst"].as_str()?.to_owned(),
                r["dev"].as_str().unwrap_or("").to_owned(),
            ))
        })
        .collect())
}

fn remove_vxlan_device() -> Result<(), NetworkError> {
    let exists = Tool::new("ip")
        .args(["link", "show", "dev", VXLAN_DEVICE])
        .run()
        .is_ok();
    if exists {
        Tool::new("ip")
            .args(["link", "del", "dev", VXLAN_DEVICE])
            .run()?;
    }
    Ok(())
}

/// Removes every route this module installed and the VXLAN device
/// (`rudder reset`).
pub fn remove_all() -> Result<(), NetworkError> {
    for (dst, _) in installed_routes().unwrap_or_default() {
        Tool::new("ip")
            .args(["route", "del", &dst, "proto", ROUTE_PROTO])
            .run()?;
    }
    remove_vxlan_device()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_print() {
        assert_eq!(
            "host-gw".parse::<PodNetworkBackend>(),
            Ok(PodNetworkBackend::HostGw)
        );
        assert_eq!(
            "vxlan".parse::<PodNetworkBackend>(),
            Ok(PodNetworkBackend::Vxlan)
        );
        assert!("flannel".parse::<PodNetworkBackend>().is_err());
        assert_eq!(PodNetworkBackend::Vxlan.to_string(), "vxlan");
    }

    #[test]
    fn vtep_macs_are_local_unicast_and_follow_the_address() {
        let mac = vtep_mac(Ipv4Addr::new(10, 99, 0, 11));
        assert_eq!(mac, "0e:52:0a:63:00:0b");
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10, "locally administered, unicast");
        assert_ne!(mac, vtep_mac(Ipv4Addr::new(10, 99, 0, 12)));
    }

    #[test]
    fn vxlan_costs_fifty_bytes() {
        assert_eq!(pod_mtu(PodNetworkBackend::Vxlan, 1500), 1450);
        assert_eq!(pod_mtu(PodNetworkBackend::HostGw, 1500), 1500);
    }
}
