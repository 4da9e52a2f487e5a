//! Which pods a shrinking set deletes first (kube's `ActivePodsWithRanks`
//! order): the ones whose loss hurts least.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::util::{phase, ready_since};

/// Picks `count` pods to delete, least valuable first:
/// 1. not yet scheduled before scheduled;
/// 2. Pending, then Unknown, then Running;
/// 3. not ready before ready;
/// 4. pods on nodes crowded with this set's pods before lone ones;
/// 5. ready for a shorter time before longer;
/// 6. more container restarts before fewer;
/// 7. newer before older.
pub fn pods_to_delete(pods: &[Arc<Pod>], count: usize) -> Vec<Arc<Pod>> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for pod in pods {
        if let Some(node) = node_of(pod) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let mut ranked: Vec<&Arc<Pod>> = pods.iter().collect();
    ranked.sort_by(|a, b| {
        let rank = |p: &Pod| node_of(p).map_or(0, |n| per_node[n]);
        compare(a, b, rank(a), rank(b))
    });
    ranked.into_iter().take(count).cloned().collect()
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn phase_rank(pod: &Pod) -> u8 {
    match phase(pod) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

/// Orders `a` before `b` when `a` should be deleted first.
fn compare(a: &Pod, b: &Pod, rank_a: usize, rank_b: usize) -> Ordering {
    // 1. unscheduled first
    let scheduled = |p: &Pod| node_of(p).is_some();
    (scheduled(a).cmp(&scheduled(b)))
        // 2. phase
        .then(phase_rank(a).cmp(&phase_rank(b)))
        // 3. not ready first
        .then(ready_since(a).is_some().cmp(&ready_since(b).is_some()))
        // 4. more co-located pods first
        .then(rank_b.cmp(&rank_a))
        // 5. ready more recently first
        .then_with(
            || match (ready_since(a).flatten(), ready_since(b).flatten()) {
                (Some(ta), Some(tb)) => tb.cmp(&ta),
                _ => Ordering::Equal,
            },
        )
        // 6. more restarts first
        .then(restarts(b).cmp(&restarts(a)))
        // 7. newer first
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(b).cmp(&created(a))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str) -> Arc<Pod> {
        let conditions = if ready {
            json!([{"type": "Ready", "status": "True", "lastTransitionTime": created}])
        } else {
            json!([])
        };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": created},
                "spec": {"containers": [], "nodeName": node},
                "status": {"phase": phase, "conditions": conditions},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_least_valuable_pods_go_first() {
        let pods = vec![
            pod(
                "running-old",
                Some("n1"),
                "Running",
                true,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "running-new",
                Some("n2"),
                "Running",
                true,
                "2026-01-02T00:00:00Z",
            ),
            pod(
                "pending",
                Some("n3"),
                "Pending",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "unscheduled",
                None,
                "Pending",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "not-ready",
                Some("n4"),
                "Running",
                false,
                "2026-01-01T00:00:00Z",
            ),
        ];
        let names: Vec<String> = pods_to_delete(&pods, 5)
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "not-ready",
                "running-new",
                "running-old"
            ]
        );
        assert_eq!(pods_to_delete(&pods, 2).len(), 2);
    }

    #[test]
    fn crowded_nodes_lose_pods_first() {
        let pods = vec![
            pod("alone", Some("n1"), "Running", true, "2026-01-03T00:00:00Z"),
            pod(
                "crowd-a",
                Some("n2"),
                "Running",
                true,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "crowd-b",
                Some("n2"),
                "Running",
                true,
                "2026-01-01T00:00:00Z",
            ),
        ];
        let first = &pods_to_delete(&pods, 1)[0];
        assert!(first.metadata.name.as_deref().unwrap().starts_with("crowd"));
    }
}
