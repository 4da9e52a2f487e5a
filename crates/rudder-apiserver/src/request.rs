//! Turning a request path and query into what it addresses.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::ApiError;
use crate::registry::{Registry, ResourceInfo};

/// What a resource path addresses.
#[derive(Clone, Debug)]
pub struct ResourcePath {
    pub info: Arc<ResourceInfo>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/GROUP/VERSION/...` resource paths.
/// Returns `None` for paths that are not resource paths (discovery).
pub fn parse_resource_path(
    registry: &Registry,
    path: &str,
) -> Result<Option<ResourcePath>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Ok(None),
    };
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.iter().any(|s| s.is_empty()) {
        return Err(ApiError::NotFoundPath);
    }
    let lookup = |plural: &str| {
        registry
            .get(group, version, plural)
            .ok_or(ApiError::NotFoundPath)
    };
    // `namespaces/NS/RESOURCE/...` addresses a namespaced resource, unless
    // the third segment is one of the namespace's own subresources.
    let (namespace, rest): (Option<String>, Vec<&str>) = match rest {
        ["namespaces", ns, resource, tail @ ..] if !matches!(*resource, "status" | "finalize") => (
            Some(ns.to_string()),
            std::iter::once(*resource)
                .chain(tail.iter().copied())
                .collect(),
        ),
        _ => (None, rest.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(ApiError::NotFoundPath),
    };
    let info = lookup(plural)?;
    if namespace.is_some() && !info.namespaced {
        return Err(ApiError::NotFoundPath);
    }
    if info.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::NotFoundPath);
    }
    if let Some(sub) = &subresource {
        if !info.has_subresource(sub) {
            return Err(ApiError::NotFoundPath);
        }
    }
    Ok(Some(ResourcePath {
        info,
        namespace,
        name,
        subresource,
    }))
}

/// The query parameters of a request, decoded.
#[derive(Clone, Debug, Default)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(percent_decode(k)?, percent_decode(v)?);
        }
        Ok(Query(map))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A boolean parameter, read as Go's `strconv.ParseBool` reads it
    /// (clients send `true`, `True`, `1`); a bare `?watch` counts as true.
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.0.get(key).map(String::as_str),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True" | "")
        )
    }

    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "invalid dry run option {other:?}: only \"All\" is supported"
            ))),
        }
    }
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                let byte = u8::from_str_radix(hex, 16)
                    .map_err(|_| ApiError::BadRequest(format!("invalid query escape in {s:?}")))?;
                out.push(byte);
                i += 2;
            }
            b'%' => {
                return Err(ApiError::BadRequest(format!(
                    "invalid query escape in {s:?}"
                )))
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::BadRequest("the query is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str) -> Result<Option<ResourcePath>, ApiError> {
        parse_resource_path(&Registry::with_builtins(), path)
    }

    #[test]
    fn paths_address_resources() {
        let p = parse("/api/v1/namespaces/default/pods/web/status")
            .unwrap()
            .unwrap();
        assert_eq!(p.info.plural, "pods");
        assert_eq!(p.namespace.as_deref(), Some("default"));
        assert_eq!(p.name.as_deref(), Some("web"));
        assert_eq!(p.subresource.as_deref(), Some("status"));

        let p = parse("/api/v1/namespaces/kube-system").unwrap().unwrap();
        assert_eq!(
            (p.info.plural.as_str(), p.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let p = parse("/api/v1/namespaces/x/finalize").unwrap().unwrap();
        assert_eq!(
            (p.info.plural.as_str(), p.subresource.as_deref()),
            ("namespaces", Some("finalize"))
        );

        let p = parse("/apis/apps/v1/namespaces/ns/deployments")
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.info.plural.as_str(), p.name.as_deref()),
            ("deployments", None)
        );
        let p = parse("/api/v1/pods").unwrap().unwrap();
        assert!(p.namespace.is_none());
        let p = parse("/api/v1/nodes/n1").unwrap().unwrap();
        assert_eq!(p.name.as_deref(), Some("n1"));

        assert!(parse("/api/v1").unwrap().is_none());
        assert!(parse("/apis/apps/v1").unwrap().is_none());
        assert!(parse("/api/v1/nothings").is_err());
        assert!(
            parse("/api/v1/namespaces/ns/nodes/n1").is_err(),
            "nodes are cluster-scoped"
        );
        assert!(
            parse("/api/v1/pods/web").is_err(),
            "a pod needs its namespace"
        );
        assert!(parse("/api/v1/namespaces/ns/configmaps/c/status").is_err());
    }

    #[test]
    fn queries_decode_escapes() {
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=true&x")).unwrap();
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert!(Query::parse(Some("watch=True")).unwrap().flag("watch"));
        assert!(!Query::parse(Some("watch=false")).unwrap().flag("watch"));
        assert!(q.flag("x"));
        assert!(!q.flag("y"));
        assert!(Query::parse(Some("a=%zz")).is_err());
        assert!(Query::parse(Some("a=%2")).is_err());
    }
}
