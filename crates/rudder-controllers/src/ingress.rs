//! The cluster side of the built-in Ingress controller (`ingress`): the
//! IngressClass `rudder` (the default class) exists, and every Ingress the
//! node agents serve reports where: `status.loadBalancer.ingress` lists
//! the InternalIPs of the Ready nodes, since each of them serves ports 80
//! and 443 (the addresses `servicelb` gives LoadBalancer Services).
//!
//! The agents route; this controller only writes the class and status, once
//! for the cluster.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rudder_ingress::class;
use rudder_runtime::informer::key_of;
use rudder_runtime::{Informer, WorkQueue};
use serde_json::json;

use crate::service_lb::ready_node_addresses;
use crate::util::{api_code, is_not_found};
use crate::Context;

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    let ctx = ctx.clone();
    async move { IngressStatusController::new(&ctx).run().await }.boxed()
}

pub struct IngressStatusController {
    client: Client,
    ingresses: Informer<Ingress>,
    classes: Informer<IngressClass>,
    nodes: Informer<Node>,
    queue: WorkQueue<String>,
}

impl IngressStatusController {
    pub fn new(ctx: &Context) -> Self {
        let ingresses = ctx.informers.get::<Ingress>();
        let classes = ctx.informers.get::<IngressClass>();
        let nodes = ctx.informers.get::<Node>();
        let queue = WorkQueue::new();
        {
            let q = queue.clone();
            ingresses.on_change(move |change| q.add(key_of(&**change.object())));
        }
        // A node (or class) change may change every Ingress's status.
        nodes.on_change(requeue_all(&queue, &ingresses));
        classes.on_change(requeue_all(&queue, &ingresses));
        IngressStatusController {
            client: ctx.client.clone(),
            ingresses,
            classes,
            nodes,
            queue,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.classes.wait_synced().await;
        self.ensure_class().await;
        self.ingresses.wait_synced().await;
        self.nodes.wait_synced().await;
        let this = Arc::new(self);
        let queue = this.queue.clone();
        queue
            .run_workers("ingress", 2, move |key: String| {
                let this = this.clone();
                async move { this.sync(&key).await.map(|()| None) }
            })
            .await;
        Ok(())
    }

    /// Creates the `rudder` IngressClass, marked default, unless a class of
    /// that name exists (a changed or deleted one is the operator's
    /// choice).
    async fn ensure_class(&self) {
        if self.classes.get(class::CLASS_NAME).is_some() {
            return;
        }
        let api: Api<IngressClass> = Api::all(self.client.clone());
        let wanted: IngressClass = match serde_json::from_value(json!({
            "metadata": {"name": class::CLASS_NAME,
                "annotations": {class::DEFAULT_CLASS_ANNOTATION: "true"},
                "labels": {"app.kubernetes.io/managed-by": "rudder"}},
            "spec": {"controller": class::CONTROLLER},
        })) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "building the rudder IngressClass");
                return;
            }
        };
        match api.create(&PostParams::default(), &wanted).await {
            Ok(created) => {
                tracing::info!("created IngressClass {}", created.name_any());
                self.classes.apply(Arc::new(created));
            }
            Err(e) if api_code(&e) == Some(409) => {}
            Err(e) => tracing::warn!(error = %e, "creating the rudder IngressClass"),
        }
    }

    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let Some(ingress) = self.ingresses.get(key) else {
            return Ok(());
        };
        let classes = self.classes.list();
        let addresses = ready_node_addresses(&self.nodes.list());
        let current: Vec<String> = ingress
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|list| list.iter().filter_map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        let desired = if class::served(&ingress, &classes) {
            addresses
        } else if !current.is_empty() && current == addresses {
            // Moved to another class: take back the addresses we wrote.
            Vec::new()
        } else {
            return Ok(());
        };
        if current == desired {
            return Ok(());
        }
        let ingress_list: Vec<serde_json::Value> =
            desired.iter().map(|ip| json!({"ip": ip})).collect();
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress_list}}});
        let api: Api<Ingress> = Api::namespaced(
            self.client.clone(),
            &ingress.namespace().unwrap_or_default(),
        );
        match api
            .patch_status(
                &ingress.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(updated) => {
                tracing::debug!(ingress = key, addresses = ?desired, "ingress status updated");
                self.ingresses.apply(Arc::new(updated));
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A change handler that queues every Ingress.
fn requeue_all<K>(
    queue: &WorkQueue<String>,
    ingresses: &Informer<Ingress>,
) -> impl Fn(&rudder_runtime::Change<K>) + Send + Sync + 'static {
    let (queue, ingresses) = (queue.clone(), ingresses.clone());
    move |_| {
        for ingress in ingresses.list() {
            queue.add(key_of(&*ingress));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{eventually, namespace, TestCluster};

    async fn node(client: &Client, name: &str, ip: &str, ready: bool) {
        let api: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
        .unwrap();
        api.create(&PostParams::default(), &node).await.unwrap();
    }

    fn lb_ips(ingress: &Ingress) -> Vec<String> {
        ingress
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|l| l.iter().filter_map(|i| i.ip.clone()).collect())
            .unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creates_the_class_and_publishes_ready_node_addresses() {
        let cluster = TestCluster::start().await;
        node(&cluster.client, "n1", "10.99.0.11", true).await;
        node(&cluster.client, "n2", "10.99.0.12", true).await;
        node(&cluster.client, "n3", "10.99.0.13", false).await;
        cluster.run_controllers(&["ingress"]);
        let classes: Api<IngressClass> = Api::all(cluster.client.clone());
        let created = eventually("the rudder IngressClass", || async {
            classes.get_opt("rudder").await.unwrap()
        })
        .await;
        assert!(class::is_default(&created) && class::is_ours(&created));

        namespace(&cluster.client, "net").await;
        let api: Api<Ingress> = Api::namespaced(cluster.client.clone(), "net");
        let spec = |class: Option<&str>| {
            let mut spec = json!({"rules": [{"host": "cafe.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]});
            if let Some(class) = class {
                spec["ingressClassName"] = json!(class);
            }
            spec
        };
        let create = |name: &str, class: Option<&str>| {
            let ingress: Ingress =
                serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec(class)}))
                    .unwrap();
            let api = api.clone();
            async move { api.create(&PostParams::default(), &ingress).await.unwrap() }
        };
        let cafe = create("cafe", None).await;
        // The DefaultIngressClass admission named the default class.
        assert_eq!(
            cafe.spec.as_ref().unwrap().ingress_class_name.as_deref(),
            Some("rudder")
        );
        let _ = create("other", Some("nginx")).await;
        eventually("cafe lists the Ready nodes", || async {
            let ingress = api.get("cafe").await.unwrap();
            (lb_ips(&ingress) == ["10.99.0.11", "10.99.0.12"]).then_some(())
        })
        .await;

        // A node turning Ready joins.
        let nodes: Api<Node> = Api::all(cluster.client.clone());
        nodes
            .patch_status(
                "n3",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
                ),
            )
            .await
            .unwrap();
        eventually("n3 joins", || async {
            let ingress = api.get("cafe").await.unwrap();
            (lb_ips(&ingress).len() == 3).then_some(())
        })
        .await;
        assert!(
            lb_ips(&api.get("other").await.unwrap()).is_empty(),
            "not ours"
        );
    }
}
