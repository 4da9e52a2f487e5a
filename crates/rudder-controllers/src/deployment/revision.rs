//! The bookkeeping a Deployment keeps on its ReplicaSets: revision
//! numbers, the desired/max replica annotations, which ReplicaSet is the
//! "new" one, and how templates compare.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Annotations of the Deployment that are not copied to its ReplicaSets.
fn skipped(key: &str) -> bool {
    matches!(
        key,
        LAST_APPLIED | REVISION | REVISION_HISTORY | DESIRED_REPLICAS | MAX_REPLICAS
    )
}

pub fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse().ok())
}

pub fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

pub fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

pub fn available_replicas(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

pub fn ready_replicas(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// A template without its `pod-template-hash` label, for comparing a
/// ReplicaSet's template with its Deployment's.
fn without_hash(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
        if labels.is_empty() {
            t.metadata.as_mut().unwrap().labels = None;
        }
    }
    serde_json::to_value(t).unwrap_or_default()
}

pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

/// The ReplicaSet running the Deployment's current template (the oldest
/// one if several do), and the others.
pub fn split_new_and_old<'a>(
    deployment: &Deployment,
    sets: &'a [ReplicaSet],
) -> (Option<&'a ReplicaSet>, Vec<&'a ReplicaSet>) {
    let template = deployment
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut sorted: Vec<&ReplicaSet> = sets.iter().collect();
    sorted.sort_by_key(|rs| by_creation(rs));
    let new = sorted.iter().copied().find(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| same_template(t, &template))
    });
    let old = sorted
        .into_iter()
        .filter(|rs| new.is_none_or(|n| n.metadata.uid != rs.metadata.uid))
        .collect();
    (new, old)
}

/// Oldest first; ties broken by name.
pub fn by_creation(rs: &ReplicaSet) -> (Option<jiff::Timestamp>, String) {
    (
        rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        rs.metadata.name.clone().unwrap_or_default(),
    )
}

/// The annotations a ReplicaSet should carry for the Deployment: the
/// Deployment's own (but kubectl's and ours), the revision, and the
/// desired and max replicas. Returns whether anything changed.
pub fn set_replica_set_annotations(
    deployment: &Deployment,
    annotations: &mut BTreeMap<String, String>,
    revision: i64,
    max_surge: i32,
) -> bool {
    let before = annotations.clone();
    for (k, v) in deployment.metadata.annotations.iter().flatten() {
        if !skipped(k) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    let old_revision = annotations
        .get(REVISION)
        .and_then(|r| r.parse::<i64>().ok())
        .unwrap_or(0);
    if old_revision < revision {
        if old_revision > 0 {
            // A ReplicaSet brought back (an undo) remembers the revisions
            // it had.
            let mut history: Vec<String> = annotations
                .get(REVISION_HISTORY)
                .map(|h| h.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            history.push(old_revision.to_string());
            annotations.insert(REVISION_HISTORY.into(), history.join(","));
        }
        annotations.insert(REVISION.into(), revision.to_string());
    }
    let replicas = desired(deployment);
    annotations.insert(DESIRED_REPLICAS.into(), replicas.to_string());
    annotations.insert(MAX_REPLICAS.into(), (replicas + max_surge).to_string());
    *annotations != before
}

pub fn desired(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rs(name: &str, created: &str, image: &str, hash: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name, "creationTimestamp": created},
            "spec": {"selector": {}, "template": {
                "metadata": {"labels": {"app": "a", "pod-template-hash": hash}},
                "spec": {"containers": [{"name": "c", "image": image}]}}}
        }))
        .unwrap()
    }

    #[test]
    fn the_new_replica_set_has_the_template_whatever_its_hash() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"selector": {}, "template": {"metadata": {"labels": {"app": "a"}},
                     "spec": {"containers": [{"name": "c", "image": "v2"}]}}}
        }))
        .unwrap();
        let sets = vec![
            rs("d-2", "2026-01-02T00:00:00Z", "v2", "x"),
            rs("d-1", "2026-01-01T00:00:00Z", "v1", "y"),
        ];
        let (new, old) = split_new_and_old(&d, &sets);
        assert_eq!(new.unwrap().metadata.name.as_deref(), Some("d-2"));
        assert_eq!(old.len(), 1);
    }

    #[test]
    fn annotations_carry_revision_history_on_reuse() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "d", "annotations": {"kubernetes.io/change-cause": "v1",
                "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"replicas": 4, "selector": {}, "template": {}}
        }))
        .unwrap();
        let mut a = BTreeMap::from([(REVISION.to_string(), "1".to_string())]);
        assert!(set_replica_set_annotations(&d, &mut a, 3, 1));
        assert_eq!(a[REVISION], "3");
        assert_eq!(a[REVISION_HISTORY], "1");
        assert_eq!(a[DESIRED_REPLICAS], "4");
        assert_eq!(a[MAX_REPLICAS], "5");
        assert_eq!(a["kubernetes.io/change-cause"], "v1");
        assert!(!a.contains_key(LAST_APPLIED));
        assert!(!set_replica_set_annotations(&d, &mut a, 3, 1));
    }
}
