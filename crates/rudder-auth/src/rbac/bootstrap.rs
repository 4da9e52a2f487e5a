//! The default policy: Kubernetes' bootstrap ClusterRoles and
//! ClusterRoleBindings, with the rules Rudder's own components need.
//!
//! Rudder runs every controller under one identity,
//! `system:kube-controller-manager` (no per-controller ServiceAccounts),
//! so its role is the union of Kubernetes' `system:controller:*` roles.
//! Node agents are authorized by the Node authorizer
//! ([`crate::node::NodeAuthorizer`]); the `system:node` role exists, as
//! upstream, but its binding has no subjects, and it holds no Secret or
//! ConfigMap reads.

use serde_json::{json, Value};

use super::aggregation::aggregated_rules;
use super::rule::PolicyRule;
use crate::user::{AUTHENTICATED, MASTERS, NODES, SERVICE_ACCOUNTS, UNAUTHENTICATED};

/// The label every default object carries.
pub const BOOTSTRAPPING_LABEL: &str = "kubernetes.io/bootstrapping";
pub const BOOTSTRAPPING_VALUE: &str = "rbac-defaults";
/// Default objects the API server may reconcile back to their defaults.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";
pub const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
pub const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
pub const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The user the controllers run as, and the scheduler's.
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
/// The API server's client identity towards node agents.
pub const APISERVER_USER: &str = "system:kube-apiserver";
/// Join-token users' group, before a node has its certificate.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const EVENT_WRITE: &[&str] = &["create", "patch", "update"];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule::new(verbs).groups(groups).resources(resources)
}

fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    PolicyRule::new(verbs).urls(urls)
}

fn events() -> PolicyRule {
    rule(EVENT_WRITE, &["", "events.k8s.io"], &["events"])
}

fn metadata(name: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(BOOTSTRAPPING_LABEL.into(), BOOTSTRAPPING_VALUE.into());
    for (key, value) in extra_labels {
        labels.insert(key.to_string(), Value::String(value.to_string()));
    }
    json!({
        "name": name,
        "labels": labels,
        "annotations": {AUTOUPDATE_ANNOTATION: "true"},
    })
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": metadata(name, labels),
        "rules": rules.iter().map(PolicyRule::to_value).collect::<Vec<_>>(),
    })
}

/// An aggregated role, its rules left empty for [`bootstrap_cluster_roles`]
/// to fill.
fn aggregated_role(name: &str, labels: &[(&str, &str)], selected_by: &str) -> Value {
    let mut role = cluster_role(name, labels, Vec::new());
    role["aggregationRule"] =
        json!({"clusterRoleSelectors": [{"matchLabels": {selected_by: "true"}}]});
    role
}

/// A subject: `("Group", "system:masters")`, `("User", "x")`.
fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, name)| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}))
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": metadata(name, &[]),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// What a node agent may do beyond the objects its pods use (those the
/// Node authorizer decides from the graph): upstream's `system:node`
/// rules without Secret, ConfigMap, PVC and PV reads, plus what Rudder's
/// agent needs to run the node's network services (Service proxy, DNS,
/// NetworkPolicy, Ingress). Leases and CSINodes are not here: the Node
/// authorizer allows only the node's own.
pub fn node_rules() -> Vec<PolicyRule> {
    vec![
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews", "subjectaccessreviews"],
        ),
        rule(READ, &[""], &["services", "endpoints"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            &["create", "get", "list", "watch", "patch", "update"],
            &[""],
            &["nodes"],
        ),
        rule(&["patch", "update"], &[""], &["nodes/status"]),
        events(),
        rule(READ, &[""], &["pods"]),
        // Mirror pods; NodeRestriction admits only the node's own.
        rule(&["create", "delete"], &[""], &["pods"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        rule(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        rule(READ, &["storage.k8s.io"], &["csidrivers"]),
        rule(READ, &["node.k8s.io"], &["runtimeclasses"]),
        // The node's network services.
        rule(READ, &[""], &["namespaces"]),
        rule(
            READ,
            &["networking.k8s.io"],
            &["networkpolicies", "ingresses", "ingressclasses"],
        ),
    ]
}

/// The view role's own rules (upstream's `system:aggregate-to-view`):
/// reads of everything in a namespace but Secrets and RBAC.
fn aggregate_to_view() -> Vec<PolicyRule> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[""],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "controllerrevisions",
            ],
        ),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["jobs", "cronjobs", "cronjobs/status", "jobs/status"],
        ),
        rule(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
    ]
}

/// The edit role's own rules (upstream's `system:aggregate-to-edit`):
/// writes of the same, Secrets, exec and impersonating ServiceAccounts.
fn aggregate_to_edit() -> Vec<PolicyRule> {
    vec![
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
            ],
        ),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            WRITE,
            &[""],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &["apps"],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["jobs", "cronjobs"]),
        rule(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        rule(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
        // Upstream grants these reads to edit (not view): Secrets, and the
        // pod and service proxies.
        rule(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
                "secrets",
                "services/proxy",
            ],
        ),
    ]
}

/// The admin role's own rules (upstream's `system:aggregate-to-admin`):
/// the namespace's RBAC.
fn aggregate_to_admin() -> Vec<PolicyRule> {
    vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(
            READ_WRITE,
            &["rbac.authorization.k8s.io"],
            &["roles", "rolebindings"],
        ),
    ]
}

/// Upstream's `system:kube-scheduler` and `system:volume-scheduler`, plus
/// the StorageClasses Rudder's scheduler reads for volume binding.
fn scheduler_rules() -> Vec<PolicyRule> {
    vec![
        events(),
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        rule(&["get", "update"], &["coordination.k8s.io"], &["leases"]).names(&["kube-scheduler"]),
        rule(READ, &[""], &["nodes"]),
        rule(&["delete", "get", "list", "watch"], &[""], &["pods"]),
        rule(&["create"], &[""], &["bindings", "pods/binding"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(READ, &[""], &["replicationcontrollers", "services"]),
        rule(READ, &["apps", "extensions"], &["replicasets"]),
        rule(READ, &["apps"], &["statefulsets"]),
        rule(READ, &["policy"], &["poddisruptionbudgets"]),
        rule(
            READ,
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        rule(READ, &["storage.k8s.io"], &["csinodes"]),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["storage.k8s.io"], &["csidrivers"]),
        rule(READ, &["storage.k8s.io"], &["csistoragecapacities"]),
        rule(READ, &["storage.k8s.io"], &["storageclasses"]),
    ]
}

/// `system:volume-scheduler`, bound to the scheduler as upstream.
fn volume_scheduler_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["get", "list", "patch", "update", "watch"],
            &[""],
            &["persistentvolumes"],
        ),
        rule(READ, &["storage.k8s.io"], &["storageclasses"]),
        rule(
            &["get", "list", "patch", "update", "watch"],
            &[""],
            &["persistentvolumeclaims"],
        ),
    ]
}

/// The union of upstream's `system:kube-controller-manager` and every
/// `system:controller:*` role of the controllers Rudder runs, plus what
/// Rudder's own controllers write (Service and Ingress status, the
/// default IngressClass, local-path volumes).
fn controller_manager_rules() -> Vec<PolicyRule> {
    let scale = &["*/scale"];
    vec![
        events(),
        // Leader election (kube-system/kube-controller-manager).
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        rule(&["get", "update"], &["coordination.k8s.io"], &["leases"])
            .names(&["kube-controller-manager"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        // generic-garbage-collector, resourcequota-controller.
        rule(
            &["delete", "get", "list", "patch", "update", "watch"],
            &["*"],
            &["*"],
        ),
        // namespace-controller.
        rule(
            &["delete", "deletecollection", "get", "list", "watch"],
            &["*"],
            &["*"],
        ),
        rule(
            &["update"],
            &[""],
            &["namespaces/finalize", "namespaces/status"],
        ),
        // service-account-controller, root-ca-cert-publisher.
        rule(
            &["create"],
            &[""],
            &["serviceaccounts", "configmaps", "secrets"],
        ),
        // replicaset, replication, job, daemonset, statefulset,
        // persistent-volume-binder: their pods.
        rule(&["create"], &[""], &["pods"]),
        rule(&["create"], &[""], &["pods/binding"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(&["update"], &[""], &["pods/finalizers"]),
        // deployment, replicaset.
        rule(&["create"], &["apps", "extensions"], &["replicasets"]),
        rule(
            &["update"],
            &["apps", "extensions"],
            &[
                "deployments/status",
                "deployments/finalizers",
                "replicasets/status",
                "replicasets/finalizers",
                "daemonsets/status",
                "daemonsets/finalizers",
            ],
        ),
        rule(
            &["update"],
            &[""],
            &[
                "replicationcontrollers/status",
                "replicationcontrollers/finalizers",
            ],
        ),
        // daemonset, statefulset: history.
        rule(&["create"], &["apps"], &["controllerrevisions"]),
        rule(
            &["update"],
            &["apps"],
            &["statefulsets/status", "statefulsets/finalizers"],
        ),
        rule(&["create"], &[""], &["persistentvolumeclaims"]),
        // job, cronjob, ttl-after-finished.
        rule(&["create"], &["batch"], &["jobs"]),
        rule(
            &["update"],
            &["batch"],
            &[
                "jobs/status",
                "jobs/finalizers",
                "cronjobs/status",
                "cronjobs/finalizers",
            ],
        ),
        // node-controller, node-ipam, pod-garbage-collector.
        rule(&["patch", "update"], &[""], &["nodes/status"]),
        // endpoint, endpointslice.
        rule(&["create"], &[""], &["endpoints"]),
        rule(&["create"], &[""], &["endpoints/restricted"]),
        rule(
            &["update"],
            &[""],
            &["services/finalizers", "endpoints/finalizers"],
        ),
        rule(&["create"], &["discovery.k8s.io"], &["endpointslices"]),
        // persistent-volume-binder, expand, pv/pvc-protection, local-path.
        rule(&["create"], &[""], &["persistentvolumes"]),
        rule(
            &["update", "patch"],
            &[""],
            &["persistentvolumes/status", "persistentvolumeclaims/status"],
        ),
        // resourcequota, disruption, horizontal-pod-autoscaler.
        rule(&["update"], &[""], &["resourcequotas/status"]),
        rule(&["update"], &["policy"], &["poddisruptionbudgets/status"]),
        rule(&["get", "update"], &["*"], scale),
        rule(
            &["update"],
            &["autoscaling"],
            &["horizontalpodautoscalers/status"],
        ),
        rule(READ, &["metrics.k8s.io"], &["pods"]),
        rule(
            READ,
            &["custom.metrics.k8s.io", "external.metrics.k8s.io"],
            &["*"],
        ),
        // clusterrole-aggregation: writing rules it does not hold.
        rule(
            &["escalate", "get", "list", "patch", "update", "watch"],
            &["rbac.authorization.k8s.io"],
            &["clusterroles"],
        ),
        // certificate-controller: approving node CSRs, signing them all.
        rule(
            &["update"],
            &["certificates.k8s.io"],
            &[
                "certificatesigningrequests/approval",
                "certificatesigningrequests/status",
            ],
        ),
        // Rudder approves nodes' serving certificates too (as k3s signs
        // them), after the same SubjectAccessReview.
        rule(&["approve"], &["certificates.k8s.io"], &["signers"]).names(&[
            "kubernetes.io/kube-apiserver-client-kubelet",
            "kubernetes.io/kubelet-serving",
        ]),
        rule(&["sign"], &["certificates.k8s.io"], &["signers"]).names(&[
            "kubernetes.io/kube-apiserver-client",
            "kubernetes.io/kube-apiserver-client-kubelet",
            "kubernetes.io/kubelet-serving",
            "kubernetes.io/legacy-unknown",
        ]),
        // attachdetach.
        rule(&["create"], &["storage.k8s.io"], &["volumeattachments"]),
        // Rudder's service load balancer and ingress controllers.
        rule(&["patch", "update"], &[""], &["services/status"]),
        rule(
            &["patch", "update"],
            &["networking.k8s.io"],
            &["ingresses/status"],
        ),
        rule(&["create"], &["networking.k8s.io"], &["ingressclasses"]),
        // Rudder's local-path provisioner: its default StorageClass.
        rule(&["create"], &["storage.k8s.io"], &["storageclasses"]),
    ]
}

fn certificate_approver(name: &str, signer: &str) -> Value {
    cluster_role(
        name,
        &[],
        vec![rule(&["approve"], &["certificates.k8s.io"], &["signers"]).names(&[signer])],
    )
}

/// The default ClusterRoles. `admin`, `edit` and `view` come with their
/// aggregated rules already filled in (the clusterrole-aggregation
/// controller keeps them up to date), so the policy works before any
/// controller runs.
pub fn bootstrap_cluster_roles() -> Vec<Value> {
    let mut roles = vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(
                &["get"],
                &["/.well-known/openid-configuration", "/openid/v1/jwks"],
            )],
        ),
        aggregated_role("admin", &[], AGGREGATE_TO_ADMIN),
        aggregated_role("edit", &[(AGGREGATE_TO_ADMIN, "true")], AGGREGATE_TO_EDIT),
        aggregated_role("view", &[(AGGREGATE_TO_EDIT, "true")], AGGREGATE_TO_VIEW),
        cluster_role(
            "system:aggregate-to-admin",
            &[(AGGREGATE_TO_ADMIN, "true")],
            aggregate_to_admin(),
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(AGGREGATE_TO_EDIT, "true")],
            aggregate_to_edit(),
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[(AGGREGATE_TO_VIEW, "true")],
            aggregate_to_view(),
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        cluster_role("system:node", &[], node_rules()),
        cluster_role(
            "system:node-bootstrapper",
            &[],
            vec![rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[],
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[],
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        certificate_approver(
            "system:certificates.k8s.io:kube-apiserver-client-approver",
            "kubernetes.io/kube-apiserver-client",
        ),
        certificate_approver(
            "system:certificates.k8s.io:kube-apiserver-client-kubelet-approver",
            "kubernetes.io/kube-apiserver-client-kubelet",
        ),
        certificate_approver(
            "system:certificates.k8s.io:kubelet-serving-approver",
            "kubernetes.io/kubelet-serving",
        ),
        certificate_approver(
            "system:certificates.k8s.io:legacy-unknown-approver",
            "kubernetes.io/legacy-unknown",
        ),
        cluster_role(
            "system:kubelet-api-admin",
            &[],
            vec![
                rule(READ, &[""], &["nodes"]),
                rule(&["proxy"], &[""], &["nodes"]),
                rule(
                    &["*"],
                    &[""],
                    &["nodes/proxy", "nodes/log", "nodes/stats", "nodes/metrics"],
                ),
            ],
        ),
        cluster_role("system:kube-scheduler", &[], scheduler_rules()),
        cluster_role("system:volume-scheduler", &[], volume_scheduler_rules()),
        cluster_role(
            "system:kube-controller-manager",
            &[],
            controller_manager_rules(),
        ),
    ];
    // Fill the aggregated roles, innermost first: view feeds edit, which
    // feeds admin.
    for name in ["view", "edit", "admin"] {
        let index = roles
            .iter()
            .position(|r| r["metadata"]["name"] == name)
            .expect("the aggregated role is listed");
        let rules = aggregated_rules(&roles[index], &roles).expect("an aggregated role");
        roles[index]["rules"] = Value::Array(rules);
    }
    roles
}

/// The default ClusterRoleBindings: upstream's, and kubeadm's for node
/// join (join tokens may file CSRs; the API server may reach node agents).
pub fn bootstrap_cluster_role_bindings() -> Vec<Value> {
    let group = |name| ("Group", name);
    let user = |name| ("User", name);
    vec![
        binding("cluster-admin", "cluster-admin", &[group(MASTERS)]),
        binding(
            "system:monitoring",
            "system:monitoring",
            &[group("system:monitoring")],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &[group(AUTHENTICATED)],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &[group(AUTHENTICATED)],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[group(AUTHENTICATED), group(UNAUTHENTICATED)],
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &[group(SERVICE_ACCOUNTS)],
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            &[user(CONTROLLER_MANAGER_USER)],
        ),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            &[user(SCHEDULER_USER)],
        ),
        binding(
            "system:volume-scheduler",
            "system:volume-scheduler",
            &[user(SCHEDULER_USER)],
        ),
        // As upstream: no subjects; the Node authorizer grants nodes.
        binding("system:node", "system:node", &[]),
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            &[group(BOOTSTRAPPERS)],
        ),
        binding(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[group(BOOTSTRAPPERS)],
        ),
        binding(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[group(NODES)],
        ),
        binding(
            "system:kubelet-api-admin",
            "system:kubelet-api-admin",
            &[user(APISERVER_USER)],
        ),
    ]
}
