//! Deployment controller: rolls a Deployment's pod template out through
//! ReplicaSets, one per template (named `<deployment>-<pod-template-hash>`),
//! with the RollingUpdate (maxSurge/maxUnavailable) or Recreate strategy,
//! revision history, pause, proportional scaling during a rollout, and the
//! Progressing/Available conditions `kubectl rollout status` reads.
//! `kubectl rollout undo` needs nothing special: kubectl copies an old
//! ReplicaSet's template into the Deployment, and the controller finds
//! that ReplicaSet again and scales it back up under a new revision.

mod revision;
mod rollout;
mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use rudder_runtime::informer::{key_of, split_key};
use rudder_runtime::{Change, Informer, WorkQueue};
use serde_json::json;

use crate::replicaset::POD_CONTROLLER_INDEX;
use crate::util::{
    controller_of, controller_reference, is_not_found, labels_of, selector_is_empty,
    selector_matches,
};
use crate::Context;

pub use revision::{POD_TEMPLATE_HASH, REVISION};

/// The ReplicaSet index by the uid of its controlling Deployment.
const RS_CONTROLLER_INDEX: &str = "controller-uid";

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    DeploymentController::new(ctx).run().boxed()
}

pub struct DeploymentController {
    ctx: Context,
    deployments: Informer<Deployment>,
    sets: Informer<ReplicaSet>,
    pods: Informer<Pod>,
    queue: WorkQueue<String>,
}

impl DeploymentController {
    pub fn new(ctx: &Context) -> Self {
        let deployments = ctx.informers.get::<Deployment>();
        let sets = ctx.informers.get::<ReplicaSet>();
        let pods = ctx.informers.get::<Pod>();
        sets.add_index(RS_CONTROLLER_INDEX, |rs: &ReplicaSet| {
            controller_of(&rs.metadata)
                .map(|r| vec![r.uid.clone()])
                .unwrap_or_default()
        });
        pods.add_index(POD_CONTROLLER_INDEX, |pod: &Pod| {
            controller_of(&pod.metadata)
                .map(|r| vec![r.uid.clone()])
                .unwrap_or_default()
        });
        let queue = WorkQueue::new();

        let q = queue.clone();
        deployments.on_change(move |change| q.add(key_of(&**change.object())));

        let (q, d) = (queue.clone(), deployments.clone());
        sets.on_change(move |change| {
            let owner_of = |rs: &ReplicaSet| owning_deployment(&d, rs);
            match change {
                Change::Updated { old, new } => {
                    let (a, b) = (owner_of(old), owner_of(new));
                    if a != b {
                        a.into_iter().for_each(|k| q.add(k));
                    }
                    match b {
                        Some(k) => q.add(k),
                        None if controller_of(&new.metadata).is_none() => {
                            for k in matching_deployments(&d, new) {
                                q.add(k);
                            }
                        }
                        None => {}
                    }
                }
                Change::Added(rs) | Change::Deleted(rs) => match owner_of(rs) {
                    Some(k) => q.add(k),
                    None if controller_of(&rs.metadata).is_none()
                        && matches!(change, Change::Added(_)) =>
                    {
                        for k in matching_deployments(&d, rs) {
                            q.add(k);
                        }
                    }
                    None => {}
                },
            }
        });

        // Recreate waits for the old pods to be gone: their deletion wakes
        // the Deployment.
        let (q, d, s) = (queue.clone(), deployments.clone(), sets.clone());
        pods.on_change(move |change| {
            if let Change::Deleted(pod) = change {
                let Some(owner) = controller_of(&pod.metadata) else {
                    return;
                };
                if owner.kind != "ReplicaSet" {
                    return;
                }
                let ns = pod.namespace().unwrap_or_default();
                if let Some(rs) = s.get_namespaced(&ns, &owner.name) {
                    if let Some(key) = owning_deployment(&d, &rs) {
                        let recreate = d.get(&key).is_some_and(|dep| {
                            dep.spec
                                .as_ref()
                                .and_then(|s| s.strategy.as_ref())
                                .and_then(|s| s.type_.as_deref())
                                == Some("Recreate")
                        });
                        if recreate {
                            q.add(key);
                        }
                    }
                }
            }
        });

        DeploymentController {
            ctx: ctx.clone(),
            deployments,
            sets,
            pods,
            queue,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.deployments.wait_synced().await;
        self.sets.wait_synced().await;
        self.pods.wait_synced().await;
        let this = Arc::new(self);
        let queue = this.queue.clone();
        queue
            .run_workers("deployment", 5, move |key| {
                let this = this.clone();
                async move { this.sync(&key).await }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, key: &str) -> anyhow::Result<Option<Duration>> {
        let Some(deployment) = self.deployments.get(key) else {
            return Ok(None);
        };
        let deployment = (*deployment).clone();
        let (namespace, _) = split_key(key);
        let selector = deployment
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        if selector_is_empty(&selector) {
            self.ctx.recorder.record(
                &deployment,
                rudder_runtime::events::EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            );
            return Ok(None);
        }
        let sets = self.claim_replica_sets(&deployment, namespace).await?;
        let mut rollout = rollout::Rollout::new(&self.ctx, deployment, sets, &self.pods);
        rollout.sync().await
    }

    /// The ReplicaSets this Deployment controls, after adopting matching
    /// orphans and releasing those that no longer match.
    async fn claim_replica_sets(
        &self,
        deployment: &Deployment,
        namespace: &str,
    ) -> anyhow::Result<Vec<ReplicaSet>> {
        let uid = deployment.uid().unwrap_or_default();
        let deleting = deployment.metadata.deletion_timestamp.is_some();
        let selector = deployment
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), namespace);
        let mut owned = Vec::new();
        for rs in self.sets.list_namespace(namespace) {
            let matches = selector_matches(&selector, labels_of(&rs.metadata));
            match controller_of(&rs.metadata) {
                Some(owner) if owner.uid == uid => {
                    if matches || deleting {
                        owned.push((*rs).clone());
                    } else {
                        let refs: Vec<_> = rs
                            .metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .filter(|r| r.uid != uid)
                            .cloned()
                            .collect();
                        let patch = json!({"metadata": {"ownerReferences": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) }}});
                        match api
                            .patch(
                                &rs.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await
                        {
                            Ok(_) => {}
                            Err(err) if is_not_found(&err) => {}
                            Err(err) => return Err(err.into()),
                        }
                    }
                }
                Some(_) => {}
                None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                    let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                    refs.push(controller_reference(deployment));
                    let patch = json!({"metadata": {"ownerReferences": refs}});
                    match api
                        .patch(
                            &rs.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                    {
                        Ok(adopted) => owned.push(adopted),
                        Err(err) if is_not_found(&err) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                None => {}
            }
        }
        Ok(owned)
    }
}

fn owning_deployment(deployments: &Informer<Deployment>, rs: &ReplicaSet) -> Option<String> {
    let owner = controller_of(&rs.metadata)?;
    if owner.kind != "Deployment" {
        return None;
    }
    let ns = rs.namespace().unwrap_or_default();
    let d = deployments.get_namespaced(&ns, &owner.name)?;
    (d.uid().as_deref() == Some(owner.uid.as_str())).then(|| key_of(&*d))
}

fn matching_deployments(deployments: &Informer<Deployment>, rs: &ReplicaSet) -> Vec<String> {
    let ns = rs.namespace().unwrap_or_default();
    deployments
        .list_namespace(&ns)
        .into_iter()
        .filter(|d| {
            d.spec.as_ref().is_some_and(|s| {
                !selector_is_empty(&s.selector)
                    && selector_matches(&s.selector, labels_of(&rs.metadata))
            })
        })
        .map(|d| key_of(&*d))
        .collect()
}

#[cfg(test)]
mod tests;
