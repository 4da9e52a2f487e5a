//! Helpers every workload controller needs: owner references, pod
//! readiness and availability, label selectors, pods from templates and
//! the template hash.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use rudder_apimachinery::time::parse_rfc3339;

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The owner reference a controller puts on what it creates: it is the
/// controller, and foreground deletion of the owner waits for it.
pub fn controller_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether a typed label selector matches the labels. An empty selector
/// matches everything; a missing one nothing (callers decide).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(want) = &selector.match_labels {
        if want.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    for expr in selector.match_expressions.iter().flatten() {
        let value = labels.get(&expr.key);
        let values = expr.values.as_deref().unwrap_or_default();
        let ok = match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether the selector selects nothing at all (no labels, no
/// expressions): workload controllers refuse to own everything.
pub fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Running or about to: not finished and not being deleted.
pub fn is_pod_active(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_none()
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The pod's Ready condition, if true: when it became so.
pub fn ready_since(pod: &Pod) -> Option<Option<SystemTime>> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .and_then(|t| serde_json::to_value(t).ok())
                .and_then(|v| v.as_str().and_then(parse_rfc3339))
        })
}

pub fn is_pod_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds`. Returns `Err(wait)` with the
/// time left when it is ready but not yet long enough.
pub fn pod_availability(pod: &Pod, min_ready_seconds: i32, now: SystemTime) -> Availability {
    match ready_since(pod) {
        None => Availability::NotReady,
        Some(_) if min_ready_seconds <= 0 => Availability::Available,
        Some(None) => Availability::Available,
        Some(Some(since)) => {
            let needed = since + Duration::from_secs(min_ready_seconds as u64);
            match needed.duration_since(now) {
                Ok(left) if !left.is_zero() => Availability::ReadyFor(left),
                _ => Availability::Available,
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    NotReady,
    /// Ready, and available after this much longer.
    ReadyFor(Duration),
    Available,
}

pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: SystemTime) -> bool {
    pod_availability(pod, min_ready_seconds, now) == Availability::Available
}

/// A pod from a template, owned by `owner`, named `generate_name…`.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    owner: OwnerReference,
    generate_name: &str,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The characters Kubernetes uses for generated suffixes and hashes
/// (no vowels, so no words; no look-alike digits).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Encodes a number with the safe alphabet, as `rand.SafeEncodeString`
/// does to the decimal form of the hash.
pub fn safe_encode(value: u32) -> String {
    value
        .to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[(b as usize) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// FNV-1a, 32 bits: the hash Kubernetes uses for template hashes.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c9dc5;
    for b in data {
        hash ^= *b as u32;
        hash = hash.wrapping_mul(0x01000193);
    }
    hash
}

/// The `pod-template-hash` of a template (and the collision count, which
/// changes the hash when two templates collide).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(count) = collision_count {
        bytes.extend_from_slice(count.to_string().as_bytes());
    }
    safe_encode(fnv32a(&bytes))
}

/// Reads an int-or-percent (`maxSurge: 25%`) against a total, rounding
/// up or down as the field requires.
pub fn scaled_value(
    value: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    total: i32,
    round_up: bool,
    default: i32,
) -> Result<i32, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match value {
        None => Ok(default),
        Some(IntOrString::Int(n)) => Ok(*n),
        Some(IntOrString::String(s)) => {
            let Some(pct) = s.strip_suffix('%') else {
                return s
                    .parse::<i32>()
                    .map_err(|_| format!("invalid value for IntOrString: invalid value {s:?}"));
            };
            let pct: i64 = pct
                .parse()
                .map_err(|_| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let product = pct * total as i64;
            Ok(if round_up {
                (product + 99) / 100
            } else {
                product / 100
            } as i32)
        }
    }
}

/// Labels of an object as a map (empty when it has none).
pub fn labels_of(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

/// A kube error's HTTP code, if the API answered.
pub fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

pub fn is_not_found(err: &kube::Error) -> bool {
    api_code(err) == Some(404)
}

pub fn is_conflict(err: &kube::Error) -> bool {
    api_code(err) == Some(409)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::json;

    #[test]
    fn selectors_match_labels_and_expressions() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                  {"key": "canary", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "a")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "c")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])
        ));
        assert!(selector_is_empty(&LabelSelector::default()));
    }

    #[test]
    fn percentages_round_as_the_field_says() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(scaled_value(Some(&pct), 10, true, 0), Ok(3));
        assert_eq!(scaled_value(Some(&pct), 10, false, 0), Ok(2));
        assert_eq!(scaled_value(Some(&IntOrString::Int(2)), 10, true, 0), Ok(2));
        assert_eq!(scaled_value(None, 10, true, 1), Ok(1));
        assert!(scaled_value(Some(&IntOrString::String("x%".into())), 10, true, 0).is_err());
    }

    #[test]
    fn hashes_use_the_safe_alphabet_and_follow_the_template() {
        let a: PodTemplateSpec =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "image": "a"}]}}))
                .unwrap();
        let mut b = a.clone();
        b.spec.as_mut().unwrap().containers[0].image = Some("b".into());
        let ha = template_hash(&a, None);
        assert_eq!(ha, template_hash(&a, None));
        assert_ne!(ha, template_hash(&b, None));
        assert_ne!(ha, template_hash(&a, Some(1)));
        assert!(ha.bytes().all(|c| SAFE_ALPHABET.contains(&c)));
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
    }
}
