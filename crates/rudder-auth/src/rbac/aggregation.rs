//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` holds
//! the rules of every ClusterRole its selectors match (how `admin`, `edit`
//! and `view` grow when an extension labels a role
//! `rbac.authorization.k8s.io/aggregate-to-view: "true"`).

use serde_json::{Map, Value};

use super::rule::PolicyRule;

/// The rules an aggregated ClusterRole should hold: the union of the
/// rules of the `cluster_roles` its `aggregationRule.clusterRoleSelectors`
/// match (itself excepted), selector by selector, each selector's roles in
/// name order, without duplicates. `None` when `target` has no
/// aggregationRule, so its rules are its own.
pub fn aggregated_rules(target: &Value, cluster_roles: &[Value]) -> Option<Vec<Value>> {
    let rule = target.get("aggregationRule").filter(|r| !r.is_null())?;
    let target_name = name_of(target);
    let selectors = rule
        .get("clusterRoleSelectors")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut rules: Vec<PolicyRule> = Vec::new();
    for selector in &selectors {
        let mut matched: Vec<&Value> = cluster_roles
            .iter()
            .filter(|role| name_of(role) != target_name)
            .filter(|role| label_selector_matches(selector, labels_of(role)))
            .collect();
        matched.sort_by_key(|role| name_of(role));
        for role in matched {
            for rule in PolicyRule::list_from(role) {
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
        }
    }
    Some(rules.iter().map(PolicyRule::to_value).collect())
}

fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn labels_of(object: &Value) -> Option<&Map<String, Value>> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
}

/// Whether a `metav1.LabelSelector` (matchLabels and matchExpressions
/// with In, NotIn, Exists, DoesNotExist) selects an object with `labels`.
/// An empty selector selects everything; one that does not parse, nothing.
pub fn label_selector_matches(selector: &Value, labels: Option<&Map<String, Value>>) -> bool {
    let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
    if let Some(match_labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (key, value) in match_labels {
            if label(key) != value.as_str() || value.as_str().is_none() {
                return false;
            }
        }
    }
    let expressions = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    expressions.iter().all(|expression| {
        let Some(key) = expression.get("key").and_then(Value::as_str) else {
            return false;
        };
        let values: Vec<&str> = expression
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match expression.get("operator").and_then(Value::as_str) {
            Some("In") => label(key).is_some_and(|v| values.contains(&v)),
            Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
            Some("Exists") => label(key).is_some(),
            Some("DoesNotExist") => label(key).is_none(),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn role(name: &str, labels: Value, rules: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    #[test]
    fn aggregation_unions_matching_roles_in_name_order_without_duplicates() {
        let target = json!({
            "metadata": {"name": "monitoring", "labels": {"team": "a"}},
            "aggregationRule": {"clusterRoleSelectors": [
                {"matchLabels": {"team": "a"}},
                {"matchExpressions": [{"key": "extra", "operator": "Exists"}]}
            ]},
            "rules": []
        });
        let get_pods = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]});
        let list_nodes = json!({"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]});
        let metrics = json!({"nonResourceURLs": ["/metrics"], "verbs": ["get"]});
        let roles = vec![
            role("zeta", json!({"team": "a"}), json!([list_nodes, get_pods])),
            role("alpha", json!({"team": "a"}), json!([get_pods])),
            role(
                "other-team",
                json!({"team": "b"}),
                json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
            ),
            role(
                "extras",
                json!({"extra": "yes"}),
                json!([metrics, get_pods]),
            ),
            target.clone(),
        ];
        assert_eq!(
            aggregated_rules(&target, &roles).unwrap(),
            vec![get_pods, list_nodes, metrics]
        );
        assert_eq!(aggregated_rules(&roles[0], &roles), None, "not aggregated");
    }

    #[test]
    fn label_selectors_follow_metav1_semantics() {
        let labels = json!({"a": "1", "b": "2"});
        let labels = labels.as_object();
        let cases = [
            (json!({}), true),
            (json!({"matchLabels": {"a": "1"}}), true),
            (json!({"matchLabels": {"a": "2"}}), false),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["0", "1"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "c", "operator": "NotIn", "values": ["1"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "c", "operator": "DoesNotExist"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "b", "operator": "Exists"}], "matchLabels": {"a": "1"}}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "b", "operator": "Bogus"}]}),
                false,
            ),
        ];
        for (selector, expected) in cases {
            assert_eq!(
                label_selector_matches(&selector, labels),
                expected,
                "{selector}"
            );
        }
    }
}
