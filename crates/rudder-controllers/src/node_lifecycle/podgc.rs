//! Pod garbage collection (`podgc`): every pass deletes
//!
//! - the oldest terminated pods (Succeeded or Failed) beyond
//!   `--terminated-pod-gc-threshold`, evicted ones first;
//! - terminating pods on a node that is not Ready and carries the
//!   `node.kubernetes.io/out-of-service` taint (no kubelet will finish them);
//! - pods bound to a node that no longer exists (after a quarantine, and
//!   a direct read of the node to be sure), marked Failed with the
//!   DisruptionTarget condition `DeletionByPodGC` first;
//! - terminating pods never bound to a node.
//!
//! Deletions are forced (grace period 0): there is no kubelet to wait for.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use rudder_runtime::Informer;
use serde_json::json;

use super::clock::{self, Clock, SystemClock};
use super::health::{condition, READY};
use super::taints::{node_taints, TAINT_OUT_OF_SERVICE};
use crate::util::{is_not_found, phase};
use crate::Context;

#[derive(Clone)]
pub struct PodGcConfig {
    /// `--terminated-pod-gc-threshold`; 0 keeps every terminated pod.
    pub terminated_pod_threshold: usize,
    /// How often the collector runs (`gcCheckPeriod`).
    pub period: Duration,
    /// How long a node must be missing from the cache before it is
    /// looked up and its pods deleted (`quarantineTime`).
    pub quarantine: Duration,
    pub clock: Arc<dyn Clock>,
}

impl Default for PodGcConfig {
    fn default() -> Self {
        PodGcConfig {
            terminated_pod_threshold: 12500,
            period: Duration::from_secs(20),
            quarantine: Duration::from_secs(40),
            clock: Arc::new(SystemClock),
        }
    }
}

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    PodGcController::new(
        ctx,
        PodGcConfig {
            terminated_pod_threshold: ctx.options.terminated_pod_gc_threshold,
            ..Default::default()
        },
    )
    .run()
    .boxed()
}

pub struct PodGcController {
    client: Client,
    config: PodGcConfig,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    /// Nodes missing from the cache, and since when they may be checked.
    quarantined: Mutex<HashMap<String, Timestamp>>,
}

fn is_terminated(pod: &Pod) -> bool {
    !matches!(phase(pod), "Pending" | "Running" | "Unknown")
}

/// Evicted by the kubelet: Failed with reason Evicted.
fn is_evicted(pod: &Pod) -> bool {
    phase(pod) == "Failed"
        && pod.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted")
}

fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// Evicted pods first, then the oldest, then by name.
fn deletion_order(pods: &mut [Arc<Pod>]) {
    pods.sort_by(|a, b| {
        is_evicted(b)
            .cmp(&is_evicted(a))
            .then_with(|| {
                let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                created(a).cmp(&created(b))
            })
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
}

impl PodGcController {
    pub fn new(ctx: &Context, config: PodGcConfig) -> Self {
        PodGcController {
            client: ctx.client.clone(),
            config,
            pods: ctx.informers.get::<Pod>(),
            nodes: ctx.informers.get::<Node>(),
            quarantined: Mutex::new(HashMap::new()),
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        let mut tick = tokio::time::interval(self.config.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.gc().await;
        }
    }

    /// One collection pass.
    pub async fn gc(&self) {
        let pods = self.pods.list();
        if self.config.terminated_pod_threshold > 0 {
            self.gc_terminated(&pods).await;
        }
        self.gc_terminating_out_of_service(&pods).await;
        self.gc_orphaned(&pods).await;
        self.gc_unscheduled_terminating(&pods).await;
    }

    async fn gc_terminated(&self, pods: &[Arc<Pod>]) {
        let mut terminated: Vec<Arc<Pod>> =
            pods.iter().filter(|p| is_terminated(p)).cloned().collect();
        let excess = terminated
            .len()
            .saturating_sub(self.config.terminated_pod_threshold);
        if excess == 0 {
            return;
        }
        tracing::info!(pods = excess, "garbage collecting terminated pods");
        deletion_order(&mut terminated);
        self.delete_all(&terminated[..excess], None).await;
    }

    async fn gc_terminating_out_of_service(&self, pods: &[Arc<Pod>]) {
        let mut doomed: Vec<Arc<Pod>> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .filter(|p| {
                self.nodes.get(node_name(p)).is_some_and(|node| {
                    condition(&node, READY).is_none_or(|c| c.status != "True")
                        && node_taints(&node)
                            .iter()
                            .any(|t| t.key == TAINT_OUT_OF_SERVICE)
                })
            })
            .cloned()
            .collect();
        if doomed.is_empty() {
            return;
        }
        tracing::info!(
            pods = doomed.len(),
            "garbage collecting terminating pods on out-of-service nodes"
        );
        deletion_order(&mut doomed);
        self.delete_all(&doomed, None).await;
    }

    async fn gc_orphaned(&self, pods: &[Arc<Pod>]) {
        let existing: HashSet<String> = self.nodes.list().iter().map(|n| n.name_any()).collect();
        let now = self.config.clock.now();
        let due: Vec<String> = {
            let mut quarantined = self.quarantined.lock().unwrap();
            for pod in pods {
                let node = node_name(pod);
                if !node.is_empty() && !existing.contains(node) {
                    quarantined
                        .entry(node.to_owned())
                        .or_insert_with(|| clock::add(now, self.config.quarantine));
                }
            }
            let due: Vec<String> = quarantined
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(n, _)| n.clone())
                .collect();
            for name in &due {
                quarantined.remove(name);
            }
            due
        };
        let api: Api<Node> = Api::all(self.client.clone());
        let mut deleted_nodes = HashSet::new();
        for name in due {
            if existing.contains(&name) {
                continue;
            }
            match api.get(&name).await {
                Err(err) if is_not_found(&err) => {
                    deleted_nodes.insert(name);
                }
                // Present after all (the cache lags), or unknown: the next
                // pass quarantines it again if still needed.
                Ok(_) => {}
                Err(err) => tracing::warn!(node = %name, error = %err, "cannot read node"),
            }
        }
        if deleted_nodes.is_empty() {
            return;
        }
        let orphans: Vec<Arc<Pod>> = pods
            .iter()
            .filter(|p| deleted_nodes.contains(node_name(p)))
            .cloned()
            .collect();
        for pod in &orphans {
            tracing::info!(pod = %pod.name_any(), node = node_name(pod), "deleting orphaned pod: its node no longer exists");
        }
        self.delete_all(
            &orphans,
            Some(("DeletionByPodGC", "PodGC: node no longer exists")),
        )
        .await;
    }

    async fn gc_unscheduled_terminating(&self, pods: &[Arc<Pod>]) {
        let doomed: Vec<Arc<Pod>> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some() && node_name(p).is_empty())
            .cloned()
            .collect();
        self.delete_all(&doomed, None).await;
    }

    async fn delete_all(&self, pods: &[Arc<Pod>], condition: Option<(&str, &str)>) {
        futures::stream::iter(pods)
            .for_each_concurrent(8, |pod| async move {
                if let Err(err) = self.mark_failed_and_delete(pod, condition).await {
                    tracing::warn!(pod = %pod.name_any(), error = %err, "cannot garbage collect pod");
                }
            })
            .await;
    }

    /// Marks the pod Failed (no kubelet will) with the condition, if any,
    /// then force-deletes it (`markFailedAndDeletePodWithCondition`).
    async fn mark_failed_and_delete(
        &self,
        pod: &Pod,
        condition: Option<(&str, &str)>,
    ) -> kube::Result<()> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let name = pod.name_any();
        if !matches!(phase(pod), "Succeeded" | "Failed") {
            let mut status = json!({"phase": "Failed"});
            if let Some((reason, message)) = condition {
                status["conditions"] = json!([{
                    "type": "DisruptionTarget", "status": "True", "reason": reason, "message": message,
                    "lastTransitionTime": Time(self.config.clock.now()),
                }]);
            }
            let patch = json!({"metadata": {"uid": pod.metadata.uid}, "status": status});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        let params = DeleteParams::default()
            .grace_period(0)
            .preconditions(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            });
        match api.delete(&name, &params).await {
            Err(err) if !is_not_found(&err) => Err(err),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, created: i64, phase: &str, reason: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": Timestamp::from_second(created).unwrap().to_string()},
                "status": {"phase": phase, "reason": reason},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn evicted_pods_go_first_then_the_oldest() {
        let mut pods = vec![
            pod("new", 30, "Succeeded", None),
            pod("old", 10, "Failed", None),
            pod("evicted", 40, "Failed", Some("Evicted")),
            pod("b", 20, "Succeeded", None),
            pod("a", 20, "Succeeded", None),
        ];
        deletion_order(&mut pods);
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["evicted", "old", "a", "b", "new"]);
        assert!(is_terminated(&pods[0]));
        assert!(!is_terminated(&pod("r", 1, "Running", None)));
    }
}
