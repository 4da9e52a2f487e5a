//! What the node lifecycle controller remembers of each node between two
//! passes, and how it decides a node went silent (`tryUpdateNodeHealth`).
//! Times are the controller's own clock when it saw a change, never the
//! kubelet's, so clock skew between machines cannot fake a heartbeat.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::clock::add;

pub const READY: &str = "Ready";
/// The conditions a silent node's kubelet can no longer vouch for.
/// NetworkUnavailable is left alone: the network, not the kubelet, owns it.
pub const KUBELET_CONDITIONS: [&str; 4] =
    ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// The last observed health signal of a node.
#[derive(Clone, Debug)]
pub struct NodeHealth {
    /// When the controller last saw the kubelet alive.
    pub probe: Timestamp,
    pub ready_transition: Timestamp,
    /// The node's Ready condition when last seen.
    pub ready: Option<NodeCondition>,
    /// The renew time of the node's Lease when last seen (`Some(None)`: a
    /// Lease without a renew time).
    pub lease: Option<Option<Timestamp>>,
}

pub fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn creation(node: &Node) -> Timestamp {
    node.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The outcome of looking at one node.
#[derive(Debug)]
pub struct Observation {
    pub health: NodeHealth,
    /// The Ready condition as the node carried it (a made-up Unknown one
    /// when the kubelet never posted any).
    pub observed_ready: NodeCondition,
    /// Whether the silence lasted past the grace period: then the
    /// kubelet's conditions must be set to Unknown.
    pub silent: bool,
}

/// Updates what is known of a node from its current object and Lease
/// renew time (`lease`: `None` when it has no Lease).
pub fn observe(
    saved: Option<NodeHealth>,
    node: &Node,
    lease: Option<Option<Timestamp>>,
    now: Timestamp,
    grace_period: Duration,
    startup_grace_period: Duration,
) -> Observation {
    let current = condition(node, READY).cloned();
    let (observed_ready, grace, mut health) = match &current {
        None => {
            // The kubelet never posted a status: count from the node's
            // creation, with the longer startup grace.
            let observed = NodeCondition {
                type_: READY.into(),
                status: "Unknown".into(),
                last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                last_transition_time: node.metadata.creation_timestamp.clone(),
                ..Default::default()
            };
            let health = match saved {
                Some(mut h) => {
                    h.ready = None;
                    Some(h)
                }
                None => Some(NodeHealth {
                    probe: creation(node),
                    ready_transition: creation(node),
                    ready: None,
                    lease: None,
                }),
            };
            (observed, startup_grace_period, health)
        }
        Some(c) => (c.clone(), grace_period, saved),
    };
    let saved_ready = health.as_ref().and_then(|h| h.ready.clone());
    let saved_lease = health.as_ref().and_then(|h| h.lease);
    let fresh = |ready: Option<NodeCondition>, transition: Timestamp| NodeHealth {
        probe: now,
        ready_transition: transition,
        ready,
        lease: None,
    };
    health = match (health, &saved_ready, &current) {
        (None, _, _) => Some(fresh(current.clone(), now)),
        (Some(_), None, Some(_)) | (Some(_), Some(_), None) => Some(fresh(current.clone(), now)),
        (Some(h), Some(saved), Some(cur))
            if saved.last_heartbeat_time != cur.last_heartbeat_time =>
        {
            let transition = if saved.last_transition_time != cur.last_transition_time {
                now
            } else {
                h.ready_transition
            };
            Some(fresh(current.clone(), transition))
        }
        (h, _, _) => h,
    };
    let mut health = health.expect("set above");
    if health.ready.is_none() {
        health.ready = current.clone();
    }
    // A renewed Lease is a heartbeat too; the first Lease seen counts as one.
    if let Some(observed) = lease {
        let renewed = match saved_lease {
            None => true,
            Some(saved) => matches!((saved, observed), (Some(s), Some(o)) if s < o),
        };
        if renewed {
            health.lease = Some(observed);
            health.probe = now;
        } else if health.lease.is_none() {
            health.lease = saved_lease;
        }
    } else if health.lease.is_none() {
        health.lease = saved_lease;
    }
    let silent = now > add(health.probe, grace);
    Observation {
        health,
        observed_ready,
        silent,
    }
}

/// Sets the kubelet's conditions to Unknown on a silent node, as the
/// node lifecycle controller does; returns whether Ready changed.
pub fn mark_unknown(node: &mut Node, now: Timestamp) -> bool {
    let before = condition(node, READY).cloned();
    let created = node.metadata.creation_timestamp.clone();
    let conditions = node
        .status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new);
    for type_ in KUBELET_CONDITIONS {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            None => conditions.push(NodeCondition {
                type_: type_.into(),
                status: "Unknown".into(),
                reason: Some("NodeStatusNeverUpdated".into()),
                message: Some("Kubelet never posted node status.".into()),
                last_heartbeat_time: created.clone(),
                last_transition_time: Some(Time(now)),
            }),
            Some(c) if c.status != "Unknown" => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(Time(now));
            }
            Some(_) => {}
        }
    }
    condition(node, READY).cloned() != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GRACE: Duration = Duration::from_secs(50);
    const STARTUP: Duration = Duration::from_secs(60);

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn node(heartbeat: i64) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n", "creationTimestamp": at(0).to_string()},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": at(heartbeat).to_string(),
                 "lastTransitionTime": at(0).to_string(), "reason": "KubeletReady"},
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": at(heartbeat).to_string(),
                 "lastTransitionTime": at(0).to_string()}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn a_node_goes_silent_after_the_grace_period_without_heartbeat_or_lease() {
        let n = node(0);
        let first = observe(None, &n, None, at(1), GRACE, STARTUP);
        assert!(!first.silent);
        assert_eq!(first.health.probe, at(1));
        // Same heartbeat, 50 s later: not yet; 51 s later: silent.
        assert!(!observe(Some(first.health.clone()), &n, None, at(51), GRACE, STARTUP).silent);
        assert!(observe(Some(first.health.clone()), &n, None, at(52), GRACE, STARTUP).silent);
        // A new heartbeat resets the count.
        let beat = observe(
            Some(first.health.clone()),
            &node(40),
            None,
            at(45),
            GRACE,
            STARTUP,
        );
        assert_eq!(beat.health.probe, at(45));
        assert!(!observe(Some(beat.health), &node(40), None, at(90), GRACE, STARTUP).silent);
    }

    #[test]
    fn a_renewed_lease_counts_as_a_heartbeat() {
        let n = node(0);
        let first = observe(None, &n, Some(Some(at(0))), at(1), GRACE, STARTUP);
        let same = observe(
            Some(first.health.clone()),
            &n,
            Some(Some(at(0))),
            at(30),
            GRACE,
            STARTUP,
        );
        assert_eq!(same.health.probe, at(1));
        let renewed = observe(
            Some(same.health),
            &n,
            Some(Some(at(40))),
            at(40),
            GRACE,
            STARTUP,
        );
        assert_eq!(renewed.health.probe, at(40));
        assert!(
            !observe(
                Some(renewed.health.clone()),
                &n,
                Some(Some(at(40))),
                at(80),
                GRACE,
                STARTUP
            )
            .silent
        );
        assert!(
            observe(
                Some(renewed.health),
                &n,
                Some(Some(at(40))),
                at(91),
                GRACE,
                STARTUP
            )
            .silent
        );
    }

    #[test]
    fn silent_nodes_get_unknown_conditions_with_kubernetes_reasons() {
        let mut n = node(0);
        assert!(mark_unknown(&mut n, at(60)));
        let ready = condition(&n, READY).unwrap();
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(
            ready.message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );
        assert_eq!(ready.last_transition_time, Some(Time(at(60))));
        assert_eq!(ready.last_heartbeat_time, Some(Time(at(0))));
        let disk = condition(&n, "DiskPressure").unwrap();
        assert_eq!(disk.reason.as_deref(), Some("NodeStatusNeverUpdated"));
        assert_eq!(condition(&n, "MemoryPressure").unwrap().status, "Unknown");
        assert!(!mark_unknown(&mut n, at(70)));
    }

    #[test]
    fn a_node_that_never_posted_status_gets_the_startup_grace() {
        let n: Node = serde_json::from_value(
            json!({"metadata": {"name": "n", "creationTimestamp": at(0).to_string()}}),
        )
        .unwrap();
        let first = observe(None, &n, None, at(55), GRACE, STARTUP);
        assert!(!first.silent);
        assert_eq!(first.observed_ready.status, "Unknown");
        assert!(observe(Some(first.health), &n, None, at(61), GRACE, STARTUP).silent);
    }
}
