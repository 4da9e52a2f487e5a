//! Authentication, impersonation and authorization: the first stage of
//! every request on a secured server (`ApiServer::with_security`).
//!
//! Who is asking comes from a verified client certificate (the TLS layer,
//! [`tls`]), a ServiceAccount token (a JWT this server signed, still bound
//! to live objects), or the node join token (TLS bootstrapping: it may only
//! ask for a node certificate). Nobody else gets in: anonymous requests are
//! answered 401, except the health endpoints and the CA bundle that joining
//! nodes check against their token. Authorization is a chain: the
//! `system:masters` group, then the Node authorizer for node agents, then
//! RBAC; the first to allow wins, and a request no one allows is 403 with
//! Kubernetes' message.

pub(crate) mod admission;
mod authn;
mod policy;
pub(crate) mod request_info;
mod reviews;
pub(crate) mod tls;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rudder_auth::authorizer::{forbidden_message, Authorizer};
use rudder_auth::user::{self, UserInfo};
use rudder_auth::{Attributes, Decision};

use crate::error::ApiError;
use crate::ApiServer;

pub(crate) use policy::PolicyState;
pub(crate) use reviews::{is_review, serve_review};

/// What a secured server needs: its TLS identity, the keys it signs
/// ServiceAccount tokens with, the node join secret.
pub struct SecurityConfig {
    /// The HTTPS configuration (serving certificate, client CA).
    pub tls: Arc<rustls::ServerConfig>,
    /// The CA that signed the serving certificate: what clients trust,
    /// served at `/cacerts` and published in every namespace as
    /// `kube-root-ca.crt`.
    pub server_ca_pem: String,
    /// The CA that signs client certificates: node agents verify the API
    /// server's (and other callers') certificates with it, served at
    /// `/client-ca.crt`.
    pub client_ca_pem: String,
    /// Signs and verifies ServiceAccount tokens.
    pub tokens: rudder_auth::token::TokenIssuer,
    /// The join token's secret: a bearer token for `system:bootstrappers`
    /// (node TLS bootstrapping).
    pub bootstrap_secret: Option<String>,
    /// How the API server reaches node agents (their CA, its own client
    /// certificate).
    pub kubelet_client: Option<Arc<rustls::ClientConfig>>,
    /// The audiences API tokens must carry (the issuer by default).
    pub api_audiences: Vec<String>,
    /// Where authenticated requests are recorded, and how much of each.
    pub audit: Option<AuditConfig>,
}

/// The audit log and its policy (`--audit-log-path`, `--audit-policy-file`).
pub struct AuditConfig {
    pub policy: rudder_auth::audit::Policy,
    pub log: rudder_auth::audit::AuditLog,
}

pub(crate) struct Security {
    pub(crate) config: SecurityConfig,
    pub(crate) policy: PolicyState,
    /// Tokens whose signature verified lately (the objects they are bound
    /// to are still checked on every request).
    pub(crate) verified: authn::VerifiedTokens,
}

impl Security {
    pub(crate) fn new(config: SecurityConfig) -> Self {
        Security {
            config,
            policy: PolicyState::default(),
            verified: Default::default(),
        }
    }
}

tokio::task_local! {
    /// The user of the request being handled (admission needs it).
    static REQUEST_USER: UserInfo;
}

/// The user of the request this task serves, on a secured server.
pub(crate) fn current_user() -> Option<UserInfo> {
    REQUEST_USER.try_with(Clone::clone).ok()
}

/// Paths anyone may read: liveness and readiness probes, and the CA bundle
/// a joining node compares with its token's hash before it trusts the
/// server.
fn public_path(path: &str) -> bool {
    const PUBLIC: &[&str] = &[
        "/healthz",
        "/livez",
        "/readyz",
        "/cacerts",
        "/client-ca.crt",
    ];
    PUBLIC.iter().any(|p| {
        path == *p
            || path
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

fn unauthorized() -> Response {
    let status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    });
    (StatusCode::UNAUTHORIZED, axum::Json(status)).into_response()
}

/// The middleware in front of every route.
pub(crate) async fn guard(
    State(server): State<ApiServer>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let Some(security) = server.security() else {
        return with_warnings(next.run(request)).await;
    };
    let path = request.uri().path().to_owned();
    // The CA certificates are public: a joining node reads them before it
    // has credentials (and checks the server CA against its token).
    if request.method() == axum::http::Method::GET {
        let bundle = match path.as_str() {
            "/cacerts" => Some(&security.config.server_ca_pem),
            "/client-ca.crt" => Some(&security.config.client_ca_pem),
            _ => None,
        };
        if let Some(bundle) = bundle {
            return (
                [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
                bundle.clone(),
            )
                .into_response();
        }
    }
    let identity = request
        .extensions()
        .get::<tls::ConnectionIdentity>()
        .cloned()
        .unwrap_or(tls::ConnectionIdentity::None);
    let headers = request.headers().clone();
    let authenticated = match server.authenticate(&headers, identity).await {
        Ok(user) => user,
        Err(err) => return err.into_response(),
    };
    let Some(authenticated) = authenticated else {
        if public_path(&path) {
            return with_warnings(next.run(request)).await;
        }
        return unauthorized();
    };
    let user = match server.impersonate(&authenticated, &headers).await {
        Ok(user) => user,
        Err(err) => return err.into_response(),
    };
    let mut attributes = request_info::attributes(request.method(), &path, request.uri().query());
    attributes.user = user.clone();
    let mut audit = security.config.audit.as_ref().map(|audit| {
        let config = audit.policy.config_for(&attributes);
        let uri = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| path.clone());
        let mut event = rudder_auth::audit::Event::new(config, &attributes, &uri).with_user_agent(
            headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        );
        if let Some(peer) = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        {
            event = event.with_source_ips([peer.0.ip().to_string()]);
        }
        if user != authenticated {
            event = event.impersonating(authenticated.clone(), user.clone());
        }
        (audit, event)
    });
    if let Some((log, event)) = &audit {
        let _ = log
            .log
            .write(&event.at_stage(rudder_auth::audit::Stage::RequestReceived));
    }
    if !public_path(&path) {
        let decision = server.authorize(&attributes).await;
        if let Some((_, event)) = &mut audit {
            event.authorized(&decision);
        }
        if !decision.allowed() {
            tracing::debug!(user = %user.username, verb = %attributes.verb, path, reason = decision.reason(), "forbidden");
            let refusal = ApiError::Forbidden(forbidden_message(&attributes, ""));
            if let Some((log, mut event)) = audit {
                event.set_response_status(rudder_auth::audit::ResponseStatus::from_status(
                    403,
                    &refusal.status(),
                ));
                let _ = log
                    .log
                    .write(&event.at_stage(rudder_auth::audit::Stage::ResponseComplete));
            }
            return refusal.into_response();
        }
    }
    let Some((log, mut event)) = audit else {
        return REQUEST_USER
            .scope(user, with_warnings(next.run(request)))
            .await;
    };
    // Request bodies are kept from level Request on (they are read whole
    // by the handlers anyway; streams and upgrades carry none).
    let request = if event.level >= rudder_auth::audit::Level::Request
        && !matches!(
            *request.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        ) {
        let (parts, body) = request.into_parts();
        let bytes = match crate::rest::read_body(body).await {
            Ok(bytes) => bytes,
            Err(err) => return err.into_response(),
        };
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            event.set_request_object(value);
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        request
    };
    let response = REQUEST_USER
        .scope(user, with_warnings(next.run(request)))
        .await;
    let code = response.status().as_u16();
    let streaming = attributes.verb == "watch" || code == 101;
    let (parts, body) = response.into_parts();
    let body = if !streaming
        && (code >= 400 || event.level >= rudder_auth::audit::Level::RequestResponse)
    {
        // Statuses and, at RequestResponse, whole answers are recorded.
        match axum::body::to_bytes(body, 64 << 20).await {
            Ok(bytes) => {
                let value = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
                match &value {
                    Some(status) if code >= 400 => event.set_response_status(
                        rudder_auth::audit::ResponseStatus::from_status(code, status),
                    ),
                    _ => event.set_response_status(rudder_auth::audit::ResponseStatus::code(code)),
                }
                if let Some(value) = value {
                    event.set_response_object(value);
                }
                Body::from(bytes)
            }
            Err(_) => Body::empty(),
        }
    } else {
        event.set_response_status(rudder_auth::audit::ResponseStatus::code(code));
        body
    };
    let stage = if streaming {
        rudder_auth::audit::Stage::ResponseStarted
    } else {
        rudder_auth::audit::Stage::ResponseComplete
    };
    if let Err(err) = log.log.write(&event.at_stage(stage)) {
        tracing::warn!(error = %err, "writing the audit log failed");
    }
    Response::from_parts(parts, body)
}

/// Runs a handler with a place for admission's warnings, and adds them to
/// its response as `Warning: 299 - "…"` headers.
async fn with_warnings(handler: impl std::future::Future<Output = Response>) -> Response {
    let (mut response, warnings) = admission::REQUEST_WARNINGS
        .scope(std::sync::Mutex::new(Vec::new()), async {
            let response = handler.await;
            let warnings = admission::REQUEST_WARNINGS
                .with(|w| std::mem::take(&mut *w.lock().unwrap_or_else(|e| e.into_inner())));
            (response, warnings)
        })
        .await;
    for warning in warnings {
        let text = format!(
            "299 - {}",
            serde_json::to_string(&warning).unwrap_or_default()
        );
        if let Ok(value) = axum::http::HeaderValue::from_str(&text) {
            response
                .headers_mut()
                .append(axum::http::header::WARNING, value);
        }
    }
    response
}

impl ApiServer {
    /// Who the request is from: `None` for an anonymous request, an error
    /// for credentials that do not hold. As kube-apiserver's union of
    /// authenticators: a valid client certificate wins, then the bearer
    /// token; a request whose credentials all fail is refused.
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        certificate: tls::ConnectionIdentity,
    ) -> Result<Option<UserInfo>, ApiError> {
        if let tls::ConnectionIdentity::User(user) = certificate {
            return Ok(Some(user));
        }
        if let Some(token) = bearer_token(headers) {
            return match self.authenticate_token(&token).await {
                Some(user) => Ok(Some(user)),
                None => Err(ApiError::Unauthorized),
            };
        }
        match certificate {
            tls::ConnectionIdentity::Invalid => Err(ApiError::Unauthorized),
            _ => Ok(None),
        }
    }

    /// Runs the authorizer chain.
    pub(crate) async fn authorize(&self, attributes: &Attributes) -> Decision {
        if attributes.user.in_group(user::MASTERS) {
            return Decision::Allow("system:masters".into());
        }
        let Some(security) = self.security() else {
            return Decision::Allow("authorization is off".into());
        };
        if attributes.user.node_name().is_some() {
            let graph = self.node_graph(attributes).await;
            let decision = rudder_auth::node::NodeAuthorizer::new(graph).authorize(attributes);
            if !matches!(decision, Decision::NoOpinion(_)) {
                return decision;
            }
        }
        let rbac = security.policy.rbac(self).await;
        rbac.authorize(attributes)
    }

    /// Applies `Impersonate-*` headers when the authenticated user may act
    /// as the named user, groups, uid and extras.
    async fn impersonate(
        &self,
        user: &UserInfo,
        headers: &HeaderMap,
    ) -> Result<UserInfo, ApiError> {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect()
        };
        let username = values("impersonate-user").into_iter().next();
        let groups = values("impersonate-group");
        let uid = values("impersonate-uid").into_iter().next();
        let mut extra = std::collections::BTreeMap::<String, Vec<String>>::new();
        for (name, value) in headers {
            if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
                if let Ok(value) = value.to_str() {
                    let key = percent_decode(key);
                    extra.entry(key).or_default().push(value.to_owned());
                }
            }
        }
        let Some(username) = username else {
            if !groups.is_empty() || uid.is_some() || !extra.is_empty() {
                return Err(ApiError::BadRequest(
                    "requested impersonation of groups, uid or extras without impersonating a user"
                        .into(),
                ));
            }
            return Ok(user.clone());
        };
        // Each thing impersonated is its own authorization check, as
        // Kubernetes does them.
        let mut checks = Vec::new();
        let mut check = |resource: &str, group: &str, namespace: &str, name: &str| {
            checks.push(Attributes {
                user: user.clone(),
                verb: "impersonate".into(),
                resource_request: true,
                namespace: namespace.into(),
                api_group: group.into(),
                resource: resource.into(),
                name: name.into(),
                ..Default::default()
            });
        };
        let service_account = username
            .strip_prefix(user::SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, name)| (ns.to_owned(), name.to_owned()));
        match &service_account {
            Some((ns, name)) => check("serviceaccounts", "", ns, name),
            None => check("users", "", "", &username),
        }
        for group in &groups {
            check("groups", "", "", group);
        }
        if let Some(uid) = &uid {
            check("uids", "authentication.k8s.io", "", uid);
        }
        for (key, values) in &extra {
            for value in values {
                let mut attrs_resource = String::from("userextras");
                attrs_resource.push('/');
                attrs_resource.push_str(key);
                check(&attrs_resource, "authentication.k8s.io", "", value);
            }
        }
        for attrs in &mut checks {
            // `userextras/KEY` is a resource and a subresource.
            if let Some((resource, sub)) = attrs.resource.clone().split_once('/') {
                attrs.resource = resource.into();
                attrs.subresource = sub.into();
            }
            if !self.authorize(attrs).await.allowed() {
                return Err(ApiError::Forbidden(forbidden_message(attrs, "")));
            }
        }
        let mut impersonated = UserInfo {
            username: username.clone(),
            uid: uid.unwrap_or_default(),
            groups,
            extra,
        };
        if let Some((ns, _)) = &service_account {
            if impersonated.groups.is_empty() {
                impersonated.groups = vec![
                    user::SERVICE_ACCOUNTS.to_string(),
                    format!("{}:{ns}", user::SERVICE_ACCOUNTS),
                ];
            }
        }
        if username != user::ANONYMOUS_USER && !impersonated.in_group(user::AUTHENTICATED) {
            impersonated.groups.push(user::AUTHENTICATED.into());
        }
        Ok(impersonated)
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// Extra keys travel percent-encoded in header names.
fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("k={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_and_the_ca_are_public() {
        for path in ["/healthz", "/readyz", "/livez", "/readyz/ping", "/cacerts"] {
            assert!(public_path(path), "{path}");
        }
        for path in [
            "/version",
            "/api",
            "/healthzx",
            "/api/v1/namespaces",
            "/openapi/v2",
        ] {
            assert!(!public_path(path), "{path}");
        }
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert("authorization", "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer_token(&headers).as_deref(), Some("abc.def"));
        headers.insert("authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }
}
