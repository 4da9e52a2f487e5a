//! VolumeBinding: a pod's PersistentVolumeClaims must exist, and the node
//! must reach their volumes: a bound claim's volume through its node
//! affinity; an unbound claim of a `WaitForFirstConsumer` class through
//! some Available volume that could be bound to it there, or else through
//! its class's provisioner (if it has one and the class's
//! `allowedTopologies` admit the node). Unbound claims with immediate
//! binding wait for the PV controller.
//!
//! Reserve and PreBind work as Kubernetes' volume binder does: at
//! Reserve the chosen volume gets the claim in its `claimRef` and a claim
//! to provision gets the `volume.kubernetes.io/selected-node` annotation,
//! both assumed in the volume cache at once (Unreserve drops them); at
//! PreBind they are written, and the pod is bound only when the PV
//! controller has bound every claim.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::api::{Api, PostParams};

use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, TopologySelectorTerm,
};

use crate::cache::{ClusterCache, NodeInfo, PodInfo};
use crate::framework::{
    Code, CycleState, FilterPlugin, Handle, Plugin, PreBindPlugin, PreFilterPlugin, ReservePlugin,
    Status,
};
use crate::plugins::selector_matches;
use crate::volume_cache::{
    bound_volume, claim_access_modes, claim_class, claim_request, pod_claims, volume_capacity,
    volume_class, volume_node_affinity_matches, waits_for_first_consumer, VolumeCache,
};

pub const NAME: &str = "VolumeBinding";
const STATE: &str = "VolumeBinding";
/// Where Reserve leaves the [`AssumedVolumes`] for PreBind and Unreserve.
const ASSUMED_STATE: &str = "VolumeBinding/assumed";
/// How often PreBind looks at the claims when no change wakes it.
const VOLUME_BIND_POLL: Duration = Duration::from_secs(1);

pub const REASON_NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const REASON_BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const REASON_UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
pub const REASON_PV_NOT_EXIST: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";

/// The node the scheduler chose for a claim to be provisioned.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The claim's binding is complete (set by the PV controller).
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// A binding made by a controller (the scheduler counts as one).
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The provisioner of classes that provision nothing.
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

pub struct VolumeBinding;

impl Plugin for VolumeBinding {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// An unbound claim of a `WaitForFirstConsumer` class.
struct ClaimToBind {
    pvc: Arc<PersistentVolumeClaim>,
    /// Volumes that could take it, node affinity aside, best first
    /// (pre-bound to the claim, then smallest).
    candidates: Vec<Arc<PersistentVolume>>,
    /// If the class can provision: where (empty terms: anywhere).
    provisioning: Option<Vec<TopologySelectorTerm>>,
}

/// What PreFilter found for the pod.
struct PodVolumes {
    /// Volumes of the bound claims.
    bound: Vec<Arc<PersistentVolume>>,
    /// The claims to bind, smallest request first.
    to_bind: Vec<ClaimToBind>,
}

/// How a pod's unbound claims get volumes on a node.
#[derive(Clone, Debug, Default)]
pub struct VolumePlan {
    /// Existing volumes to bind to claims.
    pub static_bindings: Vec<(Arc<PersistentVolume>, Arc<PersistentVolumeClaim>)>,
    /// Claims to provision on the node.
    pub provisions: Vec<Arc<PersistentVolumeClaim>>,
}

impl VolumePlan {
    pub fn is_empty(&self) -> bool {
        self.static_bindings.is_empty() && self.provisions.is_empty()
    }
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

/// Whether the node's labels satisfy a class's `allowedTopologies`
/// (none: every node).
fn topology_allows(terms: &[TopologySelectorTerm], node: &NodeInfo) -> bool {
    terms.is_empty()
        || terms.iter().any(|term| {
            term.match_label_expressions.iter().flatten().all(|e| {
                node.labels
                    .get(&e.key)
                    .is_some_and(|v| e.values.contains(v))
            })
        })
}

fn selected_node(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_SELECTED_NODE))
        .map(String::as_str)
}

/// How the pod's unbound claims would get volumes on the node, or why
/// they cannot (the reasons users read).
fn plan(volumes: &PodVolumes, node: &NodeInfo) -> Result<VolumePlan, Vec<String>> {
    let mut reasons = Vec::new();
    if !volumes
        .bound
        .iter()
        .all(|pv| volume_node_affinity_matches(pv, node))
    {
        reasons.push(REASON_NODE_CONFLICT.to_owned());
    }
    let mut plan = VolumePlan::default();
    let mut chosen: HashSet<&str> = HashSet::new();
    let mut satisfied = true;
    for claim in &volumes.to_bind {
        // A claim already sent to a node is provisioned there or nowhere.
        if let Some(selected) = selected_node(&claim.pvc) {
            if selected != node.name {
                satisfied = false;
                break;
            }
            plan.provisions.push(claim.pvc.clone());
            continue;
        }
        // Each claim needs its own volume: take the best one left.
        let pick = claim.candidates.iter().find(|pv| {
            let name = pv.metadata.name.as_deref().unwrap_or_default();
            !chosen.contains(name) && volume_node_affinity_matches(pv, node)
        });
        if let Some(pv) = pick {
            chosen.insert(pv.metadata.name.as_deref().unwrap_or_default());
            plan.static_bindings.push((pv.clone(), claim.pvc.clone()));
            continue;
        }
        match &claim.provisioning {
            Some(terms) if topology_allows(terms, node) => plan.provisions.push(claim.pvc.clone()),
            _ => {
                satisfied = false;
                break;
            }
        }
    }
    if !satisfied {
        reasons.push(REASON_BIND_CONFLICT.to_owned());
    }
    if reasons.is_empty() {
        Ok(plan)
    } else {
        Err(reasons)
    }
}

impl PreFilterPlugin for VolumeBinding {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, cache: &ClusterCache) -> Status {
        let claims = pod_claims(&pod.pod);
        if claims.is_empty() {
            return Status::skip();
        }
        let volumes = &cache.volumes;
        let mut bound = Vec::new();
        let mut waiting: Vec<(i64, ClaimToBind)> = Vec::new();
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
                let provisioner = storage_class.provisioner.as_str();
                let provisioning = (!provisioner.is_empty() && provisioner != NO_PROVISIONER)
                    .then(|| storage_class.allowed_topologies.clone().unwrap_or_default());
                waiting.push((
                    claim_request(pvc),
                    ClaimToBind {
                        pvc: pvc.clone(),
                        candidates: candidates(volumes, pvc, class),
                        provisioning,
                    },
                ));
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
        match plan(volumes, node) {
            Ok(_) => Status::success(),
            Err(reasons) => Status {
                code: Code::UnschedulableAndUnresolvable,
                reasons,
            },
        }
    }
}

/// The volume writes for binding `pod` to `node` (the plan Filter
/// accepted, computed again on the chosen node).
pub fn find_pod_volumes(
    cache: &ClusterCache,
    pod: &PodInfo,
    node: &NodeInfo,
) -> Result<VolumePlan, Status> {
    let mut state = CycleState::default();
    let status = VolumeBinding.pre_filter(&mut state, pod, cache);
    match status.code {
        Code::Skip => return Ok(VolumePlan::default()),
        Code::Success => {}
        _ => return Err(status),
    }
    let Some(volumes) = state.read::<PodVolumes>(STATE) else {
        return Ok(VolumePlan::default());
    };
    plan(volumes, node).map_err(|reasons| Status {
        code: Code::UnschedulableAndUnresolvable,
        reasons,
    })
}

/// What the scheduler writes for a pod's volumes, and what it then waits
/// for.
#[derive(Clone, Debug, Default)]
pub struct AssumedVolumes {
    /// Volumes with the claim in their `claimRef`, to update.
    pub volumes: Vec<PersistentVolume>,
    /// Claims with the selected node, to update.
    pub claims: Vec<PersistentVolumeClaim>,
    /// (volume, `namespace/claim`) pairs bound statically.
    pub static_bindings: Vec<(String, String)>,
    /// `namespace/claim` of the claims provisioned.
    pub provisions: Vec<String>,
}

impl AssumedVolumes {
    pub fn is_empty(&self) -> bool {
        self.static_bindings.is_empty() && self.provisions.is_empty()
    }
}

fn claim_key(pvc: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        pvc.metadata.namespace.as_deref().unwrap_or_default(),
        pvc.metadata.name.as_deref().unwrap_or_default()
    )
}

fn reference_to(pvc: &PersistentVolumeClaim) -> ObjectReference {
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

/// Kubernetes' `AssumePodVolumes`: makes the plan's changes in the volume
/// cache (so the next pods see the volumes taken) and returns the objects
/// to write.
pub fn assume_pod_volumes(
    volumes: &mut VolumeCache,
    plan: &VolumePlan,
    node: &str,
) -> AssumedVolumes {
    let mut assumed = AssumedVolumes::default();
    for (pv, pvc) in &plan.static_bindings {
        let name = pv.metadata.name.clone().unwrap_or_default();
        assumed.static_bindings.push((name, claim_key(pvc)));
        let reference = reference_to(pvc);
        let current = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let bound_to_claim = current.is_some_and(|r| {
            r.name == reference.name
                && r.namespace == reference.namespace
                && r.uid
                    .as_deref()
                    .is_none_or(|u| u.is_empty() || Some(u) == reference.uid.as_deref())
        });
        if current.is_some_and(|r| {
            r.name == reference.name && r.namespace == reference.namespace && r.uid == reference.uid
        }) {
            continue;
        }
        let mut updated = (**pv).clone();
        updated.spec.get_or_insert_with(Default::default).claim_ref = Some(reference);
        if !bound_to_claim {
            updated
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .entry(ANN_BOUND_BY_CONTROLLER.to_owned())
                .or_insert_with(|| "yes".to_owned());
        }
        volumes.assume(updated.clone());
        assumed.volumes.push(updated);
    }
    for pvc in &plan.provisions {
        assumed.provisions.push(claim_key(pvc));
        if selected_node(pvc) == Some(node) {
            continue;
        }
        let mut updated = (**pvc).clone();
        updated
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANN_SELECTED_NODE.to_owned(), node.to_owned());
        volumes.assume(updated.clone());
        assumed.claims.push(updated);
    }
    assumed
}

/// Undoes [`assume_pod_volumes`] (a write failed, or binding gave up).
pub fn revert_assumed_volumes(volumes: &mut VolumeCache, assumed: &AssumedVolumes) {
    for pv in &assumed.volumes {
        volumes.restore::<PersistentVolume>(pv.metadata.name.as_deref().unwrap_or_default());
    }
    for pvc in &assumed.claims {
        volumes.restore::<PersistentVolumeClaim>(&claim_key(pvc));
    }
}

fn fully_bound(pvc: &PersistentVolumeClaim) -> bool {
    bound_volume(pvc).is_some()
        && pvc
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANN_BIND_COMPLETED))
}

/// Kubernetes' `checkBindings`: `Ok(true)` once the PV controller has
/// bound every claim, `Ok(false)` while it has not, an error when the
/// binding can no longer happen (the pod must be scheduled again).
pub fn check_bindings(
    volumes: &VolumeCache,
    assumed: &AssumedVolumes,
    node: &NodeInfo,
) -> Result<bool, String> {
    let claim = |key: &str| {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        volumes
            .pvc(ns, name)
            .ok_or_else(|| format!("failed to get pvc {key:?} from cache"))
    };
    let mut done = true;
    for (pv_name, key) in &assumed.static_bindings {
        let pv = volumes
            .pv(pv_name)
            .ok_or_else(|| format!("failed to get pv {pv_name:?} from cache"))?;
        let pvc = claim(key)?;
        let reference = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        match reference
            .and_then(|r| r.uid.as_deref())
            .filter(|u| !u.is_empty())
        {
            None => return Err(format!("ClaimRef got reset for pv {pv_name:?}")),
            Some(uid) if Some(uid) != pvc.metadata.uid.as_deref() => {
                return Err(format!("pv {pv_name:?} is bound to another claim"))
            }
            Some(_) => {}
        }
        done &= fully_bound(pvc);
    }
    for key in &assumed.provisions {
        let pvc = claim(key)?;
        if selected_node(pvc).is_none() {
            return Err(format!("selectedNode annotation reset for PVC {key:?}"));
        }
        let Some(pv_name) = bound_volume(pvc) else {
            done = false;
            continue;
        };
        let Some(pv) = volumes.pv(pv_name) else {
            done = false;
            continue;
        };
        if !volume_node_affinity_matches(pv, node) {
            return Err(format!(
                "pv {pv_name:?} node affinity doesn't match node {:?}",
                node.name
            ));
        }
        done &= fully_bound(pvc);
    }
    Ok(done)
}

impl ReservePlugin for VolumeBinding {
    /// Kubernetes' `AssumePodVolumes` on the plan Filter accepted,
    /// computed again on the chosen node (the cache may have changed
    /// since).
    fn reserve(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        node: &str,
        cache: &mut ClusterCache,
    ) -> Status {
        let planned = match cache.nodes.get(node) {
            Some(info) => find_pod_volumes(cache, pod, info),
            None => Err(Status::error(format!("node {node:?} not found"))),
        };
        match planned {
            Ok(plan) => {
                let assumed = assume_pod_volumes(&mut cache.volumes, &plan, node);
                state.write(ASSUMED_STATE, assumed);
                Status::success()
            }
            Err(status) => status,
        }
    }

    fn unreserve(&self, state: &CycleState, _pod: &PodInfo, _node: &str, cache: &mut ClusterCache) {
        if let Some(assumed) = state.read::<AssumedVolumes>(ASSUMED_STATE) {
            revert_assumed_volumes(&mut cache.volumes, assumed);
        }
    }
}

impl PreBindPlugin for VolumeBinding {
    fn pre_bind<'a>(
        &'a self,
        handle: &'a dyn Handle,
        state: &'a CycleState,
        pod: &'a PodInfo,
        node: &'a str,
    ) -> BoxFuture<'a, Status> {
        Box::pin(async move {
            let Some(assumed) = state
                .read::<AssumedVolumes>(ASSUMED_STATE)
                .filter(|a| !a.is_empty())
            else {
                return Status::success();
            };
            match bind_pod_volumes(handle, pod, node, assumed).await {
                Ok(()) => Status::success(),
                Err(err) => Status::error(format!("binding volumes: {err}")),
            }
        })
    }
}

/// Kubernetes' `BindPodVolumes`: writes the volumes' `claimRef`s and the
/// claims' selected node, then waits, in the binding task, until the PV
/// controller has bound every claim.
async fn bind_pod_volumes(
    handle: &dyn Handle,
    pod: &PodInfo,
    node: &str,
    volumes: &AssumedVolumes,
) -> Result<(), String> {
    let pvs: Api<PersistentVolume> = Api::all(handle.client().clone());
    for pv in &volumes.volumes {
        let name = pv.metadata.name.clone().unwrap_or_default();
        pvs.replace(&name, &PostParams::default(), pv)
            .await
            .map_err(|e| format!("failed to update PersistentVolume {name:?}: {e}"))?;
    }
    for pvc in &volumes.claims {
        let name = pvc.metadata.name.clone().unwrap_or_default();
        let namespace = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(handle.client().clone(), namespace);
        api.replace(&name, &PostParams::default(), pvc)
            .await
            .map_err(|e| {
                format!("failed to update PersistentVolumeClaim {namespace}/{name}: {e}")
            })?;
    }
    let deadline = tokio::time::Instant::now() + handle.volume_bind_timeout();
    loop {
        let changed = handle.volume_changes().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let cache = handle.cache();
            if !cache.is_assumed_or_bound(&pod.uid) {
                return Err("the pod is no longer waiting to be bound".into());
            }
            let Some(info) = cache.nodes.get(node) else {
                return Err(format!("node {node:?} not found"));
            };
            if check_bindings(&cache.volumes, volumes, info)? {
                return Ok(());
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err("context deadline exceeded".into());
        }
        let _ = tokio::time::timeout((deadline - now).min(VOLUME_BIND_POLL), changed).await;
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

    fn provisioning_class(
        topology: serde_json::Value,
    ) -> k8s_openapi::api::storage::v1::StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": "dynamic"}, "provisioner": "example.com/p",
            "volumeBindingMode": "WaitForFirstConsumer", "allowedTopologies": topology
        }))
        .unwrap()
    }

    #[test]
    fn claims_to_provision_follow_the_class_topology_and_selected_node() {
        let mut c = cache(vec![]);
        c.volumes.upsert(provisioning_class(
            json!([{"matchLabelExpressions": [{"key": "zone", "values": ["west"]}]}]),
        ));
        c.volumes
            .upsert(storage_class("static", "WaitForFirstConsumer"));
        c.volumes
            .upsert(pvc("new", json!({"spec": {"storageClassName": "dynamic"}})));
        c.volumes.upsert(pvc(
            "placed",
            json!({"metadata": {"annotations": {ANN_SELECTED_NODE: "a"}}, "spec": {"storageClassName": "dynamic"}}),
        ));
        c.volumes.upsert(pvc(
            "static",
            json!({"spec": {"storageClassName": "static"}}),
        ));
        let west = node_info(
            "a",
            "1",
            "1Gi",
            json!({"metadata": {"labels": {"zone": "west"}}}),
        );
        let east = node_info(
            "b",
            "1",
            "1Gi",
            json!({"metadata": {"labels": {"zone": "east"}}}),
        );
        let new = pod_with_claims("p", &["new"]);
        assert!(run(&c, &new, &west).is_success());
        assert_eq!(
            run(&c, &new, &east).reasons,
            vec![REASON_BIND_CONFLICT.to_owned()]
        );
        // Sent to a: provisioned there or nowhere.
        let placed = pod_with_claims("q", &["placed"]);
        let plan = find_pod_volumes(&c, &placed, &west).unwrap();
        assert_eq!(plan.provisions.len(), 1);
        assert!(find_pod_volumes(&c, &placed, &east).is_err());
        // No provisioner and no volume: nowhere.
        assert_eq!(
            run(&c, &pod_with_claims("r", &["static"]), &west).reasons,
            vec![REASON_BIND_CONFLICT.to_owned()]
        );
    }

    #[test]
    fn assumed_volumes_are_taken_until_bound() {
        let mut c = cache(vec![]);
        c.volumes
            .upsert(storage_class("local", "WaitForFirstConsumer"));
        c.volumes.upsert(provisioning_class(json!(null)));
        c.volumes
            .upsert(pvc("one", json!({"spec": {"storageClassName": "local"}})));
        c.volumes
            .upsert(pvc("two", json!({"spec": {"storageClassName": "local"}})));
        c.volumes.upsert(pvc(
            "grow",
            json!({"spec": {"storageClassName": "dynamic"}}),
        ));
        c.volumes.upsert(pv_on(
            "disk-a",
            "kubernetes.io/hostname",
            "a",
            json!({"spec": {"storageClassName": "local"}}),
        ));
        let a = node_info("a", "1", "1Gi", json!({}));
        let first = pod_with_claims("p", &["one", "grow"]);
        let plan = find_pod_volumes(&c, &first, &a).unwrap();
        assert_eq!(plan.static_bindings.len(), 1);
        assert_eq!(plan.provisions.len(), 1);
        let assumed = assume_pod_volumes(&mut c.volumes, &plan, "a");
        assert_eq!(assumed.volumes.len(), 1);
        assert_eq!(assumed.claims.len(), 1);
        let claimed = c.volumes.pv("disk-a").unwrap();
        let reference = claimed.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
        assert_eq!(reference.uid.as_deref(), Some("uid-one"));
        assert_eq!(
            c.volumes
                .pvc("default", "grow")
                .unwrap()
                .metadata
                .annotations
                .as_ref()
                .unwrap()[ANN_SELECTED_NODE],
            "a"
        );
        // The next pod does not get the taken volume.
        assert_eq!(
            run(&c, &pod_with_claims("q", &["two"]), &a).reasons,
            vec![REASON_BIND_CONFLICT.to_owned()]
        );
        assert_eq!(check_bindings(&c.volumes, &assumed, &a), Ok(false));
        // The PV controller binds both claims.
        c.volumes.upsert(pvc(
            "one",
            json!({"metadata": {"annotations": {ANN_BIND_COMPLETED: "yes"}}, "spec": {"storageClassName": "local", "volumeName": "disk-a"}}),
        ));
        c.volumes.upsert(pvc(
            "grow",
            json!({"metadata": {"annotations": {ANN_BIND_COMPLETED: "yes", ANN_SELECTED_NODE: "a"}, "resourceVersion": "2"}, "spec": {"storageClassName": "dynamic", "volumeName": "pvc-grow"}}),
        ));
        assert_eq!(
            check_bindings(&c.volumes, &assumed, &a),
            Ok(false),
            "no volume yet"
        );
        c.volumes
            .upsert(pv_on("pvc-grow", "kubernetes.io/hostname", "a", json!({})));
        assert_eq!(check_bindings(&c.volumes, &assumed, &a), Ok(true));
        // A claim whose node was taken away must be scheduled again.
        c.volumes.upsert(pvc(
            "grow",
            json!({"metadata": {"resourceVersion": "3"}, "spec": {"storageClassName": "dynamic"}}),
        ));
        assert!(check_bindings(&c.volumes, &assumed, &a).is_err());
        revert_assumed_volumes(&mut c.volumes, &assumed);
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
