//! The `scale` subresource: an `autoscaling/v1` Scale view of a workload.

use serde_json::{json, Value};

use crate::error::{ApiError, FieldCause};
use crate::object::meta;
use crate::registry::ResourceInfo;

/// Builds the Scale of a workload object.
pub fn to_scale(info: &ResourceInfo, obj: &Value) -> Result<Value, ApiError> {
    let m = meta(obj);
    let mut metadata = json!({});
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = m.get(field) {
            metadata[field] = v.clone();
        }
    }
    let replicas = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let status_replicas = obj
        .pointer("/status/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = selector_string(info, obj);
    let mut status = json!({"replicas": status_replicas});
    if !selector.is_empty() {
        status["selector"] = json!(selector);
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": replicas},
        "status": status,
    }))
}

/// The label selector of the workload as a string (what HPAs read).
fn selector_string(info: &ResourceInfo, obj: &Value) -> String {
    let selector = obj
        .pointer("/spec/selector")
        .cloned()
        .unwrap_or(Value::Null);
    // A ReplicationController's selector is a plain map.
    let is_map = info.group.is_empty();
    let labels = if is_map {
        Some(&selector)
    } else {
        selector.get("matchLabels")
    };
    let mut parts: Vec<String> = labels
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    if !is_map {
        if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e.get("key").and_then(Value::as_str).unwrap_or("");
                let values: Vec<&str> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|v| v.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                    "In" => parts.push(format!("{key} in ({})", values.join(","))),
                    "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
                    "Exists" => parts.push(key.to_owned()),
                    "DoesNotExist" => parts.push(format!("!{key}")),
                    _ => {}
                }
            }
        }
    }
    parts.join(",")
}

/// The replicas a Scale asks for, validated.
pub fn replicas_of(info: &ResourceInfo, name: &str, scale: &Value) -> Result<i64, ApiError> {
    match scale.pointer("/spec/replicas") {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|r| r >= 0) => Ok(n.as_i64().unwrap_or(0)),
        Some(other) => Err(ApiError::invalid(
            info,
            name,
            vec![FieldCause::invalid(
                "spec.replicas",
                &other.to_string(),
                "must be greater than or equal to 0",
            )],
        )),
        None => Ok(0),
    }
}
