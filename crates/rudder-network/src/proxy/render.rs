//! The nftables rules of the proxy: the fixed part of the table (hooks,
//! dispatch maps, masquerading, rejects) and the chains, sets and map
//! elements of one Service port, kept apart so that a partial sync can
//! compare a port's old and new rules and rewrite only what differs.
//!
//! The layout follows kube-proxy's nftables mode:
//!
//! - `services` looks the destination up in `service-ips`
//!   (`daddr . l4proto . dport`, cluster, external and load-balancer IPs)
//!   and, for the node's own addresses, in `service-nodeports`
//!   (`l4proto . dport`); both map to a `goto` to the port's chain. It runs
//!   from `prerouting` (pods, other hosts) and `output` (the node itself).
//! - `svc-…` balances over every usable endpoint, `local-…` over the
//!   node's own ones, with `numgen random mod N`; with ClientIP affinity,
//!   a client found in an endpoint's dynamic set goes straight back to it.
//! - `ext-…` is where node ports and external/load-balancer IPs land: it
//!   marks the traffic for masquerading and goes to `svc-…`, or under
//!   `externalTrafficPolicy: Local` keeps the client's address and goes to
//!   `local-…` (dropping the traffic when no endpoint is local), except for
//!   pods and the node itself, which use the whole cluster.
//! - `ep-…` marks hairpin traffic (an endpoint reaching itself through the
//!   Service) for masquerading, records the client for affinity, DNATs.
//! - Before any NAT, `endpoints-check` rejects new connections to Service
//!   ports without endpoints (TCP reset, else ICMP port unreachable) and
//!   drops those of `internalTrafficPolicy: Local` ports without local
//!   endpoints (`no-endpoint-services`, `no-endpoint-nodeports`). It runs
//!   from `prerouting` (reject is allowed there since Linux 5.9) and
//!   `output`, so it does not depend on the node having a route for the
//!   service CIDR.
//! - After DNAT, new connections still addressed to a cluster IP (a port
//!   the Service does not have) are rejected (`cluster-ips`).
//! - `nat-postrouting` masquerades what was marked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

use super::model::{categorize, Endpoint, ServicePortName, ServiceState};
use crate::{Ipv4Cidr, NetworkError};

/// The packet mark bit that asks `nat-postrouting` to masquerade (the bit
/// kube-proxy uses, so that the two never run on one node unnoticed).
pub(crate) const MASQUERADE_MARK: u32 = 0x4000;

pub(crate) const SERVICE_IPS: &str = "service-ips";
pub(crate) const SERVICE_NODEPORTS: &str = "service-nodeports";
pub(crate) const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub(crate) const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub(crate) const CLUSTER_IPS: &str = "cluster-ips";
const REJECT_CHAIN: &str = "reject-chain";

/// How traffic from this node's pods is recognized (kube-proxy's
/// `--detect-local-mode`): pods' traffic to a cluster IP keeps its source,
/// other traffic is masqueraded; under `externalTrafficPolicy: Local`, pods
/// still reach external addresses through the whole cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalDetector {
    /// Not known: cluster-IP traffic is never masqueraded for coming from
    /// outside, and there is no short-circuit for pods.
    None,
    /// The cluster's pod network (`--cluster-cidr`).
    ClusterCidr(Ipv4Cidr),
    /// The bridge the node's pods hang off (traffic entering from it).
    Bridge(String),
}

impl LocalDetector {
    fn check(&self) -> Result<(), NetworkError> {
        match self {
            LocalDetector::Bridge(name) => crate::validate_ifname(name),
            _ => Ok(()),
        }
    }

    fn is_local(&self) -> Option<String> {
        match self {
            LocalDetector::None => None,
            LocalDetector::ClusterCidr(cidr) => Some(format!("ip saddr {cidr}")),
            LocalDetector::Bridge(name) => Some(format!("iifname \"{name}\"")),
        }
    }

    fn is_not_local(&self) -> Option<String> {
        match self {
            LocalDetector::None => None,
            LocalDetector::ClusterCidr(cidr) => Some(format!("ip saddr != {cidr}")),
            LocalDetector::Bridge(name) => Some(format!("iifname != \"{name}\"")),
        }
    }
}

/// What renders the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RenderConfig {
    pub local: LocalDetector,
    /// Masquerade every connection to a cluster IP (kube-proxy's
    /// `--masquerade-all`): needed when bridged replies would bypass the
    /// host's conntrack (no `br_netfilter`).
    pub masquerade_all: bool,
}

impl RenderConfig {
    pub(crate) fn check(&self) -> Result<(), NetworkError> {
        self.local.check()
    }
}

/// An element of one of the table's maps or sets: a map element has a
/// verdict, a set element none.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ElementKey {
    pub collection: &'static str,
    pub key: String,
}

/// The rules of one Service port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rendered {
    /// Chain name → its rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Affinity set name → its timeout in seconds.
    pub sets: BTreeMap<String, u32>,
    /// Map and set elements, with their verdicts.
    pub elements: Vec<(ElementKey, Option<String>)>,
}

/// `namespace/name/protocol/port`: unique per Service port, and made of
/// characters nftables accepts in a name (checked by `validate`).
fn chain_base(name: &ServicePortName) -> String {
    format!(
        "{}/{}/{}/{}",
        name.namespace, name.name, name.protocol, name.port
    )
}

fn endpoint_suffix(ep: &Endpoint) -> String {
    format!("__{}/{}", ep.ip, ep.port)
}

fn mark() -> String {
    format!("meta mark set meta mark | {MASQUERADE_MARK:#010x}")
}

/// Renders one Service port. Headless and ExternalName Services (no
/// cluster IP) render to nothing.
pub(crate) fn service(
    config: &RenderConfig,
    state: &ServiceState,
) -> Result<Rendered, NetworkError> {
    let svc = &state.port;
    svc.name.validate()?;
    let mut out = Rendered::default();
    if svc.cluster_ips.is_empty() {
        return Ok(out);
    }
    let invalid = |why: String| NetworkError::InvalidConfig(format!("service {}: {why}", svc.name));
    if svc.port == 0 {
        return Err(invalid("port 0".into()));
    }
    if svc.node_port == Some(0) {
        return Err(invalid("node port 0".into()));
    }
    if let Some(timeout) = svc.session_affinity {
        if !(1..=86_400).contains(&timeout) {
            return Err(invalid(format!(
                "session affinity timeout {timeout}s is outside 1..=86400"
            )));
        }
    }
    if let Some(ep) = state.endpoints.iter().find(|e| e.port == 0) {
        return Err(invalid(format!("endpoint {} has port 0", ep.ip)));
    }

    let proto = svc.name.protocol.nft();
    let base = chain_base(&svc.name);
    let cluster_chain = format!("svc-{base}");
    let local_chain = format!("local-{base}");
    let ext_chain = format!("ext-{base}");
    let ep_chain = |ep: &Endpoint| format!("ep-{base}{}", endpoint_suffix(ep));
    let aff_set = |ep: &Endpoint| format!("aff-{base}{}", endpoint_suffix(ep));

    let endpoints = categorize(state);
    let uses_cluster_chain = !endpoints.cluster.is_empty();
    let uses_local_chain = !endpoints.local.is_empty();
    let internal_local = svc.internal_policy_local;
    let external_local = svc.external_policy_is_local();
    let has_internal = endpoints.any && (!internal_local || uses_local_chain);
    let has_external = endpoints.any && (!external_local || uses_local_chain);
    let uses_ext_chain = endpoints.any && svc.externally_accessible();
    let internal_chain = if internal_local {
        &local_chain
    } else {
        &cluster_chain
    };
    let reject = format!("goto {REJECT_CHAIN}");

    let mut element = |collection: &'static str, key: String, value: Option<String>| {
        out.elements.push((ElementKey { collection, key }, value));
    };
    for ip in &svc.cluster_ips {
        element(CLUSTER_IPS, ip.to_string(), None);
        let key = format!("{ip} . {proto} . {}", svc.port);
        if has_internal {
            element(SERVICE_IPS, key, Some(format!("goto {internal_chain}")));
        } else if endpoints.any {
            // internalTrafficPolicy Local without a local endpoint.
            element(NO_ENDPOINT_SERVICES, key, Some("drop".into()));
        } else {
            element(NO_ENDPOINT_SERVICES, key, Some(reject.clone()));
        }
    }
    let mut external: Vec<Ipv4Addr> = Vec::new();
    for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
        if !external.contains(ip) && !svc.cluster_ips.contains(ip) {
            external.push(*ip);
        }
    }
    for ip in &external {
        let key = format!("{ip} . {proto} . {}", svc.port);
        if endpoints.any {
            element(SERVICE_IPS, key, Some(format!("goto {ext_chain}")));
        } else {
            element(NO_ENDPOINT_SERVICES, key, Some(reject.clone()));
        }
    }
    if let Some(node_port) = svc.node_port {
        let key = format!("{proto} . {node_port}");
        if endpoints.any {
            element(SERVICE_NODEPORTS, key, Some(format!("goto {ext_chain}")));
        } else {
            element(NO_ENDPOINT_NODEPORTS, key, Some(reject.clone()));
        }
    }

    // Cluster-IP traffic that does not come from a pod of ours (the node
    // itself, another host routing the service CIDR here) is masqueraded so
    // that the replies come back through this node.
    let mut internal_rules = Vec::new();
    if has_internal {
        let masquerade_if = if config.masquerade_all {
            Some(String::new())
        } else {
            config.local.is_not_local().map(|m| format!(" {m}"))
        };
        if let Some(condition) = masquerade_if {
            for ip in &svc.cluster_ips {
                internal_rules.push(format!(
                    "ip daddr {ip} {proto} dport {}{condition} {}",
                    svc.port,
                    mark()
                ));
            }
        }
    }
    let affinity = svc.session_affinity;
    let balance = |chain: &str, eps: &[Endpoint], prefix: Vec<String>| {
        let mut rules = if chain == internal_chain.as_str() {
            prefix
        } else {
            Vec::new()
        };
        if affinity.is_some() {
            for ep in eps {
                rules.push(format!("ip saddr @{} goto {}", aff_set(ep), ep_chain(ep)));
            }
        }
        if let [only] = eps {
            rules.push(format!("goto {}", ep_chain(only)));
        } else {
            let mut vmap = String::new();
            for (i, ep) in eps.iter().enumerate() {
                if i > 0 {
                    vmap.push_str(", ");
                }
                let _ = write!(vmap, "{i} : goto {}", ep_chain(ep));
            }
            rules.push(format!("numgen random mod {} vmap {{ {vmap} }}", eps.len()));
        }
        rules
    };
    if uses_cluster_chain {
        let rules = balance(&cluster_chain, &endpoints.cluster, internal_rules.clone());
        out.chains.insert(cluster_chain.clone(), rules);
    }
    if uses_local_chain {
        let rules = balance(&local_chain, &endpoints.local, internal_rules);
        out.chains.insert(local_chain.clone(), rules);
    }

    if uses_ext_chain {
        let mut rules = Vec::new();
        if !external_local {
            // The endpoint may be on another node: masquerade, so that its
            // reply comes back here to be un-DNATed.
            rules.push(mark());
            rules.push(format!("goto {cluster_chain}"));
        } else {
            // The client's address is kept: only local endpoints qualify.
            // Pods and the node itself are not "external", they go through
            // the whole cluster as if via an outside load balancer.
            if let Some(local) = config.local.is_local() {
                rules.push(format!("{local} goto {cluster_chain}"));
            }
            // The node's own connections have a node address as source
            // (possibly the very address they connect to): masquerade them.
            rules.push(format!("fib saddr type local {}", mark()));
            rules.push(format!("fib saddr type local goto {cluster_chain}"));
            if has_external {
                rules.push(format!("goto {local_chain}"));
            } else {
                rules.push("drop".into());
            }
        }
        out.chains.insert(ext_chain, rules);
    }

    let used: BTreeSet<&Endpoint> = endpoints.cluster.iter().chain(&endpoints.local).collect();
    for ep in used {
        let mut rules = vec![format!("ip saddr {} {}", ep.ip, mark())];
        if affinity.is_some() {
            rules.push(format!("update @{} {{ ip saddr }}", aff_set(ep)));
        }
        rules.push(format!(
            "meta l4proto {proto} dnat to {}:{}",
            ep.ip, ep.port
        ));
        out.chains.insert(ep_chain(ep), rules);
        if let Some(timeout) = affinity {
            out.sets.insert(aff_set(ep), timeout);
        }
    }
    Ok(out)
}

/// The declaration of an affinity set (what `add set` takes after the name).
pub(crate) fn affinity_set_spec(timeout: u32) -> String {
    format!("{{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}")
}

/// The fixed part of the table: maps and sets (empty), the hooks and the
/// shared chains, as the lines of a `table ip NAME { … }` block.
pub(crate) fn base_table() -> Vec<String> {
    let mark = MASQUERADE_MARK;
    let lines = [
        format!("map {SERVICE_IPS} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}"),
        format!("map {SERVICE_NODEPORTS} {{ type inet_proto . inet_service : verdict; }}"),
        format!("map {NO_ENDPOINT_SERVICES} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}"),
        format!("map {NO_ENDPOINT_NODEPORTS} {{ type inet_proto . inet_service : verdict; }}"),
        format!("set {CLUSTER_IPS} {{ type ipv4_addr; }}"),
        format!(
            "chain services {{ \
             ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}; \
             fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{SERVICE_NODEPORTS}; }}"
        ),
        format!(
            "chain masquerading {{ \
             meta mark & {mark:#010x} == 0 return; \
             meta mark set meta mark ^ {mark:#010x}; \
             masquerade fully-random; }}"
        ),
        format!("chain {REJECT_CHAIN} {{ meta l4proto tcp reject with tcp reset; reject; }}"),
        format!(
            "chain endpoints-check {{ \
             ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}; \
             fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}; }}"
        ),
        "chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }".into(),
        "chain nat-output { type nat hook output priority -100; policy accept; jump services; }".into(),
        "chain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }".into(),
        "chain filter-prerouting { type filter hook prerouting priority -110; policy accept; ct state new jump endpoints-check; }".into(),
        "chain filter-output { type filter hook output priority -110; policy accept; ct state new jump endpoints-check; }".into(),
        format!(
            "chain filter-forward {{ type filter hook forward priority -110; policy accept; \
             ct state new ip daddr @{CLUSTER_IPS} goto {REJECT_CHAIN}; }}"
        ),
        format!(
            "chain filter-output-post-dnat {{ type filter hook output priority -90; policy accept; \
             ct state new ip daddr @{CLUSTER_IPS} goto {REJECT_CHAIN}; }}"
        ),
    ];
    lines.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::{Protocol, ServicePort};

    fn config() -> RenderConfig {
        RenderConfig {
            local: LocalDetector::ClusterCidr("10.42.0.0/16".parse().unwrap()),
            masquerade_all: false,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn web(port_name: &str) -> ServicePort {
        ServicePort::cluster_ip(
            ServicePortName::new("default", "web", port_name, Protocol::Tcp),
            ip("10.43.0.5"),
            80,
        )
    }

    fn ep(last: u8, is_local: bool) -> Endpoint {
        Endpoint::ready(Ipv4Addr::new(10, 42, 0, last), 8080, is_local)
    }

    fn render(svc: ServicePort, endpoints: Vec<Endpoint>) -> Rendered {
        service(
            &config(),
            &ServiceState {
                port: svc,
                endpoints,
            },
        )
        .unwrap()
    }

    fn elements(r: &Rendered) -> Vec<String> {
        r.elements
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{}: {} : {v}", k.collection, k.key),
                None => format!("{}: {}", k.collection, k.key),
            })
            .collect()
    }

    #[test]
    fn cluster_ip_balances_over_ready_endpoints() {
        let r = render(web("http"), vec![ep(2, true), ep(1, false)]);
        assert_eq!(
            elements(&r),
            [
                "cluster-ips: 10.43.0.5",
                "service-ips: 10.43.0.5 . tcp . 80 : goto svc-default/web/tcp/http",
            ]
        );
        assert_eq!(
            r.chains["svc-default/web/tcp/http"],
            [
                "ip daddr 10.43.0.5 tcp dport 80 ip saddr != 10.42.0.0/16 meta mark set meta mark | 0x00004000",
                "numgen random mod 2 vmap { 0 : goto ep-default/web/tcp/http__10.42.0.1/8080, 1 : goto ep-default/web/tcp/http__10.42.0.2/8080 }",
            ]
        );
        assert_eq!(
            r.chains["ep-default/web/tcp/http__10.42.0.1/8080"],
            [
                "ip saddr 10.42.0.1 meta mark set meta mark | 0x00004000",
                "meta l4proto tcp dnat to 10.42.0.1:8080",
            ]
        );
        assert_eq!(r.chains.len(), 3);
        assert!(r.sets.is_empty());
    }

    #[test]
    fn a_single_endpoint_is_a_plain_goto() {
        let r = render(web(""), vec![ep(1, false)]);
        assert_eq!(
            r.chains["svc-default/web/tcp/"].last().unwrap(),
            "goto ep-default/web/tcp/__10.42.0.1/8080"
        );
    }

    #[test]
    fn no_endpoints_rejects_and_renders_no_chains() {
        let mut svc = web("");
        svc.node_port = Some(30080);
        svc.load_balancer_ips = vec![ip("192.168.1.10")];
        let not_ready = Endpoint {
            ready: false,
            serving: false,
            ..ep(1, true)
        };
        let r = render(svc, vec![not_ready]);
        assert!(r.chains.is_empty());
        assert_eq!(
            elements(&r),
            [
                "cluster-ips: 10.43.0.5",
                "no-endpoint-services: 10.43.0.5 . tcp . 80 : goto reject-chain",
                "no-endpoint-services: 192.168.1.10 . tcp . 80 : goto reject-chain",
                "no-endpoint-nodeports: tcp . 30080 : goto reject-chain",
            ]
        );
    }

    #[test]
    fn terminating_endpoints_serve_when_none_is_ready() {
        let terminating = Endpoint {
            ready: false,
            serving: true,
            terminating: true,
            ..ep(3, false)
        };
        let r = render(web(""), vec![terminating]);
        assert!(r.chains.contains_key("ep-default/web/tcp/__10.42.0.3/8080"));
    }

    #[test]
    fn node_ports_and_load_balancers_masquerade_under_cluster_policy() {
        let mut svc = web("");
        svc.node_port = Some(30080);
        svc.load_balancer_ips = vec![ip("10.99.0.11"), ip("10.99.0.12")];
        svc.external_ips = vec![ip("10.99.0.11")];
        let r = render(svc, vec![ep(1, false)]);
        assert_eq!(
            elements(&r)[2..],
            [
                "service-ips: 10.99.0.11 . tcp . 80 : goto ext-default/web/tcp/",
                "service-ips: 10.99.0.12 . tcp . 80 : goto ext-default/web/tcp/",
                "service-nodeports: tcp . 30080 : goto ext-default/web/tcp/",
            ]
        );
        assert_eq!(
            r.chains["ext-default/web/tcp/"],
            [
                "meta mark set meta mark | 0x00004000",
                "goto svc-default/web/tcp/"
            ]
        );
    }

    #[test]
    fn external_policy_local_keeps_sources_and_drops_without_local_endpoints() {
        let mut svc = web("");
        svc.node_port = Some(30081);
        svc.external_policy_local = true;
        let r = render(svc.clone(), vec![ep(1, true), ep(2, false)]);
        assert_eq!(
            r.chains["ext-default/web/tcp/"],
            [
                "ip saddr 10.42.0.0/16 goto svc-default/web/tcp/",
                "fib saddr type local meta mark set meta mark | 0x00004000",
                "fib saddr type local goto svc-default/web/tcp/",
                "goto local-default/web/tcp/",
            ]
        );
        assert_eq!(
            r.chains["local-default/web/tcp/"],
            ["goto ep-default/web/tcp/__10.42.0.1/8080"]
        );
        // Internal traffic still uses every endpoint.
        assert!(r.chains["svc-default/web/tcp/"][1].contains("numgen random mod 2"));

        let r = render(svc, vec![ep(2, false)]);
        assert_eq!(r.chains["ext-default/web/tcp/"].last().unwrap(), "drop");
        assert!(!r.chains.contains_key("local-default/web/tcp/"));
        assert!(elements(&r)
            .contains(&"service-nodeports: tcp . 30081 : goto ext-default/web/tcp/".to_string()));
    }

    #[test]
    fn internal_policy_local_uses_local_endpoints_or_drops() {
        let mut svc = ServicePort::cluster_ip(
            ServicePortName::new("kube-system", "kube-dns", "dns", Protocol::Udp),
            ip("10.43.0.10"),
            53,
        );
        svc.internal_policy_local = true;
        let dns =
            |last: u8, local: bool| Endpoint::ready(Ipv4Addr::new(10, 99, 0, last), 53, local);
        let r = render(svc.clone(), vec![dns(11, true), dns(12, false)]);
        assert_eq!(
            elements(&r)[1],
            "service-ips: 10.43.0.10 . udp . 53 : goto local-kube-system/kube-dns/udp/dns"
        );
        assert_eq!(
            r.chains["local-kube-system/kube-dns/udp/dns"],
            [
                "ip daddr 10.43.0.10 udp dport 53 ip saddr != 10.42.0.0/16 meta mark set meta mark | 0x00004000",
                "goto ep-kube-system/kube-dns/udp/dns__10.99.0.11/53",
            ]
        );
        assert!(!r.chains.contains_key("svc-kube-system/kube-dns/udp/dns"));
        assert_eq!(r.chains.len(), 2);

        let r = render(svc, vec![dns(12, false)]);
        assert_eq!(
            elements(&r)[1],
            "no-endpoint-services: 10.43.0.10 . udp . 53 : drop"
        );
        assert!(r.chains.is_empty());
    }

    #[test]
    fn session_affinity_uses_one_dynamic_set_per_endpoint() {
        let mut svc = web("");
        svc.session_affinity = Some(10800);
        let r = render(svc, vec![ep(1, false), ep(2, false)]);
        assert_eq!(
            r.chains["svc-default/web/tcp/"][1..],
            [
                "ip saddr @aff-default/web/tcp/__10.42.0.1/8080 goto ep-default/web/tcp/__10.42.0.1/8080",
                "ip saddr @aff-default/web/tcp/__10.42.0.2/8080 goto ep-default/web/tcp/__10.42.0.2/8080",
                "numgen random mod 2 vmap { 0 : goto ep-default/web/tcp/__10.42.0.1/8080, 1 : goto ep-default/web/tcp/__10.42.0.2/8080 }",
            ]
        );
        assert_eq!(
            r.chains["ep-default/web/tcp/__10.42.0.2/8080"][1],
            "update @aff-default/web/tcp/__10.42.0.2/8080 { ip saddr }"
        );
        assert_eq!(r.sets.len(), 2);
        assert_eq!(r.sets["aff-default/web/tcp/__10.42.0.1/8080"], 10800);
        assert_eq!(
            affinity_set_spec(10800),
            "{ type ipv4_addr; flags dynamic,timeout; timeout 10800s; }"
        );
    }

    #[test]
    fn headless_services_render_nothing() {
        let mut svc = web("");
        svc.cluster_ips.clear();
        assert_eq!(render(svc, vec![ep(1, true)]), Rendered::default());
    }

    #[test]
    fn local_detection_by_bridge_or_none_and_masquerade_all() {
        let state = ServiceState {
            port: web(""),
            endpoints: vec![ep(1, true)],
        };
        let by_bridge = RenderConfig {
            local: LocalDetector::Bridge("rudder0".into()),
            masquerade_all: false,
        };
        let r = service(&by_bridge, &state).unwrap();
        assert_eq!(
            r.chains["svc-default/web/tcp/"][0],
            "ip daddr 10.43.0.5 tcp dport 80 iifname != \"rudder0\" meta mark set meta mark | 0x00004000"
        );
        let none = RenderConfig {
            local: LocalDetector::None,
            masquerade_all: false,
        };
        let r = service(&none, &state).unwrap();
        assert_eq!(r.chains["svc-default/web/tcp/"].len(), 1);
        let all = RenderConfig {
            local: LocalDetector::None,
            masquerade_all: true,
        };
        let r = service(&all, &state).unwrap();
        assert_eq!(
            r.chains["svc-default/web/tcp/"][0],
            "ip daddr 10.43.0.5 tcp dport 80 meta mark set meta mark | 0x00004000"
        );
        let bad = RenderConfig {
            local: LocalDetector::Bridge("br 0".into()),
            masquerade_all: false,
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn invalid_ports_are_errors() {
        let mut svc = web("");
        svc.session_affinity = Some(0);
        let state = ServiceState {
            port: svc,
            endpoints: vec![],
        };
        let e = service(&config(), &state).unwrap_err();
        assert!(e.to_string().contains("default/web"), "{e}");
        let state = ServiceState {
            port: web(""),
            endpoints: vec![Endpoint::ready(ip("10.42.0.1"), 0, true)],
        };
        assert!(service(&config(), &state).is_err());
    }

    #[test]
    fn udp_and_sctp_use_their_protocol() {
        let mut svc = web("");
        svc.name.protocol = Protocol::Sctp;
        let r = render(svc, vec![ep(1, false)]);
        assert!(r
            .chains
            .values()
            .flatten()
            .any(|rule| rule == "meta l4proto sctp dnat to 10.42.0.1:8080"));
        assert!(r.chains.contains_key("svc-default/web/sctp/"));
    }
}
