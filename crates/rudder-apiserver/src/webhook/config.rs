//! admissionregistration.k8s.io/v1 Mutating- and
//! ValidatingWebhookConfiguration: the defaults kube-apiserver sets and the
//! checks it makes, with its field paths and messages, and the parsed form
//! the dispatcher works from.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use rudder_apimachinery::selector::LabelSelector;
use serde_json::{json, Value};

use crate::error::FieldCause;
use crate::object::is_dns_subdomain;

pub(crate) const GROUP: &str = "admissionregistration.k8s.io";
pub(crate) const MUTATING: &str = "mutatingwebhookconfigurations";
pub(crate) const VALIDATING: &str = "validatingwebhookconfigurations";

const OPERATIONS: &[&str] = &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"];
const SCOPES: &[&str] = &["*", "Cluster", "Namespaced"];
const SIDE_EFFECTS: &[&str] = &["None", "NoneOnDryRun"];
const FAILURE_POLICIES: &[&str] = &["Fail", "Ignore"];
const MATCH_POLICIES: &[&str] = &["Equivalent", "Exact"];
const REINVOCATION_POLICIES: &[&str] = &["IfNeeded", "Never"];
const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
/// The AdmissionReview version Rudder sends. kube-apiserver also speaks
/// v1beta1; Rudder does not, so a webhook must accept v1.
const REVIEW_VERSION: &str = "v1";

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        if map.get(field).is_none_or(Value::is_null) {
            map.insert(field.to_owned(), value);
        }
    }
}

/// kube-apiserver's defaulting of either configuration, on create and on
/// update: failurePolicy Fail, matchPolicy Equivalent, empty selectors
/// (everything), timeoutSeconds 10, service port 443, rule scope `*`, and
/// for mutating webhooks reinvocationPolicy Never.
pub(crate) fn default_configuration(obj: &mut Value, mutating: bool) {
    let Some(webhooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) else {
        return;
    };
    for hook in webhooks {
        set_default(hook, "failurePolicy", json!("Fail"));
        set_default(hook, "matchPolicy", json!("Equivalent"));
        set_default(hook, "namespaceSelector", json!({}));
        set_default(hook, "objectSelector", json!({}));
        set_default(hook, "timeoutSeconds", json!(DEFAULT_TIMEOUT_SECONDS));
        if mutating {
            set_default(hook, "reinvocationPolicy", json!("Never"));
        }
        if let Some(service) = hook.pointer_mut("/clientConfig/service") {
            set_default(service, "port", json!(443));
        }
        for rule in hook
            .get_mut("rules")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            set_default(rule, "scope", json!("*"));
        }
    }
}

/// `field.Invalid` of a value Kubernetes prints unquoted (numbers, lists).
fn invalid_raw(field: impl Into<String>, value: &Value, detail: &str) -> FieldCause {
    FieldCause {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: format!("Invalid value: {value}: {detail}"),
    }
}

fn duplicate(field: impl Into<String>, value: &str) -> FieldCause {
    FieldCause {
        reason: "FieldValueDuplicate",
        field: field.into(),
        message: format!("Duplicate value: {value:?}"),
    }
}

fn strings(value: Option<&Value>) -> Vec<&str> {
    value
        .and_then(Value::as_array)
        .map(|items| items.iter().map(|v| v.as_str().unwrap_or("")).collect())
        .unwrap_or_default()
}

/// Checks a configuration as kube-apiserver's
/// `ValidateMutatingWebhookConfiguration`/`ValidateValidatingWebhookConfiguration`
/// do (matchConditions aside: Rudder has no CEL).
pub(crate) fn validate_configuration(obj: &Value, mutating: bool) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let hooks = obj
        .get("webhooks")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut names = HashSet::new();
    for (i, hook) in hooks.iter().enumerate() {
        let path = format!("webhooks[{i}]");
        let name = hook.get("name").and_then(Value::as_str).unwrap_or("");
        causes.extend(fully_qualified_name(&format!("{path}.name"), name));
        if !name.is_empty() && !names.insert(name) {
            causes.push(duplicate(format!("{path}.name"), name));
        }
        validate_hook(&mut causes, &path, hook, mutating);
    }
    causes
}

/// `IsFullyQualifiedName`: a DNS subdomain of three segments at least.
fn fully_qualified_name(field: &str, name: &str) -> Option<FieldCause> {
    if name.is_empty() {
        return Some(FieldCause::required(field, ""));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if !is_dns_subdomain(name) {
        return Some(FieldCause::invalid(
            field,
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ));
    }
    if name.split('.').count() < 3 {
        return Some(FieldCause::invalid(
            field,
            name,
            "should be a domain with at least three segments separated by dots",
        ));
    }
    None
}

fn enum_field(causes: &mut Vec<FieldCause>, field: &str, value: Option<&Value>, allowed: &[&str]) {
    match value {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => {}
        Some(other) => causes.push(FieldCause::unsupported(
            field,
            other.as_str().unwrap_or(&other.to_string()),
            allowed,
        )),
    }
}

fn validate_hook(causes: &mut Vec<FieldCause>, path: &str, hook: &Value, mutating: bool) {
    for (i, rule) in hook
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        validate_rule(causes, &format!("{path}.rules[{i}]"), rule);
    }
    enum_field(
        causes,
        &format!("{path}.failurePolicy"),
        hook.get("failurePolicy"),
        FAILURE_POLICIES,
    );
    enum_field(
        causes,
        &format!("{path}.matchPolicy"),
        hook.get("matchPolicy"),
        MATCH_POLICIES,
    );
    if mutating {
        enum_field(
            causes,
            &format!("{path}.reinvocationPolicy"),
            hook.get("reinvocationPolicy"),
            REINVOCATION_POLICIES,
        );
    }
    match hook.get("sideEffects") {
        None | Some(Value::Null) => causes.push(FieldCause::required(
            format!("{path}.sideEffects"),
            "must specify one of None, NoneOnDryRun",
        )),
        value => enum_field(causes, &format!("{path}.sideEffects"), value, SIDE_EFFECTS),
    }
    if let Some(timeout) = hook.get("timeoutSeconds").filter(|t| !t.is_null()) {
        if !timeout.as_i64().is_some_and(|t| (1..=30).contains(&t)) {
            causes.push(invalid_raw(
                format!("{path}.timeoutSeconds"),
                timeout,
                "the timeout value must be between 1 and 30 seconds",
            ));
        }
    }
    let versions_field = format!("{path}.admissionReviewVersions");
    let versions = strings(hook.get("admissionReviewVersions"));
    if versions.is_empty() {
        causes.push(FieldCause::required(
            &versions_field,
            &format!("must specify one of {REVIEW_VERSION}"),
        ));
    } else {
        let mut seen = HashSet::new();
        for (i, version) in versions.iter().enumerate() {
            if !seen.insert(*version) {
                causes.push(duplicate(format!("{versions_field}[{i}]"), version));
            }
        }
        if !versions.contains(&REVIEW_VERSION) {
            causes.push(invalid_raw(
                &versions_field,
                &hook["admissionReviewVersions"],
                &format!("must include at least one of {REVIEW_VERSION}"),
            ));
        }
    }
    for selector in ["namespaceSelector", "objectSelector"] {
        if let Some(value) = hook.get(selector).filter(|s| !s.is_null()) {
            if let Err(err) = LabelSelector::from_json(value) {
                causes.push(FieldCause::invalid(
                    format!("{path}.{selector}"),
                    &value.to_string(),
                    &err.to_string(),
                ));
            }
        }
    }
    validate_client_config(
        causes,
        &format!("{path}.clientConfig"),
        &hook["clientConfig"],
    );
}

fn validate_rule(causes: &mut Vec<FieldCause>, path: &str, rule: &Value) {
    let operations = strings(rule.get("operations"));
    if operations.is_empty() {
        causes.push(FieldCause::required(format!("{path}.operations"), ""));
    }
    if operations.len() > 1 && operations.contains(&"*") {
        causes.push(invalid_raw(
            format!("{path}.operations"),
            &rule["operations"],
            "if '*' is present, must not specify other operations",
        ));
    }
    for (i, op) in operations.iter().enumerate() {
        if !OPERATIONS.contains(op) {
            causes.push(FieldCause::unsupported(
                format!("{path}.operations[{i}]"),
                op,
                OPERATIONS,
            ));
        }
    }
    let groups = strings(rule.get("apiGroups"));
    if groups.is_empty() {
        causes.push(FieldCause::required(format!("{path}.apiGroups"), ""));
    }
    if groups.len() > 1 && groups.contains(&"*") {
        causes.push(invalid_raw(
            format!("{path}.apiGroups"),
            &rule["apiGroups"],
            "if '*' is present, must not specify other API groups",
        ));
    }
    let versions = strings(rule.get("apiVersions"));
    if versions.is_empty() {
        causes.push(FieldCause::required(format!("{path}.apiVersions"), ""));
    }
    if versions.len() > 1 && versions.contains(&"*") {
        causes.push(invalid_raw(
            format!("{path}.apiVersions"),
            &rule["apiVersions"],
            "if '*' is present, must not specify other API versions",
        ));
    }
    for (i, version) in versions.iter().enumerate() {
        if version.is_empty() {
            causes.push(FieldCause::required(format!("{path}.apiVersions[{i}]"), ""));
        }
    }
    validate_resources(causes, &format!("{path}.resources"), rule);
    enum_field(causes, &format!("{path}.scope"), rule.get("scope"), SCOPES);
}

/// `resource`, `resource/subresource`, `*`, `*/*`, `resource/*`, `*/sub`,
/// without overlaps between wildcards and what they already cover.
fn validate_resources(causes: &mut Vec<FieldCause>, path: &str, rule: &Value) {
    let resources = strings(rule.get("resources"));
    if resources.is_empty() {
        causes.push(FieldCause::required(path, ""));
    }
    let mut with_wildcard_sub: HashSet<&str> = HashSet::new();
    let mut sub_with_wildcard_res: HashSet<&str> = HashSet::new();
    let (mut double_wildcard, mut single_wildcard, mut plain) = (false, false, false);
    for (i, res_sub) in resources.iter().enumerate() {
        if res_sub.is_empty() {
            causes.push(FieldCause::required(format!("{path}[{i}]"), ""));
            continue;
        }
        double_wildcard |= *res_sub == "*/*";
        single_wildcard |= *res_sub == "*";
        let Some((res, sub)) = res_sub.split_once('/') else {
            plain = *res_sub != "*";
            continue;
        };
        if with_wildcard_sub.contains(res) {
            causes.push(FieldCause::invalid(
                format!("{path}[{i}]"),
                res_sub,
                &format!("if '{res}/*' is present, must not specify {res_sub}"),
            ));
        }
        if sub_with_wildcard_res.contains(sub) {
            causes.push(FieldCause::invalid(
                format!("{path}[{i}]"),
                res_sub,
                &format!("if '*/{sub}' is present, must not specify {res_sub}"),
            ));
        }
        if sub == "*" {
            with_wildcard_sub.insert(res);
        }
        if res == "*" {
            sub_with_wildcard_res.insert(sub);
        }
    }
    if resources.len() > 1 && double_wildcard {
        causes.push(invalid_raw(
            path,
            &rule["resources"],
            "if '*/*' is present, must not specify other resources",
        ));
    }
    if single_wildcard && plain {
        causes.push(invalid_raw(
            path,
            &rule["resources"],
            "if '*' is present, must not specify other resources without subresources",
        ));
    }
}

fn validate_client_config(causes: &mut Vec<FieldCause>, path: &str, config: &Value) {
    let url = config.get("url").filter(|u| !u.is_null());
    let service = config.get("service").filter(|s| !s.is_null());
    match (url, service) {
        (Some(_), Some(_)) | (None, None) => causes.push(FieldCause::required(
            path,
            "exactly one of url or service is required",
        )),
        (Some(url), None) => {
            validate_url(causes, &format!("{path}.url"), url.as_str().unwrap_or(""))
        }
        (None, Some(service)) => validate_service(causes, &format!("{path}.service"), service),
    }
    if let Some(bundle) = config.get("caBundle").and_then(Value::as_str) {
        if base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .is_err()
        {
            causes.push(FieldCause::invalid(
                format!("{path}.caBundle"),
                "<bytes>",
                "must be base64-encoded",
            ));
        }
    }
}

/// `ValidateWebhookURL` with https forced.
fn validate_url(causes: &mut Vec<FieldCause>, path: &str, url: &str) {
    const FORM: &str = "; desired format: https://host[/path]";
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    if scheme != "https" {
        causes.push(FieldCause::invalid(
            path,
            scheme,
            &format!("'https' is the only allowed URL scheme{FORM}"),
        ));
    }
    let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = rest.split('/').next().unwrap_or("");
    let (user, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, authority),
    };
    if host.is_empty() {
        causes.push(FieldCause::invalid(
            path,
            host,
            &format!("host must be specified{FORM}"),
        ));
    }
    if let Some(user) = user {
        causes.push(FieldCause::invalid(
            path,
            user,
            "user information is not permitted in the URL",
        ));
    }
    if !fragment.is_empty() {
        causes.push(FieldCause::invalid(
            path,
            fragment,
            "fragments are not permitted in the URL",
        ));
    }
    if !query.is_empty() {
        causes.push(FieldCause::invalid(
            path,
            query,
            "query parameters are not permitted in the URL",
        ));
    }
}

/// `ValidateWebhookService`.
fn validate_service(causes: &mut Vec<FieldCause>, path: &str, service: &Value) {
    let text = |f: &str| service.get(f).and_then(Value::as_str).unwrap_or("");
    if text("namespace").is_empty() {
        causes.push(FieldCause::required(
            format!("{path}.namespace"),
            "service namespace is required",
        ));
    }
    if text("name").is_empty() {
        causes.push(FieldCause::required(
            format!("{path}.name"),
            "service name is required",
        ));
    }
    if let Some(port) = service.get("port").filter(|p| !p.is_null()) {
        if !port.as_i64().is_some_and(|p| (1..=65535).contains(&p)) {
            causes.push(invalid_raw(
                format!("{path}.port"),
                port,
                "port is not valid: must be between 1 and 65535, inclusive",
            ));
        }
    }
    let url_path = text("path");
    if url_path.is_empty() || url_path == "/" {
        return;
    }
    let field = format!("{path}.path");
    if url_path == "//" {
        causes.push(FieldCause::invalid(
            &field,
            url_path,
            "segment[0] may not be empty",
        ));
    }
    let Some(rest) = url_path.strip_prefix('/') else {
        causes.push(FieldCause::invalid(
            &field,
            url_path,
            "must start with a '/'",
        ));
        return;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    for (i, step) in rest.split('/').enumerate() {
        if step.is_empty() {
            causes.push(FieldCause::invalid(
                &field,
                url_path,
                &format!("segment[{i}] may not be empty"),
            ));
        } else if !is_dns_subdomain(step) {
            causes.push(FieldCause::invalid(
                &field,
                url_path,
                &format!("segment[{i}]: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
            ));
        }
    }
}

/// Where a webhook is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Url(String),
    Service {
        namespace: String,
        name: String,
        path: String,
        port: u16,
    },
}

/// One rule of a webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rule {
    pub operations: Vec<String>,
    pub api_groups: Vec<String>,
    pub api_versions: Vec<String>,
    pub resources: Vec<String>,
    /// `*`, `Cluster` or `Namespaced`.
    pub scope: String,
}

/// One webhook of a configuration, defaulted and parsed.
#[derive(Clone, Debug)]
pub(crate) struct Hook {
    pub name: String,
    pub endpoint: Endpoint,
    /// PEM; empty: the system's roots.
    pub ca_bundle: Vec<u8>,
    pub rules: Vec<Rule>,
    /// failurePolicy Ignore: a failed call lets the request through.
    pub ignore_failures: bool,
    pub namespace_selector: LabelSelector,
    pub object_selector: LabelSelector,
    pub side_effects: String,
    pub timeout: Duration,
    /// reinvocationPolicy IfNeeded (mutating webhooks only).
    pub reinvoke_if_needed: bool,
}

fn parse_selector(value: Option<&Value>) -> LabelSelector {
    match value {
        None | Some(Value::Null) => LabelSelector::everything(),
        // A stored selector was validated; one that no longer parses
        // selects nothing rather than everything.
        Some(v) => LabelSelector::from_json(v).unwrap_or_else(|_| LabelSelector::nothing()),
    }
}

/// The webhooks of one stored configuration, in their order. Defaults are
/// applied first, so objects stored before defaulting read the same.
pub(crate) fn parse_configuration(obj: &Value, mutating: bool) -> Vec<Hook> {
    let mut obj = obj.clone();
    default_configuration(&mut obj, mutating);
    let owned =
        |v: Option<&Value>| -> Vec<String> { strings(v).into_iter().map(str::to_owned).collect() };
    let hooks = obj
        .get("webhooks")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    hooks
        .iter()
        .map(|hook| {
            let client = &hook["clientConfig"];
            let endpoint = match client.get("service").filter(|s| s.is_object()) {
                Some(service) => Endpoint::Service {
                    namespace: service["namespace"].as_str().unwrap_or("").to_owned(),
                    name: service["name"].as_str().unwrap_or("").to_owned(),
                    path: service["path"].as_str().unwrap_or("").to_owned(),
                    port: service["port"]
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or(443),
                },
                None => Endpoint::Url(client["url"].as_str().unwrap_or("").to_owned()),
            };
            let ca_bundle = client
                .get("caBundle")
                .and_then(Value::as_str)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_default();
            let rules = hook
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|r| Rule {
                    operations: owned(r.get("operations")),
                    api_groups: owned(r.get("apiGroups")),
                    api_versions: owned(r.get("apiVersions")),
                    resources: owned(r.get("resources")),
                    scope: r["scope"].as_str().unwrap_or("*").to_owned(),
                })
                .collect();
            Hook {
                name: hook["name"].as_str().unwrap_or("").to_owned(),
                endpoint,
                ca_bundle,
                rules,
                ignore_failures: hook["failurePolicy"] == "Ignore",
                namespace_selector: parse_selector(hook.get("namespaceSelector")),
                object_selector: parse_selector(hook.get("objectSelector")),
                side_effects: hook["sideEffects"].as_str().unwrap_or("Unknown").to_owned(),
                timeout: Duration::from_secs(
                    hook["timeoutSeconds"]
                        .as_u64()
                        .unwrap_or(DEFAULT_TIMEOUT_SECONDS),
                ),
                reinvoke_if_needed: mutating && hook["reinvocationPolicy"] == "IfNeeded",
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(obj: Value, mutating: bool) -> Vec<(String, String)> {
        validate_configuration(&obj, mutating)
            .into_iter()
            .map(|c| (c.field, c.message))
            .collect()
    }

    fn good_hook(name: &str) -> Value {
        json!({
            "name": name,
            "clientConfig": {"service": {"namespace": "ns", "name": "svc", "path": "/validate"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods", "pods/status"]}],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1", "v1beta1"],
        })
    }

    #[test]
    fn a_well_formed_configuration_passes() {
        assert!(causes(json!({"webhooks": [good_hook("a.example.com")]}), true).is_empty());
        assert!(causes(json!({}), false).is_empty(), "no webhooks is fine");
    }

    #[test]
    fn kubernetes_checks_are_reported_with_its_paths_and_messages() {
        let mut hook = good_hook("short.name");
        hook["sideEffects"] = Value::Null;
        hook["admissionReviewVersions"] = json!(["v1beta1"]);
        hook["timeoutSeconds"] = json!(31);
        hook["failurePolicy"] = json!("Sometimes");
        hook["clientConfig"] = json!({"url": "http://host/x?y=1"});
        hook["rules"] = json!([{"operations": ["*", "CREATE"], "apiGroups": [], "apiVersions": ["v1"], "resources": ["*", "pods"], "scope": "Everywhere"}]);
        let found = causes(
            json!({"webhooks": [hook, good_hook("a.example.com"), good_hook("a.example.com")]}),
            true,
        );
        let expect = [
            ("webhooks[0].name", "Invalid value: \"short.name\": should be a domain with at least three segments separated by dots"),
            ("webhooks[0].rules[0].operations", "Invalid value: [\"*\",\"CREATE\"]: if '*' is present, must not specify other operations"),
            ("webhooks[0].rules[0].apiGroups", "Required value"),
            ("webhooks[0].rules[0].resources", "Invalid value: [\"*\",\"pods\"]: if '*' is present, must not specify other resources without subresources"),
            ("webhooks[0].rules[0].scope", "Unsupported value: \"Everywhere\": supported values: \"*\", \"Cluster\", \"Namespaced\""),
            ("webhooks[0].failurePolicy", "Unsupported value: \"Sometimes\": supported values: \"Fail\", \"Ignore\""),
            ("webhooks[0].sideEffects", "Required value: must specify one of None, NoneOnDryRun"),
            ("webhooks[0].timeoutSeconds", "Invalid value: 31: the timeout value must be between 1 and 30 seconds"),
            ("webhooks[0].admissionReviewVersions", "Invalid value: [\"v1beta1\"]: must include at least one of v1"),
            ("webhooks[0].clientConfig.url", "Invalid value: \"http\": 'https' is the only allowed URL scheme; desired format: https://host[/path]"),
            ("webhooks[0].clientConfig.url", "Invalid value: \"y=1\": query parameters are not permitted in the URL"),
            ("webhooks[2].name", "Duplicate value: \"a.example.com\""),
        ];
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(f, m)| (f.to_string(), m.to_string()))
            .collect();
        assert_eq!(found, expect);
    }

    #[test]
    fn client_configs_and_services_are_checked() {
        let table = [
            (
                json!({}),
                "webhooks[0].clientConfig",
                "Required value: exactly one of url or service is required",
            ),
            (
                json!({"url": "https://h", "service": {"namespace": "n", "name": "s"}}),
                "webhooks[0].clientConfig",
                "Required value: exactly one of url or service is required",
            ),
            (
                json!({"service": {"name": "s"}}),
                "webhooks[0].clientConfig.service.namespace",
                "Required value: service namespace is required",
            ),
            (
                json!({"service": {"namespace": "n", "name": "s", "port": 0}}),
                "webhooks[0].clientConfig.service.port",
                "Invalid value: 0: port is not valid: must be between 1 and 65535, inclusive",
            ),
            (
                json!({"service": {"namespace": "n", "name": "s", "path": "x"}}),
                "webhooks[0].clientConfig.service.path",
                "Invalid value: \"x\": must start with a '/'",
            ),
            (
                json!({"service": {"namespace": "n", "name": "s", "path": "/a//b"}}),
                "webhooks[0].clientConfig.service.path",
                "Invalid value: \"/a//b\": segment[1] may not be empty",
            ),
            (
                json!({"url": "https:///x"}),
                "webhooks[0].clientConfig.url",
                "Invalid value: \"\": host must be specified; desired format: https://host[/path]",
            ),
        ];
        for (config, field, message) in table {
            let mut hook = good_hook("a.b.c");
            hook["clientConfig"] = config.clone();
            let found = causes(json!({"webhooks": [hook]}), false);
            assert_eq!(
                found,
                vec![(field.to_owned(), message.to_owned())],
                "{config}"
            );
        }
    }

    #[test]
    fn defaults_are_kubernetes_defaults() {
        let mut obj = json!({"webhooks": [good_hook("a.b.c")]});
        default_configuration(&mut obj, true);
        let hook = &obj["webhooks"][0];
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["matchPolicy"], "Equivalent");
        assert_eq!(hook["namespaceSelector"], json!({}));
        assert_eq!(hook["objectSelector"], json!({}));
        assert_eq!(hook["timeoutSeconds"], 10);
        assert_eq!(hook["reinvocationPolicy"], "Never");
        assert_eq!(hook["clientConfig"]["service"]["port"], 443);
        assert_eq!(hook["rules"][0]["scope"], "*");
        let mut validating = json!({"webhooks": [good_hook("a.b.c")]});
        default_configuration(&mut validating, false);
        assert!(validating["webhooks"][0]
            .get("reinvocationPolicy")
            .is_none());
    }

    #[test]
    fn stored_configurations_parse_into_hooks() {
        let mut hook = good_hook("a.b.c");
        hook["clientConfig"]["caBundle"] = json!("LS0tLS0=");
        hook["reinvocationPolicy"] = json!("IfNeeded");
        hook["failurePolicy"] = json!("Ignore");
        let hooks = parse_configuration(&json!({"webhooks": [hook]}), true);
        let h = &hooks[0];
        assert_eq!(
            h.endpoint,
            Endpoint::Service {
                namespace: "ns".into(),
                name: "svc".into(),
                path: "/validate".into(),
                port: 443
            }
        );
        assert_eq!(h.ca_bundle, b"-----");
        assert!(h.ignore_failures && h.reinvoke_if_needed);
        assert_eq!(h.timeout, Duration::from_secs(10));
        assert_eq!(h.rules[0].scope, "*");
        assert!(h.namespace_selector.is_empty());
    }
}
