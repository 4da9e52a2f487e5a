//! NodeUnschedulable: cordoned nodes (`spec.unschedulable`) take no new
//! pods, unless a pod tolerates the unschedulable taint.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{CycleState, FilterPlugin, Plugin, Status};

pub const NAME: &str = "NodeUnschedulable";

pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl FilterPlugin for NodeUnschedulable {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.unschedulable {
            return Status::success();
        }
        let tolerated = pod.spec().tolerations.iter().flatten().any(|t| {
            let key_ok = t
                .key
                .as_deref()
                .is_none_or(|k| k.is_empty() || k == "node.kubernetes.io/unschedulable");
            let op_exists = t.operator.as_deref() == Some("Exists");
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "NoSchedule");
            key_ok && effect_ok && (op_exists || t.key.is_some())
        });
        if tolerated {
            Status::success()
        } else {
            Status::unresolvable("node(s) were unschedulable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node_info, pod};
    use serde_json::json;

    #[test]
    fn cordoned_nodes_refuse_untolerating_pods() {
        let s = CycleState::default();
        let cordoned = node_info("n", "1", "1Gi", json!({"spec": {"unschedulable": true}}));
        assert!(!NodeUnschedulable
            .filter(&s, &pod("p", json!({})), &cordoned)
            .is_success());
        let tolerant = pod(
            "t",
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert!(NodeUnschedulable
            .filter(&s, &tolerant, &cordoned)
            .is_success());
        assert!(NodeUnschedulable
            .filter(
                &s,
                &pod("p", json!({})),
                &node_info("m", "1", "1Gi", json!({}))
            )
            .is_success());
    }
}
