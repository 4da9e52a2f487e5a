//! PodTopologySpread: keeps the pods of a group spread over topology
//! domains within `maxSkew` (DoNotSchedule filters, ScheduleAnyway
//! scores). Pods owned by a controller that declare no constraints are
//! spread over nodes softly, the way the default constraints spread the
//! pods of one ReplicaSet or StatefulSet.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::cache::{ClusterCache, NodeInfo, PodInfo};
use crate::framework::{
    Code, CycleState, FilterPlugin, Plugin, PreFilterPlugin, PreScorePlugin, ScorePlugin, Status,
    MAX_NODE_SCORE,
};
use crate::plugins::node_affinity::required_matches;
use crate::plugins::selector_matches;

pub const NAME: &str = "PodTopologySpread";
const FILTER_STATE: &str = "PodTopologySpread/filter";
const SCORE_STATE: &str = "PodTopologySpread/score";

pub struct PodTopologySpread;

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// A constraint with the group it counts.
struct Constraint {
    key: String,
    max_skew: i64,
    selects: Selects,
}

enum Selects {
    Labels(Option<LabelSelector>),
    /// Pods of the same controller (the default spreading).
    Owner(String),
}

impl Constraint {
    fn counts(&self, pod: &PodInfo, namespace: &str) -> bool {
        if pod.namespace != namespace {
            return false;
        }
        match &self.selects {
            Selects::Labels(selector) => selector_matches(selector.as_ref(), &pod.labels),
            Selects::Owner(uid) => controller_uid(pod).as_deref() == Some(uid.as_str()),
        }
    }
}

fn controller_uid(pod: &PodInfo) -> Option<String> {
    pod.pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

fn constraints(pod: &PodInfo, when: &str) -> Vec<Constraint> {
    let declared: Vec<&TopologySpreadConstraint> = pod
        .spec()
        .topology_spread_constraints
        .iter()
        .flatten()
        .collect();
    if declared.is_empty() {
        if when == "ScheduleAnyway" {
            if let Some(uid) = controller_uid(pod) {
                return vec![Constraint {
                    key: "kubernetes.io/hostname".into(),
                    max_skew: 3,
                    selects: Selects::Owner(uid),
                }];
            }
        }
        return Vec::new();
    }
    declared
        .into_iter()
        .filter(|c| c.when_unsatisfiable == when)
        .map(|c| Constraint {
            key: c.topology_key.clone(),
            max_skew: i64::from(c.max_skew.max(1)),
            selects: Selects::Labels(c.label_selector.clone()),
        })
        .collect()
}

/// Matching pods per domain of `c.key`, over nodes the pod may use.
fn domain_counts(c: &Constraint, pod: &PodInfo, cache: &ClusterCache) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for node in cache.nodes.values() {
        let Some(value) = node.labels.get(&c.key) else {
            continue;
        };
        if !required_matches(pod, node) {
            continue;
        }
        let n = node
            .pods
            .iter()
            .filter(|p| p.uid != pod.uid && c.counts(p, &pod.namespace))
            .count() as i64;
        *counts.entry(value.clone()).or_default() += n;
    }
    counts
}

struct FilterState {
    constraints: Vec<(Constraint, BTreeMap<String, i64>, i64)>,
    self_match: Vec<bool>,
}

impl PreFilterPlugin for PodTopologySpread {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, cache: &ClusterCache) -> Status {
        let cs = constraints(pod, "DoNotSchedule");
        if cs.is_empty() {
            return Status::skip();
        }
        let mut entries = Vec::new();
        let mut self_match = Vec::new();
        for c in cs {
            let counts = domain_counts(&c, pod, cache);
            let min = counts.values().copied().min().unwrap_or(0);
            self_match.push(c.counts(pod, &pod.namespace));
            entries.push((c, counts, min));
        }
        state.write(
            FILTER_STATE,
            FilterState {
                constraints: entries,
                self_match,
            },
        );
        Status::success()
    }
}

impl FilterPlugin for PodTopologySpread {
    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<FilterState>(FILTER_STATE) else {
            return Status::success();
        };
        for (i, (c, counts, min)) in s.constraints.iter().enumerate() {
            let Some(value) = node.labels.get(&c.key) else {
                return Status {
                    code: Code::UnschedulableAndUnresolvable,
                    reasons: vec!["node(s) didn't match pod topology spread constraints (missing required label)".into()],
                };
            };
            let here = counts.get(value).copied().unwrap_or(0) + i64::from(s.self_match[i]);
            if here - min > c.max_skew {
                return Status::unschedulable(
                    "node(s) didn't match pod topology spread constraints",
                );
            }
        }
        Status::success()
    }
}

impl PreScorePlugin for PodTopologySpread {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[&NodeInfo],
        cache: &ClusterCache,
    ) -> Status {
        let cs = constraints(pod, "ScheduleAnyway");
        if cs.is_empty() {
            return Status::skip();
        }
        let counted: Vec<(String, HashMap<String, i64>)> = cs
            .iter()
            .map(|c| {
                (
                    c.key.clone(),
                    domain_counts(c, pod, cache).into_iter().collect(),
                )
            })
            .collect();
        state.write(SCORE_STATE, counted);
        Status::success()
    }
}

impl ScorePlugin for PodTopologySpread {
    /// Matching pods already in the node's domains (fewer is better).
    fn score(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(counted) = state.read::<Vec<(String, HashMap<String, i64>)>>(SCORE_STATE) else {
            return 0;
        };
        counted
            .iter()
            .map(|(key, counts)| {
                node.labels
                    .get(key)
                    .and_then(|v| counts.get(v))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    }

    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) {
        let (min, max) = (
            scores.iter().copied().min().unwrap_or(0),
            scores.iter().copied().max().unwrap_or(0),
        );
        for s in scores.iter_mut() {
            *s = if max == min {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max - *s) / (max - min)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{cache, node, pod_with};
    use serde_json::json;

    #[test]
    fn do_not_schedule_keeps_the_skew() {
        let zone =
            |n: &str, z: &str| node(n, "4", "8Gi", json!({"metadata": {"labels": {"zone": z}}}));
        let mut c = cache(vec![
            zone("a", "z1"),
            zone("b", "z2"),
            node("c", "4", "8Gi", json!({})),
        ]);
        let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}}]});
        c.add_bound_pod(
            pod_with("w1", json!({"labels": {"app": "web"}}), json!({})),
            "a",
        );
        let p = pod_with("w2", json!({"labels": {"app": "web"}}), spread);
        let mut state = CycleState::default();
        assert!(PodTopologySpread
            .pre_filter(&mut state, &p, &c)
            .is_success());
        let verdicts: Vec<(String, Code)> = c
            .nodes
            .values()
            .map(|n| (n.name.clone(), PodTopologySpread.filter(&state, &p, n).code))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                ("a".into(), Code::Unschedulable),
                ("b".into(), Code::Success),
                ("c".into(), Code::UnschedulableAndUnresolvable)
            ]
        );
    }

    #[test]
    fn replicas_of_one_owner_spread_by_default() {
        let mut c = cache(vec![
            node("a", "4", "8Gi", json!({})),
            node("b", "4", "8Gi", json!({})),
        ]);
        let owner = json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-1", "controller": true}]});
        c.add_bound_pod(pod_with("r1", owner.clone(), json!({})), "a");
        let p = pod_with("r2", owner, json!({}));
        let mut state = CycleState::default();
        let nodes: Vec<&NodeInfo> = c.nodes.values().collect();
        assert!(PodTopologySpread
            .pre_score(&mut state, &p, &nodes, &c)
            .is_success());
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| PodTopologySpread.score(&state, &p, n))
            .collect();
        PodTopologySpread.normalize(&state, &p, &mut scores);
        assert_eq!(scores, vec![0, 100]);
    }
}
