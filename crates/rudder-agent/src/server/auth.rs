//! Who may call the node agent's API, decided as the kubelet does with
//! `--authentication-token-webhook` and `--authorization-mode=Webhook`:
//!
//! 1. Authentication: a client certificate verified against the client CA
//!    (its CN is the user, its Os the groups); else an
//!    `Authorization: Bearer` token, reviewed by the API server
//!    (TokenReview); else `401 Unauthorized`. Anonymous requests are not
//!    let through (the kubelet with `--anonymous-auth=false`).
//! 2. Authorization: a SubjectAccessReview asking whether the user may
//!    `VERB nodes/SUBRESOURCE` on this node ([`request_attributes`]);
//!    refused → `403 Forbidden (user=…, verb=…, resource=nodes,
//!    subresource=…)`.
//!
//! Both answers are cached as the kubelet's webhook clients cache them, so
//! that a `kubectl logs -f` or a metrics scrape every few seconds does not
//! cost the API server a review each time.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::Api;
use rudder_auth::{Attributes, Decision, UserInfo};
use sha2::Digest;

use super::text_error;

/// How long an authenticated token's user is remembered (the kubelet's
/// `--authentication-token-webhook-cache-ttl`, 2 min).
pub const TOKEN_AUTHENTICATED_TTL: Duration = Duration::from_secs(120);
/// How long a token the API server rejected stays rejected.
pub const TOKEN_REJECTED_TTL: Duration = Duration::from_secs(30);
/// How long an allowed request stays allowed
/// (`--authorization-webhook-cache-authorized-ttl`, 5 min).
pub const ACCESS_ALLOWED_TTL: Duration = Duration::from_secs(300);
/// How long a refused request stays refused
/// (`--authorization-webhook-cache-unauthorized-ttl`, 30 s).
pub const ACCESS_DENIED_TTL: Duration = Duration::from_secs(30);
/// Entries kept before expired ones are swept.
const CACHE_SWEEP_AT: usize = 1024;

/// Why a review could not be had. Not cached: the next request asks again.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the {kind} could not be created: {source}")]
    Api {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the API server answered the {0} without a status")]
    NoStatus(&'static str),
}

/// The two questions the node agent asks the API server about a caller.
/// Behind a trait so that the server can be tested without one.
pub trait Reviewer: Send + Sync {
    /// Who `token` stands for; None when the API server does not
    /// authenticate it.
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserInfo>, ReviewError>>;

    /// Whether `attributes.user` may do what `attributes` describe.
    fn review_access<'a>(
        &'a self,
        attributes: &'a Attributes,
    ) -> BoxFuture<'a, Result<Decision, ReviewError>>;
}

/// The reviews as the API server's `authentication.k8s.io/v1` TokenReview
/// and `authorization.k8s.io/v1` SubjectAccessReview.
#[derive(Clone)]
pub struct KubeReviewer {
    client: kube::Client,
}

impl KubeReviewer {
    pub fn new(client: kube::Client) -> Self {
        KubeReviewer { client }
    }
}

impl Reviewer for KubeReviewer {
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserInfo>, ReviewError>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: None,
                },
                ..Default::default()
            };
            let answer = Api::<TokenReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|source| ReviewError::Api {
                    kind: "TokenReview",
                    source,
                })?;
            let status = answer.status.ok_or(ReviewError::NoStatus("TokenReview"))?;
            if status.authenticated != Some(true) {
                return Ok(None);
            }
            let user = status.user.unwrap_or_default();
            Ok(Some(UserInfo {
                username: user.username.unwrap_or_default(),
                uid: user.uid.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
            }))
        })
    }

    fn review_access<'a>(
        &'a self,
        attributes: &'a Attributes,
    ) -> BoxFuture<'a, Result<Decision, ReviewError>> {
        Box::pin(async move {
            let user = &attributes.user;
            let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: non_empty(&user.username),
                    uid: non_empty(&user.uid),
                    groups: Some(user.groups.clone()),
                    extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                    resource_attributes: Some(ResourceAttributes {
                        verb: non_empty(&attributes.verb),
                        group: non_empty(&attributes.api_group),
                        version: non_empty(&attributes.api_version),
                        resource: non_empty(&attributes.resource),
                        subresource: non_empty(&attributes.subresource),
                        name: non_empty(&attributes.name),
                        namespace: non_empty(&attributes.namespace),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = Api::<SubjectAccessReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|source| ReviewError::Api {
                    kind: "SubjectAccessReview",
                    source,
                })?;
            let status = answer
                .status
                .ok_or(ReviewError::NoStatus("SubjectAccessReview"))?;
            let reason = status.reason.unwrap_or_default();
            Ok(if status.allowed {
                Decision::Allow(reason)
            } else if status.denied == Some(true) {
                Decision::Deny(reason)
            } else {
                Decision::NoOpinion(reason)
            })
        })
    }
}

/// A map whose entries expire, each after its own time to live.
pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> Default for TtlCache<K, V> {
    fn default() -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// The value, if it has not expired at `now`.
    pub fn get_at(&self, key: &K, now: Instant) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, expires)| now < *expires)
            .map(|(value, _)| value.clone())
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    /// Remembers `value` until `now + ttl`. Expired entries are swept once
    /// the map grows, so that many one-off callers cannot grow it forever.
    pub fn insert_at(&self, key: K, value: V, ttl: Duration, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_SWEEP_AT {
            entries.retain(|_, (_, expires)| now < *expires);
        }
        entries.insert(key, (value, now + ttl));
    }

    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        self.insert_at(key, value, ttl, Instant::now());
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The kubelet's API verb for an HTTP method; None for methods it has no
/// verb for (they are refused).
pub fn verb_of(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => return None,
    })
}

/// The `nodes` subresource a kubelet path is authorized as: `/stats/...`
/// → `stats`, `/metrics...` → `metrics`, `/logs/...` → `log`, everything
/// else (exec, attach, portForward, containerLogs, run, pods, spec, ...)
/// → `proxy`. A prefix counts only as a whole path segment
/// (`/statsfoo` is `proxy`).
pub fn subresource_of(path: &str) -> &'static str {
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        "log"
    } else {
        "proxy"
    }
}

/// What a request to this node's API asks for, as the API server sees an
/// equivalent request: `VERB nodes/SUBRESOURCE NODE`.
pub fn request_attributes(user: UserInfo, verb: &str, path: &str, node_name: &str) -> Attributes {
    Attributes {
        user,
        verb: verb.to_string(),
        resource_request: true,
        api_version: "v1".to_string(),
        resource: "nodes".to_string(),
        subresource: subresource_of(path).to_string(),
        name: node_name.to_string(),
        path: path.to_string(),
        ..Default::default()
    }
}

/// The kubelet's message for a refused request.
pub fn forbidden_message(attributes: &Attributes) -> String {
    format!(
        "Forbidden (user={}, verb={}, resource={}, subresource={})",
        attributes.user.username, attributes.verb, attributes.resource, attributes.subresource
    )
}

/// The kubelet's message when the authorizer could not be asked.
pub fn authorization_error_message(attributes: &Attributes) -> String {
    format!(
        "Authorization error (user={}, verb={}, resource={}, subresource={})",
        attributes.user.username, attributes.verb, attributes.resource, attributes.subresource
    )
}

/// The user of the connection's verified client certificate, put on every
/// request of a TLS connection by the accept loop. None: no certificate,
/// or one without a common name.
#[derive(Clone, Debug, Default)]
pub struct ClientCertificateUser(pub Option<UserInfo>);

/// The bearer token of an `Authorization` header (`Bearer` in any case);
/// None when there is none or it is empty.
pub fn bearer_token(value: &str) -> Option<&str> {
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Authentication and authorization of the node's API, with their caches.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<GuardInner>,
}

struct GuardInner {
    reviewer: Arc<dyn Reviewer>,
    node_name: String,
    /// By the SHA-256 of the token, so that tokens are not kept in memory.
    tokens: TtlCache<[u8; 32], Option<UserInfo>>,
    /// By the JSON of what was asked.
    access: TtlCache<String, Decision>,
}

impl Guard {
    pub fn new(reviewer: Arc<dyn Reviewer>, node_name: impl Into<String>) -> Self {
        Guard {
            inner: Arc::new(GuardInner {
                reviewer,
                node_name: node_name.into(),
                tokens: TtlCache::default(),
                access: TtlCache::default(),
            }),
        }
    }

    /// Who `token` stands for, from the cache or a TokenReview.
    pub async fn authenticate_token(&self, token: &str) -> Result<Option<UserInfo>, ReviewError> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(user) = self.inner.tokens.get(&key) {
            return Ok(user);
        }
        let user = self.inner.reviewer.review_token(token).await?;
        let ttl = if user.is_some() {
            TOKEN_AUTHENTICATED_TTL
        } else {
            TOKEN_REJECTED_TTL
        };
        self.inner.tokens.insert(key, user.clone(), ttl);
        Ok(user)
    }

    /// The authorizer's decision, from the cache or a SubjectAccessReview.
    pub async fn authorize(&self, attributes: &Attributes) -> Result<Decision, ReviewError> {
        let key = serde_json::json!([
            attributes.user,
            attributes.verb,
            attributes.resource,
            attributes.subresource,
            attributes.name,
        ])
        .to_string();
        if let Some(decision) = self.inner.access.get(&key) {
            return Ok(decision);
        }
        let decision = self.inner.reviewer.review_access(attributes).await?;
        let ttl = if decision.allowed() {
            ACCESS_ALLOWED_TTL
        } else {
            ACCESS_DENIED_TTL
        };
        self.inner.access.insert(key, decision.clone(), ttl);
        Ok(decision)
    }

    /// The request's user: its client certificate's, else its bearer
    /// token's; None when it has neither (or the token is not
    /// authenticated).
    async fn authenticate(&self, credentials: Credentials) -> Option<UserInfo> {
        match credentials {
            Credentials::Certificate(user) => Some(user),
            Credentials::Token(token) => match self.authenticate_token(&token).await {
                Ok(user) => user,
                Err(e) => {
                    tracing::warn!(error = %e, "unable to authenticate the request due to an error");
                    None
                }
            },
            Credentials::None => None,
        }
    }
}

/// What a request presents to prove who it comes from, in the order they
/// are tried.
enum Credentials {
    Certificate(UserInfo),
    Token(String),
    None,
}

impl Credentials {
    /// Taken out of the request before any await: a request is not `Sync`,
    /// so no reference to it may be held across one.
    fn of(request: &Request) -> Credentials {
        if let Some(ClientCertificateUser(Some(user))) =
            request.extensions().get::<ClientCertificateUser>()
        {
            return Credentials::Certificate(user.clone());
        }
        match request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
        {
            Some(token) => Credentials::Token(token.to_string()),
            None => Credentials::None,
        }
    }
}

/// The middleware in front of every route of the secure server.
pub async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let credentials = Credentials::of(&request);
    let verb = verb_of(request.method()).unwrap_or_default();
    let path = request.uri().path().to_string();
    let Some(user) = guard.authenticate(credentials).await else {
        return text_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let attributes = request_attributes(user, verb, &path, &guard.inner.node_name);
    match guard.authorize(&attributes).await {
        Ok(decision) if decision.allowed() => next.run(request).await,
        Ok(decision) => {
            tracing::debug!(user = %attributes.user.username, verb = %attributes.verb,
                subresource = %attributes.subresource, reason = decision.reason(), "request forbidden");
            text_error(StatusCode::FORBIDDEN, forbidden_message(&attributes))
        }
        Err(e) => {
            tracing::warn!(user = %attributes.user.username, error = %e, "authorization error");
            text_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                authorization_error_message(&attributes),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn paths_map_to_the_kubelets_node_subresources() {
        for (path, subresource) in [
            ("/stats/summary", "stats"),
            ("/stats", "stats"),
            ("/stats/", "stats"),
            ("/statsfoo", "proxy"),
            ("/metrics", "metrics"),
            ("/metrics/cadvisor", "metrics"),
            ("/metrics/resource", "metrics"),
            ("/logs/", "log"),
            ("/logs/syslog", "log"),
            ("/logsx", "proxy"),
            ("/exec/ns/pod/c", "proxy"),
            ("/attach/ns/pod/c", "proxy"),
            ("/portForward/ns/pod", "proxy"),
            ("/containerLogs/ns/pod/c", "proxy"),
            ("/run/ns/pod/c", "proxy"),
            ("/pods", "proxy"),
            ("/spec/", "proxy"),
            ("/", "proxy"),
        ] {
            assert_eq!(subresource_of(path), subresource, "{path}");
        }
    }

    #[test]
    fn methods_map_to_api_verbs() {
        for (method, verb) in [
            (Method::GET, Some("get")),
            (Method::HEAD, Some("get")),
            (Method::POST, Some("create")),
            (Method::PUT, Some("update")),
            (Method::PATCH, Some("patch")),
            (Method::DELETE, Some("delete")),
            (Method::OPTIONS, None),
        ] {
            assert_eq!(verb_of(&method), verb, "{method}");
        }
    }

    #[test]
    fn requests_are_authorized_as_node_subresources_of_this_node() {
        let user = UserInfo::authenticated("alice", &[]);
        let attributes = request_attributes(user, "create", "/exec/default/web/app", "n1");
        assert!(attributes.resource_request);
        assert_eq!(
            (
                attributes.resource.as_str(),
                attributes.subresource.as_str(),
                attributes.name.as_str(),
                attributes.api_group.as_str(),
                attributes.api_version.as_str(),
                attributes.namespace.as_str()
            ),
            ("nodes", "proxy", "n1", "", "v1", "")
        );
        assert_eq!(
            forbidden_message(&attributes),
            "Forbidden (user=alice, verb=create, resource=nodes, subresource=proxy)"
        );
    }

    #[test]
    fn bearer_tokens_are_read_as_kubernetes_reads_them() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Bearer abc extra"), Some("abc"));
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Basic abc"), None);
    }

    #[test]
    fn cache_entries_expire_after_their_own_ttl() {
        let cache: TtlCache<&str, u32> = TtlCache::default();
        let t0 = Instant::now();
        cache.insert_at("short", 1, Duration::from_secs(30), t0);
        cache.insert_at("long", 2, Duration::from_secs(300), t0);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(cache.get_at(&"short", at(29)), Some(1));
        assert_eq!(cache.get_at(&"short", at(30)), None);
        assert_eq!(cache.get_at(&"long", at(299)), Some(2));
        assert_eq!(cache.get_at(&"long", at(300)), None);
        assert_eq!(cache.get_at(&"missing", t0), None);
    }

    #[test]
    fn expired_entries_are_swept_when_the_cache_grows() {
        let cache: TtlCache<usize, ()> = TtlCache::default();
        let t0 = Instant::now();
        for i in 0..CACHE_SWEEP_AT {
            cache.insert_at(i, (), Duration::from_secs(1), t0);
        }
        cache.insert_at(
            usize::MAX,
            (),
            Duration::from_secs(1),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(cache.len(), 1);
    }

    /// Answers from a table, counting the calls.
    #[derive(Default)]
    struct Counting {
        token_calls: AtomicUsize,
        access_calls: AtomicUsize,
    }

    impl Reviewer for Counting {
        fn review_token<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Option<UserInfo>, ReviewError>> {
            Box::pin(async move {
                self.token_calls.fetch_add(1, Ordering::SeqCst);
                match token {
                    "good" => Ok(Some(UserInfo::authenticated("bob", &[]))),
                    "broken" => Err(ReviewError::NoStatus("TokenReview")),
                    _ => Ok(None),
                }
            })
        }

        fn review_access<'a>(
            &'a self,
            attributes: &'a Attributes,
        ) -> BoxFuture<'a, Result<Decision, ReviewError>> {
            Box::pin(async move {
                self.access_calls.fetch_add(1, Ordering::SeqCst);
                Ok(if attributes.user.username == "bob" {
                    Decision::Allow(String::new())
                } else {
                    Decision::NoOpinion(String::new())
                })
            })
        }
    }

    #[tokio::test]
    async fn answers_are_cached_and_errors_are_not() {
        let reviewer = Arc::new(Counting::default());
        let guard = Guard::new(reviewer.clone(), "n1");
        for _ in 0..3 {
            assert_eq!(
                guard
                    .authenticate_token("good")
                    .await
                    .unwrap()
                    .unwrap()
                    .username,
                "bob"
            );
            assert_eq!(guard.authenticate_token("bad").await.unwrap(), None);
        }
        assert_eq!(reviewer.token_calls.load(Ordering::SeqCst), 2);
        for _ in 0..2 {
            assert!(guard.authenticate_token("broken").await.is_err());
        }
        assert_eq!(reviewer.token_calls.load(Ordering::SeqCst), 4);

        let bob = request_attributes(UserInfo::authenticated("bob", &[]), "get", "/pods", "n1");
        let eve = request_attributes(UserInfo::authenticated("eve", &[]), "get", "/pods", "n1");
        for _ in 0..3 {
            assert!(guard.authorize(&bob).await.unwrap().allowed());
            assert!(!guard.authorize(&eve).await.unwrap().allowed());
        }
        assert_eq!(reviewer.access_calls.load(Ordering::SeqCst), 2);
        let bob_stats = request_attributes(bob.user.clone(), "get", "/stats/summary", "n1");
        guard.authorize(&bob_stats).await.unwrap();
        assert_eq!(
            reviewer.access_calls.load(Ordering::SeqCst),
            3,
            "another subresource is another question"
        );
    }
}
