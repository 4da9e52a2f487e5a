//! Storage controllers: the PersistentVolume binder
//! (`persistentvolume-binder`), the local-path provisioner
//! (`local-path-provisioner`) and the PVC/PV protection controllers
//! (`pvc-protection`, `pv-protection`).
//!
//! Together with the scheduler's VolumeBinding plugin they take a claim
//! from Pending to Bound: the binder matches claims to existing volumes
//! (or asks a provisioner for one), the scheduler picks the node for
//! `WaitForFirstConsumer` claims, the provisioner creates the volume on
//! that node, and the binder completes the binding.

pub mod binder;
pub mod local_path;
pub mod protection;

#[cfg(test)]
mod integration_tests;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rudder_apimachinery::quantity::Quantity;

/// On a claim and a volume: the binding is complete (claim side).
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// The binder, not the user, bound this side.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The node the scheduler chose for a `WaitForFirstConsumer` claim.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The provisioner asked to create a volume for the claim.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// On a volume: the provisioner that created it.
pub const ANN_DYNAMICALLY_PROVISIONED: &str = "pv.kubernetes.io/provisioned-by";
/// The legacy way to name a class.
pub const ANN_BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
pub const ANN_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
pub const ANN_BETA_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";

pub const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION_FINALIZER: &str = "kubernetes.io/pv-protection";

/// A class whose provisioner creates nothing (statically provisioned
/// local volumes).
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

pub fn has_annotation(meta: &ObjectMeta, key: &str) -> bool {
    annotation(meta, key).is_some()
}

pub fn set_annotation(meta: &mut ObjectMeta, key: &str, value: &str) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
}

pub fn remove_annotation(meta: &mut ObjectMeta, key: &str) {
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(key);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

pub fn has_finalizer(meta: &ObjectMeta, finalizer: &str) -> bool {
    meta.finalizers
        .iter()
        .flatten()
        .any(|f| f.as_str() == finalizer)
}

/// Whether the claim asks for a class at all (the field, even `""`, or
/// the beta annotation); one that does not gets the default class.
pub fn claim_has_class(pvc: &PersistentVolumeClaim) -> bool {
    has_annotation(&pvc.metadata, ANN_BETA_STORAGE_CLASS)
        || pvc
            .spec
            .as_ref()
            .is_some_and(|s| s.storage_class_name.is_some())
}

/// The class a claim asks for; empty for none.
pub fn claim_class(pvc: &PersistentVolumeClaim) -> &str {
    annotation(&pvc.metadata, ANN_BETA_STORAGE_CLASS)
        .or_else(|| {
            pvc.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
        })
        .unwrap_or_default()
}

/// The class of a volume; empty for none.
pub fn volume_class(pv: &PersistentVolume) -> &str {
    annotation(&pv.metadata, ANN_BETA_STORAGE_CLASS)
        .or_else(|| {
            pv.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
        })
        .unwrap_or_default()
}

/// Bytes of a `storage` quantity.
fn storage_bytes(
    resources: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Option<i64> {
    resources
        .and_then(|r| r.get("storage"))
        .and_then(|q| Quantity::parse(&q.0))
        .map(|q| q.value())
}

pub fn claim_request(pvc: &PersistentVolumeClaim) -> i64 {
    storage_bytes(
        pvc.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
    .unwrap_or(0)
}

pub fn volume_capacity(pv: &PersistentVolume) -> Option<i64> {
    storage_bytes(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()))
}

pub fn claim_access_modes(pvc: &PersistentVolumeClaim) -> &[String] {
    pvc.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_deref())
        .unwrap_or_default()
}

pub fn volume_access_modes(pv: &PersistentVolume) -> &[String] {
    pv.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_deref())
        .unwrap_or_default()
}

/// Whether the volume offers every access mode the claim asks for.
pub fn access_modes_fit(pvc: &PersistentVolumeClaim, pv: &PersistentVolume) -> bool {
    let offered = volume_access_modes(pv);
    claim_access_modes(pvc).iter().all(|m| offered.contains(m))
}

fn mode_or_default(mode: Option<&String>) -> &str {
    mode.map(String::as_str).unwrap_or("Filesystem")
}

/// Whether claim and volume disagree on `Filesystem` versus `Block`.
pub fn volume_mode_mismatch(pvc: &PersistentVolumeClaim, pv: &PersistentVolume) -> bool {
    mode_or_default(pvc.spec.as_ref().and_then(|s| s.volume_mode.as_ref()))
        != mode_or_default(pv.spec.as_ref().and_then(|s| s.volume_mode.as_ref()))
}

pub fn claim_ref(pv: &PersistentVolume) -> Option<&ObjectReference> {
    pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
}

/// `namespace/name` of the claim a volume points to.
pub fn claim_ref_key(pv: &PersistentVolume) -> Option<String> {
    claim_ref(pv).map(|r| {
        format!(
            "{}/{}",
            r.namespace.as_deref().unwrap_or_default(),
            r.name.as_deref().unwrap_or_default()
        )
    })
}

/// Whether the volume points to this claim (by name, and by UID unless
/// the reference has none yet: a pre-binding).
pub fn is_volume_bound_to_claim(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(r) = claim_ref(pv) else {
        return false;
    };
    r.name == pvc.metadata.name
        && r.namespace == pvc.metadata.namespace
        && r.uid
            .as_deref()
            .is_none_or(|uid| uid.is_empty() || Some(uid) == pvc.metadata.uid.as_deref())
}

/// The volume the claim names, if any.
pub fn claim_volume_name(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|n| !n.is_empty())
}

pub fn volume_phase(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

pub fn claim_phase(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

pub fn reclaim_policy(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain")
}

pub fn is_default_class(class: &StorageClass) -> bool {
    [ANN_DEFAULT_CLASS, ANN_BETA_DEFAULT_CLASS]
        .iter()
        .any(|k| annotation(&class.metadata, k) == Some("true"))
}

/// The default class, as Kubernetes picks it: of the classes annotated
/// default, the newest, ties broken by name.
pub fn default_class<'a>(
    classes: impl IntoIterator<Item = &'a StorageClass>,
) -> Option<&'a StorageClass> {
    classes
        .into_iter()
        .filter(|c| is_default_class(c))
        .max_by(|a, b| {
            let created = |c: &StorageClass| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(a)
                .cmp(&created(b))
                .then_with(|| b.metadata.name.cmp(&a.metadata.name))
        })
}

/// Whether the class waits for a pod before binding.
pub fn waits_for_first_consumer(class: &StorageClass) -> bool {
    class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
}

/// The reference a volume keeps to its claim (`claimRef`).
pub fn reference_to(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        resource_version: pvc.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The key of a claim in caches and queues.
pub fn claim_key(pvc: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        pvc.metadata.namespace.as_deref().unwrap_or_default(),
        pvc.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Objects for the storage tests.

    use super::*;
    use serde_json::{json, Value};

    pub fn merge(target: &mut Value, extra: Value) {
        match (target, extra) {
            (Value::Object(t), Value::Object(e)) => {
                for (k, v) in e {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
            (t, e) => *t = e,
        }
    }

    /// A 1Gi ReadWriteOnce claim in `default` (no class unless `extra`
    /// gives one).
    pub fn pvc(name: &str, extra: Value) -> PersistentVolumeClaim {
        let mut c = json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        });
        merge(&mut c, extra);
        serde_json::from_value(c).unwrap()
    }

    /// A ReadWriteOnce hostPath volume of `size`.
    pub fn pv(name: &str, size: &str, extra: Value) -> PersistentVolume {
        let mut v = json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "hostPath": {"path": format!("/tmp/{name}")}}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    pub fn class(name: &str, provisioner: &str, mode: &str) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": name}, "provisioner": provisioner, "volumeBindingMode": mode
        }))
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_and_volumes_are_read_like_kubernetes() {
        let claim = pvc(
            "c",
            json!({"metadata": {"uid": "u1"}, "spec": {"storageClassName": "fast"}}),
        );
        assert!(claim_has_class(&claim));
        assert_eq!(claim_class(&claim), "fast");
        assert!(!claim_has_class(&pvc("d", json!({}))));
        assert_eq!(claim_request(&claim), 1 << 30);
        let volume = pv(
            "v",
            "2Gi",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c"}}}),
        );
        assert_eq!(volume_capacity(&volume), Some(2 << 30));
        assert!(
            is_volume_bound_to_claim(&volume, &claim),
            "pre-bound by name"
        );
        let other_uid = pv(
            "w",
            "1Gi",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "c", "uid": "u0"}}}),
        );
        assert!(!is_volume_bound_to_claim(&other_uid, &claim));
        assert!(access_modes_fit(&claim, &volume));
        assert!(!volume_mode_mismatch(&claim, &volume));
        let block = pv("b", "1Gi", json!({"spec": {"volumeMode": "Block"}}));
        assert!(volume_mode_mismatch(&claim, &block));
    }

    #[test]
    fn the_newest_default_class_wins() {
        let mut a = class("a", "p", "Immediate");
        let mut b = class("b", "p", "Immediate");
        let c = class("c", "p", "Immediate");
        for (class, time) in [
            (&mut a, "2024-01-01T00:00:00Z"),
            (&mut b, "2024-02-01T00:00:00Z"),
        ] {
            set_annotation(&mut class.metadata, ANN_DEFAULT_CLASS, "true");
            class.metadata.creation_timestamp = Some(serde_json::from_value(json!(time)).unwrap());
        }
        let classes = [a.clone(), b.clone(), c];
        assert_eq!(
            default_class(&classes).and_then(|c| c.metadata.name.as_deref()),
            Some("b")
        );
        assert!(default_class(&classes[2..]).is_none());
    }
}
