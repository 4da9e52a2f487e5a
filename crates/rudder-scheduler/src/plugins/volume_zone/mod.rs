//! VolumeZone: a pod using a bound volume labelled with a zone or region
//! (`topology.kubernetes.io/*`, or the legacy
//! `failure-domain.beta.kubernetes.io/*`) may run only on nodes in that
//! zone or region. Nodes without any zone or region label are not
//! constrained; a legacy volume label matches a node's GA label.

use std::collections::BTreeSet;

use crate::cache::{ClusterCache, NodeInfo, PodInfo};
use crate::framework::{CycleState, FilterPlugin, Plugin, PreFilterPlugin, Status};
use crate::volume_cache::{
    bound_volume, claim_class, pod_claims, volume_topology, waits_for_first_consumer,
};

pub const NAME: &str = "VolumeZone";
const STATE: &str = "VolumeZone";

pub const REASON_CONFLICT: &str = "node(s) had no available volume zone";

const TOPOLOGY_LABELS: [&str; 4] = [
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
];

pub struct VolumeZone;

impl Plugin for VolumeZone {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// The label keys and values the pod's volumes require.
struct Topologies(Vec<(String, BTreeSet<String>)>);

fn ga_label(key: &str) -> &str {
    match key {
        "failure-domain.beta.kubernetes.io/zone" => "topology.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region" => "topology.kubernetes.io/region",
        other => other,
    }
}

impl PreFilterPlugin for VolumeZone {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, cache: &ClusterCache) -> Status {
        let claims = pod_claims(&pod.pod);
        if claims.is_empty() {
            return Status::skip();
        }
        let volumes = &cache.volumes;
        let mut topologies = Vec::new();
        for claim in claims {
            let Some(pvc) = volumes.pvc(&pod.namespace, &claim.name) else {
                return Status::unresolvable(format!(
                    "persistentvolumeclaim \"{}\" not found",
                    claim.name
                ));
            };
            let Some(pv_name) = bound_volume(pvc) else {
                let class = claim_class(pvc);
                if class.is_empty() {
                    return Status::unresolvable(
                        "PersistentVolumeClaim had no pv name and storageClass name",
                    );
                }
                let Some(storage_class) = volumes.storage_class(class) else {
                    return Status::unresolvable(format!(
                        "StorageClass \"{class}\" claimed by PersistentVolumeClaim \"{}\" not found",
                        claim.name
                    ));
                };
                if waits_for_first_consumer(storage_class) {
                    // Its volume will be chosen (or made) for the node.
                    continue;
                }
                return Status::unresolvable("PersistentVolume had no name");
            };
            let Some(pv) = volumes.pv(pv_name) else {
                return Status::unresolvable(format!("PersistentVolume \"{pv_name}\" not found"));
            };
            topologies.extend(volume_topology(pv));
        }
        if topologies.is_empty() {
            return Status::skip();
        }
        state.write(STATE, Topologies(topologies));
        Status::success()
    }
}

impl FilterPlugin for VolumeZone {
    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(Topologies(topologies)) = state.read::<Topologies>(STATE) else {
            return Status::success();
        };
        if !TOPOLOGY_LABELS.iter().any(|k| node.labels.contains_key(*k)) {
            return Status::success();
        }
        for (key, values) in topologies {
            let value = node
                .labels
                .get(key)
                .or_else(|| node.labels.get(ga_label(key)));
            if !value.is_some_and(|v| values.contains(v)) {
                return Status::unresolvable(REASON_CONFLICT);
            }
        }
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Code;
    use crate::plugins::testing::{
        bound_pvc, cache, node_info, pod_with_claims, pv, pvc, storage_class,
    };
    use serde_json::json;

    #[test]
    fn volume_zones_and_regions_must_match_the_node() {
        let mut c = cache(vec![]);
        let v = &mut c.volumes;
        let labelled = |name: &str, labels: serde_json::Value| {
            pv(
                name,
                json!({"metadata": {"labels": labels}, "status": {"phase": "Bound"}}),
            )
        };
        v.upsert(bound_pvc("in-a", "pv-a"));
        v.upsert(labelled(
            "pv-a",
            json!({"topology.kubernetes.io/zone": "zone-a", "topology.kubernetes.io/region": "r1"}),
        ));
        v.upsert(bound_pvc("in-ab", "pv-ab"));
        v.upsert(labelled(
            "pv-ab",
            json!({"topology.kubernetes.io/zone": "zone-a__zone-b"}),
        ));
        v.upsert(bound_pvc("legacy-b", "pv-legacy"));
        v.upsert(labelled(
            "pv-legacy",
            json!({"failure-domain.beta.kubernetes.io/zone": "zone-b"}),
        ));
        v.upsert(bound_pvc("anywhere", "pv-any"));
        v.upsert(labelled("pv-any", json!({})));
        v.upsert(bound_pvc("dangling", "pv-gone"));
        v.upsert(storage_class("local", "WaitForFirstConsumer"));
        v.upsert(storage_class("fast", "Immediate"));
        v.upsert(pvc(
            "waiting",
            json!({"spec": {"storageClassName": "local"}}),
        ));
        v.upsert(pvc(
            "immediate",
            json!({"spec": {"storageClassName": "fast"}}),
        ));
        v.upsert(pvc("classless", json!({})));
        let zone = |name: &str, labels: serde_json::Value| {
            node_info(name, "1", "1Gi", json!({"metadata": {"labels": labels}}))
        };
        let a = zone(
            "a",
            json!({"topology.kubernetes.io/zone": "zone-a", "topology.kubernetes.io/region": "r1"}),
        );
        let b = zone(
            "b",
            json!({"topology.kubernetes.io/zone": "zone-b", "topology.kubernetes.io/region": "r1"}),
        );
        let legacy_b = zone(
            "lb",
            json!({"failure-domain.beta.kubernetes.io/zone": "zone-b"}),
        );
        let bare = zone("bare", json!({}));
        let u = Code::UnschedulableAndUnresolvable;
        let cases: Vec<(&str, Vec<&str>, &NodeInfo, Code)> = vec![
            ("same zone", vec!["in-a"], &a, Code::Success),
            ("other zone", vec!["in-a"], &b, u.clone()),
            (
                "node without zone labels",
                vec!["in-a"],
                &bare,
                Code::Success,
            ),
            (
                "node with only a legacy label",
                vec!["in-a"],
                &legacy_b,
                u.clone(),
            ),
            ("multi-zone volume", vec!["in-ab"], &b, Code::Success),
            (
                "legacy volume label, GA node label",
                vec!["legacy-b"],
                &b,
                Code::Success,
            ),
            ("legacy both", vec!["legacy-b"], &legacy_b, Code::Success),
            ("legacy volume elsewhere", vec!["legacy-b"], &a, u.clone()),
            ("volume without topology", vec!["anywhere"], &a, Code::Skip),
            (
                "waiting for first consumer",
                vec!["waiting"],
                &a,
                Code::Skip,
            ),
            (
                "two volumes in different zones",
                vec!["in-a", "legacy-b"],
                &a,
                u.clone(),
            ),
            ("unbound immediate", vec!["immediate"], &a, u.clone()),
            ("no class", vec!["classless"], &a, u.clone()),
            ("missing volume", vec!["dangling"], &a, u.clone()),
            ("missing claim", vec!["ghost"], &a, u.clone()),
        ];
        for (name, claims, node, code) in cases {
            let p = pod_with_claims("p", &claims);
            let mut state = CycleState::default();
            let mut status = VolumeZone.pre_filter(&mut state, &p, &c);
            if status.is_success() {
                status = VolumeZone.filter(&state, &p, node);
                if code == u {
                    assert_eq!(status.reasons, vec![REASON_CONFLICT.to_owned()], "{name}");
                }
            }
            assert_eq!(status.code, code, "{name}: {status:?}");
        }
    }
}
