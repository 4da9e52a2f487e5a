//! The Pod defaults of the API (`k8s.io/api/core/v1` defaulters and the
//! DefaultTolerationSeconds admission), shared by the API server, which
//! applies them on create, and the node agent, which applies them to static
//! pods read from manifest files.

use serde_json::{json, Value};

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        if map.get(field).is_none_or(Value::is_null) {
            map.insert(field.to_owned(), value);
        }
    }
}

/// Fills a pod spec's unset fields as the API server does on create.
pub fn default_pod_spec(spec: &mut Value) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    // The deprecated field names the account when the new one is unset;
    // `default` is the ServiceAccount admission plugin's to fill in (not
    // for static and mirror pods, which have no account).
    if spec.get("serviceAccountName").is_none_or(Value::is_null) {
        if let Some(account) = spec
            .get("serviceAccount")
            .filter(|a| a.is_string())
            .cloned()
        {
            spec["serviceAccountName"] = account;
        }
    }
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for container in containers {
                default_container(container);
            }
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for volume in volumes {
            for (source, mode) in [
                ("configMap", 0o644),
                ("secret", 0o644),
                ("projected", 0o644),
            ] {
                if let Some(v) = volume.get_mut(source) {
                    set_default(v, "defaultMode", json!(mode));
                }
            }
        }
    }
    // Pods tolerate a not-ready or unreachable node for 300 s before they
    // are evicted (the DefaultTolerationSeconds admission plugin).
    let tolerations = spec
        .as_object_mut()
        .map(|o| o.entry("tolerations").or_insert_with(|| json!([])));
    if let Some(Value::Array(tolerations)) = tolerations {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let present = tolerations.iter().any(|t| {
                t.get("key").and_then(Value::as_str) == Some(key)
                    && t.get("effect")
                        .and_then(Value::as_str)
                        .is_none_or(|e| e == "NoExecute")
            }) || tolerations.iter().any(|t| {
                t.get("operator").and_then(Value::as_str) == Some("Exists")
                    && t.get("key").is_none()
            });
            if !present {
                tolerations.push(json!({
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }));
            }
        }
    }
}

fn default_container(container: &mut Value) {
    let image = container
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let pull = if image_tag_is_latest(&image) {
        "Always"
    } else {
        "IfNotPresent"
    };
    set_default(container, "imagePullPolicy", json!(pull));
    set_default(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    set_default(container, "terminationMessagePolicy", json!("File"));
    set_default(container, "resources", json!({}));
    if let Some(ports) = container.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            set_default(port, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = container.get_mut(probe) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
        }
    }
}

/// An image with no tag or the `latest` tag (and no digest) is pulled
/// every time by default.
fn image_tag_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_specs_get_the_api_defaults() {
        let mut spec = json!({"containers": [
            {"name": "a", "image": "busybox"},
            {"name": "b", "image": "busybox:1.35", "ports": [{"containerPort": 80}]},
        ]});
        default_pod_spec(&mut spec);
        assert_eq!(spec["restartPolicy"], "Always");
        assert!(
            spec.get("serviceAccountName").is_none(),
            "admission's to set"
        );
        let mut legacy = json!({"serviceAccount": "builder", "containers": []});
        default_pod_spec(&mut legacy);
        assert_eq!(legacy["serviceAccountName"], "builder");
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(spec["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(spec["containers"][1]["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["tolerations"].as_array().unwrap().len(), 2);
        assert!(image_tag_is_latest("reg:5000/x"));
        assert!(!image_tag_is_latest("reg:5000/x@sha256:00"));
    }
}
