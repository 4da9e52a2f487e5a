//! DefaultPreemption: when no node fits, find the node where evicting the
//! fewest, lowest-priority pods makes room, and nominate it. Pods with
//! `preemptionPolicy: Never` never preempt.

use std::sync::Arc;

use crate::cache::{ClusterCache, NodeInfo, PodInfo};
use crate::framework::{
    Code, CycleState, FilterPlugin, NodeStatuses, Nomination, Plugin, PostFilterPlugin,
    PreFilterPlugin,
};

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

/// A node where preemption works: (highest victim priority, sum of victim
/// priorities, victim count, node, victims). Lower is better, in order.
type Candidate = (i32, i64, usize, String, Vec<Arc<PodInfo>>);

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
        let mut best: Option<Candidate> = None;
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
            let mut candidates: Vec<Arc<PodInfo>> = node
                .pods
                .iter()
                .filter(|p| p.priority < pod.priority)
                .cloned()
                .collect();
            if candidates.is_empty() {
                continue;
            }
            // Pods already nominated here (of this pod's priority or more)
            // keep their claim on the room.
            let mut trial = cache.node_for(node, pod).into_owned();
            for victim in &candidates {
                trial.remove_pod(&victim.uid);
            }
            if !fits(pod, &trial, cache, filters, pre_filters) {
                continue;
            }
            // Give back as many as possible, most important first.
            candidates.sort_by_key(|c| std::cmp::Reverse(c.priority));
            let mut victims = Vec::new();
            for candidate in candidates {
                trial.add_pod(candidate.clone());
                if !fits(pod, &trial, cache, filters, pre_filters) {
                    trial.remove_pod(&candidate.uid);
                    victims.push(candidate);
                }
            }
            let highest = victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN);
            let sum: i64 = victims.iter().map(|v| i64::from(v.priority)).sum();
            let better = match &best {
                None => true,
                Some((h, s, n, _, _)) => (highest, sum, victims.len()) < (*h, *s, *n),
            };
            if better {
                best = Some((highest, sum, victims.len(), name.clone(), victims));
            }
        }
        best.map(|(_, _, _, node, victims)| Nomination {
            node,
            victims: victims
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
}
