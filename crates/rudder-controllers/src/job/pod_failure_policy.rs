//! `spec.podFailurePolicy`: which failed pods fail the Job at once,
//! which are ignored and which count toward `backoffLimit`.

use k8s_openapi::api::batch::v1::PodFailurePolicy;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    FailJob(String),
    FailIndex,
    Ignore,
    Count,
}

/// The first rule matching a failed pod, as `(action, counts toward the
/// backoff limit)`; `None` when no rule matches (the failure counts).
pub fn match_pod_failure_policy(policy: &PodFailurePolicy, pod: &Pod) -> Option<Action> {
    let status = pod.status.as_ref()?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    for (index, rule) in policy.rules.iter().enumerate() {
        if let Some(on_exit) = &rule.on_exit_codes {
            let matching = |statuses: Option<&Vec<ContainerStatus>>| {
                statuses.into_iter().flatten().find_map(|cs| {
                    let code = cs.state.as_ref()?.terminated.as_ref()?.exit_code;
                    if code == 0 {
                        return None;
                    }
                    if on_exit
                        .container_name
                        .as_ref()
                        .is_some_and(|n| *n != cs.name)
                    {
                        return None;
                    }
                    let listed = on_exit.values.contains(&code);
                    let hit = match on_exit.operator.as_str() {
                        "In" => listed,
                        "NotIn" => !listed,
                        _ => false,
                    };
                    hit.then(|| (cs.name.clone(), code))
                })
            };
            let found = matching(status.container_statuses.as_ref())
                .or_else(|| matching(status.init_container_statuses.as_ref()));
            if let Some((container, code)) = found {
                return Some(match rule.action.as_str() {
                    "Ignore" => Action::Ignore,
                    "Count" => Action::Count,
                    "FailIndex" => Action::FailIndex,
                    _ => Action::FailJob(format!(
                        "Container {container} for pod {namespace}/{name} failed with exit code {code} matching {} rule at index {index}",
                        rule.action
                    )),
                });
            }
        } else if let Some(patterns) = &rule.on_pod_conditions {
            let found = status.conditions.iter().flatten().find(|c| {
                patterns.iter().any(|p| {
                    // The API server defaults a pattern's status to True.
                    let want = if p.status.is_empty() {
                        "True"
                    } else {
                        p.status.as_str()
                    };
                    p.type_ == c.type_ && want == c.status
                })
            });
            if let Some(condition) = found {
                return Some(match rule.action.as_str() {
                    "Ignore" => Action::Ignore,
                    "Count" => Action::Count,
                    "FailIndex" => Action::FailIndex,
                    _ => Action::FailJob(format!(
                        "Pod {namespace}/{name} has condition {} matching {} rule at index {index}",
                        condition.type_, rule.action
                    )),
                });
            }
        }
    }
    None
}

/// Whether a failed pod counts toward the backoff limit.
pub fn counts_as_failure(policy: Option<&PodFailurePolicy>, pod: &Pod) -> bool {
    !matches!(
        policy.and_then(|p| match_pod_failure_policy(p, pod)),
        Some(Action::Ignore)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(exit: i32, conditions: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": "Failed", "conditions": conditions, "containerStatuses": [
                {"name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": exit}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn rules_match_in_order_on_exit_codes_and_conditions() {
        let policy: PodFailurePolicy = serde_json::from_value(json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1]}},
        ]}))
        .unwrap();
        assert_eq!(
            match_pod_failure_policy(&policy, &pod(42, json!([]))),
            Some(Action::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 0".into()
            ))
        );
        let disrupted = pod(1, json!([{"type": "DisruptionTarget", "status": "True"}]));
        assert_eq!(
            match_pod_failure_policy(&policy, &disrupted),
            Some(Action::Ignore)
        );
        assert!(!counts_as_failure(Some(&policy), &disrupted));
        assert_eq!(
            match_pod_failure_policy(&policy, &pod(3, json!([]))),
            Some(Action::Count)
        );
        assert_eq!(match_pod_failure_policy(&policy, &pod(1, json!([]))), None);
        assert!(counts_as_failure(Some(&policy), &pod(1, json!([]))));
    }
}
