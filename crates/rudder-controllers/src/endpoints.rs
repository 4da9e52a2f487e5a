//! Endpoints controller (`endpoints`): for every Service with a selector,
//! an Endpoints object of the same name listing the selected pods' IPs:
//! ready ones under `addresses`, the others under `notReadyAddresses`
//! (all ready with `publishNotReadyAddresses`), each with its pod as
//! `targetRef`, its `nodeName` and, for a pod whose `subdomain` is the
//! Service, its `hostname`. Named target ports are looked up in each pod;
//! a pod without the port is left out of that port's subset. Terminating
//! pods are left out (kept with `publishNotReadyAddresses`). Services
//! without a selector are left to their users. The pod and port helpers
//! here are shared with the EndpointSlice controller.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rudder_runtime::events::{EventRecorder, EventType};
use rudder_runtime::informer::{key_of, split_key};
use rudder_runtime::{Change, Informer, WorkQueue};

use crate::util::{is_not_found, is_pod_ready};
use crate::Context;

/// The label the controller marks its Endpoints with.
pub const LABEL_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpoint-controller";
/// Present (empty) on the Endpoints and slices of a headless Service.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// An Endpoints object lists at most this many addresses.
const MAX_CAPACITY: usize = 1000;

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    EndpointsController::new(ctx).run().boxed()
}

/// The service's selector, if it has a non-empty one.
pub fn service_selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

pub fn selects(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = service_selector(service) else {
        return false;
    };
    let labels = crate::util::labels_of(&pod.metadata);
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a Service has a cluster IP (`helper.IsServiceIPSet`).
pub fn is_headless(service: &Service) -> bool {
    let ip = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .unwrap_or("");
    ip.is_empty() || ip == "None"
}

/// `ShouldPodBeInEndpoints`: it has an IP, is not finished, and is not
/// being deleted unless terminating pods are wanted.
pub fn should_pod_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let status = pod.status.as_ref();
    let has_ip = status.is_some_and(|s| {
        s.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
            || s.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty())
    });
    if !has_ip {
        return false;
    }
    if !include_terminating && pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    !matches!(crate::util::phase(pod), "Succeeded" | "Failed")
}

/// `ShouldSetHostname`: the pod asked to be `<hostname>.<service>`.
pub fn should_set_hostname(pod: &Pod, service: &Service) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.hostname.as_deref())
        .is_some_and(|h| !h.is_empty())
        && spec.and_then(|s| s.subdomain.as_deref()) == service.metadata.name.as_deref()
        && pod.metadata.namespace == service.metadata.namespace
}

/// The service's IP family: its first `ipFamilies` entry, else that of
/// its cluster IP, else IPv4.
pub fn service_families(service: &Service) -> Vec<&'static str> {
    let spec = service.spec.as_ref();
    let families: Vec<&'static str> = spec
        .and_then(|s| s.ip_families.as_ref())
        .map(|f| {
            f.iter()
                .filter_map(|f| match f.as_str() {
                    "IPv4" => Some("IPv4"),
                    "IPv6" => Some("IPv6"),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !families.is_empty() {
        return families;
    }
    match spec.and_then(|s| s.cluster_ip.as_deref()) {
        Some(ip) if ip.contains(':') => vec!["IPv6"],
        _ => vec!["IPv4"],
    }
}

/// The pod's IP of a family.
pub fn pod_ip(pod: &Pod, family: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    let want_v6 = family == "IPv6";
    status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.clone())
        .chain(status.pod_ip.clone())
        .find(|ip| !ip.is_empty() && ip.contains(':') == want_v6)
}

/// The pod's port for a service port (`podutil.FindPort`): a number as
/// is; a name looked up among the containers' ports (sidecar init
/// containers too) with the same protocol.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name)
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

pub fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Groups the (address, ready, port) triples into subsets: addresses
/// that share exactly the same ports go together (`RepackSubsets`), in a
/// stable order.
fn repack(entries: Vec<(EndpointAddress, bool, Option<EndpointPort>)>) -> Vec<EndpointSubset> {
    type AddrKey = (String, Option<String>);
    type PortId = (Option<String>, i32, Option<String>, Option<String>);
    type Addresses = BTreeMap<(AddrKey, bool), EndpointAddress>;
    type Grouped = (Vec<EndpointPort>, Vec<(bool, EndpointAddress)>);
    let addr_key = |a: &EndpointAddress| {
        (
            a.ip.clone(),
            a.target_ref.as_ref().and_then(|r| r.uid.clone()),
        )
    };
    let port_key = |p: &EndpointPort| {
        (
            p.name.clone(),
            p.port,
            p.protocol.clone(),
            p.app_protocol.clone(),
        )
    };
    // Port → its addresses.
    let mut by_port: BTreeMap<Option<PortId>, (Option<EndpointPort>, Addresses)> = BTreeMap::new();
    for (addr, ready, port) in entries {
        let entry = by_port
            .entry(port.as_ref().map(port_key))
            .or_insert_with(|| (port.clone(), BTreeMap::new()));
        entry.1.insert((addr_key(&addr), ready), addr);
    }
    // Address set → its ports.
    let mut by_addrs: BTreeMap<Vec<(AddrKey, bool)>, Grouped> = BTreeMap::new();
    for (_, (port, addrs)) in by_port {
        let key: Vec<(AddrKey, bool)> = addrs.keys().cloned().collect();
        let entry = by_addrs.entry(key).or_insert_with(|| {
            (
                Vec::new(),
                addrs
                    .iter()
                    .map(|((_, ready), a)| (*ready, a.clone()))
                    .collect(),
            )
        });
        entry.0.extend(port);
    }
    by_addrs
        .into_values()
        .map(|(ports, addrs)| {
            let ready: Vec<EndpointAddress> = addrs
                .iter()
                .filter(|(r, _)| *r)
                .map(|(_, a)| a.clone())
                .collect();
            let not_ready: Vec<EndpointAddress> = addrs
                .iter()
                .filter(|(r, _)| !*r)
                .map(|(_, a)| a.clone())
                .collect();
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

/// The subsets for a service and its pods, and whether they were cut to
/// the capacity of one Endpoints object.
pub fn desired_subsets(service: &Service, pods: &[Arc<Pod>]) -> (Vec<EndpointSubset>, bool) {
    let spec = service.spec.clone().unwrap_or_default();
    let tolerate_unready = spec.publish_not_ready_addresses == Some(true);
    let family = service_families(service)[0];
    let mut entries = Vec::new();
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, tolerate_unready) {
            continue;
        }
        let Some(ip) = pod_ip(pod, family) else {
            continue;
        };
        let address = EndpointAddress {
            ip,
            hostname: should_set_hostname(pod, service)
                .then(|| pod.spec.as_ref().and_then(|s| s.hostname.clone()))
                .flatten(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_reference(pod)),
        };
        let ready = tolerate_unready || is_pod_ready(pod);
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            // A headless service may have no ports at all.
            if spec.cluster_ip.as_deref() == Some("None") {
                entries.push((address, ready, None));
            }
            continue;
        }
        for port in ports {
            let Some(number) = find_port(pod, port) else {
                tracing::debug!(pod = %pod.name_any(), port = ?port.name, "pod has no port for the service port");
                continue;
            };
            entries.push((
                address.clone(),
                ready,
                Some(EndpointPort {
                    name: port.name.clone(),
                    port: number,
                    protocol: Some(port.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: port.app_protocol.clone(),
                }),
            ));
        }
    }
    let mut subsets = repack(entries);
    let total: usize = subsets
        .iter()
        .map(|s| {
            s.addresses.as_ref().map_or(0, Vec::len)
                + s.not_ready_addresses.as_ref().map_or(0, Vec::len)
        })
        .sum();
    if total <= MAX_CAPACITY {
        return (subsets, false);
    }
    // Too many: keep ready addresses first, up to the capacity.
    let mut room = MAX_CAPACITY;
    for subset in &mut subsets {
        if let Some(a) = subset.addresses.as_mut() {
            a.truncate(room);
            room -= a.len();
        }
    }
    for subset in &mut subsets {
        if let Some(a) = subset.not_ready_addresses.as_mut() {
            a.truncate(room);
            room -= a.len();
        }
    }
    subsets.retain(|s| {
        s.addresses.as_ref().is_some_and(|a| !a.is_empty())
            || s.not_ready_addresses
                .as_ref()
                .is_some_and(|a| !a.is_empty())
    });
    for s in &mut subsets {
        if s.addresses.as_ref().is_some_and(Vec::is_empty) {
            s.addresses = None;
        }
        if s.not_ready_addresses.as_ref().is_some_and(Vec::is_empty) {
            s.not_ready_addresses = None;
        }
    }
    (subsets, true)
}

/// Services in the pod's namespace that select it.
pub fn services_for_pod(services: &Informer<Service>, pod: &Pod) -> Vec<String> {
    services
        .list_namespace(&pod.namespace().unwrap_or_default())
        .into_iter()
        .filter(|s| selects(s, pod))
        .map(|s| key_of(&*s))
        .collect()
}

pub struct EndpointsController {
    client: Client,
    recorder: EventRecorder,
    services: Informer<Service>,
    pods: Informer<Pod>,
    endpoints: Informer<Endpoints>,
    queue: WorkQueue<String>,
}

impl EndpointsController {
    pub fn new(ctx: &Context) -> Self {
        let services = ctx.informers.get::<Service>();
        let pods = ctx.informers.get::<Pod>();
        let endpoints = ctx.informers.get::<Endpoints>();
        let queue = WorkQueue::new();
        let q = queue.clone();
        services.on_change(move |change| q.add(key_of(&**change.object())));
        let q = queue.clone();
        let svc = services.clone();
        pods.on_change(move |change| {
            let mut keys = services_for_pod(&svc, change.object());
            if let Change::Updated { old, .. } = change {
                keys.extend(services_for_pod(&svc, old));
            }
            for key in keys {
                q.add(key);
            }
        });
        let q = queue.clone();
        endpoints.on_change(move |change| {
            // Someone else changed or removed ours: put it right.
            if matches!(change, Change::Deleted(_))
                || change
                    .object()
                    .labels()
                    .get(LABEL_MANAGED_BY)
                    .map(String::as_str)
                    == Some(CONTROLLER_NAME)
            {
                q.add(key_of(&**change.object()));
            }
        });
        EndpointsController {
            client: ctx.client.clone(),
            recorder: ctx.recorder.clone(),
            services,
            pods,
            endpoints,
            queue,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.services.wait_synced().await;
        self.pods.wait_synced().await;
        self.endpoints.wait_synced().await;
        let this = Arc::new(self);
        let queue = this.queue.clone();
        queue
            .run_workers("endpoints", 4, move |key: String| {
                let this = this.clone();
                async move { this.sync(&key).await.map(|_| None) }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, key: &str) -> kube::Result<()> {
        let (ns, name) = split_key(key);
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
        let existing = self.endpoints.get_namespaced(ns, name);
        let Some(service) = self.services.get_namespaced(ns, name) else {
            // The service is gone: so are the Endpoints we kept for it.
            let ours = existing.as_ref().is_some_and(|e| {
                e.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(CONTROLLER_NAME)
            });
            if ours {
                match api.delete(name, &DeleteParams::default()).await {
                    Err(err) if !is_not_found(&err) => return Err(err),
                    _ => {}
                }
            }
            return Ok(());
        };
        if service_selector(&service).is_none() || service.metadata.deletion_timestamp.is_some() {
            // No selector: the user keeps the Endpoints.
            return Ok(());
        }
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list_namespace(ns)
            .into_iter()
            .filter(|p| selects(&service, p))
            .collect();
        let (subsets, truncated) = desired_subsets(&service, &pods);
        let mut labels = service.labels().clone();
        if is_headless(&service) {
            labels.insert(LABEL_HEADLESS.into(), String::new());
        } else {
            labels.remove(LABEL_HEADLESS);
        }
        labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
        let mut annotations = existing
            .as_ref()
            .and_then(|e| e.metadata.annotations.clone())
            .unwrap_or_default();
        if truncated {
            annotations.insert(ANNOTATION_OVER_CAPACITY.into(), "truncated".into());
        } else {
            annotations.remove(ANNOTATION_OVER_CAPACITY);
        }
        let subsets = (!subsets.is_empty()).then_some(subsets);
        if let Some(existing) = &existing {
            let same_subsets = normalized(existing.subsets.clone()) == normalized(subsets.clone());
            if same_subsets
                && existing.metadata.labels.clone().unwrap_or_default() == labels
                && existing.metadata.annotations.clone().unwrap_or_default() == annotations
            {
                return Ok(());
            }
        }
        let endpoints = Endpoints {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(ns.to_owned()),
                labels: Some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                resource_version: existing
                    .as_ref()
                    .and_then(|e| e.metadata.resource_version.clone()),
                ..existing
                    .as_ref()
                    .map(|e| e.metadata.clone())
                    .unwrap_or_default()
            },
            subsets,
        };
        let result = match &existing {
            Some(_) => api.replace(name, &PostParams::default(), &endpoints).await,
            None => api.create(&PostParams::default(), &endpoints).await,
        };
        match result {
            Ok(_) => Ok(()),
            // Created meanwhile, or changed under us: the next sync sees it.
            Err(err) => {
                let (reason, verb) = if existing.is_some() {
                    ("FailedToUpdateEndpoint", "update")
                } else {
                    ("FailedToCreateEndpoint", "create")
                };
                if crate::util::api_code(&err) != Some(409) {
                    self.recorder.record(
                        &endpoints,
                        EventType::Warning,
                        reason,
                        &format!("Failed to {verb} endpoint for service {ns}/{name}: {err}"),
                    );
                }
                Err(err)
            }
        }
    }
}

/// Subsets in a canonical form, to compare what is with what should be.
fn normalized(subsets: Option<Vec<EndpointSubset>>) -> BTreeSet<String> {
    subsets
        .unwrap_or_default()
        .into_iter()
        .map(|mut s| {
            for list in [&mut s.addresses, &mut s.not_ready_addresses] {
                if let Some(a) = list.as_mut() {
                    a.sort_by(|x, y| x.ip.cmp(&y.ip));
                }
                if list.as_ref().is_some_and(Vec::is_empty) {
                    *list = None;
                }
            }
            if let Some(p) = s.ports.as_mut() {
                p.sort_by(|x, y| (&x.name, x.port).cmp(&(&y.name, y.port)));
            }
            serde_json::to_string(&s).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{eventually, namespace, TestCluster};
    use serde_json::{json, Value};

    pub(crate) async fn create_pod(
        client: &Client,
        ns: &str,
        name: &str,
        spec: Value,
        labels: Value,
    ) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
        }
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": labels}, "spec": spec}),
        )
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }

    /// Gives a pod an IP and a Ready condition, as its kubelet would.
    pub(crate) async fn run_pod(client: &Client, ns: &str, name: &str, ip: &str, ready: bool) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                            "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
        pods.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status),
        )
        .await
        .unwrap();
    }

    pub(crate) async fn create_service(client: &Client, ns: &str, svc: Value) {
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(svc).unwrap(),
        )
        .await
        .unwrap();
    }

    fn ips(addrs: &Option<Vec<EndpointAddress>>) -> Vec<String> {
        let mut ips: Vec<String> = addrs.iter().flatten().map(|a| a.ip.clone()).collect();
        ips.sort();
        ips
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn endpoints_list_ready_and_unready_pods_with_named_ports() {
        let cluster = TestCluster::start().await;
        let client = cluster.client.clone();
        cluster.run_controllers(&["endpoints"]);
        namespace(&client, "net").await;
        let web = json!({"app": "web"});
        let http = json!([{"name": "c", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}]);
        create_pod(
            &client,
            "net",
            "ready",
            json!({"containers": http, "nodeName": "n1", "hostname": "h", "subdomain": "web"}),
            web.clone(),
        )
        .await;
        create_pod(
            &client,
            "net",
            "unready",
            json!({"containers": http}),
            web.clone(),
        )
        .await;
        create_pod(&client, "net", "portless", json!({}), web.clone()).await;
        create_pod(
            &client,
            "net",
            "no-ip",
            json!({"containers": http}),
            web.clone(),
        )
        .await;
        create_pod(
            &client,
            "net",
            "leaving",
            json!({"containers": http, "nodeName": "n1"}),
            web.clone(),
        )
        .await;
        create_pod(
            &client,
            "net",
            "other",
            json!({"containers": http}),
            json!({"app": "db"}),
        )
        .await;
        run_pod(&client, "net", "ready", "10.0.0.1", true).await;
        run_pod(&client, "net", "unready", "10.0.0.2", false).await;
        run_pod(&client, "net", "portless", "10.0.0.3", true).await;
        run_pod(&client, "net", "leaving", "10.0.0.4", true).await;
        run_pod(&client, "net", "other", "10.0.0.5", true).await;
        // A bound pod is deleted gracefully: it stays, terminating.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "net");
        pods.delete("leaving", &DeleteParams::default())
            .await
            .unwrap();
        create_service(&client, "net", json!({"metadata": {"name": "web", "labels": {"tier": "front"}},
            "spec": {"clusterIP": "10.43.0.50", "selector": web, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
        .await;

        let api: Api<Endpoints> = Api::namespaced(client.clone(), "net");
        let ep = eventually("endpoints for web", || async {
            let ep = api.get_opt("web").await.unwrap()?;
            let subset = ep.subsets.as_ref()?.first()?.clone();
            (ips(&subset.addresses) == ["10.0.0.1"]
                && ips(&subset.not_ready_addresses) == ["10.0.0.2"])
            .then_some(ep)
        })
        .await;
        let subsets = ep.subsets.clone().unwrap();
        assert_eq!(subsets.len(), 1, "{subsets:?}");
        let ready = &subsets[0].addresses.as_ref().unwrap()[0];
        assert_eq!(ready.hostname.as_deref(), Some("h"));
        assert_eq!(ready.node_name.as_deref(), Some("n1"));
        let target = ready.target_ref.as_ref().unwrap();
        assert_eq!(
            (target.kind.as_deref(), target.name.as_deref()),
            (Some("Pod"), Some("ready"))
        );
        let port = &subsets[0].ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.protocol.as_deref()),
            (Some("http"), 8080, Some("TCP"))
        );
        let labels = ep.metadata.labels.unwrap();
        assert_eq!(
            labels.get(LABEL_MANAGED_BY).map(String::as_str),
            Some(CONTROLLER_NAME)
        );
        assert_eq!(labels.get("tier").map(String::as_str), Some("front"));
        assert!(!labels.contains_key(LABEL_HEADLESS));

        // publishNotReadyAddresses: every pod counts as ready, even the terminating one.
        let services: Api<Service> = Api::namespaced(client.clone(), "net");
        services
            .patch(
                "web",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"publishNotReadyAddresses": true}})),
            )
            .await
            .unwrap();
        eventually("all addresses ready", || async {
            let ep = api.get("web").await.unwrap();
            let subset = ep.subsets?.first()?.clone();
            (ips(&subset.addresses) == ["10.0.0.1", "10.0.0.2", "10.0.0.4"]
                && subset.not_ready_addresses.is_none())
            .then_some(())
        })
        .await;

        // A selectorless service's Endpoints belong to the user.
        create_service(
            &client,
            "net",
            json!({"metadata": {"name": "manual"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .await;
        let manual: Endpoints = serde_json::from_value(json!({"metadata": {"name": "manual"},
            "subsets": [{"addresses": [{"ip": "192.168.1.1"}], "ports": [{"port": 80}]}]}))
        .unwrap();
        api.create(&PostParams::default(), &manual).await.unwrap();

        services
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        eventually("endpoints go with the service", || async {
            api.get_opt("web").await.unwrap().is_none().then_some(())
        })
        .await;
        let manual = api.get("manual").await.unwrap();
        assert_eq!(ips(&manual.subsets.unwrap()[0].addresses), ["192.168.1.1"]);
        assert!(manual
            .metadata
            .labels
            .is_none_or(|l| !l.contains_key(LABEL_MANAGED_BY)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn headless_services_without_ports_list_addresses() {
        let cluster = TestCluster::start().await;
        let client = cluster.client.clone();
        cluster.run_controllers(&["endpoints"]);
        namespace(&client, "net").await;
        create_pod(
            &client,
            "net",
            "db-0",
            json!({"hostname": "db-0", "subdomain": "db"}),
            json!({"app": "db"}),
        )
        .await;
        run_pod(&client, "net", "db-0", "10.0.1.1", true).await;
        create_service(
            &client,
            "net",
            json!({"metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"}}}),
        )
        .await;
        let api: Api<Endpoints> = Api::namespaced(client.clone(), "net");
        let ep = eventually("endpoints for db", || async {
            let ep = api.get_opt("db").await.unwrap()?;
            ep.subsets.is_some().then_some(ep)
        })
        .await;
        let subset = &ep.subsets.unwrap()[0];
        assert_eq!(ips(&subset.addresses), ["10.0.1.1"]);
        assert_eq!(
            subset.addresses.as_ref().unwrap()[0].hostname.as_deref(),
            Some("db-0")
        );
        assert!(subset.ports.is_none());
        assert_eq!(
            ep.metadata
                .labels
                .unwrap()
                .get(LABEL_HEADLESS)
                .map(String::as_str),
            Some("")
        );
    }

    #[test]
    fn pods_missing_a_named_port_drop_out_of_that_ports_subset() {
        let pod = |name: &str, ports: Value| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "n", "uid": name},
                    "spec": {"containers": [{"name": "c", "ports": ports}]},
                    "status": {"phase": "Running", "podIP": format!("10.0.0.{}", name.len()),
                               "conditions": [{"type": "Ready", "status": "True"}]}
                }))
                .unwrap(),
            )
        };
        let both = json!([{"name": "http", "containerPort": 80}, {"name": "metrics", "containerPort": 9090}]);
        let pods = vec![
            pod("a", both.clone()),
            pod("bb", both),
            pod("ccc", json!([{"name": "http", "containerPort": 81}])),
        ];
        let svc: Service = serde_json::from_value(
            json!({"metadata": {"name": "s", "namespace": "n"}, "spec": {
            "clusterIP": "10.96.0.10", "selector": {"x": "y"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                      {"name": "metrics", "port": 9090, "targetPort": "metrics"}]}}),
        )
        .unwrap();
        let (subsets, truncated) = desired_subsets(&svc, &pods);
        assert!(!truncated);
        // a and bb share both ports; ccc has http on another number.
        assert_eq!(subsets.len(), 2, "{subsets:?}");
        let with = |ip: &str| {
            subsets
                .iter()
                .find(|s| ips(&s.addresses).contains(&ip.to_string()))
                .unwrap()
        };
        assert_eq!(ips(&with("10.0.0.1").addresses), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(with("10.0.0.1").ports.as_ref().unwrap().len(), 2);
        assert_eq!(with("10.0.0.3").ports.as_ref().unwrap()[0].port, 81);
    }
}
