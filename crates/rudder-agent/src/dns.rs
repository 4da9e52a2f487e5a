//! The node's cluster DNS server. Every agent runs one (`rudder-dns`) on
//! its pod network's gateway address, port 53, answering from records it
//! rebuilds from the shared Service and EndpointSlice informers whenever
//! either changes. It publishes itself as an endpoint of the `kube-dns`
//! Service in an EndpointSlice of its own (`kube-system/kube-dns-<node>`,
//! owned by the Node); since that Service has `internalTrafficPolicy:
//! Local`, the service proxy sends each pod's queries for the cluster DNS
//! address to its own node's server.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use rudder_dns::{cluster_records, ClusterDns, DnsServer, Forwarder, Records};
use rudder_runtime::informer::{Informer, Informers};
use tokio::sync::{watch, Notify};

/// The `endpointslice.kubernetes.io/managed-by` value of the agents'
/// slices; the EndpointSlice controller leaves slices it does not manage.
pub const MANAGED_BY: &str = "agent.rudder.io";
const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const DNS_NAMESPACE: &str = "kube-system";
const DNS_SERVICE: &str = "kube-dns";

/// Changes arriving together (a rollout touches many slices) are folded
/// into one rebuild after this pause.
const SETTLE: Duration = Duration::from_millis(200);
/// How often the EndpointSlice is checked even when nothing changed.
const RECHECK: Duration = Duration::from_secs(60);
/// How soon a failed publication or bind is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// What the node's DNS server needs.
#[derive(Clone, Debug)]
pub struct DnsServerConfig {
    pub node_name: String,
    /// Where it listens (UDP and TCP): the pod network's gateway, port 53.
    pub listen: SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The kube-dns Service address, which is never an upstream.
    pub cluster_dns: Option<Ipv4Addr>,
}

/// The name of a node's kube-dns EndpointSlice. Object names are at most
/// 253 characters; a longer node name is cut (two such nodes would then
/// share a slice name, which DNS-label node names never reach).
pub fn slice_name(node_name: &str) -> String {
    let mut name = format!("{DNS_SERVICE}-{node_name}");
    name.truncate(253);
    name
}

/// The EndpointSlice that makes a node's DNS server an endpoint of the
/// kube-dns Service.
pub fn kube_dns_slice(node_name: &str, node_uid: &str, ip: Ipv4Addr, port: u16) -> EndpointSlice {
    let labels = BTreeMap::from([
        (
            rudder_dns::cluster::LABEL_SERVICE_NAME.to_string(),
            DNS_SERVICE.to_string(),
        ),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ]);
    let port = |name: &str, protocol: &str| EndpointPort {
        name: Some(name.to_string()),
        port: Some(i32::from(port)),
        protocol: Some(protocol.to_string()),
        app_protocol: None,
    };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(node_name)),
            namespace: Some(DNS_NAMESPACE.to_string()),
            labels: Some(labels),
            // The slice goes when the Node goes (garbage collection).
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node_name.to_string(),
                uid: node_uid.to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(node_name.to_string()),
            ..Default::default()
        }],
        ports: Some(vec![port("dns", "UDP"), port("dns-tcp", "TCP")]),
    }
}

/// Whether the published slice already says what `desired` says.
fn up_to_date(current: &EndpointSlice, desired: &EndpointSlice) -> bool {
    let labels_present = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| current.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let owned = current.metadata.owner_references.iter().flatten().any(|o| {
        desired
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|d| d.uid == o.uid)
    });
    labels_present
        && owned
        && current.metadata.deletion_timestamp.is_none()
        && current.address_type == desired.address_type
        && current.endpoints == desired.endpoints
        && current.ports == desired.ports
}

fn build(domain: &str, services: &Informer<Service>, slices: &Informer<EndpointSlice>) -> Records {
    let services = services.list();
    let slices = slices.list();
    cluster_records(
        domain,
        services.iter().map(|s| &**s),
        slices.iter().map(|s| &**s),
    )
}

/// Runs the node's DNS server until the process ends: waits for the
/// informers (started by the caller), serves, follows changes, and keeps
/// the node's kube-dns EndpointSlice published while the server is bound.
pub async fn run(client: Client, informers: Informers, config: DnsServerConfig) {
    let services = informers.get::<Service>();
    let slices = informers.get::<EndpointSlice>();
    let changed = Arc::new(Notify::new());
    services.notify_on_change(&changed);
    slices.notify_on_change(&changed);
    services.wait_synced().await;
    slices.wait_synced().await;

    let host = rudder_dns::resolv::host_resolv_conf();
    let mut exclude = vec![config.listen.ip()];
    exclude.extend(config.cluster_dns.map(IpAddr::V4));
    let forwarder = Forwarder::from_resolv_conf(&host, &exclude);
    if forwarder.upstreams().is_empty() {
        tracing::warn!("the node has no usable upstream resolvers: names outside the cluster domain get SERVFAIL");
    }
    let dns = Arc::new(ClusterDns::new(
        build(&config.cluster_domain, &services, &slices),
        forwarder,
    ));

    let (bound_tx, mut bound) = watch::channel(false);
    tokio::spawn(serve(dns.clone(), config.listen, bound_tx));

    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            () = changed.notified() => tokio::time::sleep(SETTLE).await,
            () = tokio::time::sleep(wait) => {}
            _ = bound.changed() => {}
        }
        let records = build(&config.cluster_domain, &services, &slices);
        tracing::debug!(names = records.len(), "cluster DNS records rebuilt");
        dns.replace(records);
        wait = if !*bound.borrow() {
            RECHECK
        } else {
            match publish(&client, &slices, &config).await {
                Ok(()) => RECHECK,
                Err(e) => {
                    tracing::warn!(error = %e, "publishing the node's kube-dns EndpointSlice failed; retrying");
                    RETRY
                }
            }
        };
    }
}

/// Binds and serves, binding again after a failure (the gateway address
/// not there yet, port 53 taken by another resolver on the node).
async fn serve(dns: Arc<ClusterDns>, listen: SocketAddr, bound: watch::Sender<bool>) {
    let mut last_error = String::new();
    loop {
        match DnsServer::bind(listen).await {
            Ok(server) => {
                tracing::info!(address = %listen, "cluster DNS serving");
                last_error.clear();
                bound.send_replace(true);
                if let Err(e) = server.serve(dns.clone()).await {
                    tracing::error!(address = %listen, error = %e, "cluster DNS stopped serving; binding again");
                }
                bound.send_replace(false);
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!(address = %listen, error = %text, "cluster DNS cannot bind; retrying");
                    last_error = text;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn publish(
    client: &Client,
    slices: &Informer<EndpointSlice>,
    config: &DnsServerConfig,
) -> Result<(), kube::Error> {
    let IpAddr::V4(ip) = config.listen.ip() else {
        // The kube-dns Service is IPv4 (the pod network is).
        return Ok(());
    };
    let name = slice_name(&config.node_name);
    let node = Api::<Node>::all(client.clone())
        .get(&config.node_name)
        .await?;
    let uid = node.metadata.uid.unwrap_or_default();
    let desired = kube_dns_slice(&config.node_name, &uid, ip, config.listen.port());
    if let Some(current) = slices.get_namespaced(DNS_NAMESPACE, &name) {
        if up_to_date(&current, &desired) {
            return Ok(());
        }
    }
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), DNS_NAMESPACE);
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGED_BY).force(),
            &Patch::Apply(&desired),
        )
        .await?;
    // Seen at once, so the next check does not apply it again before
    // the watch delivers it.
    slices.apply(Arc::new(applied));
    tracing::info!(slice = %name, address = %config.listen, "published the node's kube-dns endpoint");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::testing::TestApi;
    use kube::api::DeleteParams;
    use rudder_dns::proto::op::{Message, Query};
    use rudder_dns::proto::rr::{Name, RData, RecordType};
    use serde_json::json;

    async fn resolve(server: SocketAddr, name: &str) -> Option<Vec<String>> {
        let mut query = Message::query();
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
        socket
            .send_to(&query.to_vec().unwrap(), server)
            .await
            .ok()?;
        let mut buf = vec![0u8; 4096];
        let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let answer = Message::from_vec(&buf[..len]).ok()?;
        Some(
            answer
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0.to_string()),
                    _ => None,
                })
                .collect(),
        )
    }

    /// Polls until `check` holds (bounded: 60 tries, 0.5 s apart).
    async fn eventually<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..60 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("never happened: {what}");
    }

    fn free_port() -> u16 {
        // A port free for UDP and TCP at this moment.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.local_addr().unwrap().port()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_cluster_records_follows_changes_and_publishes_its_slice() {
        let api = TestApi::start().await;
        api.namespace("net").await;
        let node: Node = api
            .create_cluster(json!({"metadata": {"name": "n1"}}))
            .await;
        let _: Service = api
            .create(
                "net",
                json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.43.0.20",
                    "ports": [{"name": "http", "port": 80}]}}),
            )
            .await;
        let listen = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port());
        let informers = Informers::new(api.client.clone());
        tokio::spawn(run(
            api.client.clone(),
            informers.clone(),
            DnsServerConfig {
                node_name: "n1".into(),
                listen,
                cluster_domain: "cluster.local".into(),
                cluster_dns: Some(Ipv4Addr::new(10, 43, 0, 10)),
            },
        ));
        informers.start();

        eventually("the service resolves", || async {
            resolve(listen, "web.net.svc.cluster.local.").await == Some(vec!["10.43.0.20".into()])
        })
        .await;

        // A new headless service with a StatefulSet-style endpoint.
        let _: Service = api
            .create(
                "net",
                json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None",
                    "ports": [{"name": "web", "port": 80}]}}),
            )
            .await;
        let _: EndpointSlice = api
            .create(
                "net",
                json!({"metadata": {"name": "db-abc", "labels": {"kubernetes.io/service-name": "db"}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": ["10.42.0.7"], "hostname": "db-0",
                        "conditions": {"ready": true}}],
                    "ports": [{"name": "web", "port": 80, "protocol": "TCP"}]}),
            )
            .await;
        eventually("the new pod record resolves", || async {
            resolve(listen, "db-0.db.net.svc.cluster.local.").await
                == Some(vec!["10.42.0.7".into()])
        })
        .await;

        let slices: Api<EndpointSlice> = Api::namespaced(api.client.clone(), "kube-system");
        eventually("the node's kube-dns slice", || async {
            slices.get_opt("kube-dns-n1").await.ok().flatten().is_some()
        })
        .await;
        let slice = slices.get("kube-dns-n1").await.unwrap();
        let labels = slice.metadata.labels.clone().unwrap();
        assert_eq!(labels["kubernetes.io/service-name"], "kube-dns");
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(slice.address_type, "IPv4");
        let endpoint = &slice.endpoints[0];
        assert_eq!(endpoint.addresses, ["127.0.0.1"]);
        assert_eq!(endpoint.node_name.as_deref(), Some("n1"));
        assert_eq!(endpoint.conditions.as_ref().unwrap().ready, Some(true));
        let ports: Vec<(String, i32, String)> = slice
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port.unwrap(), p.protocol.unwrap()))
            .collect();
        assert_eq!(
            ports,
            [
                (
                    "dns".to_string(),
                    i32::from(listen.port()),
                    "UDP".to_string()
                ),
                (
                    "dns-tcp".to_string(),
                    i32::from(listen.port()),
                    "TCP".to_string()
                )
            ]
        );
        let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", "n1"));
        assert_eq!(Some(&owner.uid), node.metadata.uid.as_ref());

        // Deleted by someone: published again.
        slices
            .delete("kube-dns-n1", &DeleteParams::default())
            .await
            .unwrap();
        eventually("the slice comes back", || async {
            slices.get_opt("kube-dns-n1").await.ok().flatten().is_some()
        })
        .await;
    }

    #[test]
    fn a_slice_differing_in_endpoints_or_owner_is_out_of_date() {
        let desired = kube_dns_slice("n1", "uid-1", Ipv4Addr::new(10, 42, 0, 1), 53);
        assert!(up_to_date(&desired, &desired));
        let other_ip = kube_dns_slice("n1", "uid-1", Ipv4Addr::new(10, 42, 0, 2), 53);
        assert!(!up_to_date(&other_ip, &desired));
        let other_owner = kube_dns_slice("n1", "uid-2", Ipv4Addr::new(10, 42, 0, 1), 53);
        assert!(!up_to_date(&other_owner, &desired));
    }
}
