//! The scheduler: informers fill the cache and the queue; one loop takes
//! pods from the queue and runs the scheduling cycle; bindings go to the
//! API asynchronously, on the assumed cache.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Client;
use serde_json::json;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::cache::{ClusterCache, NodeInfo, PodInfo};
use crate::framework::runtime::{self, PermitOutcome};
use crate::framework::{
    unschedulable_message, Code, CycleState, FilterPlugin, Handle, NodeStatuses, Nomination,
    PreFilterPlugin, Status, WaitingPod, WaitingPods, MAX_NODE_SCORE,
};
use crate::profile::Profile;
use crate::queue::SchedulingQueue;
use crate::volume_cache::VolumeObject;

/// Bindings in flight at once.
const MAX_BINDINGS_IN_FLIGHT: usize = 256;
/// How long PreBind waits for a pod's claims to be bound (VolumeBinding's
/// `bindTimeoutSeconds` default).
pub const DEFAULT_VOLUME_BIND_TIMEOUT: Duration = Duration::from_secs(600);

/// The outcome of one scheduling cycle.
pub enum Decision {
    Node(String),
    /// No node fits; the statuses explain why, and preemption may have
    /// nominated a node.
    Unschedulable {
        message: String,
        nomination: Option<Nomination>,
    },
}

/// How many feasible nodes to find before scoring, as Kubernetes'
/// adaptive `percentageOfNodesToScore`.
pub fn feasible_nodes_to_find(total: usize, percentage: u32) -> usize {
    const MIN: usize = 100;
    if total < MIN {
        return total;
    }
    let percentage = if percentage == 0 {
        (50 - (total / 125) as i64).max(5) as usize
    } else {
        percentage.min(100) as usize
    };
    (total * percentage / 100).max(MIN)
}

/// A small, fast random source for tie-breaking.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs one scheduling cycle against the cache. `start` rotates where
/// filtering begins, so the early stop does not favour the first nodes.
pub fn schedule_one(
    profile: &Profile,
    cache: &ClusterCache,
    pod: &PodInfo,
    start: &mut usize,
    seed: u64,
) -> Decision {
    schedule_one_with_state(profile, cache, pod, start, seed, &mut CycleState::default())
}

/// [`schedule_one`], leaving what PreFilter and PreScore found in `state`
/// for the later extension points.
pub fn schedule_one_with_state(
    profile: &Profile,
    cache: &ClusterCache,
    pod: &PodInfo,
    start: &mut usize,
    seed: u64,
    state: &mut CycleState,
) -> Decision {
    let total = cache.node_order.len();
    let mut statuses = NodeStatuses::new();
    let mut skipped_filters: HashSet<&'static str> = HashSet::new();
    for plugin in &profile.pre_filters {
        let status = plugin.pre_filter(state, pod, cache);
        match status.code {
            Code::Success => {}
            Code::Skip => {
                skipped_filters.insert(plugin.name());
            }
            _ => {
                for name in &cache.node_order {
                    statuses.insert(name.clone(), status.clone());
                }
                return Decision::Unschedulable {
                    message: unschedulable_message(total, &statuses),
                    nomination: None,
                };
            }
        }
    }
    let filters: Vec<&dyn FilterPlugin> = profile
        .filters
        .iter()
        .filter(|f| !skipped_filters.contains(f.name()))
        .map(|f| f.as_ref())
        .collect();
    let run_filters = |node: &NodeInfo| -> Status {
        let node = cache.node_for(node, pod);
        for filter in &filters {
            let status = filter.filter(state, pod, &node);
            if !status.is_success() {
                return status;
            }
        }
        Status::success()
    };
    // A pod that preempted goes to its nominated node when it fits there.
    if let Some(nominated) = cache
        .nomination_of(&pod.uid)
        .and_then(|n| cache.nodes.get(n))
    {
        if run_filters(nominated).is_success() {
            return Decision::Node(nominated.name.clone());
        }
    }
    let want = feasible_nodes_to_find(total, profile.percentage_of_nodes_to_score);
    let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want.min(total));
    let mut examined = 0;
    while examined < total && feasible.len() < want {
        let name = &cache.node_order[(*start + examined) % total];
        examined += 1;
        let Some(node) = cache.nodes.get(name) else {
            continue;
        };
        let verdict = run_filters(node);
        if verdict.is_success() {
            feasible.push(node);
        } else {
            statuses.insert(name.clone(), verdict);
        }
    }
    if total > 0 {
        *start = (*start + examined) % total;
    }
    if feasible.is_empty() {
        let pre_filters: Vec<&dyn PreFilterPlugin> =
            profile.pre_filters.iter().map(|p| p.as_ref()).collect();
        let all_filters: Vec<&dyn FilterPlugin> =
            profile.filters.iter().map(|f| f.as_ref()).collect();
        // A preemptor whose victims are still terminating waits for them
        // rather than evicting more.
        let waiting = cache
            .nomination_of(&pod.uid)
            .is_some_and(|n| cache.victims_terminating(n, pod.priority));
        let nomination = if waiting {
            None
        } else {
            profile
                .post_filters
                .iter()
                .find_map(|p| p.post_filter(pod, cache, &statuses, &all_filters, &pre_filters))
        };
        return Decision::Unschedulable {
            message: unschedulable_message(total, &statuses),
            nomination,
        };
    }
    if feasible.len() == 1 {
        return Decision::Node(feasible[0].name.clone());
    }
    let mut skipped_scores: HashSet<&'static str> = HashSet::new();
    for plugin in &profile.pre_scores {
        if plugin.pre_score(state, pod, &feasible, cache).code == Code::Skip {
            skipped_scores.insert(plugin.name());
        }
    }
    let mut totals = vec![0i64; feasible.len()];
    let mut scores = vec![0i64; feasible.len()];
    for (plugin, weight) in &profile.scores {
        if skipped_scores.contains(plugin.name()) {
            continue;
        }
        for (i, node) in feasible.iter().enumerate() {
            scores[i] = plugin.score(state, pod, node);
        }
        plugin.normalize(state, pod, &mut scores);
        for (t, s) in totals.iter_mut().zip(&scores) {
            *t += s.clamp(&0, &MAX_NODE_SCORE) * weight;
        }
    }
    // The best score; ties are broken at random, as Kubernetes does.
    let mut rng = XorShift(seed | 1);
    let mut best = 0;
    let mut ties = 1u64;
    for i in 1..totals.len() {
        if totals[i] > totals[best] {
            best = i;
            ties = 1;
        } else if totals[i] == totals[best] {
            ties += 1;
            if rng.next().is_multiple_of(ties) {
                best = i;
            }
        }
    }
    Decision::Node(feasible[best].name.clone())
}

/// What the loop does with a decided pod.
enum Placement {
    /// Reserved on the node: bind it in a binding task, after Permit's
    /// wait if it asked for one.
    Bind {
        node: String,
        state: CycleState,
        waiting: Option<Arc<WaitingPod>>,
    },
    Unschedulable {
        message: String,
        nomination: Option<Nomination>,
    },
}

pub struct Scheduler {
    client: Client,
    profiles: HashMap<String, Arc<Profile>>,
    cache: Mutex<ClusterCache>,
    queue: SchedulingQueue,
    bindings: Arc<Semaphore>,
    /// Woken on every PV/PVC change, for PreBind waiting on claims.
    volume_changes: Notify,
    /// PreBind's limit, in milliseconds.
    volume_bind_timeout_ms: AtomicU64,
    /// Pods held at Permit.
    waiting: WaitingPods,
}

impl Handle for Scheduler {
    fn client(&self) -> &Client {
        &self.client
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ClusterCache> {
        Scheduler::cache(self)
    }

    fn volume_changes(&self) -> &Notify {
        &self.volume_changes
    }

    fn volume_bind_timeout(&self) -> Duration {
        Duration::from_millis(self.volume_bind_timeout_ms.load(Ordering::Relaxed))
    }

    fn waiting_pods(&self) -> &WaitingPods {
        &self.waiting
    }
}

impl Scheduler {
    pub fn new(client: Client, profiles: HashMap<String, Arc<Profile>>) -> Arc<Self> {
        Arc::new(Scheduler {
            client,
            profiles,
            cache: Mutex::new(ClusterCache::default()),
            queue: SchedulingQueue::default(),
            bindings: Arc::new(Semaphore::new(MAX_BINDINGS_IN_FLIGHT)),
            volume_changes: Notify::new(),
            volume_bind_timeout_ms: AtomicU64::new(DEFAULT_VOLUME_BIND_TIMEOUT.as_millis() as u64),
            waiting: WaitingPods::default(),
        })
    }

    /// How long binding a pod waits for its claims to be bound before
    /// giving up and scheduling the pod again.
    pub fn set_volume_bind_timeout(&self, timeout: Duration) {
        self.volume_bind_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ClusterCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the informers and the scheduling loop until the task is
    /// dropped.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let nodes = tokio::spawn(self.clone().watch_nodes());
        let pods = tokio::spawn(self.clone().watch_pods());
        let claims = tokio::spawn(
            self.clone()
                .watch_volumes::<PersistentVolumeClaim>("persistentvolumeclaim"),
        );
        let volumes = tokio::spawn(
            self.clone()
                .watch_volumes::<PersistentVolume>("persistentvolume"),
        );
        let classes = tokio::spawn(self.clone().watch_volumes::<StorageClass>("storageclass"));
        let csi_nodes = tokio::spawn(self.clone().watch_volumes::<CSINode>("csinode"));
        let pdbs = tokio::spawn(self.clone().watch_pdbs());
        let schedule = tokio::spawn(self.clone().schedule_loop());
        tokio::select! {
            r = nodes => r??,
            r = pods => r??,
            r = claims => r??,
            r = volumes => r??,
            r = classes => r??,
            r = csi_nodes => r??,
            r = pdbs => r??,
            r = schedule => r?,
        }
        Ok(())
    }

    async fn watch_nodes(self: Arc<Self>) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut seen: HashSet<String> = HashSet::new();
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        loop {
            let event = match stream.try_next().await {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(()),
                Err(err) => {
                    tracing::warn!(error = %err, "node watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            match event {
                watcher::Event::Init => seen.clear(),
                watcher::Event::InitApply(mut node) => {
                    node.metadata.managed_fields = None;
                    seen.insert(node.metadata.name.clone().unwrap_or_default());
                    self.cache().upsert_node(node);
                }
                watcher::Event::InitDone => {
                    let mut cache = self.cache();
                    let gone: Vec<String> = cache
                        .nodes
                        .keys()
                        .filter(|n| !seen.contains(*n))
                        .cloned()
                        .collect();
                    for name in gone {
                        cache.remove_node(&name);
                    }
                    drop(cache);
                    self.queue.move_all_to_active();
                }
                watcher::Event::Apply(mut node) => {
                    node.metadata.managed_fields = None;
                    self.cache().upsert_node(node);
                    self.queue.move_all_to_active();
                }
                watcher::Event::Delete(node) => {
                    self.cache()
                        .remove_node(node.metadata.name.as_deref().unwrap_or(""));
                }
            }
        }
    }

    /// Keeps one kind of storage object in the volume cache. Any change may
    /// make a waiting pod fit (a claim bound, a volume created, a CSINode
    /// limit raised), so it sends the unschedulable pods back to the
    /// active queue.
    async fn watch_volumes<K>(self: Arc<Self>, kind: &'static str) -> anyhow::Result<()>
    where
        K: VolumeObject
            + kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let mut seen: HashSet<String> = HashSet::new();
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        loop {
            let event = match stream.try_next().await {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(()),
                Err(err) => {
                    tracing::warn!(kind, error = %err, "watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            match event {
                watcher::Event::Init => seen.clear(),
                watcher::Event::InitApply(mut object) => {
                    object.meta_mut().managed_fields = None;
                    seen.insert(object.cache_key());
                    self.cache().volumes.upsert(object);
                }
                watcher::Event::InitDone => {
                    let mut cache = self.cache();
                    for key in cache.volumes.keys::<K>() {
                        if !seen.contains(&key) {
                            cache.volumes.remove::<K>(&key);
                        }
                    }
                    drop(cache);
                    self.queue.move_all_to_active();
                }
                watcher::Event::Apply(mut object) => {
                    object.meta_mut().managed_fields = None;
                    self.cache().volumes.upsert(object);
                    self.queue.move_all_to_active();
                    self.volume_changes.notify_waiters();
                }
                watcher::Event::Delete(object) => {
                    self.cache().volumes.remove::<K>(&object.cache_key());
                    self.queue.move_all_to_active();
                    self.volume_changes.notify_waiters();
                }
            }
        }
    }

    /// Keeps the PodDisruptionBudgets, which preemption reads, in the
    /// cache.
    async fn watch_pdbs(self: Arc<Self>) -> anyhow::Result<()> {
        let api: Api<PodDisruptionBudget> = Api::all(self.client.clone());
        let mut seen: HashSet<String> = HashSet::new();
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        let key = |pdb: &PodDisruptionBudget| rudder_runtime::informer::key_of(pdb);
        loop {
            let event = match stream.try_next().await {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(()),
                Err(err) => {
                    tracing::warn!(error = %err, "PodDisruptionBudget watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            match event {
                watcher::Event::Init => seen.clear(),
                watcher::Event::InitApply(pdb) => {
                    seen.insert(key(&pdb));
                    self.cache().upsert_pdb(pdb);
                }
                watcher::Event::InitDone => {
                    let mut cache = self.cache();
                    let gone: Vec<String> = cache
                        .pdbs
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for k in gone {
                        cache.remove_pdb(&k);
                    }
                }
                watcher::Event::Apply(pdb) => self.cache().upsert_pdb(pdb),
                watcher::Event::Delete(pdb) => self.cache().remove_pdb(&key(&pdb)),
            }
        }
    }

    async fn watch_pods(self: Arc<Self>) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let mut seen: HashSet<String> = HashSet::new();
        let mut known: HashMap<String, String> = HashMap::new(); // uid -> key
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        loop {
            let event = match stream.try_next().await {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(()),
                Err(err) => {
                    tracing::warn!(error = %err, "pod watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            match event {
                watcher::Event::Init => seen.clear(),
                watcher::Event::InitApply(pod) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    seen.insert(uid.clone());
                    self.on_pod(pod, &mut known);
                }
                watcher::Event::InitDone => {
                    let gone: Vec<(String, String)> = known
                        .iter()
                        .filter(|(uid, _)| !seen.contains(*uid))
                        .map(|(u, k)| (u.clone(), k.clone()))
                        .collect();
                    for (uid, key) in gone {
                        self.on_pod_gone(&uid, &key, &mut known);
                    }
                }
                watcher::Event::Apply(pod) => self.on_pod(pod, &mut known),
                watcher::Event::Delete(pod) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    let key = PodInfo::new(Arc::new(pod)).key;
                    self.on_pod_gone(&uid, &key, &mut known);
                }
            }
        }
    }

    fn on_pod(&self, mut pod: Pod, known: &mut HashMap<String, String>) {
        // Field ownership is of no use to scheduling and is most of a
        // pod's size.
        pod.metadata.managed_fields = None;
        let info = Arc::new(PodInfo::new(Arc::new(pod)));
        known.insert(info.uid.clone(), info.key.clone());
        let spec = info.spec();
        let phase = info.pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded" | "Failed"));
        match spec.node_name.as_deref().filter(|n| !n.is_empty()) {
            Some(node) => {
                self.queue.remove(&info.key);
                self.cache().clear_nomination(&info.uid);
                if finished {
                    self.cache().remove_pod(&info.uid);
                    self.queue.move_all_to_active();
                } else {
                    let node = node.to_owned();
                    self.cache().add_bound_pod(info, &node);
                }
            }
            None => {
                let ours = self.profiles.contains_key(
                    spec.scheduler_name
                        .as_deref()
                        .unwrap_or(crate::profile::DEFAULT_SCHEDULER_NAME),
                );
                let deleting = info.pod.metadata.deletion_timestamp.is_some();
                if !ours || deleting || finished {
                    self.queue.remove(&info.key);
                    self.cache().clear_nomination(&info.uid);
                } else if !self.cache().is_assumed_or_bound(&info.uid) {
                    self.queue.add_or_update(info);
                }
            }
        }
    }

    fn on_pod_gone(&self, uid: &str, key: &str, known: &mut HashMap<String, String>) {
        known.remove(uid);
        self.queue.remove(key);
        // A pod held at Permit stops waiting (as Kubernetes' "removed").
        self.waiting.reject(uid, "removed");
        let mut cache = self.cache();
        cache.remove_pod(uid);
        cache.clear_nomination(uid);
        drop(cache);
        // Room was freed.
        self.queue.move_all_to_active();
    }

    async fn schedule_loop(self: Arc<Self>) {
        let mut start = 0usize;
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        loop {
            let popped = self.queue.pop().await;
            let pod = popped.pod.clone();
            let scheduler_name = pod
                .spec()
                .scheduler_name
                .clone()
                .unwrap_or_else(|| crate::profile::DEFAULT_SCHEDULER_NAME.into());
            let Some(profile) = self.profiles.get(&scheduler_name).cloned() else {
                self.queue.done(&pod.key);
                continue;
            };
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (decision, mut state) = {
                let cache = self.cache();
                if cache.is_assumed_or_bound(&pod.uid) {
                    drop(cache);
                    self.queue.done(&pod.key);
                    continue;
                }
                let mut state = CycleState::default();
                let decision =
                    schedule_one_with_state(&profile, &cache, &pod, &mut start, seed, &mut state);
                drop(cache);
                (decision, state)
            };
            let decision = match decision {
                Decision::Node(node) => self.reserve_and_permit(&profile, &mut state, &pod, node),
                Decision::Unschedulable {
                    message,
                    nomination,
                } => Placement::Unschedulable {
                    message,
                    nomination,
                },
            };
            match decision {
                Placement::Bind {
                    node,
                    state,
                    waiting,
                } => {
                    self.queue.done(&pod.key);
                    // A pod held at Permit takes its binding slot only
                    // once allowed, so waiting pods never stall the loop.
                    let slot = match waiting {
                        None => self.bindings.clone().acquire_owned().await.ok(),
                        Some(_) => None,
                    };
                    let this = self.clone();
                    let attempts = popped.attempts;
                    tokio::spawn(async move {
                        this.binding_cycle(profile, state, pod, node, attempts, waiting, slot)
                            .await;
                    });
                }
                Placement::Unschedulable {
                    message,
                    nomination,
                } => {
                    if let Some(nomination) = &nomination {
                        self.cache().nominate(pod.clone(), &nomination.node);
                    }
                    self.queue.unschedulable(&pod.key);
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.report_unschedulable(pod, message, nomination).await
                    });
                }
            }
        }
    }

    /// Assumes the pod on `node` and runs Reserve on it under the same
    /// cache lock, then Permit; undoes Reserve if either refuses.
    fn reserve_and_permit(
        &self,
        profile: &Profile,
        state: &mut CycleState,
        pod: &Arc<PodInfo>,
        node: String,
    ) -> Placement {
        {
            let mut cache = self.cache();
            cache.assume(pod.clone(), &node);
            let status = runtime::run_reserve(profile, state, pod, &node, &mut cache);
            if !status.is_success() {
                runtime::run_unreserve(profile, state, pod, &node, &mut cache);
                cache.forget(&pod.uid);
                return Placement::Unschedulable {
                    message: status.reasons.join(", "),
                    nomination: None,
                };
            }
        }
        match runtime::run_permit(profile, state, pod, &node, &self.waiting) {
            PermitOutcome::Allow => Placement::Bind {
                node,
                state: std::mem::take(state),
                waiting: None,
            },
            PermitOutcome::Wait(waiting) => Placement::Bind {
                node,
                state: std::mem::take(state),
                waiting: Some(waiting),
            },
            PermitOutcome::Reject(status) => {
                let mut cache = self.cache();
                runtime::run_unreserve(profile, state, pod, &node, &mut cache);
                cache.forget(&pod.uid);
                Placement::Unschedulable {
                    message: status.reasons.join(", "),
                    nomination: None,
                }
            }
        }
    }

    /// The binding cycle, in its own task: Permit's wait, PreBind, Bind,
    /// PostBind. A failure unreserves the pod and sends it back to the
    /// queue.
    #[allow(clippy::too_many_arguments)]
    async fn binding_cycle(
        self: Arc<Self>,
        profile: Arc<Profile>,
        state: CycleState,
        pod: Arc<PodInfo>,
        node: String,
        attempts: u32,
        waiting: Option<Arc<WaitingPod>>,
        mut slot: Option<OwnedSemaphorePermit>,
    ) {
        if let Some(waiting) = waiting {
            let status = waiting.wait().await;
            self.waiting.remove(&pod.uid);
            if !status.is_success() {
                return self
                    .binding_failed(&profile, &state, &pod, &node, attempts, status)
                    .await;
            }
            slot = self.bindings.clone().acquire_owned().await.ok();
        }
        let _slot = slot;
        let status = runtime::run_pre_bind(&profile, self.as_ref(), &state, &pod, &node).await;
        if !status.is_success() {
            return self
                .binding_failed(&profile, &state, &pod, &node, attempts, status)
                .await;
        }
        let status = runtime::run_bind(&profile, self.as_ref(), &state, &pod, &node).await;
        if !status.is_success() {
            return self
                .binding_failed(&profile, &state, &pod, &node, attempts, status)
                .await;
        }
        tracing::debug!(pod = %pod.key, node, "bound");
        runtime::run_post_bind(&profile, &state, &pod, &node);
    }

    /// Kubernetes' `handleBindingCycleError`: Unreserve, forget the
    /// assumed pod (its room is free again), and unless the pod is gone,
    /// schedule it again: a rejected pod waits for a cluster change, a
    /// failed one retries after a back-off.
    async fn binding_failed(
        &self,
        profile: &Profile,
        state: &CycleState,
        pod: &Arc<PodInfo>,
        node: &str,
        attempts: u32,
        status: Status,
    ) {
        let message = status.reasons.join(", ");
        {
            let mut cache = self.cache();
            runtime::run_unreserve(profile, state, pod, node, &mut cache);
            cache.forget(&pod.uid);
        }
        self.queue.move_all_to_active();
        if self.pod_is_gone(pod).await {
            tracing::debug!(pod = %pod.key, node, reason = %message, "binding stopped: the pod is gone");
            return;
        }
        tracing::info!(pod = %pod.key, node, attempts, error = %message, "binding cycle failed; will retry");
        let rejected = matches!(
            status.code,
            Code::Unschedulable | Code::UnschedulableAndUnresolvable
        );
        self.queue.requeue(pod.clone(), attempts, rejected);
        if rejected {
            self.report_unschedulable(pod.clone(), message, None).await;
        } else {
            let name = pod.pod.metadata.name.clone().unwrap_or_default();
            self.event(
                &pod.namespace,
                &name,
                &pod.uid,
                "FailedScheduling",
                &message,
                "Warning",
            )
            .await;
        }
    }

    /// Whether the pod no longer waits for this scheduler: deleted (or
    /// being deleted), replaced by another of the same name, or bound.
    async fn pod_is_gone(&self, pod: &PodInfo) -> bool {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let name = pod.pod.metadata.name.as_deref().unwrap_or_default();
        match api.get_opt(name).await {
            Ok(Some(current)) => {
                current.metadata.uid.as_deref() != Some(pod.uid.as_str())
                    || current.metadata.deletion_timestamp.is_some()
                    || current
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_some_and(|n| !n.is_empty())
            }
            Ok(None) => true,
            Err(err) => {
                tracing::debug!(pod = %pod.key, error = %err, "cannot look the pod up");
                false
            }
        }
    }

    /// Tells the user why the pod waits (condition and event), and acts on
    /// a preemption decision.
    async fn report_unschedulable(
        &self,
        pod: Arc<PodInfo>,
        message: String,
        nomination: Option<Nomination>,
    ) {
        let name = pod.pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        if let Some(nomination) = &nomination {
            let patch = json!({"status": {"nominatedNodeName": nomination.node}});
            if let Err(err) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::info!(pod = %pod.key, error = %err, "cannot nominate a node");
            }
            for (victim, uid) in &nomination.victims {
                let (ns, victim_name) = victim.split_once('/').unwrap_or(("default", victim));
                let victims: Api<Pod> = Api::namespaced(self.client.clone(), ns);
                let params = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match victims.delete(victim_name, &params).await {
                    Ok(_) => {
                        self.event(
                            ns,
                            victim_name,
                            uid,
                            "Preempted",
                            &format!("Preempted by pod {} on node {}", pod.uid, nomination.node),
                            "Normal",
                        )
                        .await
                    }
                    Err(err) => tracing::info!(victim, error = %err, "cannot preempt"),
                }
            }
        }
        if !self.queue.note_message(&pod.key, &message) {
            return;
        }
        let now = rudder_apimachinery::time::now_rfc3339();
        let condition = json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null, "lastTransitionTime": now,
        }]}});
        if let Err(err) = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(&condition),
            )
            .await
        {
            tracing::debug!(pod = %pod.key, error = %err, "cannot set PodScheduled=False");
        }
        self.event(
            &pod.namespace,
            &name,
            &pod.uid,
            "FailedScheduling",
            &message,
            "Warning",
        )
        .await;
    }

    async fn event(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        reason: &str,
        message: &str,
        kind: &str,
    ) {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), namespace);
        let now = rudder_apimachinery::time::now_rfc3339();
        let event = json!({
            "metadata": {"generateName": format!("{name}.")},
            "involvedObject": {"kind": "Pod", "namespace": namespace, "name": name, "uid": uid, "apiVersion": "v1"},
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "default-scheduler"},
            "reportingComponent": "default-scheduler",
            "reportingInstance": "default-scheduler",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let Ok(event) = serde_json::from_value(event) else {
            return;
        };
        if let Err(err) = events.create(&PostParams::default(), &event).await {
            tracing::debug!(error = %err, "cannot record an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{cache, node, pod, pod_requesting};
    use crate::profile::SchedulerConfiguration;
    use serde_json::json;

    #[test]
    fn the_feasible_node_target_follows_kubernetes() {
        assert_eq!(feasible_nodes_to_find(50, 0), 50);
        assert_eq!(feasible_nodes_to_find(1000, 0), 420);
        assert_eq!(feasible_nodes_to_find(5000, 0), 500);
        assert_eq!(feasible_nodes_to_find(5000, 100), 5000);
    }

    #[test]
    fn the_default_profile_follows_volumes() {
        use crate::plugins::testing::{pod_with_claims, pv_on, pvc, storage_class};
        let profiles = SchedulerConfiguration::default().profiles().unwrap();
        let profile = &profiles["default-scheduler"];
        let mut c = cache(vec![
            node("a", "4", "8Gi", json!({})),
            node("b", "4", "8Gi", json!({})),
        ]);
        c.volumes
            .upsert(storage_class("local", "WaitForFirstConsumer"));
        c.volumes
            .upsert(pvc("data", json!({"spec": {"storageClassName": "local"}})));
        c.volumes.upsert(pv_on(
            "local-b",
            "kubernetes.io/hostname",
            "b",
            json!({"spec": {"storageClassName": "local"}}),
        ));
        let mut start = 0;
        for _ in 0..4 {
            assert!(matches!(
                schedule_one(profile, &c, &pod_with_claims("p", &["data"]), &mut start, 7),
                Decision::Node(n) if n == "b"
            ));
        }
        match schedule_one(profile, &c, &pod_with_claims("q", &["nope"]), &mut start, 7) {
            Decision::Unschedulable { message, .. } => assert_eq!(
                message,
                "0/2 nodes are available: 2 persistentvolumeclaim \"nope\" not found."
            ),
            Decision::Node(n) => panic!("placed on {n}"),
        }
    }

    #[test]
    fn a_cycle_picks_a_fitting_node_or_explains() {
        let profiles = SchedulerConfiguration::default().profiles().unwrap();
        let profile = &profiles["default-scheduler"];
        let mut c = cache(vec![
            node("a", "4", "8Gi", json!({})),
            node(
                "b",
                "4",
                "8Gi",
                json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
            ),
        ]);
        c.add_bound_pod(pod_requesting("busy", "3", "1Gi"), "a");
        let mut start = 0;
        match schedule_one(
            profile,
            &c,
            &pod_requesting("p", "500m", "1Gi"),
            &mut start,
            7,
        ) {
            Decision::Node(n) => assert_eq!(n, "a"),
            Decision::Unschedulable { message, .. } => panic!("{message}"),
        }
        match schedule_one(
            profile,
            &c,
            &pod_requesting("big", "2", "1Gi"),
            &mut start,
            7,
        ) {
            Decision::Unschedulable {
                message,
                nomination,
            } => {
                assert_eq!(
                    message,
                    "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: db}."
                );
                assert_eq!(nomination, None, "equal priority: no preemption");
            }
            Decision::Node(n) => panic!("placed on {n}"),
        }
        let selective = pod(
            "sel",
            json!({"nodeSelector": {"kubernetes.io/hostname": "b"}, "tolerations": [{"operator": "Exists"}]}),
        );
        assert!(
            matches!(schedule_one(profile, &c, &selective, &mut start, 7), Decision::Node(n) if n == "b")
        );
    }
}
