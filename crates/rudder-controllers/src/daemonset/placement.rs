//! Which nodes a DaemonSet's pod belongs on: the node name, node selector
//! and required node affinity of the template, and the node's taints
//! against the pod's tolerations (with the tolerations every daemon pod
//! gets). Node conditions and `spec.unschedulable` do not matter: daemon
//! pods tolerate them. The default scheduler binds the pods; the
//! controller pins each to its node with required node affinity.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use kube::ResourceExt;

/// The field daemon pods are pinned by.
const NAME_FIELD: &str = "metadata.name";

/// The tolerations Kubernetes adds to every daemon pod: it keeps running
/// through node trouble, and lands on cordoned or pressured nodes.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let toleration = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        };
        // One with the same key, operator, value and effect is replaced
        // (dropping any tolerationSeconds: daemon pods stay for good).
        let same = |t: &Toleration| {
            t.key == toleration.key
                && t.operator.as_deref().unwrap_or("Equal") == "Exists"
                && t.value.as_deref().unwrap_or("").is_empty()
                && t.effect == toleration.effect
        };
        match tolerations.iter_mut().find(|t| same(t)) {
            Some(existing) => *existing = toleration,
            None => tolerations.push(toleration),
        }
    }
}

/// Whether `toleration` tolerates `taint` (core/v1 `ToleratesTaint`).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// The first taint with an effect `filter` accepts that no toleration
/// tolerates.
pub fn untolerated_taint<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    filter: impl Fn(&str) -> bool,
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| filter(&t.effect))
        .find(|taint| !tolerations.iter().any(|tol| tolerates(tol, taint)))
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else {
                return false;
            };
            let Ok(bound) = bound.parse::<i64>() else {
                return false;
            };
            if op == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A term matches when all its requirements do; an empty term matches
/// nothing.
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = crate::util::labels_of(&node.metadata);
    expressions
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == NAME_FIELD && requirement_matches(r, node.metadata.name.as_deref()))
}

/// The template's node selector and required node affinity against the
/// node's labels and name.
pub fn node_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = crate::util::labels_of(&node.metadata);
    if let Some(selector) = &spec.node_selector {
        if selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node)),
    }
}

/// kube-controller-manager's `NodeShouldRunDaemonPod`: whether a daemon
/// pod should be placed on the node, and whether one already there may
/// stay (it may despite a NoSchedule taint it does not tolerate).
pub fn should_run(node: &Node, ds: &DaemonSet) -> (bool, bool) {
    let mut spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let node_name = node.name_any();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != node_name)
    {
        return (false, false);
    }
    add_daemon_tolerations(&mut spec);
    if !node_matches(&spec, node) {
        return (false, false);
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    if untolerated_taint(taints, tolerations, |e| {
        e == "NoSchedule" || e == "NoExecute"
    })
    .is_some()
    {
        let evicting = untolerated_taint(taints, tolerations, |e| e == "NoExecute").is_some();
        return (false, !evicting);
    }
    (true, true)
}

/// The affinity that pins a daemon pod to `node` (the controller has
/// already checked the node meets the template's own terms).
pub fn pin_to_node(affinity: Option<Affinity>, node: &str) -> Affinity {
    let selector = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: NAME_FIELD.into(),
                operator: "In".into(),
                values: Some(vec![node.to_owned()]),
            }]),
        }],
    };
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(selector);
    affinity
}

/// The node a daemon pod is for: where it is bound, or where its affinity
/// pins it.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(name) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(name.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == NAME_FIELD && r.operator == "In")
        .and_then(|r| match r.values.as_deref() {
            Some([only]) => Some(only.clone()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints}}))
        .unwrap()
    }

    fn daemon_set(spec: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({"metadata": {"name": "agent"}, "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": spec}}}))
        .unwrap()
    }

    #[test]
    fn selectors_affinity_and_taints_decide_placement() {
        let plain = daemon_set(json!({"containers": []}));
        let n = node("n1", json!({"disk": "ssd", "n": "5"}), json!([]));
        assert_eq!(should_run(&n, &plain), (true, true));

        let selecting = daemon_set(json!({"containers": [], "nodeSelector": {"disk": "hdd"}}));
        assert_eq!(should_run(&n, &selecting), (false, false));

        let affinity = daemon_set(json!({"containers": [], "affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "n", "operator": "Gt", "values": ["7"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
        ]}}}}));
        assert_eq!(should_run(&n, &affinity), (true, true));
        assert_eq!(
            should_run(&node("n2", json!({"n": "5"}), json!([])), &affinity),
            (false, false)
        );

        // NoSchedule: not placed, but one already there may stay.
        let tainted = node(
            "n1",
            json!({}),
            json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]),
        );
        assert_eq!(should_run(&tainted, &plain), (false, true));
        let tolerating = daemon_set(json!({"containers": [], "tolerations": [
            {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}));
        assert_eq!(should_run(&tainted, &tolerating), (true, true));
        // NoExecute: must go.
        let evicting = node(
            "n1",
            json!({}),
            json!([{"key": "x", "effect": "NoExecute"}]),
        );
        assert_eq!(should_run(&evicting, &plain), (false, false));
        // Cordoned and unreachable nodes keep their daemons.
        let cordoned = node(
            "n1",
            json!({}),
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                   {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]),
        );
        assert_eq!(should_run(&cordoned, &plain), (true, true));
    }

    #[test]
    fn daemon_pods_get_default_tolerations_and_a_pin() {
        let mut spec: PodSpec =
            serde_json::from_value(json!({"containers": [], "hostNetwork": true,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}]}))
            .unwrap();
        add_daemon_tolerations(&mut spec);
        let tolerations = spec.tolerations.as_ref().unwrap();
        assert_eq!(tolerations.len(), 7);
        assert!(tolerations.iter().all(|t| t.toleration_seconds.is_none()));
        spec.affinity = Some(pin_to_node(spec.affinity.take(), "n3"));
        let pod = Pod {
            spec: Some(spec),
            ..Default::default()
        };
        assert_eq!(target_node(&pod).as_deref(), Some("n3"));
    }
}
