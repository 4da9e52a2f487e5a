//! InterPodAffinity: required pod affinity and anti-affinity (the pod's
//! own, and existing pods' anti-affinity against it) by topology domain;
//! preferred terms score the domains.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{PodAffinityTerm, WeightedPodAffinityTerm};

use crate::cache::{ClusterCache, NodeInfo, PodInfo};
use crate::framework::{
    Code, CycleState, FilterPlugin, Plugin, PreFilterPlugin, PreScorePlugin, ScorePlugin, Status,
    MAX_NODE_SCORE,
};
use crate::plugins::selector_matches;

pub const NAME: &str = "InterPodAffinity";
const STATE: &str = "InterPodAffinity/prefilter";
const SCORE_STATE: &str = "InterPodAffinity/prescore";

pub struct InterPodAffinity;

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// (topology key, value) of a domain.
type Domain = (String, String);

struct PreFilterState {
    /// For each required affinity term: the domains that have a match.
    affinity: Vec<(PodAffinityTerm, HashSet<String>)>,
    /// Whether any pod matches each affinity term at all.
    affinity_any: Vec<bool>,
    /// Domains the pod's required anti-affinity excludes.
    anti: HashSet<Domain>,
    /// Domains existing pods' anti-affinity excludes for this pod.
    existing_anti: HashSet<Domain>,
}

/// Whether `target` is selected by `term` of a pod in `owner_namespace`.
fn term_matches(term: &PodAffinityTerm, owner_namespace: &str, target: &PodInfo) -> bool {
    let namespaces = term.namespaces.clone().unwrap_or_default();
    let all_namespaces = term.namespace_selector.as_ref().is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    });
    let namespace_ok = if all_namespaces {
        true
    } else if namespaces.is_empty() {
        target.namespace == owner_namespace
    } else {
        namespaces.contains(&target.namespace)
    };
    namespace_ok && selector_matches(term.label_selector.as_ref(), &target.labels)
}

fn required_terms(pod: &PodInfo, anti: bool) -> Vec<PodAffinityTerm> {
    let affinity = pod.spec().affinity.as_ref();
    if anti {
        affinity
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default()
    } else {
        affinity
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default()
    }
}

fn preferred_terms(pod: &PodInfo, anti: bool) -> Vec<WeightedPodAffinityTerm> {
    let affinity = pod.spec().affinity.as_ref();
    if anti {
        affinity
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default()
    } else {
        affinity
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default()
    }
}

impl PreFilterPlugin for InterPodAffinity {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, cache: &ClusterCache) -> Status {
        let affinity_terms = required_terms(pod, false);
        let anti_terms = required_terms(pod, true);
        if affinity_terms.is_empty()
            && anti_terms.is_empty()
            && cache.required_anti_affinity_pods == 0
        {
            return Status::skip();
        }
        // Only pods with terms of their own can reject this pod; only the
        // pod's own terms need every pod.
        let own_terms = !affinity_terms.is_empty() || !anti_terms.is_empty();
        let mut affinity: Vec<(PodAffinityTerm, HashSet<String>)> = affinity_terms
            .iter()
            .map(|t| (t.clone(), HashSet::new()))
            .collect();
        let mut affinity_any = vec![false; affinity.len()];
        let mut anti = HashSet::new();
        let mut existing_anti = HashSet::new();
        for node in cache.nodes.values() {
            let candidates = if own_terms {
                &node.pods
            } else {
                &node.pods_with_affinity
            };
            for existing in candidates {
                if existing.uid == pod.uid {
                    continue;
                }
                for (i, (term, domains)) in affinity.iter_mut().enumerate() {
                    if term_matches(term, &pod.namespace, existing) {
                        affinity_any[i] = true;
                        if let Some(v) = node.labels.get(&term.topology_key) {
                            domains.insert(v.clone());
                        }
                    }
                }
                for term in &anti_terms {
                    if term_matches(term, &pod.namespace, existing) {
                        if let Some(v) = node.labels.get(&term.topology_key) {
                            anti.insert((term.topology_key.clone(), v.clone()));
                        }
                    }
                }
                if !existing.has_required_anti_affinity {
                    continue;
                }
                for term in required_terms(existing, true) {
                    if term_matches(&term, &existing.namespace, pod) {
                        if let Some(v) = node.labels.get(&term.topology_key) {
                            existing_anti.insert((term.topology_key.clone(), v.clone()));
                        }
                    }
                }
            }
        }
        if affinity_terms.is_empty() && anti_terms.is_empty() && existing_anti.is_empty() {
            return Status::skip();
        }
        state.write(
            STATE,
            PreFilterState {
                affinity,
                affinity_any,
                anti,
                existing_anti,
            },
        );
        Status::success()
    }
}

impl FilterPlugin for InterPodAffinity {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<PreFilterState>(STATE) else {
            return Status::success();
        };
        for ((key, value), label) in s.existing_anti.iter().map(|d| (d, node.labels.get(&d.0))) {
            if label == Some(value) {
                let _ = key;
                return Status::unschedulable(
                    "node(s) didn't satisfy existing pods anti-affinity rules",
                );
            }
        }
        for (key, value) in &s.anti {
            if node.labels.get(key) == Some(value) {
                return Status::unschedulable("node(s) didn't match pod anti-affinity rules");
            }
        }
        for (i, (term, domains)) in s.affinity.iter().enumerate() {
            let ok = match node.labels.get(&term.topology_key) {
                Some(v) => {
                    domains.contains(v)
                        // The first pod of a group that selects itself may
                        // go anywhere.
                        || (!s.affinity_any[i] && term_matches(term, &pod.namespace, pod))
                }
                None => false,
            };
            if !ok {
                return Status {
                    code: Code::UnschedulableAndUnresolvable,
                    reasons: vec!["node(s) didn't match pod affinity rules".into()],
                };
            }
        }
        Status::success()
    }
}

impl PreScorePlugin for InterPodAffinity {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[&NodeInfo],
        cache: &ClusterCache,
    ) -> Status {
        let preferred = preferred_terms(pod, false);
        let preferred_anti = preferred_terms(pod, true);
        let mut weights: HashMap<Domain, i64> = HashMap::new();
        let mut any = !preferred.is_empty() || !preferred_anti.is_empty();
        for node in cache.nodes.values() {
            let candidates = if any {
                &node.pods
            } else {
                &node.pods_with_affinity
            };
            for existing in candidates {
                let mut add = |key: &str, w: i64| {
                    if let Some(v) = node.labels.get(key) {
                        *weights.entry((key.to_owned(), v.clone())).or_default() += w;
                    }
                };
                for t in &preferred {
                    if term_matches(&t.pod_affinity_term, &pod.namespace, existing) {
                        add(&t.pod_affinity_term.topology_key, i64::from(t.weight));
                    }
                }
                for t in &preferred_anti {
                    if term_matches(&t.pod_affinity_term, &pod.namespace, existing) {
                        add(&t.pod_affinity_term.topology_key, -i64::from(t.weight));
                    }
                }
                // Symmetry: existing pods' preferences about this pod.
                for t in preferred_terms(existing, false) {
                    if term_matches(&t.pod_affinity_term, &existing.namespace, pod) {
                        any = true;
                        add(&t.pod_affinity_term.topology_key, i64::from(t.weight));
                    }
                }
                for t in preferred_terms(existing, true) {
                    if term_matches(&t.pod_affinity_term, &existing.namespace, pod) {
                        any = true;
                        add(&t.pod_affinity_term.topology_key, -i64::from(t.weight));
                    }
                }
            }
        }
        if !any {
            return Status::skip();
        }
        state.write(SCORE_STATE, weights);
        Status::success()
    }
}

impl ScorePlugin for InterPodAffinity {
    fn score(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(weights) = state.read::<HashMap<Domain, i64>>(SCORE_STATE) else {
            return 0;
        };
        weights
            .iter()
            .filter(|((k, v), _)| node.labels.get(k) == Some(v))
            .map(|(_, w)| *w)
            .sum()
    }

    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) {
        let (min, max) = (
            scores.iter().copied().min().unwrap_or(0),
            scores.iter().copied().max().unwrap_or(0),
        );
        for s in scores.iter_mut() {
            *s = if max == min {
                0
            } else {
                (*s - min) * MAX_NODE_SCORE / (max - min)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{cache, node, pod_with};
    use serde_json::json;
    use std::sync::Arc;

    fn anti(app: &str) -> serde_json::Value {
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}]}}})
    }

    fn run(c: &ClusterCache, p: &PodInfo) -> Vec<(String, bool)> {
        let mut state = CycleState::default();
        let pre = InterPodAffinity.pre_filter(&mut state, p, c);
        c.nodes
            .values()
            .map(|n| {
                let ok =
                    pre.code == Code::Skip || InterPodAffinity.filter(&state, p, n).is_success();
                (n.name.clone(), ok)
            })
            .collect()
    }

    #[test]
    fn anti_affinity_keeps_a_group_apart() {
        let mut c = cache(vec![
            node("a", "4", "8Gi", json!({})),
            node("b", "4", "8Gi", json!({})),
        ]);
        let first = pod_with("first", json!({"labels": {"app": "anti"}}), anti("anti"));
        c.add_bound_pod(first, "a");
        let second = pod_with("second", json!({"labels": {"app": "anti"}}), anti("anti"));
        assert_eq!(
            run(&c, &second),
            vec![("a".into(), false), ("b".into(), true)]
        );
        // A pod without terms of its own still respects existing pods' anti-affinity.
        let plain = pod_with("plain", json!({"labels": {"app": "anti"}}), json!({}));
        assert_eq!(
            run(&c, &plain),
            vec![("a".into(), false), ("b".into(), true)]
        );
        let other = pod_with("other", json!({"labels": {"app": "web"}}), json!({}));
        assert_eq!(
            run(&c, &other),
            vec![("a".into(), true), ("b".into(), true)]
        );
    }

    #[test]
    fn affinity_follows_the_group_and_lets_the_first_in() {
        let mut c = cache(vec![
            node("a", "4", "8Gi", json!({})),
            node("b", "4", "8Gi", json!({})),
        ]);
        let aff = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let first = pod_with("first", json!({"labels": {"app": "db"}}), aff.clone());
        assert_eq!(
            run(&c, &first),
            vec![("a".into(), true), ("b".into(), true)]
        );
        c.add_bound_pod(Arc::new(PodInfo::new(first.pod.clone())), "b");
        let follower = pod_with("follower", json!({"labels": {"app": "web"}}), aff);
        assert_eq!(
            run(&c, &follower),
            vec![("a".into(), false), ("b".into(), true)]
        );
    }

    #[test]
    fn preferred_terms_score_domains() {
        let mut c = cache(vec![
            node("a", "4", "8Gi", json!({})),
            node("b", "4", "8Gi", json!({})),
        ]);
        c.add_bound_pod(
            pod_with("cache", json!({"labels": {"app": "cache"}}), json!({})),
            "b",
        );
        let p = pod_with(
            "p",
            json!({}),
            json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}}]}}}),
        );
        let mut state = CycleState::default();
        let nodes: Vec<&NodeInfo> = c.nodes.values().collect();
        assert!(InterPodAffinity
            .pre_score(&mut state, &p, &nodes, &c)
            .is_success());
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| InterPodAffinity.score(&state, &p, n))
            .collect();
        InterPodAffinity.normalize(&state, &p, &mut scores);
        assert_eq!(scores, vec![0, 100]);
    }
}
