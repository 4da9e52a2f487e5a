//! Builders for plugin tests.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use crate::cache::{ClusterCache, NodeInfo, PodInfo};

pub fn pod(name: &str, spec: Value) -> Arc<PodInfo> {
    pod_with(name, json!({}), spec)
}

/// A pod with extra metadata (labels, namespace, …).
pub fn pod_with(name: &str, metadata: Value, spec: Value) -> Arc<PodInfo> {
    let mut meta = json!({"name": name, "namespace": "default", "uid": format!("uid-{name}")});
    if let Some(extra) = metadata.as_object() {
        for (k, v) in extra {
            meta[k] = v.clone();
        }
    }
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "img"}]);
    }
    let pod: Pod = serde_json::from_value(json!({"metadata": meta, "spec": spec})).unwrap();
    Arc::new(PodInfo::new(Arc::new(pod)))
}

/// A pod requesting `cpu` and `memory`.
pub fn pod_requesting(name: &str, cpu: &str, memory: &str) -> Arc<PodInfo> {
    pod(
        name,
        json!({"containers": [{"name": "c", "image": "img", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}),
    )
}

pub fn node(name: &str, cpu: &str, memory: &str, extra: Value) -> Node {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"}}
    });
    merge(&mut n, &extra);
    serde_json::from_value(n).unwrap()
}

fn merge(target: &mut Value, extra: &Value) {
    match (target, extra) {
        (Value::Object(t), Value::Object(e)) => {
            for (k, v) in e {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, e) => *t = e.clone(),
    }
}

pub fn node_info(name: &str, cpu: &str, memory: &str, extra: Value) -> NodeInfo {
    NodeInfo::new(Arc::new(node(name, cpu, memory, extra)))
}

/// A cache with these nodes.
pub fn cache(nodes: Vec<Node>) -> ClusterCache {
    let mut cache = ClusterCache::default();
    for n in nodes {
        cache.upsert_node(n);
    }
    cache
}
