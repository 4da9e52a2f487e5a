//! Admission: changes and checks that need other objects, run on create
//! after the object's own checks (the built-in admission plugins).

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::object::meta_str;
use crate::registry::ResourceInfo;
use crate::rest::{decode, ApiResult};
use crate::ApiServer;

/// The priority classes every cluster has (kube-apiserver creates them).
pub(crate) const SYSTEM_PRIORITY_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// The finalizer the StorageObjectInUseProtection plugin puts on claims:
/// a claim in use by a pod is not removed until the pod is done.
pub(crate) const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";
/// Its counterpart on volumes: a bound volume is not removed.
pub(crate) const PV_PROTECTION_FINALIZER: &str = "kubernetes.io/pv-protection";
const BETA_STORAGE_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";
const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const BETA_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// What marks the default IngressClass.
const DEFAULT_INGRESS_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation Ingresses had before `spec.ingressClassName`.
const LEGACY_INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// A kind of object that names a class, and where its default comes from.
struct DefaultClassKind {
    /// The field under `spec` that names the class.
    class_field: &'static str,
    /// The annotation that named the class before the field.
    legacy_annotation: &'static str,
    /// The class resource: group, version, plural.
    classes: (&'static str, &'static str, &'static str),
    /// Annotations that mark a class as the default (`"true"`).
    default_annotations: &'static [&'static str],
}

const STORAGE_CLASSES: DefaultClassKind = DefaultClassKind {
    class_field: "storageClassName",
    legacy_annotation: BETA_STORAGE_CLASS_ANNOTATION,
    classes: ("storage.k8s.io", "v1", "storageclasses"),
    default_annotations: &[DEFAULT_CLASS_ANNOTATION, BETA_DEFAULT_CLASS_ANNOTATION],
};

const INGRESS_CLASSES: DefaultClassKind = DefaultClassKind {
    class_field: "ingressClassName",
    legacy_annotation: LEGACY_INGRESS_CLASS_ANNOTATION,
    classes: ("networking.k8s.io", "v1", "ingressclasses"),
    default_annotations: &[DEFAULT_INGRESS_CLASS_ANNOTATION],
};

fn has_true_annotation(obj: &Value, keys: &[&str]) -> bool {
    let annotations = obj.pointer("/metadata/annotations");
    keys.iter()
        .any(|k| annotations.and_then(|a| a.get(*k)).and_then(Value::as_str) == Some("true"))
}

/// Of the default classes, the one Kubernetes uses: the newest by
/// creation time, ties broken by name.
fn newest_default(classes: &[Value]) -> Option<String> {
    classes
        .iter()
        .map(|c| {
            (
                c.pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
                    .and_then(rudder_apimachinery::time::parse_rfc3339),
                meta_str(c, "name").unwrap_or_default().to_owned(),
            )
        })
        .max_by(|(ta, na), (tb, nb)| ta.cmp(tb).then_with(|| nb.cmp(na)))
        .map(|(_, name)| name)
}

fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let meta = &mut obj["metadata"];
    if !meta["finalizers"].is_array() {
        meta["finalizers"] = json!([]);
    }
    let list = meta["finalizers"]
        .as_array_mut()
        .expect("just made an array");
    if !list.iter().any(|f| f.as_str() == Some(finalizer)) {
        list.push(json!(finalizer));
    }
}

impl ApiServer {
    /// Runs the admission plugins that apply to a new object.
    pub(crate) async fn admit_create(&self, info: &ResourceInfo, obj: &mut Value) -> ApiResult<()> {
        if info.group.is_empty() && info.plural == "pods" {
            self.admit_pod_priority(obj).await?;
        }
        if info.group.is_empty() && info.plural == "persistentvolumeclaims" {
            self.admit_default_class(obj, &STORAGE_CLASSES).await?;
            add_finalizer(obj, PVC_PROTECTION_FINALIZER);
        }
        if info.group.is_empty() && info.plural == "persistentvolumes" {
            add_finalizer(obj, PV_PROTECTION_FINALIZER);
        }
        if info.group.is_empty() && info.plural == "limitranges" {
            crate::limitrange::default_limit_range(obj);
        }
        if info.group == "networking.k8s.io" && info.plural == "ingresses" {
            self.admit_default_class(obj, &INGRESS_CLASSES).await?;
        }
        // The validating plugins, in Kubernetes' order: LimitRanger, then
        // ResourceQuota last, since it charges what it admits.
        self.admit_limit_ranges(info, obj, None).await?;
        self.admit_quota(info, obj, None).await?;
        Ok(())
    }

    /// Runs the admission plugins that apply to a changed object (the
    /// main resource, not a subresource), after its own checks.
    pub(crate) async fn admit_update(
        &self,
        info: &ResourceInfo,
        old: &Value,
        obj: &mut Value,
    ) -> ApiResult<()> {
        if info.group.is_empty() && info.plural == "limitranges" {
            crate::limitrange::default_limit_range(obj);
        }
        self.admit_limit_ranges(info, obj, Some(old)).await?;
        self.admit_quota(info, obj, Some(old)).await?;
        Ok(())
    }

    /// The DefaultStorageClass and DefaultIngressClass plugins: an object
    /// that names no class (`spec.<class_field>` absent, not `""`, and no
    /// legacy annotation) gets the class annotated as the default; of
    /// several, the newest (then the first by name), as Kubernetes picks.
    async fn admit_default_class(&self, obj: &mut Value, kind: &DefaultClassKind) -> ApiResult<()> {
        let named = obj
            .pointer(&format!("/spec/{}", kind.class_field))
            .is_some_and(|v| !v.is_null())
            || obj
                .pointer("/metadata/annotations")
                .and_then(Value::as_object)
                .is_some_and(|a| a.contains_key(kind.legacy_annotation));
        if named {
            return Ok(());
        }
        let (group, version, plural) = kind.classes;
        let classes = self
            .registry()
            .get(group, version, plural)
            .ok_or_else(|| ApiError::Internal(format!("{plural} are not registered")))?;
        let all = self
            .store()
            .range(rudder_store::RangeRequest::prefix(classes.key_prefix()))
            .await?;
        let mut defaults = Vec::new();
        for kv in &all.kvs {
            let class = decode(kv)?;
            if has_true_annotation(&class, kind.default_annotations) {
                defaults.push(class);
            }
        }
        if let Some(name) = newest_default(&defaults) {
            if !obj["spec"].is_object() {
                obj["spec"] = json!({});
            }
            obj["spec"][kind.class_field] = json!(name);
        }
        Ok(())
    }

    /// The Priority plugin: resolves `priorityClassName` (or the global
    /// default class) to `spec.priority` and `spec.preemptionPolicy`.
    async fn admit_pod_priority(&self, pod: &mut Value) -> ApiResult<()> {
        let classes = self
            .registry()
            .get("scheduling.k8s.io", "v1", "priorityclasses")
            .ok_or_else(|| ApiError::Internal("priorityclasses are not registered".into()))?;
        let name = meta_str(pod, "name").unwrap_or("").to_owned();
        let requested = pod
            .pointer("/spec/priorityClassName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let class = match &requested {
            Some(class_name) => match self
                .store()
                .get(&classes.key(None, class_name), None)
                .await?
                .0
            {
                Some(kv) => Some(decode(&kv)?),
                None => {
                    return Err(ApiError::Forbidden(format!(
                    "pods {name:?} is forbidden: no PriorityClass with name {class_name} was found"
                )))
                }
            },
            None => {
                let all = self
                    .store()
                    .range(rudder_store::RangeRequest::prefix(classes.key_prefix()))
                    .await?;
                let mut default = None;
                for kv in &all.kvs {
                    let class = decode(kv)?;
                    if class.get("globalDefault") == Some(&Value::Bool(true)) {
                        default = Some(class);
                        break;
                    }
                }
                default
            }
        };
        let (priority, policy) = match &class {
            Some(class) => (
                class.get("value").and_then(Value::as_i64).unwrap_or(0),
                class
                    .get("preemptionPolicy")
                    .and_then(Value::as_str)
                    .unwrap_or("PreemptLowerPriority")
                    .to_owned(),
            ),
            None => (0, "PreemptLowerPriority".to_owned()),
        };
        let spec = &mut pod["spec"];
        if let Some(given) = spec.get("priority").and_then(Value::as_i64) {
            if given != priority {
                return Err(ApiError::Forbidden(format!(
                    "pods {name:?} is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"
                )));
            }
        }
        spec["priority"] = json!(priority);
        if let Some(class) = &class {
            spec["priorityClassName"] = class["metadata"]["name"].clone();
        }
        if spec.get("preemptionPolicy").is_none_or(Value::is_null) {
            spec["preemptionPolicy"] = json!(policy);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_default_class_wins() {
        let class = |name: &str, created: &str| json!({"metadata": {"name": name, "creationTimestamp": created}});
        assert_eq!(newest_default(&[]), None);
        assert_eq!(
            newest_default(&[
                class("old", "2024-01-01T00:00:00Z"),
                class("new", "2024-06-01T00:00:00Z"),
                class("also-old", "2024-01-01T00:00:00Z"),
            ]),
            Some("new".to_owned())
        );
        assert_eq!(
            newest_default(&[
                class("b", "2024-01-01T00:00:00Z"),
                class("a", "2024-01-01T00:00:00Z"),
            ]),
            Some("a".to_owned()),
            "same age: the first by name"
        );
        let annotated = json!({"metadata": {"annotations": {DEFAULT_CLASS_ANNOTATION: "true"}}});
        assert!(has_true_annotation(
            &annotated,
            STORAGE_CLASSES.default_annotations
        ));
        assert!(!has_true_annotation(
            &json!({"metadata": {}}),
            STORAGE_CLASSES.default_annotations
        ));
    }

    #[test]
    fn finalizers_are_added_once() {
        let mut obj = json!({"metadata": {"name": "c"}});
        add_finalizer(&mut obj, PVC_PROTECTION_FINALIZER);
        add_finalizer(&mut obj, PVC_PROTECTION_FINALIZER);
        assert_eq!(
            obj["metadata"]["finalizers"],
            json!([PVC_PROTECTION_FINALIZER])
        );
    }
}
