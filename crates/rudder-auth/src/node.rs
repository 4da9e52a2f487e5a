//! The Node authorizer and the NodeRestriction admission check: a node
//! agent (`system:node:NAME` in `system:nodes`) reads only the Secrets,
//! ConfigMaps, volumes and ServiceAccounts of the pods bound to it, and
//! writes only its own Node, Lease and pods, so one compromised node
//! cannot read or steer the rest of the cluster.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::authorizer::{Attributes, Authorizer, Decision};
use crate::rbac::bootstrap::node_rules;
use crate::rbac::PolicyRule;
use crate::user::UserInfo;

/// The namespace of node heartbeats; each node's Lease bears its name.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The annotation that marks a static pod's mirror.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The label prefix only administrators may set on Nodes (for workloads
/// that must land on nodes they trust).
pub const NODE_RESTRICTION_LABEL_NAMESPACE: &str = "node-restriction.kubernetes.io";
/// The only Secrets a node may list across the cluster: TLS certificates
/// for its built-in Ingress.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The kinds of object a pod refers to, which its node may then read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefKind {
    Secret,
    ConfigMap,
    PersistentVolumeClaim,
    ServiceAccount,
    /// Cluster-scoped: used through a PVC bound to it.
    PersistentVolume,
}

/// Which objects the pods bound to each node use (Kubernetes' node graph),
/// kept by the API server from pods, PVCs and PVs.
pub trait NodeGraph {
    /// Whether a pod bound to `node` uses the object (`namespace` is empty
    /// for PersistentVolumes).
    fn pod_on_node_uses(&self, node: &str, kind: RefKind, namespace: &str, name: &str) -> bool;
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn array_at<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The objects a pod uses, each once: Secrets (volumes, projected
/// volumes, volume plugins' secret references, env, envFrom,
/// imagePullSecrets), ConfigMaps (volumes, projected volumes, env,
/// envFrom), PVCs (including a generic ephemeral volume's `<pod>-<volume>`)
/// and its ServiceAccount (`default` when unset).
pub fn pod_references(pod: &Value) -> Vec<(RefKind, String)> {
    let mut refs: BTreeSet<(RefKind, String)> = BTreeSet::new();
    let mut add = |kind: RefKind, name: Option<&str>| {
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            refs.insert((kind, name.to_string()));
        }
    };
    let spec = pod.get("spec").cloned().unwrap_or(Value::Null);
    for secret in array_at(&spec, "/imagePullSecrets") {
        add(RefKind::Secret, str_at(secret, "/name"));
    }
    for list in ["/initContainers", "/containers", "/ephemeralContainers"] {
        for container in array_at(&spec, list) {
            for env in array_at(container, "/env") {
                add(RefKind::Secret, str_at(env, "/valueFrom/secretKeyRef/name"));
                add(
                    RefKind::ConfigMap,
                    str_at(env, "/valueFrom/configMapKeyRef/name"),
                );
            }
            for from in array_at(container, "/envFrom") {
                add(RefKind::Secret, str_at(from, "/secretRef/name"));
                add(RefKind::ConfigMap, str_at(from, "/configMapRef/name"));
            }
        }
    }
    let pod_name = str_at(pod, "/metadata/name").unwrap_or_default();
    for volume in array_at(&spec, "/volumes") {
        add(RefKind::Secret, str_at(volume, "/secret/secretName"));
        add(RefKind::ConfigMap, str_at(volume, "/configMap/name"));
        for source in array_at(volume, "/projected/sources") {
            add(RefKind::Secret, str_at(source, "/secret/name"));
            add(RefKind::ConfigMap, str_at(source, "/configMap/name"));
        }
        // Volume plugins that take credentials from a Secret.
        add(RefKind::Secret, str_at(volume, "/azureFile/secretName"));
        add(
            RefKind::Secret,
            str_at(volume, "/csi/nodePublishSecretRef/name"),
        );
        for plugin in [
            "cephfs",
            "cinder",
            "flexVolume",
            "rbd",
            "scaleIO",
            "iscsi",
            "storageos",
        ] {
            add(
                RefKind::Secret,
                str_at(volume, &format!("/{plugin}/secretRef/name")),
            );
        }
        add(
            RefKind::PersistentVolumeClaim,
            str_at(volume, "/persistentVolumeClaim/claimName"),
        );
        if volume.get("ephemeral").is_some_and(|e| !e.is_null()) {
            if let Some(volume_name) = str_at(volume, "/name") {
                add(
                    RefKind::PersistentVolumeClaim,
                    Some(&format!("{pod_name}-{volume_name}")),
                );
            }
        }
    }
    let service_account = str_at(&spec, "/serviceAccountName")
        .or_else(|| str_at(&spec, "/serviceAccount"))
        .unwrap_or("default");
    add(RefKind::ServiceAccount, Some(service_account));
    refs.into_iter().collect()
}

/// Kubernetes' Node authorizer, for Rudder's node agents.
pub struct NodeAuthorizer<G> {
    graph: G,
    rules: Vec<PolicyRule>,
}

impl<G: NodeGraph> NodeAuthorizer<G> {
    pub fn new(graph: G) -> Self {
        NodeAuthorizer {
            graph,
            rules: node_rules(),
        }
    }

    pub fn graph(&self) -> &G {
        &self.graph
    }

    /// Allowed when a pod on the node uses the named object.
    fn by_graph(&self, node: &str, kind: RefKind, attributes: &Attributes, name: &str) -> Decision {
        if name.is_empty() {
            return Decision::NoOpinion("No Object name found".into());
        }
        if self
            .graph
            .pod_on_node_uses(node, kind, &attributes.namespace, name)
        {
            Decision::Allow(String::new())
        } else {
            Decision::NoOpinion(format!(
                "no relationship found between node '{node}' and this object"
            ))
        }
    }

    /// get, list and watch of one named, namespaced object (a list or
    /// watch names it with `metadata.name=NAME`).
    fn read_namespaced(&self, node: &str, kind: RefKind, attributes: &Attributes) -> Decision {
        if !matches!(attributes.verb.as_str(), "get" | "list" | "watch") {
            return Decision::NoOpinion("can only read resources of this type".into());
        }
        if !attributes.subresource.is_empty() {
            return Decision::NoOpinion("cannot read subresource".into());
        }
        if attributes.namespace.is_empty() {
            return Decision::NoOpinion("can only read namespaced object of this type".into());
        }
        self.by_graph(node, kind, attributes, &requested_name(attributes))
    }

    /// get of one named object.
    fn get(&self, node: &str, kind: RefKind, attributes: &Attributes) -> Decision {
        if attributes.verb != "get" {
            return Decision::NoOpinion("can only get individual resources of this type".into());
        }
        if !attributes.subresource.is_empty() {
            return Decision::NoOpinion("cannot get subresource".into());
        }
        self.by_graph(node, kind, attributes, &attributes.name)
    }
}

/// The object a request names: its name, or for a list or watch the
/// `metadata.name` its field selector pins.
fn requested_name(attributes: &Attributes) -> String {
    if !attributes.name.is_empty() {
        return attributes.name.clone();
    }
    if !matches!(attributes.verb.as_str(), "list" | "watch") {
        return String::new();
    }
    let requirements = field_requirements(attributes.field_selector.as_deref());
    match requirements.as_slice() {
        [(key, value)] if key == "metadata.name" => value.clone(),
        _ => String::new(),
    }
}

/// The equality requirements of a field selector (`a=b,c==d`); any other
/// operator makes the selector unusable for narrowing, so yields nothing.
fn field_requirements(selector: Option<&str>) -> Vec<(String, String)> {
    let Some(selector) = selector.filter(|s| !s.trim().is_empty()) else {
        return Vec::new();
    };
    let mut requirements = Vec::new();
    for part in selector.split(',') {
        if part.contains("!=") {
            return Vec::new();
        }
        let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) else {
            return Vec::new();
        };
        requirements.push((key.trim().to_string(), value.trim().to_string()));
    }
    requirements
}

/// A list or watch of Secrets narrowed to `type=kubernetes.io/tls`: what
/// the node's Ingress needs to load certificates. Further requirements
/// only narrow it further.
fn is_tls_secret_list(attributes: &Attributes) -> bool {
    matches!(attributes.verb.as_str(), "list" | "watch")
        && attributes.name.is_empty()
        && attributes.subresource.is_empty()
        && field_requirements(attributes.field_selector.as_deref())
            .iter()
            .any(|(key, value)| key == "type" && value == TLS_SECRET_TYPE)
}

impl<G: NodeGraph + Send + Sync> Authorizer for NodeAuthorizer<G> {
    fn authorize(&self, attributes: &Attributes) -> Decision {
        let Some(node) = attributes.user.node_name() else {
            return Decision::NoOpinion(String::new());
        };
        if attributes.resource_request {
            let subresource = attributes.subresource.as_str();
            match (attributes.api_group.as_str(), attributes.resource.as_str()) {
                ("", "secrets") if is_tls_secret_list(attributes) => {
                    return Decision::Allow(String::new());
                }
                ("", "secrets") => return self.read_namespaced(node, RefKind::Secret, attributes),
                ("", "configmaps") => {
                    return self.read_namespaced(node, RefKind::ConfigMap, attributes)
                }
                ("", "persistentvolumeclaims") if subresource == "status" => {
                    if !matches!(attributes.verb.as_str(), "get" | "update" | "patch") {
                        return Decision::NoOpinion("can only get/update/patch this type".into());
                    }
                    return self.by_graph(
                        node,
                        RefKind::PersistentVolumeClaim,
                        attributes,
                        &attributes.name,
                    );
                }
                ("", "persistentvolumeclaims") => {
                    return self.get(node, RefKind::PersistentVolumeClaim, attributes)
                }
                ("", "persistentvolumes") => {
                    return self.get(node, RefKind::PersistentVolume, attributes)
                }
                ("", "serviceaccounts") if !subresource.is_empty() => {
                    if attributes.verb != "create" || attributes.name.is_empty() {
                        return Decision::NoOpinion(
                            "can only create tokens for individual service accounts".into(),
                        );
                    }
                    if subresource != "token" {
                        return Decision::NoOpinion(
                            "can only create token subresource of serviceaccount".into(),
                        );
                    }
                    return self.by_graph(
                        node,
                        RefKind::ServiceAccount,
                        attributes,
                        &attributes.name,
                    );
                }
                ("", "serviceaccounts") => {
                    return self.get(node, RefKind::ServiceAccount, attributes)
                }
                ("coordination.k8s.io", "leases") => return own_lease(node, attributes),
                ("discovery.k8s.io", "endpointslices") if own_dns_slice(node, attributes) => {
                    return Decision::Allow(String::new());
                }
                ("storage.k8s.io", "csinodes") => return own_csinode(node, attributes),
                _ => {}
            }
        }
        if self.rules.iter().any(|rule| rule.allows(attributes)) {
            Decision::Allow(String::new())
        } else {
            Decision::NoOpinion(String::new())
        }
    }
}

/// The node's own kube-dns EndpointSlice (`kube-system/kube-dns-NAME`):
/// every Rudder agent serves cluster DNS and publishes itself there.
fn own_dns_slice(node: &str, attributes: &Attributes) -> bool {
    let mut own = format!("kube-dns-{node}");
    own.truncate(253);
    attributes.namespace == "kube-system"
        && attributes.subresource.is_empty()
        && attributes.name == own
        && matches!(
            attributes.verb.as_str(),
            "get" | "create" | "update" | "patch" | "delete"
        )
}

/// A node's heartbeat: only `kube-node-lease/NAME` (create names nothing
/// yet; NodeRestriction checks the object).
fn own_lease(node: &str, attributes: &Attributes) -> Decision {
    let verb = attributes.verb.as_str();
    if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
        return Decision::NoOpinion(
            "can only get, create, update, patch, or delete a node lease".into(),
        );
    }
    if attributes.namespace != NODE_LEASE_NAMESPACE {
        return Decision::NoOpinion(format!(
            "can only access leases in the \"{NODE_LEASE_NAMESPACE}\" system namespace"
        ));
    }
    if verb != "create" && attributes.name != node {
        return Decision::NoOpinion(
            "can only access node lease with the same name as the requesting node".into(),
        );
    }
    Decision::Allow(String::new())
}

fn own_csinode(node: &str, attributes: &Attributes) -> Decision {
    let verb = attributes.verb.as_str();
    if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
        return Decision::NoOpinion(
            "can only get, create, update, patch, or delete a CSINode".into(),
        );
    }
    if verb != "create" && attributes.name != node {
        return Decision::NoOpinion(
            "can only access CSINode with the same name as the requesting node".into(),
        );
    }
    Decision::Allow(String::new())
}

fn labels(object: Option<&Value>) -> Map<String, Value> {
    object
        .and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn label_namespace(key: &str) -> &str {
    key.split_once('/').map(|(ns, _)| ns).unwrap_or_default()
}

fn in_domain(namespace: &str, domain: &str) -> bool {
    namespace == domain || namespace.ends_with(&format!(".{domain}"))
}

/// The labels a kubelet may set on its own Node (Kubernetes'
/// `IsKubeletLabel`).
fn is_kubelet_label(key: &str) -> bool {
    const KUBELET_LABELS: &[&str] = &[
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    ];
    let namespace = label_namespace(key);
    KUBELET_LABELS.contains(&key)
        || in_domain(namespace, "kubelet.kubernetes.io")
        || in_domain(namespace, "node.kubernetes.io")
}

/// The labels added, removed or changed that a node may not touch: the
/// node-restriction prefix, and Kubernetes' own domains beyond the
/// kubelet's labels. Sorted, as Kubernetes lists them.
fn forbidden_labels(new: &Map<String, Value>, old: &Map<String, Value>) -> Vec<String> {
    let modified: BTreeSet<&String> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .chain(old.iter().filter(|(k, v)| new.get(*k) != Some(v)))
        .map(|(k, _)| k)
        .collect();
    modified
        .into_iter()
        .filter(|key| {
            let namespace = label_namespace(key);
            let kubernetes =
                in_domain(namespace, "kubernetes.io") || in_domain(namespace, "k8s.io");
            in_domain(namespace, NODE_RESTRICTION_LABEL_NAMESPACE)
                || (kubernetes && !is_kubelet_label(key))
        })
        .cloned()
        .collect()
}

fn node_name_of(pod: Option<&Value>) -> &str {
    pod.and_then(|p| str_at(p, "/spec/nodeName"))
        .unwrap_or_default()
}

/// NodeRestriction admission: what a node may write. `old` is the object
/// as stored (for `pods/eviction`, the Pod evicted; for
/// `serviceaccounts/token`, the Pod the TokenRequest binds to, if it
/// exists), `new` the object written (a Node, Pod, Lease, CSINode or
/// TokenRequest). The error is Kubernetes' reason, for the caller's
/// `... is forbidden: REASON`. Anyone but a node: `Ok`.
#[allow(clippy::too_many_arguments)]
pub fn node_restriction(
    user: &UserInfo,
    operation: &str,
    group: &str,
    resource: &str,
    subresource: &str,
    namespace: &str,
    name: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), String> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    match (group, resource) {
        ("", "pods") => match subresource {
            "" => admit_pod(node, operation, old, new),
            "status" => {
                if operation != "UPDATE" {
                    return Err(format!("unexpected operation \"{operation}\""));
                }
                if node_name_of(old) != node {
                    return Err(format!(
                        "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                    ));
                }
                if labels(old) != labels(new) {
                    return Err(format!(
                        "node \"{node}\" cannot update labels through pod status"
                    ));
                }
                Ok(())
            }
            "eviction" => {
                if operation != "CREATE" {
                    return Err(format!("unexpected operation {operation}"));
                }
                if node_name_of(old) != node {
                    return Err(format!(
                        "node {node} can only evict pods with spec.nodeName set to itself"
                    ));
                }
                Ok(())
            }
            other => Err(format!(
                "unexpected pod subresource \"{other}\", only 'status' and 'eviction' are allowed"
            )),
        },
        ("", "nodes") => admit_node(node, operation, name, old, new),
        ("", "persistentvolumeclaims") => {
            if subresource != "status" {
                return Err("may only update PVC status".into());
            }
            if operation != "UPDATE" {
                return Err(format!("unexpected operation \"{operation}\""));
            }
            let strip = |pvc: Option<&Value>| {
                let mut pvc = pvc.cloned().unwrap_or(Value::Null);
                if let Some(metadata) = pvc.get_mut("metadata").and_then(Value::as_object_mut) {
                    metadata.remove("resourceVersion");
                    metadata.remove("managedFields");
                }
                if let Some(status) = pvc.get_mut("status").and_then(Value::as_object_mut) {
                    for field in [
                        "capacity",
                        "conditions",
                        "allocatedResources",
                        "allocatedResourceStatuses",
                    ] {
                        status.remove(field);
                    }
                }
                pvc
            };
            if strip(old) != strip(new) {
                return Err(format!(
                    "node \"{node}\" is not allowed to update fields other than status.capacity and status.conditions"
                ));
            }
            Ok(())
        }
        ("", "serviceaccounts") if operation == "CREATE" && subresource == "token" => {
            let reference = new.and_then(|tr| tr.pointer("/spec/boundObjectRef"));
            let field = |key: &str| reference.and_then(|r| str_at(r, key)).unwrap_or_default();
            if reference.is_none()
                || field("/apiVersion") != "v1"
                || field("/kind") != "Pod"
                || field("/name").is_empty()
            {
                return Err("node requested token not bound to a pod".into());
            }
            if field("/uid").is_empty() {
                return Err("node requested token with a pod binding without a uid".into());
            }
            let Some(pod) = old else {
                return Err(format!("pods \"{}\" not found", field("/name")));
            };
            if str_at(pod, "/metadata/uid").unwrap_or_default() != field("/uid") {
                return Err(format!(
                    "the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
                    field("/uid")
                ));
            }
            if node_name_of(Some(pod)) != node {
                return Err(
                    "node requested token bound to a pod scheduled on a different node".into(),
                );
            }
            Ok(())
        }
        ("coordination.k8s.io", "leases") => {
            if namespace != NODE_LEASE_NAMESPACE {
                return Err(format!(
                    "can only access leases in the \"{NODE_LEASE_NAMESPACE}\" system namespace"
                ));
            }
            if object_name(operation, name, new) != node {
                return Err(
                    "can only access node lease with the same name as the requesting node".into(),
                );
            }
            Ok(())
        }
        ("storage.k8s.io", "csinodes") => {
            if object_name(operation, name, new) != node {
                return Err(
                    "can only access CSINode with the same name as the requesting node".into(),
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The name a write is about: on create, the new object's.
fn object_name<'a>(operation: &str, name: &'a str, new: Option<&'a Value>) -> &'a str {
    if operation == "CREATE" {
        new.and_then(|o| str_at(o, "/metadata/name"))
            .unwrap_or(name)
    } else {
        name
    }
}

/// A node creates and deletes only mirror pods bound to itself, owned by
/// its Node, and referring to nothing it could not read anyway.
fn admit_pod(
    node: &str,
    operation: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), String> {
    match operation {
        "CREATE" => {
            let pod = new.cloned().unwrap_or(Value::Null);
            if pod
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(MIRROR_POD_ANNOTATION))
                .is_none()
            {
                return Err(format!(
                    "pod does not have \"{MIRROR_POD_ANNOTATION}\" annotation, node \"{node}\" can only create mirror pods"
                ));
            }
            if node_name_of(Some(&pod)) != node {
                return Err(format!(
                    "node \"{node}\" can only create pods with spec.nodeName set to itself"
                ));
            }
            let owners = array_at(&pod, "/metadata/ownerReferences");
            match owners {
                [] => {
                    return Err(format!(
                        "node \"{node}\" can only create pods with an owner reference set to itself"
                    ))
                }
                [owner] => {
                    if str_at(owner, "/apiVersion") != Some("v1")
                        || str_at(owner, "/kind") != Some("Node")
                        || str_at(owner, "/name") != Some(node)
                    {
                        return Err(format!(
                            "node \"{node}\" can only create pods with an owner reference set to itself"
                        ));
                    }
                    if owner.get("controller").and_then(Value::as_bool) != Some(true) {
                        return Err(format!(
                            "node \"{node}\" can only create pods with a controller owner reference set to itself"
                        ));
                    }
                    if owner.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true) {
                        return Err(format!(
                            "node \"{node}\" must not set blockOwnerDeletion on an owner reference"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "node \"{node}\" can only create pods with a single owner reference set to itself"
                    ))
                }
            }
            if str_at(&pod, "/spec/serviceAccountName").is_some() {
                return Err(format!(
                    "node \"{node}\" can not create pods that reference a service account"
                ));
            }
            let refs = pod_references(&pod);
            for (kind, noun) in [
                (RefKind::Secret, "secrets"),
                (RefKind::ConfigMap, "configmaps"),
            ] {
                if refs.iter().any(|(k, _)| *k == kind) {
                    return Err(format!("node \"{node}\" can not create pods that reference {noun}"));
                }
            }
            let volumes = array_at(&pod, "/spec/volumes");
            if volumes.iter().any(|v| {
                array_at(v, "/projected/sources")
                    .iter()
                    .any(|s| s.get("clusterTrustBundle").is_some())
            }) {
                return Err(format!(
                    "node \"{node}\" can not create pods that reference clustertrustbundles"
                ));
            }
            if volumes.iter().any(|v| v.get("persistentVolumeClaim").is_some()) {
                return Err(format!(
                    "node \"{node}\" can not create pods that reference persistentvolumeclaims"
                ));
            }
            Ok(())
        }
        "DELETE" => {
            if node_name_of(old) != node {
                return Err(format!(
                    "node \"{node}\" can only delete pods with spec.nodeName set to itself"
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "unexpected operation \"{other}\", node \"{node}\" can only create and delete mirror pods"
        )),
    }
}

/// A node writes only its own Node, and neither its taints, nor labels a
/// scheduler trusts, nor a configSource.
fn admit_node(
    node: &str,
    operation: &str,
    name: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), String> {
    let requested = object_name(operation, name, new);
    if requested != node {
        return Err(format!(
            "node \"{node}\" is not allowed to modify node \"{requested}\""
        ));
    }
    let config_source = |o: Option<&Value>| {
        o.and_then(|o| o.pointer("/spec/configSource"))
            .filter(|c| !c.is_null())
            .cloned()
    };
    match operation {
        "CREATE" => {
            if config_source(new).is_some() {
                return Err(format!(
                    "node \"{node}\" is not allowed to create pods with a non-nil configSource"
                ));
            }
            let forbidden = forbidden_labels(&labels(new), &Map::new());
            if !forbidden.is_empty() {
                return Err(format!(
                    "node \"{node}\" is not allowed to set the following labels: {}",
                    forbidden.join(", ")
                ));
            }
        }
        "UPDATE" => {
            if let Some(source) = config_source(new) {
                if Some(source) != config_source(old) {
                    return Err(format!(
                        "node \"{node}\" is not allowed to update configSource to a new non-nil configSource"
                    ));
                }
            }
            let taints = |o: Option<&Value>| {
                o.and_then(|o| o.pointer("/spec/taints"))
                    .and_then(Value::as_array)
                    .filter(|t| !t.is_empty())
                    .cloned()
            };
            if taints(new) != taints(old) {
                return Err(format!("node \"{node}\" is not allowed to modify taints"));
            }
            let forbidden = forbidden_labels(&labels(new), &labels(old));
            if !forbidden.is_empty() {
                return Err(format!(
                    "is not allowed to modify labels: {}",
                    forbidden.join(", ")
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
