//! What a new cluster has before anyone asks: the system namespaces.

use serde_json::json;

use crate::error::ApiError;
use crate::object;
use crate::ApiServer;

/// The namespaces every Kubernetes cluster starts with.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

pub(crate) async fn run(server: &ApiServer) -> Result<(), ApiError> {
    let namespaces = server
        .registry()
        .get("", "v1", "namespaces")
        .ok_or_else(|| ApiError::Internal("namespaces are not registered".into()))?;
    for name in SYSTEM_NAMESPACES {
        let key = namespaces.key(None, name);
        if server.store().get(&key, None).await?.0.is_some() {
            continue;
        }
        let mut ns = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "uid": object::new_uid(),
                "creationTimestamp": object::now_rfc3339(),
            },
        });
        crate::defaults::prepare_for_create(&namespaces, &mut ns);
        match server
            .store()
            .create(&key, serde_json::to_vec(&ns).unwrap_or_default())
            .await
        {
            // Another server on the same store was first: fine.
            Ok(_) | Err(rudder_store::StoreError::AlreadyExists { .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    let classes = server
        .registry()
        .get("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(|| ApiError::Internal("priorityclasses are not registered".into()))?;
    for (name, value, description) in crate::admission::SYSTEM_PRIORITY_CLASSES {
        let key = classes.key(None, name);
        if server.store().get(&key, None).await?.0.is_some() {
            continue;
        }
        let class = json!({
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name, "uid": object::new_uid(), "creationTimestamp": object::now_rfc3339(), "generation": 1},
            "value": value,
            "description": description,
            "preemptionPolicy": "PreemptLowerPriority",
        });
        match server
            .store()
            .create(&key, serde_json::to_vec(&class).unwrap_or_default())
            .await
        {
            Ok(_) | Err(rudder_store::StoreError::AlreadyExists { .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
