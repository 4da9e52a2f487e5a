//! A StatefulSet member's identity and storage: its ordinal name, stable
//! hostname, labels, and the claims made from `volumeClaimTemplates`,
//! with the owner references the PVC retention policy asks for.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;

use crate::history::POD_REVISION_LABEL;
use crate::util::{controller_reference, is_pod_available, is_pod_ready, phase, pod_from_template};

/// The label with the pod's own name (for per-pod Services).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub const RETAIN: &str = "Retain";
pub const DELETE: &str = "Delete";

/// The set's parent name and ordinal from a pod name `<parent>-<ordinal>`;
/// the ordinal is -1 when the name has none.
pub fn parent_and_ordinal(name: &str) -> (&str, i32) {
    match name.rsplit_once('-') {
        Some((parent, digits))
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (parent, digits.parse().unwrap_or(-1))
        }
        _ => ("", -1),
    }
}

pub fn ordinal(pod: &Pod) -> i32 {
    parent_and_ordinal(pod.metadata.name.as_deref().unwrap_or("")).1
}

/// Whether the pod is named after the set (only such pods are members).
pub fn is_member(set: &StatefulSet, pod: &Pod) -> bool {
    let (parent, _) = parent_and_ordinal(pod.metadata.name.as_deref().unwrap_or(""));
    parent == set.name_any()
}

pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.name_any())
}

pub fn replicas(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0)
}

/// `spec.ordinals.start`: the first ordinal (0 unless set).
pub fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
}

/// Whether the pod's ordinal is one the set wants now.
pub fn in_ordinal_range(set: &StatefulSet, pod: &Pod) -> bool {
    let ord = ordinal(pod);
    let start = start_ordinal(set);
    ord >= start && ord < start + replicas(set)
}

pub fn revision_of(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_REVISION_LABEL))
        .map(String::as_str)
        .unwrap_or("")
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

pub fn is_running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && is_pod_ready(pod)
}

pub fn is_running_and_available(pod: &Pod, min_ready_seconds: i32) -> bool {
    is_pod_available(pod, min_ready_seconds, std::time::SystemTime::now())
}

/// Running, ready and not going away.
pub fn is_healthy(pod: &Pod) -> bool {
    is_running_and_ready(pod) && !is_terminating(pod)
}

/// The claims the member with `ordinal` uses, one per template, named
/// `<template>-<set>-<ordinal>` and labelled with the selector's labels.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.as_ref();
    let selector_labels = spec
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    spec.and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|template| {
            let meta = template.metadata;
            let mut labels = meta.labels.unwrap_or_default();
            labels.extend(selector_labels.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(format!(
                        "{}-{}-{ordinal}",
                        meta.name.unwrap_or_default(),
                        set.name_any()
                    )),
                    namespace: set.namespace(),
                    labels: Some(labels),
                    annotations: meta.annotations,
                    finalizers: meta.finalizers,
                    ..Default::default()
                },
                spec: template.spec,
                status: None,
            }
        })
        .collect()
}

/// Template names and the claim each member's volume of that name uses.
fn claim_volumes(set: &StatefulSet, ordinal: i32) -> Vec<(String, String)> {
    let templates = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    templates
        .iter()
        .zip(claims_for(set, ordinal))
        .map(|(t, c)| (t.metadata.name.clone().unwrap_or_default(), c.name_any()))
        .collect()
}

/// A new member from `template` at `revision`: its name, stable network
/// identity and volumes pointing at its claims.
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let namespace = set.namespace().unwrap_or_default();
    let mut pod = pod_from_template(template, &namespace, controller_reference(set), "");
    let name = pod_name(set, ordinal);
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(POD_REVISION_LABEL.into(), revision.to_owned());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(name);
    let service = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .unwrap_or_default();
    if !service.is_empty() {
        spec.subdomain = Some(service);
    }
    let claims = claim_volumes(set, ordinal);
    let mut volumes: Vec<Volume> = claims
        .iter()
        .map(|(volume, claim)| Volume {
            name: volume.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(false),
            }),
            ..Default::default()
        })
        .collect();
    for volume in spec.volumes.take().unwrap_or_default() {
        if !claims.iter().any(|(name, _)| *name == volume.name) {
            volumes.push(volume);
        }
    }
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
    pod
}

/// Whether the pod's name and identity labels are those of its ordinal.
pub fn identity_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let ord = ordinal(pod);
    let labels = crate::util::labels_of(&pod.metadata);
    ord >= 0
        && pod.metadata.name.as_deref() == Some(pod_name(set, ord).as_str())
        && pod.metadata.namespace == set.namespace()
        && labels.get(POD_NAME_LABEL) == pod.metadata.name.as_ref()
        && labels.get(POD_INDEX_LABEL) == Some(&ord.to_string())
}

/// Whether each claim template's volume points at the member's claim.
pub fn storage_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let ord = ordinal(pod);
    if ord < 0 {
        return false;
    }
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    claim_volumes(set, ord).iter().all(|(volume, claim)| {
        volumes.iter().any(|v| {
            v.name == *volume
                && v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == *claim)
        })
    })
}

/// `(whenDeleted, whenScaled)`, Retain unless set.
pub fn retention_policy(set: &StatefulSet) -> (String, String) {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let get = |v: Option<&String>| v.cloned().unwrap_or_else(|| RETAIN.to_owned());
    (
        get(policy.and_then(|p| p.when_deleted.as_ref())),
        get(policy.and_then(|p| p.when_scaled.as_ref())),
    )
}

/// An object a claim may point at: the set or the member pod.
pub struct OwnerIdentity<'a> {
    pub api_group: &'a str,
    pub kind: &'a str,
    pub name: String,
    pub uid: String,
}

impl OwnerIdentity<'_> {
    pub fn of_set(set: &StatefulSet) -> OwnerIdentity<'static> {
        OwnerIdentity {
            api_group: "apps",
            kind: "StatefulSet",
            name: set.name_any(),
            uid: set.uid().unwrap_or_default(),
        }
    }

    pub fn of_pod(pod: &Pod) -> OwnerIdentity<'static> {
        OwnerIdentity {
            api_group: "",
            kind: "Pod",
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
        }
    }

    /// Whether the reference names this object (by kind and name, any uid).
    fn named_by(&self, r: &OwnerReference) -> bool {
        let group = r.api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        r.kind == self.kind && r.name == self.name && group == self.api_group
    }

    fn referenced_by(&self, r: &OwnerReference) -> bool {
        !self.uid.is_empty() && r.uid == self.uid
    }

    fn controller_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: if self.api_group.is_empty() {
                "v1".into()
            } else {
                format!("{}/v1", self.api_group)
            },
            kind: self.kind.into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

fn refs(claim: &PersistentVolumeClaim) -> &[OwnerReference] {
    claim
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
}

fn has_ref(claim: &PersistentVolumeClaim, owner: &OwnerIdentity) -> bool {
    refs(claim).iter().any(|r| owner.referenced_by(r))
}

/// A reference naming the object but with another uid: left by an earlier
/// incarnation (a pod being replaced), not ours to change.
pub fn has_stale_ref(claim: &PersistentVolumeClaim, owner: &OwnerIdentity) -> bool {
    refs(claim)
        .iter()
        .find(|r| owner.named_by(r))
        .is_some_and(|r| r.uid != owner.uid)
}

fn has_unexpected_controller(
    claim: &PersistentVolumeClaim,
    set: &OwnerIdentity,
    pod: &OwnerIdentity,
) -> bool {
    refs(claim)
        .iter()
        .any(|r| r.controller == Some(true) && !set.referenced_by(r) && !pod.referenced_by(r))
}

/// Whether the claim's owner references are what the retention policy
/// asks for: the set owns it when `whenDeleted=Delete`; the pod owns it
/// when `whenScaled=Delete` and the pod is being scaled away.
pub fn claim_owners_up_to_date(
    claim: &PersistentVolumeClaim,
    set: &StatefulSet,
    pod: &Pod,
) -> bool {
    let set_id = OwnerIdentity::of_set(set);
    let pod_id = OwnerIdentity::of_pod(pod);
    if has_stale_ref(claim, &set_id) || has_stale_ref(claim, &pod_id) {
        return true;
    }
    if has_unexpected_controller(claim, &set_id, &pod_id) {
        return !has_ref(claim, &set_id) && !has_ref(claim, &pod_id);
    }
    if refs(claim)
        .iter()
        .any(|r| (set_id.referenced_by(r) || pod_id.referenced_by(r)) && r.controller != Some(true))
    {
        return false;
    }
    let (when_deleted, when_scaled) = retention_policy(set);
    let scaled_down = !in_ordinal_range(set, pod);
    let want_set = when_deleted == DELETE && !(when_scaled == DELETE && scaled_down);
    let want_pod = when_scaled == DELETE && scaled_down;
    has_ref(claim, &set_id) == want_set && has_ref(claim, &pod_id) == want_pod
}

/// The owner references the claim should have under the policy.
pub fn claim_owners_for_policy(
    claim: &PersistentVolumeClaim,
    set: &StatefulSet,
    pod: &Pod,
) -> Vec<OwnerReference> {
    let set_id = OwnerIdentity::of_set(set);
    let pod_id = OwnerIdentity::of_pod(pod);
    let unexpected = has_unexpected_controller(claim, &set_id, &pod_id);
    let mut out: Vec<OwnerReference> = refs(claim)
        .iter()
        .filter(|r| !set_id.named_by(r) && !pod_id.named_by(r))
        .cloned()
        .collect();
    if unexpected {
        return out;
    }
    let (when_deleted, when_scaled) = retention_policy(set);
    let scaled_down = !in_ordinal_range(set, pod);
    if when_scaled == DELETE && scaled_down {
        out.push(pod_id.controller_reference());
    } else if when_deleted == DELETE {
        out.push(set_id.controller_reference());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(replicas: i32, when_deleted: &str, when_scaled: &str) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "set-uid"},
            "spec": {
                "replicas": replicas, "serviceName": "nginx",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": "i"}],
                                      "volumes": [{"name": "www", "emptyDir": {}},
                                                  {"name": "cache", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www", "labels": {"t": "1"}},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "1Gi"}}}}],
                "persistentVolumeClaimRetentionPolicy":
                    {"whenDeleted": when_deleted, "whenScaled": when_scaled}
            }
        }))
        .unwrap()
    }

    #[test]
    fn ordinals_come_from_names() {
        assert_eq!(parent_and_ordinal("web-12"), ("web", 12));
        assert_eq!(parent_and_ordinal("my-web-0"), ("my-web", 0));
        assert_eq!(parent_and_ordinal("web"), ("", -1));
        assert_eq!(parent_and_ordinal("web-x1"), ("", -1));
    }

    #[test]
    fn a_new_member_has_its_identity_and_claims() {
        let set = set(3, RETAIN, RETAIN);
        let template = set.spec.as_ref().unwrap().template.clone();
        let pod = new_pod(&set, &template, 1, "web-abc");
        assert_eq!(pod.name_any(), "web-1");
        let labels = pod.labels();
        assert_eq!(labels[POD_NAME_LABEL], "web-1");
        assert_eq!(labels[POD_INDEX_LABEL], "1");
        assert_eq!(labels[POD_REVISION_LABEL], "web-abc");
        assert_eq!(labels["app"], "web");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-1"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 2);
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "www-web-1"
        );
        assert_eq!(volumes[1].name, "cache");
        assert!(identity_matches(&set, &pod));
        assert!(storage_matches(&set, &pod));
        let claims = claims_for(&set, 1);
        assert_eq!(claims[0].name_any(), "www-web-1");
        assert_eq!(claims[0].labels()["app"], "web");
        assert_eq!(claims[0].labels()["t"], "1");
    }

    #[test]
    fn claim_owners_follow_the_retention_policy() {
        let mut pod = new_pod(&set(3, RETAIN, RETAIN), &Default::default(), 2, "web-abc");
        pod.metadata.uid = Some("pod-uid".into());
        let claim = claims_for(&set(3, RETAIN, RETAIN), 2).remove(0);
        // Retain/Retain: no owners.
        assert!(claim_owners_up_to_date(
            &claim,
            &set(3, RETAIN, RETAIN),
            &pod
        ));
        // whenDeleted=Delete: the set owns it.
        let s = set(3, DELETE, RETAIN);
        assert!(!claim_owners_up_to_date(&claim, &s, &pod));
        let owned = PersistentVolumeClaim {
            metadata: ObjectMeta {
                owner_references: Some(claim_owners_for_policy(&claim, &s, &pod)),
                ..claim.metadata.clone()
            },
            ..claim.clone()
        };
        assert_eq!(refs(&owned)[0].kind, "StatefulSet");
        assert!(claim_owners_up_to_date(&owned, &s, &pod));
        // whenScaled=Delete and the pod is scaled away: the pod owns it.
        let scaled = set(2, DELETE, DELETE);
        assert!(!claim_owners_up_to_date(&owned, &scaled, &pod));
        let refs_now = claim_owners_for_policy(&owned, &scaled, &pod);
        assert_eq!(refs_now.len(), 1);
        assert_eq!(refs_now[0].kind, "Pod");
        assert_eq!(refs_now[0].uid, "pod-uid");
        // A reference to an earlier pod of that name is stale: hands off.
        let mut stale = owned.clone();
        stale.metadata.owner_references = Some(vec![OwnerReference {
            uid: "old-pod".into(),
            ..refs_now[0].clone()
        }]);
        assert!(has_stale_ref(&stale, &OwnerIdentity::of_pod(&pod)));
    }
}
