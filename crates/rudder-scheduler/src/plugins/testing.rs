//! Builders for plugin tests.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
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

/// A claim in `default`, with `extra` merged in (e.g. a `spec`).
pub fn pvc(name: &str, extra: Value) -> PersistentVolumeClaim {
    let mut c = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    });
    merge(&mut c, &extra);
    serde_json::from_value(c).unwrap()
}

/// A claim bound to volume `pv`.
pub fn bound_pvc(name: &str, pv: &str) -> PersistentVolumeClaim {
    pvc(
        name,
        json!({"spec": {"volumeName": pv}, "status": {"phase": "Bound"}}),
    )
}

/// An Available volume of 1Gi, ReadWriteOnce, with `extra` merged in.
pub fn pv(name: &str, extra: Value) -> PersistentVolume {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]},
        "status": {"phase": "Available"}
    });
    merge(&mut v, &extra);
    serde_json::from_value(v).unwrap()
}

/// A volume only nodes with `key=value` can reach.
pub fn pv_on(name: &str, key: &str, value: &str, extra: Value) -> PersistentVolume {
    let mut extra = extra;
    merge(
        &mut extra,
        &json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]}]}}}}),
    );
    pv(name, extra)
}

/// A StorageClass with a binding mode (`Immediate`, `WaitForFirstConsumer`).
pub fn storage_class(name: &str, mode: &str) -> StorageClass {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": mode
    }))
    .unwrap()
}

/// A CSINode for node `name` with (driver, allocatable count) pairs.
pub fn csi_node(name: &str, drivers: &[(&str, i32)]) -> CSINode {
    let drivers: Vec<Value> = drivers
        .iter()
        .map(|(d, n)| json!({"name": d, "nodeID": name, "allocatable": {"count": n}}))
        .collect();
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"drivers": drivers}}))
        .unwrap()
}

/// A pod using the claims, one volume each.
pub fn pod_with_claims(name: &str, claims: &[&str]) -> Arc<PodInfo> {
    let volumes: Vec<Value> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    pod(name, json!({"volumes": volumes}))
}
