//! What a request asks for, read from its method, path and query alone
//! (Kubernetes' RequestInfoFactory): authorization and audit happen before
//! the path is resolved against the registry, so an unknown resource is
//! still authorized (and then answered 404), never leaked by a 403/404
//! difference.

use axum::http::Method;
use rudder_auth::Attributes;

/// Builds the request's attributes, without the user.
pub(crate) fn attributes(method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let mut attrs = Attributes {
        path: path.to_string(),
        verb: method.as_str().to_ascii_lowercase(),
        ..Default::default()
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, mut rest) = match segments.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest.to_vec()),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => {
            (*group, *version, rest.to_vec())
        }
        _ => return attrs,
    };
    let query_pairs: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let query_get = |key: &str| {
        query_pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    attrs.resource_request = true;
    attrs.api_group = group.to_string();
    attrs.api_version = version.to_string();

    // The deprecated `/watch/` prefix turns a list into a watch.
    let mut watch_prefix = false;
    if rest.first() == Some(&"watch") {
        watch_prefix = true;
        rest.remove(0);
    }
    // `namespaces/NS/RESOURCE/...`; `namespaces/NS` alone (and its
    // `status` and `finalize`) is the namespace object itself.
    if rest.first() == Some(&"namespaces") {
        if rest.len() >= 3 && !matches!(rest[2], "status" | "finalize") {
            attrs.namespace = rest[1].to_string();
            rest.drain(..2);
        } else if rest.len() >= 2 {
            attrs.namespace = rest[1].to_string();
        }
    }
    if let Some(resource) = rest.first() {
        attrs.resource = resource.to_string();
    }
    if let Some(name) = rest.get(1) {
        attrs.name = name.to_string();
    }
    if let Some(sub) = rest.get(2) {
        attrs.subresource = sub.to_string();
    }

    let named = !attrs.name.is_empty();
    attrs.verb = match *method {
        Method::GET | Method::HEAD => {
            let watch = watch_prefix || query_get("watch").is_some_and(|v| v == "true" || v == "1");
            if watch {
                "watch"
            } else if named {
                "get"
            } else {
                "list"
            }
        }
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "",
    }
    .to_string();
    if !named && matches!(attrs.verb.as_str(), "list" | "watch") {
        // A field selector naming one object narrows a list or watch to
        // it, as kube-apiserver does (`metadata.name=x` authorizes as x).
        if let Some(selector) = query_get("fieldSelector").filter(|s| !s.is_empty()) {
            attrs.field_selector = Some(selector.to_string());
            if let Some(name) = selector
                .split(',')
                .find_map(|term| term.strip_prefix("metadata.name="))
            {
                attrs.name = name.to_string();
            }
        }
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(
        method: Method,
        path: &str,
        query: Option<&str>,
    ) -> (String, String, String, String, String, String) {
        let a = attributes(&method, path, query);
        (
            a.verb,
            a.api_group,
            a.namespace,
            a.resource,
            a.name,
            a.subresource,
        )
    }

    #[test]
    fn requests_map_to_kubernetes_attributes() {
        type Want<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str);
        let cases: &[(Method, &str, Option<&str>, Want)] = &[
            (
                Method::GET,
                "/api/v1/namespaces/sec/pods",
                None,
                ("list", "", "sec", "pods", "", ""),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/sec/pods",
                Some("watch=true"),
                ("watch", "", "sec", "pods", "", ""),
            ),
            (
                Method::GET,
                "/api/v1/watch/namespaces/sec/pods",
                None,
                ("watch", "", "sec", "pods", "", ""),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/sec/pods/web",
                None,
                ("get", "", "sec", "pods", "web", ""),
            ),
            (
                Method::POST,
                "/api/v1/namespaces/sec/pods/web/exec",
                None,
                ("create", "", "sec", "pods", "web", "exec"),
            ),
            (
                Method::PUT,
                "/apis/apps/v1/namespaces/a/deployments/d/scale",
                None,
                ("update", "apps", "a", "deployments", "d", "scale"),
            ),
            (
                Method::PATCH,
                "/api/v1/nodes/n1/status",
                None,
                ("patch", "", "", "nodes", "n1", "status"),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/sec/configmaps",
                None,
                ("deletecollection", "", "sec", "configmaps", "", ""),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/sec",
                None,
                ("delete", "", "sec", "namespaces", "sec", ""),
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/sec/finalize",
                None,
                ("update", "", "sec", "namespaces", "sec", "finalize"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces",
                None,
                ("list", "", "", "namespaces", "", ""),
            ),
            (
                Method::GET,
                "/api/v1/pods",
                None,
                ("list", "", "", "pods", "", ""),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/sec/secrets",
                Some("fieldSelector=metadata.name%3Dtls"),
                ("list", "", "sec", "secrets", "tls", ""),
            ),
        ];
        for (method, path, query, want) in cases {
            let got = attrs(method.clone(), path, *query);
            let want = (
                want.0.to_string(),
                want.1.to_string(),
                want.2.to_string(),
                want.3.to_string(),
                want.4.to_string(),
                want.5.to_string(),
            );
            assert_eq!(got, want, "{method} {path}");
        }
    }

    #[test]
    fn other_paths_are_non_resource_requests() {
        for path in [
            "/api",
            "/apis",
            "/apis/apps/v1",
            "/api/v1",
            "/healthz",
            "/openapi/v3",
            "/version",
        ] {
            let a = attributes(&Method::GET, path, None);
            assert!(!a.resource_request, "{path}");
            assert_eq!(a.verb, "get");
            assert_eq!(a.path, path);
        }
    }
}
