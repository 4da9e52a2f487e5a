//! The scheduler's view of storage: PersistentVolumeClaims,
//! PersistentVolumes, StorageClasses and CSINodes, as the informers last
//! saw them. The volume plugins read it in PreFilter (it lives in
//! [`ClusterCache`](crate::cache::ClusterCache)); a plugin that needs it in
//! Filter takes a [`snapshot`](VolumeCache::snapshot), which is cheap: the
//! maps are shared and copied only when written while a snapshot is held.
//!
//! Like Kubernetes' assume cache, it also holds the scheduler's own
//! pending writes: once VolumeBinding has chosen a volume for a claim (or
//! a node for a claim to be provisioned on), the changed PV or PVC is
//! *assumed* here until the informer delivers a newer version of that
//! object, so the next pods do not pick the same volume meanwhile.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
use rudder_apimachinery::quantity::Quantity;

use crate::cache::NodeInfo;
use crate::plugins::node_selector_term_matches;

type Objects<K> = Arc<HashMap<String, Arc<K>>>;

/// PVCs (by `namespace/name`), PVs, StorageClasses and CSINodes (by name).
#[derive(Clone, Default)]
pub struct VolumeCache {
    pvcs: Objects<PersistentVolumeClaim>,
    pvs: Objects<PersistentVolume>,
    classes: Objects<StorageClass>,
    csi_nodes: Objects<CSINode>,
    /// Claims and volumes as the scheduler is writing them; each is
    /// dropped when the informer's copy changes.
    assumed_pvcs: Objects<PersistentVolumeClaim>,
    assumed_pvs: Objects<PersistentVolume>,
}

/// An object kind the volume cache keeps.
pub trait VolumeObject: Sized {
    /// The object's key in the cache: `namespace/name` for PVCs, else the
    /// name.
    fn cache_key(&self) -> String;
    fn objects(cache: &mut VolumeCache) -> &mut Objects<Self>;
    fn objects_ref(cache: &VolumeCache) -> &Objects<Self>;
    /// The assumed versions, for kinds the scheduler writes.
    fn assumed(_cache: &mut VolumeCache) -> Option<&mut Objects<Self>> {
        None
    }
}

macro_rules! volume_object {
    ($kind:ty, $field:ident, $namespaced:expr, $assumed:ident) => {
        volume_object!(@impl $kind, $field, $namespaced,
            fn assumed(cache: &mut VolumeCache) -> Option<&mut Objects<Self>> {
                Some(&mut cache.$assumed)
            }
        );
    };
    ($kind:ty, $field:ident, $namespaced:expr) => {
        volume_object!(@impl $kind, $field, $namespaced,);
    };
    (@impl $kind:ty, $field:ident, $namespaced:expr, $($extra:item)?) => {
        impl VolumeObject for $kind {
            fn cache_key(&self) -> String {
                let name = self.metadata.name.clone().unwrap_or_default();
                if $namespaced {
                    let ns = self.metadata.namespace.as_deref().unwrap_or_default();
                    format!("{ns}/{name}")
                } else {
                    name
                }
            }
            fn objects(cache: &mut VolumeCache) -> &mut Objects<Self> {
                &mut cache.$field
            }
            fn objects_ref(cache: &VolumeCache) -> &Objects<Self> {
                &cache.$field
            }
            $($extra)?
        }
    };
}

volume_object!(PersistentVolumeClaim, pvcs, true, assumed_pvcs);
volume_object!(PersistentVolume, pvs, false, assumed_pvs);
volume_object!(StorageClass, classes, false);
volume_object!(CSINode, csi_nodes, false);

impl VolumeCache {
    pub fn upsert<K: VolumeObject + kube::Resource>(&mut self, object: K) {
        let key = object.cache_key();
        let version = object.meta().resource_version.clone();
        if let Some(assumed) = K::assumed(self) {
            // A different version than the one assumed upon is newer: our
            // write, or someone else's that supersedes it.
            if assumed
                .get(&key)
                .is_some_and(|a| a.meta().resource_version != version)
            {
                Arc::make_mut(assumed).remove(&key);
            }
        }
        Arc::make_mut(K::objects(self)).insert(key, Arc::new(object));
    }

    pub fn remove<K: VolumeObject>(&mut self, key: &str) {
        if let Some(assumed) = K::assumed(self) {
            if assumed.contains_key(key) {
                Arc::make_mut(assumed).remove(key);
            }
        }
        if K::objects_ref(self).contains_key(key) {
            Arc::make_mut(K::objects(self)).remove(key);
        }
    }

    /// Holds a changed claim or volume (same `resourceVersion` as the
    /// cached one it was made from) until the informer moves past it.
    pub fn assume<K: VolumeObject>(&mut self, object: K) {
        let key = object.cache_key();
        if let Some(assumed) = K::assumed(self) {
            Arc::make_mut(assumed).insert(key, Arc::new(object));
        }
    }

    /// Drops an assumed object (its write failed): the informer's copy
    /// counts again.
    pub fn restore<K: VolumeObject>(&mut self, key: &str) {
        if let Some(assumed) = K::assumed(self) {
            if assumed.contains_key(key) {
                Arc::make_mut(assumed).remove(key);
            }
        }
    }

    /// The keys of every object of kind `K`.
    pub fn keys<K: VolumeObject>(&self) -> Vec<String> {
        K::objects_ref(self).keys().cloned().collect()
    }

    /// A copy to read outside the cache lock or after the cycle's
    /// PreFilter (shares the maps).
    pub fn snapshot(&self) -> VolumeCache {
        self.clone()
    }

    pub fn pvc(&self, namespace: &str, name: &str) -> Option<&Arc<PersistentVolumeClaim>> {
        let key = format!("{namespace}/{name}");
        self.assumed_pvcs.get(&key).or_else(|| self.pvcs.get(&key))
    }

    pub fn pv(&self, name: &str) -> Option<&Arc<PersistentVolume>> {
        self.assumed_pvs.get(name).or_else(|| self.pvs.get(name))
    }

    pub fn pvs(&self) -> impl Iterator<Item = &Arc<PersistentVolume>> {
        self.pvs
            .iter()
            .map(|(name, pv)| self.assumed_pvs.get(name).unwrap_or(pv))
    }

    pub fn storage_class(&self, name: &str) -> Option<&Arc<StorageClass>> {
        self.classes.get(name)
    }

    pub fn csi_node(&self, name: &str) -> Option<&Arc<CSINode>> {
        self.csi_nodes.get(name)
    }
}

/// A claim a pod's volume refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodClaim {
    pub name: String,
    /// A generic ephemeral volume: the claim is `<pod>-<volume>`, made
    /// for the pod by the ephemeral volume controller.
    pub ephemeral: bool,
}

/// The claims a pod's volumes use, in its namespace.
pub fn pod_claims(pod: &Pod) -> Vec<PodClaim> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(claim) = &v.persistent_volume_claim {
                Some(PodClaim {
                    name: claim.claim_name.clone(),
                    ephemeral: false,
                })
            } else {
                v.ephemeral.as_ref().map(|_| PodClaim {
                    name: format!("{pod_name}-{}", v.name),
                    ephemeral: true,
                })
            }
        })
        .collect()
}

/// The class a claim asks for (the field, or the legacy annotation);
/// empty for none.
pub fn claim_class(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .or_else(|| {
            pvc.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
                .map(String::as_str)
        })
        .unwrap_or_default()
}

/// The class of a volume (the field, or the legacy annotation); empty for
/// none.
pub fn volume_class(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .or_else(|| {
            pv.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
                .map(String::as_str)
        })
        .unwrap_or_default()
}

/// The volume a claim is bound to, if any.
pub fn bound_volume(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Whether a class delays binding until a pod uses the claim.
pub fn waits_for_first_consumer(class: &StorageClass) -> bool {
    class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
}

pub fn claim_access_modes(pvc: &PersistentVolumeClaim) -> &[String] {
    pvc.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_deref())
        .unwrap_or_default()
}

/// The storage a claim requests, in bytes.
pub fn claim_request(pvc: &PersistentVolumeClaim) -> i64 {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| Quantity::parse(&q.0))
        .map(|q| q.value())
        .unwrap_or(0)
}

/// A volume's capacity, in bytes.
pub fn volume_capacity(pv: &PersistentVolume) -> i64 {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| Quantity::parse(&q.0))
        .map(|q| q.value())
        .unwrap_or(0)
}

/// Whether a volume's required node affinity admits the node (no
/// affinity admits every node).
pub fn volume_node_affinity_matches(pv: &PersistentVolume, node: &NodeInfo) -> bool {
    let required = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref());
    match required {
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|t| node_selector_term_matches(t, &node.labels, &node.name)),
        None => true,
    }
}

/// The zone/region labels of a volume, each with its allowed values
/// (multi-zone values are joined with `__`).
pub fn volume_topology(pv: &PersistentVolume) -> Vec<(String, BTreeSet<String>)> {
    const KEYS: [&str; 4] = [
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
    ];
    let labels = pv.metadata.labels.as_ref();
    KEYS.iter()
        .filter_map(|k| {
            let value = labels?.get(*k)?;
            let values: BTreeSet<String> = value
                .split("__")
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect();
            Some(((*k).to_owned(), values))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn snapshots_do_not_see_later_writes() {
        let mut cache = VolumeCache::default();
        let pvc: PersistentVolumeClaim =
            serde_json::from_value(json!({"metadata": {"name": "c", "namespace": "ns"}})).unwrap();
        cache.upsert(pvc);
        let snapshot = cache.snapshot();
        cache.remove::<PersistentVolumeClaim>("ns/c");
        assert!(snapshot.pvc("ns", "c").is_some());
        assert!(cache.pvc("ns", "c").is_none());
        assert_eq!(snapshot.keys::<PersistentVolumeClaim>(), vec!["ns/c"]);
    }

    #[test]
    fn assumed_objects_hold_until_the_informer_moves_on() {
        let mut cache = VolumeCache::default();
        let pv = |rv: &str, claim: Option<&str>| -> PersistentVolume {
            let mut v = json!({"metadata": {"name": "v", "resourceVersion": rv}, "spec": {}});
            if let Some(claim) = claim {
                v["spec"]["claimRef"] = json!({"namespace": "ns", "name": claim});
            }
            serde_json::from_value(v).unwrap()
        };
        let claimed = |c: &VolumeCache| {
            c.pv("v")
                .and_then(|v| v.spec.as_ref()?.claim_ref.as_ref()?.name.clone())
        };
        cache.upsert(pv("1", None));
        cache.assume(pv("1", Some("a")));
        assert_eq!(claimed(&cache).as_deref(), Some("a"));
        assert_eq!(cache.pvs().count(), 1);
        // The same version again (a relist) does not undo the assumption.
        cache.upsert(pv("1", None));
        assert_eq!(claimed(&cache).as_deref(), Some("a"));
        // Our write arrives.
        cache.upsert(pv("2", Some("a")));
        cache.upsert(pv("3", None));
        assert_eq!(claimed(&cache), None, "the informer's copy counts again");
        cache.assume(pv("3", Some("b")));
        cache.restore::<PersistentVolume>("v");
        assert_eq!(claimed(&cache), None);
    }

    #[test]
    fn pods_name_their_claims() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"containers": [], "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "tmp", "emptyDir": {}}
            ]}
        }))
        .unwrap();
        assert_eq!(
            pod_claims(&pod),
            vec![
                PodClaim {
                    name: "data-0".into(),
                    ephemeral: false
                },
                PodClaim {
                    name: "web-scratch".into(),
                    ephemeral: true
                }
            ]
        );
    }

    #[test]
    fn topology_values_split_on_double_underscores() {
        let pv: PersistentVolume =
            serde_json::from_value(json!({"metadata": {"name": "v", "labels": {
            "topology.kubernetes.io/zone": "a__b", "other": "x"}}}))
            .unwrap();
        assert_eq!(
            volume_topology(&pv),
            vec![(
                "topology.kubernetes.io/zone".to_owned(),
                BTreeSet::from(["a".to_owned(), "b".to_owned()])
            )]
        );
    }
}
