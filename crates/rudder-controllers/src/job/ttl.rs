//! TTL-after-finished controller (kube-controller-manager's
//! `ttl-after-finished`): deletes a finished Job, and with it its pods,
//! `spec.ttlSecondsAfterFinished` after it finished.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, Preconditions, PropagationPolicy};
use kube::Api;
use rudder_runtime::informer::{key_of, split_key};
use rudder_runtime::{Change, Informer, WorkQueue};

use super::clock::{until, Clock, SystemClock};
use super::is_finished;
use crate::util::is_not_found;
use crate::Context;

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    TtlAfterFinishedController::new(ctx, Arc::new(SystemClock))
        .run()
        .boxed()
}

#[derive(Clone)]
pub struct TtlAfterFinishedController {
    ctx: Context,
    queue: WorkQueue<String>,
    clock: Arc<dyn Clock>,
    jobs: Informer<Job>,
}

/// When a finished Job with a TTL expires.
fn expires_at(job: &Job) -> Option<Timestamp> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    if !is_finished(job) {
        return None;
    }
    let finished = job
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?
        .last_transition_time
        .as_ref()?
        .0;
    finished
        .checked_add(jiff::SignedDuration::from_secs(ttl as i64))
        .ok()
}

impl TtlAfterFinishedController {
    pub fn new(ctx: &Context, clock: Arc<dyn Clock>) -> Self {
        let queue = WorkQueue::new();
        let jobs = ctx.informers.get::<Job>();
        let q = queue.clone();
        jobs.on_change(move |change: &Change<Job>| {
            if matches!(change, Change::Deleted(_)) {
                return;
            }
            let job = change.object();
            if job.metadata.deletion_timestamp.is_none() && expires_at(job).is_some() {
                q.add(key_of(&**job));
            }
        });
        TtlAfterFinishedController {
            ctx: ctx.clone(),
            queue,
            clock,
            jobs,
        }
    }

    pub fn queue(&self) -> WorkQueue<String> {
        self.queue.clone()
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.jobs.wait_synced().await;
        let queue = self.queue.clone();
        queue
            .run_workers("ttl-after-finished", 2, move |key: String| {
                let this = self.clone();
                async move { this.sync(&key).await }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let Some(job) = self.jobs.get(key) else {
            return Ok(None);
        };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let Some(expiry) = expires_at(&job) else {
            return Ok(None);
        };
        let now = self.clock.now();
        if expiry > now {
            return Ok(Some(until(now, expiry)));
        }
        // The cache may be stale (the TTL changed): check the Job itself.
        let (ns, name) = split_key(key);
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), ns);
        let Some(fresh) = api.get_opt(name).await? else {
            return Ok(None);
        };
        if fresh.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        match expires_at(&fresh) {
            None => return Ok(None),
            Some(expiry) if expiry > now => return Ok(Some(until(now, expiry))),
            Some(_) => {}
        }
        // Kubernetes deletes in the foreground: the Job goes once its pods have.
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            preconditions: Some(Preconditions {
                uid: fresh.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                tracing::debug!(job = key, "deleted a finished Job after its TTL");
                Ok(None)
            }
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }
}
