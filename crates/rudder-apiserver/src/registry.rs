//! The resources the server serves: their group, version, kind, names,
//! scope and subresources, as discovery reports them and as request paths
//! name them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// One served resource (one group/version/resource).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The plural name used in paths: `pods`.
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources served beside the resource: `status`, `scale`, …
    pub subresources: Vec<String>,
    /// Verbs a client may use (discovery's `verbs`).
    pub verbs: Vec<String>,
    /// Columns `kubectl get` shows for custom resources (the CRD's
    /// `additionalPrinterColumns`); built-in kinds have theirs in `table`.
    pub printer_columns: Vec<PrinterColumn>,
    /// Served by a CustomResourceDefinition.
    pub custom: bool,
}

/// One `additionalPrinterColumns` entry of a CRD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrinterColumn {
    pub name: String,
    pub kind: String,
    pub json_path: String,
    pub priority: u8,
    pub description: String,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `deployments.apps`: how error messages name the resource.
    pub fn qualified_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s == name)
    }

    /// The store key prefix of every object of this resource; within it,
    /// `namespace/name` (or `name` for cluster-scoped resources). All
    /// versions of a group/resource share storage.
    pub fn key_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/{}/", self.plural)
        } else {
            format!("/{}.{}/", self.plural, self.group)
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// The prefix of one namespace's objects, or of all of them.
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }
}

/// Resources by (group, version, plural).
type ResourceMap = BTreeMap<(String, String, String), Arc<ResourceInfo>>;

/// All served resources, keyed by group, version and plural. Built-in
/// resources are registered at start; custom resources come and go with
/// their definitions.
#[derive(Clone, Default)]
pub struct Registry {
    resources: Arc<RwLock<ResourceMap>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let registry = Registry::default();
        for info in builtin_resources().chain(crate::metrics::resources()) {
            registry.add(info);
        }
        registry
    }

    pub fn add(&self, info: ResourceInfo) {
        let key = (
            info.group.clone(),
            info.version.clone(),
            info.plural.clone(),
        );
        self.resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::new(info));
    }

    pub fn remove(&self, group: &str, version: &str, plural: &str) {
        self.resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(group.to_owned(), version.to_owned(), plural.to_owned()));
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .cloned()
    }

    /// Every resource, in group, version, plural order.
    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The versions served for each group, preferred (first registered
    /// stable) version first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for info in self.all() {
            match groups.iter_mut().find(|(g, _)| *g == info.group) {
                Some((_, versions)) => {
                    if !versions.contains(&info.version) {
                        versions.push(info.version.clone());
                    }
                }
                None => groups.push((info.group.clone(), vec![info.version.clone()])),
            }
        }
        for (_, versions) in &mut groups {
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        groups
    }
}

/// Kubernetes' version ordering: GA before beta before alpha, higher
/// numbers first.
fn version_priority(version: &str) -> (u8, u32, u32) {
    let rest = version.trim_start_matches('v');
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let level = if tail.is_empty() {
        3
    } else if tail.starts_with("beta") {
        2
    } else if tail.starts_with("alpha") {
        1
    } else {
        0
    };
    let minor = tail
        .trim_start_matches("beta")
        .trim_start_matches("alpha")
        .parse()
        .unwrap_or(0);
    (level, major, minor)
}

/// The verbs of an ordinary resource.
pub(crate) const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
}

#[allow(clippy::too_many_arguments)]
const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
) -> Builtin {
    Builtin {
        group,
        version,
        kind,
        plural,
        namespaced,
        short,
        categories,
        subresources,
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];
const STATUS: &[&str] = &["status"];

/// The built-in resources, with the names, scopes and subresources
/// kube-apiserver 1.32 reports for them.
const BUILTINS: &[Builtin] = &[
    b(
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        &["ns"],
        NONE,
        &["status", "finalize"],
    ),
    b(
        "",
        "v1",
        "Pod",
        "pods",
        true,
        &["po"],
        ALL,
        &[
            "status",
            "binding",
            "eviction",
            "log",
            "exec",
            "attach",
            "portforward",
            "ephemeralcontainers",
        ],
    ),
    b("", "v1", "Binding", "bindings", true, NONE, NONE, NONE),
    b(
        "",
        "v1",
        "Node",
        "nodes",
        false,
        &["no"],
        NONE,
        &["status", "proxy"],
    ),
    b(
        "",
        "v1",
        "Service",
        "services",
        true,
        &["svc"],
        ALL,
        &["status", "proxy"],
    ),
    b(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        true,
        &["ep"],
        NONE,
        NONE,
    ),
    b(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        true,
        &["cm"],
        NONE,
        NONE,
    ),
    b("", "v1", "Secret", "secrets", true, NONE, NONE, NONE),
    b("", "v1", "Event", "events", true, &["ev"], NONE, NONE),
    b(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        &["sa"],
        NONE,
        &["token"],
    ),
    b(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        false,
        &["pv"],
        NONE,
        STATUS,
    ),
    b(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
        &["pvc"],
        NONE,
        STATUS,
    ),
    b(
        "",
        "v1",
        "LimitRange",
        "limitranges",
        true,
        &["limits"],
        NONE,
        NONE,
    ),
    b(
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        true,
        &["quota"],
        NONE,
        STATUS,
    ),
    b(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        true,
        &["rc"],
        ALL,
        &["status", "scale"],
    ),
    b(
        "",
        "v1",
        "PodTemplate",
        "podtemplates",
        true,
        NONE,
        NONE,
        NONE,
    ),
    b(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        &["deploy"],
        ALL,
        &["status", "scale"],
    ),
    b(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        &["rs"],
        ALL,
        &["status", "scale"],
    ),
    b(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        true,
        &["sts"],
        ALL,
        &["status", "scale"],
    ),
    b(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        true,
        &["ds"],
        ALL,
        STATUS,
    ),
    b(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
        NONE,
        NONE,
        NONE,
    ),
    b("batch", "v1", "Job", "jobs", true, NONE, ALL, STATUS),
    b(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        true,
        &["cj"],
        ALL,
        STATUS,
    ),
    b(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        &["hpa"],
        ALL,
        STATUS,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        true,
        NONE,
        NONE,
        NONE,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        NONE,
        NONE,
        NONE,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
        NONE,
        NONE,
        NONE,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        NONE,
        NONE,
        NONE,
    ),
    b(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        false,
        &["pc"],
        NONE,
        NONE,
    ),
    b(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        false,
        &["sc"],
        NONE,
        NONE,
    ),
    b(
        "storage.k8s.io",
        "v1",
        "CSINode",
        "csinodes",
        false,
        NONE,
        NONE,
        NONE,
    ),
    b(
        "storage.k8s.io",
        "v1",
        "VolumeAttachment",
        "volumeattachments",
        false,
        NONE,
        NONE,
        STATUS,
    ),
    b(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        NONE,
        NONE,
        NONE,
    ),
    b(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
        NONE,
        NONE,
        NONE,
    ),
    b(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        NONE,
        NONE,
    ),
    b(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        true,
        &["ing"],
        NONE,
        STATUS,
    ),
    b(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        false,
        NONE,
        NONE,
        NONE,
    ),
    b(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        true,
        &["netpol"],
        NONE,
        NONE,
    ),
    b(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        &["pdb"],
        NONE,
        STATUS,
    ),
    b(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        false,
        &["csr"],
        NONE,
        &["status", "approval"],
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
        NONE,
        &["api-extensions"],
        NONE,
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
        NONE,
        &["api-extensions"],
        NONE,
    ),
    b(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        &["api-extensions"],
        STATUS,
    ),
];

fn builtin_resources() -> impl Iterator<Item = ResourceInfo> {
    BUILTINS.iter().map(|r| {
        let verbs: Vec<String> = match r.plural {
            // A binding can only be created.
            "bindings" => vec!["create".into()],
            _ => ALL_VERBS.iter().map(|v| v.to_string()).collect(),
        };
        ResourceInfo {
            group: r.group.into(),
            version: r.version.into(),
            kind: r.kind.into(),
            plural: r.plural.into(),
            singular: r.kind.to_lowercase(),
            namespaced: r.namespaced,
            short_names: r.short.iter().map(|s| s.to_string()).collect(),
            categories: r.categories.iter().map(|s| s.to_string()).collect(),
            subresources: r.subresources.iter().map(|s| s.to_string()).collect(),
            verbs,
            printer_columns: Vec::new(),
            custom: false,
        }
    })
}

/// The reviews: `create` only, answered by `auth` (on a secured server)
/// and never stored, so they are not in the registry; discovery and OpenAPI
/// list them.
pub(crate) fn review_resources() -> Vec<ResourceInfo> {
    let review = |group: &str, kind: &str, plural: &str, namespaced: bool| ResourceInfo {
        group: group.into(),
        version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        subresources: Vec::new(),
        verbs: vec!["create".into()],
        printer_columns: Vec::new(),
        custom: false,
    };
    const AUTHN: &str = "authentication.k8s.io";
    const AUTHZ: &str = "authorization.k8s.io";
    vec![
        review(AUTHN, "TokenReview", "tokenreviews", false),
        review(AUTHN, "SelfSubjectReview", "selfsubjectreviews", false),
        review(
            AUTHZ,
            "LocalSubjectAccessReview",
            "localsubjectaccessreviews",
            true,
        ),
        review(
            AUTHZ,
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            false,
        ),
        review(
            AUTHZ,
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
            false,
        ),
        review(AUTHZ, "SubjectAccessReview", "subjectaccessreviews", false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_found_by_group_version_and_plural() {
        let registry = Registry::with_builtins();
        let pods = registry.get("", "v1", "pods").unwrap();
        assert_eq!((pods.kind.as_str(), pods.namespaced), ("Pod", true));
        assert_eq!(pods.key(Some("default"), "web"), "/pods/default/web");
        let deploy = registry.get("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.qualified_name(), "deployments.apps");
        assert_eq!(deploy.key(Some("ns"), "d"), "/deployments.apps/ns/d");
        let nodes = registry.get("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(Some("ignored"), "n1"), "/nodes/n1");
        assert!(registry.get("apps", "v1", "pods").is_none());
    }

    #[test]
    fn groups_list_their_preferred_version_first() {
        let registry = Registry::with_builtins();
        let groups = registry.groups();
        let apps = groups.iter().find(|(g, _)| g == "apps").unwrap();
        assert_eq!(apps.1, vec!["v1".to_string()]);
        assert_eq!(groups[0].0, "", "the core group comes first");
        assert!(version_priority("v1") > version_priority("v2beta1"));
        assert!(version_priority("v1beta2") > version_priority("v1beta1"));
        assert!(version_priority("v1beta1") > version_priority("v1alpha1"));
    }
}
