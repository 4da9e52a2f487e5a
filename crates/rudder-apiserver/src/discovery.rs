//! API discovery: `/api`, `/apis`, and one document per group and version,
//! in the legacy forms every client understands.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::registry::ResourceInfo;
use crate::ApiServer;

impl ApiServer {
    /// Answers a discovery path, or `None` when the path is not one.
    pub(crate) fn discovery(
        &self,
        path: &str,
        headers: &axum::http::HeaderMap,
    ) -> Option<Response> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if matches!(segments.as_slice(), ["api"] | ["apis"]) && wants_aggregated(headers) {
            return Some(self.aggregated_discovery(segments[0] == "api"));
        }
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
                    .served_groups()
                    .into_iter()
                    .filter(|(group, _)| !group.is_empty())
                    .map(|(group, versions)| group_document(&group, &versions))
                    .collect::<Vec<_>>(),
            }),
            ["apis", group] => {
                let (_, versions) = self.served_groups().into_iter().find(|(g, _)| g == group)?;
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

    /// Aggregated discovery (`apidiscovery.k8s.io/v2`): every group,
    /// version and resource in one document, which saves clients a request
    /// per group version.
    fn aggregated_discovery(&self, core: bool) -> Response {
        let mut items = Vec::new();
        let served = self.served_resources();
        for (group, versions) in self.served_groups() {
            if group.is_empty() != core {
                continue;
            }
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| {
                    let resources: Vec<Value> = served
                        .iter()
                        .filter(|r| r.group == group && &r.version == version)
                        .map(|r| aggregated_resource(r))
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            items.push(json!({"metadata": {"name": group}, "versions": versions}));
        }
        let body = json!({
            "kind": "APIGroupDiscoveryList",
            "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {},
            "items": items,
        });
        (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            )],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
            .into_response()
    }

    /// The registry's resources and, on a secured server, the review
    /// resources (create-only, nothing stored) that `auth` answers.
    fn served_resources(&self) -> Vec<std::sync::Arc<ResourceInfo>> {
        let mut resources = self.registry().all();
        if self.security().is_some() {
            resources.extend(
                crate::registry::review_resources()
                    .into_iter()
                    .map(std::sync::Arc::new),
            );
        }
        resources
    }

    /// The groups and versions of [`Self::served_resources`], preferred
    /// version first.
    fn served_groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups = self.registry().groups();
        if self.security().is_some() {
            for review in crate::registry::review_resources() {
                if !groups.iter().any(|(g, _)| *g == review.group) {
                    groups.push((review.group, vec![review.version]));
                }
            }
        }
        groups
    }

    fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<std::sync::Arc<ResourceInfo>> = self
            .served_resources()
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

/// Whether the client offers to read aggregated discovery (kubectl does).
fn wants_aggregated(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            let params: Vec<&str> = part.split(';').map(str::trim).collect();
            params.contains(&"g=apidiscovery.k8s.io")
                && params.contains(&"v=v2")
                && params.contains(&"as=APIGroupDiscoveryList")
        })
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let kind = |group: &str, version: &str, kind: &str| json!({"group": group, "version": version, "kind": kind});
    let subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|sub| {
            let (response, verbs): (Value, &[&str]) = match sub.as_str() {
                "status" => (
                    kind(&r.group, &r.version, &r.kind),
                    &["get", "patch", "update"],
                ),
                "scale" => (
                    kind("autoscaling", "v1", "Scale"),
                    &["get", "patch", "update"],
                ),
                "binding" => (kind("", "v1", "Binding"), &["create"]),
                "eviction" => (kind("policy", "v1", "Eviction"), &["create"]),
                "token" => (
                    kind("authentication.k8s.io", "v1", "TokenRequest"),
                    &["create"],
                ),
                "finalize" => (kind("", "v1", "Namespace"), &["update"]),
                "log" => (kind("", "v1", "Pod"), &["get"]),
                _ => (kind("", "", ""), &["create", "get"]),
            };
            json!({"subresource": sub, "responseKind": response, "verbs": verbs})
        })
        .collect();
    let mut entry = json!({
        "resource": r.plural,
        "responseKind": kind(&r.group, &r.version, &r.kind),
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    if !subresources.is_empty() {
        entry["subresources"] = json!(subresources);
    }
    entry
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, HeaderMap};

    #[test]
    fn kubectl_asks_for_aggregated_discovery() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
                .parse()
                .unwrap(),
        );
        assert!(wants_aggregated(&headers));
        headers.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert!(!wants_aggregated(&headers));
    }

    #[test]
    fn aggregated_entries_carry_scope_and_subresources() {
        let registry = crate::registry::Registry::with_builtins();
        let deployments = registry.get("apps", "v1", "deployments").unwrap();
        let entry = aggregated_resource(&deployments);
        assert_eq!(entry["scope"], "Namespaced");
        assert_eq!(entry["responseKind"]["kind"], "Deployment");
        assert_eq!(entry["shortNames"][0], "deploy");
        let scale = entry["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "scale")
            .unwrap();
        assert_eq!(scale["responseKind"]["kind"], "Scale");
    }
}
