//! DaemonSet controller: one pod on every node the template fits (node
//! selector, required node affinity, taints against tolerations). Pods
//! are pinned to their node with required node affinity and bound by the
//! default scheduler, as Kubernetes does. Template changes are recorded as
//! ControllerRevisions (what `kubectl rollout history/undo` read) and
//! rolled out with `RollingUpdate` (maxUnavailable or maxSurge) or left
//! for the user with `OnDelete`.

mod placement;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use rudder_runtime::events::EventType;
use rudder_runtime::informer::{key_of, split_key};
use rudder_runtime::{Change, Informer, WorkQueue};
use serde_json::json;

use crate::history::{
    self, claim, holds, new_revision, revision_name, set_revision_number, template_patch,
    PodExpectations, POD_REVISION_LABEL,
};
use crate::util::{
    api_code, controller_of, controller_reference, is_pod_available, is_pod_ready, phase,
    pod_from_template, scaled_value, selector_matches, template_hash,
};
use crate::Context;

pub use placement::{add_daemon_tolerations, should_run};

/// The label with the DaemonSet's template generation on its pods.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
/// The annotation kube-apiserver keeps the template generation in.
const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// At most this many pods are created or deleted per sync.
const BURST: usize = 250;

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    DaemonSetController::new(ctx).run().boxed()
}

#[derive(Clone)]
pub struct DaemonSetController {
    ctx: Context,
    queue: WorkQueue<String>,
    expectations: Arc<PodExpectations>,
    sets: Informer<DaemonSet>,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    revisions: Informer<ControllerRevision>,
}

fn owner_key(pod: &Pod) -> Option<String> {
    let owner = controller_of(&pod.metadata)?;
    (owner.kind == "DaemonSet" && owner.api_version.starts_with("apps/")).then(|| {
        format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            owner.name
        )
    })
}

impl DaemonSetController {
    pub fn new(ctx: &Context) -> Self {
        let this = DaemonSetController {
            ctx: ctx.clone(),
            queue: WorkQueue::new(),
            expectations: Arc::new(PodExpectations::new()),
            sets: ctx.informers.get::<DaemonSet>(),
            pods: ctx.informers.get::<Pod>(),
            nodes: ctx.informers.get::<Node>(),
            revisions: ctx.informers.get::<ControllerRevision>(),
        };
        let q = this.queue.clone();
        this.sets
            .on_change(move |change| q.add(key_of(&**change.object())));

        let (q, sets) = (this.queue.clone(), this.sets.clone());
        this.nodes.on_change(move |change| {
            // Only what placement depends on matters, not heartbeats.
            if let Change::Updated { old, new } = change {
                if old.metadata.labels == new.metadata.labels && old.spec == new.spec {
                    return;
                }
            }
            for ds in sets.list() {
                q.add(key_of(&*ds));
            }
        });

        let (q, expectations, sets) = (
            this.queue.clone(),
            this.expectations.clone(),
            this.sets.clone(),
        );
        let enqueue_matching = move |q: &WorkQueue<String>, pod: &Pod| {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            for ds in sets.list_namespace(&ns) {
                if ds.spec.as_ref().is_some_and(|s| {
                    selector_matches(&s.selector, crate::util::labels_of(&pod.metadata))
                }) {
                    q.add(key_of(&*ds));
                }
            }
        };
        this.pods.on_change(move |change| {
            crate::history::route_pod_change(
                change,
                owner_key,
                &enqueue_matching,
                &q,
                &expectations,
            )
        });
        this
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.sets.wait_synced().await;
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        self.revisions.wait_synced().await;
        let this = self.clone();
        self.queue
            .run_workers("daemonset", 2, move |key: String| {
                let this = this.clone();
                async move { this.sync(&key).await }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, key: &str) -> anyhow::Result<Option<Duration>> {
        let Some(ds) = self.sets.get(key) else {
            self.expectations.delete(key);
            return Ok(None);
        };
        let Some(spec) = ds.spec.as_ref() else {
            return Ok(None);
        };
        if crate::util::selector_is_empty(&spec.selector) {
            self.ctx.recorder.record(
                &*ds,
                EventType::Warning,
                "SelectingAll",
                "This daemon set is selecting all pods. A non-empty selector is required.",
            );
            return Ok(None);
        }
        // While it is being deleted its history may already be gone: the
        // garbage collector takes it from here.
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let (ns, _) = split_key(key);
        let client = self.ctx.client.clone();
        let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
        let owner = controller_reference(&*ds);
        let revisions = claim(
            &Api::namespaced(client.clone(), ns),
            &ds_api,
            &*ds,
            &owner,
            &spec.selector,
            self.revisions.list_namespace(ns),
            |_| true,
        )
        .await?;
        let (current, old) = self.construct_history(&ds, revisions).await?;
        let hash = current
            .labels()
            .get(POD_REVISION_LABEL)
            .cloned()
            .unwrap_or_default();
        let pods = claim(
            &Api::namespaced(client.clone(), ns),
            &ds_api,
            &*ds,
            &owner,
            &spec.selector,
            self.pods.list_namespace(ns),
            |_| true,
        )
        .await?;
        let mut nodes = self.nodes.list();
        nodes.sort_by_key(|n| n.name_any());
        let ds_sync = DaemonSync {
            c: self,
            key,
            ds: &ds,
            hash: &hash,
            nodes: &nodes,
            now: SystemTime::now(),
        };
        if !self.expectations.satisfied(key) {
            // Only status; the generation was not acted on yet.
            return ds_sync.update_status(&pods, false).await;
        }
        let result = ds_sync.manage(&pods).await;
        let result = match result {
            Ok(()) if self.expectations.satisfied(key) => {
                if strategy_type(&ds) == "RollingUpdate" {
                    ds_sync.rolling_update(&pods).await
                } else {
                    Ok(())
                }
            }
            other => other,
        };
        let cleanup = self.cleanup_history(&ds, &pods, &old).await;
        let requeue = ds_sync.update_status(&pods, true).await?;
        result?;
        cleanup?;
        Ok(requeue)
    }

    /// Finds (or records) the revision of the current template and the old
    /// ones, as kube-controller-manager's `constructHistory`: a template
    /// seen before (a rollback) gets its old revision renumbered newest.
    async fn construct_history(
        &self,
        ds: &DaemonSet,
        revisions: Vec<Arc<ControllerRevision>>,
    ) -> anyhow::Result<(Arc<ControllerRevision>, Vec<Arc<ControllerRevision>>)> {
        let ns = ds.namespace().unwrap_or_default();
        let api: Api<ControllerRevision> = Api::namespaced(self.ctx.client.clone(), &ns);
        let template = ds
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let data = template_patch(&template);
        let mut current = Vec::new();
        let mut old = Vec::new();
        for mut revision in revisions {
            if !revision.labels().contains_key(POD_REVISION_LABEL) {
                // Revisions from before the label existed are named by it.
                let patch =
                    json!({"metadata": {"labels": {POD_REVISION_LABEL: revision.name_any()}}});
                revision = Arc::new(
                    api.patch(
                        &revision.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?,
                );
            }
            if holds(&revision, &data) {
                current.push(revision);
            } else {
                old.push(revision);
            }
        }
        let next = old.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
        let current = match current.into_iter().max_by_key(|r| r.revision) {
            Some(cur) if cur.revision < next => {
                Arc::new(set_revision_number(&api, &cur, next).await?)
            }
            Some(cur) => cur,
            None => Arc::new(self.snapshot(ds, &api, data, next).await?),
        };
        Ok((current, old))
    }

    /// Stores the current template as revision `number`. A name taken by
    /// another template raises the DaemonSet's collision count (which
    /// changes the hash) and retries.
    async fn snapshot(
        &self,
        ds: &DaemonSet,
        api: &Api<ControllerRevision>,
        data: serde_json::Value,
        number: i64,
    ) -> anyhow::Result<ControllerRevision> {
        let template = ds
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&template, collision_count);
        let name = revision_name(&ds.name_any(), &hash);
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(POD_REVISION_LABEL.into(), hash);
        let mut revision = new_revision(
            controller_reference(ds),
            &ds.namespace().unwrap_or_default(),
            labels,
            ds.metadata.annotations.clone(),
            data.clone(),
            number,
        );
        revision.metadata.name = Some(name.clone());
        match api.create(&PostParams::default(), &revision).await {
            Ok(created) => Ok(created),
            Err(err) if api_code(&err) == Some(409) => {
                let existing = api.get(&name).await?;
                if holds(&existing, &data) {
                    return Ok(existing);
                }
                let ds_api: Api<DaemonSet> =
                    Api::namespaced(self.ctx.client.clone(), &ds.namespace().unwrap_or_default());
                let fresh = ds_api.get_status(&ds.name_any()).await?;
                let fresh_count = fresh.status.as_ref().and_then(|s| s.collision_count);
                if fresh_count != collision_count {
                    anyhow::bail!(
                        "found a stale collision count ({collision_count:?}, expected {fresh_count:?}) of DaemonSet {} while processing; will retry until it is updated",
                        ds.name_any()
                    );
                }
                let patch = json!({"status": {"collisionCount": fresh_count.unwrap_or(0) + 1}});
                ds_api
                    .patch_status(
                        &ds.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
                anyhow::bail!(
                    "hash collision on controller revision {name}; collision count raised"
                )
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Keeps `revisionHistoryLimit` old revisions, never one a pod runs.
    async fn cleanup_history(
        &self,
        ds: &DaemonSet,
        pods: &[Arc<Pod>],
        old: &[Arc<ControllerRevision>],
    ) -> anyhow::Result<()> {
        let limit = ds
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        let live: std::collections::HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.labels().get(POD_REVISION_LABEL).map(String::as_str))
            .collect();
        let mut old = old.to_vec();
        history::sort_by_revision(&mut old);
        let api: Api<ControllerRevision> =
            Api::namespaced(self.ctx.client.clone(), &ds.namespace().unwrap_or_default());
        let doomed = history::revisions_to_prune(
            &old,
            |r| {
                r.labels()
                    .get(POD_REVISION_LABEL)
                    .is_some_and(|h| live.contains(h.as_str()))
            },
            limit,
            true,
        );
        for revision in doomed {
            match api
                .delete(&revision.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(err) if api_code(&err) == Some(404) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }
}

fn strategy_type(ds: &DaemonSet) -> String {
    ds.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.clone())
        .unwrap_or_else(|| "RollingUpdate".into())
}

/// The template generation pods are labelled with: kube-apiserver's
/// annotation when present, else the object's generation.
fn template_generation(ds: &DaemonSet) -> Option<String> {
    ds.annotations()
        .get(TEMPLATE_GENERATION_ANNOTATION)
        .cloned()
        .or_else(|| ds.metadata.generation.map(|g| g.to_string()))
}

/// Whether a pod runs the current template (by hash or generation).
fn is_updated(pod: &Pod, hash: &str, generation: Option<&str>) -> bool {
    let labels = pod.labels();
    (!hash.is_empty() && labels.get(POD_REVISION_LABEL).map(String::as_str) == Some(hash))
        || generation
            .is_some_and(|g| labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str) == Some(g))
}

/// Running pods first, then oldest first, then by name.
fn sort_pods(pods: &mut [Arc<Pod>]) {
    pods.sort_by(|a, b| {
        let running = |p: &Pod| phase(p) != "Running";
        running(a)
            .cmp(&running(b))
            .then_with(|| {
                let at = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                at(a).cmp(&at(b))
            })
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// A node's up-to-date pod and old pod, each if any.
type NewAndOld = (Option<Arc<Pod>>, Option<Arc<Pod>>);

/// One sync of one DaemonSet.
struct DaemonSync<'a> {
    c: &'a DaemonSetController,
    key: &'a str,
    ds: &'a DaemonSet,
    hash: &'a str,
    nodes: &'a [Arc<Node>],
    now: SystemTime,
}

impl DaemonSync<'_> {
    fn min_ready_seconds(&self) -> i32 {
        self.ds
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }

    fn available(&self, pod: &Pod) -> bool {
        is_pod_available(pod, self.min_ready_seconds(), self.now)
    }

    fn pod_api(&self) -> Api<Pod> {
        Api::namespaced(
            self.c.ctx.client.clone(),
            &self.ds.namespace().unwrap_or_default(),
        )
    }

    /// The DaemonSet's pods by the node they are for (terminal pods being
    /// deleted are left out).
    fn pods_by_node(&self, pods: &[Arc<Pod>]) -> BTreeMap<String, Vec<Arc<Pod>>> {
        let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for pod in pods {
            if pod.metadata.deletion_timestamp.is_some()
                && matches!(phase(pod), "Succeeded" | "Failed")
            {
                continue;
            }
            if let Some(node) = placement::target_node(pod) {
                by_node.entry(node).or_default().push(pod.clone());
            }
        }
        by_node
    }

    /// kube-controller-manager's `manage`: a pod for each node that should
    /// run one and has none; none on nodes that should not; failed pods
    /// replaced; extra pods on a node removed.
    async fn manage(&self, pods: &[Arc<Pod>]) -> anyhow::Result<()> {
        let by_node = self.pods_by_node(pods);
        let surge = allows_surge(self.ds);
        let mut create_on = Vec::new();
        let mut delete = Vec::new();
        for node in self.nodes {
            let name = node.name_any();
            let (run, keep) = should_run(node, self.ds);
            let daemon_pods = by_node.get(&name);
            match daemon_pods {
                None if run => create_on.push(name.clone()),
                Some(daemon_pods) if keep => {
                    let mut running = Vec::new();
                    for pod in daemon_pods {
                        if pod.metadata.deletion_timestamp.is_some() {
                            continue;
                        }
                        match phase(pod) {
                            "Failed" => {
                                let message = format!(
                                    "Found failed daemon pod {}/{} on node {name}, will try to kill it",
                                    pod.namespace().unwrap_or_default(),
                                    pod.name_any()
                                );
                                self.c.ctx.recorder.record(
                                    self.ds,
                                    EventType::Warning,
                                    "FailedDaemonPod",
                                    &message,
                                );
                                delete.push(pod.clone());
                            }
                            "Succeeded" => delete.push(pod.clone()),
                            _ => running.push(pod.clone()),
                        }
                    }
                    sort_pods(&mut running);
                    if !surge {
                        // One pod per node: the oldest stays.
                        delete.extend(running.iter().skip(1).cloned());
                        continue;
                    }
                    if running.is_empty() {
                        if run {
                            create_on.push(name.clone());
                        }
                        continue;
                    }
                    // Surging: at most the oldest new pod and the oldest old
                    // pod; the old one goes once the new is available (or
                    // at once when it is not ready anyway).
                    let generation = template_generation(self.ds);
                    let (mut oldest_new, mut oldest_old) = (None, None);
                    for pod in &running {
                        let slot = if is_updated(pod, self.hash, generation.as_deref()) {
                            &mut oldest_new
                        } else {
                            &mut oldest_old
                        };
                        if slot.is_none() {
                            *slot = Some(pod.clone());
                        } else {
                            delete.push(pod.clone());
                        }
                    }
                    if let (Some(new), Some(old)) = (&oldest_new, &oldest_old) {
                        if !is_pod_ready(old) || self.available(new) {
                            delete.push(old.clone());
                        }
                    }
                }
                Some(daemon_pods) if !keep => delete.extend(
                    daemon_pods
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .cloned(),
                ),
                _ => {}
            }
        }
        // Unbound pods for nodes that are gone would never be scheduled.
        let known: std::collections::HashSet<String> =
            self.nodes.iter().map(|n| n.name_any()).collect();
        for (node, daemon_pods) in &by_node {
            if known.contains(node) {
                continue;
            }
            delete.extend(
                daemon_pods
                    .iter()
                    .filter(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && p.spec
                                .as_ref()
                                .and_then(|s| s.node_name.as_deref())
                                .unwrap_or("")
                                .is_empty()
                    })
                    .cloned(),
            );
        }
        self.sync_nodes(delete, create_on).await
    }

    /// Creates a pod on each of `create_on` and deletes `delete`, at most
    /// [`BURST`] of each, under expectations.
    async fn sync_nodes(
        &self,
        delete: Vec<Arc<Pod>>,
        create_on: Vec<String>,
    ) -> anyhow::Result<()> {
        let create_on: Vec<String> = create_on.into_iter().take(BURST).collect();
        let mut delete = delete;
        delete.dedup_by_key(|p| p.uid());
        delete.truncate(BURST);
        if create_on.is_empty() && delete.is_empty() {
            return Ok(());
        }
        self.c.expectations.raise(
            self.key,
            create_on.len(),
            delete.iter().map(|p| p.uid().unwrap_or_default()),
        );
        let mut template = self
            .ds
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let labels = template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new);
        if let Some(generation) = template_generation(self.ds) {
            labels.insert(TEMPLATE_GENERATION_LABEL.into(), generation);
        }
        if !self.hash.is_empty() {
            labels.insert(POD_REVISION_LABEL.into(), self.hash.to_owned());
        }
        add_daemon_tolerations(template.spec.get_or_insert_with(Default::default));
        let namespace = self.ds.namespace().unwrap_or_default();
        let api = self.pod_api();
        let mut first_error: Option<anyhow::Error> = None;
        let creations = create_on.iter().map(|node| {
            let mut pod = pod_from_template(
                &template,
                &namespace,
                controller_reference(self.ds),
                &format!("{}-", self.ds.name_any()),
            );
            let spec = pod.spec.get_or_insert_with(Default::default);
            spec.affinity = Some(placement::pin_to_node(spec.affinity.take(), node));
            let api = api.clone();
            async move { (api.create(&PostParams::default(), &pod).await, node) }
        });
        for (result, node) in futures::future::join_all(creations).await {
            match result {
                Ok(pod) => self.c.ctx.recorder.record(
                    self.ds,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created pod: {}", pod.name_any()),
                ),
                Err(err) => {
                    self.c.expectations.creation_observed(self.key);
                    // A namespace being deleted refuses new pods: expected.
                    if api_code(&err) == Some(403) && err.to_string().contains("terminat") {
                        continue;
                    }
                    self.c.ctx.recorder.record(
                        self.ds,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("Error creating: {err}"),
                    );
                    tracing::warn!(daemonset = %self.key, node = %node, error = %err, "cannot create a daemon pod");
                    first_error.get_or_insert(err.into());
                }
            }
        }
        let deletions = delete.iter().map(|pod| {
            let api = api.clone();
            let params = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: pod.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            async move { (api.delete(&pod.name_any(), &params).await, pod) }
        });
        for (result, pod) in futures::future::join_all(deletions).await {
            match result {
                Ok(_) => self.c.ctx.recorder.record(
                    self.ds,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {}", pod.name_any()),
                ),
                Err(err) => {
                    self.c
                        .expectations
                        .deletion_observed(self.key, &pod.uid().unwrap_or_default());
                    if api_code(&err) == Some(404) {
                        continue;
                    }
                    self.c.ctx.recorder.record(
                        self.ds,
                        EventType::Warning,
                        "FailedDelete",
                        &format!("Error deleting: {err}"),
                    );
                    first_error.get_or_insert(err.into());
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// kube-controller-manager's `rollingUpdate`: without surge, delete old
    /// pods while no more than maxUnavailable are unavailable (manage then
    /// creates their replacements); with surge, start new pods beside old
    /// ones, at most maxSurge at a time, and delete each old pod once its
    /// replacement is available.
    async fn rolling_update(&self, pods: &[Arc<Pod>]) -> anyhow::Result<()> {
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> =
            self.pods_by_node(pods).into_iter().collect();
        let (max_surge, max_unavailable, desired) = self.desired_counts(&mut by_node)?;
        let generation = template_generation(self.ds);
        let generation = generation.as_deref();
        // Pods of one node: (new, old), or None with more than one of a kind.
        let split = |pods: &[Arc<Pod>]| -> Option<NewAndOld> {
            let (mut new, mut old) = (None, None);
            for pod in pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                let slot = if is_updated(pod, self.hash, generation) {
                    &mut new
                } else {
                    &mut old
                };
                if slot.is_some() {
                    return None;
                }
                *slot = Some(pod.clone());
            }
            Some((new, old))
        };
        let mut node_names: Vec<&String> = by_node.keys().collect();
        node_names.sort();

        if max_surge == 0 {
            let mut unavailable = 0;
            let mut replace = Vec::new();
            let mut candidates = Vec::new();
            for node in node_names {
                let Some((new, old)) = split(&by_node[node]) else {
                    unavailable += 1;
                    continue;
                };
                match (new, old) {
                    (None, None) | (Some(_), Some(_)) => unavailable += 1,
                    (Some(new), None) => {
                        if !self.available(&new) {
                            unavailable += 1;
                        }
                    }
                    (None, Some(old)) => {
                        if !self.available(&old) {
                            replace.push(old);
                            unavailable += 1;
                        } else if unavailable < max_unavailable {
                            candidates.push(old);
                        }
                    }
                }
            }
            let room = (max_unavailable - unavailable).max(0) as usize;
            replace.extend(candidates.into_iter().take(room));
            return self.sync_nodes(replace, Vec::new()).await;
        }

        let mut delete = Vec::new();
        let mut should_not_run = Vec::new();
        let mut candidates = Vec::new();
        let mut allowed = Vec::new();
        let (mut surging, mut available) = (0, 0);
        for node_name in node_names {
            let Some((new, old)) = split(&by_node[node_name]) else {
                surging += 1;
                continue;
            };
            match (&old, &new) {
                (Some(old), _) if self.available(old) => available += 1,
                (None, Some(new)) if self.available(new) => available += 1,
                _ => {}
            }
            let run = || {
                self.nodes
                    .iter()
                    .find(|n| n.name_any() == *node_name)
                    .is_some_and(|n| should_run(n, self.ds).0)
            };
            match (old, new) {
                (None, _) => {}
                (Some(old), None) => {
                    if !self.available(&old) {
                        if !run() {
                            delete.push(old);
                        } else {
                            allowed.push(node_name.clone());
                        }
                    } else if !run() {
                        should_not_run.push(old);
                    } else if surging < max_surge {
                        candidates.push(node_name.clone());
                    }
                }
                (Some(old), Some(new)) => {
                    if self.available(&new) {
                        delete.push(old);
                    } else {
                        surging += 1;
                    }
                }
            }
        }
        // Pods on nodes the DaemonSet left go only once enough pods
        // elsewhere are available.
        let deletable = (available - desired).max(0) as usize;
        delete.extend(should_not_run.into_iter().take(deletable));
        let room = (max_surge - surging).max(0) as usize;
        allowed.extend(candidates.into_iter().take(room));
        self.sync_nodes(delete, allowed).await
    }

    /// (maxSurge, maxUnavailable, desired): also records nodes that should
    /// run a pod and have none, which count as unavailable.
    fn desired_counts(
        &self,
        by_node: &mut HashMap<String, Vec<Arc<Pod>>>,
    ) -> anyhow::Result<(i32, i32, i32)> {
        let mut desired = 0;
        for node in self.nodes {
            if should_run(node, self.ds).0 {
                desired += 1;
                by_node.entry(node.name_any()).or_default();
            }
        }
        let rolling = self
            .ds
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|s| s.rolling_update.as_ref());
        let max_unavailable = scaled_value(
            rolling.and_then(|r| r.max_unavailable.as_ref()),
            desired,
            true,
            1,
        )
        .map_err(|e| anyhow::anyhow!("invalid maxUnavailable: {e}"))?;
        let max_surge = scaled_value(rolling.and_then(|r| r.max_surge.as_ref()), desired, true, 0)
            .map_err(|e| anyhow::anyhow!("invalid maxSurge: {e}"))?;
        // Neither surge nor unavailability allowed would never progress:
        // Kubernetes accepts one unavailable pod then.
        let max_unavailable = if desired > 0 && max_unavailable == 0 && max_surge == 0 {
            1
        } else {
            max_unavailable
        };
        Ok((max_surge, max_unavailable, desired))
    }

    /// Writes the status counts (and observedGeneration when this sync
    /// acted on the spec).
    async fn update_status(
        &self,
        pods: &[Arc<Pod>],
        observed: bool,
    ) -> anyhow::Result<Option<Duration>> {
        let by_node = self.pods_by_node(pods);
        let generation = template_generation(self.ds);
        let (mut desired, mut current, mut misscheduled, mut ready, mut updated, mut available) =
            (0, 0, 0, 0, 0, 0);
        for node in self.nodes {
            let (run, _) = should_run(node, self.ds);
            let scheduled = by_node.get(&node.name_any()).filter(|p| !p.is_empty());
            match (run, scheduled) {
                (true, None) => desired += 1,
                (true, Some(daemon_pods)) => {
                    desired += 1;
                    current += 1;
                    let mut daemon_pods = daemon_pods.clone();
                    sort_pods(&mut daemon_pods);
                    let pod = &daemon_pods[0];
                    if is_pod_ready(pod) {
                        ready += 1;
                        if self.available(pod) {
                            available += 1;
                        }
                    }
                    if is_updated(pod, self.hash, generation.as_deref()) {
                        updated += 1;
                    }
                }
                (false, Some(_)) => misscheduled += 1,
                (false, None) => {}
            }
        }
        let unavailable = desired - available;
        let old = self.ds.status.clone().unwrap_or_default();
        let ds_generation = self.ds.metadata.generation.unwrap_or(0);
        let observed_generation = if observed {
            ds_generation
        } else {
            old.observed_generation.unwrap_or(0)
        };
        let unchanged = old.desired_number_scheduled == desired
            && old.current_number_scheduled == current
            && old.number_misscheduled == misscheduled
            && old.number_ready == ready
            && old.updated_number_scheduled.unwrap_or(0) == updated
            && old.number_available.unwrap_or(0) == available
            && old.number_unavailable.unwrap_or(0) == unavailable
            && old.observed_generation.unwrap_or(0) >= observed_generation;
        if !unchanged {
            let patch = json!({"status": {
                "desiredNumberScheduled": desired,
                "currentNumberScheduled": current,
                "numberMisscheduled": misscheduled,
                "numberReady": ready,
                "updatedNumberScheduled": updated,
                "numberAvailable": available,
                "numberUnavailable": unavailable,
                "observedGeneration": observed_generation,
            }});
            let api: Api<DaemonSet> = Api::namespaced(
                self.c.ctx.client.clone(),
                &self.ds.namespace().unwrap_or_default(),
            );
            match api
                .patch_status(
                    &self.ds.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Ok(_) => {}
                Err(err) if api_code(&err) == Some(404) => return Ok(None),
                Err(err) => return Err(err.into()),
            }
        }
        let min_ready = self.min_ready_seconds();
        Ok((min_ready > 0 && ready != available).then(|| Duration::from_secs(min_ready as u64)))
    }
}

/// Whether the rolling update may surge (maxSurge above zero).
fn allows_surge(ds: &DaemonSet) -> bool {
    let Some(spec) = ds.spec.as_ref() else {
        return false;
    };
    if strategy_type(ds) != "RollingUpdate" {
        return false;
    }
    let surge = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_surge.as_ref());
    // Any non-zero value allows it, whatever it scales to.
    scaled_value(surge, 100, true, 0).is_ok_and(|n| n > 0)
}
