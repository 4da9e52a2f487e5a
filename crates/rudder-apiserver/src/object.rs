//! Object metadata: what the server sets on every object, and the checks of
//! names and labels that apply to every kind.

use serde_json::{Map, Value};

use crate::error::FieldCause;
use crate::registry::ResourceInfo;

/// `metadata` of an object, or an empty map (the caller made sure the
/// object is a JSON object).
pub fn meta(obj: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    obj.get("metadata")
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Map::new());
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).get(field).and_then(Value::as_str)
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .get("finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub use rudder_apimachinery::time::{format_rfc3339, now_rfc3339};

pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The random suffix `generateName` gets: five characters from the
/// alphabet Kubernetes uses (no vowels, no confusable digits).
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Resources whose names must be DNS labels (they become host names or
/// DNS records); the rest take DNS subdomains.
fn name_is_label(info: &ResourceInfo) -> bool {
    info.group.is_empty() && matches!(info.plural.as_str(), "namespaces" | "services")
}

/// Checks `metadata` common to every kind: name, namespace, labels.
pub fn validate_meta(info: &ResourceInfo, obj: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let name = name(obj);
    if name.is_empty() {
        causes.push(FieldCause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if name_is_label(info) {
        if !is_dns_label(name) {
            causes.push(FieldCause::invalid(
                "metadata.name",
                name,
                DNS1123_LABEL_MSG,
            ));
        }
    } else if !is_dns_subdomain(name) {
        causes.push(FieldCause::invalid(
            "metadata.name",
            name,
            DNS1123_SUBDOMAIN_MSG,
        ));
    }
    if let Some(labels) = meta(obj).get("labels") {
        match labels.as_object() {
            Some(labels) => {
                for (key, value) in labels {
                    if let Some(msg) = label_key_problem(key) {
                        causes.push(FieldCause::invalid("metadata.labels", key, &msg));
                    }
                    match value.as_str() {
                        Some(v) => {
                            if let Some(msg) = label_value_problem(v) {
                                causes.push(FieldCause::invalid("metadata.labels", v, &msg));
                            }
                        }
                        None => causes.push(FieldCause::invalid(
                            "metadata.labels",
                            &value.to_string(),
                            "label values must be strings",
                        )),
                    }
                }
            }
            None if labels.is_null() => {}
            None => causes.push(FieldCause::invalid(
                "metadata.labels",
                &labels.to_string(),
                "must be a map of strings",
            )),
        }
    }
    if let Some(annotations) = meta(obj).get("annotations").and_then(Value::as_object) {
        let total: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > 256 * 1024 {
            causes.push(FieldCause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: format!("Too long: must have at most 262144 bytes (has {total})"),
            });
        }
        for key in annotations.keys() {
            if let Some(msg) = label_key_problem(key) {
                causes.push(FieldCause::invalid("metadata.annotations", key, &msg));
            }
        }
    }
    causes
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Why `key` is not a valid label or annotation key (`[prefix/]name`).
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if !is_dns_subdomain(prefix) {
            return Some(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
        }
    }
    if !is_qualified_name_part(name) {
        return Some("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    None
}

pub fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() || is_qualified_name_part(value) {
        None
    } else {
        Some("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
    }
}

/// Everything but `metadata` and `status`: a change here is a spec change
/// and moves `metadata.generation`.
pub fn spec_part(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "kind" | "apiVersion")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_checked() {
        let registry = crate::registry::Registry::with_builtins();
        let cm = registry.get("", "v1", "configmaps").unwrap();
        let ns = registry.get("", "v1", "namespaces").unwrap();
        let ok = serde_json::json!({"metadata": {"name": "a.b-c", "labels": {"app": "web", "x.io/y": ""}}});
        assert!(validate_meta(&cm, &ok).is_empty());
        let bad = serde_json::json!({"metadata": {"name": "Bad_Name"}});
        let causes = validate_meta(&cm, &bad);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "metadata.name");
        assert!(
            !validate_meta(&ns, &ok).is_empty(),
            "a namespace name is a DNS label"
        );
        let bad_label =
            serde_json::json!({"metadata": {"name": "a", "labels": {"-x": "y", "k": "bad value"}}});
        assert_eq!(validate_meta(&cm, &bad_label).len(), 2);
        let unnamed = serde_json::json!({"metadata": {}});
        assert_eq!(validate_meta(&cm, &unnamed)[0].reason, "FieldValueRequired");
    }

    #[test]
    fn suffixes_use_the_kubernetes_alphabet() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
