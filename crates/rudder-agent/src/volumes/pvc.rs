//! `persistentVolumeClaim` and generic `ephemeral` volumes: the claim is read
//! through the API, must be bound, and its PersistentVolume must point back
//! at it; hostPath PVs (what the local-path provisioner makes) are the host's
//! directory after the type check, local PVs the node's path. Errors are
//! worded as the kubelet's desired-state populator words them.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::Api;

use super::host_path;

fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// What a claim resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedClaim {
    pub pv_name: String,
    pub host_path: PathBuf,
}

/// Why a claim cannot be used: the message, and whether the volume kind is
/// simply one this node cannot mount.
#[derive(Debug)]
pub enum ClaimError {
    Failed(String),
    Unsupported(String),
}

/// Resolves `claim_name` for `pod`. `ephemeral` claims must be owned by the
/// pod.
pub async fn resolve(
    client: &kube::Client,
    pod: &Pod,
    claim_name: &str,
    ephemeral: bool,
) -> Result<ResolvedClaim, ClaimError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
    let prefix = format!("error processing PVC {namespace}/{claim_name}");
    let fail = |reason: String| ClaimError::Failed(format!("{prefix}: {reason}"));
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim = claims.get(claim_name).await.map_err(|err| {
        fail(format!(
            "failed to fetch PVC from API server: {}",
            api_message(&err)
        ))
    })?;
    if ephemeral {
        let pod_uid = pod.metadata.uid.as_deref().unwrap_or("");
        let owned = claim
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.kind == "Pod" && o.uid == pod_uid);
        if !owned {
            return Err(ClaimError::Failed(format!(
                "PVC {namespace}/{claim_name} was not created for pod {namespace}/{} (pod is not owner)",
                pod.metadata.name.as_deref().unwrap_or("")
            )));
        }
    }
    if claim.metadata.deletion_timestamp.is_some() {
        return Err(fail(format!(
            "can't start pod because PVC {namespace}/{claim_name} is being deleted"
        )));
    }
    let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Bound") {
        return Err(fail("PVC is not bound".into()));
    }
    let pv_name = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    if pv_name.is_empty() {
        return Err(fail("PVC has empty pvc.Spec.VolumeName".into()));
    }
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pv = volumes.get(&pv_name).await.map_err(|err| {
        fail(format!(
            "failed to fetch PV {pv_name} from API server: {}",
            api_message(&err)
        ))
    })?;
    let spec = pv.spec.unwrap_or_default();
    let claim_uid = claim.metadata.uid.as_deref().unwrap_or("");
    match &spec.claim_ref {
        None => {
            return Err(fail(format!(
                "found PV object {pv_name} but it has a nil pv.Spec.ClaimRef indicating it is not yet bound to the claim"
            )))
        }
        Some(claim_ref) if claim_ref.uid.as_deref().unwrap_or("") != claim_uid => {
            return Err(fail(format!(
                "found PV object {pv_name} but its pv.Spec.ClaimRef.UID ({}) does not point to claim.UID ({claim_uid})",
                claim_ref.uid.as_deref().unwrap_or("")
            )))
        }
        Some(_) => {}
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        return Err(ClaimError::Unsupported(format!(
            "PV {pv_name} has volumeMode Block; block volumes are not supported"
        )));
    }
    if let Some(host) = &spec.host_path {
        host_path::check(&host.path, host.type_.as_deref()).map_err(ClaimError::Failed)?;
        return Ok(ResolvedClaim {
            pv_name,
            host_path: PathBuf::from(&host.path),
        });
    }
    if let Some(local) = &spec.local {
        if std::fs::metadata(&local.path).is_err() {
            return Err(ClaimError::Failed(format!(
                "local volume {pv_name}: path {:?} does not exist",
                local.path
            )));
        }
        return Ok(ResolvedClaim {
            pv_name,
            host_path: PathBuf::from(&local.path),
        });
    }
    let kind = serde_json::to_value(&spec)
        .ok()
        .and_then(|v| {
            v.as_object().and_then(|o| {
                o.keys()
                    .find(|k| {
                        !matches!(
                            k.as_str(),
                            "accessModes"
                                | "capacity"
                                | "claimRef"
                                | "mountOptions"
                                | "nodeAffinity"
                                | "persistentVolumeReclaimPolicy"
                                | "storageClassName"
                                | "volumeMode"
                                | "volumeAttributesClassName"
                        )
                    })
                    .cloned()
            })
        })
        .unwrap_or_else(|| "unknown".into());
    Err(ClaimError::Unsupported(format!(
        "PV {pv_name} is a {kind} volume; only hostPath and local PVs are supported"
    )))
}
