//! Taints and tolerations as the node controllers read and write them:
//! which tolerations match which taints (`v1helper.GetMatchingTolerations`),
//! and changing a node's taints through the API with retries on conflict
//! (`AddOrUpdateTaintOnNode`, `RemoveTaintOffNode`).

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::util::{is_conflict, is_not_found};

pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
pub const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
pub const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
pub const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";
pub const TAINT_OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

pub const NO_EXECUTE: &str = "NoExecute";
pub const NO_SCHEDULE: &str = "NoSchedule";

/// A taint with a key and an effect and nothing else.
pub fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.to_owned(),
        effect: effect.to_owned(),
        ..Default::default()
    }
}

/// Two taints are the same taint when key and effect agree (`MatchTaint`).
pub fn same_taint(a: &Taint, b: &Taint) -> bool {
    a.key == b.key && a.effect == b.effect
}

pub fn taint_exists(taints: &[Taint], wanted: &Taint) -> bool {
    taints.iter().any(|t| same_taint(t, wanted))
}

pub fn node_taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

pub fn no_execute_taints(node: &Node) -> Vec<Taint> {
    node_taints(node)
        .iter()
        .filter(|t| t.effect == NO_EXECUTE)
        .cloned()
        .collect()
}

/// `Toleration.ToleratesTaint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// Whether every taint is tolerated, and the toleration that tolerates
/// each (the first that does), as `GetMatchingTolerations`.
pub fn matching_tolerations(
    taints: &[Taint],
    tolerations: &[Toleration],
) -> Option<Vec<Toleration>> {
    let mut used = Vec::new();
    for taint in taints {
        used.push(tolerations.iter().find(|t| tolerates(t, taint))?.clone());
    }
    Some(used)
}

/// How long the used tolerations let a pod stay: `None` for ever, as
/// `getMinTolerationTime` (no tolerations at all: not a moment).
pub fn min_toleration_seconds(used: &[Toleration]) -> Option<u64> {
    if used.is_empty() {
        return Some(0);
    }
    let mut min: Option<u64> = None;
    for t in used {
        if let Some(seconds) = t.toleration_seconds {
            if seconds <= 0 {
                return Some(0);
            }
            min = Some(min.map_or(seconds as u64, |m| m.min(seconds as u64)));
        }
    }
    min
}

/// The node's taints after adding `add` (stamped with `now`, replacing a
/// taint with the same key and effect) and removing `remove`; `None` when
/// nothing changes.
fn changed_taints(
    current: &[Taint],
    add: &[Taint],
    remove: &[Taint],
    now: &Time,
) -> Option<Vec<Taint>> {
    let mut taints: Vec<Taint> = current.to_vec();
    let mut changed = false;
    let before = taints.len();
    taints.retain(|t| !remove.iter().any(|r| same_taint(t, r)));
    changed |= taints.len() != before;
    for wanted in add {
        match taints.iter_mut().find(|t| same_taint(t, wanted)) {
            // Already there (its value aside): keep it and its timeAdded.
            Some(existing) if existing.value == wanted.value => {}
            Some(existing) => {
                *existing = Taint {
                    time_added: Some(now.clone()),
                    ..wanted.clone()
                };
                changed = true;
            }
            None => {
                taints.push(Taint {
                    time_added: Some(now.clone()),
                    ..wanted.clone()
                });
                changed = true;
            }
        }
    }
    changed.then_some(taints)
}

/// Adds and removes taints on a node, re-reading it on conflict
/// (`SwapNodeControllerTaint`). A node that is gone needs no taints.
pub async fn swap_node_taints(
    client: &Client,
    name: &str,
    add: &[Taint],
    remove: &[Taint],
    now: Time,
) -> kube::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut node = match nodes.get(name).await {
            Ok(node) => node,
            Err(err) if is_not_found(&err) => return Ok(()),
            Err(err) => return Err(err),
        };
        let Some(taints) = changed_taints(node_taints(&node), add, remove, &now) else {
            return Ok(());
        };
        node.spec.get_or_insert_with(Default::default).taints =
            (!taints.is_empty()).then_some(taints);
        match nodes.replace(name, &PostParams::default(), &node).await {
            Ok(_) => return Ok(()),
            Err(err) if is_conflict(&err) && attempts < 5 => continue,
            Err(err) if is_not_found(&err) => return Ok(()),
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn toleration(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn tolerations_match_taints_like_kubernetes() {
        let t = Taint {
            key: "maint".into(),
            value: Some("now".into()),
            effect: NO_EXECUTE.into(),
            ..Default::default()
        };
        assert!(tolerates(
            &toleration(json!({"key": "maint", "operator": "Exists"})),
            &t
        ));
        assert!(tolerates(&toleration(json!({"operator": "Exists"})), &t));
        assert!(tolerates(
            &toleration(json!({"key": "maint", "value": "now", "effect": "NoExecute"})),
            &t
        ));
        assert!(!tolerates(
            &toleration(json!({"key": "maint", "value": "later"})),
            &t
        ));
        assert!(!tolerates(
            &toleration(json!({"key": "maint", "operator": "Exists", "effect": "NoSchedule"})),
            &t
        ));
        assert!(!tolerates(
            &toleration(json!({"key": "other", "operator": "Exists"})),
            &t
        ));
    }

    #[test]
    fn the_shortest_toleration_wins_and_none_means_for_ever() {
        let a = toleration(json!({"key": "a", "operator": "Exists", "tolerationSeconds": 300}));
        let b = toleration(json!({"key": "b", "operator": "Exists", "tolerationSeconds": 30}));
        let c = toleration(json!({"key": "c", "operator": "Exists"}));
        assert_eq!(
            min_toleration_seconds(&[a.clone(), b.clone(), c.clone()]),
            Some(30)
        );
        assert_eq!(min_toleration_seconds(std::slice::from_ref(&c)), None);
        assert_eq!(min_toleration_seconds(&[]), Some(0));
        let taints = [taint("a", NO_EXECUTE), taint("b", NO_EXECUTE)];
        assert_eq!(
            matching_tolerations(&taints, &[a.clone(), b.clone()])
                .unwrap()
                .len(),
            2
        );
        assert!(matching_tolerations(&taints, &[a]).is_none());
        assert_eq!(matching_tolerations(&[], &[]), Some(vec![]));
    }

    #[test]
    fn swapping_taints_keeps_what_is_already_there() {
        let now = Time(jiff::Timestamp::from_second(100).unwrap());
        let old = Time(jiff::Timestamp::from_second(1).unwrap());
        let current = vec![Taint {
            time_added: Some(old.clone()),
            ..taint(TAINT_UNREACHABLE, NO_EXECUTE)
        }];
        assert_eq!(
            changed_taints(&current, &[taint(TAINT_UNREACHABLE, NO_EXECUTE)], &[], &now),
            None
        );
        let swapped = changed_taints(
            &current,
            &[taint(TAINT_NOT_READY, NO_EXECUTE)],
            &[taint(TAINT_UNREACHABLE, NO_EXECUTE)],
            &now,
        )
        .unwrap();
        assert_eq!(swapped.len(), 1);
        assert_eq!(swapped[0].key, TAINT_NOT_READY);
        assert_eq!(swapped[0].time_added, Some(now.clone()));
        assert_eq!(
            changed_taints(&current, &[], &[taint(TAINT_UNREACHABLE, NO_EXECUTE)], &now),
            Some(vec![])
        );
    }
}
