//! The kubelet role: one cluster-wide watch of bound pods, and a few
//! workers that report pods on this simulator's nodes Running and finish
//! their deletions.
//!
//! Only a small record per pod is kept (its uid, node and IP); the full
//! object is held only while there is something to do with it, so that the
//! simulator stays small with hundreds of thousands of pods.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::Client;
use serde_json::json;
use tokio::time::Instant;

use crate::addressing::{Claim, PodIpPool};
use crate::list_watch::Change;
use crate::node::{Fleet, FIELD_MANAGER};
use crate::pod_status::{self, PodAction};
use crate::retry::{api_code, is_transient};
use crate::work_queue::{Completion, WorkQueue};

/// Pods worked on at once.
pub(crate) const POD_WORKERS: usize = 16;

/// Selects bound pods only: the simulator has nothing to do with the
/// others, and a pod enters the watch when it is bound.
pub(crate) const BOUND_PODS: &str = "spec.nodeName!=";

/// `namespace/name`.
pub(crate) type PodKey = String;

pub(crate) struct Kubelet {
    client: Client,
    fleet: Arc<Fleet>,
    tracker: Mutex<PodTracker>,
    queue: WorkQueue<PodKey>,
}

/// What the simulator knows of the pods on its nodes.
struct PodTracker {
    pods: HashMap<PodKey, TrackedPod>,
    /// One per node, in fleet order.
    pools: Vec<PodIpPool>,
    /// Per node, pods that found its pool empty, to be served as addresses
    /// are freed.
    waiting_for_ip: Vec<VecDeque<PodKey>>,
    /// While a (re-)list is under way: the pods it has shown, and the pods
    /// with work, held back until every listed pod's IP is claimed so that
    /// no address a running pod holds is handed out again.
    relist: Option<Relist>,
}

#[derive(Default)]
struct Relist {
    seen: HashSet<PodKey>,
    work: Vec<PodKey>,
}

struct TrackedPod {
    uid: String,
    /// Position of its node in the fleet.
    node: usize,
    /// From its node's pool; `None` for host-network pods and until one is
    /// assigned.
    pod_ip: Option<Ipv4Addr>,
    /// The latest object, while there is something to do with it.
    work: Option<Arc<Pod>>,
    /// When the simulator first saw the pod's deletion: its "containers"
    /// take [`STOP_TIME`] to stop, as real ones take a moment.
    stopping_since: Option<Instant>,
}

/// How long a simulated pod takes to stop after a graceful delete (never
/// longer than its grace period). A real node never completes a deletion
/// within the same millisecond; clients such as `kubectl delete` that list
/// and then watch for the deletion depend on that.
const STOP_TIME: Duration = Duration::from_secs(1);

pub(crate) fn pod_key(pod: &Pod) -> PodKey {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// What a worker does with a pod, decided under the lock and carried out
/// after it.
enum Step {
    Delete(Arc<Pod>),
    MarkRunning {
        pod: Arc<Pod>,
        host_ip: Ipv4Addr,
        pod_ip: Ipv4Addr,
    },
}

impl Kubelet {
    pub(crate) fn new(client: Client, fleet: Arc<Fleet>) -> Self {
        let pools = fleet
            .nodes
            .iter()
            .map(|node| PodIpPool::new(node.addresses.pod_cidr))
            .collect();
        let waiting_for_ip = fleet.nodes.iter().map(|_| VecDeque::new()).collect();
        Kubelet {
            client,
            fleet,
            tracker: Mutex::new(PodTracker {
                pods: HashMap::new(),
                pools,
                waiting_for_ip,
                relist: None,
            }),
            queue: WorkQueue::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PodTracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in a change from the watch of bound pods.
    pub(crate) fn on_pod_change(&self, change: Change<Pod>) {
        let mut tracker = self.lock();
        match change {
            Change::ListStarted => tracker.relist = Some(Relist::default()),
            Change::Listed(pods) => {
                for pod in pods {
                    self.observe(&mut tracker, pod);
                }
            }
            Change::ListDone => {
                let Some(relist) = tracker.relist.take() else {
                    return;
                };
                let gone: Vec<PodKey> = tracker
                    .pods
                    .keys()
                    .filter(|key| !relist.seen.contains(*key))
                    .cloned()
                    .collect();
                for key in gone {
                    self.forget(&mut tracker, &key);
                }
                for key in relist.work {
                    self.queue.add(key);
                }
            }
            Change::Applied(pod) => self.observe(&mut tracker, pod),
            Change::Deleted(pod) => {
                let key = pod_key(&pod);
                let same_pod = tracker
                    .pods
                    .get(&key)
                    .is_some_and(|tracked| Some(&tracked.uid) == pod.metadata.uid.as_ref());
                if same_pod {
                    self.forget(&mut tracker, &key);
                }
            }
        }
    }

    fn observe(&self, tracker: &mut PodTracker, pod: Pod) {
        let key = pod_key(&pod);
        if let Some(relist) = tracker.relist.as_mut() {
            relist.seen.insert(key.clone());
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let node = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.as_deref())
            .and_then(|name| self.fleet.position(name));
        let replaced = tracker
            .pods
            .get(&key)
            .is_some_and(|tracked| Some(tracked.node) != node || tracked.uid != uid);
        if replaced {
            // A new pod of the same name: the old one is gone.
            self.forget(tracker, &key);
        }
        let Some(node) = node else {
            return; // Another node's pod.
        };
        let PodTracker {
            pods,
            pools,
            relist,
            ..
        } = tracker;
        let tracked = pods.entry(key.clone()).or_insert_with(|| TrackedPod {
            uid,
            node,
            pod_ip: None,
            work: None,
            stopping_since: None,
        });
        if tracked.pod_ip.is_none() && !pod_status::uses_host_network(&pod) {
            // A pod that already has an address from this node's range
            // (given by an earlier run of the simulator) keeps it.
            if let Some(ip) = pod_status::pod_ip(&pod) {
                match pools[node].claim(ip) {
                    Claim::Claimed => tracked.pod_ip = Some(ip),
                    Claim::InUse => {
                        tracing::warn!(pod = %key, %ip, "pod reports an IP another pod holds")
                    }
                    Claim::Outside => {}
                }
            }
        }
        if pod_status::next_action(&pod) == PodAction::Nothing {
            tracked.work = None;
            return;
        }
        tracked.work = Some(Arc::new(pod));
        match relist {
            Some(relist) => relist.work.push(key),
            None => self.queue.add(key),
        }
    }

    /// Drops a pod that is gone, freeing its IP for a waiting pod.
    fn forget(&self, tracker: &mut PodTracker, key: &str) {
        let Some(tracked) = tracker.pods.remove(key) else {
            return;
        };
        if let Some(ip) = tracked.pod_ip {
            tracker.pools[tracked.node].release(ip);
            if let Some(waiting) = tracker.waiting_for_ip[tracked.node].pop_front() {
                self.queue.add(waiting);
            }
        }
    }

    /// The node at `position` is maintained again: serve the pods that
    /// waited for it.
    pub(crate) fn node_returned(&self, position: usize) {
        let tracker = self.lock();
        for (key, tracked) in &tracker.pods {
            if tracked.node == position && tracked.work.is_some() {
                self.queue.add(key.clone());
            }
        }
    }

    /// Queues retries whose backoff is over. Runs for ever.
    pub(crate) async fn run_retries(&self) {
        self.queue.run_delays().await;
    }

    /// Works through queued pods. Runs for ever.
    pub(crate) async fn run_worker(&self) {
        loop {
            let key = self.queue.next().await;
            let completion = match self.sync(&key).await {
                Ok(()) => Completion::Finished,
                Err(err) => {
                    let failures = self.queue.done(&key, Completion::RetryLater);
                    // Logs the 1st, 2nd, 4th, 8th… failure: a long outage
                    // stays visible without flooding the log.
                    if failures.is_power_of_two() {
                        tracing::warn!(pod = %key, failures, error = %err, "updating pod failed; retrying");
                    }
                    continue;
                }
            };
            self.queue.done(&key, completion);
        }
    }

    /// Brings the pod at `key` to where its node would: Running, or gone.
    /// Errs only when trying again may help.
    async fn sync(&self, key: &str) -> kube::Result<()> {
        let Some(step) = self.next_step(key) else {
            return Ok(());
        };
        let (pod, result) = match step {
            Step::Delete(pod) => {
                let result = self.delete(&pod).await;
                (pod, result)
            }
            Step::MarkRunning {
                pod,
                host_ip,
                pod_ip,
            } => {
                let result = self.mark_running(&pod, host_ip, pod_ip).await;
                (pod, result)
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(err) if is_transient(&err) => {
                // Put the work back unless a newer version replaced it.
                let mut tracker = self.lock();
                if let Some(tracked) = tracker.pods.get_mut(key) {
                    if Some(&tracked.uid) == pod.metadata.uid.as_ref() && tracked.work.is_none() {
                        tracked.work = Some(pod);
                    }
                }
                Err(err)
            }
            // 404: the pod is gone. 409: it changed since (a newer version
            // is on its way through the watch, or another pod took the
            // name). Either way the watch brings what to do next.
            Err(err) if matches!(api_code(&err), Some(404 | 409)) => Ok(()),
            Err(err) => {
                tracing::warn!(pod = %key, error = %err, "the API server refused a pod update; leaving the pod");
                Ok(())
            }
        }
    }

    fn next_step(&self, key: &str) -> Option<Step> {
        let mut tracker = self.lock();
        let PodTracker {
            pods,
            pools,
            waiting_for_ip,
            ..
        } = &mut *tracker;
        let tracked = pods.get_mut(key)?;
        let pod = tracked.work.take()?;
        let node = &self.fleet.nodes[tracked.node];
        if !node.is_managed() {
            // Kept for when (if) the node comes back.
            tracked.work = Some(pod);
            return None;
        }
        match pod_status::next_action(&pod) {
            PodAction::Nothing => None,
            PodAction::Delete => {
                let since = *tracked.stopping_since.get_or_insert_with(Instant::now);
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(0)
                    .max(0) as u64;
                let done_at = since + STOP_TIME.min(Duration::from_secs(grace));
                if Instant::now() < done_at {
                    // Still "stopping": look again then.
                    tracked.work = Some(pod);
                    self.queue.add_at(key.to_owned(), done_at);
                    return None;
                }
                Some(Step::Delete(pod))
            }
            PodAction::MarkRunning => {
                let host_ip = node.addresses.node_ip;
                let pod_ip = if pod_status::uses_host_network(&pod) {
                    host_ip
                } else if let Some(ip) = tracked.pod_ip {
                    ip
                } else if let Some(ip) = pools[tracked.node].allocate() {
                    tracked.pod_ip = Some(ip);
                    ip
                } else {
                    tracing::warn!(pod = %key, node = %node.name, "no pod IP left on the node; the pod waits for one");
                    tracked.work = Some(pod);
                    waiting_for_ip[tracked.node].push_back(key.to_owned());
                    return None;
                };
                Some(Step::MarkRunning {
                    pod,
                    host_ip,
                    pod_ip,
                })
            }
        }
    }

    fn pods(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
        )
    }

    /// Ends a graceful deletion at once, as a node whose containers are
    /// already stopped does: a delete with grace period 0. The uid
    /// precondition keeps it from deleting a new pod of the same name.
    async fn delete(&self, pod: &Pod) -> kube::Result<()> {
        let params = DeleteParams::default()
            .grace_period(0)
            .preconditions(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            });
        self.pods(pod)
            .delete(pod.metadata.name.as_deref().unwrap_or_default(), &params)
            .await
            .map(drop)
    }

    /// Reports the pod Running and Ready. The patch carries the
    /// resourceVersion it was computed from, so it never overwrites a newer
    /// version of the pod (or a new pod of the same name).
    async fn mark_running(
        &self,
        pod: &Pod,
        host_ip: Ipv4Addr,
        pod_ip: Ipv4Addr,
    ) -> kube::Result<()> {
        let status = pod_status::running_status(pod, host_ip, pod_ip, Timestamp::now());
        let patch = json!({
            "metadata": {"resourceVersion": pod.metadata.resource_version},
            "status": status,
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        self.pods(pod)
            .patch_status(
                pod.metadata.name.as_deref().unwrap_or_default(),
                &params,
                &Patch::Merge(&patch),
            )
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::SimulateOptions;

    fn kubelet() -> Kubelet {
        let fleet = Fleet::plan(&SimulateOptions {
            nodes: 2,
            name_prefix: "sim-".into(),
            ..SimulateOptions::default()
        })
        .unwrap();
        // Never used to send anything: these tests only feed changes in.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        Kubelet::new(client, Arc::new(fleet))
    }

    fn pod(name: &str, uid: &str, node: &str, pod_ip: Option<&str>) -> Pod {
        let mut status = json!({"phase": "Pending"});
        if let Some(ip) = pod_ip {
            status = json!({
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": "True"}],
            });
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "1"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn planned_ip(kubelet: &Kubelet, key: &str) -> Option<Ipv4Addr> {
        match kubelet.next_step(key) {
            Some(Step::MarkRunning { pod_ip, .. }) => Some(pod_ip),
            _ => None,
        }
    }

    fn mark_nodes_managed(kubelet: &Kubelet) {
        for node in &kubelet.fleet.nodes {
            node.observe_present("uid");
        }
    }

    #[tokio::test]
    async fn only_pods_on_simulated_nodes_are_tracked() {
        let kubelet = kubelet();
        kubelet.on_pod_change(Change::Applied(pod("a", "u1", "sim-1", None)));
        kubelet.on_pod_change(Change::Applied(pod("b", "u2", "real-node", None)));
        let tracker = kubelet.lock();
        assert!(tracker.pods.contains_key("default/a"));
        assert!(!tracker.pods.contains_key("default/b"));
    }

    #[tokio::test]
    async fn a_relist_claims_running_pods_ips_before_handing_out_new_ones() {
        let kubelet = kubelet();
        mark_nodes_managed(&kubelet);
        kubelet.on_pod_change(Change::ListStarted);
        kubelet.on_pod_change(Change::Listed(vec![pod("new", "u1", "sim-1", None)]));
        assert_eq!(
            kubelet.queue_len(),
            0,
            "work is held back until the list is complete"
        );
        kubelet.on_pod_change(Change::Listed(vec![pod(
            "old",
            "u2",
            "sim-1",
            Some("10.244.1.2"),
        )]));
        kubelet.on_pod_change(Change::ListDone);
        assert_eq!(kubelet.queue_len(), 1);
        assert_eq!(
            planned_ip(&kubelet, "default/new"),
            Some(Ipv4Addr::new(10, 244, 1, 3))
        );
    }

    #[tokio::test]
    async fn ips_are_freed_when_pods_go_and_not_before() {
        let kubelet = kubelet();
        mark_nodes_managed(&kubelet);
        kubelet.on_pod_change(Change::Applied(pod("a", "u1", "sim-2", None)));
        assert_eq!(
            planned_ip(&kubelet, "default/a"),
            Some(Ipv4Addr::new(10, 244, 2, 2))
        );
        // Still alive (e.g. being deleted): the address stays taken.
        kubelet.on_pod_change(Change::Applied(pod("b", "u2", "sim-2", None)));
        assert_eq!(
            planned_ip(&kubelet, "default/b"),
            Some(Ipv4Addr::new(10, 244, 2, 3))
        );
        kubelet.on_pod_change(Change::Deleted(pod("a", "u1", "sim-2", None)));
        let tracker = kubelet.lock();
        assert!(!tracker.pods.contains_key("default/a"));
        assert_eq!(
            tracker.pods["default/b"].pod_ip,
            Some(Ipv4Addr::new(10, 244, 2, 3))
        );
    }

    #[tokio::test]
    async fn a_relist_forgets_pods_deleted_while_unwatched() {
        let kubelet = kubelet();
        mark_nodes_managed(&kubelet);
        kubelet.on_pod_change(Change::Applied(pod("a", "u1", "sim-1", Some("10.244.1.9"))));
        kubelet.on_pod_change(Change::ListStarted);
        kubelet.on_pod_change(Change::Listed(vec![]));
        kubelet.on_pod_change(Change::ListDone);
        let mut tracker = kubelet.lock();
        assert!(tracker.pods.is_empty());
        assert_eq!(
            tracker.pools[0].claim(Ipv4Addr::new(10, 244, 1, 9)),
            Claim::Claimed,
            "the address was freed"
        );
    }

    #[tokio::test]
    async fn pods_of_a_deleted_node_wait_for_it() {
        let kubelet = kubelet();
        mark_nodes_managed(&kubelet);
        kubelet.fleet.nodes[0].observe_gone();
        kubelet.on_pod_change(Change::Applied(pod("a", "u1", "sim-1", None)));
        assert!(kubelet.next_step("default/a").is_none());
        assert!(kubelet.lock().pods["default/a"].work.is_some());
    }

    impl Kubelet {
        fn queue_len(&self) -> usize {
            self.queue.len()
        }
    }
}
