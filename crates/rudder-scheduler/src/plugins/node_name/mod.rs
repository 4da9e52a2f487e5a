//! NodeName: a pod that names its node (`spec.nodeName` set before
//! scheduling) fits only there.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{CycleState, FilterPlugin, Plugin, Status};

pub const NAME: &str = "NodeName";

pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl FilterPlugin for NodeName {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match pod.spec().node_name.as_deref() {
            Some(name) if !name.is_empty() && name != node.name => {
                Status::unresolvable("node(s) didn't match the requested node name")
            }
            _ => Status::success(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node_info, pod};
    use serde_json::json;

    #[test]
    fn only_the_named_node_fits() {
        let s = CycleState::default();
        let named = pod("p", json!({"nodeName": "b"}));
        assert!(!NodeName
            .filter(&s, &named, &node_info("a", "1", "1Gi", json!({})))
            .is_success());
        assert!(NodeName
            .filter(&s, &named, &node_info("b", "1", "1Gi", json!({})))
            .is_success());
        assert!(NodeName
            .filter(
                &s,
                &pod("q", json!({})),
                &node_info("a", "1", "1Gi", json!({}))
            )
            .is_success());
    }
}
