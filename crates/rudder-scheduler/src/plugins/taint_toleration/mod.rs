//! TaintToleration: a node's NoSchedule and NoExecute taints keep out
//! pods that do not tolerate them; untolerated PreferNoSchedule taints
//! lower a node's score.

use k8s_openapi::api::core::v1::{Taint, Toleration};

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{CycleState, FilterPlugin, Plugin, ScorePlugin, Status, MAX_NODE_SCORE};

pub const NAME: &str = "TaintToleration";

pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// Whether one toleration tolerates one taint (Kubernetes' rules).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_ok = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = toleration.key.as_deref().unwrap_or("");
    let key_ok = key.is_empty() || key == taint.key;
    if !effect_ok || !key_ok {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => {
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

pub fn untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

impl FilterPlugin for TaintToleration {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let tolerations = pod.spec().tolerations.clone().unwrap_or_default();
        match untolerated(&node.taints, &tolerations, &["NoSchedule", "NoExecute"]) {
            None => Status::success(),
            Some(taint) => Status::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or("")
            )),
        }
    }
}

impl ScorePlugin for TaintToleration {
    /// The number of untolerated PreferNoSchedule taints (fewer is better;
    /// `normalize` turns it around).
    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let tolerations = pod.spec().tolerations.clone().unwrap_or_default();
        node.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
            .count() as i64
    }

    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE - *s * MAX_NODE_SCORE / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node_info, pod};
    use serde_json::json;

    #[test]
    fn taints_need_matching_tolerations() {
        let tainted = node_info(
            "n",
            "1",
            "1Gi",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
        );
        let s = CycleState::default();
        let cases = [
            ("none", json!({}), false),
            (
                "Equal",
                json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
                true,
            ),
            (
                "wrong value",
                json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web"}]}),
                false,
            ),
            (
                "Exists",
                json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}]}),
                true,
            ),
            (
                "wildcard",
                json!({"tolerations": [{"operator": "Exists"}]}),
                true,
            ),
            (
                "other effect",
                json!({"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]}),
                false,
            ),
        ];
        for (name, spec, fits) in cases {
            let status = TaintToleration.filter(&s, &pod("p", spec), &tainted);
            assert_eq!(status.is_success(), fits, "{name}");
            if !fits {
                assert_eq!(
                    status.reasons,
                    vec!["node(s) had untolerated taint {dedicated: db}"]
                );
            }
        }
    }

    #[test]
    fn prefer_no_schedule_lowers_the_score() {
        let soft = node_info(
            "a",
            "1",
            "1Gi",
            json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}),
        );
        let clean = node_info("b", "1", "1Gi", json!({}));
        let p = pod("p", json!({}));
        let s = CycleState::default();
        let mut scores = vec![
            TaintToleration.score(&s, &p, &soft),
            TaintToleration.score(&s, &p, &clean),
        ];
        TaintToleration.normalize(&s, &p, &mut scores);
        assert_eq!(scores, vec![0, 100]);
    }
}
