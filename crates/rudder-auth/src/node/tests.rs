use std::collections::HashSet;

use serde_json::json;

use super::*;
use crate::user::NODES;

/// A graph from (node, kind, namespace, name) facts.
struct Facts(HashSet<(String, RefKind, String, String)>);

impl NodeGraph for Facts {
    fn pod_on_node_uses(&self, node: &str, kind: RefKind, namespace: &str, name: &str) -> bool {
        self.0
            .contains(&(node.into(), kind, namespace.into(), name.into()))
    }
}

fn authorizer() -> NodeAuthorizer<Facts> {
    let facts = [
        ("n1", RefKind::Secret, "app", "db-password"),
        ("n1", RefKind::ConfigMap, "app", "settings"),
        ("n1", RefKind::PersistentVolumeClaim, "app", "data"),
        ("n1", RefKind::PersistentVolume, "", "pv-data"),
        ("n1", RefKind::ServiceAccount, "app", "default"),
    ];
    NodeAuthorizer::new(Facts(
        facts
            .iter()
            .map(|(n, k, ns, name)| (n.to_string(), *k, ns.to_string(), name.to_string()))
            .collect(),
    ))
}

fn node_user(name: &str) -> UserInfo {
    UserInfo::authenticated(format!("system:node:{name}"), &[NODES])
}

fn request(
    user: &UserInfo,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
    name: &str,
) -> Attributes {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    Attributes {
        user: user.clone(),
        verb: verb.into(),
        resource_request: true,
        namespace: namespace.into(),
        api_group: group.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        name: name.into(),
        ..Default::default()
    }
}

fn selected(mut attributes: Attributes, selector: &str) -> Attributes {
    attributes.field_selector = Some(selector.into());
    attributes
}

#[test]
fn nodes_read_only_what_their_pods_use() {
    let authorizer = authorizer();
    let n1 = node_user("n1");
    let n2 = node_user("n2");
    let cases: Vec<(Attributes, bool, &str)> = vec![
        (
            request(&n1, "get", "", "secrets", "app", "db-password"),
            true,
            "its pod's secret",
        ),
        (
            request(&n2, "get", "", "secrets", "app", "db-password"),
            false,
            "another node's pod's secret",
        ),
        (
            request(&n1, "get", "", "secrets", "app", "other"),
            false,
            "an unused secret",
        ),
        (
            request(&n1, "get", "", "secrets", "other", "db-password"),
            false,
            "same name elsewhere",
        ),
        (
            selected(
                request(&n1, "watch", "", "secrets", "app", ""),
                "metadata.name=db-password",
            ),
            true,
            "a watch on one used secret",
        ),
        (
            selected(
                request(&n1, "watch", "", "secrets", "app", ""),
                "metadata.name=other",
            ),
            false,
            "a watch on another",
        ),
        (
            request(&n1, "list", "", "secrets", "app", ""),
            false,
            "a list of all secrets",
        ),
        (
            request(&n1, "list", "", "secrets", "", ""),
            false,
            "all secrets everywhere",
        ),
        (
            selected(
                request(&n1, "list", "", "secrets", "", ""),
                "type=kubernetes.io/tls",
            ),
            true,
            "TLS secrets for the ingress",
        ),
        (
            selected(
                request(&n1, "watch", "", "secrets", "", ""),
                "type==kubernetes.io/tls,metadata.namespace=web",
            ),
            true,
            "narrower still",
        ),
        (
            selected(
                request(&n1, "list", "", "secrets", "", ""),
                "type!=kubernetes.io/tls",
            ),
            false,
            "not TLS",
        ),
        (
            selected(request(&n1, "list", "", "secrets", "", ""), "type=Opaque"),
            false,
            "other types",
        ),
        (
            selected(
                request(&n1, "get", "", "secrets", "app", "x"),
                "type=kubernetes.io/tls",
            ),
            false,
            "a get by selector is no list",
        ),
        (
            request(&n1, "update", "", "secrets", "app", "db-password"),
            false,
            "no secret writes",
        ),
        (
            request(&n1, "get", "", "configmaps", "app", "settings"),
            true,
            "its pod's configmap",
        ),
        (
            request(&n2, "get", "", "configmaps", "app", "settings"),
            false,
            "another's configmap",
        ),
        (
            request(&n1, "get", "", "persistentvolumeclaims", "app", "data"),
            true,
            "its pod's claim",
        ),
        (
            request(&n1, "list", "", "persistentvolumeclaims", "app", ""),
            false,
            "claims are get only",
        ),
        (
            request(
                &n1,
                "patch",
                "",
                "persistentvolumeclaims/status",
                "app",
                "data",
            ),
            true,
            "its claim's status",
        ),
        (
            request(
                &n2,
                "patch",
                "",
                "persistentvolumeclaims/status",
                "app",
                "data",
            ),
            false,
            "another's claim's status",
        ),
        (
            request(&n1, "get", "", "persistentvolumes", "", "pv-data"),
            true,
            "the volume bound to its claim",
        ),
        (
            request(&n2, "get", "", "persistentvolumes", "", "pv-data"),
            false,
            "another's volume",
        ),
        (
            request(&n1, "get", "", "serviceaccounts", "app", "default"),
            true,
            "its pod's service account",
        ),
        (
            request(&n1, "create", "", "serviceaccounts/token", "app", "default"),
            true,
            "a token for it",
        ),
        (
            request(&n2, "create", "", "serviceaccounts/token", "app", "default"),
            false,
            "a token for another's",
        ),
        (
            request(&n1, "get", "", "serviceaccounts/token", "app", "default"),
            false,
            "tokens are created",
        ),
        (
            request(
                &n1,
                "get",
                "coordination.k8s.io",
                "leases",
                "kube-node-lease",
                "n1",
            ),
            true,
            "its lease",
        ),
        (
            request(
                &n1,
                "create",
                "coordination.k8s.io",
                "leases",
                "kube-node-lease",
                "",
            ),
            true,
            "creating its lease",
        ),
        (
            request(
                &n1,
                "update",
                "coordination.k8s.io",
                "leases",
                "kube-node-lease",
                "n2",
            ),
            false,
            "another's lease",
        ),
        (
            request(
                &n1,
                "get",
                "coordination.k8s.io",
                "leases",
                "kube-system",
                "n1",
            ),
            false,
            "leases elsewhere",
        ),
        (
            request(
                &n1,
                "list",
                "coordination.k8s.io",
                "leases",
                "kube-node-lease",
                "",
            ),
            false,
            "listing leases",
        ),
        (
            request(&n1, "update", "storage.k8s.io", "csinodes", "", "n1"),
            true,
            "its CSINode",
        ),
        (
            request(&n1, "update", "storage.k8s.io", "csinodes", "", "n2"),
            false,
            "another's CSINode",
        ),
        (
            request(&n1, "patch", "", "nodes/status", "", "n1"),
            true,
            "node status",
        ),
        (request(&n1, "list", "", "pods", "", ""), true, "pods"),
        (
            request(&n1, "create", "", "pods", "kube-system", ""),
            true,
            "mirror pods (NodeRestriction checks)",
        ),
        (
            request(&n1, "create", "", "pods/eviction", "app", "web"),
            true,
            "evictions",
        ),
        (
            request(&n1, "create", "", "events", "app", ""),
            true,
            "events",
        ),
        (
            request(&n1, "watch", "discovery.k8s.io", "endpointslices", "", ""),
            true,
            "the Service proxy",
        ),
        (
            request(&n1, "list", "", "namespaces", "", ""),
            true,
            "NetworkPolicy namespaces",
        ),
        (
            request(&n1, "watch", "networking.k8s.io", "networkpolicies", "", ""),
            true,
            "NetworkPolicy",
        ),
        (
            request(&n1, "list", "networking.k8s.io", "ingressclasses", "", ""),
            true,
            "ingress classes",
        ),
        (
            request(
                &n1,
                "create",
                "certificates.k8s.io",
                "certificatesigningrequests",
                "",
                "",
            ),
            true,
            "certificate renewal",
        ),
        (
            request(
                &n1,
                "create",
                "authentication.k8s.io",
                "tokenreviews",
                "",
                "",
            ),
            true,
            "token reviews",
        ),
        (
            request(&n1, "get", "storage.k8s.io", "volumeattachments", "", "va"),
            true,
            "volume attachments",
        ),
        (
            request(&n1, "delete", "", "namespaces", "", "app"),
            false,
            "no namespace writes",
        ),
        (
            request(
                &n1,
                "update",
                "networking.k8s.io",
                "ingresses/status",
                "app",
                "web",
            ),
            false,
            "no ingress status",
        ),
        (
            request(&n1, "create", "apps", "deployments", "app", ""),
            false,
            "no workloads",
        ),
        (
            request(
                &n1,
                "create",
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                "",
                "",
            ),
            false,
            "no RBAC",
        ),
    ];
    for (attributes, allowed, why) in cases {
        assert_eq!(
            authorizer.authorize(&attributes).allowed(),
            allowed,
            "{why}"
        );
    }
}

#[test]
fn only_nodes_are_judged_and_refusals_say_why() {
    let authorizer = authorizer();
    let pretender = UserInfo::authenticated("system:node:n1", &[]);
    assert_eq!(
        authorizer.authorize(&request(
            &pretender,
            "get",
            "",
            "secrets",
            "app",
            "db-password"
        )),
        Decision::NoOpinion(String::new())
    );
    let n2 = node_user("n2");
    assert_eq!(
        authorizer.authorize(&request(&n2, "get", "", "secrets", "app", "db-password")),
        Decision::NoOpinion("no relationship found between node 'n2' and this object".into())
    );
    assert_eq!(
        authorizer.authorize(&request(&n2, "delete", "", "secrets", "app", "x")),
        Decision::NoOpinion("can only read resources of this type".into())
    );
    assert_eq!(
        authorizer.authorize(&request(
            &n2,
            "get",
            "coordination.k8s.io",
            "leases",
            "kube-node-lease",
            "n1"
        )),
        Decision::NoOpinion(
            "can only access node lease with the same name as the requesting node".into()
        )
    );
}

#[test]
fn pod_references_cover_every_way_a_pod_names_an_object() {
    let pod = json!({
        "metadata": {"name": "web", "namespace": "app"},
        "spec": {
            "serviceAccountName": "runner",
            "imagePullSecrets": [{"name": "registry"}],
            "initContainers": [{"name": "init", "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "init-secret", "key": "k"}}}]}],
            "containers": [{
                "name": "c",
                "env": [
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-config", "key": "k"}}},
                    {"name": "C", "value": "plain"}
                ],
                "envFrom": [{"secretRef": {"name": "bulk-secret"}}, {"configMapRef": {"name": "bulk-config"}}]
            }],
            "volumes": [
                {"name": "s", "secret": {"secretName": "vol-secret"}},
                {"name": "c", "configMap": {"name": "vol-config"}},
                {"name": "p", "projected": {"sources": [{"secret": {"name": "proj-secret"}}, {"configMap": {"name": "proj-config"}}, {"serviceAccountToken": {"path": "t"}}]}},
                {"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "csi", "csi": {"driver": "x", "nodePublishSecretRef": {"name": "csi-secret"}}},
                {"name": "e", "emptyDir": {}}
            ]
        }
    });
    let refs = pod_references(&pod);
    let names = |kind: RefKind| -> Vec<&str> {
        refs.iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.as_str())
            .collect()
    };
    assert_eq!(
        names(RefKind::Secret),
        vec![
            "bulk-secret",
            "csi-secret",
            "init-secret",
            "proj-secret",
            "registry",
            "vol-secret"
        ]
    );
    assert_eq!(
        names(RefKind::ConfigMap),
        vec!["bulk-config", "env-config", "proj-config", "vol-config"]
    );
    assert_eq!(
        names(RefKind::PersistentVolumeClaim),
        vec!["data", "web-scratch"]
    );
    assert_eq!(names(RefKind::ServiceAccount), vec!["runner"]);
    let bare = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
    assert_eq!(
        pod_references(&bare),
        vec![(RefKind::ServiceAccount, "default".to_string())]
    );
}

fn mirror_pod(node: &str) -> Value {
    json!({
        "metadata": {
            "name": format!("static-{node}"),
            "annotations": {MIRROR_POD_ANNOTATION: "hash"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": "u", "controller": true}]
        },
        "spec": {"nodeName": node, "containers": [{"name": "c"}]}
    })
}

fn node_object(labels: Value, taints: Value) -> Value {
    json!({"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": taints}})
}

#[test]
fn node_restriction_confines_nodes_to_their_own_objects() {
    let n1 = node_user("n1");
    let on = |node: &str| json!({"metadata": {"name": "p", "uid": "pod-uid", "labels": {"a": "1"}}, "spec": {"nodeName": node}});
    let mut mirror_with_secret = mirror_pod("n1");
    mirror_with_secret["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "x"}}]);
    let mut mirror_with_owner_block = mirror_pod("n1");
    mirror_with_owner_block["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = json!(true);
    let mut relabeled = on("n1");
    relabeled["metadata"]["labels"]["a"] = json!("2");
    let token = |uid: &str| json!({"spec": {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": uid}}});
    let lease = |name: &str| json!({"metadata": {"name": name, "namespace": "kube-node-lease"}});
    let base = node_object(json!({"kubernetes.io/hostname": "n1"}), json!([]));
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Option<Value>,
        Option<Value>,
        Result<(), String>,
    );
    let cases: Vec<Case> = vec![
        ("CREATE", "pods", "", "kube-system", "", None, Some(mirror_pod("n1")), Ok(())),
        ("CREATE", "pods", "", "kube-system", "", None, Some(mirror_pod("n2")),
            Err("node \"n1\" can only create pods with spec.nodeName set to itself".into())),
        ("CREATE", "pods", "", "app", "", None, Some(on("n1")),
            Err("pod does not have \"kubernetes.io/config.mirror\" annotation, node \"n1\" can only create mirror pods".into())),
        ("CREATE", "pods", "", "app", "", None, Some(mirror_with_secret),
            Err("node \"n1\" can not create pods that reference secrets".into())),
        ("CREATE", "pods", "", "app", "", None, Some(mirror_with_owner_block),
            Err("node \"n1\" must not set blockOwnerDeletion on an owner reference".into())),
        ("DELETE", "pods", "", "app", "p", Some(on("n1")), None, Ok(())),
        ("DELETE", "pods", "", "app", "p", Some(on("n2")), None,
            Err("node \"n1\" can only delete pods with spec.nodeName set to itself".into())),
        ("UPDATE", "pods", "", "app", "p", Some(on("n1")), Some(on("n1")),
            Err("unexpected operation \"UPDATE\", node \"n1\" can only create and delete mirror pods".into())),
        ("UPDATE", "pods", "status", "app", "p", Some(on("n1")), Some(on("n1")), Ok(())),
        ("UPDATE", "pods", "status", "app", "p", Some(on("n2")), Some(on("n2")),
            Err("node \"n1\" can only update pod status for pods with spec.nodeName set to itself".into())),
        ("UPDATE", "pods", "status", "app", "p", Some(on("n1")), Some(relabeled),
            Err("node \"n1\" cannot update labels through pod status".into())),
        ("CREATE", "pods", "eviction", "app", "p", Some(on("n1")), None, Ok(())),
        ("CREATE", "pods", "eviction", "app", "p", Some(on("n2")), None,
            Err("node n1 can only evict pods with spec.nodeName set to itself".into())),
        ("UPDATE", "pods", "exec", "app", "p", None, None,
            Err("unexpected pod subresource \"exec\", only 'status' and 'eviction' are allowed".into())),
        ("UPDATE", "nodes", "", "", "n1", Some(base.clone()), Some(node_object(json!({"kubernetes.io/hostname": "n1", "node.kubernetes.io/exclude-from-external-load-balancers": "true"}), json!([]))), Ok(())),
        ("UPDATE", "nodes", "status", "", "n2", None, None,
            Err("node \"n1\" is not allowed to modify node \"n2\"".into())),
        ("DELETE", "nodes", "", "", "n2", None, None,
            Err("node \"n1\" is not allowed to modify node \"n2\"".into())),
        ("UPDATE", "nodes", "", "", "n1", Some(base.clone()), Some(node_object(json!({"kubernetes.io/hostname": "n1"}), json!([{"key": "k", "effect": "NoSchedule"}]))),
            Err("node \"n1\" is not allowed to modify taints".into())),
        ("UPDATE", "nodes", "", "", "n1", Some(base.clone()), Some(node_object(json!({"kubernetes.io/hostname": "n1", "node-restriction.kubernetes.io/trusted": "yes", "example.com/x": "y"}), json!([]))),
            Err("is not allowed to modify labels: node-restriction.kubernetes.io/trusted".into())),
        ("UPDATE", "nodes", "", "", "n1", Some(base.clone()), Some(node_object(json!({"node-role.kubernetes.io/control-plane": ""}), json!([]))),
            Err("is not allowed to modify labels: node-role.kubernetes.io/control-plane".into())),
        ("CREATE", "nodes", "", "", "", None, Some(node_object(json!({"kubernetes.io/os": "linux", "sub.node-restriction.kubernetes.io/x": "1"}), json!([]))),
            Err("node \"n1\" is not allowed to set the following labels: sub.node-restriction.kubernetes.io/x".into())),
        ("CREATE", "serviceaccounts", "token", "app", "default", Some(on("n1")), Some(token("pod-uid")), Ok(())),
        ("CREATE", "serviceaccounts", "token", "app", "default", Some(on("n2")), Some(token("pod-uid")),
            Err("node requested token bound to a pod scheduled on a different node".into())),
        ("CREATE", "serviceaccounts", "token", "app", "default", Some(on("n1")), Some(json!({"spec": {}})),
            Err("node requested token not bound to a pod".into())),
        ("CREATE", "serviceaccounts", "token", "app", "default", Some(on("n1")), Some(token("")),
            Err("node requested token with a pod binding without a uid".into())),
        ("CREATE", "leases", "", "kube-node-lease", "", None, Some(lease("n1")), Ok(())),
        ("CREATE", "leases", "", "kube-node-lease", "", None, Some(lease("n2")),
            Err("can only access node lease with the same name as the requesting node".into())),
        ("UPDATE", "leases", "", "kube-system", "n1", None, Some(lease("n1")),
            Err("can only access leases in the \"kube-node-lease\" system namespace".into())),
        ("UPDATE", "persistentvolumeclaims", "", "app", "data", None, None, Err("may only update PVC status".into())),
        ("UPDATE", "configmaps", "", "app", "x", None, None, Ok(())),
    ];
    for (operation, resource, subresource, namespace, name, old, new, expected) in cases {
        let group = if resource == "leases" {
            "coordination.k8s.io"
        } else {
            ""
        };
        assert_eq!(
            node_restriction(
                &n1,
                operation,
                group,
                resource,
                subresource,
                namespace,
                name,
                old.as_ref(),
                new.as_ref()
            ),
            expected,
            "{operation} {resource}/{subresource} {name}"
        );
    }
    let admin = UserInfo::authenticated("admin", &["system:masters"]);
    assert_eq!(
        node_restriction(&admin, "DELETE", "", "nodes", "", "", "n2", None, None),
        Ok(()),
        "only nodes are restricted"
    );
}

#[test]
fn node_pvc_status_updates_touch_only_capacity_and_conditions() {
    let n1 = node_user("n1");
    let old = json!({"metadata": {"name": "data", "resourceVersion": "1", "labels": {"a": "1"}}, "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}});
    let resized = json!({"metadata": {"name": "data", "resourceVersion": "2", "labels": {"a": "1"}}, "status": {"phase": "Bound", "capacity": {"storage": "2Gi"}, "conditions": []}});
    let relabeled = json!({"metadata": {"name": "data", "labels": {"a": "2"}}, "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}});
    let check = |new: &Value| {
        node_restriction(
            &n1,
            "UPDATE",
            "",
            "persistentvolumeclaims",
            "status",
            "app",
            "data",
            Some(&old),
            Some(new),
        )
    };
    assert_eq!(check(&resized), Ok(()));
    assert!(check(&relabeled).unwrap_err().contains(
        "is not allowed to update fields other than status.capacity and status.conditions"
    ));
}

#[test]
fn a_node_publishes_only_its_own_kube_dns_slice() {
    let authorizer = authorizer();
    let n1 = node_user("n1");
    let slices = "endpointslices";
    let group = "discovery.k8s.io";
    for verb in ["get", "patch", "update", "delete"] {
        assert!(
            authorizer
                .authorize(&request(
                    &n1,
                    verb,
                    group,
                    slices,
                    "kube-system",
                    "kube-dns-n1"
                ))
                .allowed(),
            "{verb} its own"
        );
        if verb == "get" {
            // Every node reads every EndpointSlice (the Service proxy).
            continue;
        }
        assert!(
            !authorizer
                .authorize(&request(
                    &n1,
                    verb,
                    group,
                    slices,
                    "kube-system",
                    "kube-dns-n2"
                ))
                .allowed(),
            "{verb} another node's"
        );
    }
    assert!(!authorizer
        .authorize(&request(
            &n1,
            "patch",
            group,
            slices,
            "default",
            "kube-dns-n1"
        ))
        .allowed());
    assert!(authorizer
        .authorize(&request(&n1, "list", group, slices, "", ""))
        .allowed());
}
