//! `projected` volumes: secrets, configMaps, downward API items and service
//! account tokens merged into one directory (written into a tmpfs, as the
//! kubelet does, since they may hold secrets). Every source is tried and the
//! failures reported together.

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ProjectedVolumeSource, ServiceAccount};
use kube::api::{Api, PostParams};

use super::atomic_writer::{FileProjection, Payload};
use super::{configmap, downward_api, secret, LazyAllocatable, VolumeManager};

/// The payload of a projected volume.
pub(super) async fn payload(
    manager: &VolumeManager,
    pod: &Pod,
    source: &ProjectedVolumeSource,
    allocatable: &mut LazyAllocatable<'_>,
) -> Result<Payload, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
    let default_mode = source.default_mode.map_or(0o644, |m| m as u32);
    let fs_group = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|c| c.fs_group);
    let mut payload = Payload::new();
    let mut errors: Vec<String> = Vec::new();
    for projection in source.sources.iter().flatten() {
        let part = if let Some(src) = &projection.secret {
            let optional = src.optional.unwrap_or(false);
            match manager.get_secret(namespace, &src.name, optional).await {
                Ok(found) => {
                    let object = found.unwrap_or_default();
                    secret::payload(src.items.as_deref(), &object, default_mode, optional)
                }
                Err(err) => Err(err),
            }
        } else if let Some(src) = &projection.config_map {
            let optional = src.optional.unwrap_or(false);
            match manager.get_config_map(namespace, &src.name, optional).await {
                Ok(found) => {
                    let object = found.unwrap_or_default();
                    configmap::payload(src.items.as_deref(), &object, default_mode, optional)
                }
                Err(err) => Err(err),
            }
        } else if let Some(src) = &projection.downward_api {
            let items = src.items.as_deref().unwrap_or(&[]);
            let node = if downward_api::needs_allocatable(items) {
                allocatable.get().await
            } else {
                Ok(Default::default())
            };
            node.and_then(|node| downward_api::payload(items, pod, default_mode, &node))
        } else if let Some(src) = &projection.service_account_token {
            // The token file is private to the pod's user when fsGroup is set.
            let mode = if fs_group.is_some() {
                0o600
            } else {
                default_mode
            };
            manager
                .service_account_token(pod, src.audience.as_deref(), src.expiration_seconds)
                .await
                .map(|token| {
                    Payload::from([(
                        src.path.clone(),
                        FileProjection {
                            data: token.into_bytes(),
                            mode,
                        },
                    )])
                })
        } else if projection.cluster_trust_bundle.is_some() {
            Err("clusterTrustBundle projections are not supported".to_string())
        } else {
            Ok(Payload::new())
        };
        match part {
            Ok(part) => payload.extend(part),
            Err(err) => errors.push(err),
        }
    }
    match errors.len() {
        0 => Ok(payload),
        1 => Err(errors.remove(0)),
        _ => Err(format!("[{}]", errors.join(", "))),
    }
}

/// Asks the API for a token of the pod's service account bound to the pod
/// (`TokenRequest`).
pub(super) async fn request_token(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration_seconds: i64,
) -> Result<(String, i64), String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audience.filter(|a| !a.is_empty()).map(|a| vec![a]).unwrap_or_default(),
            "expirationSeconds": expiration_seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.metadata.name,
                "uid": pod.metadata.uid,
            }
        }
    }))
    .expect("a TokenRequest");
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let response: TokenRequest = api
        .create_subresource("token", &account, &PostParams::default(), &request)
        .await
        .map_err(|err| {
            format!(
                "failed to fetch token: {}",
                match &err {
                    kube::Error::Api(status) => status.message.clone(),
                    other => other.to_string(),
                }
            )
        })?;
    let token = response
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "failed to fetch token: the API returned no token".to_string())?;
    let ttl = response
        .spec
        .expiration_seconds
        .unwrap_or(expiration_seconds);
    Ok((token, ttl))
}
