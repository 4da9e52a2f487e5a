//! `downwardAPI` volumes (and downward API sources of projected volumes):
//! pod metadata fields (`metadata.labels` and `metadata.annotations` as
//! `key="value"` lines) and container resources, one file per item
//! (`downwardapi.CollectData`).

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, Pod};

use super::atomic_writer::{FileProjection, Payload};
use crate::env::{container_resource_value, extract_field_path, NodeAllocatable};

/// Whether any item needs the node's allocatable resources.
pub fn needs_allocatable(items: &[DownwardAPIVolumeFile]) -> bool {
    items.iter().any(|i| i.resource_field_ref.is_some())
}

/// The files of `items`; every failing item is reported (joined as Go's
/// error aggregates are).
pub fn payload(
    items: &[DownwardAPIVolumeFile],
    pod: &Pod,
    default_mode: u32,
    allocatable: &NodeAllocatable,
) -> Result<Payload, String> {
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    for item in items {
        let mode = item.mode.map_or(default_mode, |m| m as u32);
        let mut data = Vec::new();
        if let Some(field) = &item.field_ref {
            match extract_field_path(pod, &field.field_path) {
                Ok(value) => data = value.into_bytes(),
                Err(err) => errors.push(err),
            }
        } else if let Some(resource) = &item.resource_field_ref {
            match container_resource_value(resource, pod, None, allocatable) {
                Ok(value) => data = value.into_bytes(),
                Err(err) => errors.push(err.to_string()),
            }
        }
        payload.insert(clean(&item.path), FileProjection { data, mode });
    }
    match errors.len() {
        0 => Ok(payload),
        1 => Err(errors.remove(0)),
        _ => Err(format!("[{}]", errors.join(", "))),
    }
}

/// `filepath.Clean` of a relative path.
fn clean(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_annotations_fields_and_resources() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "config", "namespace": "node", "uid": "u-1",
                "labels": {"tier": "backend", "app": "x"},
                "annotations": {"build": "42", "note": "say \"hi\"\n"}},
            "spec": {"containers": [{"name": "c",
                "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}}]}
        }))
        .unwrap();
        let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(serde_json::json!([
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}, "mode": 0o600},
            {"path": "./sub/name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}},
            {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu"}},
            {"path": "cpu-req", "resourceFieldRef": {"containerName": "c", "resource": "requests.cpu", "divisor": "1m"}}
        ]))
        .unwrap();
        assert!(needs_allocatable(&items));
        let allocatable = NodeAllocatable {
            cpu_millis: Some(4000),
            memory: Some(8 << 30),
            ephemeral_storage: None,
        };
        let p = payload(&items, &pod, 0o644, &allocatable).unwrap();
        let text = |k: &str| String::from_utf8(p[k].data.clone()).unwrap();
        assert_eq!(text("labels"), "app=\"x\"\ntier=\"backend\"");
        assert_eq!(
            text("annotations"),
            "build=\"42\"\nnote=\"say \\\"hi\\\"\\n\""
        );
        assert_eq!(p["annotations"].mode, 0o600);
        assert_eq!(text("sub/name"), "config");
        assert_eq!(text("tier"), "backend");
        assert_eq!(text("mem"), "64");
        // No CPU limit: the node's allocatable CPU, in cores.
        assert_eq!(text("cpu"), "4");
        assert_eq!(text("cpu-req"), "250");
    }

    #[test]
    fn errors_are_reported() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}
        }))
        .unwrap();
        let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(serde_json::json!([
            {"path": "x", "fieldRef": {"fieldPath": "spec.nodeName"}},
            {"path": "y", "resourceFieldRef": {"containerName": "nope", "resource": "limits.cpu"}}
        ]))
        .unwrap();
        let err = payload(&items, &pod, 0o644, &NodeAllocatable::default()).unwrap_err();
        assert_eq!(
            err,
            "[unsupported fieldPath: spec.nodeName, container nope not found]"
        );
    }
}
