//! Bearer tokens: ServiceAccount JWTs this server signed (bound tokens
//! live only as long as the objects they are bound to; legacy Secret tokens
//! as long as their Secret), and the node join secret.

use std::time::SystemTime;

use rudder_auth::token::{KubernetesClaims, TokenKind};
use rudder_auth::user::UserInfo;
use serde_json::Value;

use crate::object::meta_str;
use crate::ApiServer;

/// The user node agents bootstrap as with the join token: it may only ask
/// for a node client certificate (`system:node-bootstrapper`).
pub(crate) const BOOTSTRAP_USER: &str = "system:bootstrap:rudder-node-join";
pub(crate) const BOOTSTRAPPERS: &str = "system:bootstrappers";

impl ApiServer {
    /// The user a bearer token stands for, if it is valid now for the
    /// API's own audiences.
    pub(crate) async fn authenticate_token(&self, token: &str) -> Option<UserInfo> {
        let security = self.security()?;
        if let Some(secret) = &security.config.bootstrap_secret {
            if constant_time_eq(token.as_bytes(), secret.as_bytes()) {
                return Some(UserInfo::authenticated(BOOTSTRAP_USER, &[BOOTSTRAPPERS]));
            }
        }
        let audiences = security.config.api_audiences.clone();
        self.service_account_token(token, &audiences).await
    }

    /// A ServiceAccount token this server signed, for one of `audiences`,
    /// whose ServiceAccount (and the Pod, Secret or Node it is bound to)
    /// still exists with the same uid.
    pub(crate) async fn service_account_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Option<UserInfo> {
        let security = self.security()?;
        if !rudder_auth::token::looks_like_jwt(token) {
            return None;
        }
        let claims = match security.verified.get(token, audiences) {
            Some(claims) => claims,
            None => match security
                .config
                .tokens
                .verifier()
                .with_audiences(audiences.to_vec())
                .verify(token, SystemTime::now())
            {
                Ok(claims) => {
                    security.verified.insert(token, audiences, &claims);
                    claims
                }
                Err(err) => {
                    tracing::debug!(error = %err, "a bearer token did not verify");
                    return None;
                }
            },
        };
        let alive = match claims.kind()? {
            TokenKind::Bound(bound) => self.bound_objects_alive(bound).await,
            TokenKind::Legacy {
                namespace,
                service_account_name,
                service_account_uid,
                secret_name,
            } => {
                self.account_alive(namespace, service_account_name, service_account_uid)
                    .await
                    && self
                        .cached_object("", "secrets", namespace, secret_name)
                        .await
                        .is_some_and(|secret| secret_holds(&secret, token))
            }
        };
        if !alive {
            return None;
        }
        claims.user_info()
    }

    async fn account_alive(&self, namespace: &str, name: &str, uid: &str) -> bool {
        self.cached_object("", "serviceaccounts", namespace, name)
            .await
            .is_some_and(|account| uid.is_empty() || meta_str(&account, "uid") == Some(uid))
    }

    async fn bound_objects_alive(&self, bound: &KubernetesClaims) -> bool {
        if !self
            .account_alive(
                &bound.namespace,
                &bound.serviceaccount.name,
                &bound.serviceaccount.uid,
            )
            .await
        {
            return false;
        }
        let same = |object: Option<std::sync::Arc<Value>>, uid: &str| {
            object.is_some_and(|o| {
                meta_str(&o, "uid") == Some(uid)
                    && o.pointer("/metadata/deletionTimestamp")
                        .is_none_or(Value::is_null)
            })
        };
        if let Some(pod) = &bound.pod {
            if !same(
                self.cached_object("", "pods", &bound.namespace, &pod.name)
                    .await,
                &pod.uid,
            ) {
                return false;
            }
        }
        if let Some(secret) = &bound.secret {
            if !same(
                self.cached_object("", "secrets", &bound.namespace, &secret.name)
                    .await,
                &secret.uid,
            ) {
                return false;
            }
        }
        // A token bound to a pod names the pod's node too; only a token
        // bound to the node itself dies with it.
        if let (Some(node), None) = (&bound.node, &bound.pod) {
            if !same(
                self.cached_object("", "nodes", "", &node.name).await,
                &node.uid,
            ) {
                return false;
            }
        }
        true
    }

    /// An object as the watch cache has it.
    pub(crate) async fn cached_object(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<std::sync::Arc<Value>> {
        let prefix = if group.is_empty() {
            format!("/{plural}/")
        } else {
            format!("/{plural}.{group}/")
        };
        let key = if namespace.is_empty() {
            format!("{prefix}{name}")
        } else {
            format!("{prefix}{namespace}/{name}")
        };
        self.caches().get(self.store(), &prefix).get(&key).await
    }
}

/// How long a verified signature is trusted without checking it again
/// (kube-apiserver caches token authentication for 10 s as well). Expiry
/// and the objects a token is bound to are checked on every request.
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// Entries kept at most; past that the cache starts over.
const VERIFIED_MAX: usize = 4096;

/// A token and the audiences it was verified for.
type TokenKey = (String, Vec<String>);

/// Tokens whose signature, issuer and audience verified lately: an ES256
/// verification costs more than the rest of a request's authorization.
#[derive(Default)]
pub(crate) struct VerifiedTokens {
    entries: std::sync::Mutex<
        std::collections::HashMap<TokenKey, (rudder_auth::token::Claims, std::time::Instant)>,
    >,
}

impl VerifiedTokens {
    fn get(&self, token: &str, audiences: &[String]) -> Option<rudder_auth::token::Claims> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (claims, until) = entries.get(&(token.to_owned(), audiences.to_vec()))?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let unexpired = claims.exp.is_none_or(|exp| exp > now);
        (std::time::Instant::now() < *until && unexpired).then(|| claims.clone())
    }

    fn insert(&self, token: &str, audiences: &[String], claims: &rudder_auth::token::Claims) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= VERIFIED_MAX {
            let now = std::time::Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= VERIFIED_MAX {
                entries.clear();
            }
        }
        entries.insert(
            (token.to_owned(), audiences.to_vec()),
            (claims.clone(), std::time::Instant::now() + VERIFIED_TTL),
        );
    }
}

/// Whether a legacy token Secret still holds exactly this token.
fn secret_holds(secret: &Value, token: &str) -> bool {
    use base64::Engine as _;
    secret
        .pointer("/data/token")
        .and_then(Value::as_str)
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .is_some_and(|stored| constant_time_eq(&stored, token.as_bytes()))
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_whole() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}
