//! NodeVolumeLimits: a node attaches at most as many volumes of a CSI
//! driver as its CSINode allows (`spec.drivers[].allocatable.count`).
//! Volumes are counted once however many pods on the node use them: the
//! volume handle of a bound claim's CSI volume, a placeholder per claim
//! for unbound claims (the driver is their class's provisioner), and
//! inline CSI volumes per pod. Drivers without a limit, and nodes without
//! a CSINode, are not limited. (In-tree volume plugins translated to CSI
//! are not counted.)

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::Pod;

use crate::cache::{ClusterCache, NodeInfo, PodInfo};
use crate::framework::{CycleState, FilterPlugin, Plugin, PreFilterPlugin, Status};
use crate::volume_cache::{bound_volume, claim_class, pod_claims, VolumeCache};

pub const NAME: &str = "NodeVolumeLimits";
const STATE: &str = "NodeVolumeLimits";

pub const REASON_MAX_VOLUME_COUNT: &str = "node(s) exceed max volume count";

pub struct NodeVolumeLimits;

impl Plugin for NodeVolumeLimits {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// Driver → unique volume ids.
type DriverVolumes = HashMap<String, HashSet<String>>;

/// Adds the CSI volumes `pod` uses to `out`.
fn csi_volumes(pod: &Pod, volumes: &VolumeCache, out: &mut DriverVolumes) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(csi) = &v.csi {
            out.entry(csi.driver.clone())
                .or_default()
                .insert(format!("{uid}-{}", v.name));
        }
    }
    for claim in pod_claims(pod) {
        let Some(pvc) = volumes.pvc(namespace, &claim.name) else {
            continue;
        };
        match bound_volume(pvc) {
            Some(pv_name) => {
                let csi = volumes
                    .pv(pv_name)
                    .and_then(|pv| pv.spec.as_ref())
                    .and_then(|s| s.csi.as_ref());
                if let Some(csi) = csi {
                    out.entry(csi.driver.clone())
                        .or_default()
                        .insert(csi.volume_handle.clone());
                }
            }
            None => {
                // Not provisioned yet: it will be a volume of the class's
                // driver.
                let Some(class) = volumes.storage_class(claim_class(pvc)) else {
                    continue;
                };
                out.entry(class.provisioner.clone())
                    .or_default()
                    .insert(format!("{namespace}-{}", claim.name));
            }
        }
    }
}

struct PreFilterState {
    new: DriverVolumes,
    volumes: VolumeCache,
}

impl PreFilterPlugin for NodeVolumeLimits {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, cache: &ClusterCache) -> Status {
        let mut new = DriverVolumes::new();
        csi_volumes(&pod.pod, &cache.volumes, &mut new);
        if new.is_empty() {
            return Status::skip();
        }
        state.write(
            STATE,
            PreFilterState {
                new,
                volumes: cache.volumes.snapshot(),
            },
        );
        Status::success()
    }
}

impl FilterPlugin for NodeVolumeLimits {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(pre) = state.read::<PreFilterState>(STATE) else {
            return Status::success();
        };
        let Some(csi_node) = pre.volumes.csi_node(&node.name) else {
            return Status::success();
        };
        let limits: HashMap<&str, i64> = csi_node
            .spec
            .drivers
            .iter()
            .filter_map(|d| {
                let count = d.allocatable.as_ref()?.count?;
                pre.new
                    .contains_key(&d.name)
                    .then_some((d.name.as_str(), i64::from(count)))
            })
            .collect();
        if limits.is_empty() {
            return Status::success();
        }
        let mut attached = DriverVolumes::new();
        for other in node.pods.iter().filter(|p| p.uid != pod.uid) {
            csi_volumes(&other.pod, &pre.volumes, &mut attached);
        }
        for (driver, limit) in limits {
            let in_use = attached.get(driver);
            let added = pre.new[driver]
                .iter()
                .filter(|id| in_use.is_none_or(|u| !u.contains(*id)))
                .count() as i64;
            let used = in_use.map_or(0, |u| u.len() as i64);
            if used + added > limit {
                return Status::unschedulable(REASON_MAX_VOLUME_COUNT);
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
        bound_pvc, cache, csi_node, node_info, pod, pod_with_claims, pv, pvc, storage_class,
    };
    use serde_json::json;

    const EBS: &str = "ebs.csi.aws.com";

    fn csi_pv(name: &str, driver: &str) -> k8s_openapi::api::core::v1::PersistentVolume {
        pv(
            name,
            json!({"spec": {"csi": {"driver": driver, "volumeHandle": format!("h-{name}")}}, "status": {"phase": "Bound"}}),
        )
    }

    #[test]
    fn csi_volumes_count_against_the_csinode_limit() {
        let mut c = cache(vec![]);
        let v = &mut c.volumes;
        v.upsert(csi_node("a", &[(EBS, 2), ("other.csi", 0)]));
        for (claim, volume, driver) in [
            ("c1", "v1", EBS),
            ("c2", "v2", EBS),
            ("c3", "v3", EBS),
            ("o1", "ov1", "other.csi"),
            ("n1", "nv1", "unlimited.csi"),
        ] {
            v.upsert(bound_pvc(claim, volume));
            v.upsert(csi_pv(volume, driver));
        }
        v.upsert(bound_pvc("plain", "hostpath"));
        v.upsert(pv(
            "hostpath",
            json!({"spec": {"hostPath": {"path": "/x"}}}),
        ));
        let mut sc = storage_class("ebs", "WaitForFirstConsumer");
        sc.provisioner = EBS.into();
        v.upsert(sc);
        v.upsert(pvc("new", json!({"spec": {"storageClassName": "ebs"}})));

        let mut a = node_info("a", "1", "1Gi", json!({}));
        a.add_pod(pod_with_claims("x", &["c1"]));
        a.add_pod(pod_with_claims("y", &["c1"]));
        let empty_a = node_info("a", "1", "1Gi", json!({}));
        let no_csinode = node_info("b", "1", "1Gi", json!({}));

        let cases: Vec<(&str, Vec<&str>, &NodeInfo, Code)> = vec![
            ("no CSI volumes", vec!["plain"], &a, Code::Skip),
            ("one more fits", vec!["c2"], &a, Code::Success),
            (
                "a shared volume is not counted twice",
                vec!["c1", "c2"],
                &a,
                Code::Success,
            ),
            ("two more exceed", vec!["c2", "c3"], &a, Code::Unschedulable),
            (
                "unbound claims count by class driver",
                vec!["c2", "new"],
                &a,
                Code::Unschedulable,
            ),
            (
                "on an empty node",
                vec!["c2", "c3"],
                &empty_a,
                Code::Success,
            ),
            ("zero allowed", vec!["o1"], &empty_a, Code::Unschedulable),
            ("driver without a limit", vec!["n1"], &a, Code::Success),
            (
                "node without a CSINode",
                vec!["c1", "c2", "c3"],
                &no_csinode,
                Code::Success,
            ),
        ];
        for (name, claims, node, code) in cases {
            let p = pod_with_claims("p", &claims);
            let mut state = CycleState::default();
            let mut status = NodeVolumeLimits.pre_filter(&mut state, &p, &c);
            if status.is_success() {
                status = NodeVolumeLimits.filter(&state, &p, node);
            }
            assert_eq!(status.code, code, "{name}: {status:?}");
            if code == Code::Unschedulable {
                assert_eq!(status.reasons, vec![REASON_MAX_VOLUME_COUNT.to_owned()]);
            }
        }
    }

    #[test]
    fn inline_csi_volumes_count_per_pod() {
        let mut c = cache(vec![]);
        c.volumes.upsert(csi_node("a", &[("inline.csi", 1)]));
        let inline = |name: &str| {
            pod(
                name,
                json!({"volumes": [{"name": "v", "csi": {"driver": "inline.csi"}}]}),
            )
        };
        let mut a = node_info("a", "1", "1Gi", json!({}));
        let p = inline("p");
        let mut state = CycleState::default();
        assert!(NodeVolumeLimits.pre_filter(&mut state, &p, &c).is_success());
        assert!(NodeVolumeLimits.filter(&state, &p, &a).is_success());
        a.add_pod(inline("q"));
        assert!(!NodeVolumeLimits.filter(&state, &p, &a).is_success());
    }
}
