//! The virtual, create-only resources of authentication and authorization:
//! TokenReview, SelfSubjectReview, SubjectAccessReview (and its Self and
//! Local forms), SelfSubjectRulesReview, and the TokenRequest subresource
//! of ServiceAccounts. Nothing is stored: each request is answered from
//! the authenticators and authorizers.

use std::time::{Duration, SystemTime};

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rudder_auth::token::{Claims, ObjectRef};
use rudder_auth::user::UserInfo;
use rudder_auth::Attributes;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::object::meta_str;
use crate::ApiServer;

/// Kubernetes' default and minimum TokenRequest lifetimes.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;
const MIN_TOKEN_SECONDS: i64 = 600;

/// Answers `method path` if it is one of the review resources or the
/// TokenRequest subresource; `None` sends the request on.
pub(crate) async fn serve_review(
    server: &ApiServer,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Option<Result<Response, ApiError>> {
    server.security()?;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match segments.as_slice() {
        ["apis", "authentication.k8s.io", version, "tokenreviews"] => {
            only_post(method)?;
            server.token_review(version, body).await
        }
        ["apis", "authentication.k8s.io", version, "selfsubjectreviews"] => {
            only_post(method)?;
            self_subject_review(version, body)
        }
        ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"] => {
            only_post(method)?;
            server
                .access_review("SubjectAccessReview", None, body)
                .await
        }
        ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] => {
            only_post(method)?;
            server
                .access_review("SelfSubjectAccessReview", None, body)
                .await
        }
        ["apis", "authorization.k8s.io", "v1", "namespaces", ns, "localsubjectaccessreviews"] => {
            only_post(method)?;
            server
                .access_review("LocalSubjectAccessReview", Some(ns), body)
                .await
        }
        ["apis", "authorization.k8s.io", "v1", "selfsubjectrulesreviews"] => {
            only_post(method)?;
            server.rules_review(body).await
        }
        ["api", "v1", "namespaces", ns, "serviceaccounts", name, "token"] => {
            only_post(method)?;
            server.token_request(ns, name, body).await
        }
        _ => return None,
    };
    Some(result)
}

/// Whether `path` is one of the review resources or a TokenRequest.
pub(crate) fn is_review(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        [
            "apis",
            "authentication.k8s.io",
            _,
            "tokenreviews" | "selfsubjectreviews"
        ] | [
            "apis",
            "authorization.k8s.io",
            "v1",
            "subjectaccessreviews" | "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
        ] | [
            "apis",
            "authorization.k8s.io",
            "v1",
            "namespaces",
            _,
            "localsubjectaccessreviews"
        ] | ["api", "v1", "namespaces", _, "serviceaccounts", _, "token"]
    )
}

/// A JSON array of strings (anything else is skipped), as review specs
/// carry audiences, groups and the like.
fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn only_post(method: &Method) -> Option<()> {
    (method == Method::POST).then_some(())
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body could not be decoded: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be an object".into(),
        ));
    }
    Ok(value)
}

fn created(object: Value) -> Result<Response, ApiError> {
    Ok((StatusCode::CREATED, axum::Json(object)).into_response())
}

fn user_json(user: &UserInfo) -> Value {
    let mut value = json!({"username": user.username, "groups": user.groups});
    if !user.uid.is_empty() {
        value["uid"] = json!(user.uid);
    }
    if !user.extra.is_empty() {
        value["extra"] = json!(user.extra);
    }
    value
}

fn requester() -> Result<UserInfo, ApiError> {
    super::current_user().ok_or_else(|| ApiError::Internal("no user on a secured request".into()))
}

fn self_subject_review(version: &str, body: &[u8]) -> Result<Response, ApiError> {
    let mut review = parse(body)?;
    let user = requester()?;
    review["apiVersion"] = json!(format!("authentication.k8s.io/{version}"));
    review["kind"] = json!("SelfSubjectReview");
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    review["status"] = json!({"userInfo": user_json(&user)});
    created(review)
}

impl ApiServer {
    async fn token_review(&self, version: &str, body: &[u8]) -> Result<Response, ApiError> {
        let mut review = parse(body)?;
        let token = review
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if token.is_empty() {
            return Err(ApiError::invalid_simple(
                "TokenReview",
                "",
                "spec.token",
                "Required value: token must not be empty",
            ));
        }
        let api_audiences = self
            .security()
            .map(|s| s.config.api_audiences.clone())
            .unwrap_or_default();
        let wanted: Vec<String> = Some(string_list(review.pointer("/spec/audiences")))
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| api_audiences.clone());
        let user = self.authenticate_token_for(&token, &wanted).await;
        review["apiVersion"] = json!(format!("authentication.k8s.io/{version}"));
        review["kind"] = json!("TokenReview");
        if !review["metadata"].is_object() {
            review["metadata"] = json!({});
        }
        review["metadata"]["creationTimestamp"] = Value::Null;
        review["status"] = match user {
            Some(user) => {
                json!({"authenticated": true, "user": user_json(&user), "audiences": wanted})
            }
            None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
        };
        created(review)
    }

    /// SubjectAccessReview and its forms: the subject is the request's
    /// own user for the Self form, the spec's user otherwise.
    async fn access_review(
        &self,
        kind: &str,
        namespace: Option<&str>,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let mut review = parse(body)?;
        let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
        let user = if kind == "SelfSubjectAccessReview" {
            requester()?
        } else {
            let username = spec
                .get("user")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let groups = string_list(spec.get("groups"));
            if username.is_empty() && groups.is_empty() {
                return Err(ApiError::invalid_simple(
                    kind,
                    "",
                    "spec.user",
                    "Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            let extra = spec
                .get("extra")
                .and_then(|e| serde_json::from_value(e.clone()).ok())
                .unwrap_or_default();
            UserInfo {
                username,
                uid: spec
                    .get("uid")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                groups,
                extra,
            }
        };
        let mut attributes = Attributes {
            user,
            ..Default::default()
        };
        if let Some(resource) = spec.get("resourceAttributes") {
            let field = |name: &str| {
                resource
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            attributes.resource_request = true;
            attributes.namespace = field("namespace");
            attributes.verb = field("verb");
            attributes.api_group = field("group");
            attributes.api_version = field("version");
            attributes.resource = field("resource");
            attributes.subresource = field("subresource");
            attributes.name = field("name");
            if let Some(ns) = namespace {
                if attributes.namespace != ns {
                    return Err(ApiError::BadRequest(format!(
                        "spec.resourceAttributes.namespace must match namespace: {ns}"
                    )));
                }
            }
        } else if let Some(other) = spec.get("nonResourceAttributes") {
            attributes.path = other
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            attributes.verb = other
                .get("verb")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
        } else {
            return Err(ApiError::invalid_simple(
                kind,
                "",
                "spec.resourceAttributes",
                "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
        let decision = self.authorize(&attributes).await;
        review["apiVersion"] = json!("authorization.k8s.io/v1");
        review["kind"] = json!(kind);
        if !review["metadata"].is_object() {
            review["metadata"] = json!({});
        }
        review["metadata"]["creationTimestamp"] = Value::Null;
        let mut status = json!({"allowed": decision.allowed()});
        if matches!(decision, rudder_auth::Decision::Deny(_)) {
            status["denied"] = json!(true);
        }
        if !decision.reason().is_empty() {
            status["reason"] = json!(decision.reason());
        }
        review["status"] = status;
        created(review)
    }

    /// SelfSubjectRulesReview: what the requester may do in a namespace,
    /// as RBAC grants it (`kubectl auth can-i --list`).
    async fn rules_review(&self, body: &[u8]) -> Result<Response, ApiError> {
        let mut review = parse(body)?;
        let user = requester()?;
        let namespace = review
            .pointer("/spec/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let Some(security) = self.security() else {
            return Err(ApiError::Internal("no security on this server".into()));
        };
        let rbac = security.policy.rbac(self).await;
        let rules = rbac.rules_for(&user, &namespace);
        let mut resource_rules = Vec::new();
        let mut non_resource_rules = Vec::new();
        for rule in rules {
            if rule.non_resource_urls.is_empty() {
                let mut r = json!({"verbs": rule.verbs, "apiGroups": rule.api_groups, "resources": rule.resources});
                if !rule.resource_names.is_empty() {
                    r["resourceNames"] = json!(rule.resource_names);
                }
                resource_rules.push(r);
            } else {
                non_resource_rules
                    .push(json!({"verbs": rule.verbs, "nonResourceURLs": rule.non_resource_urls}));
            }
        }
        review["apiVersion"] = json!("authorization.k8s.io/v1");
        review["kind"] = json!("SelfSubjectRulesReview");
        if !review["metadata"].is_object() {
            review["metadata"] = json!({});
        }
        review["metadata"]["creationTimestamp"] = Value::Null;
        // Node agents are also authorized by the Node authorizer, which
        // cannot list rules.
        let incomplete = user.node_name().is_some();
        review["status"] = json!({
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": incomplete,
        });
        created(review)
    }

    /// TokenRequest: a signed token for a ServiceAccount, optionally bound
    /// to a Pod, Secret or Node (it stops working when that object goes).
    async fn token_request(
        &self,
        namespace: &str,
        name: &str,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let mut request = parse(body)?;
        let Some(security) = self.security() else {
            return Err(ApiError::Internal("no security on this server".into()));
        };
        let accounts = self
            .registry()
            .get("", "v1", "serviceaccounts")
            .ok_or_else(|| ApiError::Internal("serviceaccounts are not registered".into()))?;
        let (account, _) = self.read_object(&accounts, Some(namespace), name).await?;
        let account_uid = meta_str(&account, "uid").unwrap_or("").to_owned();
        let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
        let seconds = spec
            .get("expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_TOKEN_SECONDS);
        if seconds < MIN_TOKEN_SECONDS {
            return Err(ApiError::invalid_simple(
                "TokenRequest",
                name,
                "spec.expirationSeconds",
                &format!(
                    "Invalid value: {seconds}: may not specify a duration less than 10 minutes"
                ),
            ));
        }
        let audiences: Vec<String> = Some(string_list(spec.get("audiences")))
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| security.config.api_audiences.clone());
        if let Some(user) = super::current_user().filter(|u| u.node_name().is_some()) {
            // NodeRestriction: a node asks only for tokens bound to a pod
            // of its own.
            let bound_pod = match spec.pointer("/boundObjectRef/kind").and_then(Value::as_str) {
                Some("Pod") => {
                    let pod_name = spec
                        .pointer("/boundObjectRef/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    self.cached_object("", "pods", namespace, pod_name).await
                }
                _ => None,
            };
            rudder_auth::node::node_restriction(
                &user,
                "CREATE",
                "",
                "serviceaccounts",
                "token",
                namespace,
                name,
                bound_pod.as_deref(),
                Some(&request),
            )
            .map_err(|reason| {
                ApiError::Forbidden(format!("serviceaccounts \"{name}\" is forbidden: {reason}"))
            })?;
        }
        let now = SystemTime::now();
        let mut claims = Claims::bound(
            namespace,
            ObjectRef::new(name, account_uid),
            audiences.clone(),
            now,
            Duration::from_secs(seconds as u64),
        );
        if let Some(bound) = spec.get("boundObjectRef").filter(|b| b.is_object()) {
            let kind = bound.get("kind").and_then(Value::as_str).unwrap_or("");
            let bound_name = bound
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let bound_uid = bound
                .get("uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let plural = match kind {
                "Pod" => "pods",
                "Secret" => "secrets",
                "Node" => "nodes",
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "cannot bind token for serviceaccount \"{name}\" to object of type {other}: only Pod, Secret and Node are supported"
                    )))
                }
            };
            let info = self
                .registry()
                .get("", "v1", plural)
                .ok_or_else(|| ApiError::Internal(format!("{plural} are not registered")))?;
            let ns = (plural != "nodes").then_some(namespace);
            let (object, _) = self.read_object(&info, ns, &bound_name).await?;
            let uid = meta_str(&object, "uid").unwrap_or("").to_owned();
            if !bound_uid.is_empty() && bound_uid != uid {
                return Err(ApiError::Conflict(
                    crate::error::Target::new(&info, &bound_name),
                    format!("the UID in the bound object reference ({bound_uid}) does not match the UID in record. The object might have been deleted and then recreated"),
                ));
            }
            let binding = claims
                .kubernetes
                .as_mut()
                .expect("bound claims carry kubernetes.io");
            match plural {
                "pods" => {
                    binding.pod = Some(ObjectRef::new(bound_name, uid));
                    if let Some(node) = object.pointer("/spec/nodeName").and_then(Value::as_str) {
                        let node_uid = self
                            .cached_object("", "nodes", "", node)
                            .await
                            .and_then(|n| meta_str(&n, "uid").map(str::to_owned))
                            .unwrap_or_default();
                        binding.node = Some(ObjectRef::new(node, node_uid));
                    }
                }
                "secrets" => binding.secret = Some(ObjectRef::new(bound_name, uid)),
                _ => binding.node = Some(ObjectRef::new(bound_name, uid)),
            }
        }
        let expires = now + Duration::from_secs(seconds as u64);
        let token = security
            .config
            .tokens
            .issue(&claims)
            .map_err(|e| ApiError::Internal(format!("signing the token: {e}")))?;
        let expiration = rudder_apimachinery::time::format_rfc3339(expires);
        request["apiVersion"] = json!("authentication.k8s.io/v1");
        request["kind"] = json!("TokenRequest");
        request["metadata"] =
            json!({"name": name, "namespace": namespace, "creationTimestamp": null});
        request["spec"]["audiences"] = json!(audiences);
        request["spec"]["expirationSeconds"] = json!(seconds);
        request["status"] = json!({"token": token, "expirationTimestamp": expiration});
        created(request)
    }

    /// A token that verifies, for one of `audiences` (a TokenReview).
    pub(crate) async fn authenticate_token_for(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Option<UserInfo> {
        let security = self.security()?;
        if audiences == security.config.api_audiences.as_slice() {
            return self.authenticate_token(token).await;
        }
        self.service_account_token(token, audiences).await
    }
}
