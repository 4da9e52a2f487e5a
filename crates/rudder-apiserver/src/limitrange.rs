//! The LimitRanger admission plugin: a namespace's LimitRanges give pods'
//! containers default requests and limits, and bound what pods and
//! claims may ask (min, max, maxLimitRequestRatio), with Kubernetes'
//! messages. Pods are handled on create only (their containers cannot
//! change afterwards); claims on create and update.

use std::collections::BTreeMap;

use rudder_apimachinery::resources::{self, Amount, ResourceList};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::object::meta_str;
use crate::registry::ResourceInfo;
use crate::rest::{decode, ApiResult};
use crate::ApiServer;

const LIMIT_RANGER_ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// The defaults Kubernetes gives a LimitRange's Container items: the
/// default limit falls back to max, the default request to the default
/// limit, then to min.
pub(crate) fn default_limit_range(obj: &mut Value) {
    let Some(limits) = obj
        .pointer_mut("/spec/limits")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for item in limits {
        if item["type"] != "Container" {
            continue;
        }
        for (from, to) in [
            ("max", "default"),
            ("default", "defaultRequest"),
            ("min", "defaultRequest"),
        ] {
            let source = item.get(from).and_then(Value::as_object).cloned();
            if !item[to].is_object() {
                item[to] = json!({});
            }
            for (k, v) in source.into_iter().flatten() {
                if item[to].get(&k).is_none() {
                    item[to][k] = v;
                }
            }
        }
    }
}

/// Go's aggregate error text: one message as is, several (duplicates
/// dropped) in brackets.
pub(crate) fn aggregate(errors: &[String]) -> String {
    let mut seen: Vec<&String> = Vec::new();
    for e in errors {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    match seen.as_slice() {
        [one] => (*one).clone(),
        many => format!(
            "[{}]",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn limit_list(item: &Value, field: &str) -> ResourceList {
    resources::list_from_json(item.get(field))
}

fn min_constraint(
    kind: &str,
    res: &str,
    enforced: &Amount,
    request: &ResourceList,
    limit: &ResourceList,
) -> Option<String> {
    let Some(req) = request.get(res) else {
        return Some(format!(
            "minimum {res} usage per {kind} is {enforced}.  No request is specified"
        ));
    };
    if req.milli_value() < enforced.milli_value() {
        return Some(format!(
            "minimum {res} usage per {kind} is {enforced}, but request is {req}"
        ));
    }
    match limit.get(res) {
        Some(lim) if lim.milli_value() < enforced.milli_value() => Some(format!(
            "minimum {res} usage per {kind} is {enforced}, but limit is {lim}"
        )),
        _ => None,
    }
}

fn max_constraint(
    kind: &str,
    res: &str,
    enforced: &Amount,
    request: &ResourceList,
    limit: &ResourceList,
) -> Option<String> {
    let Some(lim) = limit.get(res) else {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}.  No limit is specified"
        ));
    };
    if lim.milli_value() > enforced.milli_value() {
        return Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but limit is {lim}"
        ));
    }
    match request.get(res) {
        Some(req) if req.milli_value() > enforced.milli_value() => Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but request is {req}"
        )),
        _ => None,
    }
}

/// Claims state no limits: only the request is bounded by max.
fn max_request_constraint(
    kind: &str,
    res: &str,
    enforced: &Amount,
    request: &ResourceList,
) -> Option<String> {
    match request.get(res) {
        None => Some(format!(
            "maximum {res} usage per {kind} is {enforced}.  No request is specified"
        )),
        Some(req) if req.milli_value() > enforced.milli_value() => Some(format!(
            "maximum {res} usage per {kind} is {enforced}, but request is {req}"
        )),
        Some(_) => None,
    }
}

fn ratio_constraint(
    kind: &str,
    res: &str,
    enforced: &Amount,
    request: &ResourceList,
    limit: &ResourceList,
) -> Option<String> {
    let req = request.get(res).filter(|r| r.milli_value() != 0);
    let Some(req) = req else {
        return Some(format!("{res} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"));
    };
    let lim = limit.get(res).filter(|l| l.milli_value() != 0);
    let Some(lim) = lim else {
        return Some(format!("{res} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"));
    };
    let observed = lim.milli_value() as f64 / req.milli_value() as f64;
    if observed * 1000.0 > enforced.milli_value() as f64 {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {enforced}, but provided ratio is {observed:.6}"
        ));
    }
    None
}

fn check_item(
    item: &Value,
    kind: &str,
    request: &ResourceList,
    limit: &ResourceList,
    errors: &mut Vec<String>,
) {
    for (res, v) in limit_list(item, "min") {
        errors.extend(min_constraint(kind, &res, &v, request, limit));
    }
    for (res, v) in limit_list(item, "max") {
        errors.extend(max_constraint(kind, &res, &v, request, limit));
    }
    for (res, v) in limit_list(item, "maxLimitRequestRatio") {
        errors.extend(ratio_constraint(kind, &res, &v, request, limit));
    }
}

/// Kubernetes' pod defaulting: a container resource with a limit and no
/// request requests its limit.
pub(crate) fn default_requests_to_limits(pod: &mut Value) {
    for field in ["containers", "initContainers"] {
        let Some(list) = pod
            .pointer_mut(&format!("/spec/{field}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in list {
            let Some(limits) = c
                .pointer("/resources/limits")
                .and_then(Value::as_object)
                .cloned()
            else {
                continue;
            };
            if !c["resources"]["requests"].is_object() {
                c["resources"]["requests"] = json!({});
            }
            for (k, v) in limits {
                if c["resources"]["requests"].get(&k).is_none() {
                    c["resources"]["requests"][k] = v;
                }
            }
        }
    }
}

/// Fills each container's missing requests and limits from the range's
/// Container defaults and records what it set in the annotation.
fn mutate_pod(range: &Value, pod: &mut Value) {
    let mut default_limits = ResourceList::new();
    let mut default_requests = ResourceList::new();
    let mut raw: BTreeMap<(bool, String), Value> = BTreeMap::new();
    for item in range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if item["type"] != "Container" {
            continue;
        }
        for (is_limit, field) in [(false, "defaultRequest"), (true, "default")] {
            for (k, v) in item
                .get(field)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if let Some(a) = Amount::from_json(v) {
                    if is_limit {
                        default_limits.insert(k.clone(), a);
                    } else {
                        default_requests.insert(k.clone(), a);
                    }
                    raw.insert((is_limit, k.clone()), v.clone());
                }
            }
        }
    }
    if default_limits.is_empty() && default_requests.is_empty() {
        return;
    }
    let mut notes = Vec::new();
    for (field, prefix) in [
        ("containers", "container"),
        ("initContainers", "init container"),
    ] {
        let Some(list) = pod
            .pointer_mut(&format!("/spec/{field}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in list {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            if !c["resources"].is_object() {
                c["resources"] = json!({});
            }
            let mut set_limits = Vec::new();
            let mut set_requests = Vec::new();
            for (bucket, defaults, is_limit, set) in [
                ("limits", &default_limits, true, &mut set_limits),
                ("requests", &default_requests, false, &mut set_requests),
            ] {
                if !c["resources"][bucket].is_object() {
                    c["resources"][bucket] = json!({});
                }
                for k in defaults.keys() {
                    if c["resources"][bucket].get(k).is_none() {
                        c["resources"][bucket][k] = raw[&(is_limit, k.clone())].clone();
                        set.push(k.clone());
                    }
                }
            }
            if !set_requests.is_empty() {
                notes.push(format!(
                    "{} request for {prefix} {name}",
                    set_requests.join(", ")
                ));
            }
            if !set_limits.is_empty() {
                notes.push(format!(
                    "{} limit for {prefix} {name}",
                    set_limits.join(", ")
                ));
            }
        }
    }
    if !notes.is_empty() {
        if !pod["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = json!({});
        }
        pod["metadata"]["annotations"][LIMIT_RANGER_ANNOTATION] =
            json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
}

fn validate_pod(range: &Value, pod: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let spec = &pod["spec"];
    for item in range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match item["type"].as_str() {
            Some("Container") => {
                for field in ["containers", "initContainers"] {
                    for c in spec[field].as_array().into_iter().flatten() {
                        let request = resources::list_from_json(c.pointer("/resources/requests"));
                        let limit = resources::container_limits(c);
                        check_item(item, "Container", &request, &limit, &mut errors);
                    }
                }
            }
            Some("Pod") => {
                // The pod's own total, without its runtime overhead.
                let mut bare = spec.clone();
                if let Some(o) = bare.as_object_mut() {
                    o.remove("overhead");
                }
                let request = resources::pod_requests(&bare);
                let limit = resources::pod_limits(&bare);
                check_item(item, "Pod", &request, &limit, &mut errors);
            }
            _ => {}
        }
    }
    errors
}

fn validate_claim(range: &Value, pvc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let request = resources::list_from_json(pvc.pointer("/spec/resources/requests"));
    for item in range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if item["type"] != "PersistentVolumeClaim" {
            continue;
        }
        for (res, v) in limit_list(item, "min") {
            errors.extend(min_constraint(
                "PersistentVolumeClaim",
                &res,
                &v,
                &request,
                &ResourceList::new(),
            ));
        }
        for (res, v) in limit_list(item, "max") {
            errors.extend(max_request_constraint(
                "PersistentVolumeClaim",
                &res,
                &v,
                &request,
            ));
        }
    }
    errors
}

impl ApiServer {
    /// The namespace's LimitRanges, defaulted, read from the store so a
    /// range created a moment ago applies at once.
    async fn limit_ranges(&self, ns: &str) -> ApiResult<Vec<Value>> {
        let info = self
            .registry()
            .get("", "v1", "limitranges")
            .ok_or_else(|| ApiError::Internal("limitranges are not registered".into()))?;
        let all = self
            .store()
            .range(rudder_store::RangeRequest::prefix(
                info.list_prefix(Some(ns)),
            ))
            .await?;
        let mut out = Vec::new();
        for kv in &all.kvs {
            let mut range = decode(kv)?;
            default_limit_range(&mut range);
            out.push(range);
        }
        Ok(out)
    }

    /// LimitRanger for a pod or claim being created (`old` is `None`) or a
    /// claim being updated.
    pub(crate) async fn admit_limit_ranges(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<()> {
        let is_pod = info.group.is_empty() && info.plural == "pods";
        let is_claim = info.group.is_empty() && info.plural == "persistentvolumeclaims";
        if !(is_pod && old.is_none() || is_claim) {
            return Ok(());
        }
        if old.is_some_and(|o| {
            o.pointer("/metadata/deletionTimestamp")
                .is_some_and(|d| !d.is_null())
        }) {
            return Ok(());
        }
        let Some(ns) = meta_str(obj, "namespace").map(str::to_owned) else {
            return Ok(());
        };
        if is_pod {
            default_requests_to_limits(obj);
        }
        let ranges = self.limit_ranges(&ns).await?;
        if is_pod {
            for range in &ranges {
                mutate_pod(range, obj);
            }
        }
        for range in &ranges {
            let errors = if is_pod {
                validate_pod(range, obj)
            } else {
                validate_claim(range, obj)
            };
            if !errors.is_empty() {
                let name = meta_str(obj, "name")
                    .filter(|n| !n.is_empty())
                    .or_else(|| meta_str(obj, "generateName"))
                    .unwrap_or_default();
                return Err(ApiError::Forbidden(format!(
                    "{} {name:?} is forbidden: {}",
                    info.plural,
                    aggregate(&errors)
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_defaults_and_bounds() {
        let mut range = json!({"spec": {"limits": [{"type": "Container",
            "max": {"cpu": "1"}, "min": {"cpu": "100m"}, "defaultRequest": {"memory": "64Mi"},
            "maxLimitRequestRatio": {"cpu": "4"}}]}});
        default_limit_range(&mut range);
        assert_eq!(range["spec"]["limits"][0]["default"], json!({"cpu": "1"}));
        assert_eq!(
            range["spec"]["limits"][0]["defaultRequest"],
            json!({"cpu": "1", "memory": "64Mi"})
        );
        let mut pod = json!({"metadata": {}, "spec": {"containers": [{"name": "c"}]}});
        mutate_pod(&range, &mut pod);
        assert_eq!(
            pod["spec"]["containers"][0]["resources"],
            json!({
            "limits": {"cpu": "1"}, "requests": {"cpu": "1", "memory": "64Mi"}})
        );
        assert_eq!(
            pod["metadata"]["annotations"][LIMIT_RANGER_ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container c; cpu limit for container c"
        );
        assert!(validate_pod(&range, &pod).is_empty());
        let big = json!({"spec": {"containers": [{"name": "c", "resources": {
            "limits": {"cpu": "2"}, "requests": {"cpu": "200m"}}}]}});
        assert_eq!(
            validate_pod(&range, &big),
            vec![
                "maximum cpu usage per Container is 1, but limit is 2".to_owned(),
                "cpu max limit to request ratio per Container is 4, but provided ratio is 10.000000".to_owned(),
            ]
        );
        assert_eq!(
            aggregate(&validate_pod(&range, &big)),
            "[maximum cpu usage per Container is 1, but limit is 2, cpu max limit to request ratio per Container is 4, but provided ratio is 10.000000]"
        );
        let small = json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": "50m"}}}]}});
        assert_eq!(
            validate_pod(&range, &small)[0],
            "minimum cpu usage per Container is 100m, but request is 50m"
        );
    }

    #[test]
    fn pods_and_claims_are_bounded_as_a_whole() {
        let range = json!({"spec": {"limits": [
            {"type": "Pod", "max": {"memory": "1Gi"}},
            {"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "10Gi"}}]}});
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"memory": "768Mi"}}},
            {"name": "b", "resources": {"limits": {"memory": "512Mi"}}}]}});
        let mut defaulted = pod.clone();
        default_requests_to_limits(&mut defaulted);
        assert_eq!(
            validate_pod(&range, &defaulted),
            vec!["maximum memory usage per Pod is 1Gi, but limit is 1280Mi".to_owned()]
        );
        let claim = |size: &str| json!({"spec": {"resources": {"requests": {"storage": size}}}});
        assert!(validate_claim(&range, &claim("5Gi")).is_empty());
        assert_eq!(
            validate_claim(&range, &claim("20Gi")),
            vec![
                "maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"
                    .to_owned()
            ]
        );
        assert_eq!(
            validate_claim(&range, &claim("500Mi")),
            vec![
                "minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"
                    .to_owned()
            ]
        );
    }
}
