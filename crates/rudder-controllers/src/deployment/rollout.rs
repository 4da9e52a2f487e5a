//! One sync of one Deployment: find or create the new ReplicaSet, scale
//! the new one up and the old ones down within the strategy's bounds,
//! clean up history, and report status.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use rudder_runtime::events::EventType;
use rudder_runtime::Informer;
use serde_json::json;

use super::revision::{
    annotation_i32, available_replicas, by_creation, desired, revision_of,
    set_replica_set_annotations, spec_replicas, split_new_and_old, DESIRED_REPLICAS, MAX_REPLICAS,
    POD_TEMPLATE_HASH, REVISION,
};
use super::status;
use crate::replicaset::POD_CONTROLLER_INDEX;
use crate::util::{
    api_code, controller_reference, is_not_found, phase, scaled_value, template_hash,
};
use crate::Context;

pub struct Rollout<'a> {
    ctx: &'a Context,
    pub d: Deployment,
    new: Option<ReplicaSet>,
    old: Vec<ReplicaSet>,
    pods: &'a Informer<Pod>,
    /// A condition to set because of what this sync did (the new
    /// ReplicaSet was created or found).
    pub progress_note: Option<(&'static str, String)>,
}

impl<'a> Rollout<'a> {
    pub fn new(
        ctx: &'a Context,
        d: Deployment,
        sets: Vec<ReplicaSet>,
        pods: &'a Informer<Pod>,
    ) -> Self {
        let (new, old) = split_new_and_old(&d, &sets);
        let new = new.cloned();
        let old = old.into_iter().cloned().collect();
        Rollout {
            ctx,
            d,
            new,
            old,
            pods,
            progress_note: None,
        }
    }

    fn namespace(&self) -> String {
        self.d.namespace().unwrap_or_default()
    }

    fn sets_api(&self) -> Api<ReplicaSet> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace())
    }

    fn paused(&self) -> bool {
        self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
    }

    fn is_recreate(&self) -> bool {
        self.d
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.type_.as_deref())
            == Some("Recreate")
    }

    /// (maxSurge, maxUnavailable) as numbers: percentages of replicas,
    /// surge rounded up and unavailability down, and never both zero.
    pub fn fenceposts(&self) -> anyhow::Result<(i32, i32)> {
        if self.is_recreate() {
            return Ok((0, 0));
        }
        let replicas = desired(&self.d);
        let rolling = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.rolling_update.as_ref());
        let surge = scaled_value(
            rolling.and_then(|r| r.max_surge.as_ref()),
            replicas,
            true,
            0,
        )
        .map_err(anyhow::Error::msg)?;
        let mut unavailable = scaled_value(
            rolling.and_then(|r| r.max_unavailable.as_ref()),
            replicas,
            false,
            0,
        )
        .map_err(anyhow::Error::msg)?;
        if surge == 0 && unavailable == 0 {
            // Otherwise the rollout could never move.
            unavailable = 1;
        }
        Ok((surge, unavailable.min(replicas)))
    }

    fn all(&self) -> Vec<&ReplicaSet> {
        self.old.iter().chain(self.new.iter()).collect()
    }

    pub async fn sync(&mut self) -> anyhow::Result<Option<Duration>> {
        if self.d.metadata.deletion_timestamp.is_some() {
            return self.write_status(false).await;
        }
        if self.paused() || self.is_scaling_event() {
            self.find_or_create_new(false).await?;
            self.scale().await?;
            if self.paused() {
                self.cleanup().await?;
            }
            return self.write_status(false).await;
        }
        if self.is_recreate() {
            self.recreate().await
        } else {
            self.rolling().await
        }
    }

    /// A change of `replicas` alone: some active ReplicaSet was sized for
    /// another count.
    fn is_scaling_event(&self) -> bool {
        let want = desired(&self.d);
        self.all()
            .into_iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .any(|rs| annotation_i32(rs, DESIRED_REPLICAS).is_some_and(|d| d != want))
    }

    async fn rolling(&mut self) -> anyhow::Result<Option<Duration>> {
        self.find_or_create_new(true).await?;
        if self.reconcile_new().await? {
            return self.write_status(true).await;
        }
        if self.reconcile_old().await? {
            return self.write_status(true).await;
        }
        if status::is_complete(&self.d, &self.computed_status()) {
            self.cleanup().await?;
        }
        self.write_status(true).await
    }

    async fn recreate(&mut self) -> anyhow::Result<Option<Duration>> {
        self.find_or_create_new(false).await?;
        // First every old pod goes…
        let mut scaled = false;
        for i in 0..self.old.len() {
            if spec_replicas(&self.old[i]) > 0 {
                self.scale_old(i, 0).await?;
                scaled = true;
            }
        }
        if scaled || self.old_pods_running() {
            return self.write_status(true).await;
        }
        // …then the new ones come.
        if self.new.is_none() {
            self.find_or_create_new(true).await?;
        }
        let want = desired(&self.d);
        if let Some(new) = &self.new {
            if spec_replicas(new) != want {
                self.scale_new(want).await?;
                return self.write_status(true).await;
            }
        }
        if status::is_complete(&self.d, &self.computed_status()) {
            self.cleanup().await?;
        }
        self.write_status(true).await
    }

    fn old_pods_running(&self) -> bool {
        self.old.iter().any(|rs| {
            let uid = rs.uid().unwrap_or_default();
            self.pods
                .by_index(POD_CONTROLLER_INDEX, &uid)
                .iter()
                .any(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        })
    }

    /// Scales the new ReplicaSet up within maxSurge (or down to replicas).
    async fn reconcile_new(&mut self) -> anyhow::Result<bool> {
        let Some(new) = &self.new else {
            return Ok(false);
        };
        let want = desired(&self.d);
        let current = spec_replicas(new);
        if current == want {
            return Ok(false);
        }
        if current > want {
            self.scale_new(want).await?;
            return Ok(true);
        }
        let (surge, _) = self.fenceposts()?;
        let total: i32 = self.all().iter().map(|rs| spec_replicas(rs)).sum();
        let max_total = want + surge;
        if total >= max_total {
            return Ok(false);
        }
        let up = (max_total - total).min(want - current);
        self.scale_new(current + up).await?;
        Ok(true)
    }

    /// Scales old ReplicaSets down as far as maxUnavailable allows: first
    /// their unhealthy pods, then available ones.
    async fn reconcile_old(&mut self) -> anyhow::Result<bool> {
        let old_count: i32 = self.old.iter().map(spec_replicas).sum();
        if old_count == 0 {
            return Ok(false);
        }
        let want = desired(&self.d);
        let (_, max_unavailable) = self.fenceposts()?;
        let min_available = want - max_unavailable;
        let all_count: i32 = self.all().iter().map(|rs| spec_replicas(rs)).sum();
        let new_unavailable = self
            .new
            .as_ref()
            .map_or(0, |n| spec_replicas(n) - available_replicas(n));
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // Unhealthy replicas first: they count for nothing.
        let mut order: Vec<usize> = (0..self.old.len()).collect();
        order.sort_by(|a, b| by_creation(&self.old[*a]).cmp(&by_creation(&self.old[*b])));
        let mut cleaned = 0;
        for &i in &order {
            if cleaned >= max_scaled_down {
                break;
            }
            let rs = &self.old[i];
            let replicas = spec_replicas(rs);
            if replicas == 0 {
                continue;
            }
            let unhealthy = replicas - available_replicas(rs);
            if unhealthy <= 0 {
                continue;
            }
            let down = unhealthy.min(max_scaled_down - cleaned);
            self.scale_old(i, replicas - down).await?;
            cleaned += down;
        }
        // Then available ones, as long as enough stay available.
        let available: i32 = self.all().iter().map(|rs| available_replicas(rs)).sum();
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for &i in &order {
                if scaled >= total {
                    break;
                }
                let replicas = spec_replicas(&self.old[i]);
                if replicas == 0 {
                    continue;
                }
                let down = replicas.min(total - scaled);
                self.scale_old(i, replicas - down).await?;
                scaled += down;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    /// Proportional scaling: a replicas change in the middle of a rollout
    /// is spread over the active ReplicaSets by their share.
    async fn scale(&mut self) -> anyhow::Result<()> {
        let want = desired(&self.d);
        let active: Vec<usize> = (0..self.old.len())
            .filter(|i| spec_replicas(&self.old[*i]) > 0)
            .collect();
        let new_active = self.new.as_ref().is_some_and(|n| spec_replicas(n) > 0);
        // One active (or none: the latest) ReplicaSet takes it all.
        if active.len() + new_active as usize <= 1 {
            if new_active || (active.is_empty() && self.new.is_some()) {
                if self.new.as_ref().map(spec_replicas) != Some(want) {
                    self.scale_new(want).await?;
                }
                return Ok(());
            }
            let target = active.first().copied().or_else(|| {
                (0..self.old.len())
                    .max_by(|a, b| by_creation(&self.old[*a]).cmp(&by_creation(&self.old[*b])))
            });
            if let Some(i) = target {
                if spec_replicas(&self.old[i]) != want {
                    self.scale_old(i, want).await?;
                }
            }
            return Ok(());
        }
        // The new one has all it needs: the old ones go.
        if let Some(new) = &self.new {
            if spec_replicas(new) == want
                && annotation_i32(new, DESIRED_REPLICAS) == Some(want)
                && available_replicas(new) == want
            {
                for i in active {
                    self.scale_old(i, 0).await?;
                }
                return Ok(());
            }
        }
        if self.is_recreate() {
            return Ok(());
        }
        let (surge, _) = self.fenceposts()?;
        let all_replicas: i32 = self.all().iter().map(|rs| spec_replicas(rs)).sum();
        let allowed = if want > 0 { want + surge } else { 0 };
        let to_add = allowed - all_replicas;
        // (index in old, or None for the new one), by size.
        let mut targets: Vec<Option<usize>> = active.iter().map(|i| Some(*i)).collect();
        if new_active {
            targets.push(None);
        }
        let size_of = |t: &Option<usize>, this: &Self| match t {
            Some(i) => (spec_replicas(&this.old[*i]), by_creation(&this.old[*i])),
            None => (
                spec_replicas(this.new.as_ref().unwrap()),
                by_creation(this.new.as_ref().unwrap()),
            ),
        };
        targets.sort_by(|a, b| {
            let (sa, ca) = size_of(a, self);
            let (sb, cb) = size_of(b, self);
            if to_add > 0 {
                // Bigger first, newer first among equals.
                sb.cmp(&sa).then(cb.cmp(&ca))
            } else {
                sb.cmp(&sa).then(ca.cmp(&cb))
            }
        });
        let d_status_replicas = self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::new();
        for t in &targets {
            let rs = match t {
                Some(i) => &self.old[*i],
                None => self.new.as_ref().unwrap(),
            };
            let replicas = spec_replicas(rs);
            let mut proportion = 0;
            if replicas != 0 && to_add != 0 && to_add != added {
                let fraction = if want == 0 {
                    -replicas
                } else {
                    let annotated = annotation_i32(rs, MAX_REPLICAS)
                        .unwrap_or(d_status_replicas)
                        .max(1);
                    let scaled = (replicas as f64 * (want + surge) as f64) / annotated as f64;
                    scaled.round() as i32 - replicas
                };
                let allowed = to_add - added;
                proportion = if to_add > 0 {
                    fraction.min(allowed)
                } else {
                    fraction.max(allowed)
                };
            }
            added += proportion;
            sizes.push(replicas + proportion);
        }
        if let Some(first) = sizes.first_mut() {
            // Rounding leftovers go to the biggest.
            *first = (*first + to_add - added).max(0);
        }
        for (t, size) in targets.into_iter().zip(sizes) {
            match t {
                Some(i) => self.scale_old(i, size).await?,
                None => self.scale_new(size).await?,
            }
        }
        Ok(())
    }

    /// Finds the new ReplicaSet (bringing its annotations up to date) or,
    /// with `create`, makes it.
    async fn find_or_create_new(&mut self, create: bool) -> anyhow::Result<()> {
        let max_old = self.old.iter().map(revision_of).max().unwrap_or(0);
        let (surge, _) = self.fenceposts()?;
        if let Some(new) = &self.new {
            let revision = max_old.max(0) + 1;
            let revision = revision.max(revision_of(new));
            let mut annotations = new.metadata.annotations.clone().unwrap_or_default();
            let changed = set_replica_set_annotations(&self.d, &mut annotations, revision, surge);
            let min_ready = self
                .d
                .spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0);
            let rs_min_ready = new
                .spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0);
            if changed || min_ready != rs_min_ready {
                let patch = json!({"metadata": {"annotations": annotations}, "spec": {"minReadySeconds": min_ready}});
                let updated = self
                    .sets_api()
                    .patch(
                        &new.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                self.new = Some(updated);
            }
            let rev = revision_of(self.new.as_ref().unwrap());
            self.set_deployment_revision(rev).await?;
            let name = self.new.as_ref().unwrap().name_any();
            self.progress_note = Some((
                "FoundNewReplicaSet",
                format!("Found new replica set {name:?}"),
            ));
            return Ok(());
        }
        if !create {
            return Ok(());
        }
        let Some(spec) = self.d.spec.clone() else {
            anyhow::bail!("deployment has no spec");
        };
        let collision_count = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collision_count);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let name = format!("{}-{}", self.d.name_any(), hash);
        let revision = max_old + 1;
        let mut annotations = BTreeMap::new();
        set_replica_set_annotations(&self.d, &mut annotations, revision, surge);
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let replicas = if self.is_recreate() {
            desired(&self.d)
        } else {
            let want = desired(&self.d);
            let total: i32 = self.all().iter().map(|rs| spec_replicas(rs)).sum();
            (want + surge - total).clamp(0, want)
        };
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": self.namespace(),
                "labels": labels, "annotations": annotations,
                "ownerReferences": [controller_reference(&self.d)],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": spec.min_ready_seconds.unwrap_or(0),
                "selector": selector,
                "template": template,
            }
        }))?;
        match self.sets_api().create(&PostParams::default(), &rs).await {
            Ok(created) => {
                self.ctx.recorder.record(
                    &self.d,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {name} from 0 to {replicas}"),
                );
                self.new = Some(created);
                self.set_deployment_revision(revision).await?;
                self.progress_note = Some((
                    "NewReplicaSetCreated",
                    format!("Created new replica set {name:?}"),
                ));
                Ok(())
            }
            Err(err) if api_code(&err) == Some(409) => {
                // Someone has that name: ours from an earlier sync (the
                // cache is behind), or a hash collision.
                let existing = self.sets_api().get(&name).await?;
                let ours = crate::util::controller_of(&existing.metadata)
                    .is_some_and(|o| Some(&o.uid) == self.d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| super::revision::same_template(t, &spec.template));
                if ours && same {
                    self.new = Some(existing);
                    return Ok(());
                }
                let count = collision_count.unwrap_or(0) + 1;
                let api: Api<Deployment> =
                    Api::namespaced(self.ctx.client.clone(), &self.namespace());
                api.patch_status(
                    &self.d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"collisionCount": count}})),
                )
                .await?;
                anyhow::bail!(
                    "hash collision for replica set {name}: collisionCount is now {count}"
                )
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn set_deployment_revision(&mut self, revision: i64) -> anyhow::Result<()> {
        let current = self
            .d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .cloned();
        if current.as_deref() == Some(revision.to_string().as_str()) {
            return Ok(());
        }
        let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.namespace());
        let patch = json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
        match api
            .patch(
                &self.d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(updated) => {
                self.d.metadata.annotations = updated.metadata.annotations;
                Ok(())
            }
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn scale_new(&mut self, replicas: i32) -> anyhow::Result<()> {
        let Some(rs) = self.new.take() else {
            return Ok(());
        };
        let scaled = self.scale_replica_set(rs, replicas).await?;
        self.new = Some(scaled);
        Ok(())
    }

    async fn scale_old(&mut self, index: usize, replicas: i32) -> anyhow::Result<()> {
        let rs = self.old[index].clone();
        self.old[index] = self.scale_replica_set(rs, replicas).await?;
        Ok(())
    }

    /// Sets a ReplicaSet's replicas and its desired/max annotations.
    async fn scale_replica_set(&self, rs: ReplicaSet, replicas: i32) -> anyhow::Result<ReplicaSet> {
        let (surge, _) = self.fenceposts()?;
        let want = desired(&self.d);
        let before = spec_replicas(&rs);
        let annotated = annotation_i32(&rs, DESIRED_REPLICAS) == Some(want)
            && annotation_i32(&rs, MAX_REPLICAS) == Some(want + surge);
        if before == replicas && annotated {
            return Ok(rs);
        }
        let patch = json!({
            "metadata": {"annotations": {DESIRED_REPLICAS: want.to_string(), MAX_REPLICAS: (want + surge).to_string()}},
            "spec": {"replicas": replicas},
        });
        let updated = self
            .sets_api()
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        if before != replicas {
            let direction = if replicas > before { "up" } else { "down" };
            self.ctx.recorder.record(
                &self.d,
                EventType::Normal,
                "ScalingReplicaSet",
                &format!(
                    "Scaled {direction} replica set {} from {before} to {replicas}",
                    rs.name_any()
                ),
            );
        }
        Ok(updated)
    }

    /// Deletes old ReplicaSets beyond revisionHistoryLimit, oldest first,
    /// among those fully scaled down.
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        let limit = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut idle: Vec<&ReplicaSet> = self
            .old
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && super::revision::status_replicas(rs) == 0
                    && rs.metadata.deletion_timestamp.is_none()
                    && rs.status.as_ref().and_then(|s| s.observed_generation)
                        >= rs.metadata.generation
            })
            .collect();
        if idle.len() <= limit {
            return Ok(());
        }
        idle.sort_by_key(|rs| by_creation(rs));
        let doomed: Vec<String> = idle[..idle.len() - limit]
            .iter()
            .map(|rs| rs.name_any())
            .collect();
        for name in doomed {
            match self
                .sets_api()
                .delete(&name, &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(err.into()),
            }
            self.old
                .retain(|rs| rs.metadata.name.as_deref() != Some(name.as_str()));
        }
        Ok(())
    }

    pub fn computed_status(&self) -> status::Counts {
        status::Counts::of(&self.all(), self.new.as_ref())
    }

    /// Writes the status (and, for a rollout, the Progressing condition);
    /// returns when to look again for the progress deadline.
    async fn write_status(&self, rollout: bool) -> anyhow::Result<Option<Duration>> {
        let (_, max_unavailable) = self.fenceposts()?;
        let (new_status, requeue) = status::compute(
            &self.d,
            self.new.as_ref(),
            &self.all(),
            max_unavailable,
            rollout,
            self.progress_note.as_ref(),
            std::time::SystemTime::now(),
        );
        let current = serde_json::to_value(&self.d.status).unwrap_or_default();
        if !status::same(&current, &new_status) {
            let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.namespace());
            match api
                .patch_status(
                    &self.d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": new_status})),
                )
                .await
            {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => return Ok(None),
                Err(err) => return Err(err.into()),
            }
        }
        Ok(requeue)
    }
}
