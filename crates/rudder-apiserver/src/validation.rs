//! Kind-specific validation of built-in objects: the checks users meet
//! most (required fields, enums, quantities, immutable fields), with the
//! field paths and messages Kubernetes uses.

use rudder_apimachinery::selector::LabelSelector;
use serde_json::{json, Value};

use crate::error::FieldCause;
use crate::registry::ResourceInfo;

mod networking;

/// Validates `obj` (the new object), with `old` on updates.
pub fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<FieldCause> {
    let mut v = Validator::default();
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => {
            v.pod_spec("spec", &obj["spec"]);
            if let Some(old) = old {
                v.pod_update(obj, old);
            }
        }
        ("", "podtemplates") => v.template("template", &obj["template"], None),
        ("", "replicationcontrollers") => {
            v.replicas("spec.replicas", &obj["spec"]);
            let selector = obj.pointer("/spec/selector").and_then(Value::as_object);
            if selector.is_none_or(|s| s.is_empty()) {
                v.push(FieldCause::required("spec.selector", ""));
            }
            v.template("spec.template", &obj["spec"]["template"], None);
        }
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets") => {
            if info.plural != "daemonsets" {
                v.replicas("spec.replicas", &obj["spec"]);
            }
            let selector = v.selector("spec.selector", obj.pointer("/spec/selector"));
            v.template("spec.template", &obj["spec"]["template"], selector.as_ref());
            if let Some(old) = old {
                // apps/v1 selectors cannot change after creation.
                if obj.pointer("/spec/selector") != old.pointer("/spec/selector") {
                    v.push(FieldCause::immutable("spec.selector"));
                }
            }
            if info.plural == "deployments" {
                v.enum_value(
                    "spec.strategy.type",
                    obj.pointer("/spec/strategy/type"),
                    &["Recreate", "RollingUpdate"],
                );
                if obj.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate")
                    && obj
                        .pointer("/spec/strategy/rollingUpdate")
                        .is_some_and(|r| !r.is_null())
                {
                    v.push(FieldCause::forbidden(
                        "spec.strategy.rollingUpdate",
                        "may not be specified when strategy `type` is 'Recreate'",
                    ));
                }
            }
        }
        ("batch", "jobs") => {
            for field in [
                "parallelism",
                "completions",
                "backoffLimit",
                "activeDeadlineSeconds",
            ] {
                v.non_negative(
                    &format!("spec.{field}"),
                    obj.pointer(&format!("/spec/{field}")),
                );
            }
            let policy = obj
                .pointer("/spec/template/spec/restartPolicy")
                .and_then(Value::as_str);
            if !matches!(policy, Some("OnFailure" | "Never")) {
                v.push(FieldCause::unsupported(
                    "spec.template.spec.restartPolicy",
                    policy.unwrap_or(""),
                    &["OnFailure", "Never"],
                ));
            }
            v.template("spec.template", &obj["spec"]["template"], None);
            if let Some(old) = old {
                for field in ["selector", "template", "completions"] {
                    let path = format!("/spec/{field}");
                    if field == "template"
                        && obj.pointer("/spec/suspend") == Some(&Value::Bool(true))
                    {
                        continue;
                    }
                    if obj.pointer(&path) != old.pointer(&path) {
                        v.push(FieldCause::immutable(format!("spec.{field}")));
                    }
                }
            }
        }
        ("batch", "cronjobs") => {
            match obj.pointer("/spec/schedule").and_then(Value::as_str) {
                None | Some("") => v.push(FieldCause::required("spec.schedule", "")),
                Some(schedule) => {
                    if let Err(reason) = check_cron_schedule(schedule) {
                        v.push(FieldCause::invalid("spec.schedule", schedule, &reason));
                    }
                }
            }
            v.enum_value(
                "spec.concurrencyPolicy",
                obj.pointer("/spec/concurrencyPolicy"),
                &["Allow", "Forbid", "Replace"],
            );
        }
        ("", "services") => v.service(obj, old),
        ("", "configmaps") => v.config_keys(obj, &["data", "binaryData"]),
        ("", "secrets") => {
            v.config_keys(obj, &["data"]);
            if let Some(data) = obj.get("data").and_then(Value::as_object) {
                use base64::Engine;
                for (key, value) in data {
                    let ok = value.as_str().is_some_and(|s| {
                        base64::engine::general_purpose::STANDARD.decode(s).is_ok()
                    });
                    if !ok {
                        v.push(FieldCause::invalid(
                            format!("data[{key}]"),
                            "<secret contents redacted>",
                            "must be base64-encoded bytes",
                        ));
                    }
                }
            }
            if let Some(old) = old {
                if obj.get("type") != old.get("type") {
                    v.push(FieldCause::immutable("type"));
                }
            }
        }
        ("", "namespaces") => {
            if let Some(old) = old {
                if obj.pointer("/spec/finalizers") != old.pointer("/spec/finalizers") {
                    // spec.finalizers change only through the finalize subresource.
                    v.push(FieldCause::forbidden(
                        "spec.finalizers",
                        "may only be changed through the finalize subresource",
                    ));
                }
            }
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            v.causes.extend(crate::crd::validate(obj, old));
        }
        ("scheduling.k8s.io", "priorityclasses") => {
            match obj.get("value") {
                Some(Value::Number(n)) if n.as_i64().is_some_and(|x| x <= 1_000_000_000) => {}
                Some(Value::Number(n))
                    if n.as_i64().is_some()
                        && obj
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .is_some_and(|n| n.starts_with("system-")) => {}
                Some(other) => v.push(FieldCause::invalid(
                    "value",
                    &other.to_string(),
                    "must be no greater than 1000000000 for user-defined priority classes",
                )),
                None => v.push(FieldCause::required("value", "")),
            }
            if let Some(old) = old {
                if obj.get("value") != old.get("value") {
                    v.push(FieldCause::forbidden(
                        "value",
                        "may not be changed in an update.",
                    ));
                }
            }
        }
        ("autoscaling", "horizontalpodautoscalers") => v.hpa_spec(&obj["spec"]),
        ("networking.k8s.io", "networkpolicies") => v.network_policy(obj),
        ("networking.k8s.io", "ingresses") => v.ingress(obj),
        ("networking.k8s.io", "ingressclasses") => v.ingress_class(obj, old),
        (
            "admissionregistration.k8s.io",
            plural @ ("mutatingwebhookconfigurations" | "validatingwebhookconfigurations"),
        ) => {
            let mutating = plural == "mutatingwebhookconfigurations";
            v.causes
                .extend(crate::webhook::validate_configuration(obj, mutating));
            // Accepted, so manifests written for Kubernetes install, but
            // the writer is told the conditions will not narrow anything.
            for (i, hook) in obj["webhooks"].as_array().into_iter().flatten().enumerate() {
                if hook["matchConditions"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
                {
                    crate::auth::admission::warn(format!(
                        "webhooks[{i}].matchConditions: Rudder does not evaluate CEL; webhook {:?} is called as if every condition held",
                        hook["name"].as_str().unwrap_or_default()
                    ));
                }
            }
        }
        _ => {}
    }
    v.causes
}

/// `field.Invalid` with a number, which Kubernetes prints unquoted.
fn invalid_number(field: impl Into<String>, value: &Value, detail: &str) -> FieldCause {
    FieldCause {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: format!("Invalid value: {value}: {detail}"),
    }
}

/// The metric source types of autoscaling/v2 and the field each fills.
const METRIC_SOURCES: &[(&str, &str)] = &[
    ("ContainerResource", "containerResource"),
    ("External", "external"),
    ("Object", "object"),
    ("Pods", "pods"),
    ("Resource", "resource"),
];

#[derive(Default)]
struct Validator {
    causes: Vec<FieldCause>,
}

impl Validator {
    fn push(&mut self, cause: FieldCause) {
        self.causes.push(cause);
    }

    fn enum_value(&mut self, field: &str, value: Option<&Value>, allowed: &[&str]) {
        match value {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => {}
            Some(other) => {
                let text = other
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| other.to_string());
                self.push(FieldCause::unsupported(field, &text, allowed));
            }
        }
    }

    /// autoscaling/v2 `HorizontalPodAutoscalerSpec`, with kube-apiserver's
    /// messages (HPAScaleToZero off: minReplicas is at least 1).
    fn hpa_spec(&mut self, spec: &Value) {
        let min = spec.get("minReplicas").filter(|v| !v.is_null());
        if let Some(min) = min {
            if min.as_i64().is_none_or(|m| m < 1) {
                self.push(invalid_number(
                    "spec.minReplicas",
                    min,
                    "must be greater than or equal to 1",
                ));
            }
        }
        let max = spec.get("maxReplicas").cloned().unwrap_or(json!(0));
        if max.as_i64().is_none_or(|m| m < 1) {
            self.push(invalid_number(
                "spec.maxReplicas",
                &max,
                "must be greater than 0",
            ));
        }
        if let (Some(min), Some(max)) = (min.and_then(Value::as_i64), max.as_i64()) {
            if max < min {
                self.push(invalid_number(
                    "spec.maxReplicas",
                    &json!(max),
                    "must be greater than or equal to `minReplicas`",
                ));
            }
        }
        for field in ["kind", "name"] {
            let path = format!("spec.scaleTargetRef.{field}");
            match spec
                .pointer(&format!("/scaleTargetRef/{field}"))
                .and_then(Value::as_str)
            {
                None | Some("") => self.push(FieldCause::required(path, "")),
                Some(value)
                    if value.contains('/')
                        || value.contains('%')
                        || value == "."
                        || value == ".." =>
                {
                    self.push(FieldCause::invalid(path, value, "may not contain '/'"))
                }
                Some(_) => {}
            }
        }
        let metrics = spec
            .get("metrics")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, metric) in metrics.iter().enumerate() {
            self.hpa_metric(&format!("spec.metrics[{i}]"), metric);
        }
        if let Some(behavior) = spec.get("behavior").filter(|b| b.is_object()) {
            for direction in ["scaleUp", "scaleDown"] {
                if let Some(rules) = behavior.get(direction).filter(|r| r.is_object()) {
                    self.hpa_scaling_rules(&format!("spec.behavior.{direction}"), rules);
                }
            }
        }
    }

    fn hpa_metric(&mut self, path: &str, metric: &Value) {
        let kind = metric.get("type").and_then(Value::as_str).unwrap_or("");
        if kind.is_empty() {
            self.push(FieldCause::required(
                format!("{path}.type"),
                "must specify a metric source type",
            ));
        }
        let supported: Vec<&str> = METRIC_SOURCES.iter().map(|(t, _)| *t).collect();
        let expected = METRIC_SOURCES
            .iter()
            .find(|(t, _)| *t == kind)
            .map(|(_, f)| *f);
        if expected.is_none() {
            self.push(FieldCause::unsupported(
                format!("{path}.type"),
                kind,
                &supported,
            ));
        }
        let present: Vec<&str> = METRIC_SOURCES
            .iter()
            .map(|(_, f)| *f)
            .filter(|f| metric.get(*f).is_some_and(|v| !v.is_null()))
            .collect();
        if let Some(expected) = expected {
            if !present.contains(&expected) {
                self.push(FieldCause::required(
                    format!("{path}.{expected}"),
                    "must populate information for the given metric source",
                ));
            }
        }
        for other in present.iter().filter(|f| Some(**f) != expected) {
            self.push(FieldCause::forbidden(
                format!("{path}.{other}"),
                "must populate the given metric source only",
            ));
        }
        // Resource and ContainerResource targets are what this cluster's
        // metrics serve; their rules are checked in full.
        for source in ["resource", "containerResource"] {
            let Some(src) = metric.get(source).filter(|_| expected == Some(source)) else {
                continue;
            };
            let src_path = format!("{path}.{source}");
            if src
                .get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                self.push(FieldCause::required(
                    format!("{src_path}.name"),
                    "must specify a resource name",
                ));
            }
            if source == "containerResource"
                && src
                    .get("container")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                self.push(FieldCause::required(
                    format!("{src_path}.container"),
                    "must specify a container",
                ));
            }
            let target = src.get("target").cloned().unwrap_or(json!({}));
            self.hpa_metric_target(&format!("{src_path}.target"), &target);
            let utilization = target.get("averageUtilization").filter(|v| !v.is_null());
            let average = target.get("averageValue").filter(|v| !v.is_null());
            match (utilization, average) {
                (None, None) => self.push(FieldCause::required(
                    format!("{src_path}.target.averageUtilization"),
                    "must set either a target raw value or a target utilization",
                )),
                (Some(_), Some(_)) => self.push(FieldCause::forbidden(
                    format!("{src_path}.target.averageValue"),
                    "may not set both a target raw value and a target utilization",
                )),
                _ => {}
            }
        }
    }

    fn hpa_metric_target(&mut self, path: &str, target: &Value) {
        match target.get("type").and_then(Value::as_str).unwrap_or("") {
            "" => self.push(FieldCause::required(
                format!("{path}.type"),
                "must specify a metric target type",
            )),
            "Utilization" | "Value" | "AverageValue" => {}
            other => self.push(FieldCause::invalid(
                format!("{path}.type"),
                other,
                "must be either Utilization, Value, or AverageValue",
            )),
        }
        for field in ["value", "averageValue"] {
            if let Some(q) = target.get(field).filter(|v| !v.is_null()) {
                let positive = rudder_apimachinery::resources::Amount::from_json(q)
                    .is_some_and(|a| !a.is_zero() && !a.is_negative());
                if !positive {
                    let text = q
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| q.to_string());
                    self.push(FieldCause::invalid(
                        format!("{path}.{field}"),
                        &text,
                        "must be positive",
                    ));
                }
            }
        }
        if let Some(u) = target.get("averageUtilization").filter(|v| !v.is_null()) {
            if u.as_i64().is_none_or(|u| u < 1) {
                self.push(invalid_number(
                    format!("{path}.averageUtilization"),
                    u,
                    "must be greater than 0",
                ));
            }
        }
    }

    fn hpa_scaling_rules(&mut self, path: &str, rules: &Value) {
        if let Some(window) = rules
            .get("stabilizationWindowSeconds")
            .filter(|v| !v.is_null())
        {
            match window.as_i64() {
                Some(w) if w < 0 => self.push(invalid_number(
                    format!("{path}.stabilizationWindowSeconds"),
                    window,
                    "must be greater than or equal to zero",
                )),
                Some(w) if w > 3600 => self.push(invalid_number(
                    format!("{path}.stabilizationWindowSeconds"),
                    window,
                    "must be less than or equal to 3600",
                )),
                _ => {}
            }
        }
        self.enum_value(
            &format!("{path}.selectPolicy"),
            rules.get("selectPolicy"),
            &["Disabled", "Max", "Min"],
        );
        let policies = rules.get("policies").and_then(Value::as_array);
        if policies.is_none_or(Vec::is_empty) {
            self.push(FieldCause::required(
                format!("{path}.policies"),
                "must specify at least one Policy",
            ));
        }
        for (i, policy) in policies.into_iter().flatten().enumerate() {
            let p = format!("{path}.policies[{i}]");
            self.enum_value(
                &format!("{p}.type"),
                policy.get("type"),
                &["Percent", "Pods"],
            );
            if policy.get("type").is_none_or(Value::is_null) {
                self.push(FieldCause::unsupported(
                    format!("{p}.type"),
                    "",
                    &["Percent", "Pods"],
                ));
            }
            let value = policy.get("value").cloned().unwrap_or(json!(0));
            if value.as_i64().is_none_or(|v| v <= 0) {
                self.push(invalid_number(
                    format!("{p}.value"),
                    &value,
                    "must be greater than zero",
                ));
            }
            let period = policy.get("periodSeconds").cloned().unwrap_or(json!(0));
            match period.as_i64() {
                Some(s) if s > 1800 => self.push(invalid_number(
                    format!("{p}.periodSeconds"),
                    &period,
                    "must be less than or equal to 1800",
                )),
                Some(s) if s > 0 => {}
                _ => self.push(invalid_number(
                    format!("{p}.periodSeconds"),
                    &period,
                    "must be greater than zero",
                )),
            }
        }
    }

    fn non_negative(&mut self, field: &str, value: Option<&Value>) {
        if let Some(n) = value.and_then(Value::as_i64) {
            if n < 0 {
                self.push(FieldCause::invalid(
                    field,
                    &n.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
    }

    fn replicas(&mut self, field: &str, spec: &Value) {
        self.non_negative(field, spec.get("replicas"));
    }

    fn selector(&mut self, field: &str, selector: Option<&Value>) -> Option<LabelSelector> {
        let Some(selector) = selector.filter(|s| !s.is_null()) else {
            self.push(FieldCause::required(field, ""));
            return None;
        };
        match LabelSelector::from_json(selector) {
            Ok(parsed) if parsed.is_empty() => {
                self.push(FieldCause::invalid(
                    field,
                    "{}",
                    "empty selector is invalid for deployment",
                ));
                None
            }
            Ok(parsed) => Some(parsed),
            Err(err) => {
                self.push(FieldCause::invalid(
                    field,
                    &selector.to_string(),
                    &err.to_string(),
                ));
                None
            }
        }
    }

    fn template(&mut self, field: &str, template: &Value, selector: Option<&LabelSelector>) {
        if template.is_null() {
            self.push(FieldCause::required(field, ""));
            return;
        }
        if let Some(selector) = selector {
            if !selector.matches_object(template) {
                self.push(FieldCause::invalid(
                    format!("{field}.metadata.labels"),
                    &template
                        .pointer("/metadata/labels")
                        .map(Value::to_string)
                        .unwrap_or_default(),
                    "`selector` does not match template `labels`",
                ));
            }
        }
        self.pod_spec(&format!("{field}.spec"), &template["spec"]);
    }

    fn pod_spec(&mut self, field: &str, spec: &Value) {
        if spec.is_null() {
            self.push(FieldCause::required(field, ""));
            return;
        }
        let containers = spec.get("containers").and_then(Value::as_array);
        if containers.is_none_or(|c| c.is_empty()) {
            self.push(FieldCause::required(format!("{field}.containers"), ""));
        }
        let mut names = std::collections::HashSet::new();
        for list in ["initContainers", "containers"] {
            for (i, c) in spec
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let path = format!("{field}.{list}[{i}]");
                match c.get("name").and_then(Value::as_str) {
                    None | Some("") => self.push(FieldCause::required(format!("{path}.name"), "")),
                    Some(name) => {
                        if !crate::object::is_dns_label(name) {
                            self.push(FieldCause::invalid(format!("{path}.name"), name, "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
                        }
                        if !names.insert(name.to_owned()) {
                            self.push(FieldCause {
                                reason: "FieldValueDuplicate",
                                field: format!("{path}.name"),
                                message: format!("Duplicate value: {name:?}"),
                            });
                        }
                    }
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    self.push(FieldCause::required(format!("{path}.image"), ""));
                }
                self.enum_value(
                    &format!("{path}.imagePullPolicy"),
                    c.get("imagePullPolicy"),
                    &["Always", "IfNotPresent", "Never"],
                );
                for (j, port) in c
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    self.port(
                        &format!("{path}.ports[{j}].containerPort"),
                        port.get("containerPort"),
                        true,
                    );
                    if port.get("hostPort").is_some_and(|p| !p.is_null()) {
                        self.port(
                            &format!("{path}.ports[{j}].hostPort"),
                            port.get("hostPort"),
                            false,
                        );
                    }
                    self.enum_value(
                        &format!("{path}.ports[{j}].protocol"),
                        port.get("protocol"),
                        &["TCP", "UDP", "SCTP"],
                    );
                }
                for kind in ["requests", "limits"] {
                    if let Some(resources) = c
                        .pointer(&format!("/resources/{kind}"))
                        .and_then(Value::as_object)
                    {
                        for (name, quantity) in resources {
                            let text = quantity
                                .as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| quantity.to_string());
                            if rudder_apimachinery::quantity::Quantity::parse(&text).is_none() {
                                self.push(FieldCause::invalid(
                                    format!("{path}.resources.{kind}[{name}]"),
                                    &text,
                                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                                ));
                            }
                        }
                    }
                }
                if let (Some(req), Some(lim)) = (
                    c.pointer("/resources/requests"),
                    c.pointer("/resources/limits"),
                ) {
                    for (name, limit) in lim.as_object().into_iter().flatten() {
                        let (Some(l), Some(r)) = (
                            limit
                                .as_str()
                                .and_then(rudder_apimachinery::quantity::Quantity::parse),
                            req.get(name)
                                .and_then(Value::as_str)
                                .and_then(rudder_apimachinery::quantity::Quantity::parse),
                        ) else {
                            continue;
                        };
                        if r > l {
                            self.push(FieldCause::invalid(
                                format!("{path}.resources.requests"),
                                req[name].as_str().unwrap_or(""),
                                &format!(
                                    "must be less than or equal to {name} limit of {}",
                                    limit.as_str().unwrap_or("")
                                ),
                            ));
                        }
                    }
                }
            }
        }
        self.enum_value(
            &format!("{field}.restartPolicy"),
            spec.get("restartPolicy"),
            &["Always", "OnFailure", "Never"],
        );
        self.enum_value(
            &format!("{field}.dnsPolicy"),
            spec.get("dnsPolicy"),
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        );
        let mut volumes = std::collections::HashSet::new();
        for (i, volume) in spec
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            match volume.get("name").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => {
                    if !volumes.insert(name.to_owned()) {
                        self.push(FieldCause {
                            reason: "FieldValueDuplicate",
                            field: format!("{field}.volumes[{i}].name"),
                            message: format!("Duplicate value: {name:?}"),
                        });
                    }
                }
                _ => self.push(FieldCause::required(
                    format!("{field}.volumes[{i}].name"),
                    "",
                )),
            }
        }
        for list in ["initContainers", "containers"] {
            for (i, c) in spec
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                for (j, mount) in c
                    .get("volumeMounts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let name = mount.get("name").and_then(Value::as_str).unwrap_or("");
                    if !volumes.contains(name) {
                        self.push(FieldCause {
                            reason: "FieldValueNotFound",
                            field: format!("{field}.{list}[{i}].volumeMounts[{j}].name"),
                            message: format!("Not found: {name:?}"),
                        });
                    }
                }
            }
        }
    }

    fn pod_update(&mut self, new: &Value, old: &Value) {
        // Only a few pod fields may change after creation.
        let strip = |pod: &Value| {
            let mut spec = pod["spec"].clone();
            if let Some(spec) = spec.as_object_mut() {
                spec.remove("activeDeadlineSeconds");
                spec.remove("tolerations");
                spec.remove("schedulingGates");
                spec.remove("terminationGracePeriodSeconds");
                if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
                    for c in containers {
                        c.as_object_mut().map(|c| c.remove("image"));
                    }
                }
                if let Some(containers) =
                    spec.get_mut("initContainers").and_then(Value::as_array_mut)
                {
                    for c in containers {
                        c.as_object_mut().map(|c| c.remove("image"));
                    }
                }
            }
            spec
        };
        if strip(new) != strip(old) {
            self.push(FieldCause::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            ));
        }
    }

    fn port(&mut self, field: &str, value: Option<&Value>, required: bool) {
        match value.and_then(Value::as_i64) {
            Some(p) if (1..=65535).contains(&p) => {}
            Some(p) => self.push(FieldCause::invalid(
                field,
                &p.to_string(),
                "must be between 1 and 65535, inclusive",
            )),
            None if required => self.push(FieldCause::required(field, "")),
            None => {}
        }
    }

    fn service(&mut self, obj: &Value, old: Option<&Value>) {
        let spec = &obj["spec"];
        let kind = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP");
        self.enum_value(
            "spec.type",
            spec.get("type"),
            &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
        );
        let ports = spec
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if kind == "ExternalName" {
            if spec
                .get("externalName")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                self.push(FieldCause::required("spec.externalName", ""));
            }
        } else if ports.is_empty() && spec.get("clusterIP").and_then(Value::as_str) != Some("None")
        {
            self.push(FieldCause::required("spec.ports", ""));
        }
        let mut names = std::collections::HashSet::new();
        for (i, port) in ports.iter().enumerate() {
            self.port(&format!("spec.ports[{i}].port"), port.get("port"), true);
            if ports.len() > 1 {
                match port.get("name").and_then(Value::as_str) {
                    None | Some("") => {
                        self.push(FieldCause::required(format!("spec.ports[{i}].name"), ""))
                    }
                    Some(name) => {
                        if !names.insert(name.to_owned()) {
                            self.push(FieldCause {
                                reason: "FieldValueDuplicate",
                                field: format!("spec.ports[{i}].name"),
                                message: format!("Duplicate value: {name:?}"),
                            });
                        }
                    }
                }
            }
            if let Some(node_port) = port.get("nodePort").and_then(Value::as_i64) {
                if kind == "ClusterIP" {
                    self.push(FieldCause::forbidden(
                        format!("spec.ports[{i}].nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                }
                if !(30000..=32767).contains(&node_port) {
                    self.push(FieldCause::invalid(format!("spec.ports[{i}].nodePort"), &node_port.to_string(), "provided port is not in the valid range. The range of valid ports is 30000-32767"));
                }
            }
            self.enum_value(
                &format!("spec.ports[{i}].protocol"),
                port.get("protocol"),
                &["TCP", "UDP", "SCTP"],
            );
        }
        self.enum_value(
            "spec.sessionAffinity",
            spec.get("sessionAffinity"),
            &["ClientIP", "None"],
        );
        if let Some(old) = old {
            let old_ip = old
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("");
            let new_ip = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("");
            if !old_ip.is_empty() && old_ip != new_ip && kind != "ExternalName" {
                self.push(FieldCause::immutable("spec.clusterIP"));
            }
        }
    }

    fn config_keys(&mut self, obj: &Value, fields: &[&str]) {
        for field in fields {
            for key in obj
                .get(*field)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                let valid = !key.is_empty()
                    && key.len() <= 253
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                    && key != "."
                    && key != ".."
                    && !key.starts_with("..");
                if !valid {
                    self.push(FieldCause::invalid(
                        format!("{field}[{key}]"),
                        key,
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                    ));
                }
            }
        }
    }
}

/// Checks a cron schedule: five fields, or a predefined `@` schedule.
pub fn check_cron_schedule(schedule: &str) -> Result<(), String> {
    let schedule = schedule.trim();
    if let Some(rest) = schedule
        .strip_prefix("TZ=")
        .or_else(|| schedule.strip_prefix("CRON_TZ="))
    {
        let _ = rest;
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    if schedule.starts_with('@') {
        return match schedule {
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight"
            | "@hourly" => Ok(()),
            s if s.starts_with("@every ") => Ok(()),
            other => Err(format!("unrecognized descriptor: {other}")),
        };
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: {schedule}",
            fields.len()
        ));
    }
    let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    for (field, (lo, hi)) in fields.iter().zip(ranges) {
        for part in field.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (part, None),
            };
            if let Some(step) = step {
                if step.parse::<u32>().map_or(true, |s| s == 0) {
                    return Err(format!("failed to parse int from {step}"));
                }
            }
            if range == "*" || range == "?" {
                continue;
            }
            let bounds: Vec<&str> = range.split('-').collect();
            for b in &bounds {
                let value = b.parse::<u32>().ok().or_else(|| named_value(b));
                match value {
                    Some(v) if (lo..=hi).contains(&v) => {}
                    _ => {
                        return Err(format!(
                            "failed to parse int from {b}: out of range or not a number"
                        ))
                    }
                }
            }
            if bounds.len() > 2 {
                return Err(format!("too many hyphens: {range}"));
            }
        }
    }
    Ok(())
}

fn named_value(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let lower = name.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| *m == lower)
        .map(|i| i as u32 + 1)
        .or_else(|| DAYS.iter().position(|d| *d == lower).map(|i| i as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    fn check(plural: &str, group: &str, obj: Value, old: Option<Value>) -> Vec<String> {
        let registry = Registry::with_builtins();
        let info = registry.get(group, "v1", plural).unwrap();
        validate(&info, &obj, old.as_ref())
            .into_iter()
            .map(|c| c.field)
            .collect()
    }

    #[test]
    fn pods_need_named_containers_with_images() {
        assert_eq!(
            check("pods", "", json!({"spec": {"containers": []}}), None),
            vec!["spec.containers"]
        );
        let fields = check(
            "pods",
            "",
            json!({"spec": {"containers": [{"name": "a"}, {"name": "a", "image": "x", "resources": {"limits": {"cpu": "lots"}}}]}}),
            None,
        );
        assert_eq!(
            fields,
            vec![
                "spec.containers[0].image",
                "spec.containers[1].name",
                "spec.containers[1].resources.limits[cpu]"
            ]
        );
        assert!(check(
            "pods",
            "",
            json!({"spec": {"containers": [{"name": "a", "image": "x"}]}}),
            None
        )
        .is_empty());
    }

    #[test]
    fn deployment_selectors_must_match_and_never_change() {
        let d = |app: &str, sel: &str| {
            json!({"spec": {"replicas": 1, "selector": {"matchLabels": {"app": sel}},
                   "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
        };
        assert!(check("deployments", "apps", d("web", "web"), None).is_empty());
        assert_eq!(
            check("deployments", "apps", d("web", "db"), None),
            vec!["spec.template.metadata.labels"]
        );
        assert_eq!(
            check("deployments", "apps", d("db", "db"), Some(d("web", "web"))),
            vec!["spec.selector"]
        );
        assert_eq!(
            check(
                "deployments",
                "apps",
                json!({"spec": {"replicas": -1, "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
                None
            ),
            vec!["spec.replicas"]
        );
    }

    #[test]
    fn services_need_ports_and_keep_their_cluster_ip() {
        assert_eq!(
            check("services", "", json!({"spec": {"type": "ClusterIP"}}), None),
            vec!["spec.ports"]
        );
        assert_eq!(
            check(
                "services",
                "",
                json!({"spec": {"type": "Weird", "ports": [{"port": 80}]}}),
                None
            ),
            vec!["spec.type"]
        );
        let old = json!({"spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 80}]}});
        let new = json!({"spec": {"clusterIP": "10.43.0.11", "ports": [{"port": 80}]}});
        assert_eq!(
            check("services", "", new, Some(old)),
            vec!["spec.clusterIP"]
        );
    }

    #[test]
    fn cron_schedules_are_checked() {
        assert!(check_cron_schedule("*/5 * * * *").is_ok());
        assert!(check_cron_schedule("0 0 1 jan mon").is_ok());
        assert!(check_cron_schedule("@hourly").is_ok());
        assert!(check_cron_schedule("61 * * * *").is_err());
        assert!(check_cron_schedule("* * * *").is_err());
        assert!(check_cron_schedule("not a schedule").is_err());
    }

    fn hpa_causes(spec: Value) -> Vec<(String, String)> {
        let registry = Registry::with_builtins();
        let info = registry
            .get("autoscaling", "v2", "horizontalpodautoscalers")
            .unwrap();
        let mut obj = json!({"metadata": {"name": "h"}, "spec": spec});
        crate::defaults::prepare_for_create(&info, &mut obj);
        validate(&info, &obj, None)
            .into_iter()
            .map(|c| (c.field, c.message))
            .collect()
    }

    #[test]
    fn hpas_are_validated_with_kubernetes_messages() {
        let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"});
        assert!(hpa_causes(json!({"scaleTargetRef": target, "maxReplicas": 3})).is_empty());
        assert_eq!(
            hpa_causes(json!({"scaleTargetRef": target, "minReplicas": 5, "maxReplicas": 3})),
            [(
                "spec.maxReplicas".to_string(),
                "Invalid value: 3: must be greater than or equal to `minReplicas`".to_string()
            )]
        );
        let causes = hpa_causes(
            json!({"scaleTargetRef": {"kind": "Deployment"}, "minReplicas": 0, "maxReplicas": 0}),
        );
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.minReplicas",
                "spec.maxReplicas",
                "spec.scaleTargetRef.name"
            ]
        );
        assert_eq!(
            causes[0].1,
            "Invalid value: 0: must be greater than or equal to 1"
        );

        let metric = |m: Value| {
            hpa_causes(json!({"scaleTargetRef": target, "maxReplicas": 3, "metrics": [m]}))
        };
        assert_eq!(
            metric(
                json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization"}}})
            ),
            [(
                "spec.metrics[0].resource.target.averageUtilization".to_string(),
                "Required value: must set either a target raw value or a target utilization"
                    .to_string()
            )]
        );
        assert_eq!(
            metric(json!({"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "0"}}}))[0].1,
            "Invalid value: \"0\": must be positive"
        );
        assert_eq!(
            metric(json!({"type": "Pods"}))[0],
            (
                "spec.metrics[0].pods".to_string(),
                "Required value: must populate information for the given metric source".to_string()
            )
        );
        assert_eq!(
            metric(json!({"type": "Bogus"}))[0].0,
            "spec.metrics[0].type"
        );

        let behavior = |b: Value| {
            hpa_causes(json!({"scaleTargetRef": target, "maxReplicas": 3, "behavior": b}))
        };
        assert!(behavior(json!({"scaleDown": {"stabilizationWindowSeconds": 60}})).is_empty());
        assert_eq!(
            behavior(
                json!({"scaleUp": {"stabilizationWindowSeconds": 4000, "policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}})
            ),
            [
                (
                    "spec.behavior.scaleUp.stabilizationWindowSeconds".to_string(),
                    "Invalid value: 4000: must be less than or equal to 3600".to_string()
                ),
                (
                    "spec.behavior.scaleUp.policies[0].value".to_string(),
                    "Invalid value: 0: must be greater than zero".to_string()
                ),
            ]
        );
    }

    #[test]
    fn hpas_get_the_v2_defaults() {
        let registry = Registry::with_builtins();
        let info = registry
            .get("autoscaling", "v2", "horizontalpodautoscalers")
            .unwrap();
        let mut obj =
            json!({"spec": {"maxReplicas": 3, "behavior": {"scaleDown": {"selectPolicy": "Min"}}}});
        crate::defaults::prepare_for_create(&info, &mut obj);
        let spec = &obj["spec"];
        assert_eq!(spec["minReplicas"], 1);
        assert_eq!(
            spec["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert_eq!(
            spec["behavior"]["scaleUp"]["policies"][0],
            json!({"type": "Pods", "value": 4, "periodSeconds": 15})
        );
        assert_eq!(spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"], 0);
        assert_eq!(spec["behavior"]["scaleDown"]["selectPolicy"], "Min");
        assert!(spec["behavior"]["scaleDown"]
            .get("stabilizationWindowSeconds")
            .is_none());
        // No behavior given, none set: the controller's defaults apply.
        let mut plain = json!({"spec": {"maxReplicas": 3}});
        crate::defaults::prepare_for_create(&info, &mut plain);
        assert!(plain["spec"].get("behavior").is_none());
    }
}
