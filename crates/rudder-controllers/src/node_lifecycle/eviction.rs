//! Taint eviction (`taint-eviction-controller`): a pod on a node with
//! NoExecute taints it does not tolerate is deleted at once; one that
//! tolerates them for `tolerationSeconds` is deleted when the shortest of
//! those runs out; one that tolerates them for ever stays. Removing the
//! taints (or adding tolerations) cancels a pending eviction. Before the
//! delete the pod gets the DisruptionTarget condition, so its owner knows
//! why it went.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use rudder_runtime::events::{EventRecorder, EventType};
use rudder_runtime::informer::{key_of, split_key};
use rudder_runtime::{Change, Informer, WorkQueue};
use serde_json::json;
use tokio::sync::Notify;

use super::clock::{self, Clock, SystemClock};
use super::taints::{matching_tolerations, min_toleration_seconds, no_execute_taints};
use super::{index_pods_by_node, POD_NODE_INDEX};
use crate::util::is_not_found;
use crate::Context;

pub const CONTROLLER_NAME: &str = "taint-eviction-controller";

#[derive(Clone)]
pub struct TaintEvictionConfig {
    pub clock: Arc<dyn Clock>,
    /// The longest the timer sleeps before looking at the clock again
    /// (a stand-still test clock moves only between looks).
    pub timer_resolution: Duration,
}

impl Default for TaintEvictionConfig {
    fn default() -> Self {
        TaintEvictionConfig {
            clock: Arc::new(SystemClock),
            timer_resolution: Duration::from_secs(1),
        }
    }
}

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    TaintEvictionController::new(ctx, TaintEvictionConfig::default())
        .run()
        .boxed()
}

#[derive(Clone, Copy, Debug)]
struct Scheduled {
    created_at: Timestamp,
    fire_at: Timestamp,
}

pub struct TaintEvictionController {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: TaintEvictionConfig,
    recorder: EventRecorder,
    nodes: Informer<Node>,
    pods: Informer<Pod>,
    node_queue: WorkQueue<String>,
    pod_queue: WorkQueue<String>,
    /// Pods that are to be deleted.
    evict_queue: WorkQueue<String>,
    /// Evictions waiting for their time, by pod key.
    scheduled: Mutex<HashMap<String, Scheduled>>,
    wake: Notify,
}

impl TaintEvictionController {
    pub fn new(ctx: &Context, config: TaintEvictionConfig) -> Self {
        let nodes = ctx.informers.get::<Node>();
        let pods = ctx.informers.get::<Pod>();
        index_pods_by_node(&pods);
        let node_queue = WorkQueue::new();
        let pod_queue = WorkQueue::new();
        let q = node_queue.clone();
        nodes.on_change(move |change| {
            if let Change::Updated { old, new } = change {
                if no_execute_taints(old) == no_execute_taints(new) {
                    return;
                }
            }
            q.add(change.object().name_any());
        });
        let q = pod_queue.clone();
        pods.on_change(move |change| {
            if let Change::Updated { old, new } = change {
                let relevant = |p: &Pod| {
                    p.spec
                        .as_ref()
                        .map(|s| (s.node_name.clone(), s.tolerations.clone()))
                };
                if relevant(old) == relevant(new) {
                    return;
                }
            }
            q.add(key_of(&**change.object()));
        });
        TaintEvictionController {
            inner: Arc::new(Inner {
                client: ctx.client.clone(),
                recorder: EventRecorder::new(ctx.client.clone(), CONTROLLER_NAME),
                config,
                nodes,
                pods,
                node_queue,
                pod_queue,
                evict_queue: WorkQueue::new(),
                scheduled: Mutex::new(HashMap::new()),
                wake: Notify::new(),
            }),
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let inner = self.inner;
        inner.nodes.wait_synced().await;
        inner.pods.wait_synced().await;
        let nodes = {
            let inner = inner.clone();
            let queue = inner.node_queue.clone();
            async move {
                queue
                    .run_workers("taint-eviction-nodes", 2, move |name: String| {
                        let inner = inner.clone();
                        async move {
                            inner.handle_node(&name);
                            Ok::<_, kube::Error>(None)
                        }
                    })
                    .await
            }
        };
        let pods = {
            let inner = inner.clone();
            let queue = inner.pod_queue.clone();
            async move {
                queue
                    .run_workers("taint-eviction-pods", 2, move |key: String| {
                        let inner = inner.clone();
                        async move {
                            inner.handle_pod(&key);
                            Ok::<_, kube::Error>(None)
                        }
                    })
                    .await
            }
        };
        let evictions = {
            let inner = inner.clone();
            let queue = inner.evict_queue.clone();
            async move {
                queue
                    .run_workers("taint-eviction", 4, move |key: String| {
                        let inner = inner.clone();
                        async move { inner.evict(&key).await.map(|_| None) }
                    })
                    .await
            }
        };
        let timer = {
            let inner = inner.clone();
            async move { inner.timer().await }
        };
        tokio::join!(nodes, pods, evictions, timer);
        Ok(())
    }
}

impl Inner {
    fn schedule(&self, key: &str, created_at: Timestamp, fire_at: Timestamp) {
        self.scheduled.lock().unwrap().insert(
            key.to_owned(),
            Scheduled {
                created_at,
                fire_at,
            },
        );
        self.wake.notify_one();
    }

    /// Cancels a pending eviction, with an event when there was one.
    fn cancel(&self, key: &str) {
        if self.scheduled.lock().unwrap().remove(key).is_some() {
            self.pod_event(key, &format!("Cancelling deletion of Pod {key}"));
        }
    }

    fn pod_event(&self, key: &str, message: &str) {
        let (ns, name) = split_key(key);
        let uid = self
            .pods
            .get_namespaced(ns, name)
            .and_then(|p| p.metadata.uid.clone());
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(ns.to_owned()),
                uid,
                ..Default::default()
            },
            ..Default::default()
        };
        self.recorder
            .record(&pod, EventType::Normal, "TaintManagerEviction", message);
    }

    fn handle_node(&self, name: &str) {
        let Some(node) = self.nodes.get(name) else {
            return;
        };
        let taints = no_execute_taints(&node);
        let pods = self.pods.by_index(POD_NODE_INDEX, name);
        if taints.is_empty() {
            for pod in &pods {
                self.cancel(&key_of(&**pod));
            }
            return;
        }
        let now = self.config.clock.now();
        for pod in &pods {
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or_default();
            self.process_pod_on_node(&key_of(&**pod), tolerations, &taints, now);
        }
    }

    fn handle_pod(&self, key: &str) {
        let (ns, name) = split_key(key);
        let Some(pod) = self.pods.get_namespaced(ns, name) else {
            self.cancel(key);
            return;
        };
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            return;
        };
        let Some(node) = self.nodes.get(node_name) else {
            return;
        };
        let taints = no_execute_taints(&node);
        if taints.is_empty() {
            return;
        }
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        self.process_pod_on_node(key, tolerations, &taints, self.config.clock.now());
    }

    /// `processPodOnNode`.
    fn process_pod_on_node(
        &self,
        key: &str,
        tolerations: &[Toleration],
        taints: &[Taint],
        now: Timestamp,
    ) {
        if taints.is_empty() {
            self.cancel(key);
            return;
        }
        let Some(used) = matching_tolerations(taints, tolerations) else {
            tracing::debug!(
                pod = key,
                "not all NoExecute taints are tolerated; evicting now"
            );
            self.cancel(key);
            self.schedule(key, now, now);
            return;
        };
        let Some(seconds) = min_toleration_seconds(&used) else {
            self.cancel(key);
            return;
        };
        let wait = Duration::from_secs(seconds);
        let existing = self.scheduled.lock().unwrap().get(key).copied();
        let mut start = now;
        if let Some(existing) = existing {
            // An eviction that was already counting keeps running.
            if existing.created_at < now {
                return;
            }
            start = existing.created_at;
            self.cancel(key);
        }
        self.schedule(key, start, clock::add(now, wait));
    }

    /// Hands due evictions to the eviction workers.
    async fn timer(&self) {
        loop {
            let now = self.config.clock.now();
            let (due, next) = {
                let mut scheduled = self.scheduled.lock().unwrap();
                let due: Vec<String> = scheduled
                    .iter()
                    .filter(|(_, s)| s.fire_at <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in &due {
                    scheduled.remove(key);
                }
                let next = scheduled.values().map(|s| s.fire_at).min();
                (due, next)
            };
            for key in due {
                self.pod_event(&key, &format!("Marking for deletion Pod {key}"));
                self.evict_queue.add(key);
            }
            let wait = next
                .map(|at| clock::elapsed(now, at))
                .unwrap_or(self.config.timer_resolution)
                .min(self.config.timer_resolution);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Marks the pod DisruptionTarget and deletes it
    /// (`addConditionAndDeletePod`).
    async fn evict(&self, key: &str) -> kube::Result<()> {
        let (ns, name) = split_key(key);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = match api.get(name).await {
            Ok(pod) => pod,
            Err(err) if is_not_found(&err) => return Ok(()),
            Err(err) => return Err(err),
        };
        tracing::info!(
            pod = key,
            "deleting pod for a NoExecute taint it does not tolerate"
        );
        let marked = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionTarget"))
            .is_some_and(|c| {
                c.status == "True" && c.reason.as_deref() == Some("DeletionByTaintManager")
            });
        if !marked {
            let patch = json!({
                "metadata": {"uid": pod.metadata.uid},
                "status": {"conditions": [{
                    "type": "DisruptionTarget", "status": "True",
                    "reason": "DeletionByTaintManager",
                    "message": "Taint manager: deleting due to NoExecute taint",
                    "lastTransitionTime": Time(self.config.clock.now()),
                }]}
            });
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }
}
