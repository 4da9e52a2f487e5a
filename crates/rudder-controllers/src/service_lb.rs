//! Service load balancer (`servicelb`), as k3s' ServiceLB: a Service of
//! type LoadBalancer is reachable on its port at every node's address
//! (each node agent's proxy routes those addresses), so its
//! `status.loadBalancer.ingress` lists the InternalIPs of the Ready nodes.
//! Services that name another `spec.loadBalancerClass` belong to someone
//! else's load balancer and are left alone; a Service that stops being a
//! LoadBalancer loses the addresses.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use rudder_runtime::Informer;
use serde_json::json;

use crate::Context;

/// The `spec.loadBalancerClass` this controller serves besides none.
pub const LOAD_BALANCER_CLASS: &str = "rudder.io/servicelb";

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    ServiceLbController::new(ctx).run().boxed()
}

pub struct ServiceLbController {
    client: Client,
    services: Informer<Service>,
    nodes: Informer<Node>,
    changed: Arc<tokio::sync::Notify>,
}

impl ServiceLbController {
    pub fn new(ctx: &Context) -> Self {
        let services = ctx.informers.get::<Service>();
        let nodes = ctx.informers.get::<Node>();
        let changed = Arc::new(tokio::sync::Notify::new());
        services.notify_on_change(&changed);
        nodes.notify_on_change(&changed);
        ServiceLbController {
            client: ctx.client.clone(),
            services,
            nodes,
            changed,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.services.wait_synced().await;
        self.nodes.wait_synced().await;
        loop {
            let addresses = ready_node_addresses(&self.nodes.list());
            for svc in self.services.list() {
                let wanted = wanted_ingress(&svc, &addresses);
                let current = svc
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .map(|ingress| {
                        ingress
                            .iter()
                            .filter_map(|i| i.ip.clone())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                let Some(wanted) = wanted else { continue };
                if wanted == current {
                    continue;
                }
                let api: Api<Service> =
                    Api::namespaced(self.client.clone(), &svc.namespace().unwrap_or_default());
                let ingress: Vec<_> = wanted
                    .iter()
                    .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
                    .collect();
                let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
                match api
                    .patch_status(
                        &svc.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::info!(service = %rudder_runtime::informer::key_of(&*svc), addresses = ?wanted, "load balancer addresses updated")
                    }
                    Err(e) => {
                        tracing::warn!(service = %rudder_runtime::informer::key_of(&*svc), error = %e, "updating the load balancer status");
                        // Try again soon even without a change.
                        self.changed.notify_one();
                    }
                }
            }
            self.changed.notified().await;
            // A burst of node status updates makes one pass.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The InternalIPs of the Ready nodes, sorted (also where Ingresses are
/// served).
pub(crate) fn ready_node_addresses(nodes: &[Arc<Node>]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for node in nodes {
        let Some(status) = node.status.as_ref() else {
            continue;
        };
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let schedulable = !node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if !ready || !schedulable {
            continue;
        }
        for address in status.addresses.iter().flatten() {
            if address.type_ == "InternalIP" {
                out.insert(address.address.clone());
            }
        }
    }
    out.into_iter().collect()
}

/// The ingress addresses `svc` should have: Some(list) for the services
/// this controller owns (empty when it is no LoadBalancer any more but
/// still shows addresses), None for the ones it leaves alone.
fn wanted_ingress(svc: &Service, addresses: &[String]) -> Option<Vec<String>> {
    let spec = svc.spec.as_ref()?;
    let class = spec.load_balancer_class.as_deref();
    if class.is_some_and(|c| c != LOAD_BALANCER_CLASS) {
        return None;
    }
    if spec.type_.as_deref() == Some("LoadBalancer") {
        Some(addresses.to_vec())
    } else {
        Some(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, ready: bool, unschedulable: bool) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"unschedulable": unschedulable},
                "status": {
                    "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                    "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                },
            }))
            .unwrap(),
        )
    }

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "d"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn load_balancers_get_the_ready_schedulable_nodes_addresses() {
        let nodes = vec![
            node("b", "10.99.0.12", true, false),
            node("a", "10.99.0.11", true, false),
            node("c", "10.99.0.13", false, false),
            node("d", "10.99.0.14", true, true),
        ];
        let addresses = ready_node_addresses(&nodes);
        assert_eq!(addresses, vec!["10.99.0.11", "10.99.0.12"]);
        let lb = service(json!({"type": "LoadBalancer"}));
        assert_eq!(wanted_ingress(&lb, &addresses), Some(addresses.clone()));
        let ours =
            service(json!({"type": "LoadBalancer", "loadBalancerClass": LOAD_BALANCER_CLASS}));
        assert_eq!(wanted_ingress(&ours, &addresses), Some(addresses.clone()));
        let theirs =
            service(json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}));
        assert_eq!(wanted_ingress(&theirs, &addresses), None);
        let plain = service(json!({"type": "ClusterIP"}));
        assert_eq!(wanted_ingress(&plain, &addresses), Some(vec![]));
    }
}
