//! The authenticated user of a request (Kubernetes' `user.Info`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every authenticated request carries this group.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Anonymous requests (refused, but named when authorizing).
pub const ANONYMOUS_USER: &str = "system:anonymous";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// Full access, without consulting any authorizer.
pub const MASTERS: &str = "system:masters";
/// Node agents' group; their user names are `system:node:NAME`.
pub const NODES: &str = "system:nodes";
pub const NODE_USER_PREFIX: &str = "system:node:";
/// ServiceAccounts: `system:serviceaccount:NS:NAME`, in groups
/// `system:serviceaccounts` and `system:serviceaccounts:NS`.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";

/// Who a request comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with `groups`, plus `system:authenticated`.
    pub fn authenticated(username: impl Into<String>, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        UserInfo {
            username: username.into(),
            groups,
            ..Default::default()
        }
    }

    /// The user a ServiceAccount token stands for.
    pub fn service_account(namespace: &str, name: &str, uid: &str) -> Self {
        let mut user = UserInfo::authenticated(
            format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"),
            &[SERVICE_ACCOUNTS, &format!("{SERVICE_ACCOUNTS}:{namespace}")],
        );
        user.uid = uid.to_string();
        user
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// `(namespace, name)` when this is a ServiceAccount.
    pub fn service_account_name(&self) -> Option<(&str, &str)> {
        self.username
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
            .split_once(':')
    }

    /// The node's name when this is a node agent (`system:node:NAME` in
    /// `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        if !self.in_group(NODES) {
            return None;
        }
        self.username
            .strip_prefix(NODE_USER_PREFIX)
            .filter(|n| !n.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts_and_nodes_are_recognised_by_name() {
        let sa = UserInfo::service_account("sec", "reader", "u1");
        assert_eq!(sa.username, "system:serviceaccount:sec:reader");
        assert!(sa.in_group("system:serviceaccounts:sec") && sa.in_group(AUTHENTICATED));
        assert_eq!(sa.service_account_name(), Some(("sec", "reader")));
        let node = UserInfo::authenticated("system:node:n1", &[NODES]);
        assert_eq!(node.node_name(), Some("n1"));
        let pretender = UserInfo::authenticated("system:node:n1", &[]);
        assert_eq!(
            pretender.node_name(),
            None,
            "the group is what makes a node"
        );
    }
}
