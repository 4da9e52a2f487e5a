//! Storage object in-use protection (`pvc-protection`, `pv-protection`):
//! the API server puts `kubernetes.io/pvc-protection` on every claim and
//! `kubernetes.io/pv-protection` on every volume; these controllers add
//! them where missing and take them off a deleted object only once it is
//! safe: a claim when no pod that may still run uses it, a volume when it
//! is no longer Bound.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use rudder_runtime::{Informer, WorkQueue};
use serde_json::json;

use super::binder::pod_claim_keys;
use super::*;
use crate::util::{is_not_found, phase};
use crate::Context;

const PODS_BY_CLAIM: &str = "protection-claims";

pub fn start_pvc_protection(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    PvcProtectionController::new(ctx).run().boxed()
}

pub fn start_pv_protection(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    PvProtectionController::new(ctx).run().boxed()
}

/// Whether an object needs its protection finalizer added, or removed
/// (`Some(true)` add, `Some(false)` consider removing).
fn finalizer_action(meta: &ObjectMeta, finalizer: &str) -> Option<bool> {
    match (
        meta.deletion_timestamp.is_some(),
        has_finalizer(meta, finalizer),
    ) {
        (false, false) => Some(true),
        (true, true) => Some(false),
        _ => None,
    }
}

/// Adds or removes one finalizer with a JSON patch that tests the list
/// first, so a concurrent change to the finalizers is never lost.
async fn set_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str, present: bool) -> kube::Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let current: Vec<String> = obj.meta().finalizers.clone().unwrap_or_default();
    let mut wanted: Vec<String> = current
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if present {
        wanted.push(finalizer.to_owned());
    }
    let patch =
        json!({"metadata": {"finalizers": wanted, "resourceVersion": obj.meta().resource_version}});
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if is_not_found(&err) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Whether the pod may still use its volumes: scheduled, not finished,
/// and not already shut down (deleted with no grace left, where waiting
/// for it could deadlock against its own finalizers).
fn pod_may_use_volumes(pod: &Pod) -> bool {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(phase(pod), "Succeeded" | "Failed");
    let shut_down = pod.metadata.deletion_timestamp.is_some()
        && pod.metadata.deletion_grace_period_seconds == Some(0);
    scheduled && !finished && !shut_down
}

#[derive(Clone)]
pub struct PvcProtectionController {
    ctx: Context,
    queue: WorkQueue<String>,
    claims: Informer<PersistentVolumeClaim>,
    pods: Informer<Pod>,
}

impl PvcProtectionController {
    pub fn new(ctx: &Context) -> Self {
        let queue = WorkQueue::new();
        let claims = ctx.informers.get::<PersistentVolumeClaim>();
        let pods = ctx.informers.get::<Pod>();
        pods.add_index(PODS_BY_CLAIM, pod_claim_keys);
        let q = queue.clone();
        claims.on_change(move |change| {
            let pvc = change.object();
            if finalizer_action(&pvc.metadata, PVC_PROTECTION_FINALIZER).is_some() {
                q.add(claim_key(pvc));
            }
        });
        let q = queue.clone();
        pods.on_change(move |change| {
            // A pod that stops using its claims may free one being
            // deleted.
            let pod = change.object();
            if matches!(change, rudder_runtime::Change::Deleted(_)) || !pod_may_use_volumes(pod) {
                for key in pod_claim_keys(pod) {
                    q.add(key);
                }
            }
        });
        PvcProtectionController {
            ctx: ctx.clone(),
            queue,
            claims,
            pods,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.claims.wait_synced().await;
        self.pods.wait_synced().await;
        let queue = self.queue.clone();
        queue
            .run_workers("pvc-protection", 2, move |key: String| {
                let this = self.clone();
                async move { this.sync(&key).await }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, key: &str) -> kube::Result<Option<Duration>> {
        let Some(pvc) = self.claims.get(key) else {
            return Ok(None);
        };
        let api: Api<PersistentVolumeClaim> = Api::namespaced(
            self.ctx.client.clone(),
            pvc.metadata.namespace.as_deref().unwrap_or("default"),
        );
        match finalizer_action(&pvc.metadata, PVC_PROTECTION_FINALIZER) {
            Some(true) => set_finalizer(&api, &*pvc, PVC_PROTECTION_FINALIZER, true).await?,
            Some(false) => {
                if self.in_use(&pvc).await? {
                    tracing::debug!(
                        claim = key,
                        "claim is being deleted but still used by a pod"
                    );
                } else {
                    set_finalizer(&api, &*pvc, PVC_PROTECTION_FINALIZER, false).await?;
                }
            }
            None => {}
        }
        Ok(None)
    }

    /// Whether a pod uses the claim: the cache first, then (if it says
    /// no) the API itself, as a pod made a moment ago may not be cached.
    async fn in_use(&self, pvc: &PersistentVolumeClaim) -> kube::Result<bool> {
        let key = claim_key(pvc);
        let uses = |pod: &Pod| pod_may_use_volumes(pod) && pod_claim_keys(pod).contains(&key);
        if self
            .pods
            .by_index(PODS_BY_CLAIM, &key)
            .iter()
            .any(|p| uses(p))
        {
            return Ok(true);
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pvc.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let live = api.list(&Default::default()).await?;
        Ok(live.items.iter().any(uses))
    }
}

#[derive(Clone)]
pub struct PvProtectionController {
    ctx: Context,
    queue: WorkQueue<String>,
    volumes: Informer<PersistentVolume>,
}

impl PvProtectionController {
    pub fn new(ctx: &Context) -> Self {
        let queue = WorkQueue::new();
        let volumes = ctx.informers.get::<PersistentVolume>();
        let q = queue.clone();
        volumes.on_change(move |change| {
            let pv = change.object();
            if finalizer_action(&pv.metadata, PV_PROTECTION_FINALIZER).is_some() {
                q.add(pv.name_any());
            }
        });
        PvProtectionController {
            ctx: ctx.clone(),
            queue,
            volumes,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.volumes.wait_synced().await;
        let queue = self.queue.clone();
        queue
            .run_workers("pv-protection", 1, move |name: String| {
                let this = self.clone();
                async move { this.sync(&name).await }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, name: &str) -> kube::Result<Option<Duration>> {
        let Some(pv) = self.volumes.get(name) else {
            return Ok(None);
        };
        let api: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        match finalizer_action(&pv.metadata, PV_PROTECTION_FINALIZER) {
            Some(true) => set_finalizer(&api, &*pv, PV_PROTECTION_FINALIZER, true).await?,
            // A Bound volume stays until its claim lets go of it.
            Some(false) if volume_phase(&pv) != "Bound" => {
                set_finalizer(&api, &*pv, PV_PROTECTION_FINALIZER, false).await?
            }
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scheduled_running_pods_hold_claims() {
        let pod = |extra: serde_json::Value| -> Pod {
            let mut p = json!({"metadata": {"name": "p", "namespace": "default"},
                "spec": {"containers": [], "nodeName": "n"}, "status": {"phase": "Running"}});
            fixtures::merge(&mut p, extra);
            serde_json::from_value(p).unwrap()
        };
        assert!(pod_may_use_volumes(&pod(json!({}))));
        assert!(!pod_may_use_volumes(&pod(
            json!({"spec": {"nodeName": ""}})
        )));
        assert!(!pod_may_use_volumes(&pod(
            json!({"status": {"phase": "Succeeded"}})
        )));
        assert!(pod_may_use_volumes(&pod(
            json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30}})
        )));
        assert!(!pod_may_use_volumes(&pod(
            json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z", "deletionGracePeriodSeconds": 0}})
        )));
    }
}
