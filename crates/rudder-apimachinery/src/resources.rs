//! Exact resource arithmetic and the quota usage of objects, shared by the
//! API server (LimitRanger and ResourceQuota admission) and the controller
//! manager (the ResourceQuota controller), so both count alike.
//!
//! [`Amount`] keeps a quantity exactly (in billionths) together with the
//! format it was written in, so sums and the amounts in messages print as
//! Kubernetes prints them (`1500m`, `1Gi`, `2`). Syntax is checked by
//! [`crate::quantity::Quantity::parse`]; the floating-point value of that
//! type is not exact enough to add many `700m`s, hence this one.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::SystemTime;

use serde_json::{json, Map, Value};

use crate::quantity::Quantity;

const NANO: i128 = 1_000_000_000;

/// How a quantity is written, as `resource.Format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `1Ki`, `5Gi`.
    BinarySI,
    /// `500m`, `2k`, `7`.
    DecimalSI,
    /// `1e3`.
    DecimalExponent,
}

/// An exact quantity.
#[derive(Clone, Copy, Debug)]
pub struct Amount {
    nanos: i128,
    format: Format,
}

impl PartialEq for Amount {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}
impl Eq for Amount {}
impl PartialOrd for Amount {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Amount {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Amount {
    /// Zero, written as a decimal (`0`).
    pub const ZERO: Amount = Amount {
        nanos: 0,
        format: Format::DecimalSI,
    };

    /// A whole number (object counts).
    pub fn from_int(n: i64) -> Amount {
        Amount {
            nanos: i128::from(n) * NANO,
            format: Format::DecimalSI,
        }
    }

    /// A whole number of bytes, written with binary suffixes (`80Mi`), as
    /// `resource.NewQuantity(n, resource.BinarySI)` makes it.
    pub fn from_bytes(n: i64) -> Amount {
        Amount {
            nanos: i128::from(n) * NANO,
            format: Format::BinarySI,
        }
    }

    /// Parses the quantity syntax exactly; fractions finer than a
    /// billionth round up, as Kubernetes rounds them.
    pub fn parse(text: &str) -> Option<Amount> {
        Quantity::parse(text)?;
        let text = text.trim();
        let split = text
            .char_indices()
            .find(|(i, c)| {
                !(c.is_ascii_digit() || *c == '.' || ((*c == '+' || *c == '-') && *i == 0))
            })
            .map_or(text.len(), |(i, _)| i);
        let (number, suffix) = text.split_at(split);
        let negative = number.starts_with('-');
        let digits = number.trim_start_matches(['+', '-']);
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all: String = format!("{whole}{fraction}");
        let all = all.trim_start_matches('0');
        if all.len() > 36 {
            return None;
        }
        let mantissa: i128 = if all.is_empty() { 0 } else { all.parse().ok()? };
        let (format, decimal_exp, binary_pow) = match suffix {
            "" => (Format::DecimalSI, 0, 0),
            "n" => (Format::DecimalSI, -9, 0),
            "u" => (Format::DecimalSI, -6, 0),
            "m" => (Format::DecimalSI, -3, 0),
            "k" => (Format::DecimalSI, 3, 0),
            "M" => (Format::DecimalSI, 6, 0),
            "G" => (Format::DecimalSI, 9, 0),
            "T" => (Format::DecimalSI, 12, 0),
            "P" => (Format::DecimalSI, 15, 0),
            "E" => (Format::DecimalSI, 18, 0),
            "Ki" => (Format::BinarySI, 0, 1),
            "Mi" => (Format::BinarySI, 0, 2),
            "Gi" => (Format::BinarySI, 0, 3),
            "Ti" => (Format::BinarySI, 0, 4),
            "Pi" => (Format::BinarySI, 0, 5),
            "Ei" => (Format::BinarySI, 0, 6),
            exp => (Format::DecimalExponent, exp[1..].parse::<i32>().ok()?, 0),
        };
        let scaled = mantissa.checked_mul(1024i128.checked_pow(binary_pow)?)?;
        let exp = decimal_exp + 9 - i32::try_from(fraction.len()).ok()?;
        let nanos = if exp >= 0 {
            scaled.checked_mul(10i128.checked_pow(exp.unsigned_abs())?)?
        } else {
            let div = 10i128.checked_pow(exp.unsigned_abs())?;
            (scaled + div - 1) / div
        };
        Some(Amount {
            nanos: if negative { -nanos } else { nanos },
            format,
        })
    }

    /// Parses a JSON quantity (a string, or a number some clients send).
    pub fn from_json(value: &Value) -> Option<Amount> {
        match value {
            Value::String(s) => Amount::parse(s),
            Value::Number(n) => Amount::parse(&n.to_string()),
            _ => None,
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The value rounded up to a whole number.
    pub fn value(&self) -> i128 {
        self.nanos.div_euclid(NANO) + i128::from(self.nanos.rem_euclid(NANO) != 0)
    }

    /// The value in thousandths, rounded up.
    pub fn milli_value(&self) -> i128 {
        let m = NANO / 1000;
        self.nanos.div_euclid(m) + i128::from(self.nanos.rem_euclid(m) != 0)
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The sum, written like `self` (like `other` when `self` is zero),
    /// as `Quantity.Add` does.
    pub fn add(&self, other: &Amount) -> Amount {
        Amount {
            nanos: self.nanos.saturating_add(other.nanos),
            format: if self.is_zero() {
                other.format
            } else {
                self.format
            },
        }
    }

    pub fn sub(&self, other: &Amount) -> Amount {
        Amount {
            nanos: self.nanos.saturating_sub(other.nanos),
            format: if self.is_zero() {
                other.format
            } else {
                self.format
            },
        }
    }

    /// The ratio `self / other` as a float (for limit-to-request ratios).
    pub fn ratio(&self, other: &Amount) -> f64 {
        self.nanos as f64 / other.nanos as f64
    }
}

/// The canonical form `Quantity.String()` prints.
impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let mut format = self.format;
        if format == Format::BinarySI && (self.nanos.abs() < 1024 * NANO || self.nanos % NANO != 0)
        {
            // Small or fractional binary amounts print as decimals.
            format = Format::DecimalSI;
        }
        if format == Format::BinarySI {
            let mut v = self.nanos / NANO;
            let mut power = 0;
            while power < 6 && v % 1024 == 0 {
                v /= 1024;
                power += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
            return write!(f, "{v}{suffix}");
        }
        let mut mantissa = self.nanos;
        let mut exp = -9;
        while exp < 18 && mantissa % 1000 == 0 {
            mantissa /= 1000;
            exp += 3;
        }
        if format == Format::DecimalExponent {
            if exp == 0 {
                return write!(f, "{mantissa}");
            }
            return write!(f, "{mantissa}e{exp}");
        }
        let suffix = match exp {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            _ => "",
        };
        write!(f, "{mantissa}{suffix}")
    }
}

/// Named amounts (`corev1.ResourceList`), sorted by name.
pub type ResourceList = BTreeMap<String, Amount>;

/// Reads a resource list from JSON; entries that are not quantities are
/// skipped (validation refuses them before they get here).
pub fn list_from_json(value: Option<&Value>) -> ResourceList {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Amount::from_json(v).map(|a| (k.clone(), a)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn list_to_json(list: &ResourceList) -> Value {
    Value::Object(
        list.iter()
            .map(|(k, v)| (k.clone(), json!(v.to_string())))
            .collect::<Map<_, _>>(),
    )
}

/// `a + b` per name; names in one list only are kept (`quota.Add`).
pub fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, v) in b {
        out.entry(k.clone())
            .and_modify(|x| *x = x.add(v))
            .or_insert(*v);
    }
    out
}

/// `a - b` per name (`quota.Subtract`).
pub fn subtract(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, v) in b {
        out.entry(k.clone())
            .and_modify(|x| *x = x.sub(v))
            .or_insert_with(|| Amount::ZERO.sub(v));
    }
    out
}

/// `a - b`, never below zero (`quota.SubtractWithNonNegativeResult`).
pub fn subtract_non_negative(a: &ResourceList, b: &ResourceList) -> ResourceList {
    subtract(a, b)
        .into_iter()
        .map(|(k, v)| {
            let v = if v.is_negative() {
                Amount {
                    nanos: 0,
                    format: v.format,
                }
            } else {
                v
            };
            (k, v)
        })
        .collect()
}

/// Only the named entries (`quota.Mask`).
pub fn mask<'a>(list: &ResourceList, names: impl IntoIterator<Item = &'a String>) -> ResourceList {
    let names: BTreeSet<&String> = names.into_iter().collect();
    list.iter()
        .filter(|(k, _)| names.contains(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Whether every entry of `a` that `b` also names is at most `b`'s; the
/// names over it otherwise (`quota.LessThanOrEqual`).
pub fn less_than_or_equal(a: &ResourceList, b: &ResourceList) -> (bool, Vec<String>) {
    let over: Vec<String> = b
        .iter()
        .filter(|(k, limit)| a.get(*k).is_some_and(|used| used > limit))
        .map(|(k, _)| k.clone())
        .collect();
    (over.is_empty(), over)
}

/// Whether two lists hold the same names and amounts (`quota.Equals`).
pub fn equals(a: &ResourceList, b: &ResourceList) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// `name=amount,name=amount`, sorted, as quota messages print lists.
pub fn pretty_print(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------
// Pods' resources.

fn containers<'a>(spec: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    spec.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// A container's requests, with the default Kubernetes applies to pods:
/// a resource with a limit and no request requests its limit.
pub fn container_requests(container: &Value) -> ResourceList {
    let mut requests = list_from_json(container.pointer("/resources/requests"));
    for (k, v) in container_limits(container) {
        requests.entry(k).or_insert(v);
    }
    requests
}

pub fn container_limits(container: &Value) -> ResourceList {
    list_from_json(container.pointer("/resources/limits"))
}

fn is_sidecar(container: &Value) -> bool {
    container.get("restartPolicy").and_then(Value::as_str) == Some("Always")
}

fn max_into(list: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        match list.get(k) {
            Some(x) if x >= v => {}
            _ => {
                list.insert(k.clone(), *v);
            }
        }
    }
}

/// What the pod as a whole requests (`resourcehelper.PodRequests`): the
/// containers and sidecars summed, at least the largest init step, plus
/// the pod overhead.
pub fn pod_requests(spec: &Value) -> ResourceList {
    pod_total(spec, container_requests, true)
}

/// The pod's limits (`resourcehelper.PodLimits`); the overhead adds only
/// to resources that have a limit.
pub fn pod_limits(spec: &Value) -> ResourceList {
    pod_total(spec, container_limits, false)
}

fn pod_total(
    spec: &Value,
    of: fn(&Value) -> ResourceList,
    overhead_everywhere: bool,
) -> ResourceList {
    let mut total = ResourceList::new();
    for c in containers(spec, "containers") {
        total = add(&total, &of(c));
    }
    let mut sidecars = ResourceList::new();
    let mut init_max = ResourceList::new();
    for c in containers(spec, "initContainers") {
        let own = of(c);
        let step = if is_sidecar(c) {
            total = add(&total, &own);
            sidecars = add(&sidecars, &own);
            sidecars.clone()
        } else {
            add(&own, &sidecars)
        };
        max_into(&mut init_max, &step);
    }
    max_into(&mut total, &init_max);
    let overhead = list_from_json(spec.get("overhead"));
    for (k, v) in &overhead {
        if overhead_everywhere || total.contains_key(k) {
            total = add(&total, &ResourceList::from([(k.clone(), *v)]));
        }
    }
    total
}

// ---------------------------------------------------------------------
// Quota evaluation (`pkg/quota/v1/evaluator/core`).

/// The resource names that constrain pods' compute use; a quota on any
/// of them requires every container to state it.
const POD_VALIDATION_SET: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];
const POD_RESOURCES: &[&str] = &[
    "count/pods",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
];
const SERVICE_RESOURCES: &[&str] = &[
    "count/services",
    "services",
    "services.loadbalancers",
    "services.nodeports",
];
const PVC_RESOURCES: &[&str] = &[
    "count/persistentvolumeclaims",
    "persistentvolumeclaims",
    "requests.storage",
];
const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// Extended resources (`example.com/gpu`) are quota'd as `requests.<name>`.
fn is_extended_resource(name: &str) -> bool {
    name.contains('/')
        && !name.starts_with("requests.")
        && !name.contains("kubernetes.io/")
        && !name.starts_with("count/")
}

/// The compute usage of requests and limits (`podComputeUsageHelper`).
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::from([("pods".to_owned(), Amount::from_int(1))]);
    for res in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(r) = requests.get(res) {
            out.insert(res.to_owned(), *r);
            out.insert(format!("requests.{res}"), *r);
        }
        if let Some(l) = limits.get(res) {
            out.insert(format!("limits.{res}"), *l);
        }
    }
    for (name, r) in requests {
        if name.starts_with("hugepages-") {
            out.insert(name.clone(), *r);
            out.insert(format!("requests.{name}"), *r);
        }
        if is_extended_resource(name) {
            out.insert(format!("requests.{name}"), *r);
        }
    }
    out
}

/// Whether a pod still counts against compute quota (`QuotaV1Pod`): not
/// finished, and not past its deletion grace period.
pub fn pod_counts_for_compute(pod: &Value, now: SystemTime) -> bool {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    let deletion = pod
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(crate::time::parse_rfc3339);
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    if let (Some(at), Some(grace)) = (deletion, grace) {
        let deadline = at + std::time::Duration::from_secs(grace.max(0).unsigned_abs());
        if now > deadline {
            return false;
        }
    }
    true
}

fn is_best_effort(spec: &Value) -> bool {
    containers(spec, "containers")
        .chain(containers(spec, "initContainers"))
        .all(|c| {
            let r = container_requests(c);
            let l = container_limits(c);
            ["cpu", "memory"]
                .iter()
                .all(|res| r.get(*res).is_none_or(Amount::is_zero) && !l.contains_key(*res))
        })
}

/// One scope requirement of a quota (`ScopedResourceSelectorRequirement`).
#[derive(Clone, Debug, PartialEq)]
pub struct ScopeRequirement {
    pub scope: String,
    pub operator: String,
    pub values: Vec<String>,
}

/// The quota's `spec.scopes` (as `Exists`) and `spec.scopeSelector`.
pub fn quota_scopes(quota: &Value) -> Vec<ScopeRequirement> {
    let mut out: Vec<ScopeRequirement> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| ScopeRequirement {
            scope: s.to_owned(),
            operator: "Exists".into(),
            values: Vec::new(),
        })
        .collect();
    for expr in quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(ScopeRequirement {
            scope: expr["scopeName"].as_str().unwrap_or_default().to_owned(),
            operator: expr["operator"].as_str().unwrap_or_default().to_owned(),
            values: expr["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        });
    }
    out
}

fn pod_matches_scope(req: &ScopeRequirement, pod: &Value) -> bool {
    let spec = &pod["spec"];
    let terminating = spec
        .get("activeDeadlineSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|s| s >= 0);
    match req.scope.as_str() {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => is_best_effort(spec),
        "NotBestEffort" => !is_best_effort(spec),
        "PriorityClass" => {
            let class = spec
                .get("priorityClassName")
                .and_then(Value::as_str)
                .unwrap_or("");
            match req.operator.as_str() {
                "Exists" => !class.is_empty(),
                "In" => req.values.iter().any(|v| v == class),
                "NotIn" => !req.values.iter().any(|v| v == class),
                // The scope's key is always present on a pod.
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => {
            let affinity = &spec["affinity"];
            ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
                ["requiredDuringSchedulingIgnoredDuringExecution"]
                    .iter()
                    .flat_map(|f| affinity[kind][f].as_array().into_iter().flatten())
                    .chain(
                        affinity[kind]["preferredDuringSchedulingIgnoredDuringExecution"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|w| &w["podAffinityTerm"]),
                    )
                    .any(|term| {
                        term["namespaces"].as_array().is_some_and(|n| !n.is_empty())
                            || term.get("namespaceSelector").is_some_and(|s| !s.is_null())
                    })
            })
        }
        _ => false,
    }
}

/// Which evaluator measures a kind of object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evaluator {
    Pods,
    Services,
    PersistentVolumeClaims,
    /// Any other kind: its `count/<resource>[.<group>]`, and for the
    /// four legacy kinds their old name too (`configmaps`, …).
    ObjectCount {
        count_name: String,
        alias: Option<&'static str>,
    },
}

impl Evaluator {
    pub fn for_resource(group: &str, plural: &str) -> Evaluator {
        match (group, plural) {
            ("", "pods") => Evaluator::Pods,
            ("", "services") => Evaluator::Services,
            ("", "persistentvolumeclaims") => Evaluator::PersistentVolumeClaims,
            _ => Evaluator::ObjectCount {
                count_name: if group.is_empty() {
                    format!("count/{plural}")
                } else {
                    format!("count/{plural}.{group}")
                },
                alias: match (group, plural) {
                    ("", "configmaps") => Some("configmaps"),
                    ("", "secrets") => Some("secrets"),
                    ("", "replicationcontrollers") => Some("replicationcontrollers"),
                    ("", "resourcequotas") => Some("resourcequotas"),
                    _ => None,
                },
            },
        }
    }

    /// Of `names`, those this evaluator measures (`MatchingResources`).
    pub fn matching_resources<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Vec<String> {
        names
            .into_iter()
            .filter(|n| match self {
                Evaluator::Pods => {
                    POD_RESOURCES.contains(&n.as_str())
                        || n.starts_with("hugepages-")
                        || n.starts_with("requests.hugepages-")
                        || n.strip_prefix("requests.")
                            .is_some_and(is_extended_resource)
                }
                Evaluator::Services => SERVICE_RESOURCES.contains(&n.as_str()),
                Evaluator::PersistentVolumeClaims => {
                    PVC_RESOURCES.contains(&n.as_str())
                        || n.split_once(STORAGE_CLASS_SUFFIX).is_some_and(|(_, r)| {
                            r == "requests.storage" || r == "persistentvolumeclaims"
                        })
                }
                Evaluator::ObjectCount { count_name, alias } => {
                    n.as_str() == count_name || Some(n.as_str()) == *alias
                }
            })
            .cloned()
            .collect()
    }

    /// Whether the object is in the quota's scopes. Only pods have scopes.
    pub fn matches_scopes(&self, quota: &Value, obj: &Value) -> bool {
        match self {
            Evaluator::Pods => quota_scopes(quota)
                .iter()
                .all(|req| pod_matches_scope(req, obj)),
            _ => true,
        }
    }

    /// Whether `quota` (by the hard amounts given) governs `obj`.
    pub fn matches(&self, hard: &ResourceList, quota: &Value, obj: &Value) -> bool {
        !self.matching_resources(hard.keys()).is_empty() && self.matches_scopes(quota, obj)
    }

    /// Whether updates of this kind can change usage (and are charged).
    pub fn charges_updates(&self) -> bool {
        matches!(
            self,
            Evaluator::Services | Evaluator::PersistentVolumeClaims
        )
    }

    /// What the object uses.
    pub fn usage(&self, obj: &Value, now: SystemTime) -> ResourceList {
        let one = Amount::from_int(1);
        match self {
            Evaluator::Pods => {
                let mut out = ResourceList::from([("count/pods".to_owned(), one)]);
                if pod_counts_for_compute(obj, now) {
                    let spec = &obj["spec"];
                    out = add(&out, &compute_usage(&pod_requests(spec), &pod_limits(spec)));
                }
                out
            }
            Evaluator::Services => {
                let spec = &obj["spec"];
                let ports = spec["ports"].as_array().map_or(0, Vec::len);
                let mut out = ResourceList::from([
                    ("count/services".to_owned(), one),
                    ("services".to_owned(), one),
                    ("services.loadbalancers".to_owned(), Amount::ZERO),
                    ("services.nodeports".to_owned(), Amount::ZERO),
                ]);
                match spec["type"].as_str() {
                    Some("NodePort") => {
                        out.insert("services.nodeports".into(), Amount::from_int(ports as i64));
                    }
                    Some("LoadBalancer") => {
                        let node_ports = if spec["allocateLoadBalancerNodePorts"] == json!(false) {
                            spec["ports"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter(|p| p["nodePort"].as_i64().is_some_and(|n| n != 0))
                                .count()
                        } else {
                            ports
                        };
                        out.insert(
                            "services.nodeports".into(),
                            Amount::from_int(node_ports as i64),
                        );
                        out.insert("services.loadbalancers".into(), one);
                    }
                    _ => {}
                }
                out
            }
            Evaluator::PersistentVolumeClaims => {
                let mut out = ResourceList::from([
                    ("count/persistentvolumeclaims".to_owned(), one),
                    ("persistentvolumeclaims".to_owned(), one),
                ]);
                let class = obj
                    .pointer("/spec/storageClassName")
                    .and_then(Value::as_str)
                    .or_else(|| {
                        obj.pointer(
                            "/metadata/annotations/volume.beta.kubernetes.io~1storage-class",
                        )
                        .and_then(Value::as_str)
                    })
                    .filter(|c| !c.is_empty());
                if let Some(class) = class {
                    out.insert(
                        format!("{class}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
                        one,
                    );
                }
                // A claim being resized counts the larger of what it asks
                // and what was allocated.
                let mut storage = Amount::from_json(
                    obj.pointer("/spec/resources/requests/storage")
                        .unwrap_or(&Value::Null),
                );
                if let Some(allocated) = obj
                    .pointer("/status/allocatedResources/storage")
                    .and_then(Amount::from_json)
                {
                    storage = Some(storage.map_or(allocated, |s| s.max(allocated)));
                }
                if let Some(storage) = storage {
                    out.insert("requests.storage".into(), storage);
                    if let Some(class) = class {
                        out.insert(
                            format!("{class}{STORAGE_CLASS_SUFFIX}requests.storage"),
                            storage,
                        );
                    }
                }
                out
            }
            Evaluator::ObjectCount { count_name, alias } => {
                let mut out = ResourceList::from([(count_name.clone(), one)]);
                if let Some(alias) = alias {
                    out.insert((*alias).to_owned(), one);
                }
                out
            }
        }
    }

    /// Checks what a quota on `required` demands of the object beyond its
    /// usage: every container of a pod states each constrained compute
    /// resource (`podEvaluator.Constraints`). The error is Kubernetes'
    /// text, e.g. `must specify limits.cpu for: c; memory for: c`.
    pub fn constraints(&self, required: &[String], obj: &Value) -> Result<(), String> {
        if *self != Evaluator::Pods {
            return Ok(());
        }
        let required: BTreeSet<&str> = required
            .iter()
            .map(String::as_str)
            .filter(|r| POD_VALIDATION_SET.contains(r))
            .collect();
        let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let spec = &obj["spec"];
        for c in containers(spec, "containers").chain(containers(spec, "initContainers")) {
            let usage = compute_usage(&container_requests(c), &container_limits(c));
            for r in &required {
                if !usage.contains_key(*r) {
                    missing
                        .entry(r)
                        .or_default()
                        .insert(c["name"].as_str().unwrap_or_default().to_owned());
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let parts: Vec<String> = missing
            .iter()
            .map(|(r, names)| {
                format!(
                    "{r} for: {}",
                    names.iter().cloned().collect::<Vec<_>>().join(",")
                )
            })
            .collect();
        Err(format!("must specify {}", parts.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    #[test]
    fn amounts_are_exact_and_print_canonically() {
        let sum = (0..10).fold(Amount::ZERO, |acc, _| acc.add(&q("700m")));
        assert_eq!(sum, q("7"));
        assert_eq!(sum.to_string(), "7");
        assert_eq!(q("700m").milli_value(), 700);
        assert_eq!(q("1500m").to_string(), "1500m");
        assert_eq!(q("1.5").to_string(), "1500m");
        assert_eq!(q("0.5").to_string(), "500m");
        assert_eq!(q("2000").to_string(), "2k");
        assert_eq!(q("1024Mi").to_string(), "1Gi");
        assert_eq!(q("1.5Gi").to_string(), "1536Mi");
        assert_eq!(q("512").to_string(), "512");
        assert_eq!(q("1e3").to_string(), "1e3");
        assert_eq!(q("0.5Ki").to_string(), "512");
        assert_eq!(q("100Mi").value(), 100 << 20);
        assert_eq!(Amount::from_bytes(81920 * 1024).to_string(), "80Mi");
        assert_eq!(Amount::from_bytes(123_457).to_string(), "123457");
        assert_eq!(Amount::from_bytes(2000).to_string(), "2000");
        assert_eq!(Amount::from_bytes(1000).to_string(), "1k");
        assert_eq!(q("1n").milli_value(), 1, "milli values round up");
        assert_eq!(q("1Gi").add(&q("1G")).to_string(), "2073741824");
        assert_eq!(
            Amount::ZERO.add(&q("1Gi")).to_string(),
            "1Gi",
            "zero takes the other's format"
        );
        assert_eq!(q("1").sub(&q("2")).to_string(), "-1");
        assert!(Amount::parse("lots").is_none());
    }

    #[test]
    fn lists_add_mask_compare_and_print() {
        let a = ResourceList::from([("pods".into(), q("2")), ("cpu".into(), q("500m"))]);
        let b = ResourceList::from([("pods".into(), q("1")), ("memory".into(), q("1Gi"))]);
        let sum = add(&a, &b);
        assert_eq!(pretty_print(&sum), "cpu=500m,memory=1Gi,pods=3");
        assert_eq!(pretty_print(&mask(&sum, &["pods".to_owned()])), "pods=3");
        let hard = ResourceList::from([("pods".into(), q("2")), ("secrets".into(), q("1"))]);
        assert_eq!(
            less_than_or_equal(&sum, &hard),
            (false, vec!["pods".into()])
        );
        assert!(less_than_or_equal(&a, &hard).0);
        assert_eq!(
            pretty_print(&subtract_non_negative(&b, &a)),
            "cpu=0,memory=1Gi,pods=0"
        );
    }

    #[test]
    fn pod_usage_follows_kubernetes() {
        let pod = json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}]}});
        let usage = Evaluator::Pods.usage(&pod, SystemTime::now());
        assert_eq!(
            pretty_print(&usage),
            "count/pods=1,cpu=2,limits.cpu=1,limits.memory=1Gi,memory=1Gi,pods=1,requests.cpu=2,requests.memory=1Gi"
        );
        let done = json!({"spec": pod["spec"], "status": {"phase": "Succeeded"}});
        assert_eq!(
            pretty_print(&Evaluator::Pods.usage(&done, SystemTime::now())),
            "count/pods=1"
        );
        let required = vec![
            "limits.cpu".to_owned(),
            "limits.memory".to_owned(),
            "pods".to_owned(),
        ];
        assert_eq!(
            Evaluator::Pods.constraints(&required, &pod),
            Err("must specify limits.cpu for: b,i; limits.memory for: b,i".into())
        );
    }

    #[test]
    fn scopes_select_pods() {
        let quota = json!({"spec": {"scopes": ["NotBestEffort"], "scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        let pod = |class: &str, cpu: Option<&str>| {
            let resources = cpu.map_or(json!({}), |c| json!({"requests": {"cpu": c}}));
            json!({"spec": {"priorityClassName": class, "containers": [{"name": "c", "resources": resources}]}})
        };
        let e = Evaluator::Pods;
        assert!(e.matches_scopes(&quota, &pod("high", Some("1"))));
        assert!(!e.matches_scopes(&quota, &pod("low", Some("1"))));
        assert!(!e.matches_scopes(&quota, &pod("high", None)), "best effort");
        let terminating = json!({"spec": {"scopes": ["Terminating"]}});
        assert!(!e.matches_scopes(&terminating, &pod("", None)));
        assert!(e.matches_scopes(
            &terminating,
            &json!({"spec": {"activeDeadlineSeconds": 10}})
        ));
    }

    #[test]
    fn services_claims_and_counts() {
        let now = SystemTime::now();
        let lb = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        assert_eq!(
            pretty_print(&Evaluator::Services.usage(&lb, now)),
            "count/services=1,services=1,services.loadbalancers=1,services.nodeports=2"
        );
        let pvc = json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "5Gi"}}}});
        assert_eq!(
            pretty_print(&Evaluator::PersistentVolumeClaims.usage(&pvc, now)),
            "count/persistentvolumeclaims=1,fast.storageclass.storage.k8s.io/persistentvolumeclaims=1,fast.storageclass.storage.k8s.io/requests.storage=5Gi,persistentvolumeclaims=1,requests.storage=5Gi"
        );
        let cm = Evaluator::for_resource("", "configmaps");
        assert_eq!(
            pretty_print(&cm.usage(&json!({}), now)),
            "configmaps=1,count/configmaps=1"
        );
        let deploy = Evaluator::for_resource("apps", "deployments");
        assert_eq!(
            pretty_print(&deploy.usage(&json!({}), now)),
            "count/deployments.apps=1"
        );
        assert_eq!(
            deploy.matching_resources(&["count/deployments.apps".to_owned(), "pods".to_owned()]),
            vec!["count/deployments.apps".to_owned()]
        );
    }
}
