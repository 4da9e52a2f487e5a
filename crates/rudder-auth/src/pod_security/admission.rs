//! Which requests Pod Security looks at, and what in them (Kubernetes'
//! `admission/admission.go`).

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::{forbidden_reasons, name, Evaluator, LevelVersion, NULL};

/// Pod subresources Pod Security lets through unchecked: they do not
/// change what the pod runs (`ephemeralcontainers` and `resize` do, and
/// are checked).
const IGNORED_POD_SUBRESOURCES: &[&str] = &[
    "exec",
    "attach",
    "binding",
    "eviction",
    "log",
    "portforward",
    "proxy",
    "status",
];

/// The workload resources whose pod template Pod Security checks (for
/// warn and audit only: their pods are enforced when created).
const POD_TEMPLATE_RESOURCES: &[(&str, &str)] = &[
    ("", "replicationcontrollers"),
    ("", "podtemplates"),
    ("apps", "replicasets"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
];

/// Whether Pod Security checks a create or update of
/// `group`/`resource`/`subresource`: namespaces (their labels), pods
/// (enforced; not their `status`, `binding`, `exec`... subresources) and
/// the pod templates of workloads (main resource only).
pub fn request_is_checked(group: &str, resource: &str, subresource: &str) -> bool {
    match (group, resource) {
        ("", "pods") => !IGNORED_POD_SUBRESOURCES.contains(&subresource),
        ("", "namespaces") => subresource.is_empty(),
        _ => subresource.is_empty() && POD_TEMPLATE_RESOURCES.contains(&(group, resource)),
    }
}

/// The pod metadata and spec Pod Security checks in an object of
/// `group`/`resource`: a pod itself, or a workload's pod template
/// (`spec.template`; a CronJob's `spec.jobTemplate.spec.template`; a
/// PodTemplate's `template`). `None` for other resources and for a
/// workload without a template.
pub fn pod_template<'a>(
    group: &str,
    resource: &str,
    object: &'a Value,
) -> Option<(&'a Value, &'a Value)> {
    let template = match (group, resource) {
        ("", "pods") => object,
        ("", "podtemplates") => &object["template"],
        ("batch", "cronjobs") => &object["spec"]["jobTemplate"]["spec"]["template"],
        _ if POD_TEMPLATE_RESOURCES.contains(&(group, resource)) => &object["spec"]["template"],
        _ => return None,
    };
    if template.is_null() {
        return None;
    }
    let or_null = |value: Option<&'a Value>| value.unwrap_or(&NULL);
    Some((
        or_null(template.get("metadata")),
        or_null(template.get("spec")),
    ))
}

/// Whether a pod update must be checked again. Most of a pod's spec is
/// immutable, so Kubernetes re-checks only updates that change what runs:
/// a container or init container added, removed or given another image,
/// or an ephemeral container added or given another image. Label,
/// annotation and other metadata updates, and updates of the mutable
/// fields the checks do not read, pass unchecked, so pods that were
/// admitted before a namespace tightened its policy can still be updated.
pub fn update_needs_check(old_pod: &Value, new_pod: &Value) -> bool {
    fn list<'a>(pod: &'a Value, field: &str) -> Vec<&'a Value> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .collect()
    }
    let image = |container: &Value| container["image"].as_str().unwrap_or_default().to_owned();
    for field in ["containers", "initContainers"] {
        let (old, new) = (list(old_pod, field), list(new_pod, field));
        if old.len() != new.len() || old.iter().zip(&new).any(|(o, n)| image(o) != image(n)) {
            return true;
        }
    }
    let old_ephemeral = list(old_pod, "ephemeralContainers");
    list(new_pod, "ephemeralContainers").into_iter().any(|new| {
        match old_ephemeral.iter().find(|old| name(old) == name(new)) {
            None => true,
            Some(old) => image(old) != image(new),
        }
    })
}

/// At most this many existing pods are checked when a namespace's enforce
/// level tightens.
const MAX_PODS_TO_CHECK: usize = 3000;

/// The warnings for a namespace update that tightens enforcement (see
/// [`super::NamespacePolicy::enforce_tightened_from`]): which existing
/// pods of `namespace` the new `enforce` level would reject, grouped by
/// reasons: `existing pods in namespace "ns" violate the new PodSecurity
/// enforce level "restricted:latest"`, then `web-1 (and 2 other pods):
/// allowPrivilegeEscalation != false, ...`. One pod per controller is
/// checked first, so that the limit of 3000 covers the most workloads.
/// (Kubernetes also stops after a time budget; these are pure checks, so
/// there is none here.)
pub fn pods_in_namespace_warnings(
    evaluator: &Evaluator,
    namespace: &str,
    enforce: &LevelVersion,
    pods: &[Value],
) -> Vec<String> {
    let prioritized = prioritize(pods);
    let total = prioritized.len();
    let checked = &prioritized[..total.min(MAX_PODS_TO_CHECK)];

    // Reasons in the order first seen, with the count and the least pod name.
    let mut reasons: Vec<String> = Vec::new();
    let mut counts: HashMap<String, (String, usize)> = HashMap::new();
    for pod in checked {
        let results = evaluator.check_pod(enforce, &pod["metadata"], &pod["spec"]);
        if results.is_empty() {
            continue;
        }
        let reason = forbidden_reasons(&results);
        let pod_name = name(&pod["metadata"]);
        match counts.get_mut(&reason) {
            Some((least, count)) => {
                if pod_name < *least {
                    *least = pod_name;
                }
                *count += 1;
            }
            None => {
                counts.insert(reason.clone(), (pod_name, 1));
                reasons.push(reason);
            }
        }
    }

    let mut warnings = Vec::new();
    if checked.len() < total {
        warnings.push(format!(
            "new PodSecurity enforce level only checked against the first {} of {total} existing pods",
            checked.len()
        ));
    }
    if !reasons.is_empty() {
        warnings.push(format!(
            "existing pods in namespace {namespace:?} violate the new PodSecurity enforce level {:?}",
            enforce.to_string()
        ));
    }
    let mut pod_warnings: Vec<String> = reasons
        .into_iter()
        .map(|reason| {
            let (pod_name, count) = &counts[&reason];
            match count {
                1 => format!("{pod_name}: {reason}"),
                2 => format!("{pod_name} (and 1 other pod): {reason}"),
                _ => format!("{pod_name} (and {} other pods): {reason}", count - 1),
            }
        })
        .collect();
    pod_warnings.sort();
    warnings.append(&mut pod_warnings);
    warnings
}

/// Pods without a controller and the first pod of each controller, then
/// the other replicas.
fn prioritize(pods: &[Value]) -> Vec<&Value> {
    let mut first = Vec::new();
    let mut replicas = Vec::new();
    let mut controllers = BTreeSet::new();
    for pod in pods {
        let controller = pod["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|owner| owner["controller"].as_bool() == Some(true));
        match controller {
            Some(owner) if !controllers.insert(owner["uid"].as_str().unwrap_or_default()) => {
                replicas.push(pod);
            }
            _ => first.push(pod),
        }
    }
    first.append(&mut replicas);
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_security::{Level, Version};
    use serde_json::json;

    #[test]
    fn checked_requests() {
        let cases = [
            ("", "pods", "", true),
            ("", "pods", "ephemeralcontainers", true),
            ("", "pods", "resize", true),
            ("", "pods", "status", false),
            ("", "pods", "binding", false),
            ("", "pods", "exec", false),
            ("", "namespaces", "", true),
            ("", "namespaces", "finalize", false),
            ("apps", "deployments", "", true),
            ("apps", "deployments", "scale", false),
            ("batch", "cronjobs", "", true),
            ("", "services", "", false),
            ("extensions", "deployments", "", false),
        ];
        for (group, resource, subresource, expected) in cases {
            assert_eq!(
                request_is_checked(group, resource, subresource),
                expected,
                "{group}/{resource}/{subresource}"
            );
        }
    }

    #[test]
    fn pod_templates_of_each_resource() {
        let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"hostPID": true}});
        let cases = [
            ("", "pods", template.clone()),
            ("", "podtemplates", json!({"template": template})),
            (
                "",
                "replicationcontrollers",
                json!({"spec": {"template": template}}),
            ),
            (
                "apps",
                "deployments",
                json!({"spec": {"template": template}}),
            ),
            (
                "apps",
                "replicasets",
                json!({"spec": {"template": template}}),
            ),
            (
                "apps",
                "statefulsets",
                json!({"spec": {"template": template}}),
            ),
            (
                "apps",
                "daemonsets",
                json!({"spec": {"template": template}}),
            ),
            ("batch", "jobs", json!({"spec": {"template": template}})),
            (
                "batch",
                "cronjobs",
                json!({"spec": {"jobTemplate": {"spec": {"template": template}}}}),
            ),
        ];
        for (group, resource, object) in &cases {
            let (metadata, spec) = pod_template(group, resource, object).expect(resource);
            assert_eq!(metadata["labels"]["app"], "x", "{resource}");
            assert_eq!(spec["hostPID"], true, "{resource}");
        }
        assert_eq!(pod_template("", "services", &template), None);
        assert_eq!(
            pod_template("", "replicationcontrollers", &json!({"spec": {}})),
            None
        );
        let bare = json!({"spec": {"template": {}}});
        assert_eq!(
            pod_template("apps", "deployments", &bare),
            Some((&Value::Null, &Value::Null))
        );
    }

    fn pod(containers: Value, ephemeral: Value) -> Value {
        json!({"metadata": {"labels": {"a": "1"}}, "spec": {
            "containers": containers, "ephemeralContainers": ephemeral,
            "initContainers": [{"name": "init", "image": "busybox"}],
            "activeDeadlineSeconds": 10,
        }})
    }

    #[test]
    fn significant_pod_updates() {
        let c = |image: &str| json!({"name": "c", "image": image, "securityContext": {}});
        let old = pod(json!([c("nginx")]), json!([]));
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"]["a"] = json!("2");
        relabelled["spec"]["activeDeadlineSeconds"] = json!(5);
        relabelled["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        let mut init_image = old.clone();
        init_image["spec"]["initContainers"][0]["image"] = json!("alpine");
        let debug = json!({"name": "debug", "image": "busybox"});
        let with_debug = pod(json!([c("nginx")]), json!([debug]));
        let mut debug_image = with_debug.clone();
        debug_image["spec"]["ephemeralContainers"][0]["image"] = json!("alpine");

        let cases = [
            (&old, &old, false),
            // Only the images count: other changes the API server itself
            // refuses on pods, or that the checks never read.
            (&old, &relabelled, false),
            (&old, &pod(json!([c("nginx:2")]), json!([])), true),
            (&old, &pod(json!([c("nginx"), c("x")]), json!([])), true),
            (&old, &init_image, true),
            (&old, &with_debug, true),
            (&with_debug, &with_debug, false),
            (&with_debug, &debug_image, true),
            (&with_debug, &old, false),
        ];
        for (i, (old, new, expected)) in cases.into_iter().enumerate() {
            assert_eq!(update_needs_check(old, new), expected, "case {i}");
        }
    }

    #[test]
    fn existing_pod_warnings_group_by_reasons() {
        let host_network = |pod_name: &str, owner: Option<&str>| {
            let owners: Vec<Value> = owner
                .map(|uid| json!({"uid": uid, "controller": true}))
                .into_iter()
                .collect();
            json!({
                "metadata": {"name": pod_name, "ownerReferences": owners},
                "spec": {"hostNetwork": true, "containers": [{"name": "c"}]},
            })
        };
        let privileged = json!({
            "metadata": {"name": "priv"},
            "spec": {"containers": [{"name": "c", "securityContext": {"privileged": true}}]},
        });
        let fine = json!({"metadata": {"name": "fine"}, "spec": {"containers": [{"name": "c"}]}});
        let pods = [
            host_network("web-b", Some("rs1")),
            host_network("web-a", Some("rs1")),
            host_network("db-0", Some("ss1")),
            privileged,
            fine,
        ];
        let baseline = LevelVersion::new(Level::Baseline, Version::Latest);
        assert_eq!(
            pods_in_namespace_warnings(&Evaluator::newest(), "apps", &baseline, &pods),
            [
                r#"existing pods in namespace "apps" violate the new PodSecurity enforce level "baseline:latest""#,
                "db-0 (and 2 other pods): host namespaces",
                "priv: privileged",
            ]
        );
        assert!(
            pods_in_namespace_warnings(&Evaluator::newest(), "apps", &baseline, &pods[4..])
                .is_empty()
        );
    }
}
