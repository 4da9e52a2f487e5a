//! NodePorts: a host port can be used by one pod per node (per protocol
//! and host IP; 0.0.0.0 conflicts with every IP).

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{CycleState, FilterPlugin, Plugin, Status};

pub const NAME: &str = "NodePorts";

pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl FilterPlugin for NodePorts {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        for (ip, protocol, port) in &pod.host_ports {
            let conflict = node
                .used_ports
                .iter()
                .any(|(used_ip, used_proto, used_port)| {
                    used_port == port
                        && used_proto == protocol
                        && (used_ip == ip || used_ip == "0.0.0.0" || ip == "0.0.0.0")
                });
            if conflict {
                return Status::unschedulable(
                    "node(s) didn't have free ports for the requested pod ports",
                );
            }
        }
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node_info, pod};
    use serde_json::json;

    fn with_port(
        name: &str,
        ip: Option<&str>,
        port: i32,
        protocol: &str,
    ) -> std::sync::Arc<PodInfo> {
        let mut p = json!({"containerPort": 80, "hostPort": port, "protocol": protocol});
        if let Some(ip) = ip {
            p["hostIP"] = json!(ip);
        }
        pod(
            name,
            json!({"containers": [{"name": "c", "image": "i", "ports": [p]}]}),
        )
    }

    #[test]
    fn host_ports_conflict_per_protocol_and_ip() {
        let mut node = node_info("n", "4", "8Gi", json!({}));
        node.add_pod(with_port("a", None, 8080, "TCP"));
        let s = CycleState::default();
        let cases = [
            (with_port("p", None, 8080, "TCP"), false),
            (with_port("p", Some("10.0.0.1"), 8080, "TCP"), false),
            (with_port("p", None, 8080, "UDP"), true),
            (with_port("p", None, 8081, "TCP"), true),
        ];
        for (i, (p, fits)) in cases.into_iter().enumerate() {
            assert_eq!(
                NodePorts.filter(&s, &p, &node).is_success(),
                fits,
                "case {i}"
            );
        }
        node.remove_pod("uid-a");
        assert!(NodePorts
            .filter(&s, &with_port("p", None, 8080, "TCP"), &node)
            .is_success());
    }
}
