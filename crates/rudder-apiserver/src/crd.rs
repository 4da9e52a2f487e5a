//! CustomResourceDefinitions: each served version of a CRD becomes a
//! resource of the registry, with its schema in the OpenAPI documents. The
//! set follows the CRDs in the store (a watch), so several API servers on
//! one etcd agree, and deleting a CRD deletes its objects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rudder_store::{RangeRequest, WatchMessage};
use serde_json::{json, Value};

use crate::error::{ApiError, FieldCause};
use crate::registry::{PrinterColumn, ResourceInfo};
use crate::ApiServer;

const CRD_GROUP: &str = "apiextensions.k8s.io";

/// What the CRDs currently serve: (group, version, plural) → resource and
/// its schema.
pub(crate) type CustomSet = BTreeMap<(String, String, String), (ResourceInfo, Option<Value>)>;

/// The resources one CRD serves.
fn resources_of(crd: &Value) -> Vec<(ResourceInfo, Option<Value>)> {
    let spec = &crd["spec"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let group = s(&spec["group"]);
    let names = &spec["names"];
    let kind = s(&names["kind"]);
    let plural = s(&names["plural"]);
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    let singular = match s(&names["singular"]) {
        singular if singular.is_empty() => kind.to_lowercase(),
        singular => singular,
    };
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let mut out = Vec::new();
    for version in spec["versions"].as_array().into_iter().flatten() {
        if version["served"] != Value::Bool(true) {
            continue;
        }
        let mut subresources = Vec::new();
        if version.pointer("/subresources/status").is_some() {
            subresources.push("status".to_owned());
        }
        if version.pointer("/subresources/scale").is_some() {
            subresources.push("scale".to_owned());
        }
        let printer_columns = version["additionalPrinterColumns"]
            .as_array()
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: s(&c["name"]),
                        kind: s(&c["type"]),
                        json_path: s(&c["jsonPath"]),
                        priority: c["priority"].as_u64().unwrap_or(0).min(255) as u8,
                        description: s(&c["description"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let info = ResourceInfo {
            group: group.clone(),
            version: s(&version["name"]),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            subresources,
            verbs: crate::registry::ALL_VERBS
                .iter()
                .map(|v| v.to_string())
                .collect(),
            printer_columns,
            custom: true,
        };
        let schema = version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .map(wrap_schema);
        out.push((info, schema));
    }
    out
}

/// Every custom object has the standard type and object metadata, whether
/// or not the CRD's schema declares them.
fn wrap_schema(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("type").or_insert(json!("object"));
        let properties = obj.entry("properties").or_insert_with(|| json!({}));
        if let Some(props) = properties.as_object_mut() {
            props.insert("apiVersion".into(), json!({"type": "string"}));
            props.insert("kind".into(), json!({"type": "string"}));
            props.insert(
                "metadata".into(),
                json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
            );
        }
    }
    schema
}

/// The status a CRD gets when the server accepts it.
pub(crate) fn accepted_status(crd: &Value) -> Value {
    let now = crate::object::now_rfc3339();
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == Value::Bool(true))
        .map(|v| v["name"].clone())
        .collect();
    json!({
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(json!({})),
        "storedVersions": stored,
    })
}

/// CRD checks beyond the schema: names, scope, versions.
pub(crate) fn validate(crd: &Value, old: Option<&Value>) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if group.is_empty() {
        causes.push(FieldCause::required("spec.group", ""));
    } else if !group.contains('.') {
        causes.push(FieldCause::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(FieldCause::required("spec.names.plural", ""));
    }
    if spec
        .pointer("/names/kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        causes.push(FieldCause::required("spec.names.kind", ""));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(FieldCause::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    match spec["scope"].as_str() {
        Some("Namespaced" | "Cluster") => {}
        Some(other) => causes.push(FieldCause::unsupported(
            "spec.scope",
            other,
            &["Cluster", "Namespaced"],
        )),
        None => causes.push(FieldCause::required("spec.scope", "")),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(FieldCause::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    } else {
        let storage = versions
            .iter()
            .filter(|v| v["storage"] == Value::Bool(true))
            .count();
        if storage != 1 {
            causes.push(FieldCause::invalid(
                "spec.versions",
                &versions.len().to_string(),
                "must have exactly one version marked as storage version",
            ));
        }
    }
    if let Some(old) = old {
        for field in ["group", "scope"] {
            if crd["spec"][field] != old["spec"][field] {
                causes.push(FieldCause::immutable(format!("spec.{field}")));
            }
        }
    }
    causes
}

impl ApiServer {
    /// Brings the registry and OpenAPI in line with the CRDs in the store,
    /// and deletes the objects of CRDs that are gone.
    pub(crate) async fn sync_custom_resources(&self) -> Result<(), ApiError> {
        let crds = self
            .registry()
            .get(CRD_GROUP, "v1", "customresourcedefinitions")
            .ok_or_else(|| ApiError::Internal("CRDs are not registered".into()))?;
        let page = self
            .store()
            .range(RangeRequest::prefix(crds.key_prefix()))
            .await?;
        let mut wanted = CustomSet::new();
        for kv in &page.kvs {
            let crd: Value = serde_json::from_slice(&kv.value).map_err(|e| {
                ApiError::Internal(format!("stored CRD {} is not JSON: {e}", kv.key))
            })?;
            for (info, schema) in resources_of(&crd) {
                // A CRD never shadows a built-in resource.
                let key = (
                    info.group.clone(),
                    info.version.clone(),
                    info.plural.clone(),
                );
                if self
                    .registry()
                    .get(&key.0, &key.1, &key.2)
                    .is_some_and(|r| !r.custom)
                {
                    continue;
                }
                wanted.insert(key, (info, schema));
            }
        }
        let removed_prefixes: BTreeSet<String> = {
            let mut current = self.inner.custom.lock().unwrap_or_else(|e| e.into_inner());
            let still_stored: BTreeSet<String> =
                wanted.values().map(|(i, _)| i.key_prefix()).collect();
            let mut removed = BTreeSet::new();
            for (key, (info, _)) in current.iter() {
                if !wanted.contains_key(key) {
                    self.registry().remove(&key.0, &key.1, &key.2);
                    if !still_stored.contains(&info.key_prefix()) {
                        removed.insert(info.key_prefix());
                    }
                }
            }
            for (info, _) in wanted.values() {
                self.registry().add(info.clone());
            }
            *current = wanted.clone();
            removed
        };
        let schemas: BTreeMap<(String, String, String), Value> = wanted
            .values()
            .filter_map(|(info, schema)| {
                schema.clone().map(|s| {
                    (
                        (info.group.clone(), info.version.clone(), info.kind.clone()),
                        s,
                    )
                })
            })
            .collect();
        let openapi = crate::openapi::OpenApi::build(self.registry(), &schemas);
        *self
            .inner
            .openapi
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(openapi);
        for prefix in removed_prefixes {
            self.purge(&prefix).await;
        }
        Ok(())
    }

    /// Deletes every object under `prefix` (the objects of a deleted CRD).
    async fn purge(&self, prefix: &str) {
        match self.store().range(RangeRequest::prefix(prefix)).await {
            Ok(page) => {
                for kv in page.kvs {
                    if let Err(err) = self.store().delete(&kv.key, Some(kv.mod_revision)).await {
                        tracing::warn!(key = %kv.key, error = %err, "cannot delete a custom object of a deleted CRD");
                    }
                }
            }
            Err(err) => {
                tracing::warn!(prefix, error = %err, "cannot list the objects of a deleted CRD")
            }
        }
    }

    /// Follows CRD changes in the store for as long as the server runs.
    pub async fn follow_custom_resources(self) {
        let Some(crds) = self
            .registry()
            .get(CRD_GROUP, "v1", "customresourcedefinitions")
        else {
            return;
        };
        loop {
            if let Err(err) = self.sync_custom_resources().await {
                tracing::warn!(error = %err, "cannot sync custom resources");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            let mut watch = match self.store().watch(&crds.key_prefix(), 0).await {
                Ok(watch) => watch,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot watch CRDs");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Any change re-syncs from the store; a broken watch starts over.
            loop {
                match watch.recv().await {
                    Some(Ok(WatchMessage::Events(_))) => {
                        if let Err(err) = self.sync_custom_resources().await {
                            tracing::warn!(error = %err, "cannot sync custom resources");
                        }
                    }
                    Some(Ok(WatchMessage::Progress(_))) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crontab() -> Value {
        json!({
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {
                "group": "stable.example.com",
                "scope": "Namespaced",
                "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"cronSpec": {"type": "string"}}}}}},
                     "subresources": {"status": {}},
                     "additionalPrinterColumns": [{"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"}]},
                    {"name": "v0", "served": false, "storage": false}
                ]
            }
        })
    }

    #[test]
    fn served_versions_become_resources() {
        let resources = resources_of(&crontab());
        assert_eq!(resources.len(), 1);
        let (info, schema) = &resources[0];
        assert_eq!(
            (
                info.group.as_str(),
                info.version.as_str(),
                info.plural.as_str()
            ),
            ("stable.example.com", "v1", "crontabs")
        );
        assert_eq!(info.short_names, vec!["ct"]);
        assert!(info.namespaced && info.custom);
        assert_eq!(info.subresources, vec!["status"]);
        assert_eq!(info.printer_columns[0].json_path, ".spec.cronSpec");
        let schema = schema.as_ref().unwrap();
        assert!(schema.pointer("/properties/metadata/$ref").is_some());
        assert!(schema
            .pointer("/properties/spec/properties/cronSpec")
            .is_some());
    }

    #[test]
    fn crds_are_checked() {
        assert!(validate(&crontab(), None).is_empty());
        let mut bad = crontab();
        bad["metadata"]["name"] = json!("wrong");
        bad["spec"]["scope"] = json!("Galaxy");
        let fields: Vec<String> = validate(&bad, None).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["metadata.name", "spec.scope"]);
        let mut moved = crontab();
        moved["spec"]["scope"] = json!("Cluster");
        assert_eq!(validate(&moved, Some(&crontab()))[0].field, "spec.scope");
    }

    #[test]
    fn accepted_crds_are_established() {
        let status = accepted_status(&crontab());
        assert_eq!(status["conditions"][1]["type"], "Established");
        assert_eq!(status["storedVersions"], json!(["v1"]));
        assert_eq!(status["acceptedNames"]["kind"], "CronTab");
    }
}
