//! CronJob controller (kube-controller-manager's `cronjob`, the v2
//! controller): creates a Job for each scheduled time, named after the
//! time, follows the concurrency policy and the starting deadline, keeps
//! `status.active`/`lastScheduleTime`/`lastSuccessfulTime`, deletes
//! finished Jobs beyond the history limits, and wakes up at the next
//! scheduled time.

pub mod schedule;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};
use rudder_runtime::events::EventType;
use rudder_runtime::informer::{key_of, split_key};
use rudder_runtime::{Change, Informer, WorkQueue};

use crate::job::clock::{Clock, SystemClock};
use crate::util::{api_code, controller_of, controller_reference, is_not_found};
use crate::Context;
use schedule::Schedule;

/// The annotation with the time a Job was scheduled for (RFC 3339, in
/// the CronJob's time zone).
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Wake-ups come this long after the scheduled time, so a clock a little
/// behind does not find nothing to do (Kubernetes' `nextScheduleDelta`).
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

/// More missed start times than this are a bug or a clock problem, not a
/// backlog: only the most recent is started.
const MANY_MISSED: i64 = 100;

const OWNER_INDEX: &str = "cronjob-owner";

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    CronJobController::new(ctx, Arc::new(SystemClock))
        .run()
        .boxed()
}

#[derive(Clone)]
pub struct CronJobController {
    ctx: Context,
    queue: WorkQueue<String>,
    clock: Arc<dyn Clock>,
    cronjobs: Informer<CronJob>,
    jobs: Informer<Job>,
}

fn owner_cronjob_key(job: &Job) -> Option<String> {
    let owner = controller_of(&job.metadata)?;
    (owner.kind == "CronJob" && owner.api_version == "batch/v1").then(|| {
        format!(
            "{}/{}",
            job.metadata.namespace.as_deref().unwrap_or_default(),
            owner.name
        )
    })
}

impl CronJobController {
    pub fn new(ctx: &Context, clock: Arc<dyn Clock>) -> Self {
        let queue = WorkQueue::new();
        let cronjobs = ctx.informers.get::<CronJob>();
        let jobs = ctx.informers.get::<Job>();
        jobs.add_index(OWNER_INDEX, |job: &Job| {
            controller_of(&job.metadata)
                .filter(|o| o.kind == "CronJob")
                .map(|o| vec![o.uid.clone()])
                .unwrap_or_default()
        });
        let q = queue.clone();
        cronjobs.on_change(move |change: &Change<CronJob>| {
            q.add(key_of(&**change.object()));
        });
        let q = queue.clone();
        jobs.on_change(move |change: &Change<Job>| {
            if let Change::Updated { old, new } = change {
                if let Some(key) = owner_cronjob_key(old) {
                    if owner_cronjob_key(new).as_ref() != Some(&key) {
                        q.add(key);
                    }
                }
            }
            if let Some(key) = owner_cronjob_key(change.object()) {
                q.add(key);
            }
        });
        CronJobController {
            ctx: ctx.clone(),
            queue,
            clock,
            cronjobs,
            jobs,
        }
    }

    /// The queue of CronJob keys (tests poke it after moving the clock).
    pub fn queue(&self) -> WorkQueue<String> {
        self.queue.clone()
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.cronjobs.wait_synced().await;
        self.jobs.wait_synced().await;
        let queue = self.queue.clone();
        queue
            .run_workers("cronjob", 2, move |key: String| {
                let this = self.clone();
                async move { this.sync(&key).await }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let Some(cached) = self.cronjobs.get(key) else {
            return Ok(None);
        };
        let mut cronjob = (*cached).clone();
        let uid = cronjob.uid().unwrap_or_default();
        let jobs: Vec<Arc<Job>> = self.jobs.by_index(OWNER_INDEX, &uid);
        let cleaned = self.cleanup_finished_jobs(&mut cronjob, &jobs).await;
        let result = self.sync_cronjob(&mut cronjob, &jobs).await;
        let status_changed = cleaned || result.as_ref().map(|(_, u)| *u).unwrap_or(true);
        if status_changed && cronjob.status != cached.status {
            let (ns, name) = split_key(key);
            let api: Api<CronJob> = Api::namespaced(self.ctx.client.clone(), ns);
            match api
                .replace_status(name, &PostParams::default(), &cronjob)
                .await
            {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => return Ok(None),
                Err(err) => return Err(err),
            }
        }
        result.map(|(requeue, _)| requeue)
    }

    /// Whether the live CronJob says this time was already started, or
    /// (under Forbid) that a Job still runs: the caches may lag this
    /// controller's own last writes (the Job it created and the status
    /// listing it), and deciding on them alone could start a Job twice.
    /// One read per Job about to be created, as upstream re-reads the
    /// CronJob before trusting its active list.
    async fn started_already(
        &self,
        cronjob: &CronJob,
        jobs: &[Arc<Job>],
        scheduled: Timestamp,
    ) -> Result<bool, kube::Error> {
        let ns = cronjob.namespace().unwrap_or_default();
        let api: Api<CronJob> = Api::namespaced(self.ctx.client.clone(), &ns);
        let Some(fresh) = api.get_opt(&cronjob.name_any()).await? else {
            return Ok(true);
        };
        if fresh.uid() != cronjob.uid() {
            return Ok(true);
        }
        let status = fresh.status.unwrap_or_default();
        if status
            .last_schedule_time
            .as_ref()
            .is_some_and(|t| t.0 >= scheduled)
        {
            return Ok(true);
        }
        let forbid = cronjob
            .spec
            .as_ref()
            .and_then(|s| s.concurrency_policy.as_deref())
            == Some("Forbid");
        if !forbid {
            return Ok(false);
        }
        // Jobs the cache already shows finished do not count.
        let finished: HashSet<String> = jobs
            .iter()
            .filter(|j| finished_condition(j).is_some())
            .filter_map(|j| j.uid())
            .collect();
        Ok(status
            .active
            .iter()
            .flatten()
            .any(|r| r.uid.as_ref().is_none_or(|uid| !finished.contains(uid))))
    }

    /// Syncs one CronJob; returns when to look again and whether its
    /// status changed.
    async fn sync_cronjob(
        &self,
        cronjob: &mut CronJob,
        jobs: &[Arc<Job>],
    ) -> Result<(Option<Duration>, bool), kube::Error> {
        let ns = cronjob.namespace().unwrap_or_default();
        let job_api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &ns);
        let recorder = &self.ctx.recorder;
        let now = self.clock.now();
        let mut update_status = false;
        let mut children = HashSet::new();
        for job in jobs {
            let job_uid = job.uid().unwrap_or_default();
            children.insert(job_uid.clone());
            let found = in_active_list(cronjob, &job_uid);
            let finished = finished_condition(job);
            if !found && finished.is_none() {
                recorder.record(
                    &*cronjob,
                    EventType::Warning,
                    "UnexpectedJob",
                    &format!(
                        "Saw a job that the controller did not create or forgot: {}",
                        job.name_any()
                    ),
                );
            } else if found && finished.is_some() {
                remove_from_active_list(cronjob, &job_uid);
                recorder.record(
                    &*cronjob,
                    EventType::Normal,
                    "SawCompletedJob",
                    &format!(
                        "Saw completed job: {}, condition: {}",
                        job.name_any(),
                        finished.unwrap_or_default()
                    ),
                );
                update_status = true;
            }
            if finished == Some("Complete") {
                // A Job need not be active to count as the last success.
                let completed = job.status.as_ref().and_then(|s| s.completion_time.clone());
                let status = cronjob.status.get_or_insert_with(Default::default);
                if let Some(completed) = completed {
                    if status
                        .last_successful_time
                        .as_ref()
                        .is_none_or(|last| completed.0 > last.0)
                    {
                        status.last_successful_time = Some(completed);
                        update_status = true;
                    }
                }
            }
        }
        // Active Jobs that are gone (ask the API: the cache may lag).
        let active: Vec<ObjectReference> = cronjob
            .status
            .as_ref()
            .and_then(|s| s.active.clone())
            .unwrap_or_default();
        for reference in active {
            let uid = reference.uid.clone().unwrap_or_default();
            if children.contains(&uid) {
                continue;
            }
            let name = reference.name.clone().unwrap_or_default();
            let gone = match job_api.get_opt(&name).await? {
                None => true,
                Some(job) => job.uid().as_deref() != Some(uid.as_str()),
            };
            if gone {
                recorder.record(
                    &*cronjob,
                    EventType::Normal,
                    "MissingJob",
                    &format!("Active job went missing: {name}"),
                );
                remove_from_active_list(cronjob, &uid);
                update_status = true;
            }
        }

        if cronjob.metadata.deletion_timestamp.is_some() {
            return Ok((None, update_status));
        }
        let spec = cronjob.spec.clone().unwrap_or_default();
        let zone = match &spec.time_zone {
            None => TimeZone::UTC,
            Some(name) => match load_zone(name) {
                Ok(zone) => zone,
                Err(err) => {
                    recorder.record(
                        &*cronjob,
                        EventType::Warning,
                        "UnknownTimeZone",
                        &format!("invalid timeZone: {name:?}: {err}"),
                    );
                    return Ok((None, update_status));
                }
            },
        };
        if spec.suspend == Some(true) {
            tracing::debug!(cronjob = %key_of(&*cronjob), "not starting a job: the CronJob is suspended");
            return Ok((None, update_status));
        }
        if spec.schedule.contains("TZ") {
            recorder.record(
                &*cronjob,
                EventType::Warning,
                "UnsupportedSchedule",
                &format!(
                    "CRON_TZ or TZ used in schedule {:?} is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details",
                    spec.schedule
                ),
            );
        }
        let schedule = match Schedule::parse(&spec.schedule) {
            Ok(s) => s,
            Err(err) => {
                recorder.record(
                    &*cronjob,
                    EventType::Warning,
                    "UnparseableSchedule",
                    &format!("unparseable schedule: {:?} : {err}", spec.schedule),
                );
                return Ok((None, update_status));
            }
        };
        let times = ScheduleTimes::of(cronjob, &schedule, &zone);
        let scheduled = match times.most_recent(now, true) {
            Err(err) => {
                recorder.record(
                    &*cronjob,
                    EventType::Warning,
                    "InvalidSchedule",
                    &format!("invalid schedule: {} : {err}", spec.schedule),
                );
                return Ok((None, update_status));
            }
            Ok(found) => {
                if found.missed > MANY_MISSED {
                    recorder.record(
                        &*cronjob,
                        EventType::Warning,
                        "TooManyMissedTimes",
                        "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                    );
                    tracing::info!(cronjob = %key_of(&*cronjob), missed = found.missed, "too many missed times");
                }
                found.most_recent
            }
        };
        let requeue =
            |cj: &CronJob| Some(ScheduleTimes::of(cj, &schedule, &zone).requeue_after(now));
        let Some(scheduled) = scheduled else {
            // Nothing due: wake up at the next time.
            return Ok((requeue(cronjob), update_status));
        };
        if let Some(deadline) = spec.starting_deadline_seconds {
            let latest = scheduled.checked_add(jiff::SignedDuration::from_secs(deadline));
            if latest.is_ok_and(|latest| latest < now) {
                recorder.record(
                    &*cronjob,
                    EventType::Warning,
                    "MissSchedule",
                    &format!(
                        "Missed scheduled time to start a job: {}",
                        scheduled.strftime("%a, %d %b %Y %H:%M:%S %z")
                    ),
                );
                return Ok((requeue(cronjob), update_status));
            }
        }
        let job_name = job_name(&cronjob.name_any(), scheduled);
        let status = cronjob.status.clone().unwrap_or_default();
        let already = status
            .active
            .iter()
            .flatten()
            .any(|r| r.name.as_deref() == Some(job_name.as_str()))
            || status.last_schedule_time.as_ref().map(|t| t.0) == Some(scheduled);
        if already {
            return Ok((requeue(cronjob), update_status));
        }
        let active_count = status.active.as_ref().map_or(0, Vec::len);
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if active_count > 0 => {
                recorder.record(
                    &*cronjob,
                    EventType::Normal,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                );
                return Ok((requeue(cronjob), update_status));
            }
            Some("Replace") => {
                for reference in status.active.iter().flatten() {
                    let name = reference.name.clone().unwrap_or_default();
                    let Some(job) = job_api.get_opt(&name).await? else {
                        continue;
                    };
                    if !self.delete_job(cronjob, &job).await {
                        return Err(kube::Error::Service(
                            format!("could not replace job {ns}/{name}").into(),
                        ));
                    }
                    update_status = true;
                }
            }
            _ => {}
        }

        if self.started_already(cronjob, jobs, scheduled).await? {
            return Ok((requeue(cronjob), update_status));
        }
        let job = job_from_template(cronjob, scheduled, &zone);
        let created = match job_api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                recorder.record(
                    &*cronjob,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created job {}", created.name_any()),
                );
                created
            }
            Err(err) if api_code(&err) == Some(409) => {
                // Made by us before (our status update was lost) or by
                // someone else: adopt only our own.
                let Some(existing) = job_api.get_opt(&job_name).await? else {
                    return Err(err);
                };
                let ours = controller_of(&existing.metadata)
                    .is_some_and(|o| Some(&o.uid) == cronjob.metadata.uid.as_ref());
                if !ours || in_active_list(cronjob, &existing.uid().unwrap_or_default()) {
                    return Ok((None, update_status));
                }
                existing
            }
            Err(err) => {
                if api_code(&err) != Some(403) {
                    recorder.record(
                        &*cronjob,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("Error creating job: {err}"),
                    );
                }
                return Err(err);
            }
        };
        let status = cronjob.status.get_or_insert_with(Default::default);
        status
            .active
            .get_or_insert_with(Vec::new)
            .push(ObjectReference {
                api_version: Some("batch/v1".into()),
                kind: Some("Job".into()),
                name: created.metadata.name.clone(),
                namespace: created.metadata.namespace.clone(),
                uid: created.metadata.uid.clone(),
                resource_version: created.metadata.resource_version.clone(),
                ..Default::default()
            });
        status.last_schedule_time = Some(Time(scheduled));
        Ok((requeue(cronjob), true))
    }

    /// Deletes finished Jobs beyond the history limits, oldest first.
    async fn cleanup_finished_jobs(&self, cronjob: &mut CronJob, jobs: &[Arc<Job>]) -> bool {
        let spec = cronjob.spec.clone().unwrap_or_default();
        if spec.successful_jobs_history_limit.is_none() && spec.failed_jobs_history_limit.is_none()
        {
            return false;
        }
        let mut succeeded = Vec::new();
        let mut failed = Vec::new();
        for job in jobs {
            match finished_condition(job) {
                Some("Complete") => succeeded.push(job.clone()),
                Some("Failed") => failed.push(job.clone()),
                _ => {}
            }
        }
        let mut changed = false;
        for (mut finished, limit) in [
            (succeeded, spec.successful_jobs_history_limit),
            (failed, spec.failed_jobs_history_limit),
        ] {
            let Some(limit) = limit else { continue };
            let excess = finished.len().saturating_sub(limit.max(0) as usize);
            if excess == 0 {
                continue;
            }
            sort_by_start_time(&mut finished);
            for job in &finished[..excess] {
                if self.delete_job(cronjob, job).await {
                    changed = true;
                }
            }
        }
        changed
    }

    /// Deletes a Job (its pods in the background) and forgets it.
    async fn delete_job(&self, cronjob: &mut CronJob, job: &Job) -> bool {
        let api: Api<Job> = Api::namespaced(
            self.ctx.client.clone(),
            &job.namespace().unwrap_or_default(),
        );
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match api.delete(&job.name_any(), &params).await {
            Ok(_) => {}
            Err(err) if is_not_found(&err) => {}
            Err(err) => {
                self.ctx.recorder.record(
                    &*cronjob,
                    EventType::Warning,
                    "FailedDelete",
                    &format!("Deleted job: {err}"),
                );
                return false;
            }
        }
        remove_from_active_list(cronjob, &job.uid().unwrap_or_default());
        self.ctx.recorder.record(
            &*cronjob,
            EventType::Normal,
            "SuccessfulDelete",
            &format!("Deleted job {}", job.name_any()),
        );
        true
    }
}

/// `time.LoadLocation`: empty is UTC, `Local` the system's zone.
fn load_zone(name: &str) -> Result<TimeZone, jiff::Error> {
    match name {
        "" | "UTC" => Ok(TimeZone::UTC),
        "Local" => Ok(TimeZone::system()),
        _ => TimeZone::get(name),
    }
}

/// `Complete` or `Failed` when the Job has finished.
fn finished_condition(job: &Job) -> Option<&'static str> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find_map(|c| match (c.type_.as_str(), c.status.as_str()) {
            ("Complete", "True") => Some("Complete"),
            ("Failed", "True") => Some("Failed"),
            _ => None,
        })
}

fn in_active_list(cronjob: &CronJob, uid: &str) -> bool {
    cronjob
        .status
        .as_ref()
        .and_then(|s| s.active.as_ref())
        .is_some_and(|a| a.iter().any(|r| r.uid.as_deref() == Some(uid)))
}

fn remove_from_active_list(cronjob: &mut CronJob, uid: &str) {
    if let Some(active) = cronjob.status.as_mut().and_then(|s| s.active.as_mut()) {
        active.retain(|r| r.uid.as_deref() != Some(uid));
    }
}

/// Oldest first by start time (Jobs never started last), then by name.
fn sort_by_start_time(jobs: &mut [Arc<Job>]) {
    let start = |j: &Job| {
        j.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0)
    };
    jobs.sort_by(|a, b| match (start(a), start(b)) {
        (Some(x), Some(y)) if x != y => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        _ => a.name_any().cmp(&b.name_any()),
    });
}

/// `<cronjob>-<scheduled time in minutes since the epoch>`: one name per
/// scheduled time, so a retry cannot create a second Job.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// RFC 3339 as Go writes it: `Z` for a zero offset.
fn rfc3339_in(t: Timestamp, zone: &TimeZone) -> String {
    let zoned = t.to_zoned(zone.clone());
    if zoned.offset().seconds() == 0 {
        zoned.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The Job for one scheduled time.
fn job_from_template(cronjob: &CronJob, scheduled: Timestamp, zone: &TimeZone) -> Job {
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP_ANNOTATION.into(),
        rfc3339_in(scheduled, zone),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&cronjob.name_any(), scheduled)),
            namespace: cronjob.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_reference(cronjob)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The schedule arithmetic of a CronJob (Kubernetes'
/// `mostRecentScheduleTime` and `nextScheduleTimeDuration`).
struct ScheduleTimes<'a> {
    created: Timestamp,
    last_scheduled: Option<Timestamp>,
    starting_deadline: Option<i64>,
    schedule: &'a Schedule,
    zone: &'a TimeZone,
}

#[derive(Debug, PartialEq)]
struct MostRecent {
    /// Where the search started: the last scheduled time (or creation),
    /// moved up to the starting deadline when that is later.
    earliest: Timestamp,
    /// The latest scheduled time not after now, if any was missed.
    most_recent: Option<Timestamp>,
    /// How many scheduled times were missed (estimated).
    missed: i64,
}

impl<'a> ScheduleTimes<'a> {
    fn of(cronjob: &CronJob, schedule: &'a Schedule, zone: &'a TimeZone) -> Self {
        ScheduleTimes {
            created: cronjob
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(Timestamp::UNIX_EPOCH),
            last_scheduled: cronjob
                .status
                .as_ref()
                .and_then(|s| s.last_schedule_time.as_ref())
                .map(|t| t.0),
            starting_deadline: cronjob
                .spec
                .as_ref()
                .and_then(|s| s.starting_deadline_seconds),
            schedule,
            zone,
        }
    }

    fn next(&self, after: Timestamp) -> Option<Timestamp> {
        self.schedule.next(after, self.zone)
    }

    fn most_recent(&self, now: Timestamp, with_deadline: bool) -> Result<MostRecent, String> {
        let mut earliest = self.last_scheduled.unwrap_or(self.created);
        if with_deadline {
            if let Some(deadline) = self.starting_deadline {
                if let Ok(limit) = now.checked_sub(jiff::SignedDuration::from_secs(deadline)) {
                    earliest = earliest.max(limit);
                }
            }
        }
        let none = |missed| MostRecent {
            earliest,
            most_recent: None,
            missed,
        };
        let t1 = self.next(earliest);
        let t2 = t1.and_then(|t1| self.next(t1));
        if t1.is_some_and(|t1| now < t1) {
            return Ok(none(0));
        }
        if t2.is_some_and(|t2| now < t2) {
            return Ok(MostRecent {
                earliest,
                most_recent: t1,
                missed: 0,
            });
        }
        let (Some(t1), Some(t2)) = (t1, t2) else {
            return Err("time difference between two schedules is less than 1 second".into());
        };
        let between = (t2.as_millisecond() - t1.as_millisecond() + 500) / 1000;
        if between < 1 {
            return Err("time difference between two schedules is less than 1 second".into());
        }
        // An estimate from the spacing of the first two times; the most
        // recent one is then found by walking from just before it.
        let elapsed = now.as_second() - t1.as_second();
        let missed = elapsed / between + 1;
        let start = t1.as_second() + (missed - 2) * between;
        let mut most_recent = None;
        let mut t = Timestamp::from_second(start)
            .ok()
            .and_then(|s| self.next(s));
        while let Some(at) = t.filter(|at| *at <= now) {
            most_recent = Some(at);
            t = self.next(at);
        }
        Ok(MostRecent {
            earliest,
            most_recent,
            missed,
        })
    }

    /// How long until the next scheduled time (plus a little).
    fn requeue_after(&self, now: Timestamp) -> Duration {
        let from = match self.most_recent(now, false) {
            Err(_) => now,
            Ok(MostRecent {
                most_recent: Some(t),
                ..
            }) => t,
            Ok(MostRecent {
                missed: 0,
                earliest,
                ..
            }) => earliest,
            Ok(_) => now,
        };
        match self.next(from) {
            Some(next) => crate::job::clock::until(now, next) + NEXT_SCHEDULE_DELTA,
            // Never again (e.g. February 30th): look once a day in case the
            // schedule changes without an event reaching us.
            None => Duration::from_secs(24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests;
