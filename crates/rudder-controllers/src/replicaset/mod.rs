//! ReplicaSet and ReplicationController controller: keeps the number of
//! active pods that a set owns equal to its `replicas`, adopting matching
//! orphans and releasing pods whose labels no longer match, and reports
//! replicas/fullyLabeled/ready/available in status.
//!
//! Both kinds go through one controller: [`ReplicaSetLike`] reads the few
//! fields that differ in shape (an RC's selector is a plain map, its
//! template optional).

mod ranking;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::{join_all, BoxFuture};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use rudder_runtime::expectations::Expectations;
use rudder_runtime::informer::{key_of, split_key};
use rudder_runtime::{Change, Informer, WorkQueue};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::util::{
    controller_of, controller_reference, is_not_found, is_pod_active, is_pod_available,
    is_pod_ready, labels_of, pod_availability, pod_from_template, selector_is_empty,
    selector_matches, Availability,
};
use crate::Context;

/// The most pods one sync creates or deletes (kube's `burstReplicas`).
const BURST_REPLICAS: usize = 500;

/// The pod index by the uid of the controller that owns the pod.
pub const POD_CONTROLLER_INDEX: &str = "controller-uid";

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    let rs = ReplicaSetController::<ReplicaSet>::new(ctx);
    let rc = ReplicaSetController::<ReplicationController>::new(ctx);
    async move {
        futures::try_join!(rs.run(), rc.run())?;
        Ok(())
    }
    .boxed()
}

/// What the controller needs from a ReplicaSet or a ReplicationController.
pub trait ReplicaSetLike:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    fn replicas(&self) -> i32;
    fn selector(&self) -> LabelSelector;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn min_ready_seconds(&self) -> i32;
    fn current_status(&self) -> serde_json::Value;
}

impl ReplicaSetLike for ReplicaSet {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> LabelSelector {
        self.spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default()
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn current_status(&self) -> serde_json::Value {
        serde_json::to_value(&self.status).unwrap_or_default()
    }
}

impl ReplicaSetLike for ReplicationController {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: self.spec.as_ref().and_then(|s| s.selector.clone()),
            match_expressions: None,
        }
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn current_status(&self) -> serde_json::Value {
        serde_json::to_value(&self.status).unwrap_or_default()
    }
}

pub struct ReplicaSetController<K: ReplicaSetLike> {
    ctx: Context,
    sets: Informer<K>,
    pods: Informer<Pod>,
    queue: WorkQueue<String>,
    expectations: Arc<Expectations>,
}

impl<K: ReplicaSetLike> ReplicaSetController<K> {
    pub fn new(ctx: &Context) -> Self {
        let sets = ctx.informers.get::<K>();
        let pods = ctx.informers.get::<Pod>();
        pods.add_index(POD_CONTROLLER_INDEX, |pod: &Pod| {
            controller_of(&pod.metadata)
                .map(|r| vec![r.uid.clone()])
                .unwrap_or_default()
        });
        let queue = WorkQueue::new();
        let expectations = Arc::new(Expectations::new());

        let q = queue.clone();
        let e = expectations.clone();
        sets.on_change(move |change| {
            let key = key_of(&**change.object());
            if matches!(change, Change::Deleted(_)) {
                e.delete(&key);
            }
            q.add(key);
        });

        let (q, e, s) = (queue.clone(), expectations.clone(), sets.clone());
        pods.on_change(move |change| on_pod_change(change, &s, &q, &e));

        ReplicaSetController {
            ctx: ctx.clone(),
            sets,
            pods,
            queue,
            expectations,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.sets.wait_synced().await;
        self.pods.wait_synced().await;
        let this = Arc::new(self);
        let queue = this.queue.clone();
        queue
            .run_workers(K::kind(&()).as_ref().to_owned().leak(), 5, move |key| {
                let this = this.clone();
                async move { this.sync(&key).await }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, key: &str) -> anyhow::Result<Option<Duration>> {
        let Some(set) = self.sets.get(key) else {
            self.expectations.delete(key);
            return Ok(None);
        };
        let (namespace, _) = split_key(key);
        let selector = set.selector();
        let pods = self.claim_pods(&set, &selector, namespace).await?;
        let active: Vec<Arc<Pod>> = pods.iter().filter(|p| is_pod_active(p)).cloned().collect();

        let mut manage_error = None;
        if self.expectations.satisfied(key) && set.meta().deletion_timestamp.is_none() {
            if let Err(err) = self.manage_replicas(&set, key, &active).await {
                manage_error = Some(err);
            }
        }
        let now = SystemTime::now();
        let requeue = self
            .update_status(&set, &active, manage_error.as_ref(), now)
            .await?;
        if let Some(err) = manage_error {
            return Err(err);
        }
        Ok(requeue)
    }

    /// The pods this set owns, after adopting matching orphans and
    /// releasing owned pods that no longer match (kube's
    /// `ClaimPods`).
    async fn claim_pods(
        &self,
        set: &K,
        selector: &LabelSelector,
        namespace: &str,
    ) -> anyhow::Result<Vec<Arc<Pod>>> {
        let uid = set.uid().unwrap_or_default();
        let deleting = set.meta().deletion_timestamp.is_some();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), namespace);
        let mut owned = Vec::new();
        let mut checked_fresh = false;
        for pod in self.pods.list_namespace(namespace) {
            let matches = !selector_is_empty(selector)
                && selector_matches(selector, labels_of(&pod.metadata));
            match controller_of(&pod.metadata) {
                Some(owner) if owner.uid == uid => {
                    if matches || deleting {
                        owned.push(pod);
                    } else if let Err(err) = release(&api, &pod, &uid).await {
                        tracing::debug!(pod = %key_of(&*pod), error = %err, "cannot release");
                        owned.push(pod);
                    }
                }
                Some(_) => {}
                None if matches && !deleting && pod.metadata.deletion_timestamp.is_none() => {
                    // Adopt only if the set is still there and not being
                    // deleted: the cache may be behind (kube rechecks
                    // with a live read).
                    if !checked_fresh {
                        let sets: Api<K> = Api::namespaced(self.ctx.client.clone(), namespace);
                        match sets.get_opt(&set.name_any()).await? {
                            Some(fresh)
                                if fresh.uid() == set.uid()
                                    && fresh.meta().deletion_timestamp.is_none() => {}
                            _ => return Ok(owned),
                        }
                        checked_fresh = true;
                    }
                    match adopt(&api, &pod, set).await {
                        Ok(adopted) => owned.push(Arc::new(adopted)),
                        Err(err) if is_not_found(&err) => {}
                        Err(err) => {
                            tracing::debug!(pod = %key_of(&*pod), error = %err, "cannot adopt")
                        }
                    }
                }
                None => {}
            }
        }
        Ok(owned)
    }

    async fn manage_replicas(&self, set: &K, key: &str, active: &[Arc<Pod>]) -> anyhow::Result<()> {
        let want = set.replicas().max(0) as usize;
        let namespace = set.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &namespace);
        if active.len() < want {
            let Some(template) = set.template() else {
                anyhow::bail!("{} {key} has no pod template", K::kind(&()));
            };
            let count = (want - active.len()).min(BURST_REPLICAS);
            self.expectations.expect(key, count, 0);
            let owner = controller_reference(set);
            let prefix = format!("{}-", set.name_any());
            let pod = pod_from_template(template, &namespace, owner, &prefix);
            let created = slow_start_batch(count, |_| {
                let api = api.clone();
                let pod = pod.clone();
                async move { api.create(&PostParams::default(), &pod).await.map(|_| ()) }
            })
            .await;
            let (done, failure) = created;
            for _ in done..count {
                // Creations that were never made are never observed.
                self.expectations.creation_observed(key);
            }
            if let Some(err) = failure {
                let message = format!("Error creating: {err}");
                self.ctx.recorder.record(
                    set,
                    rudder_runtime::events::EventType::Warning,
                    "FailedCreate",
                    &message,
                );
                return Err(anyhow::Error::new(err).context(format!("creating pods for {key}")));
            }
            if done > 0 {
                tracing::debug!(set = key, created = done, "created pods");
            }
        } else if active.len() > want {
            let count = (active.len() - want).min(BURST_REPLICAS);
            let victims = ranking::pods_to_delete(active, count);
            self.expectations.expect(key, 0, victims.len());
            let results = join_all(victims.iter().map(|pod| {
                let api = api.clone();
                let name = pod.name_any();
                async move {
                    (
                        name.clone(),
                        api.delete(&name, &DeleteParams::default()).await,
                    )
                }
            }))
            .await;
            let mut first_error = None;
            for (name, result) in results {
                match result {
                    Ok(_) => {}
                    Err(err) => {
                        self.expectations.deletion_observed(key);
                        if !is_not_found(&err) && first_error.is_none() {
                            first_error = Some((name, err));
                        }
                    }
                }
            }
            if let Some((name, err)) = first_error {
                return Err(anyhow::Error::new(err).context(format!("deleting pod {name}")));
            }
        }
        Ok(())
    }

    /// Writes the status when it changed; returns when to look again
    /// (a pod becoming available after minReadySeconds).
    async fn update_status(
        &self,
        set: &K,
        active: &[Arc<Pod>],
        manage_error: Option<&anyhow::Error>,
        now: SystemTime,
    ) -> anyhow::Result<Option<Duration>> {
        let template_labels = set
            .template()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let min_ready = set.min_ready_seconds();
        let mut fully_labeled = 0;
        let mut ready = 0;
        let mut available = 0;
        let mut soonest: Option<Duration> = None;
        for pod in active {
            let labels = labels_of(&pod.metadata);
            if template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
            {
                fully_labeled += 1;
            }
            if is_pod_ready(pod) {
                ready += 1;
            }
            match pod_availability(pod, min_ready, now) {
                Availability::Available => available += 1,
                Availability::ReadyFor(left) => {
                    soonest = Some(soonest.map_or(left, |s| s.min(left)));
                }
                Availability::NotReady => {}
            }
        }
        debug_assert!(
            available
                == active
                    .iter()
                    .filter(|p| is_pod_available(p, min_ready, now))
                    .count()
        );
        let current = set.current_status();
        let mut conditions: Vec<serde_json::Value> = current
            .get("conditions")
            .and_then(|c| c.as_array())
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["type"] != "ReplicaFailure")
            .collect();
        if let Some(err) = manage_error {
            // A creation or deletion failed: say so until it works.
            let previous = current
                .get("conditions")
                .and_then(|c| c.as_array())
                .and_then(|c| c.iter().find(|c| c["type"] == "ReplicaFailure").cloned());
            let failing_create = active.len() < set.replicas().max(0) as usize;
            conditions.push(previous.unwrap_or_else(|| {
                json!({
                    "type": "ReplicaFailure", "status": "True",
                    "reason": if failing_create { "FailedCreate" } else { "FailedDelete" },
                    "message": format!("{err:#}"),
                    "lastTransitionTime": rudder_apimachinery::time::now_rfc3339(),
                })
            }));
        }
        let mut status = json!({
            "replicas": active.len(),
            "fullyLabeledReplicas": fully_labeled,
            "readyReplicas": ready,
            "availableReplicas": available,
            "observedGeneration": set.meta().generation.unwrap_or(0),
        });
        if !conditions.is_empty() {
            status["conditions"] = json!(conditions);
        }
        if !same_status(&current, &status) {
            let api: Api<K> = Api::namespaced(
                self.ctx.client.clone(),
                &set.namespace().unwrap_or_default(),
            );
            // A merge patch of the whole status: zero counts must be sent
            // (they are omitted from stored status).
            let patch = json!({"status": status_with_nulls(&current, &status)});
            match api
                .patch_status(
                    &set.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => return Ok(None),
                Err(err) => return Err(err.into()),
            }
        }
        if min_ready > 0 && ready != available {
            return Ok(Some(
                soonest.unwrap_or(Duration::from_secs(min_ready as u64)),
            ));
        }
        Ok(None)
    }
}

/// Compares a computed status with the stored one, reading absent counts
/// as zero.
fn same_status(current: &serde_json::Value, new: &serde_json::Value) -> bool {
    let Some(fields) = new.as_object() else {
        return false;
    };
    fields.iter().all(|(k, v)| {
        let have = current.get(k).filter(|v| !v.is_null());
        match (have, v) {
            (None, serde_json::Value::Number(n)) => n.as_i64() == Some(0),
            (Some(have), v) => have == v,
            (None, _) => false,
        }
    }) && (current
        .get("conditions")
        .is_none_or(|c| c.is_null() || c.as_array().is_some_and(Vec::is_empty))
        == new.get("conditions").is_none())
}

/// The status as a merge patch: fields that are gone are nulled.
fn status_with_nulls(current: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    let mut patch = new.clone();
    if let (Some(current), Some(patch)) = (current.as_object(), patch.as_object_mut()) {
        for key in current.keys() {
            patch.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    patch
}

/// Routes a pod change to the sets that care: its controller, or (for an
/// orphan) every set whose selector matches it.
fn on_pod_change<K: ReplicaSetLike>(
    change: &Change<Pod>,
    sets: &Informer<K>,
    queue: &WorkQueue<String>,
    expectations: &Expectations,
) {
    let owner_key = |pod: &Pod| -> Option<String> {
        let owner = controller_of(&pod.metadata)?;
        if owner.kind != K::kind(&()) {
            return None;
        }
        let ns = pod.namespace().unwrap_or_default();
        let set = sets.get_namespaced(&ns, &owner.name)?;
        (set.uid().as_deref() == Some(owner.uid.as_str())).then(|| key_of(&*set))
    };
    let orphan_keys = |pod: &Pod| -> Vec<String> {
        let ns = pod.namespace().unwrap_or_default();
        sets.list_namespace(&ns)
            .into_iter()
            .filter(|s| {
                let sel = s.selector();
                !selector_is_empty(&sel) && selector_matches(&sel, labels_of(&pod.metadata))
            })
            .map(|s| key_of(&*s))
            .collect()
    };
    match change {
        Change::Added(pod) => {
            if let Some(key) = owner_key(pod) {
                if pod.metadata.deletion_timestamp.is_some() {
                    expectations.deletion_observed(&key);
                } else {
                    expectations.creation_observed(&key);
                }
                queue.add(key);
            } else if controller_of(&pod.metadata).is_none() {
                for key in orphan_keys(pod) {
                    queue.add(key);
                }
            }
        }
        Change::Updated { old, new } => {
            let old_key = owner_key(old);
            let new_key = owner_key(new);
            if new.metadata.deletion_timestamp.is_some()
                && old.metadata.deletion_timestamp.is_none()
            {
                if let Some(key) = &new_key {
                    expectations.deletion_observed(key);
                }
            }
            if old_key != new_key {
                if let Some(key) = old_key {
                    queue.add(key);
                }
            }
            match new_key {
                Some(key) => queue.add(key),
                None if controller_of(&new.metadata).is_none()
                    && (old.metadata.labels != new.metadata.labels
                        || controller_of(&old.metadata).is_some()) =>
                {
                    for key in orphan_keys(new) {
                        queue.add(key);
                    }
                }
                None => {}
            }
        }
        Change::Deleted(pod) => {
            if let Some(key) = owner_key(pod) {
                if pod.metadata.deletion_timestamp.is_none() {
                    expectations.deletion_observed(&key);
                }
                queue.add(key);
            }
        }
    }
}

/// Creates `count` things in batches of 1, 2, 4, … so a failing
/// creation (quota, a missing service account) fails fast instead of
/// `count` times. Returns how many succeeded and the first error.
pub async fn slow_start_batch<F, Fut>(count: usize, make: F) -> (usize, Option<kube::Error>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let mut done = 0;
    let mut batch = 1;
    while done < count {
        let size = batch.min(count - done);
        let results = join_all((done..done + size).map(&make)).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let error = results.into_iter().find_map(Result::err);
        done += ok;
        if let Some(err) = error {
            return (done, Some(err));
        }
        batch *= 2;
    }
    (done, None)
}

async fn adopt<K: ReplicaSetLike>(
    api: &Api<Pod>,
    pod: &Pod,
    owner: &K,
) -> Result<Pod, kube::Error> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(controller_reference(owner));
    // The uid precondition makes sure the pod adopted is the one seen.
    let patch = json!({"metadata": {"ownerReferences": refs, "uid": pod.uid()}});
    api.patch(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

async fn release(api: &Api<Pod>, pod: &Pod, owner_uid: &str) -> Result<(), kube::Error> {
    let refs: Vec<_> = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner_uid)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"ownerReferences": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) }, "uid": pod.uid()}});
    match api
        .patch(
            &pod.name_any(),
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

/// Labels as a map, for tests and callers building selectors.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests;
