//! ResourceQuota controller: keeps each quota's `status.hard` equal to its
//! `spec.hard` and `status.used` equal to what the namespace's objects use,
//! counted from the informers. Admission charges new objects as it admits
//! them; this controller gives back what deleted (or finished) objects
//! used, computes a new quota's usage, and recounts every quota on a
//! periodic full resync (5 minutes by default), as kube-controller-
//! manager does.
//!
//! Usage is measured by the evaluators in
//! [`rudder_apimachinery::resources`], the same code admission uses.
//! Object counts (`count/<resource>.<group>`) are kept for the kinds this
//! controller watches: pods, services, persistentvolumeclaims,
//! configmaps, secrets, replicationcontrollers, resourcequotas,
//! deployments/replicasets/statefulsets/daemonsets.apps and
//! jobs/cronjobs.batch; a quota naming another kind gets no usage for it
//! (logged), and admission then refuses with "status unknown".

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota,
    ResourceQuotaStatus, Secret, Service,
};
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use rudder_apimachinery::resources::{self, Evaluator, ResourceList};
use rudder_runtime::{Change, Informer, WorkQueue};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::Context;

/// How often every quota is recounted from scratch
/// (`--resource-quota-sync-period`).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(5 * 60);

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    ResourceQuotaController::new(ctx, DEFAULT_RESYNC)
        .run()
        .boxed()
}

type Lister = Arc<dyn Fn(&str) -> Vec<Value> + Send + Sync>;

/// One kind of object the controller counts.
struct Source {
    evaluator: Evaluator,
    list: Lister,
    synced: Arc<dyn Fn() -> bool + Send + Sync>,
}

pub struct ResourceQuotaController {
    ctx: Context,
    queue: WorkQueue<String>,
    resync: Duration,
    sources: Vec<Source>,
    /// Resources already reported as not counted, so the log says it once.
    reported: Arc<Mutex<BTreeSet<String>>>,
}

fn to_json<K: Serialize>(obj: &K) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

/// Enqueues every quota of a namespace.
fn enqueue_namespace(quotas: &Informer<ResourceQuota>, queue: &WorkQueue<String>, ns: &str) {
    for q in quotas.list_namespace(ns) {
        queue.add(format!("{ns}/{}", q.name_any()));
    }
}

impl ResourceQuotaController {
    pub fn new(ctx: &Context, resync: Duration) -> Self {
        let queue = WorkQueue::new();
        let quotas = ctx.informers.get::<ResourceQuota>();
        let q = queue.clone();
        quotas.on_change(move |change| {
            let quota = change.object();
            let key = format!(
                "{}/{}",
                quota.namespace().unwrap_or_default(),
                quota.name_any()
            );
            match change {
                Change::Added(_) => q.add(key),
                // Status updates are this controller's and admission's
                // own; only a change of the hard amounts needs a recount.
                Change::Updated { old, new } => {
                    let hard =
                        |r: &ResourceQuota| to_json(&r.spec.as_ref().and_then(|s| s.hard.clone()));
                    let scopes = |r: &ResourceQuota| {
                        to_json(&r.spec.as_ref().map(|s| (&s.scopes, &s.scope_selector)))
                    };
                    if hard(old) != hard(new) || scopes(old) != scopes(new) {
                        q.add(key);
                    }
                }
                Change::Deleted(_) => {}
            }
        });
        let sources = vec![
            Self::source::<Pod>(ctx, &queue, "", "pods"),
            Self::source::<Service>(ctx, &queue, "", "services"),
            Self::source::<PersistentVolumeClaim>(ctx, &queue, "", "persistentvolumeclaims"),
            Self::source::<ConfigMap>(ctx, &queue, "", "configmaps"),
            Self::source::<Secret>(ctx, &queue, "", "secrets"),
            Self::source::<ReplicationController>(ctx, &queue, "", "replicationcontrollers"),
            Self::source::<ResourceQuota>(ctx, &queue, "", "resourcequotas"),
            Self::source::<Deployment>(ctx, &queue, "apps", "deployments"),
            Self::source::<ReplicaSet>(ctx, &queue, "apps", "replicasets"),
            Self::source::<StatefulSet>(ctx, &queue, "apps", "statefulsets"),
            Self::source::<DaemonSet>(ctx, &queue, "apps", "daemonsets"),
            Self::source::<Job>(ctx, &queue, "batch", "jobs"),
            Self::source::<CronJob>(ctx, &queue, "batch", "cronjobs"),
        ];
        ResourceQuotaController {
            ctx: ctx.clone(),
            queue,
            resync,
            sources,
            reported: Default::default(),
        }
    }

    /// Watches one kind: a deleted object, or a change of what an object
    /// uses (a pod that finished, a service that became a load balancer,
    /// a claim that grew), recounts its namespace's quotas.
    fn source<K>(ctx: &Context, queue: &WorkQueue<String>, group: &str, plural: &str) -> Source
    where
        K: Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Serialize
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let evaluator = Evaluator::for_resource(group, plural);
        let informer = ctx.informers.get::<K>();
        let quotas = ctx.informers.get::<ResourceQuota>();
        let q = queue.clone();
        let ev = evaluator.clone();
        informer.on_change(move |change| {
            let ns = change.object().meta().namespace.clone().unwrap_or_default();
            let recount = match change {
                Change::Added(_) => false,
                Change::Deleted(_) => true,
                Change::Updated { old, new } => {
                    !matches!(ev, Evaluator::ObjectCount { .. }) && {
                        let now = SystemTime::now();
                        let before = ev.usage(&to_json(&**old), now);
                        let after = ev.usage(&to_json(&**new), now);
                        !resources::equals(&before, &after)
                    }
                }
            };
            if recount {
                enqueue_namespace(&quotas, &q, &ns);
            }
        });
        let lister = informer.clone();
        let syncer = informer;
        Source {
            evaluator,
            list: Arc::new(move |ns| {
                lister
                    .list_namespace(ns)
                    .iter()
                    .map(|o| to_json(&**o))
                    .collect()
            }),
            synced: Arc::new(move || syncer.has_synced()),
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let quotas = self.ctx.informers.get::<ResourceQuota>();
        quotas.wait_synced().await;
        while !self.sources.iter().all(|s| (s.synced)()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The periodic full recount.
        let q = self.queue.clone();
        let all = quotas.clone();
        let resync = self.resync;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(resync).await;
                for quota in all.list() {
                    q.add(format!(
                        "{}/{}",
                        quota.namespace().unwrap_or_default(),
                        quota.name_any()
                    ));
                }
            }
        });
        let this = Arc::new(self);
        let worker = this.clone();
        this.queue
            .run_workers("resourcequota", 2, move |key: String| {
                let worker = worker.clone();
                async move { worker.sync(&key).await }
            })
            .await;
        Ok(())
    }

    /// What the namespace's objects use of the quota's hard resources.
    fn usage(&self, quota: &ResourceQuota, hard: &ResourceList) -> ResourceList {
        let ns = quota.namespace().unwrap_or_default();
        let quota_json = to_json(quota);
        let now = SystemTime::now();
        let mut used = resources::list_from_json(
            quota
                .status
                .as_ref()
                .and_then(|s| s.used.as_ref())
                .map(to_json)
                .as_ref(),
        );
        let mut counted = BTreeSet::new();
        for source in &self.sources {
            let matching = source.evaluator.matching_resources(hard.keys());
            if matching.is_empty() {
                continue;
            }
            let mut sum: ResourceList = matching
                .iter()
                .map(|r| (r.clone(), resources::Amount::ZERO))
                .collect();
            for obj in (source.list)(&ns) {
                if source.evaluator.matches_scopes(&quota_json, &obj) {
                    let usage = source.evaluator.usage(&obj, now);
                    sum = resources::add(&sum, &resources::mask(&usage, &matching));
                }
            }
            counted.extend(matching);
            used.extend(sum);
        }
        for name in hard.keys().filter(|n| !counted.contains(*n)) {
            if self.reported.lock().unwrap().insert(name.clone()) {
                tracing::warn!(
                    quota = %quota.name_any(), namespace = %ns, resource = %name,
                    "this controller does not count the resource {name}: it is left out of the quota's status.used"
                );
            }
        }
        resources::mask(&used, hard.keys())
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (ns, name) = rudder_runtime::informer::split_key(key);
        let Some(quota) = self
            .ctx
            .informers
            .get::<ResourceQuota>()
            .get_namespaced(ns, name)
        else {
            return Ok(None);
        };
        let spec_hard = quota
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        let hard = resources::list_from_json(Some(&to_json(&spec_hard)));
        let used = self.usage(&quota, &hard);
        let status = quota.status.clone().unwrap_or_default();
        let old_hard = resources::list_from_json(status.hard.as_ref().map(to_json).as_ref());
        let old_used = resources::list_from_json(status.used.as_ref().map(to_json).as_ref());
        if status.hard.is_some()
            && status.used.is_some()
            && resources::equals(&old_hard, &hard)
            && resources::equals(&old_used, &used)
        {
            return Ok(None);
        }
        let mut updated = (*quota).clone();
        updated.status = Some(ResourceQuotaStatus {
            hard: serde_json::from_value(resources::list_to_json(&hard)).ok(),
            used: serde_json::from_value(resources::list_to_json(&used)).ok(),
        });
        let api: Api<ResourceQuota> = Api::namespaced(self.ctx.client.clone(), ns);
        match api
            .replace_status(name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(None),
            Err(err) if crate::util::is_not_found(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{eventually, namespace, TestCluster};
    use kube::api::{DeleteParams, Patch, PatchParams};
    use serde_json::json;

    async fn used_of(api: &Api<ResourceQuota>, name: &str) -> Option<(String, String)> {
        let q = api.get(name).await.ok()?;
        let used = q.status?.used?;
        Some((
            used.get("pods").map(|q| q.0.clone()).unwrap_or_default(),
            used.get("requests.cpu")
                .map(|q| q.0.clone())
                .unwrap_or_default(),
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quota_status_follows_the_namespace_objects() {
        let cluster = TestCluster::start().await;
        let controller = ResourceQuotaController::new(&cluster.ctx, Duration::from_millis(500));
        tokio::spawn(controller.run());
        cluster.ctx.informers.start();
        namespace(&cluster.client, "team").await;
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "team");
        let pod = |name: &str, cpu: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"containers": [
                {"name": "c", "image": "web:1", "resources": {"requests": {"cpu": cpu}}}]}}))
            .unwrap()
        };
        pods.create(&PostParams::default(), &pod("a", "250m"))
            .await
            .unwrap();
        pods.create(&PostParams::default(), &pod("b", "500m"))
            .await
            .unwrap();
        let quotas: Api<ResourceQuota> = Api::namespaced(cluster.client.clone(), "team");
        let quota: ResourceQuota = serde_json::from_value(json!({"metadata": {"name": "compute"},
            "spec": {"hard": {"pods": "10", "requests.cpu": "4", "count/configmaps": "5"}}}))
        .unwrap();
        quotas.create(&PostParams::default(), &quota).await.unwrap();
        eventually("the quota's usage", || async {
            (used_of(&quotas, "compute").await? == ("2".into(), "750m".into())).then_some(())
        })
        .await;
        let status = quotas.get("compute").await.unwrap().status.unwrap();
        assert_eq!(status.hard.unwrap()["requests.cpu"].0, "4");
        assert_eq!(status.used.unwrap()["count/configmaps"].0, "0");

        // Admission charges a new pod; deleting one gives its share back.
        pods.create(&PostParams::default(), &pod("c", "1"))
            .await
            .unwrap();
        eventually("the new pod charged", || async {
            (used_of(&quotas, "compute").await? == ("3".into(), "1750m".into())).then_some(())
        })
        .await;
        pods.delete("a", &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        eventually("usage released by the deleted pod", || async {
            (used_of(&quotas, "compute").await? == ("2".into(), "1500m".into())).then_some(())
        })
        .await;
        // A finished pod stops counting against compute resources.
        pods.patch_status(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .unwrap();
        eventually("usage released by the finished pod", || async {
            (used_of(&quotas, "compute").await? == ("1".into(), "1".into())).then_some(())
        })
        .await;
        // A changed hard amount shows in the status.
        quotas
            .patch(
                "compute",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"hard": {"pods": "1"}}})),
            )
            .await
            .unwrap();
        eventually("the new hard amount", || async {
            let status = quotas.get("compute").await.ok()?.status?;
            (status.hard?.get("pods")?.0 == "1").then_some(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scoped_quotas_count_only_their_pods_and_resync_fixes_drift() {
        let cluster = TestCluster::start().await;
        let controller = ResourceQuotaController::new(&cluster.ctx, Duration::from_millis(300));
        tokio::spawn(controller.run());
        cluster.ctx.informers.start();
        namespace(&cluster.client, "team").await;
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "team");
        for (name, cpu) in [("best-effort", None), ("burstable", Some("100m"))] {
            let resources = cpu.map_or(json!({}), |c| json!({"requests": {"cpu": c}}));
            let pod: Pod =
                serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"containers": [
                {"name": "c", "image": "web:1", "resources": resources}]}}))
                .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
        }
        let quotas: Api<ResourceQuota> = Api::namespaced(cluster.client.clone(), "team");
        let quota: ResourceQuota = serde_json::from_value(json!({"metadata": {"name": "be"},
            "spec": {"hard": {"pods": "5"}, "scopes": ["BestEffort"]}}))
        .unwrap();
        quotas.create(&PostParams::default(), &quota).await.unwrap();
        eventually("only the best-effort pod counts", || async {
            (used_of(&quotas, "be").await?.0 == "1").then_some(())
        })
        .await;
        // Usage set wrong by hand is corrected by the periodic recount.
        quotas
            .patch_status(
                "be",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"used": {"pods": "4"}}})),
            )
            .await
            .unwrap();
        eventually("the resync recounts", || async {
            (used_of(&quotas, "be").await?.0 == "1").then_some(())
        })
        .await;
    }
}
