//! The node lifecycle controllers (kube-controller-manager's
//! `nodelifecycle`, `taint-eviction-controller` and `podgc`):
//!
//! - [`NodeLifecycleController`]: a node is alive while its kubelet renews
//!   its Lease in `kube-node-lease` or posts its Ready condition; after the
//!   grace period without either, the kubelet's conditions go Unknown. The
//!   node's taints follow its conditions (`not-ready`/`unreachable` with
//!   NoSchedule at once and NoExecute through a rate-limited queue per
//!   zone, the pressure taints, `unschedulable`), and the pods on a node
//!   that stops being Ready are marked not Ready;
//! - [`eviction::TaintEvictionController`]: deletes the pods that do not
//!   tolerate a node's NoExecute taints, at once or after their
//!   `tolerationSeconds`;
//! - [`podgc::PodGcController`]: deletes pods whose node is gone, the
//!   oldest terminated pods past a threshold, and terminating pods that no
//!   kubelet will finish.

pub mod clock;
pub mod eviction;
pub mod health;
pub mod podgc;
pub mod taints;
mod zones;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rudder_runtime::events::{EventRecorder, EventType};
use rudder_runtime::{Change, Informer, WorkQueue};
use serde_json::json;

use crate::util::is_not_found;
use crate::Context;
use clock::{Clock, SystemClock};
use health::{condition, NodeHealth, READY};
use rudder_runtime::informer::split_key;
use taints::*;
use zones::{zone_key, ZoneState, ZoneTainter};

/// The pod index by `spec.nodeName` that the node controllers share.
pub const POD_NODE_INDEX: &str = "spec.nodeName";
/// Where kubelets keep their heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Nodes with this label do not count when judging a zone's health.
const LABEL_EXCLUDE_DISRUPTION: &str = "node.kubernetes.io/exclude-disruption";

/// Registers the `spec.nodeName` index on the pod informer.
pub fn index_pods_by_node(pods: &Informer<Pod>) {
    pods.add_index(POD_NODE_INDEX, |pod: &Pod| {
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .into_iter()
            .collect()
    });
}

/// The node lifecycle controller's settings (kube-controller-manager's
/// flags of the same names).
#[derive(Clone)]
pub struct NodeLifecycleConfig {
    /// `--node-monitor-period`: how often node health is checked.
    pub monitor_period: Duration,
    /// `--node-monitor-grace-period`: silence after which a node is Unknown.
    pub grace_period: Duration,
    /// `--node-startup-grace-period`: the same for a node whose kubelet
    /// never posted a status.
    pub startup_grace_period: Duration,
    /// `--node-eviction-rate`: NoExecute taints per second in a healthy zone.
    pub eviction_qps: f32,
    /// `--secondary-node-eviction-rate`: in a partly disrupted large zone.
    pub secondary_eviction_qps: f32,
    /// `--large-cluster-size-threshold`.
    pub large_cluster_threshold: usize,
    /// `--unhealthy-zone-threshold`.
    pub unhealthy_zone_threshold: f32,
    /// How often the NoExecute tainting queues are worked (upstream's
    /// `NodeEvictionPeriod`).
    pub tainting_period: Duration,
    pub clock: Arc<dyn Clock>,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        NodeLifecycleConfig {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(50),
            startup_grace_period: Duration::from_secs(60),
            eviction_qps: 0.1,
            secondary_eviction_qps: 0.01,
            large_cluster_threshold: 50,
            unhealthy_zone_threshold: 0.55,
            tainting_period: Duration::from_millis(100),
            clock: Arc::new(SystemClock),
        }
    }
}

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    NodeLifecycleController::new(
        ctx,
        NodeLifecycleConfig {
            grace_period: ctx.options.node_monitor_grace_period,
            ..Default::default()
        },
    )
    .run()
    .boxed()
}

#[derive(Default)]
struct State {
    known: HashMap<String, Arc<Node>>,
    health: HashMap<String, NodeHealth>,
    zone_states: HashMap<String, ZoneState>,
    tainters: HashMap<String, ZoneTainter>,
    /// Nodes whose pods could not all be marked not Ready.
    retry: HashSet<String>,
}

#[derive(Clone)]
pub struct NodeLifecycleController {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: NodeLifecycleConfig,
    recorder: EventRecorder,
    nodes: Informer<Node>,
    pods: Informer<Pod>,
    leases: Informer<Lease>,
    node_queue: WorkQueue<String>,
    pod_queue: WorkQueue<String>,
    state: Mutex<State>,
}

impl NodeLifecycleController {
    pub fn new(ctx: &Context, config: NodeLifecycleConfig) -> Self {
        let nodes = ctx.informers.get::<Node>();
        let pods = ctx.informers.get::<Pod>();
        let leases = ctx.informers.get::<Lease>();
        index_pods_by_node(&pods);
        let node_queue = WorkQueue::new();
        let pod_queue = WorkQueue::new();
        let q = node_queue.clone();
        nodes.on_change(move |change| {
            if !matches!(change, Change::Deleted(_)) {
                q.add(change.object().name_any());
            }
        });
        let q = pod_queue.clone();
        pods.on_change(move |change| {
            // Only a pod newly bound to a node may need marking.
            let (old, new) = match change {
                Change::Added(p) => (None, p),
                Change::Updated { old, new } => (Some(old), new),
                Change::Deleted(_) => return,
            };
            let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
            let node = node_of(new);
            if node.as_deref().is_some_and(|n| !n.is_empty())
                && old.is_none_or(|o| node_of(o) != node)
            {
                q.add(rudder_runtime::informer::key_of(&**new));
            }
        });
        NodeLifecycleController {
            inner: Arc::new(Inner {
                client: ctx.client.clone(),
                recorder: EventRecorder::new(ctx.client.clone(), "node-controller"),
                config,
                nodes,
                pods,
                leases,
                node_queue,
                pod_queue,
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let inner = self.inner.clone();
        inner.nodes.wait_synced().await;
        inner.pods.wait_synced().await;
        inner.leases.wait_synced().await;
        tracing::info!(
            grace_period = ?inner.config.grace_period,
            "node lifecycle controller started"
        );
        let node_worker = {
            let inner = inner.clone();
            let queue = inner.node_queue.clone();
            async move {
                queue
                    .run_workers("nodelifecycle", 4, move |name: String| {
                        let inner = inner.clone();
                        async move { inner.node_pass(&name).await.map(|_| None) }
                    })
                    .await
            }
        };
        let pod_worker = {
            let inner = inner.clone();
            let queue = inner.pod_queue.clone();
            async move {
                queue
                    .run_workers("nodelifecycle-pods", 2, move |key: String| {
                        let inner = inner.clone();
                        async move { inner.process_pod(&key).await.map(|_| None) }
                    })
                    .await
            }
        };
        let monitor = {
            let inner = inner.clone();
            async move {
                let mut tick = tokio::time::interval(inner.config.monitor_period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    inner.monitor_node_health().await;
                }
            }
        };
        let tainting = {
            let inner = inner.clone();
            async move {
                let mut tick = tokio::time::interval(inner.config.tainting_period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    inner.no_execute_tainting_pass().await;
                }
            }
        };
        tokio::join!(node_worker, pod_worker, monitor, tainting);
        Ok(())
    }

    /// When the controller last saw the node's kubelet alive (tests wait
    /// on it before moving their clock).
    pub fn last_probe(&self, node: &str) -> Option<jiff::Timestamp> {
        self.inner
            .state
            .lock()
            .unwrap()
            .health
            .get(node)
            .map(|h| h.probe)
    }
}

fn now_time(clock: &dyn Clock) -> Time {
    Time(clock.now())
}

impl Inner {
    fn now(&self) -> Time {
        now_time(&*self.config.clock)
    }

    fn pods_on(&self, node: &str) -> Vec<Arc<Pod>> {
        self.pods.by_index(POD_NODE_INDEX, node)
    }

    /// The taints that follow a node's conditions and `spec.unschedulable`
    /// (`doNoScheduleTaintingPass`), and the beta OS/arch labels that
    /// follow the stable ones (`reconcileNodeLabels`).
    async fn node_pass(&self, name: &str) -> kube::Result<()> {
        let Some(node) = self.nodes.get(name) else {
            return Ok(());
        };
        let mut wanted: Vec<Taint> = Vec::new();
        for c in node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default()
        {
            let key = match (c.type_.as_str(), c.status.as_str()) {
                ("Ready", "False") => TAINT_NOT_READY,
                ("Ready", "Unknown") => TAINT_UNREACHABLE,
                ("MemoryPressure", "True") => TAINT_MEMORY_PRESSURE,
                ("DiskPressure", "True") => TAINT_DISK_PRESSURE,
                ("NetworkUnavailable", "True") => TAINT_NETWORK_UNAVAILABLE,
                ("PIDPressure", "True") => TAINT_PID_PRESSURE,
                _ => continue,
            };
            wanted.push(taint(key, NO_SCHEDULE));
        }
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            wanted.push(taint(TAINT_UNSCHEDULABLE, NO_SCHEDULE));
        }
        let controlled = [
            TAINT_NOT_READY,
            TAINT_UNREACHABLE,
            TAINT_MEMORY_PRESSURE,
            TAINT_DISK_PRESSURE,
            TAINT_NETWORK_UNAVAILABLE,
            TAINT_PID_PRESSURE,
            TAINT_UNSCHEDULABLE,
        ];
        let present: Vec<&Taint> = node_taints(&node)
            .iter()
            .filter(|t| t.effect == NO_SCHEDULE && controlled.contains(&t.key.as_str()))
            .collect();
        let add: Vec<Taint> = wanted
            .iter()
            .filter(|w| !present.iter().any(|p| same_taint(p, w)))
            .cloned()
            .collect();
        let remove: Vec<Taint> = present
            .iter()
            .filter(|p| !wanted.iter().any(|w| same_taint(p, w)))
            .map(|t| (*t).clone())
            .collect();
        if !add.is_empty() || !remove.is_empty() {
            swap_node_taints(&self.client, name, &add, &remove, self.now()).await?;
        }
        self.reconcile_labels(&node).await
    }

    async fn reconcile_labels(&self, node: &Node) -> kube::Result<()> {
        let Some(labels) = node.metadata.labels.as_ref() else {
            return Ok(());
        };
        let mut update = BTreeMap::new();
        for (stable, beta) in [
            ("kubernetes.io/os", "beta.kubernetes.io/os"),
            ("kubernetes.io/arch", "beta.kubernetes.io/arch"),
        ] {
            if let Some(value) = labels.get(stable) {
                if labels.get(beta) != Some(value) {
                    update.insert(beta, value.clone());
                }
            }
        }
        if update.is_empty() {
            return Ok(());
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"labels": update}});
        match nodes
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Err(err) if !is_not_found(&err) => Err(err),
            _ => Ok(()),
        }
    }

    /// A pod newly bound to a node that is not Ready is marked not Ready.
    async fn process_pod(&self, key: &str) -> kube::Result<()> {
        let (ns, name) = split_key(key);
        let Some(pod) = self.pods.get_namespaced(ns, name) else {
            return Ok(());
        };
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let ready = {
            let state = self.state.lock().unwrap();
            match state.health.get(&node_name) {
                // Not looked at yet: the next health pass will.
                None => return Ok(()),
                Some(h) => h.ready.clone(),
            }
        };
        let Some(ready) = ready else {
            return Ok(());
        };
        if ready.status != "True" {
            self.mark_pods_not_ready(&[pod], &node_name).await?;
        }
        Ok(())
    }

    /// Sets the Ready condition of the node's pods to False
    /// (`MarkPodsNotReady`).
    async fn mark_pods_not_ready(&self, pods: &[Arc<Pod>], node: &str) -> kube::Result<()> {
        let mut first_error = None;
        for pod in pods {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
                continue;
            }
            let Some(ready) = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            else {
                continue;
            };
            if ready.status == "False" {
                continue;
            }
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let patch = json!({"metadata": {"uid": pod.metadata.uid},
                "status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": self.now()}]}});
            match api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            {
                Ok(_) => self.recorder.record(
                    &**pod,
                    EventType::Warning,
                    "NodeNotReady",
                    "Node is not ready",
                ),
                Err(err) if is_not_found(&err) => {}
                Err(err) => {
                    tracing::info!(pod = %pod.name_any(), error = %err, "cannot mark the pod not ready");
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn node_event(&self, node: &Node, reason: &str, message: &str) {
        self.recorder
            .record(node, EventType::Normal, reason, message);
    }

    /// One health pass over every node (`monitorNodeHealth`).
    async fn monitor_node_health(self: &Arc<Self>) {
        let nodes = self.nodes.list();
        let (added, deleted) = {
            let mut state = self.state.lock().unwrap();
            let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
            let added: Vec<Arc<Node>> = nodes
                .iter()
                .filter(|n| !state.known.contains_key(&n.name_any()))
                .cloned()
                .collect();
            let deleted: Vec<Arc<Node>> = state
                .known
                .values()
                .filter(|n| !names.contains(&n.name_any()))
                .cloned()
                .collect();
            for node in &nodes {
                self.ensure_zone(&mut state, node);
            }
            for node in &added {
                state.known.insert(node.name_any(), node.clone());
            }
            for node in &deleted {
                state.known.remove(&node.name_any());
                state.health.remove(&node.name_any());
                state.retry.remove(&node.name_any());
            }
            (added, deleted)
        };
        for node in &added {
            let name = node.name_any();
            tracing::debug!(node = %name, "controller observed a new node");
            self.node_event(
                node,
                "RegisteredNode",
                &format!("Node {name} event: Registered Node {name} in Controller"),
            );
            if let Err(err) = self.mark_node_reachable(node).await {
                tracing::warn!(node = %name, error = %err, "cannot remove taints from node");
            }
        }
        for node in &deleted {
            let name = node.name_any();
            self.node_event(
                node,
                "RemovingNode",
                &format!("Node {name} event: Removing Node {name} from Controller"),
            );
        }
        let zone_conditions: Mutex<HashMap<String, Vec<Option<NodeCondition>>>> =
            Default::default();
        futures::stream::iter(nodes.iter().cloned())
            .for_each_concurrent(8, |node| {
                let zone_conditions = &zone_conditions;
                async move {
                    let Some((node, observed, current)) = self.update_node_health(node).await else {
                        return;
                    };
                    let excluded = node
                        .metadata
                        .labels
                        .as_ref()
                        .is_some_and(|l| l.contains_key(LABEL_EXCLUDE_DISRUPTION));
                    if !excluded {
                        zone_conditions
                            .lock()
                            .unwrap()
                            .entry(zone_key(&node))
                            .or_default()
                            .push(current.clone());
                    }
                    let Some(current) = current else { return };
                    let name = node.name_any();
                    self.taint_based_eviction(&node, &observed).await;
                    let needs_retry = self.state.lock().unwrap().retry.contains(&name);
                    let became_unready = current.status != "True" && observed.status == "True";
                    if became_unready {
                        self.node_event(&node, "NodeNotReady", &format!("Node {name} status is now: NodeNotReady"));
                    }
                    if became_unready || (needs_retry && observed.status != "True") {
                        let pods = self.pods_on(&name);
                        if let Err(err) = self.mark_pods_not_ready(&pods, &name).await {
                            tracing::warn!(node = %name, error = %err, "cannot mark all pods not ready; will retry");
                            self.state.lock().unwrap().retry.insert(name);
                            return;
                        }
                    }
                    self.state.lock().unwrap().retry.remove(&name);
                }
            })
            .await;
        let zone_conditions = zone_conditions.into_inner().unwrap();
        self.handle_disruption(zone_conditions, &nodes).await;
    }

    fn ensure_zone(&self, state: &mut State, node: &Node) {
        let zone = zone_key(node);
        if !state.zone_states.contains_key(&zone) {
            state.zone_states.insert(zone.clone(), ZoneState::Initial);
            state.tainters.insert(
                zone,
                ZoneTainter::new(self.config.eviction_qps, self.config.clock.now()),
            );
        }
    }

    /// Looks at one node's health signals and writes Unknown conditions
    /// when it went silent, retrying with a fresh copy of the node
    /// (`tryUpdateNodeHealth`). Returns the node as it now is, its
    /// observed and its current Ready condition.
    async fn update_node_health(
        &self,
        node: Arc<Node>,
    ) -> Option<(Node, NodeCondition, Option<NodeCondition>)> {
        let name = node.name_any();
        let mut node = (*node).clone();
        let api: Api<Node> = Api::all(self.client.clone());
        for attempt in 0..5 {
            match self.try_update_node_health(&mut node).await {
                Ok((observed, current)) => return Some((node, observed, current)),
                Err(err) => {
                    tracing::debug!(node = %name, error = %err, attempt, "cannot update node health");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    match api.get(&name).await {
                        Ok(fresh) => node = fresh,
                        Err(_) => return None,
                    }
                }
            }
        }
        tracing::warn!(node = %name, "cannot update the health of the node; no pods will be evicted");
        None
    }

    async fn try_update_node_health(
        &self,
        node: &mut Node,
    ) -> kube::Result<(NodeCondition, Option<NodeCondition>)> {
        let name = node.name_any();
        let now = self.config.clock.now();
        let lease = self
            .leases
            .get_namespaced(NODE_LEASE_NAMESPACE, &name)
            .map(|l| {
                l.spec
                    .as_ref()
                    .and_then(|s| s.renew_time.as_ref())
                    .map(|t| t.0)
            });
        let saved = self.state.lock().unwrap().health.get(&name).cloned();
        let observation = health::observe(
            saved,
            node,
            lease,
            now,
            self.config.grace_period,
            self.config.startup_grace_period,
        );
        let mut health = observation.health;
        let observed = observation.observed_ready;
        if observation.silent && health::mark_unknown(node, now) {
            let current = condition(node, READY).cloned();
            if current.as_ref() != Some(&observed) {
                let api: Api<Node> = Api::all(self.client.clone());
                if let Err(err) = api
                    .replace_status(&name, &PostParams::default(), node)
                    .await
                {
                    // Keep what was learnt (probe times) for the retry.
                    self.state.lock().unwrap().health.insert(name, health);
                    return Err(err);
                }
                tracing::info!(node = %name, "node stopped posting status; conditions set to Unknown");
                health.ready = current.clone();
                health.ready_transition = now;
                self.state.lock().unwrap().health.insert(name, health);
                return Ok((observed, current));
            }
        }
        let current = condition(node, READY).cloned();
        self.state.lock().unwrap().health.insert(name, health);
        Ok((observed, current))
    }

    /// Queues or swaps the NoExecute taints that follow Ready
    /// (`processTaintBaseEviction`).
    async fn taint_based_eviction(&self, node: &Node, observed: &NodeCondition) {
        let name = node.name_any();
        let taints = node_taints(node);
        let unreachable = taint(TAINT_UNREACHABLE, NO_EXECUTE);
        let not_ready = taint(TAINT_NOT_READY, NO_EXECUTE);
        let (wanted, opposite) = match observed.status.as_str() {
            "False" => (not_ready, unreachable),
            "Unknown" => (unreachable, not_ready),
            "True" => {
                match self.mark_node_reachable(node).await {
                    Ok(true) => {
                        tracing::debug!(node = %name, "node is healthy again; removed its taints")
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::warn!(node = %name, error = %err, "cannot remove taints from node")
                    }
                }
                return;
            }
            _ => return,
        };
        if taint_exists(taints, &opposite) {
            // The node flipped between not-ready and unreachable: swap at
            // once, no need to wait for the rate limiter.
            if let Err(err) =
                swap_node_taints(&self.client, &name, &[wanted], &[opposite], self.now()).await
            {
                tracing::warn!(node = %name, error = %err, "cannot swap the node's NoExecute taint");
            }
            return;
        }
        let mut state = self.state.lock().unwrap();
        let zone = zone_key(node);
        let now = self.config.clock.now();
        if let Some(tainter) = state.tainters.get_mut(&zone) {
            if !taint_exists(taints, &wanted) {
                tainter.remove(&name);
            }
            if tainter.add(&name, now) {
                tracing::debug!(node = %name, status = %observed.status, "node added to the taint queue");
            }
        }
    }

    /// Removes the NoExecute not-ready/unreachable taints and takes the
    /// node out of its zone's queue; returns whether it was queued.
    async fn mark_node_reachable(&self, node: &Node) -> kube::Result<bool> {
        let remove = [
            taint(TAINT_UNREACHABLE, NO_EXECUTE),
            taint(TAINT_NOT_READY, NO_EXECUTE),
        ];
        if remove.iter().any(|t| taint_exists(node_taints(node), t)) {
            swap_node_taints(&self.client, &node.name_any(), &[], &remove, self.now()).await?;
        }
        let mut state = self.state.lock().unwrap();
        Ok(state
            .tainters
            .get_mut(&zone_key(node))
            .is_some_and(|t| t.remove(&node.name_any())))
    }

    /// Works each zone's queue of nodes to taint NoExecute, as fast as the
    /// zone's rate limiter allows (`doNoExecuteTaintingPass`).
    async fn no_execute_tainting_pass(&self) {
        let zones: Vec<String> = self
            .state
            .lock()
            .unwrap()
            .tainters
            .keys()
            .cloned()
            .collect();
        for zone in zones {
            loop {
                let now = self.config.clock.now();
                let next = {
                    let mut state = self.state.lock().unwrap();
                    let Some(tainter) = state.tainters.get_mut(&zone) else {
                        break;
                    };
                    tainter.next_due(now)
                };
                let Some(name) = next else { break };
                let done = self.taint_no_execute(&name).await;
                let mut state = self.state.lock().unwrap();
                if let Some(tainter) = state.tainters.get_mut(&zone) {
                    match done {
                        Ok(()) => tainter.processed(&name),
                        Err(wait) => tainter.retry_later(&name, clock::add(now, wait)),
                    }
                }
            }
        }
    }

    /// Taints one queued node by its Ready condition; `Err(wait)` to try
    /// again later.
    async fn taint_no_execute(&self, name: &str) -> Result<(), Duration> {
        let Some(node) = self.nodes.get(name) else {
            return Ok(());
        };
        let Some(ready) = condition(&node, READY) else {
            return Err(Duration::from_millis(50));
        };
        let unreachable = taint(TAINT_UNREACHABLE, NO_EXECUTE);
        let not_ready = taint(TAINT_NOT_READY, NO_EXECUTE);
        let (add, remove) = match ready.status.as_str() {
            "False" => (not_ready, unreachable),
            "Unknown" => (unreachable, not_ready),
            // Ready again meanwhile: nothing to taint.
            _ => return Ok(()),
        };
        match swap_node_taints(&self.client, name, &[add], &[remove], self.now()).await {
            Ok(()) => Ok(()),
            Err(err) => {
                tracing::warn!(node = %name, error = %err, "cannot taint the node NoExecute");
                Err(Duration::ZERO)
            }
        }
    }

    /// Judges each zone's health and slows or stops NoExecute tainting
    /// when many nodes fail together (`handleDisruption`): when every
    /// node of every zone is down, the trouble is more likely the control
    /// plane's network than the nodes, so nothing is evicted.
    async fn handle_disruption(
        &self,
        zone_conditions: HashMap<String, Vec<Option<NodeCondition>>>,
        nodes: &[Arc<Node>],
    ) {
        let decision = {
            let mut state = self.state.lock().unwrap();
            zones::decide(
                &mut state.zone_states,
                &zone_conditions,
                self.config.unhealthy_zone_threshold,
            )
        };
        match decision {
            zones::Decision::Unchanged => {}
            zones::Decision::EnterFullDisruption => {
                tracing::info!("all nodes are not ready; entering master disruption mode");
                for node in nodes {
                    if let Err(err) = self.mark_node_reachable(node).await {
                        tracing::warn!(node = %node.name_any(), error = %err, "cannot remove taints from node");
                    }
                }
                let now = self.config.clock.now();
                let mut state = self.state.lock().unwrap();
                for tainter in state.tainters.values_mut() {
                    tainter.set_qps(0.0, now);
                }
            }
            zones::Decision::Limits {
                exiting_full_disruption,
                changed,
            } => {
                let now = self.config.clock.now();
                let mut state = self.state.lock().unwrap();
                if exiting_full_disruption {
                    tracing::info!("some nodes are ready; exiting master disruption mode");
                    for node in nodes {
                        if let Some(h) = state.health.get_mut(&node.name_any()) {
                            h.probe = now;
                            h.ready_transition = now;
                        }
                    }
                }
                for (zone, zone_state) in changed {
                    let size = zone_conditions.get(&zone).map_or(0, Vec::len);
                    let qps = match zone_state {
                        ZoneState::Normal | ZoneState::FullDisruption => self.config.eviction_qps,
                        ZoneState::PartialDisruption
                            if size > self.config.large_cluster_threshold =>
                        {
                            self.config.secondary_eviction_qps
                        }
                        ZoneState::PartialDisruption => 0.0,
                        ZoneState::Initial => continue,
                    };
                    tracing::info!(zone = %zone, state = ?zone_state, "zone is now in a new state");
                    if let Some(tainter) = state.tainters.get_mut(&zone) {
                        tainter.set_qps(qps, now);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
