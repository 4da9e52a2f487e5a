//! What the proxy programs, as plain data: one [`ServicePort`] per port of
//! a Service that has a cluster IP, with the [`Endpoint`]s behind it. The
//! node agent translates Services and EndpointSlices into these; nothing
//! here knows about the Kubernetes API types.

use std::fmt;
use std::net::Ipv4Addr;

use crate::NetworkError;

/// A Service port's transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The protocol as nftables spells it (`tcp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The API's spelling (`TCP`, `UDP`, `SCTP`; absent means TCP).
    pub fn from_api(value: Option<&str>) -> Result<Protocol, NetworkError> {
        match value.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(NetworkError::InvalidConfig(format!(
                "unsupported protocol {other:?} (expected TCP, UDP or SCTP)"
            ))),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.nft())
    }
}

/// Which port of which Service: the unit the proxy programs (kube-proxy's
/// `ServicePortName`). An unnamed port (a Service with a single port) has
/// an empty `port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
    pub protocol: Protocol,
}

impl ServicePortName {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        port: impl Into<String>,
        protocol: Protocol,
    ) -> ServicePortName {
        ServicePortName {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
            protocol,
        }
    }

    /// Checks that the parts are what the API allows (lowercase DNS labels
    /// and IANA service names: ASCII letters, digits and `-`), which is also
    /// what makes them safe inside nftables identifiers.
    pub(crate) fn validate(&self) -> Result<(), NetworkError> {
        let label = |what: &str, value: &str, may_be_empty: bool| {
            let ok = (may_be_empty || !value.is_empty())
                && value.len() <= 63
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if ok {
                Ok(())
            } else {
                Err(NetworkError::InvalidConfig(format!(
                    "service {self}: {what} {value:?} is not a lowercase DNS label"
                )))
            }
        };
        label("namespace", &self.namespace, false)?;
        label("name", &self.name, false)?;
        label("port name", &self.port, true)
    }
}

impl fmt::Display for ServicePortName {
    /// `namespace/name:port` (`:port` only for named ports), as kube-proxy
    /// logs them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// One port of a Service with everything the rules need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    /// `spec.clusterIPs` (IPv4 ones). Empty for headless and ExternalName
    /// Services, which get no rules at all.
    pub cluster_ips: Vec<Ipv4Addr>,
    /// `spec.ports[].port`.
    pub port: u16,
    /// `spec.ports[].nodePort`, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` of a LoadBalancer Service.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub session_affinity: Option<u32>,
    /// `externalTrafficPolicy: Local` (meaningful only when the Service is
    /// reachable from outside: node port, external or load-balancer IPs).
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
}

impl ServicePort {
    /// A ClusterIP Service port with the defaults for everything else.
    pub fn cluster_ip(name: ServicePortName, cluster_ip: Ipv4Addr, port: u16) -> ServicePort {
        ServicePort {
            name,
            cluster_ips: vec![cluster_ip],
            port,
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            session_affinity: None,
            external_policy_local: false,
            internal_policy_local: false,
        }
    }

    /// Whether traffic from outside the cluster can reach it (a node port,
    /// external IPs or load-balancer IPs).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// `externalTrafficPolicy: Local` where it applies.
    pub fn external_policy_is_local(&self) -> bool {
        self.external_policy_local && self.externally_accessible()
    }
}

/// One backend of a Service port, from an EndpointSlice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// The resolved target port (named target ports are resolved by the
    /// EndpointSlice's ports).
    pub port: u16,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// The endpoint's `nodeName` is this node.
    pub is_local: bool,
}

impl Endpoint {
    /// A ready endpoint.
    pub fn ready(ip: Ipv4Addr, port: u16, is_local: bool) -> Endpoint {
        Endpoint {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            is_local,
        }
    }
}

/// A Service port and its endpoints: what one sync programs for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceState {
    pub port: ServicePort,
    pub endpoints: Vec<Endpoint>,
}

/// The endpoints traffic may go to, from a candidate list: the ready ones,
/// or when none is ready, those still serving while terminating (so that
/// connections keep working through a rolling update that briefly leaves
/// no ready pod, as kube-proxy does). Sorted and without duplicates, so
/// that equal inputs render equal rules.
pub(crate) fn usable<'a>(candidates: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<Endpoint> {
    let mut chosen: Vec<Endpoint> = candidates.clone().filter(|e| e.ready).copied().collect();
    if chosen.is_empty() {
        chosen = candidates
            .filter(|e| e.serving && e.terminating)
            .copied()
            .collect();
    }
    chosen.sort_by_key(|e| (e.ip, e.port));
    chosen.dedup_by_key(|e| (e.ip, e.port));
    chosen
}

/// The endpoints of a service port by traffic policy (kube-proxy's
/// `CategorizeEndpoints`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Categorized {
    /// Used by "Cluster" policies: every usable endpoint; empty when no
    /// cluster policy applies.
    pub cluster: Vec<Endpoint>,
    /// Used by "Local" policies: the usable endpoints on this node; empty
    /// when no local policy applies.
    pub local: Vec<Endpoint>,
    /// Whether any usable endpoint exists anywhere.
    pub any: bool,
}

pub(crate) fn categorize(state: &ServiceState) -> Categorized {
    let svc = &state.port;
    let all = usable(state.endpoints.iter());
    // Cluster endpoints serve internal traffic under "Cluster", and any
    // external traffic: even under "Local", pods and the node itself reach
    // external addresses through the whole cluster (the short-circuit).
    let uses_cluster = !svc.internal_policy_local || svc.externally_accessible();
    let uses_local = svc.internal_policy_local || svc.external_policy_is_local();
    let local = if uses_local {
        usable(state.endpoints.iter().filter(|e| e.is_local))
    } else {
        Vec::new()
    };
    Categorized {
        any: !all.is_empty(),
        cluster: if uses_cluster { all } else { Vec::new() },
        local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, ready: bool, serving: bool, terminating: bool, is_local: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 42, 0, last),
            port: 80,
            ready,
            serving,
            terminating,
            is_local,
        }
    }

    fn state(svc: ServicePort, endpoints: Vec<Endpoint>) -> ServiceState {
        ServiceState {
            port: svc,
            endpoints,
        }
    }

    fn web() -> ServicePort {
        ServicePort::cluster_ip(
            ServicePortName::new("default", "web", "", Protocol::Tcp),
            Ipv4Addr::new(10, 43, 0, 5),
            80,
        )
    }

    #[test]
    fn ready_endpoints_win_and_terminating_ones_are_the_fallback() {
        let eps = [
            ep(3, true, true, false, false),
            ep(2, false, true, true, false),
            ep(1, false, false, false, false),
            ep(3, true, true, false, false),
        ];
        let used = usable(eps.iter());
        assert_eq!(used, vec![eps[0]], "ready only, once");
        let eps = [
            ep(2, false, true, true, false),
            ep(1, false, false, true, false),
            ep(4, false, true, false, false),
        ];
        // Serving and terminating: yes. Terminating but not serving, or
        // serving but not terminating (not ready yet): no.
        assert_eq!(usable(eps.iter()), vec![eps[0]]);
        assert!(usable([ep(1, false, false, false, true)].iter()).is_empty());
    }

    #[test]
    fn categories_follow_the_traffic_policies() {
        let eps = vec![
            ep(1, true, true, false, true),
            ep(2, true, true, false, false),
        ];
        let c = categorize(&state(web(), eps.clone()));
        assert_eq!(c.cluster.len(), 2);
        assert!(c.local.is_empty(), "no local policy, no local list");
        assert!(c.any);

        let mut itp = web();
        itp.internal_policy_local = true;
        let c = categorize(&state(itp.clone(), eps.clone()));
        assert!(c.cluster.is_empty(), "internal Local and not external");
        assert_eq!(c.local, vec![eps[0]]);

        // externalTrafficPolicy only counts for externally reachable ports.
        let mut etp = web();
        etp.external_policy_local = true;
        assert!(!etp.external_policy_is_local());
        etp.node_port = Some(30080);
        assert!(etp.external_policy_is_local());
        let c = categorize(&state(etp, eps.clone()));
        assert_eq!(c.cluster.len(), 2, "kept for the short-circuit");
        assert_eq!(c.local, vec![eps[0]]);

        // Local falls back to local terminating endpoints on its own.
        let eps = vec![
            ep(1, false, true, true, true),
            ep(2, true, true, false, false),
        ];
        let c = categorize(&state(itp, eps.clone()));
        assert_eq!(c.local, vec![eps[0]]);
        assert!(c.any);
    }

    #[test]
    fn names_are_checked_and_printed() {
        let name = ServicePortName::new("kube-system", "kube-dns", "dns-tcp", Protocol::Tcp);
        name.validate().unwrap();
        assert_eq!(name.to_string(), "kube-system/kube-dns:dns-tcp");
        let unnamed = ServicePortName::new("default", "web", "", Protocol::Udp);
        unnamed.validate().unwrap();
        assert_eq!(unnamed.to_string(), "default/web");
        for bad in [
            ServicePortName::new("", "web", "", Protocol::Tcp),
            ServicePortName::new("default", "Web", "", Protocol::Tcp),
            ServicePortName::new("default", "web", "a b", Protocol::Tcp),
            ServicePortName::new("default", "web/x", "", Protocol::Tcp),
            ServicePortName::new("default", "web", "x;y", Protocol::Tcp),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(Protocol::from_api(None).unwrap(), Protocol::Tcp);
        assert_eq!(Protocol::from_api(Some("SCTP")).unwrap(), Protocol::Sctp);
        assert!(Protocol::from_api(Some("ICMP")).is_err());
    }
}
