//! Which objects a list, watch or deletecollection selects: label and
//! field selectors from the query, with the fields each kind supports.

use rudder_apimachinery::selector::{object_field, FieldSelector, LabelSelector};
use serde_json::Value;

use crate::error::ApiError;
use crate::registry::ResourceInfo;
use crate::request::Query;

#[derive(Clone, Debug)]
pub struct Selection {
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
}

/// Fields every kind can be selected by.
const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// Further fields per resource, as kube-apiserver supports them.
fn kind_fields(info: &ResourceInfo) -> &'static [&'static str] {
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("", "replicationcontrollers") | ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        _ => &[],
    }
}

impl Selection {
    pub fn from_query(info: &ResourceInfo, query: &Query) -> Result<Self, ApiError> {
        let labels = match query.get("labelSelector") {
            Some(text) => {
                Some(LabelSelector::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))?)
            }
            None => None,
        };
        let fields = match query.get("fieldSelector") {
            Some(text) => {
                let selector =
                    FieldSelector::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))?;
                for requirement in selector.requirements() {
                    let field = requirement.field.as_str();
                    if !COMMON_FIELDS.contains(&field) && !kind_fields(info).contains(&field) {
                        return Err(ApiError::BadRequest(format!(
                            "field label not supported: {field}"
                        )));
                    }
                }
                Some(selector)
            }
            None => None,
        };
        Ok(Selection { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.as_ref().is_none_or(LabelSelector::is_empty)
            && self.fields.as_ref().is_none_or(FieldSelector::is_empty)
    }

    /// Whether the selectors read nothing but `metadata`.
    pub fn needs_only_metadata(&self) -> bool {
        self.fields.as_ref().is_none_or(|f| {
            f.requirements()
                .iter()
                .all(|r| COMMON_FIELDS.contains(&r.field.as_str()))
        })
    }

    /// Matches an object known only by its `metadata` (see
    /// [`needs_only_metadata`](Self::needs_only_metadata)).
    pub fn matches_metadata(&self, metadata: Value) -> bool {
        if self.is_empty() {
            return true;
        }
        self.matches(&serde_json::json!({ "metadata": metadata }))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(labels) = &self.labels {
            if !labels.matches_object(obj) {
                return false;
            }
        }
        if let Some(fields) = &self.fields {
            if !fields.matches(|field| field_value(obj, field)) {
                return false;
            }
        }
        true
    }
}

/// A field's value as field selectors compare it.
fn field_value(obj: &Value, field: &str) -> Option<String> {
    match field {
        // Field selectors see an unset boolean as "false", as Kubernetes
        // converts these fields from the typed object.
        "spec.unschedulable" | "spec.hostNetwork" => {
            Some(object_field(obj, field).unwrap_or_else(|| "false".into()))
        }
        "source" => object_field(obj, "source.component")
            .or_else(|| object_field(obj, "reportingComponent")),
        _ => object_field(obj, field),
    }
}
