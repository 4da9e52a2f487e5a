//! NetworkPolicy enforcement with nftables.
//!
//! The agent turns the cluster's Pods, Namespaces and NetworkPolicies into
//! the plain model below ([`ClusterState`]); [`render`] turns that into one
//! nftables table (`inet rudder-policy` by default) that [`apply`] installs
//! in one `nft -f -` transaction, replacing the previous table whole, so a
//! change never leaves a moment with no rules or with half of them.
//!
//! The table filters on the `forward` hook: pods reach each other (and the
//! outside) through the node's routing, and Services are DNATed in
//! `prerouting`, so `forward` sees real pod addresses on both sides. Pods on
//! one node talk over the bridge; those frames reach the IPv4 hooks only
//! with `br_netfilter` (see [`ensure_bridge_netfilter`]).
//!
//! Semantics (networking.k8s.io/v1):
//! - a pod is isolated for ingress (egress) when some policy of its
//!   namespace selects it and has `Ingress` (`Egress`) in its policy types;
//!   an isolated pod accepts (sends) only what some rule of some selecting
//!   policy allows; a pod no policy selects is untouched;
//! - unset policy types mean `Ingress`, plus `Egress` when egress rules
//!   exist ([`NetworkPolicy::types`]);
//! - a rule allows a connection when one of its peers and one of its ports
//!   match; no peers (or no ports) means every peer (or port);
//! - replies and related traffic (ICMP errors) of allowed connections pass
//!   (`ct state established,related`), and so does traffic from the node's
//!   own addresses (the kubelet's probes). Traffic the node sends itself
//!   never crosses `forward` at all.

mod render;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use rudder_apimachinery::selector::LabelSelector;

use crate::cmd::{find_tool, Tool};
use crate::{Ipv4Cidr, NetworkError};

pub use crate::bridge::{ensure_bridge_netfilter, BridgeNetfilter};
pub use render::render;

/// The table's name unless configured (tests use their own).
pub const DEFAULT_TABLE: &str = "rudder-policy";

/// A transport protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Kubernetes' spelling (`TCP`, `UDP`, `SCTP`).
    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nftables' spelling (`meta l4proto tcp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A named container port of a pod (`ports[].name`), which policies may
/// name instead of a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod with an address on the pod network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    /// Its containers' named ports.
    pub ports: Vec<NamedPort>,
    /// Whether it runs on this node (only those get rules; every pod can be
    /// a peer).
    pub local: bool,
}

/// A namespace and its labels (for `namespaceSelector`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyNamespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// `Ingress` or `Egress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// One NetworkPolicy.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    /// Which pods of its namespace it applies to (empty: all of them).
    pub pod_selector: LabelSelector,
    /// `spec.policyTypes` as written; empty means unset (see
    /// [`NetworkPolicy::types`]).
    pub policy_types: Vec<PolicyType>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl NetworkPolicy {
    /// The policy types in force: as written, or when unset `Ingress`, plus
    /// `Egress` if the policy has egress rules (the API's defaulting).
    pub fn types(&self) -> Vec<PolicyType> {
        if !self.policy_types.is_empty() {
            return self.policy_types.clone();
        }
        let mut types = vec![PolicyType::Ingress];
        if !self.egress.is_empty() {
            types.push(PolicyType::Egress);
        }
        types
    }

    fn has_type(&self, kind: PolicyType) -> bool {
        self.types().contains(&kind)
    }
}

/// One ingress (`from`) or egress (`to`) rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// `None`: every source (ingress) or destination (egress), as an empty
    /// or missing `from`/`to` is. `Some(vec![])` matches nothing (a rule
    /// whose peers were all dropped, e.g. IPv6 blocks on this IPv4 network).
    pub peers: Option<Vec<Peer>>,
    /// Empty: every port and protocol.
    pub ports: Vec<PortMatch>,
}

/// A `from`/`to` entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Peer {
    /// Pods chosen by labels: with no namespace selector, in the policy's
    /// own namespace; with one, in every namespace it selects.
    Pods {
        namespace_selector: Option<LabelSelector>,
        pod_selector: LabelSelector,
    },
    /// An address range, minus exceptions.
    IpBlock {
        cidr: Ipv4Cidr,
        except: Vec<Ipv4Cidr>,
    },
}

/// A `ports` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMatch {
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    pub port: Option<PortRef>,
    /// With a numeric port: the range `port..=end_port`.
    pub end_port: Option<u16>,
}

/// A port by number, or by the name of a container port of the destination
/// pod (resolved per destination pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// What the rules are made from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState {
    /// Every pod with an address on the pod network (host-network and
    /// finished pods left out by the caller).
    pub pods: Vec<PolicyPod>,
    pub namespaces: Vec<PolicyNamespace>,
    pub policies: Vec<NetworkPolicy>,
}

/// Where and how the rules are installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyTable {
    /// The `inet` table's name.
    pub name: String,
    /// The node's own addresses (its InternalIP, the bridge's gateway):
    /// traffic from them to local pods is always allowed.
    pub node_ips: Vec<Ipv4Addr>,
}

impl PolicyTable {
    pub fn new(node_ips: Vec<Ipv4Addr>) -> PolicyTable {
        PolicyTable {
            name: DEFAULT_TABLE.to_string(),
            node_ips,
        }
    }
}

/// Installs a rendered table (one transaction: the old table, if any, is
/// replaced whole).
pub fn apply(script: &str) -> Result<(), NetworkError> {
    Tool::new("nft").args(["-f", "-"]).stdin(script).run()?;
    Ok(())
}

/// Whether `nft` would accept a rendered table, without installing it
/// (`nft --check`): used to find which policy breaks a failed transaction.
pub fn check(script: &str) -> Result<(), NetworkError> {
    Tool::new("nft")
        .args(["--check", "-f", "-"])
        .stdin(script)
        .run()?;
    Ok(())
}

/// Deletes the table (`rudder reset`); nothing to do is success.
pub fn remove(table: &str) -> Result<(), NetworkError> {
    if find_tool("nft").is_none() {
        return Ok(());
    }
    let exists = Tool::new("nft")
        .args(["list", "table", "inet", table])
        .run()
        .is_ok();
    if exists {
        Tool::new("nft")
            .args(["delete", "table", "inet", table])
            .run()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
