//! Static pods: pods the node runs from manifest files in its
//! `pod-manifests` directory, with or without an API server, as the
//! kubelet's file source does.
//!
//! Each `*.yaml`, `*.yml` or `*.json` file (dot files are skipped) holds one
//! Pod. The agent names it `<name>-<node name>`, puts it in `default` when
//! the manifest names no namespace, binds it to this node, gives it a uid
//! derived from the file's path, content and the node (so the same manifest
//! keeps its uid, and its containers, across agent restarts), marks it with
//! the `kubernetes.io/config.*` annotations, and applies the API's pod
//! defaults (the agent reads the manifest, not a defaulted API object).
//!
//! The API sees a **mirror pod** for each: a copy carrying
//! `kubernetes.io/config.mirror: <hash>` and owned by the Node, to which the
//! agent reports the static pod's status. Deleting a mirror pod does not stop
//! the static pod: the agent creates the mirror again. Removing or changing
//! the manifest stops (and restarts) the pod and replaces its mirror.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The annotation naming where a pod came from (`file`, `api`).
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
/// The annotation carrying the static pod's hash (its uid).
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// The annotation marking a mirror pod, with the static pod's hash.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
/// When the agent first saw the manifest.
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";

/// Whether `pod` (from the API) is a mirror pod.
pub fn is_mirror(pod: &Pod) -> bool {
    mirror_hash(pod).is_some()
}

/// The static pod hash a mirror pod stands for.
pub fn mirror_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_MIRROR))
        .map(String::as_str)
}

/// One manifest file, read.
#[derive(Debug)]
pub struct Manifest {
    pub path: PathBuf,
    /// The static pod, or why the file is not one.
    pub pod: Result<Pod, String>,
}

/// Reads every manifest in `dir` (none when it does not exist), sorted by
/// file name.
pub fn read_manifests(dir: &Path, node_name: &str) -> Vec<Manifest> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && p.is_file()
                && [".yaml", ".yml", ".json"]
                    .iter()
                    .any(|ext| name.ends_with(ext))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let pod = std::fs::read(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))
                .and_then(|content| static_pod(&path, &content, node_name));
            Manifest { path, pod }
        })
        .collect()
}

/// The static pod a manifest describes.
pub fn static_pod(path: &Path, content: &[u8], node_name: &str) -> Result<Pod, String> {
    let mut object: Value = serde_yaml::from_slice(content)
        .map_err(|e| format!("{}: not a YAML or JSON document: {e}", path.display()))?;
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if kind != "Pod" || version != "v1" {
        return Err(format!(
            "{}: a static pod manifest holds one v1 Pod, not {version:?} {kind:?}",
            path.display()
        ));
    }
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("{}: metadata.name is required", path.display()))?
        .to_string();
    let containers = object
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if containers == 0 {
        return Err(format!(
            "{}: spec.containers: Required value",
            path.display()
        ));
    }

    let mut hasher = Sha256::new();
    hasher.update(path.to_string_lossy().as_bytes());
    hasher.update([0]);
    hasher.update(node_name.as_bytes());
    hasher.update([0]);
    hasher.update(content);
    let hash = hex::encode(&hasher.finalize()[..16]);

    let metadata = object
        .as_object_mut()
        .expect("a Pod is an object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    metadata["name"] = json!(format!("{name}-{}", node_name.to_ascii_lowercase()));
    if metadata
        .get("namespace")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        metadata["namespace"] = json!("default");
    }
    metadata["uid"] = json!(hash);
    for field in ["resourceVersion", "creationTimestamp", "generation"] {
        metadata.as_object_mut().map(|m| m.remove(field));
    }
    let annotations = metadata
        .as_object_mut()
        .expect("metadata is an object")
        .entry("annotations")
        .or_insert_with(|| json!({}));
    annotations[CONFIG_HASH] = json!(hash);
    annotations[CONFIG_SOURCE] = json!("file");
    annotations[CONFIG_SEEN] = json!(jiff::Timestamp::now().to_string());

    let spec = object
        .as_object_mut()
        .expect("a Pod is an object")
        .entry("spec")
        .or_insert_with(|| json!({}));
    spec["nodeName"] = json!(node_name);
    rudder_apimachinery::defaults::default_pod_spec(spec);
    // A static pod stays on its node whatever the node's taints say.
    if let Some(tolerations) = spec.get_mut("tolerations").and_then(Value::as_array_mut) {
        let all = json!({"operator": "Exists", "effect": "NoExecute"});
        if !tolerations.contains(&all) {
            tolerations.push(all);
        }
    }
    object.as_object_mut().map(|o| o.remove("status"));
    serde_json::from_value(object).map_err(|e| format!("{}: {e}", path.display()))
}

/// The mirror pod of `pod` for the API: the same object, marked, owned by
/// the Node, without the fields the API server assigns.
pub fn mirror_pod(pod: &Pod, node_name: &str, node_uid: &str) -> Pod {
    let mut mirror = pod.clone();
    let hash = pod.metadata.uid.clone().unwrap_or_default();
    mirror.metadata.uid = None;
    mirror.metadata.resource_version = None;
    mirror.status = None;
    mirror
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_MIRROR.to_string(), hash);
    mirror.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node_name.to_string(),
            uid: node_uid.to_string(),
            // NodeRestriction admits only mirror pods the node controls.
            controller: Some(true),
            ..Default::default()
        },
    ]);
    mirror
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: c
    image: registry.local/busybox:1.35
"#;

    #[test]
    fn manifests_become_static_pods_of_this_node() {
        let path = Path::new("/data/pod-manifests/web.yaml");
        let pod = static_pod(path, MANIFEST.as_bytes(), "Node-A").unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-a"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("Node-A"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[CONFIG_SOURCE], "file");
        assert_eq!(Some(&annotations[CONFIG_HASH]), pod.metadata.uid.as_ref());
        assert!(spec
            .tolerations
            .as_ref()
            .unwrap()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()));

        // The same file keeps its uid; another content or node does not.
        let again = static_pod(path, MANIFEST.as_bytes(), "Node-A").unwrap();
        assert_eq!(again.metadata.uid, pod.metadata.uid);
        let changed = MANIFEST.replace("1.35", "1.36");
        let other = static_pod(path, changed.as_bytes(), "Node-A").unwrap();
        assert_ne!(other.metadata.uid, pod.metadata.uid);
        let elsewhere = static_pod(path, MANIFEST.as_bytes(), "node-b").unwrap();
        assert_ne!(elsewhere.metadata.uid, pod.metadata.uid);
    }

    #[test]
    fn bad_manifests_say_why() {
        let path = Path::new("x.yaml");
        let err = static_pod(path, b"kind: Service\napiVersion: v1\n", "n").unwrap_err();
        assert!(err.contains("one v1 Pod"), "{err}");
        let err = static_pod(path, b"kind: Pod\napiVersion: v1\nspec: {}\n", "n").unwrap_err();
        assert!(err.contains("metadata.name is required"), "{err}");
        let err = static_pod(
            path,
            b"kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec: {}\n",
            "n",
        )
        .unwrap_err();
        assert!(err.contains("spec.containers: Required value"), "{err}");
        assert!(static_pod(path, b"{not yaml", "n").is_err());
    }

    #[test]
    fn mirrors_are_marked_and_owned_by_the_node() {
        let pod = static_pod(Path::new("w.yaml"), MANIFEST.as_bytes(), "n").unwrap();
        let mirror = mirror_pod(&pod, "n", "node-uid");
        assert!(is_mirror(&mirror));
        assert_eq!(mirror_hash(&mirror), pod.metadata.uid.as_deref());
        assert!(mirror.metadata.uid.is_none());
        let owner = &mirror.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Node", "node-uid")
        );
        assert_eq!(owner.controller, Some(true), "NodeRestriction requires it");
    }

    #[test]
    fn only_manifest_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), MANIFEST).unwrap();
        std::fs::write(dir.path().join(".web.yaml.swp"), "junk").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "junk").unwrap();
        std::fs::write(dir.path().join("bad.json"), "{}").unwrap();
        let manifests = read_manifests(dir.path(), "n");
        let names: Vec<_> = manifests
            .iter()
            .map(|m| m.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["bad.json", "web.yaml"]);
        assert!(manifests[0].pod.is_err());
        assert!(manifests[1].pod.is_ok());
        assert!(read_manifests(&dir.path().join("missing"), "n").is_empty());
    }
}
