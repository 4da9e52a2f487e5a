//! Disruption controller: keeps each PodDisruptionBudget's status up to
//! date: how many pods it expects, how many are healthy, how many must
//! stay healthy, how many may be disrupted now, and the DisruptionAllowed
//! condition (SufficientPods, InsufficientPods, or SyncFailed when the
//! expected count cannot be worked out). A percentage (or maxUnavailable)
//! counts against the scale of the pods' controllers: ReplicationControllers,
//! ReplicaSets, Deployments (through their ReplicaSets) and StatefulSets.
//! Pods the eviction API marked as being disrupted (`status.disruptedPods`)
//! are not counted healthy until they go or the deletion timeout passes.
//!
//! Not here: the eviction subresource itself (the API server does not
//! serve `pods/eviction` yet), controllers found through the generic scale
//! subresource (custom resources), and the clean-up of stale
//! DisruptionTarget pod conditions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use rudder_runtime::events::EventType;
use rudder_runtime::{Change, Informer, WorkQueue};

use crate::util::{controller_of, is_pod_ready, labels_of, selector_matches};
use crate::Context;

/// How long a pod the eviction API let go may stay before it counts
/// again (`DeletionTimeout`).
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(2 * 60);

const CONDITION: &str = "DisruptionAllowed";

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    DisruptionController::new(ctx, DELETION_TIMEOUT)
        .run()
        .boxed()
}

#[derive(Clone)]
pub struct DisruptionController {
    ctx: Context,
    queue: WorkQueue<String>,
    pdbs: Informer<PodDisruptionBudget>,
    pods: Informer<Pod>,
    rcs: Informer<ReplicationController>,
    replica_sets: Informer<ReplicaSet>,
    deployments: Informer<Deployment>,
    stateful_sets: Informer<StatefulSet>,
    deletion_timeout: Duration,
}

/// Why a budget's status could not be computed.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("found no controllers for pod {0:?}")]
    NoController(String),
    #[error("{0}")]
    Invalid(String),
}

/// The budgets whose selector matches the pod.
fn budgets_for(pdbs: &Informer<PodDisruptionBudget>, pod: &Pod) -> Vec<Arc<PodDisruptionBudget>> {
    let ns = pod.namespace().unwrap_or_default();
    pdbs.list_namespace(&ns)
        .into_iter()
        .filter(|pdb| {
            pdb.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| selector_matches(sel, labels_of(&pod.metadata)))
        })
        .collect()
}

fn key_of(pdb: &PodDisruptionBudget) -> String {
    format!("{}/{}", pdb.namespace().unwrap_or_default(), pdb.name_any())
}

/// `intstr.GetScaledValueFromIntOrPercent` rounding up.
fn scaled(value: &IntOrString, total: i32) -> Result<i32, SyncError> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| {
                    SyncError::Invalid(format!(
                        "invalid value for IntOrString: invalid value {s:?}"
                    ))
                })?;
            Ok(((pct * i64::from(total) + 99) / 100) as i32)
        }
    }
}

/// Sets the condition, moving its transition time only when its status
/// changes (`meta.SetStatusCondition`).
fn set_condition(
    conditions: &mut Vec<Condition>,
    status: &str,
    reason: &str,
    message: &str,
    generation: i64,
) {
    let now = Time(jiff::Timestamp::now());
    match conditions.iter_mut().find(|c| c.type_ == CONDITION) {
        Some(c) => {
            if c.status != status {
                c.status = status.into();
                c.last_transition_time = now;
            }
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = Some(generation);
        }
        None => conditions.push(Condition {
            type_: CONDITION.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(generation),
            last_transition_time: now,
        }),
    }
}

impl DisruptionController {
    pub fn new(ctx: &Context, deletion_timeout: Duration) -> Self {
        let queue = WorkQueue::new();
        let pdbs = ctx.informers.get::<PodDisruptionBudget>();
        let pods = ctx.informers.get::<Pod>();
        let q = queue.clone();
        pdbs.on_change(move |change| q.add(key_of(change.object())));
        let q = queue.clone();
        let budgets = pdbs.clone();
        let recorder = ctx.recorder.clone();
        pods.on_change(move |change| {
            let mut matched = budgets_for(&budgets, change.object());
            if let Change::Updated { old, new } = change {
                if old.metadata.labels != new.metadata.labels {
                    matched.extend(budgets_for(&budgets, old));
                }
            }
            if matched.len() > 1 && matches!(change, Change::Added(_)) {
                let pod = change.object();
                let message = format!(
                    "Pod {:?}/{:?} matches multiple PodDisruptionBudgets.  Chose {:?} arbitrarily.",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any(),
                    matched[0].name_any()
                );
                recorder.record(
                    &**pod,
                    EventType::Warning,
                    "MultiplePodDisruptionBudgets",
                    &message,
                );
            }
            for pdb in matched {
                q.add(key_of(&pdb));
            }
        });
        DisruptionController {
            queue,
            pdbs,
            pods,
            rcs: ctx.informers.get(),
            replica_sets: ctx.informers.get(),
            deployments: ctx.informers.get(),
            stateful_sets: ctx.informers.get(),
            ctx: ctx.clone(),
            deletion_timeout,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.pdbs.wait_synced().await;
        self.pods.wait_synced().await;
        self.rcs.wait_synced().await;
        self.replica_sets.wait_synced().await;
        self.deployments.wait_synced().await;
        self.stateful_sets.wait_synced().await;
        let this = self.clone();
        self.queue
            .run_workers("disruption", 2, move |key: String| {
                let this = this.clone();
                async move { this.sync(&key).await }
            })
            .await;
        Ok(())
    }

    /// The scale of the pod's controller, keyed by the controller's uid:
    /// a Deployment's for pods of its ReplicaSets.
    fn controller_scale(&self, pod: &Pod) -> Option<(String, i32)> {
        let ns = pod.namespace().unwrap_or_default();
        let owner = controller_of(&pod.metadata)?;
        let group = owner.api_version.split_once('/').map_or("", |(g, _)| g);
        match (group, owner.kind.as_str()) {
            ("", "ReplicationController") => {
                let rc = self.rcs.get_namespaced(&ns, &owner.name)?;
                (rc.metadata.uid.as_deref() == Some(&owner.uid)).then(|| {
                    (
                        owner.uid.clone(),
                        rc.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    )
                })
            }
            ("apps", "ReplicaSet") => {
                let rs = self.replica_sets.get_namespaced(&ns, &owner.name)?;
                if rs.metadata.uid.as_deref() != Some(&owner.uid) {
                    return None;
                }
                match controller_of(&rs.metadata) {
                    Some(d) if d.kind == "Deployment" => {
                        let deployment = self.deployments.get_namespaced(&ns, &d.name)?;
                        (deployment.metadata.uid.as_deref() == Some(&d.uid)).then(|| {
                            (
                                d.uid.clone(),
                                deployment
                                    .spec
                                    .as_ref()
                                    .and_then(|s| s.replicas)
                                    .unwrap_or(1),
                            )
                        })
                    }
                    _ => Some((
                        owner.uid.clone(),
                        rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    )),
                }
            }
            ("apps", "StatefulSet") => {
                let set = self.stateful_sets.get_namespaced(&ns, &owner.name)?;
                (set.metadata.uid.as_deref() == Some(&owner.uid)).then(|| {
                    (
                        owner.uid.clone(),
                        set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    )
                })
            }
            _ => None,
        }
    }

    /// The sum of the pods' controllers' scales, and the pods with no
    /// controller.
    fn expected_scale(&self, pods: &[Arc<Pod>]) -> Result<(i32, Vec<String>), SyncError> {
        let mut scales: BTreeMap<String, i32> = BTreeMap::new();
        let mut unmanaged = Vec::new();
        for pod in pods {
            if controller_of(&pod.metadata).is_none() {
                unmanaged.push(pod.name_any());
                continue;
            }
            match self.controller_scale(pod) {
                Some((uid, scale)) => {
                    scales.insert(uid, scale);
                }
                None => return Err(SyncError::NoController(pod.name_any())),
            }
        }
        Ok((scales.values().sum(), unmanaged))
    }

    /// (expected, desired healthy, unmanaged pods).
    fn expected_count(
        &self,
        pdb: &PodDisruptionBudget,
        pods: &[Arc<Pod>],
    ) -> Result<(i32, i32, Vec<String>), SyncError> {
        let spec = pdb.spec.clone().unwrap_or_default();
        if let Some(max) = &spec.max_unavailable {
            let (expected, unmanaged) = self.expected_scale(pods)?;
            let max = scaled(max, expected)?;
            return Ok((expected, (expected - max).max(0), unmanaged));
        }
        match &spec.min_available {
            Some(IntOrString::Int(n)) => Ok((pods.len() as i32, *n, Vec::new())),
            Some(percent) => {
                let (expected, unmanaged) = self.expected_scale(pods)?;
                Ok((expected, scaled(percent, expected)?, unmanaged))
            }
            None => Ok((0, 0, Vec::new())),
        }
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (ns, name) = rudder_runtime::informer::split_key(key);
        let Some(pdb) = self.pdbs.get_namespaced(ns, name) else {
            return Ok(None);
        };
        match self.try_sync(&pdb).await {
            Ok(recheck) => Ok(recheck),
            Err(Ok(err)) => Err(err),
            Err(Err(err)) => {
                tracing::warn!(pdb = key, error = %err, "failed to sync PodDisruptionBudget");
                self.fail_safe(&pdb, &err.to_string()).await?;
                Ok(None)
            }
        }
    }

    /// The status as Kubernetes computes it. `Err(Ok(_))` is an API error
    /// (retried), `Err(Err(_))` a budget whose status cannot be computed.
    async fn try_sync(
        &self,
        pdb: &PodDisruptionBudget,
    ) -> Result<Option<Duration>, Result<kube::Error, SyncError>> {
        let ns = pdb.namespace().unwrap_or_default();
        let selector = pdb.spec.as_ref().and_then(|s| s.selector.as_ref());
        let pods: Vec<Arc<Pod>> = match selector {
            Some(sel) => self
                .pods
                .list_namespace(&ns)
                .into_iter()
                .filter(|p| selector_matches(sel, labels_of(&p.metadata)))
                .collect(),
            None => Vec::new(),
        };
        if pods.is_empty() {
            self.ctx
                .recorder
                .record(pdb, EventType::Normal, "NoPods", "No matching pods found");
        }
        let (expected, desired, unmanaged) = match self.expected_count(pdb, &pods) {
            Ok(v) => v,
            Err(err) => {
                self.ctx.recorder.record(
                    pdb,
                    EventType::Warning,
                    "CalculateExpectedPodCountFailed",
                    &format!("Failed to calculate the number of expected pods: {err}"),
                );
                return Err(Err(err));
            }
        };
        if !unmanaged.is_empty() {
            self.ctx.recorder.record(
                pdb,
                EventType::Warning,
                "UnmanagedPods",
                &format!(
                    "Pods selected by this PodDisruptionBudget (selector: {}) were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value.",
                    serde_json::to_string(&selector).unwrap_or_default()
                ),
            );
        }
        let now = SystemTime::now();
        let status = pdb.status.clone().unwrap_or_default();
        // Disrupted pods still here and within the timeout stay listed.
        let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
        let mut recheck: Option<Duration> = None;
        for pod in &pods {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(at) = status
                .disrupted_pods
                .as_ref()
                .and_then(|d| d.get(&pod.name_any()))
            else {
                continue;
            };
            let expected_deletion = SystemTime::from(at.0) + self.deletion_timeout;
            match expected_deletion.duration_since(now) {
                Ok(left) => {
                    recheck = Some(recheck.map_or(left, |r| r.min(left)));
                    disrupted.insert(pod.name_any(), at.clone());
                }
                Err(_) => self.ctx.recorder.record(
                    &**pod,
                    EventType::Warning,
                    "NotDeleted",
                    &format!("Pod was expected by PDB {ns}/{ns} to be deleted but it wasn't"),
                ),
            }
        }
        let healthy = pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !disrupted.contains_key(&p.name_any())
                    && is_pod_ready(p)
            })
            .count() as i32;
        let mut allowed = healthy - desired;
        if expected <= 0 || allowed <= 0 {
            allowed = 0;
        }
        let generation = pdb.metadata.generation.unwrap_or(0);
        let (cond_status, reason) = if allowed > 0 {
            ("True", "SufficientPods")
        } else {
            ("False", "InsufficientPods")
        };
        let up_to_date = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == CONDITION)
            .is_some_and(|c| c.status == cond_status && c.reason == reason);
        let old_disrupted = status.disrupted_pods.clone().unwrap_or_default();
        if status.current_healthy == healthy
            && status.desired_healthy == desired
            && status.expected_pods == expected
            && status.disruptions_allowed == allowed
            && old_disrupted == disrupted
            && status.observed_generation == Some(generation)
            && up_to_date
        {
            return Ok(recheck);
        }
        let mut conditions = status.conditions.clone().unwrap_or_default();
        set_condition(&mut conditions, cond_status, reason, "", generation);
        let mut updated = (*pdb).clone();
        updated.status = Some(PodDisruptionBudgetStatus {
            current_healthy: healthy,
            desired_healthy: desired,
            expected_pods: expected,
            disruptions_allowed: allowed,
            disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
            observed_generation: Some(generation),
            conditions: Some(conditions),
        });
        self.write_status(&updated).await.map_err(Ok)?;
        Ok(recheck)
    }

    /// A budget whose status cannot be computed allows no disruption.
    async fn fail_safe(&self, pdb: &PodDisruptionBudget, message: &str) -> Result<(), kube::Error> {
        let mut updated = pdb.clone();
        let mut status = updated.status.take().unwrap_or_default();
        status.disruptions_allowed = 0;
        let mut conditions = status.conditions.take().unwrap_or_default();
        let generation = status.observed_generation.unwrap_or(0);
        set_condition(&mut conditions, "False", "SyncFailed", message, generation);
        status.conditions = Some(conditions);
        updated.status = Some(status);
        self.write_status(&updated).await
    }

    async fn write_status(&self, pdb: &PodDisruptionBudget) -> Result<(), kube::Error> {
        let api: Api<PodDisruptionBudget> = Api::namespaced(
            self.ctx.client.clone(),
            &pdb.namespace().unwrap_or_default(),
        );
        match api
            .replace_status(&pdb.name_any(), &PostParams::default(), pdb)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if crate::util::is_not_found(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{eventually, fake_kubelet, namespace, TestCluster};
    use kube::api::{Patch, PatchParams};
    use serde_json::json;

    #[test]
    fn percentages_round_up() {
        assert_eq!(scaled(&IntOrString::String("50%".into()), 3).unwrap(), 2);
        assert_eq!(scaled(&IntOrString::Int(2), 10).unwrap(), 2);
        assert!(scaled(&IntOrString::String("half".into()), 3).is_err());
    }

    async fn status_of(
        api: &Api<PodDisruptionBudget>,
        name: &str,
    ) -> Option<PodDisruptionBudgetStatus> {
        api.get(name).await.ok()?.status
    }

    fn condition(status: &PodDisruptionBudgetStatus) -> (String, String) {
        let c = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == CONDITION)
            .expect("the DisruptionAllowed condition");
        (c.status.clone(), c.reason.clone())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn budgets_count_healthy_pods_against_the_controller_scale() {
        let cluster = TestCluster::start().await;
        cluster.run_controllers(&["disruption", "replicaset"]);
        namespace(&cluster.client, "team").await;
        let _kubelet = fake_kubelet(&cluster.client, "team");
        let sets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "team");
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "web:1"}]}}}
        }))
        .unwrap();
        sets.create(&PostParams::default(), &rs).await.unwrap();
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), "team");
        let budget = |name: &str, field: &str, value: serde_json::Value| -> PodDisruptionBudget {
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, field: value}}))
            .unwrap()
        };
        pdbs.create(
            &PostParams::default(),
            &budget("half", "minAvailable", json!("50%")),
        )
        .await
        .unwrap();
        pdbs.create(
            &PostParams::default(),
            &budget("one-down", "maxUnavailable", json!(1)),
        )
        .await
        .unwrap();
        pdbs.create(
            &PostParams::default(),
            &budget("all", "minAvailable", json!(4)),
        )
        .await
        .unwrap();
        let status = eventually("the 50% budget's status", || async {
            status_of(&pdbs, "half")
                .await
                .filter(|s| s.current_healthy == 4)
        })
        .await;
        assert_eq!(
            (
                status.expected_pods,
                status.desired_healthy,
                status.disruptions_allowed
            ),
            (4, 2, 2)
        );
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(condition(&status), ("True".into(), "SufficientPods".into()));
        let status = eventually("the maxUnavailable budget's status", || async {
            status_of(&pdbs, "one-down")
                .await
                .filter(|s| s.current_healthy == 4)
        })
        .await;
        assert_eq!(
            (
                status.expected_pods,
                status.desired_healthy,
                status.disruptions_allowed
            ),
            (4, 3, 1)
        );
        let status = eventually("the all-pods budget's status", || async {
            status_of(&pdbs, "all")
                .await
                .filter(|s| s.current_healthy == 4)
        })
        .await;
        assert_eq!(status.disruptions_allowed, 0);
        assert_eq!(
            condition(&status),
            ("False".into(), "InsufficientPods".into())
        );

        // A pod the eviction API let go is not counted healthy, and is
        // listed until it goes.
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "team");
        let victim = pods.list(&Default::default()).await.unwrap().items[0].name_any();
        let now = rudder_apimachinery::time::now_rfc3339();
        pdbs.patch_status(
            "half",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"disruptedPods": {victim.clone(): now}}})),
        )
        .await
        .unwrap();
        let status = eventually("the disrupted pod left out", || async {
            status_of(&pdbs, "half")
                .await
                .filter(|s| s.current_healthy == 3)
        })
        .await;
        assert!(status.disrupted_pods.unwrap().contains_key(&victim));
        assert_eq!(status.disruptions_allowed, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uncountable_budgets_fail_safe_and_disrupted_pods_expire() {
        let cluster = TestCluster::start().await;
        let controller = DisruptionController::new(&cluster.ctx, Duration::from_millis(300));
        tokio::spawn(controller.run());
        cluster.ctx.informers.start();
        namespace(&cluster.client, "team").await;
        let _kubelet = fake_kubelet(&cluster.client, "team");
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "team");
        // A pod whose controller is a kind the controller cannot scale.
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p", "labels": {"app": "db"},
            "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Database", "name": "db",
                "uid": "u-1", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "db:1"}]}}))
            .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), "team");
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({"metadata": {"name": "db"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "maxUnavailable": "10%"}}))
        .unwrap();
        pdbs.create(&PostParams::default(), &pdb).await.unwrap();
        let status = eventually("the failed sync", || async {
            status_of(&pdbs, "db")
                .await
                .filter(|s| s.conditions.is_some())
        })
        .await;
        let c = status.conditions.unwrap().into_iter().next().unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SyncFailed")
        );
        assert_eq!(c.message, "found no controllers for pod \"p\"");
        assert_eq!(status.disruptions_allowed, 0);

        // With an integer minAvailable no scale is needed; a disrupted pod
        // that is still there after the timeout counts again.
        pdbs.patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxUnavailable": null, "minAvailable": 0}})),
        )
        .await
        .unwrap();
        let now = rudder_apimachinery::time::now_rfc3339();
        pdbs.patch_status(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"disruptedPods": {"p": now}}})),
        )
        .await
        .unwrap();
        let status = eventually("the disrupted pod counts again", || async {
            status_of(&pdbs, "db").await.filter(|s| {
                s.current_healthy == 1
                    && s.disrupted_pods.is_none()
                    && s.observed_generation == Some(2)
            })
        })
        .await;
        assert_eq!(
            (
                status.expected_pods,
                status.desired_healthy,
                status.disruptions_allowed
            ),
            (1, 0, 1)
        );
        assert_eq!(condition(&status), ("True".into(), "SufficientPods".into()));
    }
}
