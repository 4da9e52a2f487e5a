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

impl ApiServer {
    /// Runs the admission plugins that apply to a new object.
    pub(crate) async fn admit_create(&self, info: &ResourceInfo, obj: &mut Value) -> ApiResult<()> {
        if info.group.is_empty() && info.plural == "pods" {
            self.admit_pod_priority(obj).await?;
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
