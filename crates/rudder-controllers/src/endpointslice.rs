//! EndpointSlice controller (`endpointslice`): for every Service with a
//! selector, EndpointSlices (`discovery.k8s.io/v1`) listing the selected
//! pods, at most 100 endpoints each, one group of slices per set of
//! resolved ports and per address type. Each endpoint carries its
//! conditions (ready, serving, terminating), `targetRef`, `nodeName`,
//! `hostname` and the zone of its node. Slices are named `<service>-…`,
//! labelled `kubernetes.io/service-name` and
//! `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`,
//! and owned by the Service; a Service without endpoints keeps one empty
//! placeholder slice. Slices are changed in place where possible, so a
//! change to one pod rewrites one slice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rudder_runtime::expectations::Expectations;
use rudder_runtime::informer::{key_of, split_key};
use rudder_runtime::{Change, Informer, WorkQueue};

use crate::endpoints::{
    find_port, is_headless, pod_ip, pod_reference, selects, service_families, service_selector,
    services_for_pod, should_pod_be_in_endpoints, should_set_hostname, LABEL_HEADLESS,
};
use crate::util::{controller_reference, is_not_found, is_pod_ready};
use crate::Context;

pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Slices by the service they belong to (`namespace/service`).
const SERVICE_INDEX: &str = "endpointslice-service";

#[derive(Clone, Debug)]
pub struct EndpointSliceConfig {
    /// `--max-endpoints-per-slice`.
    pub max_endpoints_per_slice: usize,
}

impl Default for EndpointSliceConfig {
    fn default() -> Self {
        EndpointSliceConfig {
            max_endpoints_per_slice: 100,
        }
    }
}

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    EndpointSliceController::new(ctx, EndpointSliceConfig::default())
        .run()
        .boxed()
}

fn managed_service_key(slice: &EndpointSlice) -> Option<String> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(CONTROLLER_NAME) {
        return None;
    }
    Some(format!(
        "{}/{}",
        slice.namespace()?,
        labels.get(LABEL_SERVICE_NAME)?
    ))
}

type PortKey = Vec<(Option<String>, Option<i32>, Option<String>, Option<String>)>;

fn port_key(ports: &[EndpointPort]) -> PortKey {
    let mut key: PortKey = ports
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.port,
                p.protocol.clone(),
                p.app_protocol.clone(),
            )
        })
        .collect();
    key.sort();
    key
}

/// What identifies an endpoint across syncs: its pod, else its address.
fn endpoint_id(e: &Endpoint) -> String {
    e.target_ref
        .as_ref()
        .and_then(|r| {
            Some(format!(
                "{}/{}",
                r.namespace.as_deref()?,
                r.name.as_deref()?
            ))
        })
        .unwrap_or_else(|| e.addresses.join(","))
}

pub struct EndpointSliceController {
    client: Client,
    config: EndpointSliceConfig,
    services: Informer<Service>,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    slices: Informer<EndpointSlice>,
    queue: WorkQueue<String>,
    expectations: Arc<Expectations>,
}

impl EndpointSliceController {
    pub fn new(ctx: &Context, config: EndpointSliceConfig) -> Self {
        let services = ctx.informers.get::<Service>();
        let pods = ctx.informers.get::<Pod>();
        let nodes = ctx.informers.get::<Node>();
        let slices = ctx.informers.get::<EndpointSlice>();
        slices.add_index(SERVICE_INDEX, |s: &EndpointSlice| {
            managed_service_key(s).into_iter().collect()
        });
        let queue = WorkQueue::new();
        let expectations = Arc::new(Expectations::new());
        let q = queue.clone();
        services.on_change(move |change| q.add(key_of(&**change.object())));
        let (q, svc) = (queue.clone(), services.clone());
        pods.on_change(move |change| {
            let mut keys = services_for_pod(&svc, change.object());
            if let Change::Updated { old, .. } = change {
                keys.extend(services_for_pod(&svc, old));
            }
            for key in keys {
                q.add(key);
            }
        });
        let (q, svc) = (queue.clone(), services.clone());
        nodes.on_change(move |change| {
            // A node changing zone changes its endpoints' zone.
            if let Change::Updated { old, new } = change {
                if old.labels().get(LABEL_ZONE) != new.labels().get(LABEL_ZONE) {
                    for s in svc.list().iter().filter(|s| service_selector(s).is_some()) {
                        q.add(key_of(&**s));
                    }
                }
            }
        });
        let (q, exp) = (queue.clone(), expectations.clone());
        slices.on_change(move |change| {
            let Some(key) = managed_service_key(change.object()) else {
                return;
            };
            match change {
                Change::Added(_) => exp.creation_observed(&key),
                Change::Deleted(_) => exp.deletion_observed(&key),
                Change::Updated { .. } => {}
            }
            q.add(key);
        });
        EndpointSliceController {
            client: ctx.client.clone(),
            config,
            services,
            pods,
            nodes,
            slices,
            queue,
            expectations,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.services.wait_synced().await;
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        self.slices.wait_synced().await;
        let this = Arc::new(self);
        let queue = this.queue.clone();
        queue
            .run_workers("endpointslice", 4, move |key: String| {
                let this = this.clone();
                async move { this.sync(&key).await }
            })
            .await;
        Ok(())
    }

    fn endpoint_for(&self, service: &Service, pod: &Pod, family: &str) -> Option<Endpoint> {
        let ip = pod_ip(pod, family)?;
        let serving = is_pod_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let publish = service
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            == Some(true);
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let zone = node_name
            .as_deref()
            .and_then(|n| self.nodes.get(n))
            .and_then(|n| n.labels().get(LABEL_ZONE).cloned());
        Some(Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: should_set_hostname(pod, service)
                .then(|| pod.spec.as_ref().and_then(|s| s.hostname.clone()))
                .flatten(),
            node_name,
            target_ref: Some(pod_reference(pod)),
            zone,
            ..Default::default()
        })
    }

    async fn sync(&self, key: &str) -> kube::Result<Option<Duration>> {
        let (ns, name) = split_key(key);
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let existing = self.slices.by_index(SERVICE_INDEX, key);
        let service = self
            .services
            .get_namespaced(ns, name)
            .filter(|s| s.metadata.deletion_timestamp.is_none());
        let Some(service) = service.filter(|s| service_selector(s).is_some()) else {
            // Gone, or without a selector: our slices go.
            self.expectations.delete(key);
            for slice in existing {
                self.delete_slice(&api, key, &slice).await?;
            }
            return Ok(None);
        };
        if !self.expectations.satisfied(key) {
            // Our own creations and deletions are not all in the cache yet.
            return Ok(Some(Duration::from_millis(100)));
        }
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list_namespace(ns)
            .into_iter()
            .filter(|p| selects(&service, p) && should_pod_be_in_endpoints(p, true))
            .collect();
        let families = service_families(&service);
        for slice in &existing {
            if !families.contains(&slice.address_type.as_str()) {
                self.delete_slice(&api, key, slice).await?;
            }
        }
        for family in families {
            let current: Vec<Arc<EndpointSlice>> = existing
                .iter()
                .filter(|s| s.address_type == family)
                .cloned()
                .collect();
            self.reconcile_family(&api, key, &service, &pods, family, current)
                .await?;
        }
        Ok(None)
    }

    async fn delete_slice(
        &self,
        api: &Api<EndpointSlice>,
        key: &str,
        slice: &EndpointSlice,
    ) -> kube::Result<()> {
        self.expectations.expect(key, 0, 1);
        match api
            .delete(&slice.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => {
                self.expectations.deletion_observed(key);
                if is_not_found(&err) {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    fn slice_labels(&self, service: &Service) -> BTreeMap<String, String> {
        let mut labels: BTreeMap<String, String> = service
            .labels()
            .iter()
            .filter(|(k, _)| {
                ![LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS].contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if is_headless(service) {
            labels.insert(LABEL_HEADLESS.into(), String::new());
        }
        labels.insert(LABEL_SERVICE_NAME.into(), service.name_any());
        labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
        labels
    }

    fn new_slice(
        &self,
        service: &Service,
        family: &str,
        ports: Vec<EndpointPort>,
        endpoints: Vec<Endpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", service.name_any())),
                namespace: service.namespace(),
                labels: Some(self.slice_labels(service)),
                owner_references: Some(vec![controller_reference(service)]),
                ..Default::default()
            },
            address_type: family.to_owned(),
            endpoints,
            ports: Some(ports),
        }
    }

    async fn reconcile_family(
        &self,
        api: &Api<EndpointSlice>,
        key: &str,
        service: &Service,
        pods: &[Arc<Pod>],
        family: &str,
        current: Vec<Arc<EndpointSlice>>,
    ) -> kube::Result<()> {
        let max = self.config.max_endpoints_per_slice.max(1);
        // The desired endpoints, grouped by their resolved ports.
        let mut desired: BTreeMap<PortKey, (Vec<EndpointPort>, BTreeMap<String, Endpoint>)> =
            BTreeMap::new();
        let service_ports = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        for pod in pods {
            let Some(endpoint) = self.endpoint_for(service, pod, family) else {
                continue;
            };
            let ports: Vec<EndpointPort> = service_ports
                .iter()
                .filter_map(|sp| {
                    Some(EndpointPort {
                        name: Some(sp.name.clone().unwrap_or_default()),
                        port: Some(find_port(pod, sp)?),
                        protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                        app_protocol: sp.app_protocol.clone(),
                    })
                })
                .collect();
            desired
                .entry(port_key(&ports))
                .or_insert_with(|| (ports, BTreeMap::new()))
                .1
                .insert(endpoint_id(&endpoint), endpoint);
        }
        let labels = self.slice_labels(service);
        let mut to_create: Vec<EndpointSlice> = Vec::new();
        let mut to_update: Vec<EndpointSlice> = Vec::new();
        let mut to_delete: Vec<Arc<EndpointSlice>> = Vec::new();
        let mut by_ports: HashMap<PortKey, Vec<Arc<EndpointSlice>>> = HashMap::new();
        for slice in current {
            by_ports
                .entry(port_key(slice.ports.as_deref().unwrap_or_default()))
                .or_default()
                .push(slice);
        }
        for (pkey, (ports, mut wanted)) in std::mem::take(&mut desired) {
            let mut slices: Vec<(EndpointSlice, bool)> = Vec::new();
            for slice in by_ports.remove(&pkey).unwrap_or_default() {
                let mut next = (*slice).clone();
                // Keep what is still wanted, as it now should be.
                let mut changed = false;
                let mut kept = Vec::new();
                for e in &slice.endpoints {
                    match wanted.remove(&endpoint_id(e)) {
                        Some(want) => {
                            changed |= want != *e;
                            kept.push(want);
                        }
                        None => changed = true,
                    }
                }
                next.endpoints = kept;
                if next.metadata.labels.as_ref() != Some(&labels) {
                    next.metadata.labels = Some(labels.clone());
                    changed = true;
                }
                slices.push((next, changed));
            }
            // The rest fills the slices that change anyway, then any with
            // room, then new ones.
            let mut rest: Vec<Endpoint> = wanted.into_values().collect();
            slices.sort_by_key(|(_, changed)| !*changed);
            for (slice, changed) in slices.iter_mut() {
                while slice.endpoints.len() < max {
                    let Some(e) = rest.pop() else { break };
                    slice.endpoints.push(e);
                    *changed = true;
                }
            }
            for chunk in rest.chunks(max) {
                to_create.push(self.new_slice(service, family, ports.clone(), chunk.to_vec()));
            }
            for (slice, changed) in slices {
                if slice.endpoints.is_empty() {
                    to_delete.push(Arc::new(slice));
                } else if changed {
                    to_update.push(slice);
                }
            }
        }
        // Port sets no pod has any more.
        to_delete.extend(by_ports.into_values().flatten());
        // No endpoints at all: one empty placeholder slice stays.
        let any_endpoints = !to_create.is_empty()
            || !to_update.is_empty()
            || self.slices.by_index(SERVICE_INDEX, key).iter().any(|s| {
                s.address_type == family
                    && !s.endpoints.is_empty()
                    && !to_delete.iter().any(|d| d.name_any() == s.name_any())
            });
        if !any_endpoints {
            let placeholder = to_delete
                .iter()
                .position(|s| s.ports.as_ref().is_none_or(Vec::is_empty) && s.endpoints.is_empty());
            match placeholder {
                Some(i) => {
                    to_delete.remove(i);
                }
                None => to_create.push(self.new_slice(service, family, Vec::new(), Vec::new())),
            }
        }
        self.expectations
            .expect(key, to_create.len(), to_delete.len());
        for slice in &to_create {
            if let Err(err) = api.create(&PostParams::default(), slice).await {
                self.expectations.creation_observed(key);
                return Err(err);
            }
        }
        for slice in &to_update {
            api.replace(&slice.name_any(), &PostParams::default(), slice)
                .await?;
        }
        for slice in &to_delete {
            match api
                .delete(&slice.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(err) => {
                    self.expectations.deletion_observed(key);
                    if !is_not_found(&err) {
                        return Err(err);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::tests::{create_pod, create_service, run_pod};
    use crate::testing::{eventually, namespace, TestCluster};
    use kube::api::ListParams;
    use serde_json::json;

    async fn slices_of(client: &Client, ns: &str, svc: &str) -> Vec<EndpointSlice> {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
        api.list(&ListParams::default().labels(&format!("{LABEL_SERVICE_NAME}={svc}")))
            .await
            .unwrap()
            .items
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slices_split_at_the_limit_and_carry_conditions_and_zones() {
        let cluster = TestCluster::start().await;
        let client = cluster.client.clone();
        namespace(&client, "net").await;
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1",
            "labels": {"topology.kubernetes.io/zone": "zone-a"}}}))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let controller = EndpointSliceController::new(&cluster.ctx, EndpointSliceConfig::default());
        tokio::spawn(controller.run());
        cluster.ctx.informers.start();

        create_service(&client, "net", json!({"metadata": {"name": "web", "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
        .await;
        let placeholder = eventually("a placeholder slice", || async {
            let slices = slices_of(&client, "net", "web").await;
            (slices.len() == 1).then(|| slices[0].clone())
        })
        .await;
        assert!(placeholder.endpoints.is_empty());

        futures::future::join_all((0..105).map(|i| {
            let client = client.clone();
            async move {
                let name = format!("web-{i}");
                create_pod(
                    &client,
                    "net",
                    &name,
                    json!({"nodeName": "n1"}),
                    json!({"app": "web"}),
                )
                .await;
                run_pod(
                    &client,
                    "net",
                    &name,
                    &format!("10.1.{}.{}", i / 100, i % 100),
                    i != 0,
                )
                .await;
            }
        }))
        .await;
        let slices = eventually("105 endpoints in two slices", || async {
            let slices = slices_of(&client, "net", "web").await;
            let total: usize = slices.iter().map(|s| s.endpoints.len()).sum();
            (total == 105 && slices.len() == 2).then_some(slices)
        })
        .await;
        // Pods arrive one by one, so the split need not be 100 + 5; no
        // slice may exceed the limit.
        assert!(slices.iter().all(|s| s.endpoints.len() <= 100));
        let slice = &slices[0];
        assert_eq!(slice.address_type, "IPv4");
        assert!(slice.metadata.name.as_deref().unwrap().starts_with("web-"));
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(
            labels.get(LABEL_MANAGED_BY).map(String::as_str),
            Some(CONTROLLER_NAME)
        );
        assert_eq!(labels.get("tier").map(String::as_str), Some("front"));
        let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("Service", "web", Some(true))
        );
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("http"), Some(8080))
        );
        let all: Vec<&Endpoint> = slices.iter().flat_map(|s| &s.endpoints).collect();
        let unready = all.iter().find(|e| e.addresses == ["10.1.0.0"]).unwrap();
        let c = unready.conditions.as_ref().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(false), Some(false))
        );
        let ready = all.iter().find(|e| e.addresses == ["10.1.0.1"]).unwrap();
        assert_eq!(ready.conditions.as_ref().unwrap().ready, Some(true));
        assert_eq!(ready.zone.as_deref(), Some("zone-a"));
        assert_eq!(ready.node_name.as_deref(), Some("n1"));
        assert_eq!(
            ready.target_ref.as_ref().unwrap().name.as_deref(),
            Some("web-1")
        );

        // A terminating pod stays, as terminating and not ready.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "net");
        pods.delete("web-1", &DeleteParams::default())
            .await
            .unwrap();
        eventually("web-1 terminating", || async {
            let slices = slices_of(&client, "net", "web").await;
            let e = slices
                .iter()
                .flat_map(|s| &s.endpoints)
                .find(|e| e.addresses == ["10.1.0.1"])?
                .clone();
            let c = e.conditions?;
            (c.terminating == Some(true) && c.ready == Some(false) && c.serving == Some(true))
                .then_some(())
        })
        .await;

        let services: Api<Service> = Api::namespaced(client.clone(), "net");
        services
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        eventually("slices go with the service", || async {
            slices_of(&client, "net", "web")
                .await
                .is_empty()
                .then_some(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slices_managed_by_others_are_left_alone() {
        let cluster = TestCluster::start().await;
        let client = cluster.client.clone();
        namespace(&client, "net").await;
        // The API server's bootstrapped kube-dns Service has no selector:
        // the node agents publish its slices. Beside it, a foreign slice
        // next to a Service this controller does manage.
        let foreign = |ns: &str, name: &str, service: &str| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": {
                    LABEL_SERVICE_NAME: service, LABEL_MANAGED_BY: "agent.rudder.io"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.42.0.1"], "conditions": {"ready": true}}],
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}))
            .unwrap()
        };
        for (ns, name, service) in [
            ("kube-system", "kube-dns-n1", "kube-dns"),
            ("net", "web-custom", "web"),
        ] {
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
            api.create(&PostParams::default(), &foreign(ns, name, service))
                .await
                .unwrap();
        }
        let controller = EndpointSliceController::new(&cluster.ctx, EndpointSliceConfig::default());
        tokio::spawn(controller.run());
        cluster.ctx.informers.start();
        create_service(
            &client,
            "net",
            json!({"metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        )
        .await;
        // The controller has synced once its own slice for web exists.
        eventually("the controller's own slice for web", || async {
            slices_of(&client, "net", "web")
                .await
                .iter()
                .any(|s| {
                    s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_MANAGED_BY))
                        == Some(&CONTROLLER_NAME.to_string())
                })
                .then_some(())
        })
        .await;
        let names = |slices: Vec<EndpointSlice>| -> Vec<String> {
            let mut names: Vec<String> =
                slices.into_iter().filter_map(|s| s.metadata.name).collect();
            names.sort();
            names
        };
        assert_eq!(
            names(slices_of(&client, "kube-system", "kube-dns").await),
            ["kube-dns-n1"]
        );
        let web = names(slices_of(&client, "net", "web").await);
        assert_eq!(web.len(), 2, "{web:?}");
        assert!(web.contains(&"web-custom".to_string()));
    }
}
