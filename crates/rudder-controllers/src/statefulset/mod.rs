//! StatefulSet controller: members with stable names `<set>-<ordinal>`,
//! stable network identity (hostname and the governing Service's
//! subdomain) and stable storage (one claim per ordinal and template,
//! kept across pod replacement and scale-down unless the retention policy
//! says otherwise).
//!
//! As kube-controller-manager's: `OrderedReady` creates one member at a
//! time in ordinal order, each waiting for its predecessors to be Running
//! and Ready, and removes from the highest ordinal down; `Parallel` does
//! both at once. Updates go through ControllerRevisions: `RollingUpdate`
//! replaces members from the highest ordinal down to the partition,
//! `OnDelete` waits for the user to delete them. A member never has two
//! pods: a replacement is created only once the old pod is gone.

mod identity;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodTemplateSpec};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use rudder_runtime::events::EventType;
use rudder_runtime::informer::{key_of, split_key};
use rudder_runtime::{Change, Informer, WorkQueue};
use serde_json::json;

use crate::history::{
    self, claim, create_revision, holds, new_revision, next_revision, set_revision_number,
    sort_by_revision, template_of, template_patch, PodExpectations,
};
use crate::util::{api_code, controller_of, controller_reference, selector_matches};
use crate::Context;

use identity::*;
pub use identity::{POD_INDEX_LABEL, POD_NAME_LABEL};

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    StatefulSetController::new(ctx).run().boxed()
}

#[derive(Clone)]
pub struct StatefulSetController {
    ctx: Context,
    queue: WorkQueue<String>,
    expectations: Arc<PodExpectations>,
    sets: Informer<StatefulSet>,
    pods: Informer<Pod>,
    claims: Informer<PersistentVolumeClaim>,
    revisions: Informer<ControllerRevision>,
}

/// The key of the StatefulSet controlling a pod, by its controller reference.
fn owner_key(pod: &Pod) -> Option<String> {
    let owner = controller_of(&pod.metadata)?;
    (owner.kind == "StatefulSet" && owner.api_version.starts_with("apps/")).then(|| {
        format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            owner.name
        )
    })
}

impl StatefulSetController {
    pub fn new(ctx: &Context) -> Self {
        let this = StatefulSetController {
            ctx: ctx.clone(),
            queue: WorkQueue::new(),
            expectations: Arc::new(PodExpectations::new()),
            sets: ctx.informers.get::<StatefulSet>(),
            pods: ctx.informers.get::<Pod>(),
            claims: ctx.informers.get::<PersistentVolumeClaim>(),
            revisions: ctx.informers.get::<ControllerRevision>(),
        };
        let q = this.queue.clone();
        this.sets
            .on_change(move |change| q.add(key_of(&**change.object())));
        let (q, expectations, sets) = (
            this.queue.clone(),
            this.expectations.clone(),
            this.sets.clone(),
        );
        // An orphan may be adopted by any set whose selector matches it.
        let enqueue_matching = move |q: &WorkQueue<String>, pod: &Pod| {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            for set in sets.list_namespace(&ns) {
                let selector = set.spec.as_ref().map(|s| &s.selector);
                if selector
                    .is_some_and(|s| selector_matches(s, crate::util::labels_of(&pod.metadata)))
                    && is_member(&set, pod)
                {
                    q.add(key_of(&*set));
                }
            }
        };
        // A member waiting for a stale claim to go resumes when it is gone.
        let (q2, sets) = (this.queue.clone(), this.sets.clone());
        this.claims.on_change(move |change| {
            let Change::Deleted(claim) = change else {
                return;
            };
            let ns = claim.metadata.namespace.clone().unwrap_or_default();
            let name = claim.name_any();
            for set in sets.list_namespace(&ns) {
                let templates = set
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_claim_templates.as_ref());
                if templates.into_iter().flatten().any(|t| {
                    let prefix = format!(
                        "{}-{}-",
                        t.metadata.name.as_deref().unwrap_or(""),
                        set.name_any()
                    );
                    name.starts_with(&prefix)
                }) {
                    q2.add(key_of(&*set));
                }
            }
        });
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
        self.claims.wait_synced().await;
        self.revisions.wait_synced().await;
        let this = self.clone();
        self.queue
            .run_workers("statefulset", 2, move |key: String| {
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
        if !self.expectations.satisfied(key) {
            // The cache has not seen our last creations or deletions yet;
            // their events bring the set back.
            return Ok(None);
        }
        let Some(spec) = set.spec.as_ref() else {
            return Ok(None);
        };
        if crate::util::selector_is_empty(&spec.selector) {
            self.ctx.recorder.record(
                &*set,
                EventType::Warning,
                "SelectingAll",
                "This StatefulSet is selecting all pods. A non-empty selector is required.",
            );
            return Ok(None);
        }
        let (ns, _) = split_key(key);
        let client = self.ctx.client.clone();
        let set_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
        let owner = controller_reference(&*set);
        let revisions = claim(
            &Api::namespaced(client.clone(), ns),
            &set_api,
            &*set,
            &owner,
            &spec.selector,
            self.revisions.list_namespace(ns),
            |_| true,
        )
        .await?;
        let pods = claim(
            &Api::namespaced(client.clone(), ns),
            &set_api,
            &*set,
            &owner,
            &spec.selector,
            self.pods.list_namespace(ns),
            |pod| is_member(&set, pod),
        )
        .await?;

        let (current, update, collision_count, mut revisions) =
            self.revisions(&set, revisions).await?;
        let mut sync = SetSync {
            c: self,
            key,
            set: &set,
            current_template: template_of(&current)?,
            update_template: template_of(&update)?,
            current: &current,
            update: &update,
            status: Status::default(),
        };
        let result = if set.metadata.deletion_timestamp.is_some() {
            // A set being deleted only reports status; the garbage
            // collector removes its members.
            sync.status = Status::count(&set, &current, &update, pods.iter().map(|p| &**p));
            Ok(())
        } else {
            sync.update_set(pods.clone()).await
        };
        let mut status = sync.status;
        complete_rolling_update(&set, &mut status);
        let requeue = self.write_status(&set, &status, collision_count).await?;
        result?;
        revisions.retain(|r| r.name_any() != update.name_any());
        self.truncate_history(&set, &pods, &revisions, &current, &update)
            .await?;
        Ok(requeue)
    }

    /// The set's current and update revisions (creating or renumbering the
    /// update revision as the template says), its collision count, and the
    /// revisions it owns, oldest first.
    async fn revisions(
        &self,
        set: &StatefulSet,
        mut revisions: Vec<Arc<ControllerRevision>>,
    ) -> anyhow::Result<(
        Arc<ControllerRevision>,
        Arc<ControllerRevision>,
        i32,
        Vec<Arc<ControllerRevision>>,
    )> {
        sort_by_revision(&mut revisions);
        let api: Api<ControllerRevision> = Api::namespaced(
            self.ctx.client.clone(),
            &set.namespace().unwrap_or_default(),
        );
        let template = &set
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let mut collision_count = set
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0);
        let data = template_patch(template);
        let next = next_revision(&revisions);
        let equal: Vec<&Arc<ControllerRevision>> =
            revisions.iter().filter(|r| holds(r, &data)).collect();
        let update = match (equal.last(), revisions.last()) {
            // The newest revision already holds the template.
            (Some(_), Some(last)) if holds(last, &data) => last.clone(),
            // An older revision holds it: a rollback makes it the newest.
            (Some(older), _) => Arc::new(set_revision_number(&api, older, next).await?),
            (None, _) => {
                let labels = template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                let revision = new_revision(
                    controller_reference(set),
                    &set.namespace().unwrap_or_default(),
                    labels,
                    set.metadata.annotations.clone(),
                    data,
                    next,
                );
                Arc::new(
                    create_revision(&api, &set.name_any(), revision, &mut collision_count).await?,
                )
            }
        };
        let current_name = set.status.as_ref().and_then(|s| s.current_revision.clone());
        let current = revisions
            .iter()
            .find(|r| current_name.as_deref() == Some(r.name_any().as_str()))
            .cloned()
            .unwrap_or_else(|| update.clone());
        Ok((current, update, collision_count, revisions))
    }

    /// Writes the status if it changed; says when to look again for pods
    /// becoming available.
    async fn write_status(
        &self,
        set: &StatefulSet,
        status: &Status,
        collision_count: i32,
    ) -> anyhow::Result<Option<Duration>> {
        let old = set.status.clone().unwrap_or_default();
        let generation = set.metadata.generation.unwrap_or(0);
        let changed = old.observed_generation.unwrap_or(0) < generation
            || old.replicas != status.replicas
            || old.ready_replicas.unwrap_or(0) != status.ready
            || old.available_replicas.unwrap_or(0) != status.available
            || old.current_replicas.unwrap_or(0) != status.current
            || old.updated_replicas.unwrap_or(0) != status.updated
            || old.current_revision.as_deref() != Some(status.current_revision.as_str())
            || old.update_revision.as_deref() != Some(status.update_revision.as_str())
            || old.collision_count.unwrap_or(0) != collision_count;
        if changed {
            let api: Api<StatefulSet> = Api::namespaced(
                self.ctx.client.clone(),
                &set.namespace().unwrap_or_default(),
            );
            let patch = json!({"status": {
                "observedGeneration": generation,
                "replicas": status.replicas,
                "readyReplicas": status.ready,
                "availableReplicas": status.available,
                "currentReplicas": status.current,
                "updatedReplicas": status.updated,
                "currentRevision": status.current_revision,
                "updateRevision": status.update_revision,
                "collisionCount": collision_count,
            }});
            match api
                .patch_status(
                    &set.name_any(),
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
        let min_ready = set
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        Ok((min_ready > 0 && status.ready != status.available)
            .then(|| Duration::from_secs(min_ready as u64)))
    }

    /// Deletes old revisions beyond `revisionHistoryLimit`, never one a
    /// member still runs or the set's current or update revision.
    async fn truncate_history(
        &self,
        set: &StatefulSet,
        pods: &[Arc<Pod>],
        revisions: &[Arc<ControllerRevision>],
        current: &ControllerRevision,
        update: &ControllerRevision,
    ) -> anyhow::Result<()> {
        let mut live: HashSet<String> = pods.iter().map(|p| revision_of(p).to_owned()).collect();
        live.insert(current.name_any());
        live.insert(update.name_any());
        let limit = set
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        let api: Api<ControllerRevision> = Api::namespaced(
            self.ctx.client.clone(),
            &set.namespace().unwrap_or_default(),
        );
        for revision in
            history::revisions_to_prune(revisions, |r| live.contains(&r.name_any()), limit, false)
        {
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

/// The counts a StatefulSet's status reports.
#[derive(Debug, Default, Clone, PartialEq)]
struct Status {
    replicas: i32,
    ready: i32,
    available: i32,
    current: i32,
    updated: i32,
    current_revision: String,
    update_revision: String,
}

impl Status {
    fn count<'a>(
        set: &StatefulSet,
        current: &ControllerRevision,
        update: &ControllerRevision,
        pods: impl Iterator<Item = &'a Pod>,
    ) -> Status {
        let min_ready = set
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        let mut status = Status {
            current_revision: current.name_any(),
            update_revision: update.name_any(),
            ..Default::default()
        };
        for pod in pods {
            status.replicas += 1;
            if is_running_and_ready(pod) {
                status.ready += 1;
                if is_running_and_available(pod, min_ready) {
                    status.available += 1;
                }
            }
            if !is_terminating(pod) {
                let revision = revision_of(pod);
                if revision == status.current_revision {
                    status.current += 1;
                }
                if revision == status.update_revision {
                    status.updated += 1;
                }
            }
        }
        status
    }
}

/// Once every member runs the update revision and is ready, the update
/// revision becomes the current one.
fn complete_rolling_update(set: &StatefulSet, status: &mut Status) {
    let rolling = set
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling && status.updated == status.replicas && status.ready == status.replicas {
        status.current = status.updated;
        status.current_revision = status.update_revision.clone();
    }
}

/// One member slot: a pod that exists, or the pod to create.
enum Member {
    Live(Arc<Pod>),
    Missing(Box<Pod>),
}

impl Member {
    fn pod(&self) -> &Pod {
        match self {
            Member::Live(p) => p,
            Member::Missing(p) => p,
        }
    }
}

/// One sync of one set.
struct SetSync<'a> {
    c: &'a StatefulSetController,
    key: &'a str,
    set: &'a StatefulSet,
    current_template: PodTemplateSpec,
    update_template: PodTemplateSpec,
    current: &'a ControllerRevision,
    update: &'a ControllerRevision,
    status: Status,
}

impl SetSync<'_> {
    fn namespace(&self) -> String {
        self.set.namespace().unwrap_or_default()
    }

    fn pod_api(&self) -> Api<Pod> {
        Api::namespaced(self.c.ctx.client.clone(), &self.namespace())
    }

    fn claim_api(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.c.ctx.client.clone(), &self.namespace())
    }

    fn min_ready_seconds(&self) -> i32 {
        self.set
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }

    fn monotonic(&self) -> bool {
        self.set
            .spec
            .as_ref()
            .and_then(|s| s.pod_management_policy.as_deref())
            != Some("Parallel")
    }

    fn strategy(&self) -> (String, Option<i32>) {
        let strategy = self
            .set
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref());
        let type_ = strategy
            .and_then(|s| s.type_.clone())
            .unwrap_or_else(|| "RollingUpdate".into());
        let partition = strategy
            .and_then(|s| s.rolling_update.as_ref())
            .map(|r| r.partition.unwrap_or(0));
        (type_, partition)
    }

    /// The pod for `ordinal`: below the partition (or, without one, among
    /// the members not yet updated) at the current revision, otherwise at
    /// the update revision.
    fn versioned_pod(&self, ordinal: i32) -> Pod {
        let start = start_ordinal(self.set);
        let (type_, partition) = self.strategy();
        let current_replicas = self
            .set
            .status
            .as_ref()
            .and_then(|s| s.current_replicas)
            .unwrap_or(0);
        let keep_current = match partition {
            None => type_ == "RollingUpdate" && ordinal < start + current_replicas,
            Some(partition) => ordinal < start + partition,
        };
        if keep_current {
            new_pod(
                self.set,
                &self.current_template,
                ordinal,
                &self.current.name_any(),
            )
        } else {
            new_pod(
                self.set,
                &self.update_template,
                ordinal,
                &self.update.name_any(),
            )
        }
    }

    fn recount(&mut self, members: &[Member], condemned: &[Arc<Pod>]) {
        let live = members
            .iter()
            .filter_map(|m| match m {
                Member::Live(p) => Some(&**p),
                Member::Missing(_) => None,
            })
            .chain(condemned.iter().map(|p| &**p));
        self.status = Status::count(self.set, self.current, self.update, live);
    }

    /// kube-controller-manager's `updateStatefulSet`: bring members into
    /// existence and health in order, remove the condemned, then roll.
    async fn update_set(&mut self, pods: Vec<Arc<Pod>>) -> anyhow::Result<()> {
        self.status = Status::count(
            self.set,
            self.current,
            self.update,
            pods.iter().map(|p| &**p),
        );
        let start = start_ordinal(self.set);
        let count = replicas(self.set);
        let mut slots: Vec<Option<Arc<Pod>>> = vec![None; count as usize];
        let mut condemned = Vec::new();
        for pod in pods {
            if in_ordinal_range(self.set, &pod) {
                let at = (ordinal(&pod) - start) as usize;
                slots[at] = Some(pod);
            } else if ordinal(&pod) >= 0 {
                condemned.push(pod);
            }
        }
        let mut members: Vec<Member> = slots
            .into_iter()
            .enumerate()
            .map(|(i, pod)| match pod {
                Some(pod) => Member::Live(pod),
                None => Member::Missing(Box::new(self.versioned_pod(start + i as i32))),
            })
            .collect();
        // Highest ordinal first.
        condemned.sort_by_key(|p| std::cmp::Reverse(ordinal(p)));
        let first_unhealthy: Option<String> = members
            .iter()
            .map(Member::pod)
            .chain(condemned.iter().rev().map(|p| &**p))
            .find(|p| !is_healthy(p))
            .map(|p| p.name_any());
        let monotonic = self.monotonic();

        for i in 0..members.len() {
            let stop = self.process_member(&mut members, i, monotonic).await;
            match stop {
                Ok(false) => {}
                Ok(true) => {
                    self.recount(&members, &condemned);
                    return Ok(());
                }
                Err(err) => {
                    self.recount(&members, &condemned);
                    return Err(err);
                }
            }
        }

        // Condemned members' claims get the owners the policy wants for
        // scale-down before their pods go.
        for pod in &condemned {
            self.fix_claim_owners(pod).await?;
        }

        for pod in &condemned {
            if is_terminating(pod) {
                if monotonic {
                    self.recount(&members, &condemned);
                    return Ok(());
                }
                continue;
            }
            let is_first_unhealthy = first_unhealthy.as_deref() == Some(pod.name_any().as_str());
            if monotonic
                && !is_first_unhealthy
                && (!is_running_and_ready(pod)
                    || !is_running_and_available(pod, self.min_ready_seconds()))
            {
                self.recount(&members, &condemned);
                return Ok(());
            }
            self.delete_pod(pod, "scale down").await?;
            if monotonic {
                self.recount(&members, &condemned);
                return Ok(());
            }
        }
        self.recount(&members, &condemned);

        let (type_, partition) = self.strategy();
        if type_ == "OnDelete" {
            return Ok(());
        }
        if type_ != "RollingUpdate" {
            tracing::warn!(statefulset = %self.key, strategy = %type_, "unknown update strategy; not updating members");
            return Ok(());
        }
        // Replace the highest-ordinal member not at the update revision,
        // one at a time, waiting for each to be healthy.
        let update_min = partition.unwrap_or(0).max(0) as usize;
        let update_name = self.update.name_any();
        for target in (update_min..members.len()).rev() {
            let Member::Live(pod) = &members[target] else {
                continue;
            };
            if revision_of(pod) != update_name && !is_terminating(pod) {
                let pod = pod.clone();
                self.delete_pod(&pod, "update").await?;
                self.status.current -= 1;
                return Ok(());
            }
            if !is_healthy(pod) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// kube-controller-manager's `processReplica`; `Ok(true)` stops the
    /// pass (in order mode, when a member is not ready yet).
    async fn process_member(
        &mut self,
        members: &mut [Member],
        i: usize,
        monotonic: bool,
    ) -> anyhow::Result<bool> {
        if let Member::Live(pod) = &members[i] {
            let phase = crate::util::phase(pod).to_owned();
            if (phase == "Failed" || phase == "Succeeded") && !is_terminating(pod) {
                let (reason, kind, what) = if phase == "Failed" {
                    ("RecreatingFailedPod", EventType::Warning, "failed")
                } else {
                    ("RecreatingTerminatedPod", EventType::Normal, "terminated")
                };
                self.c.ctx.recorder.record(
                    self.set,
                    kind,
                    reason,
                    &format!(
                        "StatefulSet {}/{} is recreating {what} Pod {}",
                        self.namespace(),
                        self.set.name_any(),
                        pod.name_any()
                    ),
                );
                let pod = pod.clone();
                self.delete_pod(&pod, "recreate").await?;
                // The replacement comes once the old pod is gone: a member
                // never has two pods.
                return Ok(monotonic);
            }
        }
        let pod = match &members[i] {
            Member::Missing(pod) => {
                let pod = (**pod).clone();
                if self.claim_is_stale(&pod) {
                    // A claim still points at an earlier pod of this name
                    // and is about to be deleted with it.
                    return Ok(true);
                }
                self.create_pod(&pod).await?;
                return Ok(monotonic);
            }
            Member::Live(pod) => pod.clone(),
        };
        if crate::util::phase(&pod) == "Pending" {
            self.create_claims(&pod).await?;
        }
        if monotonic
            && (is_terminating(&pod)
                || !is_running_and_ready(&pod)
                || !is_running_and_available(&pod, self.min_ready_seconds()))
        {
            return Ok(true);
        }
        if !identity_matches(self.set, &pod) {
            let ord = ordinal(&pod);
            let patch = json!({"metadata": {"labels": {
                POD_NAME_LABEL: pod.name_any(),
                POD_INDEX_LABEL: ord.to_string(),
            }}});
            let updated = self
                .pod_api()
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
            members[i] = Member::Live(Arc::new(updated));
        }
        if !storage_matches(self.set, &pod) {
            // A pod's volumes cannot change; its claims at least exist.
            self.create_claims(&pod).await?;
        }
        self.fix_claim_owners(&pod).await?;
        Ok(false)
    }

    /// Whether one of the pod's claims still belongs to an earlier pod of
    /// that name (only with `whenScaled: Delete`).
    fn claim_is_stale(&self, pod: &Pod) -> bool {
        let (_, when_scaled) = retention_policy(self.set);
        if when_scaled == RETAIN {
            return false;
        }
        let id = OwnerIdentity::of_pod(pod);
        claims_for(self.set, ordinal(pod)).iter().any(|claim| {
            self.c
                .claims
                .get_namespaced(&self.namespace(), &claim.name_any())
                .is_some_and(|c| has_stale_ref(&c, &id))
        })
    }

    /// Creates the pod's claims that do not exist yet.
    async fn create_claims(&self, pod: &Pod) -> anyhow::Result<()> {
        let ns = self.namespace();
        for claim in claims_for(self.set, ordinal(pod)) {
            let name = claim.name_any();
            if let Some(existing) = self.c.claims.get_namespaced(&ns, &name) {
                if existing.metadata.deletion_timestamp.is_some() {
                    anyhow::bail!("pvc {name} is being deleted");
                }
                continue;
            }
            match self
                .claim_api()
                .create(&PostParams::default(), &claim)
                .await
            {
                Ok(_) => self.record_claim_event("create", pod, &name, None),
                // Our cache has not seen it yet.
                Err(err) if api_code(&err) == Some(409) => {}
                Err(err) => {
                    self.record_claim_event("create", pod, &name, Some(&err));
                    return Err(err.into());
                }
            }
        }
        Ok(())
    }

    async fn create_pod(&self, pod: &Pod) -> anyhow::Result<()> {
        self.create_claims(pod).await?;
        self.c.expectations.raise(self.key, 1, []);
        match self.pod_api().create(&PostParams::default(), pod).await {
            Ok(_) => {
                self.record_pod_event("create", pod, None);
                Ok(())
            }
            Err(err) => {
                self.c.expectations.creation_observed(self.key);
                if api_code(&err) != Some(409) {
                    self.record_pod_event("create", pod, Some(&err));
                }
                Err(err.into())
            }
        }
    }

    async fn delete_pod(&self, pod: &Pod, why: &str) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        tracing::info!(statefulset = %self.key, pod = %pod.name_any(), "deleting pod for {why}");
        self.c.expectations.raise(self.key, 0, [uid.clone()]);
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.pod_api().delete(&pod.name_any(), &params).await {
            Ok(_) => {
                self.record_pod_event("delete", pod, None);
                Ok(())
            }
            Err(err) => {
                self.c.expectations.deletion_observed(self.key, &uid);
                if api_code(&err) == Some(404) {
                    return Ok(());
                }
                self.record_pod_event("delete", pod, Some(&err));
                Err(err.into())
            }
        }
    }

    /// Sets the owner references of the pod's claims as the retention
    /// policy asks (a pod being scaled away owns them under
    /// `whenScaled: Delete`, so they go with it).
    async fn fix_claim_owners(&self, pod: &Pod) -> anyhow::Result<()> {
        if pod.uid().is_none() {
            return Ok(());
        }
        let ns = self.namespace();
        for wanted in claims_for(self.set, ordinal(pod)) {
            let Some(claim) = self.c.claims.get_namespaced(&ns, &wanted.name_any()) else {
                continue;
            };
            if claim_owners_up_to_date(&claim, self.set, pod) {
                continue;
            }
            let refs = claim_owners_for_policy(&claim, self.set, pod);
            let patch = json!({"metadata": {
                "ownerReferences": refs,
                "resourceVersion": claim.resource_version(),
            }});
            match self
                .claim_api()
                .patch(
                    &claim.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Ok(_) => {}
                Err(err) if api_code(&err) == Some(404) => {}
                Err(err) => {
                    self.record_claim_event("update", pod, &claim.name_any(), Some(&err));
                    return Err(err.into());
                }
            }
        }
        Ok(())
    }

    fn record_pod_event(&self, verb: &str, pod: &Pod, err: Option<&kube::Error>) {
        let title = title_case(verb);
        let (kind, reason, message) = match err {
            None => (
                EventType::Normal,
                format!("Successful{title}"),
                format!(
                    "{verb} Pod {} in StatefulSet {} successful",
                    pod.name_any(),
                    self.set.name_any()
                ),
            ),
            Some(err) => (
                EventType::Warning,
                format!("Failed{title}"),
                format!(
                    "{verb} Pod {} in StatefulSet {} failed error: {err}",
                    pod.name_any(),
                    self.set.name_any()
                ),
            ),
        };
        self.c
            .ctx
            .recorder
            .record(self.set, kind, &reason, &message);
    }

    fn record_claim_event(&self, verb: &str, pod: &Pod, claim: &str, err: Option<&kube::Error>) {
        let title = title_case(verb);
        let (kind, reason, message) = match err {
            None => (
                EventType::Normal,
                format!("Successful{title}"),
                format!(
                    "{verb} Claim {claim} Pod {} in StatefulSet {} success",
                    pod.name_any(),
                    self.set.name_any()
                ),
            ),
            Some(err) => (
                EventType::Warning,
                format!("Failed{title}"),
                format!(
                    "{verb} Claim {claim} for Pod {} in StatefulSet {} failed error: {err}",
                    pod.name_any(),
                    self.set.name_any()
                ),
            ),
        };
        self.c
            .ctx
            .recorder
            .record(self.set, kind, &reason, &message);
    }
}

fn title_case(verb: &str) -> String {
    let mut chars = verb.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
