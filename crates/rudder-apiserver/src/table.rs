//! Server-side printing: `meta.k8s.io/v1` Tables with the columns kubectl
//! shows for each built-in kind.

use std::time::{Duration, SystemTime};

use axum::http::{header, HeaderMap};
use serde_json::{json, Value};

use crate::object::meta;
use crate::registry::ResourceInfo;

/// Whether the client asked for a Table (kubectl does for `get`).
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            let params: Vec<&str> = part.split(';').map(str::trim).collect();
            params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
        })
}

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind,
        format: "",
        priority,
        description: "",
    }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};
const AGE: Column = col("Age", "string", 0);

/// Builds the Table of `objects`.
pub fn table(
    info: &ResourceInfo,
    objects: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
) -> Value {
    let columns = columns(info);
    let now = SystemTime::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let cells = cells(info, obj, now);
            let m = meta(obj);
            let mut partial = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": m,
            });
            // kubectl reads the object's metadata (namespace, labels) from the row.
            partial["metadata"] = Value::Object(m.clone());
            json!({"cells": cells, "object": partial})
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns.iter().map(|c| json!({
            "name": c.name,
            "type": c.kind,
            "format": c.format,
            "description": c.description,
            "priority": c.priority,
        })).collect::<Vec<_>>(),
        "rows": rows,
    })
}

fn columns(info: &ResourceInfo) -> Vec<Column> {
    if info.custom {
        let mut columns = vec![NAME];
        for c in &info.printer_columns {
            columns.push(Column {
                name: leak(&c.name),
                kind: leak(&c.kind),
                format: "",
                priority: c.priority,
                description: leak(&c.description),
            });
        }
        if info.printer_columns.is_empty() {
            columns.push(AGE);
        }
        return columns;
    }
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => vec![
            NAME,
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            AGE,
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        ("apps", "deployments") => vec![
            NAME,
            col("Ready", "string", 0),
            col("Up-to-date", "string", 0),
            col("Available", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "replicasets") | ("", "replicationcontrollers") => vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "statefulsets") => vec![
            NAME,
            col("Ready", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
        ],
        ("apps", "daemonsets") => vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Node Selector", "string", 0),
            AGE,
        ],
        ("", "nodes") => vec![
            NAME,
            col("Status", "string", 0),
            col("Roles", "string", 0),
            AGE,
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        ("", "namespaces") => vec![NAME, col("Status", "string", 0), AGE],
        ("", "services") => vec![
            NAME,
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            AGE,
            col("Selector", "string", 1),
        ],
        ("", "configmaps") => vec![NAME, col("Data", "integer", 0), AGE],
        ("", "secrets") => vec![
            NAME,
            col("Type", "string", 0),
            col("Data", "integer", 0),
            AGE,
        ],
        ("", "serviceaccounts") => vec![NAME, col("Secrets", "integer", 0), AGE],
        ("", "endpoints") => vec![NAME, col("Endpoints", "string", 0), AGE],
        ("batch", "jobs") => vec![
            NAME,
            col("Status", "string", 0),
            col("Completions", "string", 0),
            col("Duration", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("autoscaling", "horizontalpodautoscalers") => vec![
            NAME,
            col("Reference", "string", 0),
            col("Targets", "string", 0),
            col("MinPods", "string", 0),
            col("MaxPods", "integer", 0),
            col("Replicas", "integer", 0),
            AGE,
        ],
        ("batch", "cronjobs") => vec![
            NAME,
            col("Schedule", "string", 0),
            col("Timezone", "string", 0),
            col("Suspend", "boolean", 0),
            col("Active", "integer", 0),
            col("Last Schedule", "string", 0),
            AGE,
        ],
        ("", "events") => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
        ],
        ("", "persistentvolumeclaims") => vec![
            NAME,
            col("Status", "string", 0),
            col("Volume", "string", 0),
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("StorageClass", "string", 0),
            AGE,
        ],
        ("", "persistentvolumes") => vec![
            NAME,
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("Reclaim Policy", "string", 0),
            col("Status", "string", 0),
            col("Claim", "string", 0),
            col("StorageClass", "string", 0),
            AGE,
        ],
        ("coordination.k8s.io", "leases") => vec![NAME, col("Holder", "string", 0), AGE],
        ("scheduling.k8s.io", "priorityclasses") => {
            vec![
                NAME,
                col("Value", "integer", 0),
                col("Global-Default", "boolean", 0),
                AGE,
            ]
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![NAME, col("Created At", "date", 0)]
        }
        ("networking.k8s.io", "ingresses") => vec![
            NAME,
            col("Class", "string", 0),
            col("Hosts", "string", 0),
            col("Address", "string", 0),
            col("Ports", "string", 0),
            AGE,
        ],
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations" | "validatingwebhookconfigurations",
        ) => vec![NAME, col("Webhooks", "integer", 0), AGE],
        ("networking.k8s.io", "ingressclasses") => vec![
            NAME,
            col("Controller", "string", 0),
            col("Parameters", "string", 0),
            AGE,
        ],
        ("networking.k8s.io", "networkpolicies") => {
            vec![NAME, col("Pod-Selector", "string", 0), AGE]
        }
        _ => vec![NAME, AGE],
    }
}

/// Column texts of custom resources live as long as the table they are in;
/// interning them keeps `Column` simple. The set of distinct names is small
/// (one per CRD column), so the memory is bounded.
fn leak(text: &str) -> &'static str {
    static INTERNED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = interned.iter().find(|s| **s == text) {
        return found;
    }
    let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
    interned.push(leaked);
    leaked
}

/// Evaluates the simple JSONPath CRDs use for printer columns
/// (`.spec.replicas`, `.status.conditions[0].type`).
fn json_path(obj: &Value, path: &str) -> Value {
    let mut current = obj;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (field, index) = match part.split_once('[') {
            Some((field, rest)) => (field, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        current = match current.get(field) {
            Some(v) => v,
            None => return Value::Null,
        };
        if let Some(i) = index {
            current = match current.get(i) {
                Some(v) => v,
                None => return Value::Null,
            };
        }
    }
    current.clone()
}

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn i(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn none_if_empty(text: String) -> String {
    if text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

/// An HPA's metrics as kubectl prints them: `cpu: 42%/50%` per metric, the
/// current figure `<unknown>` until the controller reported one.
fn hpa_targets(obj: &Value) -> String {
    let specs = obj
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let current = obj
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let source_key = |kind: &str| match kind {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "Object" => "object",
        "External" => "external",
        _ => "",
    };
    let quantity = |v: &Value, utilization: &str, average: &str, value: &str| {
        if let Some(u) = v.get(utilization).and_then(Value::as_i64) {
            format!("{u}%")
        } else if let Some(q) = v.get(average).and_then(Value::as_str) {
            q.to_string()
        } else if let Some(q) = v.get(value).and_then(Value::as_str) {
            q.to_string()
        } else {
            "<unknown>".to_string()
        }
    };
    let printed: Vec<String> = specs
        .iter()
        .map(|metric| {
            let kind = s(metric, "/type");
            let key = source_key(kind);
            let source = metric.get(key).cloned().unwrap_or(Value::Null);
            let name = source
                .get("name")
                .and_then(Value::as_str)
                .or_else(|| source.pointer("/metric/name").and_then(Value::as_str))
                .unwrap_or(kind)
                .to_string();
            let target = source.get("target").cloned().unwrap_or(Value::Null);
            let target = quantity(&target, "averageUtilization", "averageValue", "value");
            let now = current
                .iter()
                .find(|c| {
                    s(c, "/type") == kind
                        && c.get(key).is_some_and(|cs| {
                            cs.get("name")
                                .and_then(Value::as_str)
                                .or_else(|| cs.pointer("/metric/name").and_then(Value::as_str))
                                .unwrap_or(kind)
                                == name
                        })
                })
                .and_then(|c| c.pointer(&format!("/{key}/current")).cloned())
                .map(|c| quantity(&c, "averageUtilization", "averageValue", "value"))
                .unwrap_or_else(|| "<unknown>".to_string());
            format!("{name}: {now}/{target}")
        })
        .collect();
    none_if_empty(printed.join(", "))
}

fn cells(info: &ResourceInfo, obj: &Value, now: SystemTime) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name"));
    let age = json!(age(obj, "/metadata/creationTimestamp", now));
    if info.custom {
        let mut cells = vec![name];
        for c in &info.printer_columns {
            let value = json_path(obj, &c.json_path);
            let cell = match (c.kind.as_str(), &value) {
                (_, Value::Null) => Value::Null,
                ("date", Value::String(t)) => parse_rfc3339(t)
                    .map(|t| json!(human_duration(now.duration_since(t).unwrap_or_default())))
                    .unwrap_or(value),
                _ => value,
            };
            cells.push(cell);
        }
        if info.printer_columns.is_empty() {
            cells.push(age);
        }
        return cells;
    }
    let containers = |pointer: &str| -> (String, String) {
        let list = obj
            .pointer(pointer)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let names: Vec<&str> = list.iter().map(|c| s(c, "/name")).collect();
        let images: Vec<&str> = list.iter().map(|c| s(c, "/image")).collect();
        (names.join(","), images.join(","))
    };
    let selector = || {
        obj.pointer("/spec/selector/matchLabels")
            .or_else(|| obj.pointer("/spec/selector"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => {
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready") == Some(&json!(true)))
                .count();
            let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(obj)),
                json!(restarts.to_string()),
                age,
                json!(none_if_empty(s(obj, "/status/podIP").to_owned())),
                json!(none_if_empty(s(obj, "/spec/nodeName").to_owned())),
                json!(none_if_empty(
                    s(obj, "/status/nominatedNodeName").to_owned()
                )),
                json!("<none>"),
            ]
        }
        ("apps", "deployments") => {
            let (names, images) = containers("/spec/template/spec/containers");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(obj, "/status/readyReplicas"),
                    i(obj, "/spec/replicas")
                )),
                json!(i(obj, "/status/updatedReplicas")),
                json!(i(obj, "/status/availableReplicas")),
                age,
                json!(names),
                json!(images),
                json!(selector()),
            ]
        }
        ("apps", "replicasets") | ("", "replicationcontrollers") => {
            let (names, images) = containers("/spec/template/spec/containers");
            vec![
                name,
                json!(i(obj, "/spec/replicas")),
                json!(i(obj, "/status/replicas")),
                json!(i(obj, "/status/readyReplicas")),
                age,
                json!(names),
                json!(images),
                json!(selector()),
            ]
        }
        ("apps", "statefulsets") => {
            let (names, images) = containers("/spec/template/spec/containers");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(obj, "/status/readyReplicas"),
                    i(obj, "/spec/replicas")
                )),
                age,
                json!(names),
                json!(images),
            ]
        }
        ("apps", "daemonsets") => {
            let node_selector = obj
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(i(obj, "/status/desiredNumberScheduled")),
                json!(i(obj, "/status/currentNumberScheduled")),
                json!(i(obj, "/status/numberReady")),
                json!(i(obj, "/status/updatedNumberScheduled")),
                json!(i(obj, "/status/numberAvailable")),
                json!(none_if_empty(node_selector)),
                age,
            ]
        }
        ("", "nodes") => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| s(c, "/type") == "Ready"))
                .map(|c| {
                    if s(c, "/status") == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let mut status = ready.to_owned();
            if obj.pointer("/spec/unschedulable") == Some(&json!(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = meta(obj)
                .get("labels")
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys()
                        .filter_map(|k| {
                            k.strip_prefix("node-role.kubernetes.io/")
                                .map(str::to_owned)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let address = |kind: &str| {
                obj.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|a| s(a, "/type") == kind))
                    .map(|a| s(a, "/address").to_owned())
                    .unwrap_or_default()
            };
            vec![
                name,
                json!(status),
                json!(none_if_empty(roles.join(","))),
                age,
                json!(s(obj, "/status/nodeInfo/kubeletVersion")),
                json!(none_if_empty(address("InternalIP"))),
                json!(none_if_empty(address("ExternalIP"))),
                json!(none_if_empty(s(obj, "/status/nodeInfo/osImage").to_owned())),
                json!(none_if_empty(
                    s(obj, "/status/nodeInfo/kernelVersion").to_owned()
                )),
                json!(none_if_empty(
                    s(obj, "/status/nodeInfo/containerRuntimeVersion").to_owned()
                )),
            ]
        }
        ("", "namespaces") => vec![name, json!(s(obj, "/status/phase")), age],
        ("", "services") => {
            let ports: Vec<String> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ports| {
                    ports
                        .iter()
                        .map(|p| {
                            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            match p.get("nodePort").and_then(Value::as_i64) {
                                Some(node_port) => format!("{}:{node_port}/{proto}", i(p, "/port")),
                                None => format!("{}/{proto}", i(p, "/port")),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let external: Vec<String> = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|i| s(i, "/ip").to_owned()).collect())
                .or_else(|| {
                    obj.pointer("/spec/externalIPs")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                })
                .unwrap_or_default();
            let svc_type = s(obj, "/spec/type");
            let external = if external.is_empty() {
                match svc_type {
                    "LoadBalancer" => "<pending>".to_owned(),
                    "ExternalName" => s(obj, "/spec/externalName").to_owned(),
                    _ => "<none>".to_owned(),
                }
            } else {
                external.join(",")
            };
            vec![
                name,
                json!(svc_type),
                json!(none_if_empty(s(obj, "/spec/clusterIP").to_owned())),
                json!(external),
                json!(none_if_empty(ports.join(","))),
                age,
                json!(none_if_empty(selector())),
            ]
        }
        ("", "configmaps") => {
            let n = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name, json!(n), age]
        }
        ("", "secrets") => {
            let n = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![name, json!(s(obj, "/type")), json!(n), age]
        }
        ("", "serviceaccounts") => {
            let n = obj
                .get("secrets")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            vec![name, json!(n), age]
        }
        ("", "endpoints") => {
            let mut endpoints = Vec::new();
            for subset in obj
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|p| p.iter().map(|p| i(p, "/port")).collect())
                    .unwrap_or_default();
                for addr in subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if ports.is_empty() {
                        endpoints.push(s(addr, "/ip").to_owned());
                    }
                    for port in &ports {
                        endpoints.push(format!("{}:{port}", s(addr, "/ip")));
                    }
                }
            }
            vec![name, json!(none_if_empty(endpoints.join(","))), age]
        }
        ("batch", "jobs") => {
            let (names, images) = containers("/spec/template/spec/containers");
            let conditions = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let has = |t: &str| {
                conditions
                    .iter()
                    .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if obj.pointer("/spec/suspend") == Some(&json!(true)) {
                "Suspended"
            } else {
                "Running"
            };
            let completions = match obj.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(c) => format!("{}/{c}", i(obj, "/status/succeeded")),
                None => format!(
                    "{}/1 of {}",
                    i(obj, "/status/succeeded"),
                    i(obj, "/spec/parallelism").max(1)
                ),
            };
            let duration = match (
                timestamp(obj, "/status/startTime"),
                timestamp(obj, "/status/completionTime"),
            ) {
                (Some(start), Some(end)) => {
                    human_duration(end.duration_since(start).unwrap_or_default())
                }
                (Some(start), None) => {
                    human_duration(now.duration_since(start).unwrap_or_default())
                }
                _ => String::new(),
            };
            vec![
                name,
                json!(status),
                json!(completions),
                json!(duration),
                age,
                json!(names),
                json!(images),
                json!(selector()),
            ]
        }
        ("autoscaling", "horizontalpodautoscalers") => vec![
            name,
            json!(format!(
                "{}/{}",
                s(obj, "/spec/scaleTargetRef/kind"),
                s(obj, "/spec/scaleTargetRef/name")
            )),
            json!(hpa_targets(obj)),
            json!(obj
                .pointer("/spec/minReplicas")
                .and_then(Value::as_i64)
                .map_or("<unset>".to_string(), |m| m.to_string())),
            json!(i(obj, "/spec/maxReplicas")),
            json!(i(obj, "/status/currentReplicas")),
            age,
        ],
        ("batch", "cronjobs") => vec![
            name,
            json!(s(obj, "/spec/schedule")),
            json!(none_if_empty(s(obj, "/spec/timeZone").to_owned())),
            json!(obj
                .pointer("/spec/suspend")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            json!(obj
                .pointer("/status/active")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)),
            json!(age_or_none(obj, "/status/lastScheduleTime", now)),
            age,
        ],
        ("", "events") => {
            let last_seen = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| timestamp(obj, p))
            .map(|t| human_duration(now.duration_since(t).unwrap_or_default()))
            .unwrap_or_else(|| "<unknown>".into());
            let object = format!(
                "{}/{}",
                s(obj, "/involvedObject/kind").to_lowercase(),
                s(obj, "/involvedObject/name")
            );
            vec![
                json!(last_seen),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(object),
                json!(s(obj, "/message")),
            ]
        }
        ("", "persistentvolumeclaims") => vec![
            name,
            json!(s(obj, "/status/phase")),
            json!(s(obj, "/spec/volumeName")),
            json!(s(obj, "/status/capacity/storage")),
            json!(access_modes(obj.pointer("/status/accessModes"))),
            json!(s(obj, "/spec/storageClassName")),
            age,
        ],
        ("", "persistentvolumes") => {
            let claim = match s(obj, "/spec/claimRef/name") {
                "" => String::new(),
                n => format!("{}/{n}", s(obj, "/spec/claimRef/namespace")),
            };
            vec![
                name,
                json!(s(obj, "/spec/capacity/storage")),
                json!(access_modes(obj.pointer("/spec/accessModes"))),
                json!(s(obj, "/spec/persistentVolumeReclaimPolicy")),
                json!(s(obj, "/status/phase")),
                json!(claim),
                json!(s(obj, "/spec/storageClassName")),
                age,
            ]
        }
        ("coordination.k8s.io", "leases") => vec![name, json!(s(obj, "/spec/holderIdentity")), age],
        ("scheduling.k8s.io", "priorityclasses") => vec![
            name,
            json!(i(obj, "/value")),
            json!(obj
                .get("globalDefault")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            age,
        ],
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![name, json!(s(obj, "/metadata/creationTimestamp"))]
        }
        ("networking.k8s.io", "ingresses") => {
            let hosts: Vec<&str> = obj
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|r| match s(r, "/host") {
                    "" => "*",
                    host => host,
                })
                .collect();
            let addresses: Vec<&str> = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|a| match s(a, "/ip") {
                    "" => s(a, "/hostname"),
                    ip => ip,
                })
                .collect();
            let tls = obj
                .pointer("/spec/tls")
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty());
            vec![
                name,
                json!(none_if_empty(s(obj, "/spec/ingressClassName").to_owned())),
                json!(hosts.join(",")),
                json!(addresses.join(",")),
                json!(if tls { "80, 443" } else { "80" }),
                age,
            ]
        }
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations" | "validatingwebhookconfigurations",
        ) => {
            let webhooks = obj
                .get("webhooks")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            vec![name, json!(webhooks), age]
        }
        ("networking.k8s.io", "ingressclasses") => {
            let parameters = match obj.pointer("/spec/parameters") {
                Some(p) if p.is_object() => {
                    let group = match s(p, "/apiGroup") {
                        "" => String::new(),
                        g => format!(".{g}"),
                    };
                    format!("{}{group}/{}", s(p, "/kind"), s(p, "/name"))
                }
                _ => String::new(),
            };
            vec![
                name,
                json!(s(obj, "/spec/controller")),
                json!(none_if_empty(parameters)),
                age,
            ]
        }
        ("networking.k8s.io", "networkpolicies") => {
            let selector = obj
                .pointer("/spec/podSelector")
                .map(|sel| {
                    rudder_apimachinery::selector::LabelSelector::from_json(sel)
                        .map(|l| l.to_string())
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            vec![name, json!(none_if_empty(selector)), age]
        }
        _ => vec![name, age],
    }
}

fn access_modes(modes: Option<&Value>) -> String {
    modes
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The STATUS column of `kubectl get pods`.
fn pod_status(pod: &Value) -> String {
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let mut reason = match s(pod, "/status/reason") {
        "" => s(pod, "/status/phase").to_owned(),
        r => r.to_owned(),
    };
    let init_statuses = pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let init_total = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    for (n, status) in init_statuses.iter().enumerate() {
        if status
            .pointer("/state/terminated/exitCode")
            .and_then(Value::as_i64)
            == Some(0)
        {
            continue;
        }
        if let Some(terminated) = status.pointer("/state/terminated") {
            let r = s(terminated, "/reason");
            return if r.is_empty() {
                format!("Init:ExitCode:{}", i(terminated, "/exitCode"))
            } else {
                format!("Init:{r}")
            };
        }
        if let Some(r) = status
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
        {
            if r != "PodInitializing" {
                return format!("Init:{r}");
            }
        }
        return format!("Init:{n}/{init_total}");
    }
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for status in statuses.iter().rev() {
        if let Some(r) = status
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
        {
            reason = r.to_owned();
        } else if let Some(terminated) = status.pointer("/state/terminated") {
            reason = match s(terminated, "/reason") {
                "" => format!("ExitCode:{}", i(terminated, "/exitCode")),
                r => r.to_owned(),
            };
        }
    }
    if reason.is_empty() {
        "Pending".into()
    } else {
        reason
    }
}

fn timestamp(obj: &Value, pointer: &str) -> Option<SystemTime> {
    parse_rfc3339(obj.pointer(pointer)?.as_str()?)
}

fn age(obj: &Value, pointer: &str, now: SystemTime) -> String {
    timestamp(obj, pointer)
        .map(|t| human_duration(now.duration_since(t).unwrap_or_default()))
        .unwrap_or_else(|| "<unknown>".into())
}

fn age_or_none(obj: &Value, pointer: &str, now: SystemTime) -> String {
    timestamp(obj, pointer)
        .map(|t| human_duration(now.duration_since(t).unwrap_or_default()))
        .unwrap_or_else(|| "<none>".into())
}

pub use rudder_apimachinery::time::parse_rfc3339;

/// A duration as kubectl prints ages: `45s`, `3m20s`, `5h`, `2d3h`, `400d`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if years < 8 {
        let rest = days % 365;
        return if rest == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{rest}d")
        };
    }
    format!("{years}y")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_print_like_kubectl() {
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(200)), "3m20s");
        assert_eq!(human_duration(Duration::from_secs(3600)), "60m");
        assert_eq!(human_duration(Duration::from_secs(5 * 3600 + 60)), "5h1m");
        assert_eq!(human_duration(Duration::from_secs(30 * 3600)), "30h");
        assert_eq!(human_duration(Duration::from_secs(3 * 86400)), "3d");
        assert_eq!(human_duration(Duration::from_secs(400 * 86400)), "400d");
    }

    #[test]
    fn tables_are_asked_for_with_the_kubectl_accept_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert!(wants_table(&headers));
        headers.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert!(!wants_table(&headers));
    }

    #[test]
    fn pod_rows_show_readiness_and_status() {
        let registry = crate::registry::Registry::with_builtins();
        let pods = registry.get("", "v1", "pods").unwrap();
        let pod = json!({
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let t = table(&pods, &[pod], "7", None);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[5], "10.42.0.5");
        assert_eq!(cells[6], "n1");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "default");
    }

    #[test]
    fn networking_rows() {
        let registry = crate::registry::Registry::with_builtins();
        let ingresses = registry
            .get("networking.k8s.io", "v1", "ingresses")
            .unwrap();
        let ingress = json!({
            "metadata": {"name": "cafe", "namespace": "net", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"ingressClassName": "rudder", "tls": [{"hosts": ["cafe.example.com"]}],
                "rules": [{"host": "cafe.example.com"}, {"http": {"paths": []}}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.11"}, {"ip": "10.99.0.12"}]}}
        });
        let t = table(&ingresses, &[ingress], "7", None);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "rudder");
        assert_eq!(cells[2], "cafe.example.com,*");
        assert_eq!(cells[3], "10.99.0.11,10.99.0.12");
        assert_eq!(cells[4], "80, 443");

        let policies = registry
            .get("networking.k8s.io", "v1", "networkpolicies")
            .unwrap();
        let row = |spec: Value| {
            let p = json!({"metadata": {"name": "p", "namespace": "net"}, "spec": spec});
            table(&policies, &[p], "7", None)["rows"][0]["cells"][1].clone()
        };
        assert_eq!(
            row(json!({"podSelector": {"matchLabels": {"app": "web"}}})),
            "app=web"
        );
        assert_eq!(row(json!({"podSelector": {}})), "<none>");

        let classes = registry
            .get("networking.k8s.io", "v1", "ingressclasses")
            .unwrap();
        let class =
            json!({"metadata": {"name": "rudder"}, "spec": {"controller": "rudder.io/ingress"}});
        let cells = &table(&classes, &[class], "7", None)["rows"][0]["cells"];
        assert_eq!(cells[1], "rudder.io/ingress");
        assert_eq!(cells[2], "<none>");
    }

    #[test]
    fn hpa_rows_show_reference_targets_and_replicas() {
        let registry = crate::registry::Registry::with_builtins();
        let hpas = registry
            .get("autoscaling", "v2", "horizontalpodautoscalers")
            .unwrap();
        let hpa = json!({
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}
                ]
            },
            "status": {"currentReplicas": 3, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 72, "averageValue": "72m"}}}
            ]}
        });
        let t = table(&hpas, &[hpa], "7", None);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "Deployment/web");
        assert_eq!(cells[2], "cpu: 72%/50%, memory: <unknown>/100Mi");
        assert_eq!(cells[3], "1");
        assert_eq!(cells[4], 5);
        assert_eq!(cells[5], 3);
    }
}
