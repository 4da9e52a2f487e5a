//! VolumeBinding: a pod's PersistentVolumeClaims must exist, and the node
//! must reach their volumes: a bound claim's volume through its node
//! affinity; an unbound claim of a `WaitForFirstConsumer` class through
//! some Available volume that could be bound to it there. Unbound claims
//! with immediate binding wait for the PV controller.
//!
//! Only the filtering half is here. Kubernetes' plugin also reserves the
//! chosen volumes (Reserve) and binds them (PreBind: writes the claim's
//! `volumeName` / the `volume.kubernetes.io/selected-node` annotation and
//! waits); Rudder leaves binding to the PV controller, so a pod placed by
//! a WaitForFirstConsumer claim relies on that controller to bind it to a
//! volume the node can reach.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

use crate::cache::{ClusterCache, NodeInfo, PodInfo};
use crate::framework::{Code, CycleState, FilterPlugin, Plugin, PreFilterPlugin, Status};
use crate::plugins::selector_matches;
use crate::volume_cache::{
    bound_volume, claim_access_modes, claim_class, claim_request, pod_claims, volume_capacity,
    volume_class, volume_node_affinity_matches, waits_for_first_consumer, VolumeCache,
};

pub const NAME: &str = "VolumeBinding";
const STATE: &str = "VolumeBinding";

pub const REASON_NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const REASON_BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const REASON_UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
pub const REASON_PV_NOT_EXIST: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";

pub struct VolumeBinding;

impl Plugin for VolumeBinding {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// What PreFilter found for the pod.
struct PodVolumes {
    /// Volumes of the bound claims.
    bound: Vec<Arc<PersistentVolume>>,
    /// For each unbound WaitForFirstConsumer claim (smallest request
    /// first), the volumes that could take it, node affinity aside, best
    /// first (pre-bound to the claim, then smallest).
    to_bind: Vec<Vec<Arc<PersistentVolume>>>,
}

/// Whether an Available volume could be bound to the claim, its node
/// affinity aside.
fn volume_fits_claim(pv: &PersistentVolume, pvc: &PersistentVolumeClaim, class: &str) -> bool {
    let Some(spec) = &pv.spec else {
        return false;
    };
    if pv.metadata.deletion_timestamp.is_some()
        || pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Available")
    {
        return false;
    }
    if let Some(claim_ref) = &spec.claim_ref {
        let same = claim_ref.name.as_deref() == pvc.metadata.name.as_deref()
            && claim_ref.namespace.as_deref() == pvc.metadata.namespace.as_deref()
            && (claim_ref.uid.is_none() || claim_ref.uid == pvc.metadata.uid);
        if !same {
            return false;
        }
    }
    let claim_spec = pvc.spec.as_ref();
    let mode = |m: Option<&String>| m.map(String::as_str).unwrap_or("Filesystem").to_owned();
    if volume_class(pv) != class
        || mode(spec.volume_mode.as_ref()) != mode(claim_spec.and_then(|s| s.volume_mode.as_ref()))
        || volume_capacity(pv) < claim_request(pvc)
    {
        return false;
    }
    let modes = spec.access_modes.as_deref().unwrap_or_default();
    if !claim_access_modes(pvc).iter().all(|m| modes.contains(m)) {
        return false;
    }
    match claim_spec.and_then(|s| s.selector.as_ref()) {
        Some(selector) => selector_matches(
            Some(selector),
            &pv.metadata.labels.clone().unwrap_or_default(),
        ),
        None => true,
    }
}

fn pre_bound(pv: &PersistentVolume) -> bool {
    pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_some())
}

fn candidates(
    volumes: &VolumeCache,
    pvc: &PersistentVolumeClaim,
    class: &str,
) -> Vec<Arc<PersistentVolume>> {
    let mut found: Vec<Arc<PersistentVolume>> = volumes
        .pvs()
        .filter(|pv| volume_fits_claim(pv, pvc, class))
        .cloned()
        .collect();
    found.sort_by(|a, b| {
        (!pre_bound(a), volume_capacity(a), &a.metadata.name).cmp(&(
            !pre_bound(b),
            volume_capacity(b),
            &b.metadata.name,
        ))
    });
    found
}

impl PreFilterPlugin for VolumeBinding {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, cache: &ClusterCache) -> Status {
        let claims = pod_claims(&pod.pod);
        if claims.is_empty() {
            return Status::skip();
        }
        let volumes = &cache.volumes;
        let mut bound = Vec::new();
        let mut waiting: Vec<(i64, Vec<Arc<PersistentVolume>>)> = Vec::new();
        let mut unbound_immediate = false;
        for claim in claims {
            let Some(pvc) = volumes.pvc(&pod.namespace, &claim.name) else {
                return Status::unresolvable(if claim.ephemeral {
                    format!(
                        "waiting for ephemeral volume controller to create the persistentvolumeclaim \"{}\"",
                        claim.name
                    )
                } else {
                    format!("persistentvolumeclaim \"{}\" not found", claim.name)
                });
            };
            if pvc.metadata.deletion_timestamp.is_some() {
                return Status::unresolvable(format!(
                    "persistentvolumeclaim \"{}\" is being deleted",
                    claim.name
                ));
            }
            if claim.ephemeral
                && !pvc
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && o.uid == pod.uid)
            {
                return Status::unresolvable(format!(
                    "PVC {}/{} was not created for pod {} (pod is not owner)",
                    pod.namespace, claim.name, pod.key
                ));
            }
            if let Some(pv_name) = bound_volume(pvc) {
                match volumes.pv(pv_name) {
                    Some(pv) => bound.push(pv.clone()),
                    None => return Status::unresolvable(REASON_PV_NOT_EXIST),
                }
                continue;
            }
            let class = claim_class(pvc);
            if class.is_empty() {
                unbound_immediate = true;
                continue;
            }
            let Some(storage_class) = volumes.storage_class(class) else {
                return Status::unresolvable(format!(
                    "storageclass.storage.k8s.io \"{class}\" not found"
                ));
            };
            if waits_for_first_consumer(storage_class) {
                waiting.push((claim_request(pvc), candidates(volumes, pvc, class)));
            } else {
                unbound_immediate = true;
            }
        }
        if unbound_immediate {
            return Status::unresolvable(REASON_UNBOUND_IMMEDIATE);
        }
        waiting.sort_by_key(|(request, _)| *request);
        state.write(
            STATE,
            PodVolumes {
                bound,
                to_bind: waiting.into_iter().map(|(_, c)| c).collect(),
            },
        );
        Status::success()
    }
}

impl FilterPlugin for VolumeBinding {
    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(volumes) = state.read::<PodVolumes>(STATE) else {
            return Status::success();
        };
        let mut reasons = Vec::new();
        if !volumes
            .bound
            .iter()
            .all(|pv| volume_node_affinity_matches(pv, node))
        {
            reasons.push(REASON_NODE_CONFLICT.to_owned());
        }
        // Each claim needs its own volume: take the best one left.
        let mut chosen: HashSet<&str> = HashSet::new();
        for candidates in &volumes.to_bind {
            let pick = candidates.iter().find(|pv| {
                let name = pv.metadata.name.as_deref().unwrap_or_default();
                !chosen.contains(name) && volume_node_affinity_matches(pv, node)
            });
            match pick {
                Some(pv) => {
                    chosen.insert(pv.metadata.name.as_deref().unwrap_or_default());
                }
                None => {
                    reasons.push(REASON_BIND_CONFLICT.to_owned());
                    break;
                }
            }
        }
        if reasons.is_empty() {
            Status::success()
        } else {
            Status {
                code: Code::UnschedulableAndUnresolvable,
                reasons,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{
        bound_pvc, cache, node, node_info, pod, pod_with_claims, pv, pv_on, pvc, storage_class,
    };
    use serde_json::json;

    fn run(c: &ClusterCache, p: &PodInfo, n: &NodeInfo) -> Status {
        let mut state = CycleState::default();
        let pre = VolumeBinding.pre_filter(&mut state, p, c);
        if pre.code != Code::Success {
            return pre;
        }
        VolumeBinding.filter(&state, p, n)
    }

    #[test]
    fn claims_volumes_and_classes_decide() {
        let mut c = cache(vec![node("a", "1", "1Gi", json!({}))]);
        let v = &mut c.volumes;
        v.upsert(storage_class("local", "WaitForFirstConsumer"));
        v.upsert(storage_class("fast", "Immediate"));
        v.upsert(bound_pvc("on-a", "pv-a"));
        v.upsert(pv_on(
            "pv-a",
            "kubernetes.io/hostname",
            "a",
            json!({"status": {"phase": "Bound"}}),
        ));
        v.upsert(bound_pvc("on-b", "pv-b"));
        v.upsert(pv_on(
            "pv-b",
            "kubernetes.io/hostname",
            "b",
            json!({"status": {"phase": "Bound"}}),
        ));
        v.upsert(bound_pvc("anywhere", "pv-any"));
        v.upsert(pv("pv-any", json!({"status": {"phase": "Bound"}})));
        v.upsert(bound_pvc("dangling", "pv-gone"));
        v.upsert(pvc(
            "going",
            json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}),
        ));
        v.upsert(pvc(
            "immediate",
            json!({"spec": {"storageClassName": "fast"}}),
        ));
        v.upsert(pvc("classless", json!({})));
        v.upsert(pvc(
            "unknown-class",
            json!({"spec": {"storageClassName": "nope"}}),
        ));
        v.upsert(pvc("wait", json!({"spec": {"storageClassName": "local"}})));
        v.upsert(pvc("wait-big", json!({"spec": {"storageClassName": "local", "resources": {"requests": {"storage": "10Gi"}}}})));
        v.upsert(pvc(
            "wait-rwx",
            json!({"spec": {"storageClassName": "local", "accessModes": ["ReadWriteMany"]}}),
        ));
        v.upsert(pvc(
            "wait-2",
            json!({"spec": {"storageClassName": "local"}}),
        ));
        // Local volumes of class `local`: one on a (2Gi), one on b.
        v.upsert(pv_on(
            "local-a",
            "kubernetes.io/hostname",
            "a",
            json!({"spec": {"storageClassName": "local", "capacity": {"storage": "2Gi"}}}),
        ));
        v.upsert(pv_on(
            "local-b",
            "kubernetes.io/hostname",
            "b",
            json!({"spec": {"storageClassName": "local"}}),
        ));
        // On a, but not Available, or of another class, or taken by another claim.
        v.upsert(pv_on(
            "released-a",
            "kubernetes.io/hostname",
            "a",
            json!({"spec": {"storageClassName": "local"}, "status": {"phase": "Released"}}),
        ));
        v.upsert(pv_on(
            "other-class-a",
            "kubernetes.io/hostname",
            "a",
            json!({"spec": {"storageClassName": "slow"}}),
        ));
        v.upsert(pv_on("promised-a", "kubernetes.io/hostname", "a", json!({"spec": {"storageClassName": "local", "claimRef": {"namespace": "default", "name": "someone"}}})));
        let a = node_info("a", "1", "1Gi", json!({}));

        let cases: Vec<(&str, Vec<&str>, Code, &str)> = vec![
            ("no claims", vec![], Code::Skip, ""),
            (
                "missing claim",
                vec!["ghost"],
                Code::UnschedulableAndUnresolvable,
                "persistentvolumeclaim \"ghost\" not found",
            ),
            (
                "claim being deleted",
                vec!["going"],
                Code::UnschedulableAndUnresolvable,
                "persistentvolumeclaim \"going\" is being deleted",
            ),
            ("bound here", vec!["on-a"], Code::Success, ""),
            (
                "bound without affinity",
                vec!["anywhere"],
                Code::Success,
                "",
            ),
            (
                "bound elsewhere",
                vec!["on-b"],
                Code::UnschedulableAndUnresolvable,
                REASON_NODE_CONFLICT,
            ),
            (
                "bound to a missing volume",
                vec!["dangling"],
                Code::UnschedulableAndUnresolvable,
                REASON_PV_NOT_EXIST,
            ),
            (
                "unbound immediate",
                vec!["immediate"],
                Code::UnschedulableAndUnresolvable,
                REASON_UNBOUND_IMMEDIATE,
            ),
            (
                "unbound without class",
                vec!["classless"],
                Code::UnschedulableAndUnresolvable,
                REASON_UNBOUND_IMMEDIATE,
            ),
            (
                "unknown class",
                vec!["unknown-class"],
                Code::UnschedulableAndUnresolvable,
                "storageclass.storage.k8s.io \"nope\" not found",
            ),
            (
                "first consumer, volume here",
                vec!["wait"],
                Code::Success,
                "",
            ),
            (
                "first consumer, too small",
                vec!["wait-big"],
                Code::UnschedulableAndUnresolvable,
                REASON_BIND_CONFLICT,
            ),
            (
                "first consumer, wrong access mode",
                vec!["wait-rwx"],
                Code::UnschedulableAndUnresolvable,
                REASON_BIND_CONFLICT,
            ),
            (
                "two claims, one volume here",
                vec!["wait", "wait-2"],
                Code::UnschedulableAndUnresolvable,
                REASON_BIND_CONFLICT,
            ),
            ("bound and waiting", vec!["on-a", "wait"], Code::Success, ""),
        ];
        for (name, claims, code, reason) in cases {
            let p = pod_with_claims("p", &claims);
            let status = run(&c, &p, &a);
            assert_eq!(status.code, code, "{name}: {status:?}");
            if !reason.is_empty() {
                assert_eq!(status.reasons, vec![reason.to_owned()], "{name}");
            }
        }
    }

    #[test]
    fn a_volume_promised_to_the_claim_is_used() {
        let mut c = cache(vec![]);
        c.volumes
            .upsert(storage_class("local", "WaitForFirstConsumer"));
        c.volumes
            .upsert(pvc("wait", json!({"spec": {"storageClassName": "local"}})));
        c.volumes.upsert(pv_on("promised-a", "kubernetes.io/hostname", "a", json!({"spec": {"storageClassName": "local", "claimRef": {"namespace": "default", "name": "wait"}}})));
        let p = pod_with_claims("p", &["wait"]);
        assert!(run(&c, &p, &node_info("a", "1", "1Gi", json!({}))).is_success());
        assert_eq!(
            run(&c, &p, &node_info("b", "1", "1Gi", json!({}))).reasons,
            vec![REASON_BIND_CONFLICT.to_owned()]
        );
    }

    #[test]
    fn ephemeral_claims_wait_for_their_controller() {
        let mut c = cache(vec![]);
        let p = pod(
            "web",
            json!({"volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]}),
        );
        let a = node_info("a", "1", "1Gi", json!({}));
        assert_eq!(
            run(&c, &p, &a).reasons,
            vec!["waiting for ephemeral volume controller to create the persistentvolumeclaim \"web-scratch\"".to_owned()]
        );
        c.volumes.upsert(bound_pvc("web-scratch", "v"));
        c.volumes.upsert(pv("v", json!({})));
        assert_eq!(
            run(&c, &p, &a).code,
            Code::UnschedulableAndUnresolvable,
            "not the pod's"
        );
        c.volumes.upsert(pvc(
            "web-scratch",
            json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "uid-web", "controller": true}]}, "spec": {"volumeName": "v"}}),
        ));
        assert!(run(&c, &p, &a).is_success());
    }
}
