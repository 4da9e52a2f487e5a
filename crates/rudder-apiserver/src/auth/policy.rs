//! The authorizers' view of the cluster: an RBAC snapshot rebuilt whenever
//! a Role, ClusterRole or binding changes (from the watch caches, so a new
//! binding takes effect within moments, as with kube-apiserver's
//! informers), and the pods the Node authorizer walks.

use std::sync::{Arc, RwLock};

use rudder_auth::node::{NodeGraph, RefKind};
use rudder_auth::rbac::RbacPolicy;
use rudder_auth::Attributes;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::cache::CacheMessage;
use crate::ApiServer;

/// Where the four RBAC kinds live in the store.
const RBAC_PREFIXES: [&str; 4] = [
    "/roles.rbac.authorization.k8s.io/",
    "/clusterroles.rbac.authorization.k8s.io/",
    "/rolebindings.rbac.authorization.k8s.io/",
    "/clusterrolebindings.rbac.authorization.k8s.io/",
];

#[derive(Default)]
pub(crate) struct PolicyState {
    rbac: RwLock<Option<Arc<RbacPolicy>>>,
    /// Started on first use: the task that keeps `rbac` fresh.
    started: OnceCell<()>,
}

impl PolicyState {
    /// The current RBAC snapshot (built on first use).
    pub(crate) async fn rbac(&self, server: &ApiServer) -> Arc<RbacPolicy> {
        self.started
            .get_or_init(|| async {
                let policy = build(server).await;
                *self.rbac.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(policy));
                tokio::spawn(follow(server.clone()));
            })
            .await;
        self.rbac
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .expect("built before the follower starts")
    }

    fn replace(&self, policy: RbacPolicy) {
        *self.rbac.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(policy));
    }
}

async fn build(server: &ApiServer) -> RbacPolicy {
    let mut lists: Vec<Vec<Value>> = Vec::with_capacity(4);
    for prefix in RBAC_PREFIXES {
        let (objects, _) = server
            .caches()
            .get(server.store(), prefix)
            .snapshot(prefix)
            .await;
        lists.push(objects.iter().map(|o| (**o).clone()).collect());
    }
    RbacPolicy::from_objects(&lists[0], &lists[1], &lists[2], &lists[3])
}

/// Rebuilds the snapshot after every burst of RBAC changes.
async fn follow(server: ApiServer) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    for prefix in RBAC_PREFIXES {
        let cache = server.caches().get(server.store(), prefix);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut subscription = cache.subscribe_with_state(prefix).await;
            loop {
                match subscription.rx.recv().await {
                    Ok(CacheMessage::Event(_)) | Ok(CacheMessage::Reset) => {
                        let _ = tx.try_send(());
                    }
                    Ok(CacheMessage::Progress(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.try_send(());
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        subscription = cache.subscribe_with_state(prefix).await;
                        let _ = tx.try_send(());
                    }
                }
            }
        });
    }
    drop(tx);
    while rx.recv().await.is_some() {
        // Let a burst (a whole manifest of roles) settle into one rebuild.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        while rx.try_recv().is_ok() {}
        let policy = build(&server).await;
        if let Some(security) = server.security() {
            security.policy.replace(policy);
        }
    }
}

/// The pods bound to one node, for the Node authorizer.
pub(crate) struct PodsOnNode {
    node: String,
    pods: Vec<Arc<Value>>,
}

impl NodeGraph for PodsOnNode {
    fn pod_on_node_uses(&self, node: &str, kind: RefKind, namespace: &str, name: &str) -> bool {
        node == self.node
            && self.pods.iter().any(|pod| {
                pod.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace)
                    && rudder_auth::node::pod_references(pod)
                        .iter()
                        .any(|(k, n)| *k == kind && n == name)
            })
    }
}

impl ApiServer {
    /// The pods on the requesting node (only gathered for the requests the
    /// graph decides).
    pub(crate) async fn node_graph(&self, attributes: &Attributes) -> PodsOnNode {
        let node = attributes.user.node_name().unwrap_or_default().to_owned();
        let needs_graph = attributes.resource_request
            && attributes.api_group.is_empty()
            && matches!(
                attributes.resource.as_str(),
                "secrets"
                    | "configmaps"
                    | "persistentvolumeclaims"
                    | "persistentvolumes"
                    | "serviceaccounts"
            );
        let pods = if needs_graph {
            let (pods, _) = self
                .caches()
                .get(self.store(), "/pods/")
                .snapshot("/pods/")
                .await;
            pods.into_iter()
                .filter(|p| {
                    p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node.as_str())
                })
                .collect()
        } else {
            Vec::new()
        };
        PodsOnNode { node, pods }
    }
}
