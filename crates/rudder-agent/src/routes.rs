//! Keeps this node's routes to the other nodes' pod CIDRs in step with the
//! Node objects: a node that joins gets a route (and VXLAN entries) on
//! every node, one that is deleted loses them. A periodic pass repairs
//! routes someone else removed.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use rudder_network::{NodeRoutes, PeerNode};
use rudder_runtime::Informers;

/// How often the routes are re-checked without a Node change.
const RESYNC: Duration = Duration::from_secs(30);

/// Runs until the process ends.
pub async fn run(informers: Informers, routes: NodeRoutes) {
    let nodes = informers.get::<Node>();
    let changed = Arc::new(tokio::sync::Notify::new());
    nodes.notify_on_change(&changed);
    nodes.wait_synced().await;
    let mut ready = false;
    loop {
        let peers: Vec<PeerNode> = nodes.list().iter().filter_map(|n| peer_of(n)).collect();
        let step = routes.clone();
        let result = tokio::task::spawn_blocking(move || {
            if !ready {
                step.ensure()?;
            }
            step.sync(&peers).map(|()| peers.len())
        })
        .await;
        match result {
            Ok(Ok(count)) => {
                if !ready {
                    tracing::info!(backend = %routes.backend, peers = count.saturating_sub(1), "routes to other nodes' pods ready");
                }
                ready = true;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "syncing the routes to other nodes' pods"),
            Err(e) => tracing::warn!(error = %e, "the route sync stopped"),
        }
        tokio::select! {
            () = changed.notified() => {
                // Several Node updates in a burst make one pass.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// A node's InternalIP and podCIDR, if it has both (IPv4).
fn peer_of(node: &Node) -> Option<PeerNode> {
    let pod_cidr = node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
    let ip: Ipv4Addr = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())?;
    Some(PeerNode { ip, pod_cidr })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peers_need_an_internal_ip_and_a_pod_cidr() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.42.1.0/24"},
            "status": {"addresses": [{"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "10.99.0.11"}]},
        }))
        .unwrap();
        let peer = peer_of(&node).unwrap();
        assert_eq!(peer.ip, Ipv4Addr::new(10, 99, 0, 11));
        assert_eq!(peer.pod_cidr.to_string(), "10.42.1.0/24");
        let without: Node = serde_json::from_value(json!({
            "metadata": {"name": "n2"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.99.0.12"}]},
        }))
        .unwrap();
        assert!(peer_of(&without).is_none());
    }
}
