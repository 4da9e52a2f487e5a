//! DefaultPreemption: when no node fits, find the node where evicting the
//! fewest, lowest-priority pods makes room, and nominate it. Pods with
//! `preemptionPolicy: Never` never preempt. PodDisruptionBudgets are
//! respected where possible: protected pods are the last to be chosen as
//! victims, and nodes needing fewer budget violations are preferred.

use std::cmp::Ordering;
use std::sync::Arc;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::cache::{ClusterCache, NodeInfo, PodInfo};
use crate::framework::{
    Code, CycleState, FilterPlugin, NodeStatuses, Nomination, Plugin, PostFilterPlugin,
    PreFilterPlugin,
};
use crate::plugins::selector_matches;

pub const NAME: &str = "DefaultPreemption";

pub struct DefaultPreemption;

impl Plugin for DefaultPreemption {
    fn name(&self) -> &'static str {
        NAME
    }
}

fn fits(
    pod: &PodInfo,
    node: &NodeInfo,
    cache: &ClusterCache,
    filters: &[&dyn FilterPlugin],
    pre_filters: &[&dyn PreFilterPlugin],
) -> bool {
    let mut state = CycleState::default();
    for p in pre_filters {
        let status = p.pre_filter(&mut state, pod, cache);
        if !matches!(status.code, Code::Success | Code::Skip) {
            return false;
        }
    }
    filters
        .iter()
        .all(|f| f.filter(&state, pod, node).is_success())
}

/// A node where preemption works: the victims, most important first, and
/// how many of them are evicted against a PodDisruptionBudget.
struct Candidate {
    node: String,
    victims: Vec<Arc<PodInfo>>,
    pdb_violations: usize,
}

/// When the pod started, for ordering; a pod not started yet counts as
/// starting now, later than any that has (as Kubernetes'
/// `GetPodStartTime`).
fn start_time(pod: &PodInfo) -> Option<&Time> {
    pod.pod.status.as_ref().and_then(|s| s.start_time.as_ref())
}

/// Orders start times with "not started" as the latest.
fn cmp_start(a: Option<&Time>, b: Option<&Time>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Kubernetes' `MoreImportantPod` as a sort order: higher priority first,
/// then the one that started earlier.
fn more_important_first(a: &Arc<PodInfo>, b: &Arc<PodInfo>) -> Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| cmp_start(start_time(a), start_time(b)))
}

/// Splits `pods` (order kept) into those whose eviction would exceed a
/// PodDisruptionBudget and those whose would not. Each PDB's
/// `disruptionsAllowed` is spent by the victims counted before; pods the
/// API server already recorded in `status.disruptedPods` do not spend it.
fn split_by_pdb(
    pods: Vec<Arc<PodInfo>>,
    pdbs: &[&PodDisruptionBudget],
) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut allowed: Vec<i32> = pdbs
        .iter()
        .map(|p| p.status.as_ref().map_or(0, |s| s.disruptions_allowed))
        .collect();
    let mut violating = Vec::new();
    let mut non_violating = Vec::new();
    for pod in pods {
        let mut violated = false;
        // A pod without labels matches no budget.
        if !pod.labels.is_empty() {
            for (i, pdb) in pdbs.iter().enumerate() {
                if pdb.metadata.namespace.as_deref() != Some(pod.namespace.as_str()) {
                    continue;
                }
                let selector = pdb.spec.as_ref().and_then(|s| s.selector.as_ref());
                // A missing or empty selector selects nothing here.
                let empty = selector.is_none_or(|s| {
                    s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                        && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
                });
                if empty || !selector_matches(selector, &pod.labels) {
                    continue;
                }
                let name = pod.pod.metadata.name.as_deref().unwrap_or_default();
                if pdb
                    .status
                    .as_ref()
                    .and_then(|s| s.disrupted_pods.as_ref())
                    .is_some_and(|d| d.contains_key(name))
                {
                    // Its eviction is already being processed.
                    continue;
                }
                if allowed[i] <= 0 {
                    violated = true;
                    break;
                }
                allowed[i] -= 1;
            }
        }
        if violated {
            violating.push(pod);
        } else {
            non_violating.push(pod);
        }
    }
    (violating, non_violating)
}

/// The fewest, least important victims on `node` that make room for
/// `pod`, keeping PDB-protected pods first; `None` when evicting every
/// lower-priority pod would not be enough.
fn select_victims(
    pod: &PodInfo,
    node: &NodeInfo,
    cache: &ClusterCache,
    pdbs: &[&PodDisruptionBudget],
    filters: &[&dyn FilterPlugin],
    pre_filters: &[&dyn PreFilterPlugin],
) -> Option<Candidate> {
    let mut potential: Vec<Arc<PodInfo>> = node
        .pods
        .iter()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    if potential.is_empty() {
        return None;
    }
    // Pods already nominated here (of this pod's priority or more) keep
    // their claim on the room.
    let mut trial = cache.node_for(node, pod).into_owned();
    for victim in &potential {
        trial.remove_pod(&victim.uid);
    }
    if !fits(pod, &trial, cache, filters, pre_filters) {
        return None;
    }
    potential.sort_by(more_important_first);
    let (violating, non_violating) = split_by_pdb(potential, pdbs);
    let mixed = !violating.is_empty() && !non_violating.is_empty();
    // Give back as many as possible: first the pods a budget protects,
    // then the others, most important first in each group.
    let mut victims = Vec::new();
    let mut pdb_violations = 0;
    for (candidate, protected) in violating
        .into_iter()
        .map(|p| (p, true))
        .chain(non_violating.into_iter().map(|p| (p, false)))
    {
        trial.add_pod(candidate.clone());
        if !fits(pod, &trial, cache, filters, pre_filters) {
            trial.remove_pod(&candidate.uid);
            victims.push(candidate);
            if protected {
                pdb_violations += 1;
            }
        }
    }
    if victims.is_empty() {
        return None;
    }
    if mixed {
        victims.sort_by(more_important_first);
    }
    Some(Candidate {
        node: node.name.clone(),
        victims,
        pdb_violations,
    })
}

/// Kubernetes' `pickOneNodeForPreemption`: fewest PDB violations, then
/// the lowest highest-priority victim, then the smallest sum of victim
/// priorities, then the fewest victims, then the latest start of the
/// highest-priority victims; still tied, the first candidate.
fn pick_one(candidates: Vec<Candidate>) -> Option<Candidate> {
    type Score = fn(&Candidate) -> i128;
    let scores: [Score; 4] = [
        |c| -(c.pdb_violations as i128),
        |c| -i128::from(c.victims[0].priority),
        // Offset so that pods of negative priority still add up.
        |c| {
            -c.victims
                .iter()
                .map(|v| i128::from(v.priority) + i128::from(i32::MAX) + 1)
                .sum::<i128>()
        },
        |c| -(c.victims.len() as i128),
    ];
    let mut left = candidates;
    for score in scores {
        if left.len() <= 1 {
            break;
        }
        let best = left.iter().map(score).max()?;
        left.retain(|c| score(c) == best);
    }
    if left.len() > 1 {
        // The earliest start among each node's highest-priority victims;
        // the latest of those wins.
        let earliest = |c: &Candidate| {
            let top = c.victims[0].priority;
            c.victims
                .iter()
                .filter(|v| v.priority == top)
                .map(|v| start_time(v))
                .min_by(|a, b| cmp_start(*a, *b))
                .flatten()
                .cloned()
        };
        let keys: Vec<Option<Time>> = left.iter().map(earliest).collect();
        let best = keys
            .iter()
            .max_by(|a, b| cmp_start(a.as_ref(), b.as_ref()))
            .cloned()
            .flatten();
        let index = keys
            .iter()
            .position(|k| cmp_start(k.as_ref(), best.as_ref()) == Ordering::Equal)
            .unwrap_or(0);
        return left.into_iter().nth(index);
    }
    left.into_iter().next()
}

impl PostFilterPlugin for DefaultPreemption {
    fn post_filter(
        &self,
        pod: &PodInfo,
        cache: &ClusterCache,
        statuses: &NodeStatuses,
        filters: &[&dyn FilterPlugin],
        pre_filters: &[&dyn PreFilterPlugin],
    ) -> Option<Nomination> {
        if pod.spec().preemption_policy.as_deref() == Some("Never") {
            return None;
        }
        let pdbs: Vec<&PodDisruptionBudget> = cache.pdbs.values().map(|p| p.as_ref()).collect();
        let mut candidates = Vec::new();
        for name in &cache.node_order {
            let Some(node) = cache.nodes.get(name) else {
                continue;
            };
            // Only nodes that failed for reasons removing pods can fix.
            if statuses
                .get(name)
                .is_some_and(|s| s.code != Code::Unschedulable)
            {
                continue;
            }
            if let Some(candidate) = select_victims(pod, node, cache, &pdbs, filters, pre_filters) {
                candidates.push(candidate);
            }
        }
        pick_one(candidates).map(|c| Nomination {
            node: c.node,
            victims: c
                .victims
                .iter()
                .map(|v| (v.key.clone(), v.uid.clone()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Status;
    use crate::plugins::node_resources_fit::NodeResourcesFit;
    use crate::plugins::testing::{cache, node, pod};
    use serde_json::json;

    fn prio(name: &str, cpu: &str, priority: i32) -> Arc<PodInfo> {
        pod(
            name,
            json!({"priority": priority, "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]}),
        )
    }

    fn preempt(c: &ClusterCache, p: &PodInfo) -> Option<Nomination> {
        let fit = NodeResourcesFit::default();
        let filters: Vec<&dyn FilterPlugin> = vec![&fit];
        let mut statuses = NodeStatuses::new();
        for n in c.nodes.values() {
            statuses.insert(n.name.clone(), fit.filter(&CycleState::default(), p, n));
        }
        DefaultPreemption.post_filter(p, c, &statuses, &filters, &[])
    }

    #[test]
    fn evicts_the_fewest_lowest_priority_pods() {
        let mut c = cache(vec![
            node("a", "4", "8Gi", json!({})),
            node("b", "4", "8Gi", json!({})),
        ]);
        // a: two small low pods; b: one big pod of middle priority.
        c.add_bound_pod(prio("a1", "2", 10), "a");
        c.add_bound_pod(prio("a2", "2", 10), "a");
        c.add_bound_pod(prio("b1", "3", 500), "b");
        c.add_bound_pod(prio("b2", "1", 5), "b");
        let vip = prio("vip", "3", 1000);
        let nomination = preempt(&c, &vip).unwrap();
        // On a, two victims of priority 10; on b, b1 (500) must go: the
        // lower highest-victim priority wins, so a.
        assert_eq!(nomination.node, "a");
        assert_eq!(nomination.victims.len(), 2);

        // Pods that fit after evicting one keep the other.
        let mid = prio("mid", "2", 1000);
        let nomination = preempt(&c, &mid).unwrap();
        assert_eq!(nomination.victims.len(), 1);
    }

    #[test]
    fn a_node_nominated_to_another_preemptor_is_not_chosen_again() {
        let mut c = cache(vec![
            node("a", "4", "8Gi", json!({})),
            node("b", "4", "8Gi", json!({})),
        ]);
        c.add_bound_pod(prio("a1", "4", 10), "a");
        c.add_bound_pod(prio("b1", "4", 10), "b");
        let first = prio("first", "4", 1000);
        let nomination = preempt(&c, &first).unwrap();
        assert_eq!(nomination.node, "a");
        c.nominate(first, "a");
        let second = prio("second", "4", 1000);
        let nomination = preempt(&c, &second).unwrap();
        assert_eq!(
            nomination.node, "b",
            "a's room is promised to the first preemptor"
        );
    }

    #[test]
    fn never_preempts_equal_or_higher_priority_or_when_told_not_to() {
        let mut c = cache(vec![node("a", "4", "8Gi", json!({}))]);
        c.add_bound_pod(prio("a1", "4", 100), "a");
        assert_eq!(preempt(&c, &prio("same", "1", 100)), None);
        let polite = pod(
            "polite",
            json!({"priority": 1000, "preemptionPolicy": "Never",
            "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}]}),
        );
        assert_eq!(preempt(&c, &polite), None);
        assert!(preempt(&c, &prio("vip", "1", 1000)).is_some());
        let _ = Status::success();
    }

    /// A pod of `cpu` and `priority` with labels and a start time.
    fn victim(name: &str, cpu: &str, priority: i32, app: &str, started: &str) -> Arc<PodInfo> {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "labels": {"app": app}},
            "spec": {"priority": priority, "containers": [{"name": "c", "image": "i",
                     "resources": {"requests": {"cpu": cpu}}}]},
            "status": {"startTime": started}
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(pod)))
    }

    fn pdb(app: &str, allowed: i32, disrupted: &[&str]) -> PodDisruptionBudget {
        let disrupted: serde_json::Map<String, serde_json::Value> = disrupted
            .iter()
            .map(|p| ((*p).to_owned(), json!("2024-01-01T00:00:00Z")))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("pdb-{app}"), "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": app}}},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": 3, "desiredHealthy": 2,
                       "expectedPods": 3, "observedGeneration": 1, "disruptedPods": disrupted}
        }))
        .unwrap()
    }

    fn names(pods: &[Arc<PodInfo>]) -> Vec<String> {
        pods.iter()
            .map(|p| p.pod.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn victims_split_by_their_budgets() {
        let early = "2024-01-01T00:00:00Z";
        let a1 = victim("a1", "1", 10, "a", early);
        let a2 = victim("a2", "1", 10, "a", early);
        let b1 = victim("b1", "1", 10, "b", early);
        let other_ns = {
            let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
                "metadata": {"name": "x", "namespace": "other", "uid": "uid-x", "labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}
            }))
            .unwrap();
            Arc::new(PodInfo::new(Arc::new(pod)))
        };
        let unlabelled = pod("plain", json!({}));
        let empty_selector: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "all", "namespace": "default"},
            "spec": {"selector": {}}, "status": {"disruptionsAllowed": 0, "currentHealthy": 0,
            "desiredHealthy": 0, "expectedPods": 0}
        }))
        .unwrap();
        /// (case, budgets, pods in order, the violating ones)
        type Case = (
            &'static str,
            Vec<PodDisruptionBudget>,
            Vec<Arc<PodInfo>>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            ("no budgets", vec![], vec![a1.clone(), b1.clone()], vec![]),
            (
                "budget exhausted",
                vec![pdb("a", 0, &[])],
                vec![a1.clone(), a2.clone(), b1.clone()],
                vec!["a1", "a2"],
            ),
            (
                "one disruption allowed: the second victim violates",
                vec![pdb("a", 1, &[])],
                vec![a1.clone(), a2.clone()],
                vec!["a2"],
            ),
            (
                "already disrupted pods spend nothing",
                vec![pdb("a", 0, &["a1"])],
                vec![a1.clone(), a2.clone()],
                vec!["a2"],
            ),
            (
                "other namespace",
                vec![pdb("a", 0, &[])],
                vec![other_ns.clone()],
                vec![],
            ),
            (
                "no labels",
                vec![pdb("a", 0, &[])],
                vec![unlabelled.clone()],
                vec![],
            ),
            (
                "an empty selector selects nothing",
                vec![empty_selector],
                vec![a1.clone()],
                vec![],
            ),
        ];
        for (name, budgets, pods, want) in cases {
            let refs: Vec<&PodDisruptionBudget> = budgets.iter().collect();
            let total = pods.len();
            let (violating, rest) = split_by_pdb(pods, &refs);
            assert_eq!(names(&violating), want, "{name}");
            assert_eq!(violating.len() + rest.len(), total, "{name}");
        }
    }

    #[test]
    fn budgets_steer_the_victims_and_the_node() {
        let early = "2024-01-01T00:00:00Z";
        let late = "2024-06-01T00:00:00Z";
        struct Case {
            name: &'static str,
            /// (node, pods)
            nodes: Vec<(&'static str, Vec<Arc<PodInfo>>)>,
            budgets: Vec<PodDisruptionBudget>,
            preemptor_cpu: &'static str,
            node: &'static str,
            victims: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "a protected pod is given back before an unprotected one",
                nodes: vec![(
                    "a",
                    vec![
                        victim("db", "2", 10, "db", early),
                        victim("web", "2", 10, "web", early),
                    ],
                )],
                budgets: vec![pdb("db", 0, &[])],
                preemptor_cpu: "2",
                node: "a",
                victims: vec!["web"],
            },
            Case {
                name: "a protected pod goes when nothing else makes room",
                nodes: vec![(
                    "a",
                    vec![
                        victim("db", "3", 10, "db", early),
                        victim("web", "1", 10, "web", early),
                    ],
                )],
                budgets: vec![pdb("db", 0, &[])],
                preemptor_cpu: "3",
                node: "a",
                victims: vec!["db"],
            },
            Case {
                name: "fewest violations beat lower priorities",
                nodes: vec![
                    ("a", vec![victim("db", "4", 1, "db", early)]),
                    ("b", vec![victim("batch", "4", 100, "batch", early)]),
                ],
                budgets: vec![pdb("db", 0, &[])],
                preemptor_cpu: "4",
                node: "b",
                victims: vec!["batch"],
            },
            Case {
                name: "budget left: the lowest highest-priority victim wins",
                nodes: vec![
                    ("a", vec![victim("db", "4", 1, "db", early)]),
                    ("b", vec![victim("batch", "4", 100, "batch", early)]),
                ],
                budgets: vec![pdb("db", 1, &[])],
                preemptor_cpu: "4",
                node: "a",
                victims: vec!["db"],
            },
            Case {
                name: "then the smallest sum of priorities",
                nodes: vec![
                    (
                        "a",
                        vec![
                            victim("a1", "2", 50, "x", early),
                            victim("a2", "2", 50, "x", early),
                        ],
                    ),
                    (
                        "b",
                        vec![
                            victim("b1", "2", 50, "x", early),
                            victim("b2", "2", 10, "x", early),
                        ],
                    ),
                ],
                budgets: vec![],
                preemptor_cpu: "4",
                node: "b",
                victims: vec!["b1", "b2"],
            },
            Case {
                name: "then the fewest victims",
                nodes: vec![
                    (
                        "a",
                        vec![
                            victim("a1", "2", -5, "x", early),
                            victim("a2", "2", -5, "x", early),
                        ],
                    ),
                    ("b", vec![victim("b1", "4", -5, "x", early)]),
                ],
                budgets: vec![],
                preemptor_cpu: "4",
                node: "b",
                victims: vec!["b1"],
            },
            Case {
                name: "then the latest started",
                nodes: vec![
                    ("a", vec![victim("old", "4", 5, "x", early)]),
                    ("b", vec![victim("new", "4", 5, "x", late)]),
                ],
                budgets: vec![],
                preemptor_cpu: "4",
                node: "b",
                victims: vec!["new"],
            },
        ];
        for case in cases {
            let mut c = cache(
                case.nodes
                    .iter()
                    .map(|(n, _)| node(n, "4", "8Gi", json!({})))
                    .collect(),
            );
            for (n, pods) in &case.nodes {
                for p in pods {
                    c.add_bound_pod(p.clone(), n);
                }
            }
            for b in case.budgets {
                c.upsert_pdb(b);
            }
            let nomination = preempt(&c, &prio("vip", case.preemptor_cpu, 1000))
                .unwrap_or_else(|| panic!("{}: no nomination", case.name));
            assert_eq!(nomination.node, case.node, "{}", case.name);
            let mut victims: Vec<String> = nomination
                .victims
                .iter()
                .map(|(k, _)| k.trim_start_matches("default/").to_owned())
                .collect();
            victims.sort();
            assert_eq!(victims, case.victims, "{}", case.name);
        }
    }

    #[test]
    fn victims_are_ordered_most_important_first() {
        let mut c = cache(vec![node("a", "4", "8Gi", json!({}))]);
        c.add_bound_pod(victim("low", "1", 1, "x", "2024-01-01T00:00:00Z"), "a");
        c.add_bound_pod(victim("mid", "1", 5, "db", "2024-01-01T00:00:00Z"), "a");
        c.add_bound_pod(victim("high", "2", 9, "x", "2024-01-01T00:00:00Z"), "a");
        c.upsert_pdb(pdb("db", 0, &[]));
        let pdbs: Vec<&PodDisruptionBudget> = c.pdbs.values().map(|p| p.as_ref()).collect();
        let fit = NodeResourcesFit::default();
        let filters: Vec<&dyn FilterPlugin> = vec![&fit];
        let candidate = select_victims(
            &prio("vip", "4", 1000),
            &c.nodes["a"],
            &c,
            &pdbs,
            &filters,
            &[],
        )
        .unwrap();
        assert_eq!(names(&candidate.victims), vec!["high", "mid", "low"]);
        assert_eq!(candidate.pdb_violations, 1);
    }
}
