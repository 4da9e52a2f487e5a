//! What a request asks to do, and an authorizer's answer (Kubernetes'
//! `authorizer.Attributes` and `Decision`).

use crate::user::UserInfo;

/// One request, as authorizers see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub user: UserInfo,
    /// For resources: get, list, watch, create, update, patch, delete,
    /// deletecollection, and the special verbs (impersonate, bind,
    /// escalate, approve, sign, use). For other paths: the lower-case HTTP
    /// method (get, post, put, patch, delete, head).
    pub verb: String,
    /// A resource request (`/api/...`, `/apis/...` naming a resource), as
    /// opposed to a path such as `/healthz` or `/version`.
    pub resource_request: bool,
    /// Empty for cluster-scoped resources and for all namespaces.
    pub namespace: String,
    pub api_group: String,
    pub api_version: String,
    /// The plural resource (`pods`), or for impersonation `users`,
    /// `groups`, `serviceaccounts`, `uids`.
    pub resource: String,
    pub subresource: String,
    /// Empty for lists and creates without a name.
    pub name: String,
    /// The URL path, for non-resource requests.
    pub path: String,
    /// The request's field selector (`spec.nodeName=n1`), when it has one:
    /// the Node authorizer allows some lists only when narrowed by one.
    pub field_selector: Option<String>,
}

impl Attributes {
    /// Whether the request is on `group`/`resource` (any version).
    pub fn is(&self, group: &str, resource: &str) -> bool {
        self.resource_request && self.api_group == group && self.resource == resource
    }

    /// `resource/subresource`, or `resource`.
    pub fn resource_and_subresource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// An authorizer's answer. Authorizers are chained: the first `Allow` or
/// `Deny` ends the chain; `NoOpinion` asks the next one. A request no one
/// allows is forbidden.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    Deny(String),
    NoOpinion(String),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// The reason given, if any.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Allow(r) | Decision::Deny(r) | Decision::NoOpinion(r) => r,
        }
    }
}

/// Something that decides requests.
pub trait Authorizer: Send + Sync {
    fn authorize(&self, attributes: &Attributes) -> Decision;
}

/// Kubernetes' message for a forbidden request:
/// `pods is forbidden: User "alice" cannot list resource "pods" in API
/// group "" in the namespace "sec"`, with the authorizer's reason after a
/// colon when there is one.
pub fn forbidden_message(attributes: &Attributes, reason: &str) -> String {
    let user = &attributes.user.username;
    let mut message = if attributes.resource_request {
        let resource = attributes.resource_and_subresource();
        let subject = if attributes.name.is_empty() {
            if attributes.api_group.is_empty() {
                attributes.resource.clone()
            } else {
                format!("{}.{}", attributes.resource, attributes.api_group)
            }
        } else if attributes.api_group.is_empty() {
            format!("{} \"{}\"", attributes.resource, attributes.name)
        } else {
            format!(
                "{}.{} \"{}\"",
                attributes.resource, attributes.api_group, attributes.name
            )
        };
        let scope = if attributes.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", attributes.namespace)
        };
        format!(
            "{subject} is forbidden: User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            attributes.verb, attributes.api_group
        )
    } else {
        format!(
            "forbidden: User \"{user}\" cannot {} path \"{}\"",
            attributes.verb, attributes.path
        )
    };
    if !reason.is_empty() {
        message.push_str(": ");
        message.push_str(reason);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            user: UserInfo::service_account("sec", "reader", ""),
            verb: verb.into(),
            resource_request: true,
            namespace: ns.into(),
            api_group: group.into(),
            api_version: "v1".into(),
            resource: resource.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn forbidden_messages_read_as_kubernetes_writes_them() {
        assert_eq!(
            forbidden_message(&attrs("list", "", "pods", "sec", ""), ""),
            "pods is forbidden: User \"system:serviceaccount:sec:reader\" cannot list resource \"pods\" in API group \"\" in the namespace \"sec\""
        );
        assert_eq!(
            forbidden_message(&attrs("get", "apps", "deployments", "", "web"), ""),
            "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:sec:reader\" cannot get resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
        let mut path = attrs("get", "", "", "", "");
        path.resource_request = false;
        path.path = "/metrics".into();
        assert_eq!(
            forbidden_message(&path, "no"),
            "forbidden: User \"system:serviceaccount:sec:reader\" cannot get path \"/metrics\": no"
        );
    }
}
