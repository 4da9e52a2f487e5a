//! API discovery: `/api`, `/apis`, and one document per group and version,
//! in the legacy forms every client understands.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::registry::ResourceInfo;
use crate::ApiServer;

impl ApiServer {
    /// Answers a discovery path, or `None` when the path is not one.
    pub(crate) fn discovery(&self, path: &str) -> Option<Response> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let body = match segments.as_slice() {
            ["api"] => json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.advertise_address()}],
            }),
            ["apis"] => json!({
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": self
                    .registry()
                    .groups()
                    .into_iter()
                    .filter(|(group, _)| !group.is_empty())
                    .map(|(group, versions)| group_document(&group, &versions))
                    .collect::<Vec<_>>(),
            }),
            ["apis", group] => {
                let (_, versions) = self
                    .registry()
                    .groups()
                    .into_iter()
                    .find(|(g, _)| g == group)?;
                let mut doc = group_document(group, &versions);
                doc["kind"] = json!("APIGroup");
                doc["apiVersion"] = json!("v1");
                doc
            }
            ["api", version] => self.resource_list("", version)?,
            ["apis", group, version] => self.resource_list(group, version)?,
            _ => return None,
        };
        Some((StatusCode::OK, axum::Json(body)).into_response())
    }

    /// `/openapi/v2`, `/openapi/v3` and `/openapi/v3/<group-version>`.
    pub(crate) fn openapi_document(&self, path: &str) -> Option<Response> {
        let openapi = self.openapi();
        let body: bytes::Bytes = match path.trim_end_matches('/') {
            "/openapi/v2" => openapi.v2_document(),
            "/openapi/v3" => serde_json::to_vec(&openapi.v3_index()).ok()?.into(),
            other => openapi.v3_document(other.strip_prefix("/openapi/v3/")?)?,
        };
        Some(
            (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
        )
    }

    fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<std::sync::Arc<ResourceInfo>> = self
            .registry()
            .all()
            .into_iter()
            .filter(|r| r.group == group && r.version == version)
            .collect();
        if resources.is_empty() {
            return None;
        }
        let group_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        let mut entries = Vec::new();
        for r in &resources {
            let mut entry = json!({
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": r.verbs,
            });
            if !r.short_names.is_empty() {
                entry["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                entry["categories"] = json!(r.categories);
            }
            entries.push(entry);
            for sub in &r.subresources {
                let (kind, group, version, verbs): (&str, &str, &str, &[&str]) = match sub.as_str()
                {
                    "status" => (&r.kind, &r.group, &r.version, &["get", "patch", "update"]),
                    "scale" => ("Scale", "autoscaling", "v1", &["get", "patch", "update"]),
                    "binding" => ("Binding", "", "v1", &["create"]),
                    "eviction" => ("Eviction", "policy", "v1", &["create"]),
                    "token" => ("TokenRequest", "authentication.k8s.io", "v1", &["create"]),
                    "finalize" => ("Namespace", "", "v1", &["update"]),
                    "log" => ("Pod", "", "v1", &["get"]),
                    "ephemeralcontainers" => ("Pod", "", "v1", &["get", "patch", "update"]),
                    _ => ("", "", "", &["create", "get"]),
                };
                let mut entry = json!({
                    "name": format!("{}/{sub}", r.plural),
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": kind,
                    "verbs": verbs,
                });
                if !group.is_empty() {
                    entry["group"] = json!(group);
                    entry["version"] = json!(version);
                }
                entries.push(entry);
            }
        }
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": entries,
        }))
    }
}

fn group_document(group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}
