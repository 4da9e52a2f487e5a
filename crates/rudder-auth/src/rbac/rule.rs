//! One RBAC rule (`rbac.authorization.k8s.io/v1` PolicyRule): whether it
//! allows a request, whether one set of rules covers another (the
//! escalation check), and the compact form escalation errors print.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authorizer::Attributes;

/// The wildcard for verbs, API groups, resources and non-resource URLs.
pub const ALL: &str = "*";

/// A PolicyRule, serialized as Kubernetes writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn has(set: &[String], item: &str) -> bool {
    set.iter().any(|s| s == item)
}

fn has_all(set: &[String], items: &[String]) -> bool {
    items.iter().all(|item| has(set, item))
}

impl PolicyRule {
    /// A rule granting `verbs`; add what they apply to with the builder
    /// methods below.
    pub fn new(verbs: &[&str]) -> Self {
        PolicyRule {
            verbs: strings(verbs),
            ..Default::default()
        }
    }

    pub fn groups(mut self, groups: &[&str]) -> Self {
        self.api_groups = strings(groups);
        self
    }

    pub fn resources(mut self, resources: &[&str]) -> Self {
        self.resources = strings(resources);
        self
    }

    pub fn names(mut self, names: &[&str]) -> Self {
        self.resource_names = strings(names);
        self
    }

    pub fn urls(mut self, urls: &[&str]) -> Self {
        self.non_resource_urls = strings(urls);
        self
    }

    /// A rule from its JSON form; `None` when it is not one.
    pub fn from_value(value: &Value) -> Option<Self> {
        serde_json::from_value(value.clone()).ok()
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a PolicyRule serializes")
    }

    /// The rules of a Role or ClusterRole object (its `rules`, which may be
    /// null); rules that do not parse are left out, so they grant nothing.
    pub fn list_from(role: &Value) -> Vec<PolicyRule> {
        role.get("rules")
            .and_then(Value::as_array)
            .map(|rules| rules.iter().filter_map(PolicyRule::from_value).collect())
            .unwrap_or_default()
    }

    /// Whether this rule allows the request (Kubernetes' `RuleAllows`).
    pub fn allows(&self, attributes: &Attributes) -> bool {
        if !self.verb_matches(&attributes.verb) {
            return false;
        }
        if attributes.resource_request {
            self.group_matches(&attributes.api_group)
                && self.resource_matches(
                    &attributes.resource_and_subresource(),
                    &attributes.subresource,
                )
                && self.resource_name_matches(&attributes.name)
        } else {
            self.non_resource_url_matches(&attributes.path)
        }
    }

    fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == ALL || v == verb)
    }

    fn group_matches(&self, group: &str) -> bool {
        self.api_groups.iter().any(|g| g == ALL || g == group)
    }

    /// `*`, the exact `resource[/subresource]`, or `*/subresource`.
    fn resource_matches(&self, combined: &str, subresource: &str) -> bool {
        self.resources.iter().any(|r| {
            r == ALL
                || r == combined
                || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
        })
    }

    /// No names means any object; otherwise the request must name one of
    /// them, so a list or a create (which name nothing) never matches.
    fn resource_name_matches(&self, name: &str) -> bool {
        self.resource_names.is_empty() || has(&self.resource_names, name)
    }

    fn non_resource_url_matches(&self, path: &str) -> bool {
        self.non_resource_urls
            .iter()
            .any(|url| url_covers(url, path))
    }

    /// Whether this rule grants everything `sub` does (Kubernetes'
    /// `ruleCovers`), `sub` being one verb on one resource or URL.
    fn covers(&self, sub: &PolicyRule) -> bool {
        let verbs = has(&self.verbs, ALL) || has_all(&self.verbs, &sub.verbs);
        let groups = has(&self.api_groups, ALL) || has_all(&self.api_groups, &sub.api_groups);
        let resources = resources_cover(&self.resources, &sub.resources);
        let urls = sub.non_resource_urls.iter().all(|path| {
            self.non_resource_urls
                .iter()
                .any(|url| url_covers(url, path))
        });
        let names = self.resource_names.is_empty()
            || (!sub.resource_names.is_empty()
                && has_all(&self.resource_names, &sub.resource_names));
        verbs && groups && resources && urls && names
    }

    /// The rule as one rule per (group, resource, verb, name) and per
    /// (URL, verb) (Kubernetes' `BreakdownRule`).
    fn breakdown(&self) -> Vec<PolicyRule> {
        let mut subrules = Vec::new();
        for group in &self.api_groups {
            for resource in &self.resources {
                for verb in &self.verbs {
                    let one = |names: Vec<String>| PolicyRule {
                        verbs: vec![verb.clone()],
                        api_groups: vec![group.clone()],
                        resources: vec![resource.clone()],
                        resource_names: names,
                        non_resource_urls: Vec::new(),
                    };
                    if self.resource_names.is_empty() {
                        subrules.push(one(Vec::new()));
                    } else {
                        for name in &self.resource_names {
                            subrules.push(one(vec![name.clone()]));
                        }
                    }
                }
            }
        }
        for url in &self.non_resource_urls {
            for verb in &self.verbs {
                subrules.push(PolicyRule {
                    verbs: vec![verb.clone()],
                    non_resource_urls: vec![url.clone()],
                    ..Default::default()
                });
            }
        }
        subrules
    }

    /// The form escalation errors list missing rules in (Kubernetes'
    /// `CompactString`): `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
    pub fn compact_string(&self) -> String {
        let fields = [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.non_resource_urls),
            ("ResourceNames", &self.resource_names),
            ("Verbs", &self.verbs),
        ];
        let parts: Vec<String> = fields
            .iter()
            .filter(|(_, values)| !values.is_empty())
            .map(|(label, values)| format!("{label}:{}", go_quote_list(values)))
            .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

/// `owner` covers `path` when equal, or when `owner` ends in `*` and
/// `path` starts with the rest.
fn url_covers(owner: &str, path: &str) -> bool {
    owner == path
        || owner
            .strip_suffix(ALL)
            .is_some_and(|prefix| path.starts_with(prefix.trim_end_matches('*')))
}

/// Kubernetes' `resourceCoversAll`: `*`, each resource exactly, or for a
/// subresource `*/subresource`.
fn resources_cover(owner: &[String], requested: &[String]) -> bool {
    if has(owner, ALL) {
        return true;
    }
    requested.iter().all(|path| {
        has(owner, path)
            || path
                .split_once('/')
                .is_some_and(|(_, sub)| has(owner, &format!("*/{sub}")))
    })
}

/// Go's `%q` for a string.
pub(crate) fn go_quote(s: &str) -> String {
    format!("{s:?}")
}

/// Go's `%q` for a `[]string`: `["a" "b"]`.
pub(crate) fn go_quote_list(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| go_quote(v)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Whether the `owner` rules grant everything `requested` does, and the
/// pieces they do not, one verb on one resource or URL each (Kubernetes'
/// `Covers`).
pub fn covers(owner: &[PolicyRule], requested: &[PolicyRule]) -> (bool, Vec<PolicyRule>) {
    let uncovered: Vec<PolicyRule> = requested
        .iter()
        .flat_map(PolicyRule::breakdown)
        .filter(|sub| !owner.iter().any(|rule| rule.covers(sub)))
        .collect();
    (uncovered.is_empty(), uncovered)
}

/// Merges the verbs of rules on one group and resource (and at most one
/// name) into one rule, so an escalation error lists one line per
/// resource (Kubernetes' `CompactRules`).
pub(crate) fn compact(rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    let mut compacted: Vec<PolicyRule> = Vec::new();
    let mut simple: Vec<PolicyRule> = Vec::new();
    for rule in rules {
        let is_simple = rule.resource_names.len() <= 1
            && rule.non_resource_urls.is_empty()
            && rule.api_groups.len() == 1
            && rule.resources.len() == 1;
        if !is_simple {
            compacted.push(rule);
            continue;
        }
        match simple.iter_mut().find(|s| {
            s.api_groups == rule.api_groups
                && s.resources == rule.resources
                && s.resource_names == rule.resource_names
        }) {
            Some(existing) => existing.verbs.extend(rule.verbs),
            None => simple.push(rule),
        }
    }
    compacted.extend(simple);
    compacted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            namespace: "ns".into(),
            ..Default::default()
        }
    }

    fn path(verb: &str, path: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rules_match_requests_as_kubernetes_does() {
        let pods = PolicyRule::new(&["get", "list"])
            .groups(&[""])
            .resources(&["pods"]);
        let named = PolicyRule::new(&["get", "update", "list", "create"])
            .groups(&[""])
            .resources(&["configmaps"])
            .names(&["settings"]);
        let any_scale = PolicyRule::new(&["get"])
            .groups(&["*"])
            .resources(&["*/scale"]);
        let logs = PolicyRule::new(&["get"])
            .groups(&[""])
            .resources(&["pods/log"]);
        let everything = PolicyRule::new(&["*"]).groups(&["*"]).resources(&["*"]);
        let urls = PolicyRule::new(&["get"]).urls(&["/healthz", "/apis/*"]);
        let cases: &[(&PolicyRule, Attributes, bool, &str)] = &[
            (&pods, resource("get", "", "pods", "", "web"), true, "exact"),
            (&pods, resource("list", "", "pods", "", ""), true, "list"),
            (
                &pods,
                resource("delete", "", "pods", "", "web"),
                false,
                "verb",
            ),
            (
                &pods,
                resource("get", "apps", "pods", "", "web"),
                false,
                "group",
            ),
            (
                &pods,
                resource("get", "", "pods", "log", "web"),
                false,
                "a subresource is not the resource",
            ),
            (
                &logs,
                resource("get", "", "pods", "log", "web"),
                true,
                "resource/subresource",
            ),
            (
                &logs,
                resource("get", "", "pods", "", "web"),
                false,
                "the subresource is not the resource",
            ),
            (
                &any_scale,
                resource("get", "apps", "deployments", "scale", "web"),
                true,
                "*/subresource",
            ),
            (
                &any_scale,
                resource("get", "apps", "deployments", "status", "web"),
                false,
                "*/other",
            ),
            (
                &any_scale,
                resource("get", "apps", "deployments", "", "web"),
                false,
                "*/sub on the resource",
            ),
            (
                &named,
                resource("get", "", "configmaps", "", "settings"),
                true,
                "named",
            ),
            (
                &named,
                resource("get", "", "configmaps", "", "other"),
                false,
                "other name",
            ),
            (
                &named,
                resource("list", "", "configmaps", "", ""),
                false,
                "a list names nothing",
            ),
            (
                &named,
                resource("create", "", "configmaps", "", ""),
                false,
                "a create names nothing",
            ),
            (
                &everything,
                resource("escalate", "rbac.authorization.k8s.io", "roles", "", "x"),
                true,
                "*",
            ),
            (
                &everything,
                path("get", "/healthz"),
                false,
                "resource rules do not match paths",
            ),
            (&urls, path("get", "/healthz"), true, "exact URL"),
            (
                &urls,
                path("get", "/healthz/etcd"),
                false,
                "no prefix without *",
            ),
            (&urls, path("get", "/apis/apps/v1"), true, "URL prefix"),
            (
                &urls,
                path("get", "/apis"),
                false,
                "the prefix needs its slash",
            ),
            (&urls, path("post", "/healthz"), false, "URL verb"),
            (
                &urls,
                resource("get", "", "healthz", "", ""),
                false,
                "URL rules do not match resources",
            ),
        ];
        for (rule, attributes, allowed, why) in cases {
            assert_eq!(rule.allows(attributes), *allowed, "{why}");
        }
    }

    #[test]
    fn coverage_breaks_rules_down_and_compacts_what_is_missing() {
        let owner = vec![
            PolicyRule::new(&["get", "list"])
                .groups(&[""])
                .resources(&["pods", "*/status"]),
            PolicyRule::new(&["get"])
                .groups(&[""])
                .resources(&["configmaps"])
                .names(&["a", "b"]),
            PolicyRule::new(&["get"]).urls(&["/api/*"]),
        ];
        let cases: &[(PolicyRule, bool)] = &[
            (
                PolicyRule::new(&["get"]).groups(&[""]).resources(&["pods"]),
                true,
            ),
            (
                PolicyRule::new(&["get"])
                    .groups(&[""])
                    .resources(&["pods/status", "services/status"]),
                true,
            ),
            (
                PolicyRule::new(&["get"])
                    .groups(&[""])
                    .resources(&["pods/log"]),
                false,
            ),
            (
                PolicyRule::new(&["get"])
                    .groups(&[""])
                    .resources(&["configmaps"])
                    .names(&["a"]),
                true,
            ),
            (
                PolicyRule::new(&["get"])
                    .groups(&[""])
                    .resources(&["configmaps"]),
                false,
            ),
            (PolicyRule::new(&["get"]).urls(&["/api/v1"]), true),
            (PolicyRule::new(&["get"]).urls(&["/apis"]), false),
            (
                PolicyRule::new(&["*"]).groups(&[""]).resources(&["pods"]),
                false,
            ),
        ];
        for (requested, expected) in cases {
            assert_eq!(
                covers(&owner, std::slice::from_ref(requested)).0,
                *expected,
                "{requested:?}"
            );
        }
        let (ok, missing) = covers(
            &owner,
            &[PolicyRule::new(&["get", "delete", "watch"])
                .groups(&[""])
                .resources(&["pods", "secrets"])],
        );
        assert!(!ok);
        let lines: Vec<String> = compact(missing)
            .iter()
            .map(PolicyRule::compact_string)
            .collect();
        assert_eq!(
            lines,
            vec![
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete" "watch"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get" "delete" "watch"]}"#,
            ]
        );
    }

    #[test]
    fn rules_round_trip_in_kubernetes_json() {
        let json = serde_json::json!({
            "apiGroups": [""], "resources": ["pods"], "verbs": ["get"],
            "resourceNames": ["a"], "nonResourceURLs": []
        });
        let rule = PolicyRule::from_value(&json).unwrap();
        assert_eq!(rule.resource_names, vec!["a"]);
        assert_eq!(
            rule.to_value(),
            serde_json::json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": ["a"]})
        );
    }
}
