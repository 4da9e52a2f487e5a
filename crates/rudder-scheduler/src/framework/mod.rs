//! The scheduling framework: the extension points a scheduling cycle runs
//! through and the traits plugins implement, after the Kubernetes
//! scheduler framework. A plugin implements only the points it needs.

use std::any::Any;
use std::collections::HashMap;
use std::sync::MutexGuard;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::cache::{ClusterCache, NodeInfo, PodInfo};

pub mod runtime;
pub mod waiting;

pub use waiting::{WaitingPod, WaitingPods};

/// Highest score a plugin gives a node (after normalization).
pub const MAX_NODE_SCORE: i64 = 100;

/// How a plugin judged a pod (on a node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Code {
    Success,
    /// Does not fit now; preemption might help.
    Unschedulable,
    /// Does not fit, and removing pods would not change that.
    UnschedulableAndUnresolvable,
    /// The plugin itself failed.
    Error,
    /// Skip this plugin's later extension points for this pod.
    Skip,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    /// The reasons users read in FailedScheduling events.
    pub reasons: Vec<String>,
}

impl Status {
    pub fn success() -> Status {
        Status {
            code: Code::Success,
            reasons: Vec::new(),
        }
    }

    pub fn skip() -> Status {
        Status {
            code: Code::Skip,
            reasons: Vec::new(),
        }
    }

    pub fn unschedulable(reason: impl Into<String>) -> Status {
        Status {
            code: Code::Unschedulable,
            reasons: vec![reason.into()],
        }
    }

    pub fn unresolvable(reason: impl Into<String>) -> Status {
        Status {
            code: Code::UnschedulableAndUnresolvable,
            reasons: vec![reason.into()],
        }
    }

    pub fn error(reason: impl Into<String>) -> Status {
        Status {
            code: Code::Error,
            reasons: vec![reason.into()],
        }
    }

    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }
}

/// Data plugins share within one scheduling cycle (PreFilter results
/// that Filter reads, PreScore results that Score reads).
#[derive(Default)]
pub struct CycleState {
    data: HashMap<&'static str, Box<dyn Any + Send + Sync>>,
}

impl CycleState {
    pub fn write<T: Any + Send + Sync>(&mut self, key: &'static str, value: T) {
        self.data.insert(key, Box::new(value));
    }

    pub fn read<T: Any + Send + Sync>(&self, key: &'static str) -> Option<&T> {
        self.data.get(key)?.downcast_ref()
    }
}

pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
}

/// Runs once per pod before filtering: precomputes, or rejects outright.
pub trait PreFilterPlugin: Plugin {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, cache: &ClusterCache) -> Status;
}

/// Decides whether a node can run the pod.
pub trait FilterPlugin: Plugin {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status;
}

/// Runs once per pod before scoring, over the feasible nodes.
pub trait PreScorePlugin: Plugin {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        nodes: &[&NodeInfo],
        cache: &ClusterCache,
    ) -> Status;
}

/// Ranks a feasible node; `normalize` maps the raw scores to
/// 0..=MAX_NODE_SCORE when they are not already.
pub trait ScorePlugin: Plugin {
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64;

    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, _scores: &mut [i64]) {}
}

/// What the scheduler lends plugins whose work reaches beyond one
/// scheduling cycle (Kubernetes' framework `Handle`): the API client, the
/// cache, and the pods waiting at Permit.
pub trait Handle: Send + Sync {
    fn client(&self) -> &kube::Client;
    /// The cache, locked: never hold it across an `.await`.
    fn cache(&self) -> MutexGuard<'_, ClusterCache>;
    /// Notified on every PersistentVolume and claim change.
    fn volume_changes(&self) -> &tokio::sync::Notify;
    /// How long VolumeBinding's PreBind waits for claims to be bound.
    fn volume_bind_timeout(&self) -> Duration;
    /// Pods held at Permit; plugins allow or reject them through it.
    fn waiting_pods(&self) -> &WaitingPods;
}

/// Runs on the assumed pod, in the scheduling cycle and under the cache
/// lock, to take what the pod will use (volumes, devices). When a later
/// step fails, `unreserve` runs on every Reserve plugin in reverse order,
/// so it must cope with a `reserve` that never ran or failed.
pub trait ReservePlugin: Plugin {
    fn reserve(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        node: &str,
        cache: &mut ClusterCache,
    ) -> Status;

    fn unreserve(&self, state: &CycleState, pod: &PodInfo, node: &str, cache: &mut ClusterCache);
}

/// What a Permit plugin says about binding a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermitDecision {
    Allow,
    /// Hold the pod (off the scheduling loop) until the plugin allows or
    /// rejects it through [`WaitingPods`], or the timeout rejects it.
    Wait(Duration),
    /// Do not bind: the reasons are told to the user.
    Reject(Status),
}

/// The last say before binding (gang scheduling, quotas).
pub trait PermitPlugin: Plugin {
    fn permit(&self, state: &mut CycleState, pod: &PodInfo, node: &str) -> PermitDecision;
}

/// Runs in the binding task before Bind (writing the pod's volumes and
/// waiting for them).
pub trait PreBindPlugin: Plugin {
    fn pre_bind<'a>(
        &'a self,
        handle: &'a dyn Handle,
        state: &'a CycleState,
        pod: &'a PodInfo,
        node: &'a str,
    ) -> BoxFuture<'a, Status>;
}

/// Binds the pod to the node; `Skip` leaves it to the next Bind plugin.
pub trait BindPlugin: Plugin {
    fn bind<'a>(
        &'a self,
        handle: &'a dyn Handle,
        state: &'a CycleState,
        pod: &'a PodInfo,
        node: &'a str,
    ) -> BoxFuture<'a, Status>;
}

/// Informed once the pod is bound.
pub trait PostBindPlugin: Plugin {
    fn post_bind(&self, state: &CycleState, pod: &PodInfo, node: &str);
}

/// What the filters said about each node, for PostFilter and the
/// FailedScheduling message.
pub type NodeStatuses = HashMap<String, Status>;

/// Runs when no node fits (preemption).
pub trait PostFilterPlugin: Plugin {
    fn post_filter(
        &self,
        pod: &PodInfo,
        cache: &ClusterCache,
        statuses: &NodeStatuses,
        filters: &[&dyn FilterPlugin],
        pre_filters: &[&dyn PreFilterPlugin],
    ) -> Option<Nomination>;
}

/// A preemption decision: the node the pod will go to once the victims
/// are gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nomination {
    pub node: String,
    /// `namespace/name` and uid of each pod to evict.
    pub victims: Vec<(String, String)>,
}

/// Turns per-node reasons into the sentence users know:
/// `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {a: b}.`
pub fn unschedulable_message(total_nodes: usize, statuses: &NodeStatuses) -> String {
    let mut histogram: HashMap<&str, usize> = HashMap::new();
    for status in statuses.values() {
        for reason in &status.reasons {
            *histogram.entry(reason.as_str()).or_default() += 1;
        }
    }
    let mut parts: Vec<String> = histogram.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        format!("0/{total_nodes} nodes are available.")
    } else {
        format!("0/{total_nodes} nodes are available: {}.", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_counts_reasons_like_kubernetes() {
        let mut statuses = NodeStatuses::new();
        statuses.insert("a".into(), Status::unschedulable("Insufficient cpu"));
        statuses.insert(
            "b".into(),
            Status::unresolvable("node(s) had untolerated taint {dedicated: db}"),
        );
        statuses.insert(
            "c".into(),
            Status::unresolvable("node(s) had untolerated taint {dedicated: db}"),
        );
        assert_eq!(
            unschedulable_message(3, &statuses),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: db}."
        );
        assert_eq!(
            unschedulable_message(0, &NodeStatuses::new()),
            "0/0 nodes are available."
        );
    }

    #[test]
    fn cycle_state_is_typed() {
        let mut state = CycleState::default();
        state.write("k", 5usize);
        assert_eq!(state.read::<usize>("k"), Some(&5));
        assert_eq!(state.read::<String>("k"), None);
    }
}
