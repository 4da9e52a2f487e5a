//! What a new cluster has before anyone asks: the system namespaces, the
//! system priority classes, the `kubernetes` Service in front of the API
//! and the `kube-dns` Service in front of the nodes' DNS servers.

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
    system_services(server).await?;
    if server.security().is_some() {
        default_rbac_policy(server).await?;
    }
    kubernetes_endpoints(server).await
}

/// The default ClusterRoles and ClusterRoleBindings (kube-apiserver's
/// bootstrap policy and the roles Rudder's components need). Missing ones
/// are created; ones annotated `rbac.authorization.kubernetes.io/autoupdate:
/// "true"` are brought back to the default rules and subjects at every
/// start, as kube-apiserver reconciles them (an aggregated role keeps the
/// rules its aggregation controller gathered).
async fn default_rbac_policy(server: &ApiServer) -> Result<(), ApiError> {
    let kinds = [
        ("clusterroles", rudder_auth::rbac::bootstrap_cluster_roles()),
        (
            "clusterrolebindings",
            rudder_auth::rbac::bootstrap_cluster_role_bindings(),
        ),
    ];
    for (plural, objects) in kinds {
        let info = server
            .registry()
            .get("rbac.authorization.k8s.io", "v1", plural)
            .ok_or_else(|| ApiError::Internal(format!("{plural} are not registered")))?;
        for mut object in objects {
            let name = object::name(&object).to_owned();
            let key = info.key(None, &name);
            let (existing, _) = server.store().get(&key, None).await?;
            match existing {
                None => {
                    object["metadata"]["uid"] = json!(object::new_uid());
                    object["metadata"]["creationTimestamp"] = json!(object::now_rfc3339());
                    match server
                        .store()
                        .create(&key, serde_json::to_vec(&object).unwrap_or_default())
                        .await
                    {
                        Ok(_) | Err(rudder_store::StoreError::AlreadyExists { .. }) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                Some(kv) => {
                    let current = crate::rest::decode(&kv)?;
                    let autoupdate = current
                        .pointer(
                            "/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate",
                        )
                        .and_then(serde_json::Value::as_str)
                        == Some("true");
                    if !autoupdate {
                        continue;
                    }
                    let mut wanted = current.clone();
                    let aggregated = object.get("aggregationRule").is_some();
                    for field in ["rules", "aggregationRule", "roleRef", "subjects"] {
                        if field == "rules" && aggregated {
                            continue;
                        }
                        match object.get(field) {
                            Some(value) => wanted[field] = value.clone(),
                            None => {
                                wanted.as_object_mut().map(|o| o.remove(field));
                            }
                        }
                    }
                    if wanted != current {
                        let _ = server
                            .store()
                            .update(
                                &key,
                                serde_json::to_vec(&wanted).unwrap_or_default(),
                                kv.mod_revision,
                            )
                            .await;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The `kubernetes` Service's EndpointSlice: this API server's address, so
/// pods reach the API at 10.43.0.1:443. Rewritten at every start (the
/// address may have changed); left out when the server listens on a
/// loopback or wildcard address, which no pod could reach.
async fn kubernetes_endpoints(server: &ApiServer) -> Result<(), ApiError> {
    let Ok(addr) = server.advertise_address().parse::<std::net::SocketAddr>() else {
        return Ok(());
    };
    if addr.ip().is_loopback() || addr.ip().is_unspecified() || !addr.is_ipv4() {
        return Ok(());
    }
    let slices = server
        .registry()
        .get("discovery.k8s.io", "v1", "endpointslices")
        .ok_or_else(|| ApiError::Internal("endpointslices are not registered".into()))?;
    let key = slices.key(Some("default"), "kubernetes");
    let endpoints = json!([{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}]);
    let ports = json!([{"name": "https", "port": addr.port(), "protocol": "TCP"}]);
    let (current, rev) = match server.store().get(&key, None).await? {
        (Some(kv), _) => {
            let obj: serde_json::Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            if obj["endpoints"] == endpoints && obj["ports"] == ports {
                return Ok(());
            }
            (Some(obj), kv.mod_revision)
        }
        (None, _) => (None, 0),
    };
    let mut slice = current.unwrap_or_else(|| {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                "uid": object::new_uid(), "creationTimestamp": object::now_rfc3339(),
                "generation": 1,
                "labels": {"kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "rudder-apiserver"}},
            "addressType": "IPv4",
        })
    });
    slice["endpoints"] = endpoints;
    slice["ports"] = ports;
    if let Some(meta) = slice["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    let value = serde_json::to_vec(&slice).unwrap_or_default();
    let result = if rev == 0 {
        server.store().create(&key, value).await
    } else {
        server.store().update(&key, value, rev).await
    };
    match result {
        // Another server wrote it at the same moment: its address is as good.
        Ok(_)
        | Err(rudder_store::StoreError::AlreadyExists { .. })
        | Err(rudder_store::StoreError::Conflict { .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// `default/kubernetes` (the service CIDR's first address, port 443 to the
/// API server's port) and `kube-system/kube-dns` (the cluster DNS address,
/// 53/UDP and 53/TCP). kube-dns has no selector: every node agent serves
/// DNS itself and publishes its own EndpointSlice for it, and
/// `internalTrafficPolicy: Local` keeps each pod's queries on its node (as
/// NodeLocal DNSCache does).
async fn system_services(server: &ApiServer) -> Result<(), ApiError> {
    let services = server
        .registry()
        .get("", "v1", "services")
        .ok_or_else(|| ApiError::Internal("services are not registered".into()))?;
    let api_port: u16 = server
        .advertise_address()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(6443);
    let cidr = server.services().cidr();
    let wanted = [
        json!({
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": cidr.nth(1).to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api_port}],
                "sessionAffinity": "None"},
        }),
        json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                    "kubernetes.io/name": "CoreDNS"}},
            "spec": {"type": "ClusterIP", "clusterIP": server.services().cluster_dns().to_string(),
                "internalTrafficPolicy": "Local",
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ]},
        }),
    ];
    for mut svc in wanted {
        let ns = svc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = svc["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let key = services.key(Some(&ns), &name);
        if server.store().get(&key, None).await?.0.is_some() {
            continue;
        }
        svc["apiVersion"] = json!("v1");
        svc["kind"] = json!("Service");
        svc["metadata"]["uid"] = json!(object::new_uid());
        svc["metadata"]["creationTimestamp"] = json!(object::now_rfc3339());
        crate::defaults::prepare_for_create(&services, &mut svc);
        // Through the allocator, so an address a user service already
        // holds is reported instead of handed out twice.
        if let Err(err) = server
            .services()
            .allocate(server, &services, &mut svc, None, false)
            .await
        {
            tracing::warn!(service = %format!("{ns}/{name}"), error = %err, "cannot create the system service");
            continue;
        }
        match server
            .store()
            .create(&key, serde_json::to_vec(&svc).unwrap_or_default())
            .await
        {
            Ok(_) | Err(rudder_store::StoreError::AlreadyExists { .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
