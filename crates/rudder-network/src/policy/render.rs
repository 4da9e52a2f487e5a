//! From the model to one nftables script.
//!
//! Layout of the table:
//!
//! ```text
//! table inet rudder-policy {
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         ct state established,related accept
//!         ip saddr { <node addresses> } accept
//!         ip saddr vmap { <egress-isolated local pod> : jump egress_<ip>, … }
//!         ip daddr vmap { <ingress-isolated local pod> : jump ingress_<ip>, … }
//!     }
//!     chain egress_<ip> { <allowed> return … drop }
//!     chain ingress_<ip> { <allowed> accept … drop }
//! }
//! ```
//!
//! A connection between two isolated local pods must pass the sender's
//! egress chain and then the receiver's ingress chain, so an egress chain
//! `return`s what it allows (evaluation goes on to the `daddr` map) while
//! an ingress chain, the last check, may `accept`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::{
    ClusterState, NetworkPolicy, Peer, PolicyPod, PolicyTable, PolicyType, PortMatch, PortRef, Rule,
};
use crate::Ipv4Cidr;

/// The whole script: declare the table (so that deleting it cannot fail),
/// delete it, and define it anew. `nft -f` runs it as one transaction.
pub fn render(table: &PolicyTable, state: &ClusterState) -> String {
    let ctx = Context::new(state);
    let name = &table.name;
    let mut locals: Vec<&PolicyPod> = state.pods.iter().filter(|p| p.local).collect();
    locals.sort_by_key(|p| p.ip);
    locals.dedup_by_key(|p| p.ip);

    let mut chains: Vec<(String, Vec<String>)> = Vec::new();
    let mut ingress_map = Vec::new();
    let mut egress_map = Vec::new();
    for pod in &locals {
        let selecting = |kind: PolicyType| -> Vec<&NetworkPolicy> {
            let mut policies: Vec<&NetworkPolicy> = state
                .policies
                .iter()
                .filter(|p| {
                    p.namespace == pod.namespace
                        && p.has_type(kind)
                        && p.pod_selector.matches(&pod.labels)
                })
                .collect();
            policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            policies
        };
        let ingress = selecting(PolicyType::Ingress);
        if !ingress.is_empty() {
            let chain = format!("ingress_{}", ip_ident(pod.ip));
            let mut lines = Vec::new();
            for policy in ingress {
                for rule in &policy.ingress {
                    lines.extend(ctx.ingress_lines(policy, rule, pod));
                }
            }
            lines.push("drop".to_string());
            ingress_map.push(format!("{} : jump {chain}", pod.ip));
            chains.push((chain, dedup(lines)));
        }
        let egress = selecting(PolicyType::Egress);
        if !egress.is_empty() {
            let chain = format!("egress_{}", ip_ident(pod.ip));
            let mut lines = Vec::new();
            for policy in egress {
                for rule in &policy.egress {
                    lines.extend(ctx.egress_lines(policy, rule));
                }
            }
            lines.push("drop".to_string());
            egress_map.push(format!("{} : jump {chain}", pod.ip));
            chains.push((chain, dedup(lines)));
        }
    }

    let mut forward = vec![
        "type filter hook forward priority filter; policy accept;".to_string(),
        "ct state established,related accept".to_string(),
    ];
    let node_ips: BTreeSet<Ipv4Addr> = table.node_ips.iter().copied().collect();
    if !node_ips.is_empty() {
        forward.push(format!("ip saddr {} accept", set(node_ips)));
    }
    if !egress_map.is_empty() {
        forward.push(format!("ip saddr vmap {{ {} }}", egress_map.join(", ")));
    }
    if !ingress_map.is_empty() {
        forward.push(format!("ip daddr vmap {{ {} }}", ingress_map.join(", ")));
    }

    let mut out = String::new();
    let _ = writeln!(out, "table inet {name} {{}}");
    let _ = writeln!(out, "delete table inet {name}");
    let _ = writeln!(out, "table inet {name} {{");
    for (chain, lines) in std::iter::once(("forward".to_string(), forward)).chain(chains) {
        let _ = writeln!(out, "\tchain {chain} {{");
        for line in lines {
            let _ = writeln!(out, "\t\t{line}");
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
    out
}

/// `10.42.1.5` → `10_42_1_5`, for chain names.
fn ip_ident(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "_")
}

/// An address or an anonymous set of them.
fn set<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if items.len() == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

/// Drops repeated lines (two policies allowing the same thing), keeping the
/// first of each.
fn dedup(lines: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    lines
        .into_iter()
        .filter(|l| seen.insert(l.clone()))
        .collect()
}

/// `saddr` for ingress (who sends), `daddr` for egress (who receives).
#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

impl Side {
    fn field(self) -> &'static str {
        match self {
            Side::Source => "ip saddr",
            Side::Destination => "ip daddr",
        }
    }
}

/// Lookups shared by every rule.
struct Context<'a> {
    state: &'a ClusterState,
    namespace_labels: HashMap<&'a str, &'a BTreeMap<String, String>>,
    no_labels: BTreeMap<String, String>,
}

impl<'a> Context<'a> {
    fn new(state: &'a ClusterState) -> Context<'a> {
        Context {
            state,
            namespace_labels: state
                .namespaces
                .iter()
                .map(|n| (n.name.as_str(), &n.labels))
                .collect(),
            no_labels: BTreeMap::new(),
        }
    }

    /// The pods a `Pods` peer of a policy in `namespace` designates.
    fn peer_pods(&self, namespace: &str, peer: &Peer) -> Vec<&'a PolicyPod> {
        let Peer::Pods {
            namespace_selector,
            pod_selector,
        } = peer
        else {
            return Vec::new();
        };
        self.state
            .pods
            .iter()
            .filter(|pod| {
                let in_namespace = match namespace_selector {
                    None => pod.namespace == namespace,
                    Some(selector) => selector.matches(
                        self.namespace_labels
                            .get(pod.namespace.as_str())
                            .copied()
                            .unwrap_or(&self.no_labels),
                    ),
                };
                in_namespace && pod_selector.matches(&pod.labels)
            })
            .collect()
    }

    /// The address matches of a rule's peers: one set for all its pod
    /// peers, one match per address block. `[""]` for "every peer", `[]`
    /// when no peer can match.
    fn address_matches(&self, namespace: &str, rule: &Rule, side: Side) -> Vec<String> {
        let Some(peers) = &rule.peers else {
            return vec![String::new()];
        };
        let mut matches = Vec::new();
        let ips: BTreeSet<Ipv4Addr> = peers
            .iter()
            .flat_map(|peer| self.peer_pods(namespace, peer))
            .map(|pod| pod.ip)
            .collect();
        if !ips.is_empty() {
            matches.push(format!("{} {}", side.field(), set(ips)));
        }
        for peer in peers {
            if let Peer::IpBlock { cidr, except } = peer {
                matches.push(block_match(side, cidr, except));
            }
        }
        matches
    }

    /// What an ingress rule of `policy` lets into the local `pod`.
    fn ingress_lines(&self, policy: &NetworkPolicy, rule: &Rule, pod: &PolicyPod) -> Vec<String> {
        let sources = self.address_matches(&policy.namespace, rule, Side::Source);
        let ports: Vec<String> = if rule.ports.is_empty() {
            vec![String::new()]
        } else {
            rule.ports
                .iter()
                .filter_map(|port| port_match(port, Some(pod)))
                .collect()
        };
        let mut lines = Vec::new();
        for source in &sources {
            for port in &ports {
                lines.push(line(&[source, port, "accept"]));
            }
        }
        lines
    }

    /// What an egress rule of `policy` lets a selected local pod send.
    /// Named ports belong to the destination pod: they are resolved for
    /// each pod the rule's peers cover, and pods sharing a number share a
    /// line.
    fn egress_lines(&self, policy: &NetworkPolicy, rule: &Rule) -> Vec<String> {
        let destinations = self.address_matches(&policy.namespace, rule, Side::Destination);
        if rule.ports.is_empty() {
            return destinations.iter().map(|d| line(&[d, "return"])).collect();
        }
        let mut lines = Vec::new();
        for port in &rule.ports {
            if let Some(PortRef::Name(_)) = port.port {
                let mut by_match: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
                for pod in self.covered_pods(&policy.namespace, rule) {
                    if let Some(matched) = port_match(port, Some(pod)) {
                        by_match.entry(matched).or_default().insert(pod.ip);
                    }
                }
                for (matched, ips) in by_match {
                    let to = format!("{} {}", Side::Destination.field(), set(ips));
                    lines.push(line(&[&to, &matched, "return"]));
                }
            } else if let Some(matched) = port_match(port, None) {
                for d in &destinations {
                    lines.push(line(&[d, &matched, "return"]));
                }
            }
        }
        lines
    }

    /// Every pod a rule's peers cover: pods its selectors pick, and pods
    /// whose address lies in one of its blocks.
    fn covered_pods(&self, namespace: &str, rule: &Rule) -> Vec<&'a PolicyPod> {
        let Some(peers) = &rule.peers else {
            return self.state.pods.iter().collect();
        };
        let mut pods: Vec<&PolicyPod> = Vec::new();
        for peer in peers {
            match peer {
                Peer::Pods { .. } => pods.extend(self.peer_pods(namespace, peer)),
                Peer::IpBlock { cidr, except } => {
                    pods.extend(self.state.pods.iter().filter(|p| {
                        cidr.contains(p.ip) && !except.iter().any(|e| e.contains(p.ip))
                    }))
                }
            }
        }
        pods.sort_by_key(|p| p.ip);
        pods.dedup_by_key(|p| p.ip);
        pods
    }
}

/// `ip saddr 10.0.0.0/8 ip saddr != { 10.1.0.0/16 }`. Exceptions inside
/// another exception are left out: nft refuses overlapping intervals in
/// one set.
fn block_match(side: Side, cidr: &Ipv4Cidr, except: &[Ipv4Cidr]) -> String {
    let field = side.field();
    let mut kept: Vec<Ipv4Cidr> = Vec::new();
    let mut sorted: Vec<Ipv4Cidr> = except.to_vec();
    // Wider first, so that a narrower one finds its container already kept.
    sorted.sort_by_key(|c| (c.prefix(), c.network()));
    for e in sorted {
        if !kept.iter().any(|k| k.contains_cidr(&e)) {
            kept.push(e);
        }
    }
    kept.sort_by_key(|c| c.network());
    if kept.is_empty() {
        format!("{field} {cidr}")
    } else {
        format!("{field} {cidr} {field} != {}", set(kept))
    }
}

/// The match for one `ports` entry, the destination pod's named ports
/// resolving a name (a name without a pod, or one the pod lacks, matches
/// nothing: `None`). A range whose end is before its start matches nothing.
fn port_match(port: &PortMatch, destination: Option<&PolicyPod>) -> Option<String> {
    let proto = port.protocol.nft();
    let number = match &port.port {
        None => return Some(format!("meta l4proto {proto}")),
        Some(PortRef::Number(n)) => *n,
        Some(PortRef::Name(name)) => {
            destination?
                .ports
                .iter()
                .find(|p| &p.name == name && p.protocol == port.protocol)?
                .port
        }
    };
    match port.end_port {
        Some(end) if end > number => Some(format!("meta l4proto {proto} th dport {number}-{end}")),
        Some(end) if end < number => None,
        _ => Some(format!("meta l4proto {proto} th dport {number}")),
    }
}

fn line(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}
