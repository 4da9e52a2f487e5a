//! NodeResourcesFit: the node has room for the pod's requests (cpu,
//! memory, ephemeral storage, pods, extended resources); scores nodes by
//! how allocated they would be (LeastAllocated spreads, MostAllocated packs).

use crate::cache::{NodeInfo, PodInfo, Resources};
use crate::framework::{CycleState, FilterPlugin, Plugin, ScorePlugin, Status, MAX_NODE_SCORE};

pub const NAME: &str = "NodeResourcesFit";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScoringStrategy {
    #[default]
    LeastAllocated,
    MostAllocated,
}

#[derive(Default)]
pub struct NodeResourcesFit {
    pub strategy: ScoringStrategy,
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// The reasons a pod does not fit, one per short resource.
pub fn insufficient(requests: &Resources, node: &NodeInfo) -> Vec<String> {
    let free = |alloc: i64, used: i64| alloc - used;
    let mut reasons = Vec::new();
    if node.requested.pods + 1 > node.allocatable.pods {
        reasons.push("Too many pods".to_owned());
    }
    if requests.milli_cpu > 0
        && requests.milli_cpu > free(node.allocatable.milli_cpu, node.requested.milli_cpu)
    {
        reasons.push("Insufficient cpu".to_owned());
    }
    if requests.memory > 0 && requests.memory > free(node.allocatable.memory, node.requested.memory)
    {
        reasons.push("Insufficient memory".to_owned());
    }
    if requests.ephemeral_storage > 0
        && requests.ephemeral_storage
            > free(
                node.allocatable.ephemeral_storage,
                node.requested.ephemeral_storage,
            )
    {
        reasons.push("Insufficient ephemeral-storage".to_owned());
    }
    for (name, want) in &requests.scalar {
        if *want <= 0 {
            continue;
        }
        let alloc = node.allocatable.scalar.get(name).copied().unwrap_or(0);
        let used = node.requested.scalar.get(name).copied().unwrap_or(0);
        if *want > alloc - used {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

impl FilterPlugin for NodeResourcesFit {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let reasons = insufficient(&pod.requests, node);
        if reasons.is_empty() {
            Status::success()
        } else {
            Status {
                code: crate::framework::Code::Unschedulable,
                reasons,
            }
        }
    }
}

/// Requests used for scoring: a pod without requests still counts as a
/// little (100m CPU, 200Mi memory), so best-effort pods spread too.
pub fn scoring_requests(requests: &Resources) -> (i64, i64) {
    let cpu = if requests.milli_cpu == 0 {
        100
    } else {
        requests.milli_cpu
    };
    let memory = if requests.memory == 0 {
        200 << 20
    } else {
        requests.memory
    };
    (cpu, memory)
}

fn fraction_score(requested: i64, capacity: i64, strategy: ScoringStrategy) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    match strategy {
        ScoringStrategy::LeastAllocated => (capacity - requested) * MAX_NODE_SCORE / capacity,
        ScoringStrategy::MostAllocated => requested * MAX_NODE_SCORE / capacity,
    }
}

impl ScorePlugin for NodeResourcesFit {
    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let (cpu, memory) = scoring_requests(&pod.requests);
        let cpu_score = fraction_score(
            node.requested.milli_cpu + cpu,
            node.allocatable.milli_cpu,
            self.strategy,
        );
        let mem_score = fraction_score(
            node.requested.memory + memory,
            node.allocatable.memory,
            self.strategy,
        );
        (cpu_score + mem_score) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node_info, pod, pod_requesting};
    use serde_json::json;

    #[test]
    fn filter_names_every_short_resource() {
        let cases = [
            ("fits", pod_requesting("p", "1", "1Gi"), vec![]),
            (
                "cpu",
                pod_requesting("p", "3", "1Gi"),
                vec!["Insufficient cpu"],
            ),
            (
                "both",
                pod_requesting("p", "5", "9Gi"),
                vec!["Insufficient cpu", "Insufficient memory"],
            ),
            (
                "gpu",
                pod(
                    "p",
                    json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]}),
                ),
                vec!["Insufficient nvidia.com/gpu"],
            ),
        ];
        let mut node = node_info("n", "4", "8Gi", json!({}));
        node.add_pod(pod_requesting("existing", "2", "1Gi"));
        for (name, pod, want) in cases {
            let status = NodeResourcesFit::default().filter(&CycleState::default(), &pod, &node);
            assert_eq!(status.reasons, want, "{name}");
        }
        let mut full = node_info(
            "n",
            "4",
            "8Gi",
            json!({"status": {"allocatable": {"pods": "1"}}}),
        );
        full.add_pod(pod_requesting("existing", "0", "0"));
        let status = NodeResourcesFit::default().filter(
            &CycleState::default(),
            &pod_requesting("p", "0", "0"),
            &full,
        );
        assert_eq!(status.reasons, vec!["Too many pods"]);
    }

    #[test]
    fn least_allocated_prefers_empty_nodes_and_most_allocated_full_ones() {
        let empty = node_info("a", "4", "8Gi", json!({}));
        let mut busy = node_info("b", "4", "8Gi", json!({}));
        busy.add_pod(pod_requesting("x", "3", "6Gi"));
        let p = pod_requesting("p", "500m", "1Gi");
        let least = NodeResourcesFit::default();
        let state = CycleState::default();
        assert!(least.score(&state, &p, &empty) > least.score(&state, &p, &busy));
        let most = NodeResourcesFit {
            strategy: ScoringStrategy::MostAllocated,
        };
        assert!(most.score(&state, &p, &empty) < most.score(&state, &p, &busy));
    }
}
