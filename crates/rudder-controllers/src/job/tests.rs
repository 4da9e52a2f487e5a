//! The Job and TTL controllers against a real API server. Nothing runs
//! pods here: tests finish them through the pod `status` subresource.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

use super::clock::FakeClock;
use super::ttl::TtlAfterFinishedController;
use super::*;
use crate::testing::{eventually, namespace, TestCluster};

struct Fixture {
    cluster: TestCluster,
    clock: FakeClock,
    queue: WorkQueue<String>,
    jobs: Api<Job>,
    pods: Api<Pod>,
}

async fn fixture(ns: &str) -> Fixture {
    let cluster = TestCluster::start().await;
    let clock = FakeClock::shifted();
    let controller = JobController::new(
        &cluster.ctx,
        Arc::new(clock.clone()),
        Duration::from_millis(50),
    );
    let queue = controller.queue();
    tokio::spawn(controller.run());
    cluster.ctx.informers.start();
    namespace(&cluster.client, ns).await;
    Fixture {
        jobs: Api::namespaced(cluster.client.clone(), ns),
        pods: Api::namespaced(cluster.client.clone(), ns),
        cluster,
        clock,
        queue,
    }
}

async fn create_job(api: &Api<Job>, name: &str, spec: Value) -> Job {
    let mut spec = spec;
    spec["template"] = json!({"spec": {
        "restartPolicy": spec.get("restartPolicy").cloned().unwrap_or(json!("Never")),
        "containers": [{"name": "main", "image": "busybox"}]}});
    if let Some(o) = spec.as_object_mut() {
        o.remove("restartPolicy");
    }
    let job: Job =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    api.create(&PostParams::default(), &job).await.unwrap()
}

async fn pods_of(api: &Api<Pod>, job: &str) -> Vec<Pod> {
    let mut pods = api
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .unwrap()
        .items;
    pods.sort_by_key(|p| p.metadata.name.clone());
    pods
}

async fn live_pods(api: &Api<Pod>, job: &str, n: usize) -> Vec<Pod> {
    eventually(&format!("{n} running pods of {job}"), || async {
        let pods: Vec<Pod> = pods_of(api, job)
            .await
            .into_iter()
            .filter(crate::util::is_pod_active)
            .collect();
        (pods.len() == n).then_some(pods)
    })
    .await
}

async fn finish(api: &Api<Pod>, pod: &Pod, phase: &str, exit_code: i32) {
    let status = json!({"status": {"phase": phase, "containerStatuses": [{
        "name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": exit_code, "finishedAt": rudder_apimachinery::time::now_rfc3339()}}}]}});
    api.patch_status(
        pod.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
}

fn condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    find_condition(job, type_)
}

async fn wait_condition(api: &Api<Job>, name: &str, type_: &str) -> Job {
    eventually(&format!("{name} has condition {type_}"), || async {
        let job = api.get(name).await.unwrap();
        condition(&job, type_).is_some().then_some(job)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_its_completions_and_counts_each_pod_once() {
    let f = fixture("batch").await;
    let job = create_job(&f.jobs, "work", json!({"completions": 3, "parallelism": 2})).await;
    let pods = live_pods(&f.pods, "work", 2).await;
    let uid = job.metadata.uid.clone().unwrap();
    for pod in &pods {
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], uid);
        assert_eq!(labels["controller-uid"], uid);
        assert_eq!(labels["job-name"], "work");
        assert_eq!(labels["batch.kubernetes.io/job-name"], "work");
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("work-"));
        assert_eq!(pod.metadata.name.as_ref().unwrap().len(), "work-".len() + 5);
        assert!(has_finalizer(pod));
        let owner = controller_of(&pod.metadata).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.block_owner_deletion),
            ("Job", Some(true))
        );
    }
    eventually("status.active is 2", || async {
        let j = f.jobs.get("work").await.unwrap();
        (j.status?.active == Some(2)).then_some(())
    })
    .await;
    finish(&f.pods, &pods[0], "Succeeded", 0).await;
    // The counted pod loses its finalizer; a third pod starts.
    eventually("the succeeded pod is counted", || async {
        let p = f
            .pods
            .get(pods[0].metadata.name.as_deref().unwrap())
            .await
            .unwrap();
        let j = f.jobs.get("work").await.unwrap();
        (!has_finalizer(&p) && j.status?.succeeded == Some(1)).then_some(())
    })
    .await;
    let pods = live_pods(&f.pods, "work", 2).await;
    for pod in &pods {
        finish(&f.pods, pod, "Succeeded", 0).await;
    }
    let job = wait_condition(&f.jobs, "work", "Complete").await;
    let status = job.status.clone().unwrap();
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.active, Some(0));
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    let criteria = condition(&job, "SuccessCriteriaMet").unwrap();
    assert_eq!(criteria.reason.as_deref(), Some("CompletionsReached"));
    assert_eq!(
        condition(&job, "Complete").unwrap().reason.as_deref(),
        Some("CompletionsReached")
    );
    let uncounted = status.uncounted_terminated_pods.unwrap();
    assert!(uncounted.succeeded.unwrap_or_default().is_empty());
    assert!(pods_of(&f.pods, "work")
        .await
        .iter()
        .all(|p| !has_finalizer(p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pods_are_replaced_until_the_backoff_limit() {
    let f = fixture("batch").await;
    create_job(&f.jobs, "flaky", json!({"backoffLimit": 1})).await;
    let first = live_pods(&f.pods, "flaky", 1).await;
    finish(&f.pods, &first[0], "Failed", 1).await;
    // The replacement waits for the (50 ms) back-off, then starts.
    let second = live_pods(&f.pods, "flaky", 1).await;
    assert_ne!(first[0].metadata.uid, second[0].metadata.uid);
    // The status may be written just after the replacement is created.
    eventually("one failure counted", || async {
        let j = f.jobs.get("flaky").await.unwrap();
        (j.status?.failed == Some(1)).then_some(())
    })
    .await;
    finish(&f.pods, &second[0], "Failed", 1).await;
    let job = wait_condition(&f.jobs, "flaky", "Failed").await;
    let failed = condition(&job, "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(
        failed.message.as_deref(),
        Some("Job has reached the specified backoff limit")
    );
    assert!(condition(&job, "FailureTarget").is_some());
    assert_eq!(job.status.unwrap().failed, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_restarts_count_with_restart_policy_on_failure() {
    let f = fixture("batch").await;
    create_job(
        &f.jobs,
        "restarts",
        json!({"backoffLimit": 2, "restartPolicy": "OnFailure"}),
    )
    .await;
    let pod = live_pods(&f.pods, "restarts", 1).await.remove(0);
    let status = json!({"status": {"phase": "Running", "containerStatuses": [{
        "name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 2,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
    f.pods
        .patch_status(
            pod.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    let job = wait_condition(&f.jobs, "restarts", "Failed").await;
    assert_eq!(
        condition(&job, "Failed").unwrap().reason.as_deref(),
        Some("BackoffLimitExceeded")
    );
    // The running pod was stopped and, once counted, released.
    eventually("the pod is gone", || async {
        f.pods
            .get_opt(pod.metadata.name.as_deref().unwrap())
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_jobs_give_each_pod_an_index_and_report_completed_ranges() {
    let f = fixture("batch").await;
    create_job(
        &f.jobs,
        "idx",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
    )
    .await;
    let pods = live_pods(&f.pods, "idx", 3).await;
    let mut by_index = std::collections::BTreeMap::new();
    for pod in &pods {
        let ix = completion_index(pod).unwrap();
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()[indexed::COMPLETION_INDEX_KEY],
            ix.to_string()
        );
        assert!(pod
            .metadata
            .name
            .as_ref()
            .unwrap()
            .starts_with(&format!("idx-{ix}-")));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(format!("idx-{ix}").as_str()));
        let env = spec.containers[0].env.as_ref().unwrap();
        let var = env
            .iter()
            .find(|e| e.name == "JOB_COMPLETION_INDEX")
            .unwrap();
        assert_eq!(
            var.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
        by_index.insert(ix, pod.clone());
    }
    assert_eq!(by_index.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    finish(&f.pods, &by_index[&0], "Succeeded", 0).await;
    finish(&f.pods, &by_index[&2], "Succeeded", 0).await;
    eventually("completedIndexes is 0,2", || async {
        let j = f.jobs.get("idx").await.unwrap();
        (j.status?.completed_indexes.as_deref() == Some("0,2")).then_some(())
    })
    .await;
    // A failed index is retried under the same index.
    finish(&f.pods, &by_index[&1], "Failed", 1).await;
    let retry = live_pods(&f.pods, "idx", 1).await.remove(0);
    assert_eq!(completion_index(&retry), Some(1));
    finish(&f.pods, &retry, "Succeeded", 0).await;
    let job = wait_condition(&f.jobs, "idx", "Complete").await;
    let status = job.status.unwrap();
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!((status.succeeded, status.failed), (Some(3), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspending_a_job_stops_its_pods_and_resuming_restarts_them() {
    let f = fixture("batch").await;
    create_job(
        &f.jobs,
        "pause",
        json!({"parallelism": 2, "completions": 4}),
    )
    .await;
    live_pods(&f.pods, "pause", 2).await;
    let patch = |s: bool| json!({"spec": {"suspend": s}});
    f.jobs
        .patch(
            "pause",
            &PatchParams::default(),
            &Patch::Merge(&patch(true)),
        )
        .await
        .unwrap();
    let job = wait_condition(&f.jobs, "pause", "Suspended").await;
    assert_eq!(
        condition(&job, "Suspended").unwrap().reason.as_deref(),
        Some("JobSuspended")
    );
    eventually("no pods while suspended", || async {
        pods_of(&f.pods, "pause").await.is_empty().then_some(())
    })
    .await;
    f.jobs
        .patch(
            "pause",
            &PatchParams::default(),
            &Patch::Merge(&patch(false)),
        )
        .await
        .unwrap();
    live_pods(&f.pods, "pause", 2).await;
    // The condition may be written just after the pods are created.
    eventually("Suspended=False, JobResumed", || async {
        let job = f.jobs.get("pause").await.unwrap();
        let conditions = job.status?.conditions?;
        let suspended = conditions.iter().find(|c| c.type_ == "Suspended")?;
        (suspended.status == "False" && suspended.reason.as_deref() == Some("JobResumed"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_failure_policy_fails_the_job_or_ignores_the_failure() {
    let f = fixture("batch").await;
    create_job(
        &f.jobs,
        "policy",
        json!({"backoffLimit": 0, "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [7]}}]}}),
    )
    .await;
    let first = live_pods(&f.pods, "policy", 1).await.remove(0);
    // Ignored: not counted, replaced although backoffLimit is 0.
    finish(&f.pods, &first, "Failed", 7).await;
    let second = eventually("a replacement", || async {
        pods_of(&f.pods, "policy")
            .await
            .into_iter()
            .find(|p| p.metadata.uid != first.metadata.uid && crate::util::is_pod_active(p))
    })
    .await;
    assert_eq!(
        f.jobs
            .get("policy")
            .await
            .unwrap()
            .status
            .unwrap()
            .failed
            .unwrap_or(0),
        0
    );
    finish(&f.pods, &second, "Failed", 42).await;
    let job = wait_condition(&f.jobs, "policy", "Failed").await;
    let failed = condition(&job, "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("PodFailurePolicy"));
    let message = failed.message.clone().unwrap();
    assert!(
        message.starts_with("Container main for pod batch/policy-")
            && message.ends_with("failed with exit code 42 matching FailJob rule at index 0"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_deadline_fails_the_job() {
    let f = fixture("batch").await;
    create_job(&f.jobs, "slow", json!({"activeDeadlineSeconds": 60})).await;
    live_pods(&f.pods, "slow", 1).await;
    f.clock.advance(Duration::from_secs(61));
    f.queue.add("batch/slow".into());
    let job = wait_condition(&f.jobs, "slow", "Failed").await;
    let failed = condition(&job, "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        failed.message.as_deref(),
        Some("Job was active longer than specified deadline")
    );
    eventually("its pod is gone", || async {
        pods_of(&f.pods, "slow").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_is_deleted_after_its_ttl() {
    let f = fixture("batch").await;
    let ttl_clock = FakeClock::new(Timestamp::now());
    let ttl = TtlAfterFinishedController::new(&f.cluster.ctx, Arc::new(ttl_clock.clone()));
    let ttl_queue = ttl.queue();
    tokio::spawn(ttl.run());
    create_job(&f.jobs, "short", json!({"ttlSecondsAfterFinished": 100})).await;
    let pod = live_pods(&f.pods, "short", 1).await.remove(0);
    finish(&f.pods, &pod, "Succeeded", 0).await;
    wait_condition(&f.jobs, "short", "Complete").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(f.jobs.get_opt("short").await.unwrap().is_some());
    ttl_clock.advance(Duration::from_secs(101));
    ttl_queue.add("batch/short".into());
    eventually("the Job is being deleted", || async {
        match f.jobs.get_opt("short").await.unwrap() {
            None => Some(()),
            Some(j) => j.metadata.deletion_timestamp.map(|_| ()),
        }
    })
    .await;
}
