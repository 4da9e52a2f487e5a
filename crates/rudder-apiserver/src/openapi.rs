//! OpenAPI v2 and v3 documents built from the types (k8s-openapi's
//! `schemars` schemas), so `kubectl apply` validation, `kubectl explain`
//! and client generators work, plus the schema checks they enable on the
//! server (unknown fields per `fieldValidation`, JSON types).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{json, Map, Value};

use crate::registry::{Registry, ResourceInfo};

/// Registers the schema of every built-in kind with `gen` and returns the
/// definition name of `(group, version, kind)`.
fn builtin_schema(
    gen: &mut SchemaGenerator,
    group: &str,
    version: &str,
    kind: &str,
) -> Option<String> {
    macro_rules! kinds {
        ($(($g:literal, $v:literal, $k:literal) => $t:ty),* $(,)?) => {
            match (group, version, kind) {
                $(($g, $v, $k) => {
                    gen.subschema_for::<$t>();
                    Some(<$t as schemars::JsonSchema>::schema_name().into_owned())
                })*
                _ => None,
            }
        };
    }
    kinds! {
        ("", "v1", "Namespace") => api::core::v1::Namespace,
        ("", "v1", "Pod") => api::core::v1::Pod,
        ("", "v1", "Binding") => api::core::v1::Binding,
        ("", "v1", "Node") => api::core::v1::Node,
        ("", "v1", "Service") => api::core::v1::Service,
        ("", "v1", "Endpoints") => api::core::v1::Endpoints,
        ("", "v1", "ConfigMap") => api::core::v1::ConfigMap,
        ("", "v1", "Secret") => api::core::v1::Secret,
        ("", "v1", "Event") => api::core::v1::Event,
        ("", "v1", "ServiceAccount") => api::core::v1::ServiceAccount,
        ("", "v1", "PersistentVolume") => api::core::v1::PersistentVolume,
        ("", "v1", "PersistentVolumeClaim") => api::core::v1::PersistentVolumeClaim,
        ("", "v1", "LimitRange") => api::core::v1::LimitRange,
        ("", "v1", "ResourceQuota") => api::core::v1::ResourceQuota,
        ("", "v1", "ReplicationController") => api::core::v1::ReplicationController,
        ("", "v1", "PodTemplate") => api::core::v1::PodTemplate,
        ("apps", "v1", "Deployment") => api::apps::v1::Deployment,
        ("apps", "v1", "ReplicaSet") => api::apps::v1::ReplicaSet,
        ("apps", "v1", "StatefulSet") => api::apps::v1::StatefulSet,
        ("apps", "v1", "DaemonSet") => api::apps::v1::DaemonSet,
        ("apps", "v1", "ControllerRevision") => api::apps::v1::ControllerRevision,
        ("batch", "v1", "Job") => api::batch::v1::Job,
        ("batch", "v1", "CronJob") => api::batch::v1::CronJob,
        ("autoscaling", "v1", "Scale") => api::autoscaling::v1::Scale,
        ("autoscaling", "v2", "HorizontalPodAutoscaler") => api::autoscaling::v2::HorizontalPodAutoscaler,
        ("rbac.authorization.k8s.io", "v1", "Role") => api::rbac::v1::Role,
        ("rbac.authorization.k8s.io", "v1", "RoleBinding") => api::rbac::v1::RoleBinding,
        ("rbac.authorization.k8s.io", "v1", "ClusterRole") => api::rbac::v1::ClusterRole,
        ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding") => api::rbac::v1::ClusterRoleBinding,
        ("scheduling.k8s.io", "v1", "PriorityClass") => api::scheduling::v1::PriorityClass,
        ("storage.k8s.io", "v1", "StorageClass") => api::storage::v1::StorageClass,
        ("storage.k8s.io", "v1", "CSINode") => api::storage::v1::CSINode,
        ("storage.k8s.io", "v1", "VolumeAttachment") => api::storage::v1::VolumeAttachment,
        ("coordination.k8s.io", "v1", "Lease") => api::coordination::v1::Lease,
        ("discovery.k8s.io", "v1", "EndpointSlice") => api::discovery::v1::EndpointSlice,
        ("events.k8s.io", "v1", "Event") => api::events::v1::Event,
        ("networking.k8s.io", "v1", "Ingress") => api::networking::v1::Ingress,
        ("networking.k8s.io", "v1", "IngressClass") => api::networking::v1::IngressClass,
        ("networking.k8s.io", "v1", "NetworkPolicy") => api::networking::v1::NetworkPolicy,
        ("policy", "v1", "PodDisruptionBudget") => api::policy::v1::PodDisruptionBudget,
        ("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration") => api::admissionregistration::v1::MutatingWebhookConfiguration,
        ("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration") => api::admissionregistration::v1::ValidatingWebhookConfiguration,
        ("apiextensions.k8s.io", "v1", "CustomResourceDefinition") => apiextensions::CustomResourceDefinition,
        ("authentication.k8s.io", "v1", "TokenReview") => api::authentication::v1::TokenReview,
        ("authentication.k8s.io", "v1", "SelfSubjectReview") => api::authentication::v1::SelfSubjectReview,
        ("authorization.k8s.io", "v1", "LocalSubjectAccessReview") => api::authorization::v1::LocalSubjectAccessReview,
        ("authorization.k8s.io", "v1", "SelfSubjectAccessReview") => api::authorization::v1::SelfSubjectAccessReview,
        ("authorization.k8s.io", "v1", "SelfSubjectRulesReview") => api::authorization::v1::SelfSubjectRulesReview,
        ("authorization.k8s.io", "v1", "SubjectAccessReview") => api::authorization::v1::SubjectAccessReview,
    }
}

/// The patch strategies and list types of the built-in types' list fields
/// (the `patchStrategy`/`patchMergeKey`/`listType` tags of the Kubernetes
/// API types), which k8s-openapi's schemas leave out. kubectl's client-side
/// apply reads them to merge lists by key instead of replacing them.
/// (definition, property, merge key, strategy, list-map keys)
const LIST_STRATEGIES: &[(&str, &str, &str, &str, &[&str])] = &[
    (
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        "name",
        "merge",
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        "name",
        "merge",
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        "name",
        "merge",
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        "name",
        "merge,retainKeys",
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        "name",
        "merge",
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "hostAliases",
        "ip",
        "merge",
        &["ip"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "topologyKey",
        "merge",
        &["topologyKey", "whenUnsatisfiable"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        "name",
        "merge",
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        "name",
        "merge,retainKeys",
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        "containerPort",
        "merge",
        &["containerPort", "protocol"],
    ),
    (
        "io.k8s.api.core.v1.Container",
        "env",
        "name",
        "merge",
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        "mountPath",
        "merge",
        &["mountPath"],
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "devicePath",
        "merge",
        &["devicePath"],
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        "containerPort",
        "merge",
        &["containerPort", "protocol"],
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        "name",
        "merge",
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "mountPath",
        "merge",
        &["mountPath"],
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        "devicePath",
        "merge",
        &["devicePath"],
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        "port",
        "merge",
        &["port", "protocol"],
    ),
    (
        "io.k8s.api.core.v1.ServiceAccount",
        "secrets",
        "name",
        "merge",
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        "type",
        "merge",
        &["type"],
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "podIPs",
        "ip",
        "merge",
        &["ip"],
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        "type",
        "merge",
        &["type"],
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        "type",
        "merge",
        &["type"],
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        "type",
        "merge",
        &["type"],
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        "type",
        "merge",
        &["type"],
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        "type",
        "merge",
        &["type"],
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        "type",
        "merge",
        &["type"],
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetSpec",
        "volumeClaimTemplates",
        "",
        "",
        &[],
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "",
        "merge",
        &[],
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "uid",
        "merge",
        &["uid"],
    ),
];

/// Adds the list strategies to the definitions that have them.
fn annotate_list_strategies(definitions: &mut Map<String, Value>) {
    for (definition, property, key, strategy, map_keys) in LIST_STRATEGIES {
        let Some(prop) = definitions
            .get_mut(*definition)
            .and_then(|d| d.pointer_mut(&format!("/properties/{property}")))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if !key.is_empty() {
            prop.insert("x-kubernetes-patch-merge-key".into(), json!(key));
        }
        if !strategy.is_empty() {
            prop.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
        }
        if map_keys.is_empty() {
            let list_type = if *strategy == "merge" {
                "set"
            } else {
                "atomic"
            };
            prop.insert("x-kubernetes-list-type".into(), json!(list_type));
        } else {
            prop.insert("x-kubernetes-list-type".into(), json!("map"));
            prop.insert("x-kubernetes-list-map-keys".into(), json!(map_keys));
        }
    }
}

/// Definitions whose JSON form is not what their schema says: Kubernetes
/// accepts more (numbers for quantities, anything for raw extensions).
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const OPAQUE: &[&str] = &[
    "io.k8s.apimachinery.pkg.runtime.RawExtension",
    "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps",
];

/// The OpenAPI documents and schemas of everything the server serves.
#[derive(Clone)]
pub struct OpenApi {
    /// `api/v1`, `apis/apps/v1`, … → OpenAPI v3 document, serialized once
    /// (the documents are large and only ever sent whole).
    v3: BTreeMap<String, bytes::Bytes>,
    v2: bytes::Bytes,
    /// Every definition by name, for server-side checks.
    definitions: Arc<Map<String, Value>>,
    /// (group, version, kind) → definition name.
    kinds: Arc<BTreeMap<(String, String, String), String>>,
}

impl OpenApi {
    /// Builds the documents of every resource in `registry`. `custom`
    /// holds the schemas of custom resources by (group, version, kind).
    pub fn build(
        registry: &Registry,
        custom: &BTreeMap<(String, String, String), Value>,
    ) -> OpenApi {
        let mut by_gv: BTreeMap<(String, String), Vec<Arc<ResourceInfo>>> = BTreeMap::new();
        let reviews = crate::registry::review_resources()
            .into_iter()
            .map(Arc::new);
        for info in registry.all().into_iter().chain(reviews) {
            by_gv
                .entry((info.group.clone(), info.version.clone()))
                .or_default()
                .push(info);
        }
        let mut v3 = BTreeMap::new();
        let mut all_definitions = Map::new();
        let mut kinds = BTreeMap::new();
        let mut v2_paths = Map::new();
        for ((group, version), resources) in &by_gv {
            let mut gen = SchemaGenerator::new(SchemaSettings::openapi3());
            let mut names = BTreeMap::new();
            for info in resources {
                let gvk = (group.clone(), version.clone(), info.kind.clone());
                let name = builtin_schema(&mut gen, group, version, &info.kind).or_else(|| {
                    custom
                        .get(&gvk)
                        .map(|_| custom_definition_name(group, version, &info.kind))
                });
                if let Some(name) = name {
                    names.insert(info.kind.clone(), name);
                }
            }
            if resources.iter().any(|r| r.has_subresource("scale")) {
                builtin_schema(&mut gen, "autoscaling", "v1", "Scale");
            }
            let mut definitions = gen.take_definitions(true);
            annotate_list_strategies(&mut definitions);
            for (kind, name) in &names {
                let gvk = (group.clone(), version.clone(), kind.clone());
                if let Some(schema) = custom.get(&gvk) {
                    definitions.insert(name.clone(), schema.clone());
                }
                if let Some(def) = definitions.get_mut(name).and_then(Value::as_object_mut) {
                    def.insert(
                        "x-kubernetes-group-version-kind".into(),
                        json!([{"group": group, "version": version, "kind": kind}]),
                    );
                }
                kinds.insert(gvk, name.clone());
            }
            let prefix = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            let paths = paths(resources, &names);
            for (path, item) in paths.as_object().into_iter().flatten() {
                v2_paths.insert(path.clone(), item.clone());
            }
            let doc = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", crate::KUBERNETES_VERSION.0, crate::KUBERNETES_VERSION.1)},
                "paths": paths,
                "components": {"schemas": definitions},
            });
            for (name, def) in doc["components"]["schemas"]
                .as_object()
                .into_iter()
                .flatten()
            {
                all_definitions.insert(name.clone(), def.clone());
            }
            v3.insert(prefix, serde_json::to_vec(&doc).unwrap_or_default().into());
        }
        let v2_definitions = rewrite_refs(
            &Value::Object(all_definitions.clone()),
            "#/components/schemas/",
            "#/definitions/",
        );
        let v2 = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", crate::KUBERNETES_VERSION.0, crate::KUBERNETES_VERSION.1)},
            "paths": rewrite_refs(&Value::Object(v2_paths), "#/components/schemas/", "#/definitions/"),
            "definitions": v2_definitions,
        });
        OpenApi {
            v3,
            v2: serde_json::to_vec(&v2).unwrap_or_default().into(),
            definitions: Arc::new(all_definitions),
            kinds: Arc::new(kinds),
        }
    }

    /// `/openapi/v3`: where each group-version document is.
    pub fn v3_index(&self) -> Value {
        let paths: Map<String, Value> = self
            .v3
            .iter()
            .map(|(prefix, doc)| {
                let hash = content_hash(doc);
                (
                    prefix.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{prefix}?hash={hash}")}),
                )
            })
            .collect();
        json!({"paths": paths})
    }

    /// A group-version's OpenAPI v3 document, as JSON.
    pub fn v3_document(&self, prefix: &str) -> Option<bytes::Bytes> {
        self.v3.get(prefix).cloned()
    }

    /// The OpenAPI v2 document, as JSON.
    pub fn v2_document(&self) -> bytes::Bytes {
        self.v2.clone()
    }

    /// The schema of a kind, if the server knows one.
    pub fn schema_for(&self, group: &str, version: &str, kind: &str) -> Option<&Value> {
        let name = self
            .kinds
            .get(&(group.to_owned(), version.to_owned(), kind.to_owned()))?;
        self.definitions.get(name)
    }

    /// Walks `value` against the kind's schema: removes fields the schema
    /// does not declare (returning their paths) and reports JSON values of
    /// the wrong type.
    pub fn check(&self, group: &str, version: &str, kind: &str, value: &mut Value) -> SchemaReport {
        let mut report = SchemaReport::default();
        if let Some(schema) = self.schema_for(group, version, kind).cloned() {
            self.walk(value, &schema, "", &mut report, 0);
        }
        report.unknown.sort();
        report
    }

    /// Follows `$ref`s to the schema they name.
    pub(crate) fn resolve_schema<'a>(&'a self, schema: &'a Value) -> &'a Value {
        self.resolve(schema).0
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> (&'a Value, Option<&'a str>) {
        let mut current = schema;
        let mut name = None;
        for _ in 0..8 {
            let reference = current
                .get("$ref")
                .or_else(|| current.pointer("/allOf/0/$ref"))
                .and_then(Value::as_str);
            match reference {
                Some(r) => {
                    let def = r.rsplit('/').next().unwrap_or("");
                    match self.definitions.get(def) {
                        Some(target) => {
                            name = Some(def);
                            current = target;
                        }
                        None => break,
                    }
                }
                None => break,
            }
        }
        (current, name)
    }

    fn walk(
        &self,
        value: &mut Value,
        schema: &Value,
        path: &str,
        report: &mut SchemaReport,
        depth: usize,
    ) {
        if depth > 64 || value.is_null() {
            return;
        }
        let (schema, name) = self.resolve(schema);
        if let Some(name) = name {
            if OPAQUE.contains(&name) {
                return;
            }
            if name == QUANTITY {
                if !(value.is_string() || value.is_number()) {
                    report.type_error(path, value, "string");
                }
                return;
            }
            if name == INT_OR_STRING {
                if !(value.is_string() || value.is_i64() || value.is_u64()) {
                    report.type_error(path, value, "IntOrString");
                }
                return;
            }
        }
        if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
            || schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        {
            return;
        }
        let expected = schema.get("type").and_then(Value::as_str);
        match expected {
            Some("object") | None
                if schema.get("properties").is_some()
                    || schema.get("additionalProperties").is_some() =>
            {
                let Some(object) = value.as_object_mut() else {
                    if expected.is_some() {
                        report.type_error(path, value, "object");
                    }
                    return;
                };
                let properties = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties").filter(|a| a.is_object());
                let mut unknown = Vec::new();
                for (key, child) in object.iter_mut() {
                    let child_path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    match properties.and_then(|p| p.get(key)).or(additional) {
                        Some(child_schema) => {
                            self.walk(child, child_schema, &child_path, report, depth + 1)
                        }
                        None => unknown.push((key.clone(), child_path)),
                    }
                }
                for (key, child_path) in unknown {
                    object.remove(&key);
                    report.unknown.push(child_path);
                }
            }
            Some("array") => match value.as_array_mut() {
                Some(items) => {
                    if let Some(item_schema) = schema.get("items") {
                        for (i, item) in items.iter_mut().enumerate() {
                            self.walk(
                                item,
                                item_schema,
                                &format!("{path}[{i}]"),
                                report,
                                depth + 1,
                            );
                        }
                    }
                }
                None => report.type_error(path, value, "array"),
            },
            Some("string") if !value.is_string() => report.type_error(path, value, "string"),
            Some("integer") if !(value.is_i64() || value.is_u64()) => {
                report.type_error(path, value, "integer")
            }
            Some("number") if !value.is_number() => report.type_error(path, value, "number"),
            Some("boolean") if !value.is_boolean() => report.type_error(path, value, "boolean"),
            Some("object") if !value.is_object() => report.type_error(path, value, "object"),
            _ => {}
        }
    }
}

/// What a schema walk found.
#[derive(Debug, Default)]
pub struct SchemaReport {
    /// Paths of fields the schema does not declare (already removed).
    pub unknown: Vec<String>,
    /// Values of the wrong JSON type.
    pub type_errors: Vec<TypeError>,
}

/// A value whose JSON type is not the schema's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError {
    pub path: String,
    pub found: &'static str,
    pub expected: String,
}

impl std::fmt::Display for TypeError {
    /// The decoding error Kubernetes reports for built-in kinds.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "json: cannot unmarshal {} into Go struct field .{} of type {}",
            self.found, self.path, self.expected
        )
    }
}

impl SchemaReport {
    fn type_error(&mut self, path: &str, value: &Value, expected: &str) {
        let found = match value {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        self.type_errors.push(TypeError {
            path: path.to_owned(),
            found,
            expected: expected.to_owned(),
        });
    }
}

fn custom_definition_name(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

/// A short stable hash of a document, so clients can cache it by URL.
fn content_hash(doc: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    doc.hash(&mut hasher);
    format!("{:016X}", hasher.finish())
}

fn rewrite_refs(value: &Value, from: &str, to: &str) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("$ref", Value::String(s)) => Value::String(s.replace(from, to)),
                        _ => rewrite_refs(v, from, to),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| rewrite_refs(v, from, to)).collect())
        }
        other => other.clone(),
    }
}

/// The path items of a group-version's resources.
fn paths(resources: &[Arc<ResourceInfo>], names: &BTreeMap<String, String>) -> Value {
    let mut paths = Map::new();
    for info in resources {
        let Some(def) = names.get(&info.kind) else {
            continue;
        };
        let gvk = json!({"group": info.group, "version": info.version, "kind": info.kind});
        let schema_ref = json!({"$ref": format!("#/components/schemas/{def}")});
        let base = if info.group.is_empty() {
            format!("/api/{}", info.version)
        } else {
            format!("/apis/{}/{}", info.group, info.version)
        };
        let scope = if info.namespaced {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        let collection = format!("{base}{scope}/{}", info.plural);
        let item = format!("{collection}/{{name}}");
        let op = |action: &str, verb_id: &str, with_validation: bool, patch: bool| {
            let mut parameters =
                vec![json!({"name": "pretty", "in": "query", "schema": {"type": "string"}})];
            if with_validation {
                parameters.push(json!({"name": "dryRun", "in": "query", "schema": {"type": "string"}, "description": "When present, indicates that modifications should not be persisted."}));
                parameters.push(
                    json!({"name": "fieldManager", "in": "query", "schema": {"type": "string"}}),
                );
                parameters.push(json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string"}, "description": "Ignore, Warn or Strict: how to handle fields the schema does not declare."}));
            }
            if patch {
                parameters
                    .push(json!({"name": "force", "in": "query", "schema": {"type": "boolean"}}));
            }
            let mut operation = json!({
                "operationId": format!("{verb_id}{}", info.kind),
                "parameters": parameters,
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            });
            if patch {
                let body = json!({"schema": {"type": "object"}});
                operation["requestBody"] = json!({"content": {
                    "application/apply-patch+yaml": body,
                    "application/json-patch+json": body,
                    "application/merge-patch+json": body,
                    "application/strategic-merge-patch+json": body,
                }});
            } else if with_validation {
                operation["requestBody"] =
                    json!({"content": {"application/json": {"schema": schema_ref}}});
            }
            operation
        };
        let mut path_params = vec![];
        if info.namespaced {
            path_params.push(json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}}));
        }
        let mut item_params = path_params.clone();
        item_params.push(
            json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}),
        );
        if info.verbs.iter().any(|v| v == "list") {
            paths.insert(
                collection.clone(),
                json!({
                    "get": op("list", "list", false, false),
                    "post": op("post", "create", true, false),
                    "delete": op("deletecollection", "deleteCollection", false, false),
                    "parameters": path_params,
                }),
            );
            paths.insert(
                item.clone(),
                json!({
                    "get": op("get", "read", false, false),
                    "put": op("put", "replace", true, false),
                    "patch": op("patch", "patch", true, true),
                    "delete": op("delete", "delete", false, false),
                    "parameters": item_params.clone(),
                }),
            );
        }
        if info.verbs == ["create"] {
            // A review: posted, answered, never stored.
            paths.insert(
                collection.clone(),
                json!({"post": op("post", "create", true, false), "parameters": path_params}),
            );
        }
        if info.has_subresource("status") {
            paths.insert(
                format!("{item}/status"),
                json!({
                    "get": op("get", "readStatus", false, false),
                    "put": op("put", "replaceStatus", true, false),
                    "patch": op("patch", "patchStatus", true, true),
                    "parameters": item_params.clone(),
                }),
            );
        }
        if info.has_subresource("scale") {
            let scale_gvk = json!({"group": "autoscaling", "version": "v1", "kind": "Scale"});
            let scale_ref = json!({"$ref": "#/components/schemas/io.k8s.api.autoscaling.v1.Scale"});
            let mut get = op("get", "readScale", false, false);
            let mut put = op("put", "replaceScale", true, false);
            let mut patch = op("patch", "patchScale", true, true);
            for o in [&mut get, &mut put, &mut patch] {
                o["x-kubernetes-group-version-kind"] = scale_gvk.clone();
                o["responses"]["200"]["content"]["application/json"]["schema"] = scale_ref.clone();
            }
            put["requestBody"] = json!({"content": {"application/json": {"schema": scale_ref}}});
            paths.insert(
                format!("{item}/scale"),
                json!({"get": get, "put": put, "patch": patch, "parameters": item_params.clone()}),
            );
        }
    }
    Value::Object(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openapi() -> OpenApi {
        OpenApi::build(&Registry::with_builtins(), &BTreeMap::new())
    }

    #[test]
    fn documents_cover_every_group_version_with_patch_validation() {
        let openapi = openapi();
        let index = openapi.v3_index();
        assert!(index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/apis/apps/v1?hash="));
        let apps: Value =
            serde_json::from_slice(&openapi.v3_document("apis/apps/v1").unwrap()).unwrap();
        let deployment = &apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let patch =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        let core: Value = serde_json::from_slice(&openapi.v3_document("api/v1").unwrap()).unwrap();
        assert!(core["paths"]["/api/v1/nodes/{name}"].is_object());
        let v2: Value = serde_json::from_slice(&openapi.v2_document()).unwrap();
        assert!(v2["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
    }

    #[test]
    fn unknown_fields_are_found_and_removed() {
        let openapi = openapi();
        let mut deploy = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"a": "b"}},
            "spec": {"replica": 2, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}},
                                  "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolice": "x",
                                                           "resources": {"limits": {"cpu": 1, "memory": "1Gi"}},
                                                           "ports": [{"containerPort": 80}]}]}}}
        });
        let report = openapi.check("apps", "v1", "Deployment", &mut deploy);
        assert_eq!(
            report.unknown,
            vec![
                "spec.replica",
                "spec.template.spec.containers[0].imagePullPolice"
            ]
        );
        assert!(report.type_errors.is_empty(), "{:?}", report.type_errors);
        assert!(deploy["spec"].get("replica").is_none());
        assert_eq!(
            deploy["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            1
        );
    }

    #[test]
    fn wrong_json_types_are_reported() {
        let openapi = openapi();
        let mut deploy = json!({"spec": {"replicas": "three", "paused": 1}});
        let report = openapi.check("apps", "v1", "Deployment", &mut deploy);
        assert_eq!(report.type_errors.len(), 2, "{:?}", report.type_errors);
        let mut paths: Vec<String> = report.type_errors.iter().map(|e| e.path.clone()).collect();
        paths.sort();
        assert_eq!(paths, vec!["spec.paused", "spec.replicas"]);
        let replicas = report
            .type_errors
            .iter()
            .find(|e| e.path == "spec.replicas")
            .unwrap();
        assert_eq!(
            replicas.to_string(),
            "json: cannot unmarshal string into Go struct field .spec.replicas of type integer"
        );
        let mut svc = json!({"spec": {"ports": [{"port": 80, "targetPort": "http"}]}});
        assert!(openapi
            .check("", "v1", "Service", &mut svc)
            .type_errors
            .is_empty());
    }
}
