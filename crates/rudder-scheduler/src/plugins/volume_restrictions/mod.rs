//! VolumeRestrictions: disks that attach to one node read-write (GCE PD,
//! AWS EBS, RBD, iSCSI) cannot be used by two pods on one node unless both
//! mount them read-only (EBS: not at all), and a claim with the
//! `ReadWriteOncePod` access mode serves one pod in the whole cluster.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Volume;

use crate::cache::{ClusterCache, NodeInfo, PodInfo};
use crate::framework::{CycleState, FilterPlugin, Plugin, PreFilterPlugin, Status};
use crate::volume_cache::{claim_access_modes, pod_claims};

pub const NAME: &str = "VolumeRestrictions";
const STATE: &str = "VolumeRestrictions";

pub const REASON_DISK_CONFLICT: &str = "node(s) had no available disk";
pub const REASON_RWOP_CONFLICT: &str =
    "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode";

pub struct VolumeRestrictions;

impl Plugin for VolumeRestrictions {
    fn name(&self) -> &'static str {
        NAME
    }
}

struct PreFilterState {
    /// The pod has disks that may conflict on a node.
    has_disks: bool,
    /// Other pods using the pod's ReadWriteOncePod claims: (node, uid).
    /// Filter refuses a node while any is still in place, so preemption
    /// can free a claim by evicting its user on that node.
    rwop_users: Vec<(String, String)>,
}

fn is_disk(v: &Volume) -> bool {
    v.gce_persistent_disk.is_some()
        || v.aws_elastic_block_store.is_some()
        || v.rbd.is_some()
        || v.iscsi.is_some()
}

/// Whether two pods' volumes are the same single-writer disk in a way
/// that cannot be shared.
fn volumes_conflict(a: &Volume, b: &Volume) -> bool {
    if let (Some(a), Some(b)) = (&a.gce_persistent_disk, &b.gce_persistent_disk) {
        return a.pd_name == b.pd_name && !(a.read_only == Some(true) && b.read_only == Some(true));
    }
    if let (Some(a), Some(b)) = (&a.aws_elastic_block_store, &b.aws_elastic_block_store) {
        return a.volume_id == b.volume_id;
    }
    if let (Some(a), Some(b)) = (&a.iscsi, &b.iscsi) {
        return a.iqn == b.iqn && !(a.read_only == Some(true) && b.read_only == Some(true));
    }
    if let (Some(a), Some(b)) = (&a.rbd, &b.rbd) {
        let pool = |p: &Option<String>| p.clone().unwrap_or_else(|| "rbd".into());
        return a.monitors.iter().any(|m| b.monitors.contains(m))
            && pool(&a.pool) == pool(&b.pool)
            && a.image == b.image
            && !(a.read_only == Some(true) && b.read_only == Some(true));
    }
    false
}

impl PreFilterPlugin for VolumeRestrictions {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, cache: &ClusterCache) -> Status {
        let has_disks = pod.spec().volumes.iter().flatten().any(is_disk);
        let claims = pod_claims(&pod.pod);
        if !has_disks && claims.is_empty() {
            return Status::skip();
        }
        let mut rwop: HashSet<String> = HashSet::new();
        for claim in &claims {
            let Some(pvc) = cache.volumes.pvc(&pod.namespace, &claim.name) else {
                if claim.ephemeral {
                    // VolumeBinding says the controller has yet to make it.
                    continue;
                }
                return Status::unresolvable(format!(
                    "persistentvolumeclaim \"{}\" not found",
                    claim.name
                ));
            };
            if claim_access_modes(pvc)
                .iter()
                .any(|m| m == "ReadWriteOncePod")
            {
                rwop.insert(claim.name.clone());
            }
        }
        let mut rwop_users = Vec::new();
        if !rwop.is_empty() {
            for node in cache.nodes.values() {
                for other in &node.pods {
                    if other.uid != pod.uid
                        && other.namespace == pod.namespace
                        && pod_claims(&other.pod)
                            .iter()
                            .any(|c| rwop.contains(&c.name))
                    {
                        rwop_users.push((node.name.clone(), other.uid.clone()));
                    }
                }
            }
        }
        state.write(
            STATE,
            PreFilterState {
                has_disks,
                rwop_users,
            },
        );
        Status::success()
    }
}

impl FilterPlugin for VolumeRestrictions {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(pre) = state.read::<PreFilterState>(STATE) else {
            return Status::success();
        };
        if pre.has_disks {
            for volume in pod.spec().volumes.iter().flatten().filter(|v| is_disk(v)) {
                let conflict = node.pods.iter().filter(|p| p.uid != pod.uid).any(|p| {
                    p.spec()
                        .volumes
                        .iter()
                        .flatten()
                        .any(|v| volumes_conflict(volume, v))
                });
                if conflict {
                    return Status::unschedulable(REASON_DISK_CONFLICT);
                }
            }
        }
        let still_used = pre
            .rwop_users
            .iter()
            .any(|(n, uid)| n != &node.name || node.pods.iter().any(|p| &p.uid == uid));
        if still_used {
            return Status::unschedulable(REASON_RWOP_CONFLICT);
        }
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Code;
    use crate::plugins::testing::{cache, node, node_info, pod, pod_with_claims, pvc};
    use serde_json::{json, Value};

    fn run(c: &ClusterCache, p: &PodInfo, n: &NodeInfo) -> Status {
        let mut state = CycleState::default();
        let pre = VolumeRestrictions.pre_filter(&mut state, p, c);
        match pre.code {
            Code::Success => {}
            // Nothing for this plugin to check.
            Code::Skip => return Status::success(),
            _ => return pre,
        }
        VolumeRestrictions.filter(&state, p, n)
    }

    fn with_volume(name: &str, volume: Value) -> std::sync::Arc<PodInfo> {
        let mut volume = volume;
        volume["name"] = json!("disk");
        pod(name, json!({"volumes": [volume]}))
    }

    #[test]
    fn single_writer_disks_conflict_on_a_node() {
        let c = cache(vec![]);
        let gce = |pd: &str, ro: bool| json!({"gcePersistentDisk": {"pdName": pd, "readOnly": ro}});
        let ebs =
            |id: &str, ro: bool| json!({"awsElasticBlockStore": {"volumeID": id, "readOnly": ro}});
        let iscsi = |iqn: &str, ro: bool| json!({"iscsi": {"targetPortal": "10.0.0.1:3260", "iqn": iqn, "lun": 0, "readOnly": ro}});
        let rbd = |mon: &str, image: &str, ro: bool| json!({"rbd": {"monitors": [mon], "image": image, "readOnly": ro}});
        let cases = [
            ("same GCE PD", gce("d1", false), gce("d1", false), false),
            (
                "same GCE PD, both read-only",
                gce("d1", true),
                gce("d1", true),
                true,
            ),
            (
                "same GCE PD, one read-only",
                gce("d1", false),
                gce("d1", true),
                false,
            ),
            ("other GCE PD", gce("d1", false), gce("d2", false), true),
            (
                "same EBS even read-only",
                ebs("vol-1", true),
                ebs("vol-1", true),
                false,
            ),
            ("other EBS", ebs("vol-1", false), ebs("vol-2", false), true),
            (
                "same iSCSI IQN",
                iscsi("iqn.a", false),
                iscsi("iqn.a", false),
                false,
            ),
            (
                "same iSCSI IQN, read-only",
                iscsi("iqn.a", true),
                iscsi("iqn.a", true),
                true,
            ),
            (
                "same RBD image",
                rbd("m1", "img", false),
                rbd("m1", "img", false),
                false,
            ),
            (
                "RBD on other monitors",
                rbd("m1", "img", false),
                rbd("m2", "img", false),
                true,
            ),
            ("different kinds", gce("d1", false), ebs("d1", false), true),
        ];
        for (name, existing, new, fits) in cases {
            let mut n = node_info("a", "1", "1Gi", json!({}));
            n.add_pod(with_volume("old", existing));
            let status = run(&c, &with_volume("p", new), &n);
            assert_eq!(status.is_success(), fits, "{name}: {status:?}");
            if !fits {
                assert_eq!(
                    status,
                    Status::unschedulable(REASON_DISK_CONFLICT),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn read_write_once_pod_claims_serve_one_pod() {
        let mut c = cache(vec![
            node("a", "1", "1Gi", json!({})),
            node("b", "1", "1Gi", json!({})),
        ]);
        c.volumes.upsert(pvc(
            "solo",
            json!({"spec": {"accessModes": ["ReadWriteOncePod"]}}),
        ));
        c.volumes.upsert(pvc("shared", json!({})));
        c.add_bound_pod(pod_with_claims("owner", &["solo", "shared"]), "a");
        let a = c.nodes["a"].clone();
        let b = c.nodes["b"].clone();
        let cases = [
            ("no claims", vec![], true, true),
            ("a ReadWriteOnce claim in use", vec!["shared"], true, true),
            (
                "a ReadWriteOncePod claim in use",
                vec!["solo"],
                false,
                false,
            ),
        ];
        for (name, claims, on_a, on_b) in cases {
            let p = pod_with_claims("p", &claims);
            let (sa, sb) = (run(&c, &p, &a), run(&c, &p, &b));
            assert_eq!((sa.is_success(), sb.is_success()), (on_a, on_b), "{name}");
            if !on_b {
                assert_eq!(sb, Status::unschedulable(REASON_RWOP_CONFLICT), "{name}");
            }
        }
        // Preemption's view: evicting the user on a frees the claim there only.
        let p = pod_with_claims("p", &["solo"]);
        let mut state = CycleState::default();
        assert!(VolumeRestrictions
            .pre_filter(&mut state, &p, &c)
            .is_success());
        let mut trial = a.clone();
        trial.remove_pod("uid-owner");
        assert!(VolumeRestrictions.filter(&state, &p, &trial).is_success());
        assert!(!VolumeRestrictions.filter(&state, &p, &b).is_success());
        // The user itself is not in conflict with itself.
        assert!(run(&c, &pod_with_claims("owner", &["solo"]), &b).is_success());
        assert_eq!(
            run(&c, &pod_with_claims("p", &["ghost"]), &a).reasons,
            vec!["persistentvolumeclaim \"ghost\" not found".to_owned()]
        );
    }
}
