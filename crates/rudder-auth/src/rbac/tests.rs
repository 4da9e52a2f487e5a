use serde_json::{json, Value};

use super::*;
use crate::user::{MASTERS, NODES};

fn cluster_role(name: &str, rules: Value) -> Value {
    json!({"metadata": {"name": name}, "rules": rules})
}

fn role(namespace: &str, name: &str, rules: Value) -> Value {
    json!({"metadata": {"namespace": namespace, "name": name}, "rules": rules})
}

fn binding(namespace: &str, name: &str, kind: &str, role: &str, subjects: Value) -> Value {
    json!({
        "metadata": {"namespace": namespace, "name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": subjects,
    })
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

fn path_request(user: &UserInfo, verb: &str, path: &str) -> Attributes {
    Attributes {
        user: user.clone(),
        verb: verb.into(),
        path: path.into(),
        ..Default::default()
    }
}

fn policy() -> RbacPolicy {
    let read_pods = json!([{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}]);
    RbacPolicy::from_objects(
        &[
            role("dev", "pod-reader", read_pods.clone()),
            role(
                "dev",
                "one-config",
                json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get", "update"]}]),
            ),
        ],
        &[
            cluster_role(
                "deployer",
                json!([{"apiGroups": ["apps"], "resources": ["deployments", "*/scale"], "verbs": ["*"]}]),
            ),
            cluster_role(
                "metrics",
                json!([{"nonResourceURLs": ["/metrics", "/debug/*"], "verbs": ["get"]}]),
            ),
            cluster_role(
                "node-reader",
                json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]),
            ),
        ],
        &[
            binding(
                "dev",
                "alice-reads-pods",
                "Role",
                "pod-reader",
                json!([{"kind": "User", "name": "alice"}]),
            ),
            binding(
                "dev",
                "alice-settings",
                "Role",
                "one-config",
                json!([{"kind": "User", "name": "alice"}]),
            ),
            binding(
                "dev",
                "team-deploys",
                "ClusterRole",
                "deployer",
                json!([{"kind": "Group", "name": "team"}]),
            ),
            binding(
                "dev",
                "ci-deploys",
                "ClusterRole",
                "deployer",
                json!([{"kind": "ServiceAccount", "name": "ci", "namespace": "build"}]),
            ),
            binding(
                "dev",
                "local-sa-reads",
                "Role",
                "pod-reader",
                json!([{"kind": "ServiceAccount", "name": "local"}]),
            ),
            binding(
                "dev",
                "dangling",
                "Role",
                "missing",
                json!([{"kind": "User", "name": "carol"}]),
            ),
        ],
        &[
            binding(
                "",
                "ops-metrics",
                "ClusterRole",
                "metrics",
                json!([{"kind": "Group", "name": "ops"}]),
            ),
            binding(
                "",
                "bob-nodes",
                "ClusterRole",
                "node-reader",
                json!([{"kind": "User", "name": "bob"}]),
            ),
            binding(
                "",
                "sa-nodes",
                "ClusterRole",
                "node-reader",
                json!([{"kind": "ServiceAccount", "name": "watcher", "namespace": "mon"}]),
            ),
            binding(
                "",
                "nobody-sa",
                "ClusterRole",
                "node-reader",
                json!([{"kind": "ServiceAccount", "name": "x"}]),
            ),
            binding(
                "",
                "carol-missing",
                "ClusterRole",
                "gone",
                json!([{"kind": "User", "name": "carol"}]),
            ),
        ],
    )
}

#[test]
fn rbac_authorizes_by_bindings_with_kubernetes_scoping() {
    let policy = policy();
    let alice = UserInfo::authenticated("alice", &[]);
    let bob = UserInfo::authenticated("bob", &["team"]);
    let ops = UserInfo::authenticated("dana", &["ops"]);
    let ci = UserInfo::service_account("build", "ci", "u1");
    let local = UserInfo::service_account("dev", "local", "u2");
    let watcher = UserInfo::service_account("mon", "watcher", "u3");
    let x = UserInfo::service_account("dev", "x", "u4");
    let cases: &[(Attributes, bool, &str)] = &[
        (
            request(&alice, "list", "", "pods", "dev", ""),
            true,
            "role in its namespace",
        ),
        (
            request(&alice, "get", "", "pods/log", "dev", "web"),
            true,
            "subresource listed",
        ),
        (
            request(&alice, "list", "", "pods", "prod", ""),
            false,
            "role elsewhere",
        ),
        (
            request(&alice, "list", "", "pods", "", ""),
            false,
            "role across namespaces",
        ),
        (
            request(&alice, "delete", "", "pods", "dev", "web"),
            false,
            "verb",
        ),
        (
            request(&alice, "get", "", "configmaps", "dev", "settings"),
            true,
            "named",
        ),
        (
            request(&alice, "get", "", "configmaps", "dev", "other"),
            false,
            "other name",
        ),
        (
            request(&alice, "list", "", "configmaps", "dev", ""),
            false,
            "names never match lists",
        ),
        (
            request(&bob, "create", "apps", "deployments", "dev", ""),
            true,
            "group, RoleBinding to a ClusterRole",
        ),
        (
            request(&bob, "update", "apps", "deployments/scale", "dev", "web"),
            true,
            "*/scale",
        ),
        (
            request(&bob, "update", "apps", "statefulsets/scale", "dev", "db"),
            true,
            "*/scale any resource",
        ),
        (
            request(&bob, "create", "apps", "deployments", "prod", ""),
            false,
            "ClusterRole via RoleBinding stays in its namespace",
        ),
        (
            request(&bob, "create", "apps", "deployments", "", ""),
            false,
            "nor cluster-wide",
        ),
        (
            request(&bob, "list", "", "nodes", "", ""),
            true,
            "ClusterRoleBinding, cluster scope",
        ),
        (
            request(&bob, "list", "", "nodes", "any", ""),
            true,
            "ClusterRoleBinding, any namespace",
        ),
        (
            request(&ci, "patch", "apps", "deployments", "dev", "web"),
            true,
            "ServiceAccount subject",
        ),
        (
            request(&local, "get", "", "pods", "dev", "web"),
            true,
            "ServiceAccount defaulted to the binding's namespace",
        ),
        (
            request(&watcher, "get", "", "nodes", "", "n1"),
            true,
            "ServiceAccount in a ClusterRoleBinding",
        ),
        (
            request(&x, "get", "", "nodes", "", "n1"),
            false,
            "ServiceAccount without namespace in a ClusterRoleBinding",
        ),
        (
            path_request(&ops, "get", "/metrics"),
            true,
            "non-resource URL",
        ),
        (
            path_request(&ops, "get", "/debug/pprof/heap"),
            true,
            "non-resource URL prefix",
        ),
        (
            path_request(&ops, "post", "/metrics"),
            false,
            "non-resource verb",
        ),
        (path_request(&alice, "get", "/metrics"), false, "no binding"),
    ];
    for (attributes, allowed, why) in cases {
        assert_eq!(policy.authorize(attributes).allowed(), *allowed, "{why}");
    }
}

#[test]
fn rbac_reasons_name_the_binding_or_the_missing_role() {
    let policy = policy();
    let bob = UserInfo::authenticated("bob", &["team"]);
    assert_eq!(
        policy.authorize(&request(&bob, "get", "", "nodes", "", "n1")),
        Decision::Allow(r#"RBAC: allowed by ClusterRoleBinding "bob-nodes" of ClusterRole "node-reader" to User "bob""#.into())
    );
    assert_eq!(
        policy.authorize(&request(&bob, "get", "apps", "deployments", "dev", "web")),
        Decision::Allow(r#"RBAC: allowed by RoleBinding "team-deploys/dev" of ClusterRole "deployer" to Group "team""#.into())
    );
    let local = UserInfo::service_account("dev", "local", "");
    assert_eq!(
        policy
            .authorize(&request(&local, "get", "", "pods", "dev", "web"))
            .reason(),
        r#"RBAC: allowed by RoleBinding "local-sa-reads/dev" of Role "pod-reader" to ServiceAccount "local/dev""#
    );
    let carol = UserInfo::authenticated("carol", &[]);
    assert_eq!(
        policy.authorize(&request(&carol, "get", "", "pods", "dev", "web")),
        Decision::NoOpinion(
            r#"RBAC: [clusterrole.rbac.authorization.k8s.io "gone" not found, role.rbac.authorization.k8s.io "missing" not found]"#.into()
        )
    );
    assert_eq!(
        policy.authorize(&request(&bob, "delete", "", "nodes", "", "n1")),
        Decision::NoOpinion(String::new())
    );
}

#[test]
fn rules_for_lists_cluster_rules_then_the_namespace() {
    let policy = policy();
    let bob = UserInfo::authenticated("bob", &["team"]);
    let rules = policy.rules_for(&bob, "dev");
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].resources, vec!["nodes"]);
    assert_eq!(rules[1].resources, vec!["deployments", "*/scale"]);
    assert_eq!(policy.rules_for(&bob, "prod").len(), 1);
    assert_eq!(policy.rules_for(&bob, "").len(), 1);
}

#[test]
fn escalation_is_refused_with_kubernetes_message() {
    let policy = policy();
    let alice = UserInfo::authenticated("alice", &["devs"]);
    let held = [PolicyRule::new(&["get", "list"])
        .groups(&[""])
        .resources(&["pods"])];
    assert_eq!(policy.confirm_no_escalation(&alice, "dev", &held), Ok(()));
    let named = [PolicyRule::new(&["get"])
        .groups(&[""])
        .resources(&["configmaps"])
        .names(&["settings"])];
    assert_eq!(policy.confirm_no_escalation(&alice, "dev", &named), Ok(()));
    assert!(
        policy.confirm_no_escalation(&alice, "prod", &held).is_err(),
        "held in dev only"
    );
    let more = [
        PolicyRule::new(&["get", "delete"])
            .groups(&[""])
            .resources(&["pods"]),
        PolicyRule::new(&["get"])
            .groups(&[""])
            .resources(&["configmaps"]),
        PolicyRule::new(&["get"]).urls(&["/metrics"]),
    ];
    assert_eq!(
        policy.confirm_no_escalation(&alice, "dev", &more),
        Err("user \"alice\" (groups=[\"devs\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n\
             {APIGroups:[\"\"], Resources:[\"configmaps\"], Verbs:[\"get\"]}\n\
             {APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}\n\
             {NonResourceURLs:[\"/metrics\"], Verbs:[\"get\"]}"
            .into())
    );
    let carol = UserInfo::authenticated("carol", &[]);
    let error = policy
        .confirm_no_escalation(&carol, "dev", &held)
        .unwrap_err();
    assert!(
        error.ends_with(
            "; resolution errors: [[clusterrole.rbac.authorization.k8s.io \"gone\" not found, role.rbac.authorization.k8s.io \"missing\" not found]]"
        ),
        "{error}"
    );
}

fn bootstrap() -> RbacPolicy {
    RbacPolicy::from_objects(
        &[],
        &bootstrap_cluster_roles(),
        &[],
        &bootstrap_cluster_role_bindings(),
    )
}

#[test]
fn bootstrap_policy_grants_the_default_roles() {
    let mut cluster_role_bindings = bootstrap_cluster_role_bindings();
    let bindings = vec![
        binding(
            "team",
            "viewers",
            "ClusterRole",
            "view",
            json!([{"kind": "User", "name": "viewer"}]),
        ),
        binding(
            "team",
            "editors",
            "ClusterRole",
            "edit",
            json!([{"kind": "User", "name": "editor"}]),
        ),
        binding(
            "team",
            "admins",
            "ClusterRole",
            "admin",
            json!([{"kind": "User", "name": "admin"}]),
        ),
    ];
    cluster_role_bindings.push(binding(
        "",
        "auditors",
        "ClusterRole",
        "view",
        json!([{"kind": "Group", "name": "auditors"}]),
    ));
    let policy = RbacPolicy::from_objects(
        &[],
        &bootstrap_cluster_roles(),
        &bindings,
        &cluster_role_bindings,
    );
    let viewer = UserInfo::authenticated("viewer", &[]);
    let editor = UserInfo::authenticated("editor", &[]);
    let admin = UserInfo::authenticated("admin", &[]);
    let master = UserInfo::authenticated("root", &[MASTERS]);
    let anyone = UserInfo::authenticated("someone", &[]);
    let anonymous = UserInfo {
        username: "system:anonymous".into(),
        groups: vec!["system:unauthenticated".into()],
        ..Default::default()
    };
    let auditor = UserInfo::authenticated("ann", &["auditors"]);
    let controllers = UserInfo::authenticated("system:kube-controller-manager", &[]);
    let scheduler = UserInfo::authenticated("system:kube-scheduler", &[]);
    let bootstrapper =
        UserInfo::authenticated("system:bootstrap:abcdef", &["system:bootstrappers"]);
    let apiserver = UserInfo::authenticated("system:kube-apiserver", &[]);
    let node = UserInfo::authenticated("system:node:n1", &[NODES]);
    let cases: Vec<(Attributes, bool, &str)> = vec![
        (
            request(&viewer, "get", "apps", "deployments", "team", "web"),
            true,
            "view reads deployments",
        ),
        (
            request(&viewer, "list", "", "pods", "team", ""),
            true,
            "view lists pods",
        ),
        (
            request(&viewer, "get", "", "secrets", "team", "s"),
            false,
            "view does not read secrets",
        ),
        (
            request(&viewer, "create", "", "pods", "team", ""),
            false,
            "view does not write",
        ),
        (
            request(&viewer, "get", "apps", "deployments", "other", "web"),
            false,
            "view is namespaced by its binding",
        ),
        (
            request(&auditor, "list", "apps", "deployments", "", ""),
            true,
            "view cluster-wide",
        ),
        (
            request(&editor, "create", "", "secrets", "team", ""),
            true,
            "edit creates secrets",
        ),
        (
            request(&editor, "get", "", "secrets", "team", "s"),
            true,
            "edit reads secrets",
        ),
        (
            request(&editor, "get", "apps", "deployments", "team", "web"),
            true,
            "edit includes view",
        ),
        (
            request(&editor, "create", "", "pods/exec", "team", "web"),
            true,
            "edit execs",
        ),
        (
            request(
                &editor,
                "create",
                "rbac.authorization.k8s.io",
                "rolebindings",
                "team",
                "",
            ),
            false,
            "edit has no RBAC",
        ),
        (
            request(
                &admin,
                "create",
                "rbac.authorization.k8s.io",
                "rolebindings",
                "team",
                "",
            ),
            true,
            "admin writes RBAC",
        ),
        (
            request(
                &admin,
                "create",
                "authorization.k8s.io",
                "localsubjectaccessreviews",
                "team",
                "",
            ),
            true,
            "admin reviews access",
        ),
        (
            request(&admin, "delete", "", "secrets", "team", "s"),
            true,
            "admin includes edit",
        ),
        (
            request(&admin, "delete", "", "namespaces", "", "team"),
            false,
            "admin is not cluster admin",
        ),
        (
            request(
                &master,
                "escalate",
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                "x",
            ),
            true,
            "masters do anything",
        ),
        (
            path_request(&master, "delete", "/anything"),
            true,
            "masters reach any path",
        ),
        (
            request(
                &anyone,
                "create",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                "",
                "",
            ),
            true,
            "basic-user",
        ),
        (
            request(
                &anyone,
                "create",
                "authorization.k8s.io",
                "selfsubjectrulesreviews",
                "",
                "",
            ),
            true,
            "basic-user rules",
        ),
        (
            request(
                &anyone,
                "create",
                "authentication.k8s.io",
                "selfsubjectreviews",
                "",
                "",
            ),
            true,
            "whoami",
        ),
        (
            path_request(&anyone, "get", "/apis/apps/v1"),
            true,
            "discovery",
        ),
        (
            request(&anyone, "list", "", "pods", "team", ""),
            false,
            "nothing else",
        ),
        (
            path_request(&anonymous, "get", "/version"),
            true,
            "public info",
        ),
        (
            path_request(&anonymous, "get", "/apis"),
            false,
            "discovery is for the authenticated",
        ),
        (
            request(&controllers, "create", "", "pods", "team", ""),
            true,
            "controllers create pods",
        ),
        (
            request(&controllers, "delete", "batch", "jobs", "team", "j"),
            true,
            "garbage collection",
        ),
        (
            request(
                &controllers,
                "deletecollection",
                "",
                "configmaps",
                "team",
                "",
            ),
            true,
            "namespace deletion",
        ),
        (
            request(
                &controllers,
                "update",
                "apps",
                "deployments/scale",
                "team",
                "web",
            ),
            true,
            "autoscaling",
        ),
        (
            request(
                &controllers,
                "escalate",
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                "view",
            ),
            true,
            "aggregation",
        ),
        (
            request(&controllers, "update", "", "services/status", "team", "lb"),
            true,
            "service load balancer",
        ),
        (
            request(
                &controllers,
                "create",
                "networking.k8s.io",
                "ingressclasses",
                "",
                "",
            ),
            true,
            "default IngressClass",
        ),
        (
            request(
                &controllers,
                "sign",
                "certificates.k8s.io",
                "signers",
                "",
                "kubernetes.io/kube-apiserver-client-kubelet",
            ),
            true,
            "CSR signing",
        ),
        (
            request(
                &controllers,
                "get",
                "coordination.k8s.io",
                "leases",
                "kube-system",
                "kube-controller-manager",
            ),
            true,
            "leader election",
        ),
        (
            request(
                &controllers,
                "create",
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                "",
                "",
            ),
            false,
            "controllers do not bind",
        ),
        (
            request(&scheduler, "create", "", "pods/binding", "team", "web"),
            true,
            "scheduler binds",
        ),
        (
            request(
                &scheduler,
                "list",
                "storage.k8s.io",
                "storageclasses",
                "",
                "",
            ),
            true,
            "scheduler reads storage classes",
        ),
        (
            request(
                &scheduler,
                "update",
                "",
                "persistentvolumeclaims",
                "team",
                "data",
            ),
            true,
            "volume scheduler",
        ),
        (
            request(&scheduler, "get", "", "secrets", "team", "s"),
            false,
            "scheduler reads no secrets",
        ),
        (
            request(
                &bootstrapper,
                "create",
                "certificates.k8s.io",
                "certificatesigningrequests",
                "",
                "",
            ),
            true,
            "join tokens file CSRs",
        ),
        (
            request(
                &bootstrapper,
                "create",
                "certificates.k8s.io",
                "certificatesigningrequests/nodeclient",
                "",
                "",
            ),
            true,
            "auto-approval",
        ),
        (
            request(&bootstrapper, "list", "", "nodes", "", ""),
            false,
            "join tokens do nothing else",
        ),
        (
            request(&apiserver, "get", "", "nodes/log", "", "n1"),
            true,
            "API server reaches node logs",
        ),
        (
            request(&node, "get", "", "secrets", "team", "s"),
            false,
            "RBAC gives nodes no secrets",
        ),
        (
            request(&node, "list", "", "configmaps", "", ""),
            false,
            "nor configmaps",
        ),
        (
            request(
                &node,
                "create",
                "certificates.k8s.io",
                "certificatesigningrequests/selfnodeclient",
                "",
                "",
            ),
            true,
            "nodes renew",
        ),
    ];
    for (attributes, allowed, why) in cases {
        assert_eq!(policy.authorize(&attributes).allowed(), allowed, "{why}");
    }
}

#[test]
fn bootstrap_objects_are_labeled_and_annotated_defaults() {
    for object in bootstrap_cluster_roles()
        .iter()
        .chain(&bootstrap_cluster_role_bindings())
    {
        let name = object["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            object["metadata"]["labels"][bootstrap::BOOTSTRAPPING_LABEL],
            "rbac-defaults",
            "{name}"
        );
        assert_eq!(
            object["metadata"]["annotations"][bootstrap::AUTOUPDATE_ANNOTATION],
            "true",
            "{name}"
        );
    }
    let roles = bootstrap_cluster_roles();
    let names: Vec<&str> = roles
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap())
        .collect();
    let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "role names are unique");
    for binding in bootstrap_cluster_role_bindings() {
        let role = binding["roleRef"]["name"].as_str().unwrap();
        assert!(unique.contains(role), "{role} is a bootstrap role");
    }
    // The filled-in aggregated roles are what the controller would write.
    for role in &roles {
        if let Some(rules) = aggregated_rules(role, &roles) {
            assert_eq!(
                role["rules"],
                Value::Array(rules),
                "{}",
                role["metadata"]["name"]
            );
        }
    }
}

#[test]
fn the_bootstrap_policy_is_queried_without_errors() {
    let policy = bootstrap();
    let someone = UserInfo::authenticated("someone", &[]);
    assert!(policy
        .authorize(&request(&someone, "get", "", "pods", "x", "y"))
        .reason()
        .is_empty());
}
