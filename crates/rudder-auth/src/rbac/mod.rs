//! The RBAC authorizer (`rbac.authorization.k8s.io/v1`), with Kubernetes'
//! semantics: Roles and ClusterRoles hold rules, RoleBindings and
//! ClusterRoleBindings grant them to Users, Groups and ServiceAccounts.
//!
//! [`RbacPolicy`] is an immutable snapshot of every RBAC object, indexed
//! for the authorizer; the API server rebuilds it whenever one changes, so
//! a request never waits on a lock or a store read.
//!
//! - [`PolicyRule`]: rule matching, [`covers`] (the escalation check).
//! - [`aggregated_rules`]: what the clusterrole-aggregation controller
//!   writes into an aggregated ClusterRole.
//! - [`bootstrap`]: the default roles and bindings.

mod aggregation;
pub mod bootstrap;
mod rule;

use std::collections::HashMap;
use std::ops::ControlFlow;

use serde_json::Value;

use crate::authorizer::{Attributes, Authorizer, Decision};
use crate::user::UserInfo;

pub use aggregation::{aggregated_rules, label_selector_matches};
pub use bootstrap::{bootstrap_cluster_role_bindings, bootstrap_cluster_roles};
pub use rule::{covers, PolicyRule, ALL};

/// What a binding grants: a Role in the binding's namespace, or a
/// ClusterRole.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RoleRef {
    Role(String),
    ClusterRole(String),
}

impl RoleRef {
    fn kind(&self) -> &'static str {
        match self {
            RoleRef::Role(_) => "Role",
            RoleRef::ClusterRole(_) => "ClusterRole",
        }
    }

    fn name(&self) -> &str {
        match self {
            RoleRef::Role(name) | RoleRef::ClusterRole(name) => name,
        }
    }
}

/// A binding's subject.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Subject {
    kind: String,
    name: String,
    namespace: String,
}

impl Subject {
    /// Whether the subject is `user` (Kubernetes' `appliesToUser`). A
    /// ServiceAccount without a namespace is taken to be in the binding's
    /// (none, for ClusterRoleBindings: then it matches no one).
    fn applies_to(&self, user: &UserInfo, binding_namespace: &str) -> bool {
        match self.kind.as_str() {
            "User" => user.username == self.name,
            "Group" => user.in_group(&self.name),
            "ServiceAccount" => {
                let namespace = if self.namespace.is_empty() {
                    binding_namespace
                } else {
                    &self.namespace
                };
                !namespace.is_empty()
                    && user.service_account_name() == Some((namespace, self.name.as_str()))
            }
            _ => false,
        }
    }

    /// As the RBAC authorizer's reasons name subjects: `User "alice"`,
    /// `ServiceAccount "name/namespace"`.
    fn describe(&self, binding_namespace: &str) -> String {
        if self.kind == "ServiceAccount" {
            let namespace = if self.namespace.is_empty() {
                binding_namespace
            } else {
                &self.namespace
            };
            format!(
                "{} {}",
                self.kind,
                rule::go_quote(&format!("{}/{namespace}", self.name))
            )
        } else {
            format!("{} {}", self.kind, rule::go_quote(&self.name))
        }
    }
}

#[derive(Clone, Debug)]
struct Binding {
    name: String,
    /// Empty for ClusterRoleBindings.
    namespace: String,
    role_ref: RoleRef,
    subjects: Vec<Subject>,
}

impl Binding {
    fn from_value(value: &Value) -> Option<Binding> {
        let metadata = value.get("metadata")?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
        let role_ref = value.get("roleRef")?;
        let role_name = text(role_ref.get("name"));
        let role_ref = match role_ref.get("kind").and_then(Value::as_str)? {
            "Role" => RoleRef::Role(role_name),
            "ClusterRole" => RoleRef::ClusterRole(role_name),
            _ => return None,
        };
        let subjects = value
            .get("subjects")
            .and_then(Value::as_array)
            .map(|subjects| {
                subjects
                    .iter()
                    .map(|s| Subject {
                        kind: text(s.get("kind")),
                        name: text(s.get("name")),
                        namespace: text(s.get("namespace")),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Binding {
            name: text(metadata.get("name")),
            namespace: text(metadata.get("namespace")),
            role_ref,
            subjects,
        })
    }

    /// The first subject that is `user`.
    fn subject_for(&self, user: &UserInfo) -> Option<&Subject> {
        self.subjects
            .iter()
            .find(|s| s.applies_to(user, &self.namespace))
    }

    /// As the RBAC authorizer's reasons name bindings:
    /// `ClusterRoleBinding "x" of ClusterRole "y" to User "z"`, or
    /// `RoleBinding "name/namespace" of Role "y" to Group "g"`.
    fn describe(&self, subject: &Subject) -> String {
        let (kind, name) = if self.namespace.is_empty() {
            ("ClusterRoleBinding", self.name.clone())
        } else {
            ("RoleBinding", format!("{}/{}", self.name, self.namespace))
        };
        format!(
            "{kind} {} of {} {} to {}",
            rule::go_quote(&name),
            self.role_ref.kind(),
            rule::go_quote(self.role_ref.name()),
            subject.describe(&self.namespace)
        )
    }
}

/// Every RBAC object, indexed for authorization.
#[derive(Clone, Debug, Default)]
pub struct RbacPolicy {
    /// Role rules by (namespace, name).
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    /// RoleBindings by namespace.
    role_bindings: HashMap<String, Vec<Binding>>,
    cluster_role_bindings: Vec<Binding>,
}

fn metadata_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

impl RbacPolicy {
    /// The policy the objects make (as JSON, the way the store holds
    /// them). Objects that do not parse grant nothing.
    pub fn from_objects(
        roles: &[Value],
        cluster_roles: &[Value],
        role_bindings: &[Value],
        cluster_role_bindings: &[Value],
    ) -> Self {
        let mut policy = RbacPolicy::default();
        for role in roles {
            let key = (
                metadata_str(role, "namespace").to_string(),
                metadata_str(role, "name").to_string(),
            );
            policy.roles.insert(key, PolicyRule::list_from(role));
        }
        for role in cluster_roles {
            policy.cluster_roles.insert(
                metadata_str(role, "name").to_string(),
                PolicyRule::list_from(role),
            );
        }
        for binding in role_bindings.iter().filter_map(Binding::from_value) {
            policy
                .role_bindings
                .entry(binding.namespace.clone())
                .or_default()
                .push(binding);
        }
        policy.cluster_role_bindings = cluster_role_bindings
            .iter()
            .filter_map(Binding::from_value)
            .filter(|b| matches!(b.role_ref, RoleRef::ClusterRole(_)))
            .map(|mut b| {
                b.namespace.clear();
                b
            })
            .collect();
        policy
    }

    /// The rules a binding's role holds, or the error Kubernetes reports
    /// for a role that does not exist (which grants nothing).
    fn role_rules(&self, binding: &Binding) -> Result<&[PolicyRule], String> {
        let found = match &binding.role_ref {
            RoleRef::ClusterRole(name) => self.cluster_roles.get(name),
            RoleRef::Role(name) => self.roles.get(&(binding.namespace.clone(), name.clone())),
        };
        found.map(Vec::as_slice).ok_or_else(|| {
            let resource = match binding.role_ref {
                RoleRef::ClusterRole(_) => "clusterrole",
                RoleRef::Role(_) => "role",
            };
            format!(
                "{resource}.rbac.authorization.k8s.io {} not found",
                rule::go_quote(binding.role_ref.name())
            )
        })
    }

    /// Visits the rules granted to `user` cluster-wide and, when
    /// `namespace` is not empty, in it (Kubernetes' `VisitRulesFor`), until
    /// `visit` breaks. Returns the resolution errors met on the way.
    fn visit_rules_for(
        &self,
        user: &UserInfo,
        namespace: &str,
        mut visit: impl FnMut(&Binding, &Subject, &PolicyRule) -> ControlFlow<()>,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let namespaced = if namespace.is_empty() {
            None
        } else {
            self.role_bindings.get(namespace)
        };
        let bindings = self
            .cluster_role_bindings
            .iter()
            .chain(namespaced.into_iter().flatten());
        for binding in bindings {
            let Some(subject) = binding.subject_for(user) else {
                continue;
            };
            match self.role_rules(binding) {
                Ok(rules) => {
                    for rule in rules {
                        if visit(binding, subject, rule).is_break() {
                            return errors;
                        }
                    }
                }
                Err(error) => errors.push(error),
            }
        }
        errors
    }

    /// The rules `user` holds in `namespace` (cluster-wide ones included):
    /// what a SelfSubjectRulesReview returns.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        self.rules_and_errors_for(user, namespace).0
    }

    fn rules_and_errors_for(
        &self,
        user: &UserInfo,
        namespace: &str,
    ) -> (Vec<PolicyRule>, Vec<String>) {
        let mut rules = Vec::new();
        let errors = self.visit_rules_for(user, namespace, |_, _, rule| {
            rules.push(rule.clone());
            ControlFlow::Continue(())
        });
        (rules, errors)
    }

    /// Refuses a Role, ClusterRole or binding that would grant `rules`
    /// when `user` does not hold them all in `namespace` (Kubernetes'
    /// `ConfirmNoEscalation`), with Kubernetes' message. Whoever may
    /// `escalate` (roles) or `bind` (bindings) skips this check: that is
    /// the caller's to ask.
    pub fn confirm_no_escalation(
        &self,
        user: &UserInfo,
        namespace: &str,
        rules: &[PolicyRule],
    ) -> Result<(), String> {
        let (owner, errors) = self.rules_and_errors_for(user, namespace);
        let (covered, missing) = covers(&owner, rules);
        if covered {
            return Ok(());
        }
        let mut lines: Vec<String> = rule::compact(missing)
            .iter()
            .map(PolicyRule::compact_string)
            .collect();
        lines.sort();
        lines.dedup();
        let mut message = format!(
            "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
            rule::go_quote(&user.username),
            rule::go_quote_list(&user.groups),
            lines.join("\n")
        );
        if !errors.is_empty() {
            message.push_str(&format!("; resolution errors: [{}]", aggregate(&errors)));
        }
        Err(message)
    }
}

/// Kubernetes' aggregate error text: the one message, or `[a, b]`.
fn aggregate(errors: &[String]) -> String {
    let mut unique: Vec<&String> = Vec::new();
    for error in errors {
        if !unique.contains(&error) {
            unique.push(error);
        }
    }
    if unique.len() == 1 {
        unique[0].clone()
    } else {
        let joined: Vec<&str> = unique.iter().map(|e| e.as_str()).collect();
        format!("[{}]", joined.join(", "))
    }
}

impl Authorizer for RbacPolicy {
    /// Allows what some binding of the user grants, naming the binding;
    /// otherwise no opinion (RBAC never denies), with the roles it could
    /// not find as the reason.
    fn authorize(&self, attributes: &Attributes) -> Decision {
        let mut allowed_by = None;
        let errors = self.visit_rules_for(
            &attributes.user,
            &attributes.namespace,
            |binding, subject, rule| {
                if rule.allows(attributes) {
                    allowed_by = Some(binding.describe(subject));
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        match allowed_by {
            Some(source) => Decision::Allow(format!("RBAC: allowed by {source}")),
            None if errors.is_empty() => Decision::NoOpinion(String::new()),
            None => Decision::NoOpinion(format!("RBAC: {}", aggregate(&errors))),
        }
    }
}

#[cfg(test)]
mod tests;
