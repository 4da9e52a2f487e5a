//! The CronJob controller against a real API server, with a clock the
//! tests move. No Job controller runs: tests finish Jobs by status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

use super::*;
use crate::job::clock::FakeClock;
use crate::testing::{eventually, namespace, TestCluster};

struct Fixture {
    clock: FakeClock,
    queue: WorkQueue<String>,
    cronjobs: Api<CronJob>,
    jobs: Api<Job>,
    _cluster: TestCluster,
}

/// A clock 30 s past a minute boundary, so schedules are unambiguous.
async fn fixture(ns: &str) -> Fixture {
    let cluster = TestCluster::start().await;
    let now = Timestamp::now().as_second();
    let clock = FakeClock::new(Timestamp::from_second(now - now % 60 + 30).unwrap());
    let controller = CronJobController::new(&cluster.ctx, Arc::new(clock.clone()));
    let queue = controller.queue();
    tokio::spawn(controller.run());
    cluster.ctx.informers.start();
    namespace(&cluster.client, ns).await;
    Fixture {
        cronjobs: Api::namespaced(cluster.client.clone(), ns),
        jobs: Api::namespaced(cluster.client.clone(), ns),
        _cluster: cluster,
        clock,
        queue,
    }
}

async fn create_cronjob(api: &Api<CronJob>, name: &str, spec: serde_json::Value) -> CronJob {
    let mut spec = spec;
    spec["jobTemplate"] = json!({"metadata": {"labels": {"team": "a"}}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
    let cj: CronJob =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    api.create(&PostParams::default(), &cj).await.unwrap()
}

async fn job_names(api: &Api<Job>) -> Vec<String> {
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .filter_map(|j| j.metadata.name)
        .collect();
    names.sort();
    names
}

async fn finish_job(api: &Api<Job>, name: &str, type_: &str) {
    let now = rudder_apimachinery::time::now_rfc3339();
    let mut status = json!({"status": {"startTime": now, "conditions": [
        {"type": type_, "status": "True", "lastTransitionTime": now}]}});
    if type_ == "Complete" {
        status["status"]["completionTime"] = json!(now);
    }
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn minute_of(t: Timestamp) -> i64 {
    t.as_second().div_euclid(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_runs_one_job_at_a_time_named_after_its_minute() {
    let f = fixture("cron").await;
    let cj = create_cronjob(
        &f.cronjobs,
        "tick",
        json!({"schedule": "*/1 * * * *", "concurrencyPolicy": "Forbid"}),
    )
    .await;
    let created = cj.metadata.creation_timestamp.clone().unwrap().0;
    // The clock is at creation time: nothing due yet. One minute later…
    f.clock
        .set(Timestamp::from_second((minute_of(created) + 1) * 60 + 5).unwrap());
    f.queue.add("cron/tick".into());
    let first = format!("tick-{}", minute_of(created) + 1);
    eventually("the first Job", || async {
        (job_names(&f.jobs).await == vec![first.clone()]).then_some(())
    })
    .await;
    let job = f.jobs.get(&first).await.unwrap();
    let owner = controller_of(&job.metadata).unwrap();
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.block_owner_deletion
        ),
        ("CronJob", "tick", Some(true))
    );
    assert_eq!(job.metadata.labels.unwrap()["team"], "a");
    let stamp = &job.metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP_ANNOTATION];
    assert!(stamp.ends_with(":00Z"), "{stamp}");
    let cj = eventually("status.active lists it", || async {
        let cj = f.cronjobs.get("tick").await.unwrap();
        let active = cj.status.clone()?.active?;
        (active.len() == 1).then_some(cj)
    })
    .await;
    assert_eq!(
        cj.status.unwrap().last_schedule_time.unwrap().0.as_second(),
        (minute_of(created) + 1) * 60
    );
    // Still running a minute later: Forbid starts nothing.
    f.clock.advance(Duration::from_secs(60));
    f.queue.add("cron/tick".into());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(job_names(&f.jobs).await, vec![first.clone()]);
    // Once it finishes, the next one runs and the success is recorded.
    finish_job(&f.jobs, &first, "Complete").await;
    f.clock.advance(Duration::from_secs(60));
    f.queue.add("cron/tick".into());
    eventually("a second Job and lastSuccessfulTime", || async {
        let cj = f.cronjobs.get("tick").await.unwrap();
        let status = cj.status?;
        (job_names(&f.jobs).await.len() == 2 && status.last_successful_time.is_some()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_missed_times_start_only_the_latest_and_history_is_trimmed() {
    let f = fixture("cron").await;
    let cj = create_cronjob(
        &f.cronjobs,
        "backlog",
        json!({"schedule": "*/1 * * * *", "successfulJobsHistoryLimit": 1,
               "failedJobsHistoryLimit": 0}),
    )
    .await;
    let created = cj.metadata.creation_timestamp.clone().unwrap().0;
    // Five hours without the controller: 300 missed minutes.
    let now = Timestamp::from_second((minute_of(created) + 300) * 60 + 10).unwrap();
    f.clock.set(now);
    f.queue.add("cron/backlog".into());
    let latest = format!("backlog-{}", minute_of(created) + 300);
    eventually("one Job, for the latest minute", || async {
        (job_names(&f.jobs).await == vec![latest.clone()]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(job_names(&f.jobs).await, vec![latest.clone()]);
    // Two more runs that succeed and one that fails: only the newest
    // success is kept, and no failure.
    finish_job(&f.jobs, &latest, "Complete").await;
    for (i, outcome) in [(1, "Complete"), (2, "Failed")] {
        f.clock.advance(Duration::from_secs(60));
        f.queue.add("cron/backlog".into());
        let name = format!("backlog-{}", minute_of(created) + 300 + i);
        eventually("the next Job", || async {
            job_names(&f.jobs).await.contains(&name).then_some(())
        })
        .await;
        finish_job(&f.jobs, &name, outcome).await;
    }
    let kept = format!("backlog-{}", minute_of(created) + 301);
    eventually("history limits applied", || async {
        (job_names(&f.jobs).await == vec![kept.clone()]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_deletes_the_running_job_and_deadlines_skip_late_runs() {
    let f = fixture("cron").await;
    let cj = create_cronjob(
        &f.cronjobs,
        "swap",
        json!({"schedule": "*/1 * * * *", "concurrencyPolicy": "Replace",
               "startingDeadlineSeconds": 20}),
    )
    .await;
    let minute = minute_of(cj.metadata.creation_timestamp.clone().unwrap().0);
    f.clock
        .set(Timestamp::from_second((minute + 1) * 60 + 5).unwrap());
    f.queue.add("cron/swap".into());
    let first = format!("swap-{}", minute + 1);
    eventually("the first Job", || async {
        (job_names(&f.jobs).await == vec![first.clone()]).then_some(())
    })
    .await;
    // 40 s after the next minute is past the 20 s deadline: skipped.
    f.clock
        .set(Timestamp::from_second((minute + 2) * 60 + 40).unwrap());
    f.queue.add("cron/swap".into());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(job_names(&f.jobs).await, vec![first.clone()]);
    // On time for the one after: the running Job is replaced.
    f.clock
        .set(Timestamp::from_second((minute + 3) * 60 + 5).unwrap());
    f.queue.add("cron/swap".into());
    let third = format!("swap-{}", minute + 3);
    eventually("the running Job replaced", || async {
        (job_names(&f.jobs).await == vec![third.clone()]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_zones_name_the_schedule_and_unknown_ones_are_refused() {
    let f = fixture("cron").await;
    let cj = create_cronjob(
        &f.cronjobs,
        "tokyo",
        json!({"schedule": "*/1 * * * *", "timeZone": "Asia/Tokyo"}),
    )
    .await;
    create_cronjob(
        &f.cronjobs,
        "nowhere",
        json!({"schedule": "*/1 * * * *", "timeZone": "Mars/Olympus"}),
    )
    .await;
    let minute = minute_of(cj.metadata.creation_timestamp.clone().unwrap().0);
    f.clock
        .set(Timestamp::from_second((minute + 1) * 60 + 5).unwrap());
    f.queue.add("cron/tokyo".into());
    f.queue.add("cron/nowhere".into());
    let name = format!("tokyo-{}", minute + 1);
    let job = eventually("the Tokyo Job", || async {
        f.jobs.get_opt(&name).await.unwrap()
    })
    .await;
    let stamp = &job.metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP_ANNOTATION];
    assert!(stamp.ends_with("+09:00"), "{stamp}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(job_names(&f.jobs)
        .await
        .iter()
        .all(|n| !n.starts_with("nowhere")));
}

#[test]
fn requeue_is_at_the_next_scheduled_time() {
    let schedule = Schedule::parse("*/5 * * * *").unwrap();
    let cj: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "c", "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"schedule": "*/5 * * * *", "jobTemplate": {}},
        "status": {"lastScheduleTime": "2024-01-01T00:05:00Z"}}))
    .unwrap();
    let utc = TimeZone::UTC;
    let times = ScheduleTimes::of(&cj, &schedule, &utc);
    let now: Timestamp = "2024-01-01T00:07:30Z".parse().unwrap();
    assert_eq!(
        times.requeue_after(now),
        Duration::from_secs(150) + NEXT_SCHEDULE_DELTA
    );
    let late: Timestamp = "2024-01-01T10:07:30Z".parse().unwrap();
    let found = times.most_recent(late, true).unwrap();
    assert_eq!(
        found.most_recent,
        Some("2024-01-01T10:05:00Z".parse().unwrap())
    );
    assert!(found.missed > MANY_MISSED);
    assert_eq!(
        job_name("c", "2024-01-01T00:05:00Z".parse().unwrap()),
        "c-28401125"
    );
}
