//! NodeResourcesBalancedAllocation: prefers nodes whose CPU and memory
//! would be used in similar fractions, so neither runs out first.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{CycleState, Plugin, ScorePlugin, MAX_NODE_SCORE};
use crate::plugins::node_resources_fit::scoring_requests;

pub const NAME: &str = "NodeResourcesBalancedAllocation";

pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl ScorePlugin for BalancedAllocation {
    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let (cpu, memory) = scoring_requests(&pod.requests);
        let fraction = |used: i64, cap: i64| {
            if cap <= 0 {
                1.0
            } else {
                (used as f64 / cap as f64).min(1.0)
            }
        };
        let cpu_f = fraction(node.requested.milli_cpu + cpu, node.allocatable.milli_cpu);
        let mem_f = fraction(node.requested.memory + memory, node.allocatable.memory);
        // The standard deviation of two fractions is half their difference.
        let std = (cpu_f - mem_f).abs() / 2.0;
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node_info, pod_requesting};
    use serde_json::json;

    #[test]
    fn balanced_nodes_score_higher() {
        let mut cpu_heavy = node_info("a", "4", "8Gi", json!({}));
        cpu_heavy.add_pod(pod_requesting("x", "3", "100Mi"));
        let mut even = node_info("b", "4", "8Gi", json!({}));
        even.add_pod(pod_requesting("y", "2", "4Gi"));
        let p = pod_requesting("p", "500m", "1Gi");
        let s = CycleState::default();
        assert!(
            BalancedAllocation.score(&s, &p, &even) > BalancedAllocation.score(&s, &p, &cpu_heavy)
        );
        assert!(BalancedAllocation.score(&s, &p, &even) <= MAX_NODE_SCORE);
    }
}
