//! Defaulting on create, the way kube-apiserver's defaulters and create
//! strategies set fields a client left out.

use serde_json::{json, Map, Value};

use crate::object::{meta, meta_mut, now_rfc3339};
use crate::registry::ResourceInfo;

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        if map.get(field).is_none_or(Value::is_null) {
            map.insert(field.to_owned(), value);
        }
    }
}

fn object_at<'a>(obj: &'a mut Value, field: &str) -> &'a mut Value {
    set_default(obj, field, json!({}));
    &mut obj[field]
}

/// Prepares a new object: status reset and defaults. `uid` is already set.
pub fn prepare_for_create(info: &ResourceInfo, obj: &mut Value) {
    // A client cannot create an object with a status of its choosing,
    // except for nodes (their agent registers them with status).
    let keeps_status = info.group.is_empty() && matches!(info.plural.as_str(), "nodes");
    if info.has_subresource("status") && !keeps_status {
        if let Some(map) = obj.as_object_mut() {
            map.remove("status");
        }
    }
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => {
            default_pod_spec(object_at(obj, "spec"));
            obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(&obj["spec"])});
        }
        ("", "podtemplates") => default_pod_template(object_at(obj, "template")),
        ("", "replicationcontrollers") => {
            let spec = object_at(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "minReadySeconds", json!(0));
            // An RC without a selector selects its template's labels.
            if spec.get("selector").is_none_or(Value::is_null) {
                if let Some(labels) = spec.pointer("/template/metadata/labels").cloned() {
                    spec["selector"] = labels;
                }
            }
            default_pod_template(object_at(spec, "template"));
        }
        ("apps", "deployments") => {
            let spec = object_at(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(spec, "minReadySeconds", json!(0));
            let strategy = object_at(spec, "strategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let rolling = object_at(strategy, "rollingUpdate");
                set_default(rolling, "maxUnavailable", json!("25%"));
                set_default(rolling, "maxSurge", json!("25%"));
            }
            default_pod_template(object_at(spec, "template"));
        }
        ("apps", "replicasets") => {
            let spec = object_at(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "minReadySeconds", json!(0));
            default_pod_template(object_at(spec, "template"));
        }
        ("apps", "statefulsets") => {
            let spec = object_at(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "minReadySeconds", json!(0));
            let strategy = object_at(spec, "updateStrategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                set_default(object_at(strategy, "rollingUpdate"), "partition", json!(0));
            }
            let retention = object_at(spec, "persistentVolumeClaimRetentionPolicy");
            set_default(retention, "whenDeleted", json!("Retain"));
            set_default(retention, "whenScaled", json!("Retain"));
            default_pod_template(object_at(spec, "template"));
        }
        ("apps", "daemonsets") => {
            let spec = object_at(obj, "spec");
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "minReadySeconds", json!(0));
            let strategy = object_at(spec, "updateStrategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let rolling = object_at(strategy, "rollingUpdate");
                set_default(rolling, "maxUnavailable", json!(1));
                set_default(rolling, "maxSurge", json!(0));
            }
            default_pod_template(object_at(spec, "template"));
        }
        ("batch", "jobs") => default_job(obj),
        ("autoscaling", "horizontalpodautoscalers") => default_hpa_spec(object_at(obj, "spec")),
        ("batch", "cronjobs") => {
            let spec = object_at(obj, "spec");
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            let job_spec = object_at(object_at(spec, "jobTemplate"), "spec");
            default_job_spec(job_spec);
        }
        ("", "namespaces") => {
            let name = meta(obj).get("name").cloned().unwrap_or(Value::Null);
            let labels = meta_mut(obj).entry("labels").or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), name);
            }
            set_default(object_at(obj, "spec"), "finalizers", json!(["kubernetes"]));
            obj["status"] = json!({"phase": "Active"});
        }
        ("", "services") => {
            let spec = object_at(obj, "spec");
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            if spec["type"] != "ExternalName" {
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            if matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer")) {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports {
                    set_default(port, "protocol", json!("TCP"));
                    if let Some(p) = port.get("port").cloned() {
                        set_default(port, "targetPort", p);
                    }
                }
            }
            obj["status"] = json!({"loadBalancer": {}});
        }
        ("", "secrets") => {
            set_default(obj, "type", json!("Opaque"));
            fold_string_data(obj);
        }
        ("", "persistentvolumeclaims") => {
            set_default(object_at(obj, "spec"), "volumeMode", json!("Filesystem"));
            obj["status"] = json!({"phase": "Pending"});
        }
        ("", "persistentvolumes") => {
            let spec = object_at(obj, "spec");
            set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            set_default(spec, "volumeMode", json!("Filesystem"));
            obj["status"] = json!({"phase": "Pending"});
        }
        ("", "events") => {
            set_default(obj, "type", json!("Normal"));
            set_default(obj, "count", json!(1));
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            obj["status"] = crate::crd::accepted_status(obj);
        }
        ("scheduling.k8s.io", "priorityclasses") => {
            set_default(obj, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
        ("networking.k8s.io", "networkpolicies") => default_network_policy(obj),
        ("admissionregistration.k8s.io", plural) => default_webhook_configuration(plural, obj),
        _ => {}
    }
}

/// Defaults applied again on every update, as Kubernetes defaults every
/// object it decodes: those that depend on the object alone and that
/// consumers rely on being set.
pub fn prepare_for_update(info: &ResourceInfo, obj: &mut Value) {
    match (info.group.as_str(), info.plural.as_str()) {
        ("networking.k8s.io", "networkpolicies") => default_network_policy(obj),
        ("admissionregistration.k8s.io", plural) => default_webhook_configuration(plural, obj),
        _ => {}
    }
}

/// Mutating- and ValidatingWebhookConfigurations, on create and update.
fn default_webhook_configuration(plural: &str, obj: &mut Value) {
    match plural {
        "mutatingwebhookconfigurations" => crate::webhook::default_configuration(obj, true),
        "validatingwebhookconfigurations" => crate::webhook::default_configuration(obj, false),
        _ => {}
    }
}

/// networking.k8s.io/v1 NetworkPolicy: every port's protocol is TCP unless
/// given, and unset `policyTypes` become `Ingress`, plus `Egress` when
/// there are egress rules.
fn default_network_policy(obj: &mut Value) {
    let spec = object_at(obj, "spec");
    for direction in ["ingress", "egress"] {
        let rules = spec.get_mut(direction).and_then(Value::as_array_mut);
        for rule in rules.into_iter().flatten() {
            let ports = rule.get_mut("ports").and_then(Value::as_array_mut);
            for port in ports.into_iter().flatten() {
                set_default(port, "protocol", json!("TCP"));
            }
        }
    }
    let unset = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if unset {
        let has_egress = spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        spec["policyTypes"] = if has_egress {
            json!(["Ingress", "Egress"])
        } else {
            json!(["Ingress"])
        };
    }
}

/// autoscaling/v2 defaults: one replica at least, 80% of the CPU request
/// when no metric is given, and, once `behavior` is given, every rule
/// filled in (scale-down's stabilization window is left unset: the
/// controller's `--horizontal-pod-autoscaler-downscale-stabilization`
/// applies).
pub fn default_hpa_spec(spec: &mut Value) {
    set_default(spec, "minReplicas", json!(1));
    if spec
        .get("metrics")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 80}}}]);
    }
    if let Some(behavior) = spec.get_mut("behavior").filter(|b| b.is_object()) {
        let up = object_at(behavior, "scaleUp");
        set_default(up, "stabilizationWindowSeconds", json!(0));
        set_default(up, "selectPolicy", json!("Max"));
        set_default(
            up,
            "policies",
            json!([{"type": "Pods", "value": 4, "periodSeconds": 15},
                   {"type": "Percent", "value": 100, "periodSeconds": 15}]),
        );
        let down = object_at(behavior, "scaleDown");
        set_default(down, "selectPolicy", json!("Max"));
        set_default(
            down,
            "policies",
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
        );
    }
}

/// `stringData` is a write-only convenience: it is merged into `data`,
/// base64-encoded, and dropped.
pub fn fold_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(string_data) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    if let Some(entries) = string_data.as_object() {
        let data = object_at(obj, "data");
        for (key, value) in entries {
            let text = value.as_str().unwrap_or_default();
            data[key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
}

fn default_pod_template(template: &mut Value) {
    default_pod_spec(object_at(template, "spec"));
}

fn default_job(obj: &mut Value) {
    let uid = meta(obj)
        .get("uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let name = meta(obj)
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let spec = object_at(obj, "spec");
    default_job_spec(spec);
    // Jobs select their own pods by the controller uid unless the user
    // takes over (manualSelector).
    if spec.get("manualSelector") != Some(&json!(true)) && !uid.is_empty() {
        let labels = json!({
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        });
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        let template_meta = object_at(object_at(spec, "template"), "metadata");
        let template_labels = object_at(template_meta, "labels");
        if let (Some(target), Some(source)) = (template_labels.as_object_mut(), labels.as_object())
        {
            for (k, v) in source {
                target.insert(k.clone(), v.clone());
            }
        }
    }
}

fn default_job_spec(spec: &mut Value) {
    let both_unset = spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null);
    if both_unset {
        spec["completions"] = json!(1);
        spec["parallelism"] = json!(1);
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "manualSelector", Value::Null);
    if spec.get("manualSelector") == Some(&Value::Null) {
        spec.as_object_mut().map(|o| o.remove("manualSelector"));
    }
    default_pod_spec(object_at(object_at(spec, "template"), "spec"));
}

pub use rudder_apimachinery::defaults::default_pod_spec;

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|l| spec.get(*l).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        let empty = Map::new();
        let (requests, limits) = (requests.unwrap_or(&empty), limits.unwrap_or(&empty));
        if !requests.is_empty() || !limits.is_empty() {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.get(resource);
            let request = requests.get(resource).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Sets (or updates) a status condition, moving its transition time only
/// when the status changes.
pub fn set_condition(
    obj: &mut Value,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    let now = now_rfc3339();
    let status_obj = object_at(obj, "status");
    let conditions = status_obj
        .as_object_mut()
        .map(|o| o.entry("conditions").or_insert_with(|| json!([])));
    let Some(Value::Array(conditions)) = conditions else {
        return;
    };
    let mut condition = json!({
        "type": kind,
        "status": status,
        "lastProbeTime": null,
        "lastTransitionTime": now,
    });
    if let Some(reason) = reason {
        condition["reason"] = json!(reason);
    }
    if let Some(message) = message {
        condition["message"] = json!(message);
    }
    match conditions
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
    {
        Some(existing) => {
            if existing.get("status").and_then(Value::as_str) == Some(status) {
                condition["lastTransitionTime"] = existing["lastTransitionTime"].clone();
            }
            *existing = condition;
        }
        None => conditions.push(condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn pods_get_the_defaults_kubernetes_sets() {
        let registry = Registry::with_builtins();
        let pods = registry.get("", "v1", "pods").unwrap();
        let mut pod = json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80}]},
                                     {"name": "d", "image": "web:1.0", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]},
            "status": {"phase": "Running"}
        });
        prepare_for_create(&pods, &mut pod);
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["status"]["qosClass"], "Burstable");
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["schedulerName"], "default-scheduler");
        // `default` is the ServiceAccount admission plugin's, not a default.
        assert!(pod["spec"].get("serviceAccountName").is_none());
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            pod["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn qos_follows_requests_and_limits() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "a"}]})),
            "BestEffort"
        );
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }

    #[test]
    fn deployments_and_jobs_get_their_defaults() {
        let registry = Registry::with_builtins();
        let deploy = registry.get("apps", "v1", "deployments").unwrap();
        let mut d = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": []}}}, "status": {"replicas": 9}});
        prepare_for_create(&deploy, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert!(d.get("status").is_none());

        let jobs = registry.get("batch", "v1", "jobs").unwrap();
        let mut job = json!({"metadata": {"name": "j", "uid": "u1"}, "spec": {"template": {"spec": {"containers": []}}}});
        prepare_for_create(&jobs, &mut job);
        assert_eq!(job["spec"]["completions"], 1);
        assert_eq!(job["spec"]["backoffLimit"], 6);
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "j"
        );
    }

    #[test]
    fn network_policies_get_policy_types_and_protocols() {
        let registry = Registry::with_builtins();
        let info = registry
            .get("networking.k8s.io", "v1", "networkpolicies")
            .unwrap();
        let mut deny = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}});
        prepare_for_create(&info, &mut deny);
        assert_eq!(deny["spec"]["policyTypes"], json!(["Ingress"]));

        let mut both = json!({"metadata": {"name": "b"}, "spec": {"podSelector": {},
            "ingress": [{"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}],
            "egress": [{"ports": [{"port": "dns"}]}]}});
        prepare_for_create(&info, &mut both);
        assert_eq!(both["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(both["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(both["spec"]["ingress"][0]["ports"][1]["protocol"], "UDP");
        assert_eq!(both["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");

        // Given types are kept, on update as on create.
        let mut egress_only = json!({"spec": {"policyTypes": ["Egress"]}});
        prepare_for_update(&info, &mut egress_only);
        assert_eq!(egress_only["spec"]["policyTypes"], json!(["Egress"]));
    }

    #[test]
    fn secrets_fold_string_data() {
        let registry = Registry::with_builtins();
        let secrets = registry.get("", "v1", "secrets").unwrap();
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}});
        prepare_for_create(&secrets, &mut s);
        assert_eq!(s["data"]["password"], "aHVudGVyMg==");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
    }
}
