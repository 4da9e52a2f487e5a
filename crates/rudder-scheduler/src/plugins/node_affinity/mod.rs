//! NodeAffinity: `nodeSelector` and required node affinity filter nodes;
//! preferred terms add their weights to a node's score.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{CycleState, FilterPlugin, Plugin, ScorePlugin, Status, MAX_NODE_SCORE};
use crate::plugins::node_selector_term_matches;

pub const NAME: &str = "NodeAffinity";

pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// Whether a pod's node selector and required affinity accept a node.
pub fn required_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let spec = pod.spec();
    if let Some(selector) = &spec.node_selector {
        if !selector.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        // Terms are ORed.
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|term| node_selector_term_matches(term, &node.labels, &node.name)),
        None => true,
    }
}

impl FilterPlugin for NodeAffinity {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if required_matches(pod, node) {
            Status::success()
        } else {
            Status::unresolvable("node(s) didn't match Pod's node affinity/selector")
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        pod.spec()
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .filter(|p| {
                p.weight != 0 && node_selector_term_matches(&p.preference, &node.labels, &node.name)
            })
            .map(|p| i64::from(p.weight))
            .sum()
    }

    /// Scales the weights so the best node gets the maximum score.
    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        if max > 0 {
            for s in scores.iter_mut() {
                *s = *s * MAX_NODE_SCORE / max;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node_info, pod};
    use serde_json::json;

    #[test]
    fn selectors_and_required_terms_filter() {
        let ssd = node_info(
            "a",
            "1",
            "1Gi",
            json!({"metadata": {"labels": {"disktype": "ssd", "gen": "5"}}}),
        );
        let hdd = node_info(
            "b",
            "1",
            "1Gi",
            json!({"metadata": {"labels": {"disktype": "hdd"}}}),
        );
        let s = CycleState::default();
        let cases = [
            (
                "nodeSelector",
                json!({"nodeSelector": {"disktype": "ssd"}}),
                true,
                false,
            ),
            (
                "In",
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disktype", "operator": "In", "values": ["ssd"]}]}]}}}}),
                true,
                false,
            ),
            (
                "NotIn",
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disktype", "operator": "NotIn", "values": ["ssd"]}]}]}}}}),
                false,
                true,
            ),
            (
                "Gt",
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}]}}}}),
                true,
                false,
            ),
            (
                "terms are ORed",
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disktype", "operator": "In", "values": ["nvme"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}),
                false,
                true,
            ),
        ];
        for (name, spec, on_ssd, on_hdd) in cases {
            let p = pod("p", spec);
            assert_eq!(
                NodeAffinity.filter(&s, &p, &ssd).is_success(),
                on_ssd,
                "{name} on ssd"
            );
            assert_eq!(
                NodeAffinity.filter(&s, &p, &hdd).is_success(),
                on_hdd,
                "{name} on hdd"
            );
        }
    }

    #[test]
    fn preferred_terms_score_by_weight() {
        let ssd = node_info(
            "a",
            "1",
            "1Gi",
            json!({"metadata": {"labels": {"disktype": "ssd"}}}),
        );
        let hdd = node_info(
            "b",
            "1",
            "1Gi",
            json!({"metadata": {"labels": {"disktype": "hdd"}}}),
        );
        let p = pod(
            "p",
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 40, "preference": {"matchExpressions": [{"key": "disktype", "operator": "In", "values": ["ssd"]}]}}]}}}),
        );
        let s = CycleState::default();
        let mut scores = vec![
            NodeAffinity.score(&s, &p, &ssd),
            NodeAffinity.score(&s, &p, &hdd),
        ];
        assert_eq!(scores, vec![40, 0]);
        NodeAffinity.normalize(&s, &p, &mut scores);
        assert_eq!(scores, vec![100, 0]);
    }
}
