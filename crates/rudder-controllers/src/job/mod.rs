//! Job controller (kube-controller-manager's `job`): runs pods until
//! `completions` succeed (NonIndexed or Indexed), `parallelism` at a
//! time, replaces failed ones with exponential back-off up to
//! `backoffLimit`, honours `activeDeadlineSeconds`, `suspend` and
//! `podFailurePolicy`, and tracks finished pods with the
//! `batch.kubernetes.io/job-tracking` finalizer so each is counted once
//! (`status.uncountedTerminatedPods` holds those being counted).
//!
//! Terminal conditions come in two steps, as in Kubernetes v1.32: first
//! `SuccessCriteriaMet`/`FailureTarget`, then `Complete`/`Failed` once no
//! pod is left running or terminating.

pub mod backoff;
pub mod clock;
pub mod indexed;
pub mod pod_failure_policy;
pub mod ttl;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use rudder_runtime::events::EventType;
use rudder_runtime::expectations::Expectations;
use rudder_runtime::informer::{key_of, split_key};
use rudder_runtime::{Change, Informer, WorkQueue};

use crate::util::{
    api_code, controller_of, controller_reference, is_not_found, is_pod_active, is_pod_ready,
    phase, pod_from_template,
};
use crate::Context;
use backoff::BackoffRecord;
use clock::{Clock, SystemClock};
use indexed::{completion_index, Intervals};
use pod_failure_policy::{counts_as_failure, match_pod_failure_policy, Action};

/// The finalizer that keeps a finished pod until the Job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The value of `spec.managedBy` that means this controller.
pub const JOB_CONTROLLER_NAME: &str = "kubernetes.io/job-controller";
/// First delay before replacing failed pods (`DefaultJobPodFailureBackOff`).
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
/// Longest delay (`MaxJobPodFailureBackOff`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(360);
/// At most this many pods are counted per status write, so the uid lists
/// stay small.
const MAX_UNCOUNTED_PODS: usize = 500;
/// Pods created or deleted per sync.
const MAX_POD_CREATE_DELETE_PER_SYNC: i32 = 500;

const JOB_INDEX: &str = "job-owner";

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    JobController::new(ctx, Arc::new(SystemClock), DEFAULT_BACKOFF)
        .run()
        .boxed()
}

#[derive(Clone)]
pub struct JobController {
    ctx: Context,
    queue: WorkQueue<String>,
    clock: Arc<dyn Clock>,
    backoff_base: Duration,
    jobs: Informer<Job>,
    pods: Informer<Pod>,
    expectations: Arc<Expectations>,
    /// Per Job, the pods whose finalizer removal is sent but not seen yet.
    finalizers_pending: Arc<Mutex<HashMap<String, HashSet<String>>>>,
    backoff: Arc<Mutex<HashMap<String, BackoffRecord>>>,
}

/// The key of the Job controlling a pod.
fn owner_job_key(pod: &Pod) -> Option<String> {
    let owner = controller_of(&pod.metadata)?;
    (owner.kind == "Job" && owner.api_version == "batch/v1").then(|| {
        format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            owner.name
        )
    })
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

fn uid_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta().uid.clone().unwrap_or_default()
}

impl JobController {
    /// A controller whose replacement back-off starts at `backoff_base`
    /// (Kubernetes: 10 s; tests use less).
    pub fn new(ctx: &Context, clock: Arc<dyn Clock>, backoff_base: Duration) -> Self {
        let queue = WorkQueue::new();
        let jobs = ctx.informers.get::<Job>();
        let pods = ctx.informers.get::<Pod>();
        pods.add_index(JOB_INDEX, |pod: &Pod| {
            owner_job_key(pod).into_iter().collect()
        });
        let expectations = Arc::new(Expectations::new());
        let finalizers_pending: Arc<Mutex<HashMap<String, HashSet<String>>>> = Default::default();

        let q = queue.clone();
        jobs.on_change(move |change: &Change<Job>| q.add(key_of(&**change.object())));

        let q = queue.clone();
        let exp = expectations.clone();
        let pending = finalizers_pending.clone();
        pods.on_change(move |change: &Change<Pod>| {
            let pod = change.object();
            let Some(key) = owner_job_key(pod) else {
                return;
            };
            let uid = uid_of(&**pod);
            let finalizer_gone = |pending: &Mutex<HashMap<String, HashSet<String>>>| {
                if let Some(set) = pending.lock().unwrap().get_mut(&key) {
                    set.remove(&uid);
                }
            };
            match change {
                Change::Added(p) => {
                    if p.metadata.deletion_timestamp.is_some() {
                        exp.deletion_observed(&key);
                    } else {
                        exp.creation_observed(&key);
                    }
                }
                Change::Updated { old, new } => {
                    if new.metadata.deletion_timestamp.is_some()
                        && old.metadata.deletion_timestamp.is_none()
                    {
                        exp.deletion_observed(&key);
                    }
                    if !has_finalizer(new) {
                        finalizer_gone(&pending);
                    }
                }
                Change::Deleted(p) => {
                    if p.metadata.deletion_timestamp.is_none() {
                        exp.deletion_observed(&key);
                    }
                    finalizer_gone(&pending);
                }
            }
            q.add(key);
        });
        JobController {
            ctx: ctx.clone(),
            queue,
            clock,
            backoff_base,
            jobs,
            pods,
            expectations,
            finalizers_pending,
            backoff: Default::default(),
        }
    }

    pub fn queue(&self) -> WorkQueue<String> {
        self.queue.clone()
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.jobs.wait_synced().await;
        self.pods.wait_synced().await;
        let queue = self.queue.clone();
        queue
            .run_workers("job", 4, move |key: String| {
                let this = self.clone();
                async move { this.sync(&key).await }
            })
            .await;
        Ok(())
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn condition(&self, type_: &str, reason: &str, message: &str) -> JobCondition {
        let now = Time(self.now());
        JobCondition {
            type_: type_.into(),
            status: "True".into(),
            reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
            message: Some(message.into()).filter(|m: &String| !m.is_empty()),
            last_probe_time: Some(now.clone()),
            last_transition_time: Some(now),
        }
    }

    /// `FailureTarget` first, `Failed` once every pod is gone.
    fn failure_condition(&self, reason: &str, message: &str) -> JobCondition {
        self.condition("FailureTarget", reason, message)
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (ns, _) = split_key(key);
        let Some(cached) = self.jobs.get(key) else {
            self.expectations.delete(key);
            self.finalizers_pending.lock().unwrap().remove(key);
            self.backoff.lock().unwrap().remove(key);
            self.release_orphans(key, None).await?;
            return Ok(None);
        };
        let spec = cached.spec.clone().unwrap_or_default();
        if spec
            .managed_by
            .as_deref()
            .is_some_and(|m| m != JOB_CONTROLLER_NAME)
        {
            return Ok(None);
        }
        if is_finished(&cached) {
            self.backoff.lock().unwrap().remove(key);
            self.release_orphans(key, None).await?;
            return Ok(None);
        }
        // Pods of an earlier Job with the same name lose their finalizer.
        self.release_orphans(key, Some(&uid_of(&*cached))).await?;
        let indexed = match spec.completion_mode.as_deref() {
            None | Some("NonIndexed") => false,
            Some("Indexed") => true,
            Some(_) => {
                self.ctx.recorder.record(
                    &*cached,
                    EventType::Warning,
                    "UnknownCompletionMode",
                    "Skipped Job sync because completion mode is unknown",
                );
                return Ok(None);
            }
        };
        if indexed && spec.completions.is_none() {
            tracing::warn!(
                job = key,
                "an Indexed Job needs spec.completions; not syncing it"
            );
            return Ok(None);
        }
        if spec.backoff_limit_per_index.is_some() {
            self.ctx.recorder.record(
                &*cached,
                EventType::Warning,
                "Unsupported",
                "spec.backoffLimitPerIndex is not supported by this controller; the Job's backoffLimit applies to all indexes together",
            );
        }
        let mut job = (*cached).clone();
        let status = job.status.get_or_insert_with(Default::default);
        let uncounted = status
            .uncounted_terminated_pods
            .get_or_insert_with(Default::default)
            .clone();
        let uncounted_succeeded: HashSet<String> = uncounted
            .succeeded
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let uncounted_failed: HashSet<String> = uncounted
            .failed
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();

        // Expectations first: a pod seen after this check waits a sync.
        let satisfied = self.expectations.satisfied(key);
        let job_uid = uid_of(&job);
        let pods: Vec<Arc<Pod>> = self
            .pods
            .by_index(JOB_INDEX, key)
            .into_iter()
            .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == job_uid))
            .collect();
        let pending_removal: HashSet<String> = self
            .finalizers_pending
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default();
        let only_replace_failed = spec.pod_replacement_policy.as_deref() == Some("Failed")
            || (spec.pod_replacement_policy.is_none() && spec.pod_failure_policy.is_some());
        let is_failed = |p: &Pod| {
            phase(p) == "Failed"
                || (!only_replace_failed
                    && p.metadata.deletion_timestamp.is_some()
                    && phase(p) != "Succeeded")
        };
        let completions = spec.completions;
        let valid_index =
            |p: &Pod| !indexed || completion_index(p).is_some_and(|i| i < completions.unwrap_or(0));
        let active_pods: Vec<Arc<Pod>> =
            pods.iter().filter(|p| is_pod_active(p)).cloned().collect();
        let mut ready = active_pods.iter().filter(|p| is_pod_ready(p)).count() as i32;
        let mut terminating = pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_some()
                    && !matches!(phase(p), "Succeeded" | "Failed")
            })
            .count() as i32;
        let mut active = active_pods.len() as i32;
        // Finished pods not counted yet (still holding the finalizer).
        let fresh = |p: &&Arc<Pod>| {
            let uid = uid_of(&***p);
            has_finalizer(p) && !pending_removal.contains(&uid) && valid_index(p)
        };
        let new_succeeded: Vec<&Pod> = pods
            .iter()
            .filter(fresh)
            .filter(|p| phase(p) == "Succeeded" && !uncounted_succeeded.contains(&uid_of(&***p)))
            .map(|p| &**p)
            .collect();
        let new_failed: Vec<&Pod> = pods
            .iter()
            .filter(fresh)
            .filter(|p| is_failed(p) && !uncounted_failed.contains(&uid_of(&***p)))
            .map(|p| &**p)
            .collect();
        let status = job.status.clone().unwrap_or_default();
        let mut succeeded = status.succeeded.unwrap_or(0)
            + new_succeeded.len() as i32
            + uncounted_succeeded.len() as i32;
        let counted_new_failed = new_failed
            .iter()
            .filter(|p| counts_as_failure(spec.pod_failure_policy.as_ref(), p))
            .count() as i32;
        let failed =
            status.failed.unwrap_or(0) + counted_new_failed + uncounted_failed.len() as i32;

        let suspended = spec.suspend == Some(true);
        if status.start_time.is_none() && !suspended {
            job.status.as_mut().unwrap().start_time = Some(Time(self.now()));
        }
        let backoff_record = self
            .backoff
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
            .with_finished(&new_succeeded, &new_failed);

        let mut requeue: Option<Duration> = None;
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let mut finished: Option<JobCondition> =
            find_condition(&job, "SuccessCriteriaMet").map(|c| {
                self.condition(
                    "Complete",
                    c.reason.as_deref().unwrap_or(""),
                    c.message.as_deref().unwrap_or(""),
                )
            });
        if finished.is_none() {
            if let Some(target) = find_condition(&job, "FailureTarget") {
                finished = Some(self.condition(
                    "Failed",
                    target.reason.as_deref().unwrap_or(""),
                    target.message.as_deref().unwrap_or(""),
                ));
            } else if let Some(policy) = &spec.pod_failure_policy {
                finished = pods
                    .iter()
                    .filter(|p| is_failed(p))
                    .find_map(|p| match match_pod_failure_policy(policy, p) {
                        Some(Action::FailJob(message)) => Some(message),
                        _ => None,
                    })
                    .map(|message| self.condition("FailureTarget", "PodFailurePolicy", &message));
            }
        }
        if finished.is_none() {
            if failed > backoff_limit || past_backoff_limit_on_failure(&job, &pods, backoff_limit) {
                finished = Some(self.failure_condition(
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ));
            } else if let (Some(deadline), Some(start), false) = (
                spec.active_deadline_seconds,
                job.status.as_ref().and_then(|s| s.start_time.as_ref()),
                suspended,
            ) {
                let ends = start.0 + jiff::SignedDuration::from_secs(deadline);
                if self.now() >= ends {
                    finished = Some(self.failure_condition(
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline",
                    ));
                } else {
                    requeue = Some(clock::until(self.now(), ends));
                }
            }
        }

        let mut prev_succeeded_indexes = Intervals::default();
        let mut succeeded_indexes = Intervals::default();
        if indexed {
            let completions = completions.unwrap_or(0);
            prev_succeeded_indexes = Intervals::parse(
                status.completed_indexes.as_deref().unwrap_or(""),
                completions,
            );
            let new: Vec<i32> = pods
                .iter()
                .filter(|p| phase(p) == "Succeeded" && has_finalizer(p))
                .filter_map(|p| completion_index(p))
                .filter(|i| *i < completions)
                .collect();
            succeeded_indexes = prev_succeeded_indexes.with_indexes(&new);
            succeeded = succeeded_indexes.total();
            if finished.is_none() {
                if let Some(message) = match_success_policy(&job, &succeeded_indexes) {
                    finished =
                        Some(self.condition("SuccessCriteriaMet", "SuccessPolicy", &message));
                }
            }
        }

        let mut suspend_changed = false;
        let mut result: Result<(), kube::Error> = Ok(());
        if finished.is_some() {
            // Stop what runs: finished or failed Jobs keep no pods going.
            let (deleted_ready, deleted, err) = self.delete_pods(&job, &active_pods, false).await;
            if deleted != active || !satisfied {
                // Pods may remain or may not be cached yet: decide later.
                finished = None;
            }
            active -= deleted;
            terminating += deleted;
            ready -= deleted_ready;
            if let Err(err) = err {
                result = Err(err);
            }
        } else {
            let mut manage_called = false;
            if satisfied && job.metadata.deletion_timestamp.is_none() {
                manage_called = true;
                let ctx = ManageContext {
                    key,
                    indexed,
                    only_replace_failed,
                    succeeded,
                    succeeded_indexes: &succeeded_indexes,
                    terminating_pods: pods
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_some())
                        .cloned()
                        .collect(),
                    backoff: &backoff_record,
                };
                let outcome = self
                    .manage(&job, &active_pods, &mut terminating, &mut ready, &ctx)
                    .await;
                active = outcome.active;
                if let Some(after) = outcome.requeue {
                    requeue = Some(requeue.map_or(after, |r| r.min(after)));
                }
                if let Err(err) = outcome.result {
                    result = Err(err);
                }
            }
            let complete = match completions {
                None => succeeded > 0 && active == 0,
                Some(c) => succeeded >= c && active == 0,
            };
            if complete {
                finished = Some(self.condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ));
            } else if manage_called {
                let conditions = job
                    .status
                    .as_mut()
                    .unwrap()
                    .conditions
                    .get_or_insert_with(Vec::new);
                let now = self.now();
                if suspended {
                    if ensure_condition(
                        conditions,
                        "Suspended",
                        "True",
                        "JobSuspended",
                        "Job suspended",
                        now,
                    ) {
                        suspend_changed = true;
                        self.ctx.recorder.record(
                            &job,
                            EventType::Normal,
                            "Suspended",
                            "Job suspended",
                        );
                    }
                } else if ensure_condition(
                    conditions,
                    "Suspended",
                    "False",
                    "JobResumed",
                    "Job resumed",
                    now,
                ) {
                    suspend_changed = true;
                    self.ctx
                        .recorder
                        .record(&job, EventType::Normal, "Resumed", "Job resumed");
                    // The deadline counts time active, not time suspended.
                    job.status.as_mut().unwrap().start_time = Some(Time(now));
                }
            }
        }

        let old = job.status.clone().unwrap_or_default();
        let needs_update = suspend_changed
            || old.active.unwrap_or(0) != active
            || old.ready != Some(ready)
            || old.terminating != Some(terminating);
        let st = job.status.as_mut().unwrap();
        st.active = Some(active);
        st.ready = Some(ready);
        st.terminating = Some(terminating);
        let tracking = Tracking {
            key,
            indexed,
            pods: &pods,
            pending_removal: &pending_removal,
            is_failed: &is_failed,
            prev_succeeded_indexes: &prev_succeeded_indexes,
            succeeded_indexes,
            finished,
            backoff_record,
            terminating,
        };
        self.track_and_remove_finalizers(ns, job, tracking, needs_update || status != old)
            .await?;
        result.map(|_| requeue)
    }

    /// Removes the tracking finalizer from pods of `key` that are not
    /// (or no longer) counted by a live Job: all of them when `live_uid`
    /// is `None` (the Job is gone or finished), else those controlled by
    /// another uid.
    async fn release_orphans(&self, key: &str, live_uid: Option<&str>) -> Result<(), kube::Error> {
        let orphans: Vec<Arc<Pod>> = self
            .pods
            .by_index(JOB_INDEX, key)
            .into_iter()
            .filter(|p| has_finalizer(p))
            .filter(|p| {
                live_uid.is_none_or(|uid| controller_of(&p.metadata).is_some_and(|o| o.uid != uid))
            })
            .collect();
        for pod in orphans {
            self.remove_finalizer(&pod).await?;
        }
        Ok(())
    }

    async fn remove_finalizer(&self, pod: &Pod) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            &pod.namespace().unwrap_or_default(),
        );
        let remaining: Vec<&String> = pod
            .metadata
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != TRACKING_FINALIZER)
            .collect();
        // The resourceVersion makes it a compare-and-swap: a finalizer
        // added meanwhile by someone else is not lost.
        let patch = serde_json::json!({"metadata": {
            "finalizers": remaining,
            "resourceVersion": pod.metadata.resource_version,
        }});
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

    /// Deletes pods (keeping their finalizers unless `release`); returns
    /// how many ready ones and how many in all were deleted.
    async fn delete_pods(
        &self,
        job: &Job,
        pods: &[Arc<Pod>],
        release: bool,
    ) -> (i32, i32, Result<(), kube::Error>) {
        let key = key_of(job);
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            &job.namespace().unwrap_or_default(),
        );
        let mut deleted = 0;
        let mut deleted_ready = 0;
        let mut result = Ok(());
        let outcomes = futures::future::join_all(pods.iter().map(|pod| {
            let api = api.clone();
            async move {
                if release && has_finalizer(pod) {
                    self.remove_finalizer(pod).await?;
                }
                match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(err) if is_not_found(&err) => Ok(()),
                    Err(err) => Err(err),
                }
            }
        }))
        .await;
        for (pod, outcome) in pods.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    deleted += 1;
                    if is_pod_ready(pod) {
                        deleted_ready += 1;
                    }
                }
                Err(err) => {
                    if release {
                        self.expectations.deletion_observed(&key);
                    }
                    result = Err(err);
                }
            }
        }
        (deleted_ready, deleted, result)
    }

    /// Creates or deletes pods to run what the Job wants now.
    async fn manage(
        &self,
        job: &Job,
        active_pods: &[Arc<Pod>],
        terminating: &mut i32,
        ready: &mut i32,
        ctx: &ManageContext<'_>,
    ) -> ManageOutcome {
        let spec = job.spec.clone().unwrap_or_default();
        let mut active = active_pods.len() as i32;
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let key = ctx.key;
        if spec.suspend == Some(true) {
            let to_delete = pods_for_removal(job, ctx.indexed, active_pods, active as usize);
            self.expectations.expect(key, 0, to_delete.len());
            let (removed_ready, removed, result) = self.delete_pods(job, &to_delete, true).await;
            active -= removed;
            *terminating += removed;
            *ready -= removed_ready;
            return ManageOutcome {
                active,
                requeue: None,
                result,
            };
        }
        let want_active = match spec.completions {
            None if ctx.succeeded > 0 => active,
            None => parallelism,
            Some(c) => (c - ctx.succeeded).clamp(0, parallelism),
        };
        let remove_at_least = (active - want_active).max(0) as usize;
        let mut to_delete = pods_for_removal(job, ctx.indexed, active_pods, remove_at_least);
        to_delete.truncate(MAX_POD_CREATE_DELETE_PER_SYNC as usize);
        if !to_delete.is_empty() {
            self.expectations.expect(key, 0, to_delete.len());
            let (removed_ready, removed, result) = self.delete_pods(job, &to_delete, true).await;
            active -= removed;
            *terminating += removed;
            *ready -= removed_ready;
            return ManageOutcome {
                active,
                requeue: None,
                result,
            };
        }
        let still_terminating = if ctx.only_replace_failed {
            *terminating
        } else {
            0
        };
        let mut diff = want_active - still_terminating - active;
        if diff <= 0 {
            return ManageOutcome {
                active,
                requeue: None,
                result: Ok(()),
            };
        }
        let wait = ctx.backoff.remaining(
            self.now(),
            self.backoff_base,
            MAX_BACKOFF.max(self.backoff_base),
        );
        if !wait.is_zero() {
            return ManageOutcome {
                active,
                requeue: Some(wait),
                result: Ok(()),
            };
        }
        diff = diff.min(MAX_POD_CREATE_DELETE_PER_SYNC);
        let mut indexes: Vec<Option<i32>> = vec![None; diff as usize];
        if ctx.indexed {
            let mut taken: BTreeSet<i32> = active_pods
                .iter()
                .filter_map(|p| completion_index(p))
                .collect();
            if ctx.only_replace_failed {
                taken.extend(
                    ctx.terminating_pods
                        .iter()
                        .filter_map(|p| completion_index(p)),
                );
            }
            let completions = spec.completions.unwrap_or(0);
            indexes = (0..completions)
                .filter(|i| !taken.contains(i) && !ctx.succeeded_indexes.has(*i))
                .take(diff as usize)
                .map(Some)
                .collect();
            diff = indexes.len() as i32;
            if diff == 0 {
                return ManageOutcome {
                    active,
                    requeue: None,
                    result: Ok(()),
                };
            }
        }
        self.expectations.expect(key, diff as usize, 0);
        let mut template = spec.template.clone();
        if ctx.indexed {
            indexed::add_completion_index_env(&mut template);
        }
        let meta = template.metadata.get_or_insert_with(Default::default);
        let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
        if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
            finalizers.push(TRACKING_FINALIZER.into());
        }
        let ns = job.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let job_name = job.name_any();
        let mut result = Ok(());
        // Slow start: batches of 1, 2, 4, … so a failing create (quota,
        // admission) fails once, not a thousand times.
        let mut batch = 1usize;
        let mut remaining = indexes.as_slice();
        while !remaining.is_empty() {
            let (now, later) = remaining.split_at(batch.min(remaining.len()));
            remaining = later;
            let creates = now.iter().map(|index| {
                let mut template = template.clone();
                let mut generate_name = format!("{job_name}-");
                if let Some(index) = index {
                    indexed::set_completion_index(&mut template, &job_name, *index);
                    generate_name = indexed::generate_name_with_index(&job_name, *index);
                }
                let pod =
                    pod_from_template(&template, &ns, controller_reference(job), &generate_name);
                let api = api.clone();
                async move { api.create(&PostParams::default(), &pod).await }
            });
            let outcomes = futures::future::join_all(creates).await;
            let mut failed_batch = false;
            for outcome in outcomes {
                match outcome {
                    Ok(_) => active += 1,
                    Err(err) => {
                        self.expectations.creation_observed(key);
                        // A namespace being deleted refuses every creation.
                        if api_code(&err) != Some(403) {
                            self.ctx.recorder.record(
                                job,
                                EventType::Warning,
                                "FailedCreate",
                                &format!("Error creating: {err}"),
                            );
                        }
                        failed_batch = true;
                        result = Err(err);
                    }
                }
            }
            if failed_batch {
                // The rest are not attempted: no longer expected.
                for _ in remaining {
                    self.expectations.creation_observed(key);
                }
                break;
            }
            batch *= 2;
        }
        if result.is_ok() {
            tracing::debug!(job = key, created = diff, "created pods");
        }
        ManageOutcome {
            active,
            requeue: None,
            result,
        }
    }

    /// Counts finished pods through `uncountedTerminatedPods`, removes
    /// their finalizers, and writes the terminal condition once nothing
    /// is left to count or terminate.
    async fn track_and_remove_finalizers(
        &self,
        ns: &str,
        mut job: Job,
        mut t: Tracking<'_>,
        mut needs_flush: bool,
    ) -> Result<(), kube::Error> {
        let spec = job.spec.clone().unwrap_or_default();
        let completions = spec.completions.unwrap_or(0);
        let mut pods: Vec<&Arc<Pod>> = t.pods.iter().collect();
        if t.indexed {
            pods.sort_by_key(|p| completion_index(p).unwrap_or(i32::MAX));
        }
        let mut with_finalizer: HashSet<String> = pods
            .iter()
            .filter(|p| has_finalizer(p) && !t.pending_removal.contains(&uid_of(&****p)))
            .map(|p| uid_of(&***p))
            .collect();
        let status = job.status.as_mut().unwrap();
        if count_uncounted_without_finalizers(status, &with_finalizer) {
            needs_flush = true;
        }
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let mut uncounted_succeeded = uncounted.succeeded.unwrap_or_default();
        let mut uncounted_failed = uncounted.failed.unwrap_or_default();
        let known_failed: HashSet<String> = uncounted_failed.iter().cloned().collect();
        let known_succeeded: HashSet<String> = uncounted_succeeded.iter().cloned().collect();
        let mut new_indexes = Vec::new();
        let mut to_release: Vec<&Pod> = Vec::new();
        let mut reached_max = false;
        let terminal_failure = t
            .finished
            .as_ref()
            .is_some_and(|c| c.type_ != "SuccessCriteriaMet" && c.type_ != "Complete");
        for pod in &pods {
            let uid = uid_of(&***pod);
            if !has_finalizer(pod) || t.pending_removal.contains(&uid) {
                continue;
            }
            let considered_failed = (t.is_failed)(pod);
            let can_release = job.metadata.deletion_timestamp.is_some()
                || t.finished.is_some()
                || phase(pod) == "Succeeded"
                || considered_failed;
            if !can_release {
                continue;
            }
            to_release.push(pod);
            let index = completion_index(pod);
            if phase(pod) == "Succeeded" && !known_failed.contains(&uid) {
                if t.indexed {
                    if let Some(ix) = index.filter(|i| *i < completions) {
                        if !t.prev_succeeded_indexes.has(ix) {
                            new_indexes.push(ix);
                            needs_flush = true;
                        }
                    }
                } else if !known_succeeded.contains(&uid) {
                    needs_flush = true;
                    uncounted_succeeded.push(uid.clone());
                }
            } else if considered_failed || terminal_failure {
                // Once the Job has failed, every unfinished pod is a failure.
                let in_range = !t.indexed || index.is_some_and(|i| i < completions);
                if !known_failed.contains(&uid)
                    && in_range
                    && counts_as_failure(spec.pod_failure_policy.as_ref(), pod)
                {
                    needs_flush = true;
                    uncounted_failed.push(uid.clone());
                }
            }
            if new_indexes.len() + uncounted_succeeded.len() + uncounted_failed.len()
                >= MAX_UNCOUNTED_PODS
            {
                reached_max = true;
                break;
            }
        }
        let status = job.status.as_mut().unwrap();
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(uncounted_succeeded),
            failed: Some(uncounted_failed),
        });
        if t.indexed {
            let indexes = t.succeeded_indexes.with_indexes(&new_indexes);
            let text = indexes.to_string();
            if status.completed_indexes.as_deref().unwrap_or("") != text {
                needs_flush = true;
            }
            status.succeeded = Some(indexes.total());
            status.completed_indexes = Some(text);
        }
        // The interim condition is written before any finalizer goes, so
        // the outcome survives a restart.
        if let Some(cond) = t.finished.clone() {
            if cond.type_ == "FailureTarget" {
                if find_condition(&job, "FailureTarget").is_none() {
                    job.status
                        .as_mut()
                        .unwrap()
                        .conditions
                        .get_or_insert_with(Vec::new)
                        .push(cond.clone());
                    needs_flush = true;
                }
                t.finished = Some(self.condition(
                    "Failed",
                    cond.reason.as_deref().unwrap_or(""),
                    cond.message.as_deref().unwrap_or(""),
                ));
            } else if cond.type_ == "SuccessCriteriaMet" {
                if find_condition(&job, "SuccessCriteriaMet").is_none() {
                    job.status
                        .as_mut()
                        .unwrap()
                        .conditions
                        .get_or_insert_with(Vec::new)
                        .push(cond.clone());
                    needs_flush = true;
                }
                t.finished = Some(self.condition(
                    "Complete",
                    cond.reason.as_deref().unwrap_or(""),
                    cond.message.as_deref().unwrap_or(""),
                ));
            }
        }
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), ns);
        if needs_flush {
            job = api
                .replace_status(&job.name_any(), &PostParams::default(), &job)
                .await?;
            self.backoff
                .lock()
                .unwrap()
                .insert(t.key.to_owned(), t.backoff_record.clone());
            needs_flush = false;
        }
        // Release the counted pods.
        let mut release_error = None;
        if !to_release.is_empty() {
            self.finalizers_pending
                .lock()
                .unwrap()
                .entry(t.key.to_owned())
                .or_default()
                .extend(to_release.iter().map(|p| uid_of(*p)));
            let outcomes =
                futures::future::join_all(to_release.iter().map(|p| self.remove_finalizer(p)))
                    .await;
            for (pod, outcome) in to_release.iter().zip(outcomes) {
                let uid = uid_of(*pod);
                match outcome {
                    Ok(()) => {
                        with_finalizer.remove(&uid);
                    }
                    Err(err) => {
                        if let Some(set) = self.finalizers_pending.lock().unwrap().get_mut(t.key) {
                            set.remove(&uid);
                        }
                        release_error = Some(err);
                    }
                }
            }
        }
        let status = job.status.get_or_insert_with(Default::default);
        if count_uncounted_without_finalizers(status, &with_finalizer) {
            needs_flush = true;
        }
        if let Some(err) = release_error {
            if needs_flush {
                api.replace_status(&job.name_any(), &PostParams::default(), &job)
                    .await?;
            }
            return Err(err);
        }
        let finished_now =
            !reached_max && self.enact_finished(&mut job, t.finished.as_ref(), t.terminating);
        if finished_now {
            needs_flush = true;
        }
        if needs_flush {
            let job = api
                .replace_status(&job.name_any(), &PostParams::default(), &job)
                .await?;
            if finished_now {
                self.record_finished(&job, t.finished.as_ref());
            }
        }
        Ok(())
    }

    /// Writes `Complete`/`Failed` when no pod is left uncounted or
    /// terminating.
    fn enact_finished(&self, job: &mut Job, cond: Option<&JobCondition>, terminating: i32) -> bool {
        let Some(cond) = cond else { return false };
        let status = job.status.get_or_insert_with(Default::default);
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        if uncounted.succeeded.as_ref().map_or(0, Vec::len)
            + uncounted.failed.as_ref().map_or(0, Vec::len)
            > 0
        {
            return false;
        }
        if terminating > 0 {
            return false;
        }
        let now = self.now();
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        ensure_condition(
            conditions,
            &cond.type_,
            "True",
            cond.reason.as_deref().unwrap_or(""),
            cond.message.as_deref().unwrap_or(""),
            now,
        );
        if cond.type_ == "Complete" {
            status.completion_time = Some(Time(now));
        }
        true
    }

    fn record_finished(&self, job: &Job, cond: Option<&JobCondition>) {
        let Some(cond) = cond else { return };
        if cond.type_ == "Complete" {
            let succeeded = job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0);
            if job
                .spec
                .as_ref()
                .and_then(|s| s.completions)
                .is_some_and(|c| succeeded > c)
            {
                self.ctx.recorder.record(
                    job,
                    EventType::Warning,
                    "TooManySucceededPods",
                    "Too many succeeded pods running after completion count reached",
                );
            }
            self.ctx
                .recorder
                .record(job, EventType::Normal, "Completed", "Job completed");
        } else {
            self.ctx.recorder.record(
                job,
                EventType::Warning,
                cond.reason.as_deref().unwrap_or("Failed"),
                cond.message.as_deref().unwrap_or(""),
            );
        }
    }
}

struct ManageContext<'a> {
    key: &'a str,
    indexed: bool,
    only_replace_failed: bool,
    succeeded: i32,
    succeeded_indexes: &'a Intervals,
    terminating_pods: Vec<Arc<Pod>>,
    backoff: &'a BackoffRecord,
}

struct ManageOutcome {
    active: i32,
    requeue: Option<Duration>,
    result: Result<(), kube::Error>,
}

struct Tracking<'a> {
    key: &'a str,
    indexed: bool,
    pods: &'a [Arc<Pod>],
    pending_removal: &'a HashSet<String>,
    is_failed: &'a (dyn Fn(&Pod) -> bool + Sync),
    prev_succeeded_indexes: &'a Intervals,
    succeeded_indexes: Intervals,
    finished: Option<JobCondition>,
    backoff_record: BackoffRecord,
    terminating: i32,
}

/// Moves uids whose pods no longer hold the finalizer from the uncounted
/// lists into the counters; returns whether anything moved.
fn count_uncounted_without_finalizers(
    status: &mut JobStatus,
    with_finalizer: &HashSet<String>,
) -> bool {
    let uncounted = status
        .uncounted_terminated_pods
        .get_or_insert_with(Default::default);
    let mut changed = false;
    for (list, counter) in [
        (&mut uncounted.succeeded, &mut status.succeeded),
        (&mut uncounted.failed, &mut status.failed),
    ] {
        let before = list.as_ref().map_or(0, Vec::len);
        if let Some(list) = list.as_mut() {
            list.retain(|uid| with_finalizer.contains(uid));
        }
        let after = list.as_ref().map_or(0, Vec::len);
        if after != before {
            changed = true;
            *counter = Some(counter.unwrap_or(0) + (before - after) as i32);
        }
    }
    changed
}

pub fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

fn find_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Sets a condition's status, reason and message; a `False` condition is
/// not added where there was none. Returns whether anything changed.
fn ensure_condition(
    list: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    let new = JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
        message: Some(message.into()).filter(|m: &String| !m.is_empty()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    if let Some(existing) = list.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != new.status
            || existing.reason != new.reason
            || existing.message != new.message
        {
            *existing = new;
            return true;
        }
        return false;
    }
    if status != "False" {
        list.push(new);
        return true;
    }
    false
}

/// With `restartPolicy: OnFailure` the kubelet restarts containers in
/// place; those restarts count toward the backoff limit.
fn past_backoff_limit_on_failure(job: &Job, pods: &[Arc<Pod>], limit: i32) -> bool {
    let policy = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref());
    if policy != Some("OnFailure") {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|cs| cs.restart_count)
        .sum();
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

/// `spec.successPolicy` (Indexed Jobs): the message of the first rule
/// met, if any.
fn match_success_policy(job: &Job, succeeded: &Intervals) -> Option<String> {
    let policy = job.spec.as_ref()?.success_policy.as_ref()?;
    let completions = job.spec.as_ref()?.completions.unwrap_or(0);
    for (i, rule) in policy.rules.iter().enumerate() {
        let wanted = rule
            .succeeded_indexes
            .as_deref()
            .map(|s| Intervals::parse(s, completions));
        let met = match (&wanted, rule.succeeded_count) {
            (None, Some(count)) => succeeded.total() >= count,
            (Some(wanted), count) => {
                let hits = wanted
                    .0
                    .iter()
                    .flat_map(|(a, b)| *a..=*b)
                    .filter(|ix| succeeded.has(*ix))
                    .count() as i32;
                match count {
                    Some(c) => hits >= c,
                    None => hits == wanted.total(),
                }
            }
            (None, None) => false,
        };
        if met {
            return Some(format!("Matched rules at index {i}"));
        }
    }
    None
}

/// Which active pods to delete: for Indexed Jobs first those with a bad
/// or repeated index, then the least advanced (unscheduled before
/// scheduled, pending before running, not ready before ready, newer
/// before older).
fn pods_for_removal(job: &Job, indexed: bool, pods: &[Arc<Pod>], at_least: usize) -> Vec<Arc<Pod>> {
    let mut rm: Vec<Arc<Pod>> = Vec::new();
    let mut left: Vec<Arc<Pod>> = Vec::new();
    if indexed {
        let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(0);
        let mut by_index: std::collections::BTreeMap<i32, Vec<Arc<Pod>>> = Default::default();
        for pod in pods {
            match completion_index(pod).filter(|i| *i < completions) {
                None => rm.push(pod.clone()),
                Some(i) => by_index.entry(i).or_default().push(pod.clone()),
            }
        }
        for (_, mut group) in by_index {
            sort_least_advanced_first(&mut group);
            let keep = group.pop();
            rm.extend(group);
            left.extend(keep);
        }
    } else {
        left = pods.to_vec();
    }
    if rm.len() < at_least {
        sort_least_advanced_first(&mut left);
        let more = (at_least - rm.len()).min(left.len());
        rm.extend(left.into_iter().take(more));
    }
    rm
}

fn sort_least_advanced_first(pods: &mut [Arc<Pod>]) {
    let rank = |p: &Pod| {
        let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        let phase_rank = match phase(p) {
            "Pending" => 0,
            "Unknown" => 1,
            _ => 2,
        };
        let restarts: i32 = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (
            scheduled,
            phase_rank,
            is_pod_ready(p),
            std::cmp::Reverse(restarts),
            std::cmp::Reverse(created),
        )
    };
    pods.sort_by_key(|p| rank(p));
}

#[cfg(test)]
mod tests;
