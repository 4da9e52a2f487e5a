//! The node's Service proxy (kube-proxy's role): Services and
//! EndpointSlices from the shared informers, translated into
//! `rudder_network::proxy`'s model and programmed into the node's nftables
//! table.
//!
//! Changes are coalesced: a burst of updates (a rollout touching many
//! slices) becomes one sync. The first sync waits until both informers
//! have listed everything and replaces the table whole, so after a restart
//! the previous table keeps serving until then; later syncs rewrite only
//! the Service ports that changed. A failure never stops the loop: it is
//! logged, reported as a Warning Event on the Services concerned, and
//! retried with back-off (as a full sync, unless the failure could be
//! pinned on particular Services, which are then left out until they
//! change).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use rudder_network::proxy::{
    self, BridgeNetfilter, Endpoint, LocalDetector, Protocol, Proxier, ProxyConfig, ServicePort,
    ServicePortName, ServiceState,
};
use rudder_runtime::events::{EventRecorder, EventType};
use rudder_runtime::informer::Informer;
use rudder_runtime::Informers;
use tokio::sync::Notify;

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services carrying this label are handled by another proxy (kube-proxy
/// skips them too).
const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The informer index of slices by `namespace/service`.
const SLICES_BY_SERVICE: &str = "proxy-service";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` unless set.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// How long changes are gathered before a sync.
const COALESCE: Duration = Duration::from_millis(100);
/// How often the table's presence is checked (someone may flush it).
const CHECK_PERIOD: Duration = Duration::from_secs(60);
/// Back-off after failed syncs.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Services told about one failure that could not be pinned on any.
const EVENTS_PER_FAILURE: usize = 20;

/// What the proxy needs to know about the node.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// This node's name: endpoints whose `nodeName` it is are local.
    pub node_name: String,
    /// How pods' traffic is recognized (the cluster CIDR, or the pod
    /// bridge).
    pub local: LocalDetector,
    /// The nftables table.
    pub table: String,
}

/// Runs the proxy until the process ends. Never returns early: a
/// configuration it cannot use is logged and the proxy stays off.
pub async fn run(client: kube::Client, informers: Informers, options: ProxyOptions) {
    let bridge_netfilter = match tokio::task::spawn_blocking(proxy::ensure_bridge_netfilter).await {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "enabling br_netfilter failed; masquerading all cluster-IP traffic");
            BridgeNetfilter::Unavailable
        }
        Err(e) => {
            tracing::warn!(error = %e, "enabling br_netfilter panicked; masquerading all cluster-IP traffic");
            BridgeNetfilter::Unavailable
        }
    };
    if bridge_netfilter == BridgeNetfilter::Unavailable {
        tracing::warn!("br_netfilter is unavailable: cluster-IP connections are masqueraded so that same-node replies pass conntrack");
    }
    let config = ProxyConfig {
        table: options.table.clone(),
        local: options.local.clone(),
        masquerade_all: bridge_netfilter == BridgeNetfilter::Unavailable,
    };
    let proxier = match Proxier::new(config) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "the service proxy's configuration is invalid; services get no rules");
            return;
        }
    };

    let services: Informer<Service> = informers.get();
    let slices: Informer<EndpointSlice> = informers.get();
    slices.add_index(SLICES_BY_SERVICE, |slice: &EndpointSlice| {
        slice
            .labels()
            .get(SERVICE_NAME_LABEL)
            .map(|svc| vec![format!("{}/{svc}", slice.namespace().unwrap_or_default())])
            .unwrap_or_default()
    });
    let changed = Arc::new(Notify::new());
    services.notify_on_change(&changed);
    slices.notify_on_change(&changed);
    services.start();
    slices.start();
    services.wait_synced().await;
    slices.wait_synced().await;

    let recorder = EventRecorder::new(client, "kube-proxy");
    let mut state = LoopState {
        proxier: Some(proxier),
        reported: HashMap::new(),
        recorder,
        services: services.clone(),
    };
    let mut retry: Option<Duration> = None;
    loop {
        let wanted = wanted_state(&services, &slices, &options.node_name);
        match state.sync(wanted).await {
            Ok(()) => retry = None,
            Err(()) => {
                retry = Some(retry.map_or(RETRY_MIN, |r| (r * 2).min(RETRY_MAX)));
            }
        }
        tokio::select! {
            () = changed.notified() => tokio::time::sleep(COALESCE).await,
            () = tokio::time::sleep(retry.unwrap_or(CHECK_PERIOD)) => {
                if retry.is_none() {
                    state.check_table().await;
                }
            }
        }
    }
}

struct LoopState {
    /// Out only while a sync runs on the blocking pool.
    proxier: Option<Proxier>,
    /// The last Warning told about each Service port, so that a problem
    /// that persists is not repeated on every sync.
    reported: HashMap<ServicePortName, String>,
    recorder: EventRecorder,
    services: Informer<Service>,
}

impl LoopState {
    async fn sync(&mut self, wanted: BTreeMap<ServicePortName, ServiceState>) -> Result<(), ()> {
        let mut proxier = self.proxier.take().expect("one sync at a time");
        let (proxier, wanted, result) = tokio::task::spawn_blocking(move || {
            let pending = proxier.pending(&wanted);
            let result = proxier.sync(&wanted).map_err(|e| (e, pending));
            (proxier, wanted, result)
        })
        .await
        .expect("the proxy sync does not panic");
        self.proxier = Some(proxier);
        match result {
            Ok(report) => {
                if report.full {
                    tracing::info!(
                        services = report.services,
                        commands = report.commands,
                        elapsed_ms = report.elapsed.as_millis() as u64,
                        "service proxy rules replaced"
                    );
                } else if report.changed > 0 {
                    tracing::debug!(
                        changed = report.changed,
                        commands = report.commands,
                        elapsed_ms = report.elapsed.as_millis() as u64,
                        "service proxy rules updated"
                    );
                }
                let mut problems: HashMap<ServicePortName, String> = HashMap::new();
                for (name, why) in report.rejected.into_iter().chain(report.conflicts) {
                    problems.entry(name).or_insert(why);
                }
                self.reported.retain(|name, _| problems.contains_key(name));
                for (name, why) in problems {
                    self.warn(&name, &why);
                }
                Ok(())
            }
            Err((e, pending)) => {
                tracing::warn!(error = %e, services = wanted.len(), "programming the service proxy rules failed; retrying");
                for name in pending.iter().take(EVENTS_PER_FAILURE) {
                    self.warn(name, &e.to_string());
                }
                Err(())
            }
        }
    }

    /// A Warning Event on the Service, unless this very one was the last.
    fn warn(&mut self, name: &ServicePortName, why: &str) {
        if self.reported.get(name).map(String::as_str) == Some(why) {
            return;
        }
        tracing::warn!(service = %name, error = %why, "service rules not programmed");
        if let Some(svc) = self.services.get_namespaced(&name.namespace, &name.name) {
            let message = format!("port {}: {why}", port_label(name));
            self.recorder
                .record(&*svc, EventType::Warning, "FailedToProgramRules", &message);
        }
        self.reported.insert(name.clone(), why.to_string());
    }

    /// Makes the next sync a full one if the table went missing.
    async fn check_table(&mut self) {
        let Some(proxier) = self.proxier.take() else {
            return;
        };
        let (mut proxier, exists) = tokio::task::spawn_blocking(move || {
            let exists = proxier.table_exists();
            (proxier, exists)
        })
        .await
        .expect("listing tables does not panic");
        match exists {
            Ok(true) => {}
            Ok(false) if !proxier.needs_full_sync() => {
                tracing::warn!(table = %proxier.config().table, "the service proxy's table is gone; rebuilding it");
                proxier.invalidate();
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "listing nftables tables"),
        }
        self.proxier = Some(proxier);
    }
}

fn port_label(name: &ServicePortName) -> String {
    if name.port.is_empty() {
        format!("{}", name.protocol).to_uppercase()
    } else {
        format!(
            "{}/{}",
            name.port,
            format!("{}", name.protocol).to_uppercase()
        )
    }
}

/// Every Service port with its endpoints, from the informers' caches.
fn wanted_state(
    services: &Informer<Service>,
    slices: &Informer<EndpointSlice>,
    node_name: &str,
) -> BTreeMap<ServicePortName, ServiceState> {
    let mut wanted = BTreeMap::new();
    for svc in services.list() {
        let ports = service_ports(&svc);
        if ports.is_empty() {
            continue;
        }
        let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
        let its_slices = slices.by_index(SLICES_BY_SERVICE, &key);
        for port in ports {
            let endpoints = endpoints_of(&port.name, &its_slices, node_name);
            wanted.insert(port.name.clone(), ServiceState { port, endpoints });
        }
    }
    wanted
}

fn ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// A Service's ports as the proxy programs them: nothing for ExternalName
/// and headless Services, nor for those another proxy handles.
pub fn service_ports(svc: &Service) -> Vec<ServicePort> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" || svc.labels().contains_key(SERVICE_PROXY_NAME_LABEL) {
        return Vec::new();
    }
    let mut cluster_ips: Vec<Ipv4Addr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ipv4(ip))
        .collect();
    cluster_ips.dedup();
    if cluster_ips.is_empty() {
        return Vec::new();
    }
    let external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| ipv4(ip))
        .collect();
    let load_balancer_ips: Vec<Ipv4Addr> = if kind == "LoadBalancer" {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ingress| ingress.ip.as_deref().and_then(ipv4))
            .collect()
    } else {
        Vec::new()
    };
    let session_affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let namespace = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let Ok(protocol) = Protocol::from_api(p.protocol.as_deref()) else {
            tracing::debug!(service = %format!("{namespace}/{name}"), protocol = ?p.protocol, "skipping a port of an unsupported protocol");
            continue;
        };
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let node_port = if matches!(kind, "NodePort" | "LoadBalancer") {
            p.node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
        } else {
            None
        };
        out.push(ServicePort {
            name: ServicePortName::new(
                namespace.clone(),
                name.clone(),
                p.name.clone().unwrap_or_default(),
                protocol,
            ),
            cluster_ips: cluster_ips.clone(),
            port,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            session_affinity,
            external_policy_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_policy_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        });
    }
    out
}

/// The endpoints of one Service port: from each IPv4 slice of the Service,
/// the slice port of the same name and protocol gives the target port (a
/// named `targetPort` resolved per pod by the EndpointSlice controller),
/// and each endpoint's first address, conditions and node give the rest.
/// Sorted, one per address and port (a ready copy wins over another).
pub fn endpoints_of(
    port: &ServicePortName,
    slices: &[Arc<EndpointSlice>],
    node_name: &str,
) -> Vec<Endpoint> {
    let mut by_address: BTreeMap<(Ipv4Addr, u16), Endpoint> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port.port
                && Protocol::from_api(p.protocol.as_deref()).ok() == Some(port.protocol)
        }) else {
            continue;
        };
        let Some(target) = target.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for e in &slice.endpoints {
            let Some(ip) = e.addresses.first().and_then(|a| ipv4(a)) else {
                continue;
            };
            let conditions = e.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let endpoint = Endpoint {
                ip,
                port: target,
                ready,
                serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                is_local: e.node_name.as_deref() == Some(node_name),
            };
            by_address
                .entry((ip, target))
                .and_modify(|have| {
                    if endpoint.ready && !have.ready {
                        *have = endpoint;
                    }
                })
                .or_insert(endpoint);
        }
    }
    by_address.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn slice(value: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn a_cluster_ip_service_with_a_named_target_port() {
        let s = svc(json!({
            "metadata": {"name": "web", "namespace": "net"},
            "spec": {"clusterIP": "10.43.0.7", "clusterIPs": ["10.43.0.7"],
                     "selector": {"app": "web"},
                     "ports": [{"port": 8080, "targetPort": "http"}]}
        }));
        let ports = service_ports(&s);
        assert_eq!(ports.len(), 1);
        let p = &ports[0];
        assert_eq!(
            p.name,
            ServicePortName::new("net", "web", "", Protocol::Tcp)
        );
        assert_eq!(p.cluster_ips, [Ipv4Addr::new(10, 43, 0, 7)]);
        assert_eq!(p.port, 8080);
        assert_eq!(p.node_port, None);
        assert_eq!(p.session_affinity, None);
        assert!(!p.external_policy_local && !p.internal_policy_local);

        // The slice resolved "http" to 80 on each pod; the unnamed service
        // port is the slice port named "".
        let slices = [slice(json!({
            "metadata": {"name": "web-abc", "namespace": "net",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.1.5"], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "n1"},
                {"addresses": ["10.42.2.5"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n2"},
                {"addresses": ["10.42.2.6"], "nodeName": "n2"}
            ]
        }))];
        let eps = endpoints_of(&p.name, &slices, "n1");
        assert_eq!(
            eps,
            [
                Endpoint::ready(Ipv4Addr::new(10, 42, 1, 5), 80, true),
                Endpoint {
                    ready: false,
                    serving: true,
                    terminating: true,
                    ..Endpoint::ready(Ipv4Addr::new(10, 42, 2, 5), 80, false)
                },
                // Absent conditions: ready, serving, not terminating.
                Endpoint::ready(Ipv4Addr::new(10, 42, 2, 6), 80, false),
            ]
        );
    }

    #[test]
    fn multi_port_services_match_slice_ports_by_name_and_protocol() {
        let s = svc(json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.43.0.10", "internalTrafficPolicy": "Local",
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}
        }));
        let ports = service_ports(&s);
        assert_eq!(ports.len(), 2);
        assert!(ports.iter().all(|p| p.internal_policy_local));
        let slices = [slice(json!({
            "metadata": {"name": "kube-dns-1", "namespace": "kube-system"},
            "addressType": "IPv4",
            "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"},
                      {"name": "dns-tcp", "port": 5354, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.99.0.11"], "nodeName": "n1"}]
        }))];
        let udp = endpoints_of(&ports[0].name, &slices, "n1");
        assert_eq!(
            udp,
            [Endpoint::ready(Ipv4Addr::new(10, 99, 0, 11), 5353, true)]
        );
        let tcp = endpoints_of(&ports[1].name, &slices, "n2");
        assert_eq!(
            tcp,
            [Endpoint::ready(Ipv4Addr::new(10, 99, 0, 11), 5354, false)]
        );
        // A port the slice does not list has no endpoints from it.
        let other = ServicePortName::new("kube-system", "kube-dns", "metrics", Protocol::Tcp);
        assert!(endpoints_of(&other, &slices, "n1").is_empty());
    }

    #[test]
    fn node_ports_load_balancers_affinity_and_policies() {
        let s = svc(json!({
            "metadata": {"name": "lb", "namespace": "net"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.8",
                     "externalIPs": ["192.168.5.5", "fd00::1"],
                     "externalTrafficPolicy": "Local",
                     "sessionAffinity": "ClientIP",
                     "ports": [{"port": 8088, "targetPort": 80, "nodePort": 31000}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.11"}, {"ip": "10.99.0.12"}, {"hostname": "lb.example"}]}}
        }));
        let p = &service_ports(&s)[0];
        assert_eq!(p.node_port, Some(31000));
        assert_eq!(p.external_ips, [Ipv4Addr::new(192, 168, 5, 5)]);
        assert_eq!(
            p.load_balancer_ips,
            [Ipv4Addr::new(10, 99, 0, 11), Ipv4Addr::new(10, 99, 0, 12)]
        );
        assert_eq!(p.session_affinity, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(p.external_policy_local);

        let s = svc(json!({
            "metadata": {"name": "sticky", "namespace": "net"},
            "spec": {"clusterIP": "10.43.0.9", "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                     "ports": [{"port": 80, "nodePort": 30001}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.11"}]}}
        }));
        let p = &service_ports(&s)[0];
        assert_eq!(p.session_affinity, Some(60));
        assert_eq!(p.node_port, None, "a ClusterIP Service has no node port");
        assert!(p.load_balancer_ips.is_empty(), "nor load-balancer IPs");
    }

    #[test]
    fn headless_external_name_and_foreign_services_get_nothing() {
        for s in [
            json!({"metadata": {"name": "db", "namespace": "net"},
                   "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}}),
            json!({"metadata": {"name": "outside", "namespace": "net"},
                   "spec": {"type": "ExternalName", "externalName": "db.example.internal"}}),
            json!({"metadata": {"name": "other", "namespace": "net",
                                "labels": {"service.kubernetes.io/service-proxy-name": "foo"}},
                   "spec": {"clusterIP": "10.43.0.3", "ports": [{"port": 80}]}}),
            json!({"metadata": {"name": "nospec", "namespace": "net"}}),
        ] {
            assert!(service_ports(&svc(s.clone())).is_empty(), "{s}");
        }
    }

    #[test]
    fn duplicate_endpoints_across_slices_keep_the_ready_copy() {
        let name = ServicePortName::new("net", "web", "http", Protocol::Tcp);
        let mk = |ready: bool, family: &str| {
            slice(json!({
                "metadata": {"name": format!("web-{ready}-{family}"), "namespace": "net"},
                "addressType": family,
                "ports": [{"name": "http", "port": 80}],
                "endpoints": [{"addresses": ["10.42.1.5"], "conditions": {"ready": ready}}]
            }))
        };
        let eps = endpoints_of(
            &name,
            &[mk(false, "IPv4"), mk(true, "IPv4"), mk(true, "IPv6")],
            "n1",
        );
        assert_eq!(eps.len(), 1);
        assert!(eps[0].ready);
        assert!(!eps[0].is_local);
    }

    #[test]
    fn event_port_labels() {
        assert_eq!(
            port_label(&ServicePortName::new("a", "b", "", Protocol::Udp)),
            "UDP"
        );
        assert_eq!(
            port_label(&ServicePortName::new("a", "b", "http", Protocol::Tcp)),
            "http/TCP"
        );
    }

    /// The whole loop on the real kernel (root): an API server and the
    /// proxy run in a private network namespace (`rdtpx-…`) where a dummy
    /// interface holds an "endpoint" address served on 8080; the node's
    /// own connections to the cluster IP follow Service and EndpointSlice
    /// changes made through the API, and a Service that cannot be
    /// programmed gets a Warning Event.
    #[test]
    fn the_proxy_follows_the_api() {
        use std::io::Read;
        use std::net::{SocketAddr, TcpStream};
        use std::process::Command;

        let ns = format!("rdtpx-{}-agent", std::process::id());
        let sh = |args: &[&str]| {
            let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        struct Netns(String);
        impl Drop for Netns {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
            }
        }
        sh(&["ip", "netns", "add", &ns]);
        let _guard = Netns(ns.clone());
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            &["addr", "add", "10.81.5.2/24", "dev", "v0"],
            &["link", "set", "v0", "up"],
            &["link", "set", "v1", "up"],
            // The API server allocates cluster IPs from 10.43.0.0/16; in
            // this private namespace they go nowhere else.
            &["route", "add", "10.43.0.0/16", "dev", "v0"],
        ] {
            let mut all = vec!["ip", "-n", ns.as_str()];
            all.extend(args);
            sh(&all);
        }
        let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        let table = format!("rdtpx-agent-{}", std::process::id());
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                // Worker threads are created from this one: they are in
                // the namespace too, and so is every `nft` they start.
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(follow_the_api(table))
            })
            .join()
            .unwrap()
        });

        async fn follow_the_api(table: String) {
            use crate::volumes::testing::TestApi;
            use k8s_openapi::api::core::v1::Event;
            use kube::api::{Api, ListParams};

            let server = std::net::TcpListener::bind("10.81.5.2:8080").unwrap();
            std::thread::spawn(move || {
                for stream in server.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let _ = std::io::Write::write_all(&mut stream, b"endpoint\n");
                }
            });
            async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
                for _ in 0..100 {
                    if tokio::task::block_in_place(&mut check) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("timed out waiting for: {what}");
            }

            let api = TestApi::start().await;
            api.namespace("rdtpx").await;
            let web: Service = api
                .create(
                    "rdtpx",
                    json!({"metadata": {"name": "web"},
                           "spec": {"selector": {"app": "web"},
                                    "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}),
                )
                .await;
            let cluster_ip = web
                .spec
                .and_then(|s| s.cluster_ip)
                .expect("an allocated cluster IP");
            let vip = SocketAddr::new(cluster_ip.parse().unwrap(), 80);
            let get = || {
                let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(1))?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)?;
                Ok::<String, std::io::Error>(answer)
            };
            let _: EndpointSlice = api
                .create(
                    "rdtpx",
                    json!({"metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                           "addressType": "IPv4",
                           "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
                           "endpoints": [{"addresses": ["10.81.5.2"], "nodeName": "n1",
                                          "conditions": {"ready": true}}]}),
                )
                .await;
            let informers = Informers::new(api.client.clone());
            tokio::spawn(run(
                api.client.clone(),
                informers,
                ProxyOptions {
                    node_name: "n1".into(),
                    local: LocalDetector::None,
                    table: table.clone(),
                },
            ));
            eventually("the cluster IP reaches the named target port", || {
                get().is_ok_and(|a| a == "endpoint\n")
            })
            .await;

            // Not ready any more: no endpoint, refused.
            let _: EndpointSlice = api
                .patch(
                    "rdtpx",
                    "web-1",
                    json!({"endpoints": [{"addresses": ["10.81.5.2"], "nodeName": "n1",
                                          "conditions": {"ready": false, "serving": false}}]}),
                )
                .await;
            eventually("connections are refused", || {
                get().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            })
            .await;

            // Two Services claiming one external address and port: the
            // second by name is told why it is not programmed.
            for name in ["a-first", "b-second"] {
                let _: Service = api
                    .create(
                        "rdtpx",
                        json!({"metadata": {"name": name},
                               "spec": {"externalIPs": ["10.81.5.9"], "ports": [{"port": 80}]}}),
                    )
                    .await;
            }
            let events: Api<Event> = Api::namespaced(api.client.clone(), "rdtpx");
            let mut found = None;
            for _ in 0..100 {
                let list = events.list(&ListParams::default()).await.unwrap();
                found = list.items.into_iter().find(|e| {
                    e.reason.as_deref() == Some("FailedToProgramRules")
                        && e.involved_object.name.as_deref() == Some("b-second")
                });
                if found.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let event = found.expect("a Warning Event on b-second");
            assert_eq!(event.type_.as_deref(), Some("Warning"));
            let message = event.message.unwrap_or_default();
            assert!(
                message.contains("10.81.5.9 . tcp . 80 is already used by rdtpx/a-first"),
                "{message}"
            );

            // The Service goes: so does its address.
            let services: Api<Service> = Api::namespaced(api.client.clone(), "rdtpx");
            services.delete("web", &Default::default()).await.unwrap();
            eventually("the cluster IP is no longer served", || {
                get().is_err_and(|e| e.kind() != std::io::ErrorKind::ConnectionRefused)
            })
            .await;
            proxy::remove(&table).unwrap();
        }
    }
}
