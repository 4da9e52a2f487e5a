//! Dynamic admission control: the MutatingAdmissionWebhook and
//! ValidatingAdmissionWebhook plugins. Requests that match a webhook's
//! rules and selectors are sent to it as an `admission.k8s.io/v1`
//! AdmissionReview; its answer allows, refuses or (mutating webhooks)
//! patches the object, with Kubernetes' messages for each outcome.
//!
//! The request pipeline calls [`ApiServer::call_mutating_webhooks`] after
//! the built-in mutating plugins and [`ApiServer::call_validating_webhooks`]
//! after the built-in validating ones, with a [`WebhookRequest`].
//!
//! Differences from kube-apiserver, on purpose:
//! - `matchPolicy: Equivalent` is treated as `Exact`: Rudder serves one
//!   version of each resource, so there is no equivalent resource to
//!   convert to.
//! - `matchConditions` (CEL) are not evaluated: a webhook is called as if
//!   they all held, which calls it more often, never less. Writing such a
//!   configuration answers with a `Warning` that says so.
//! - Only AdmissionReview v1 is sent (configurations must list `v1`).
//! - The validating webhooks' refusal returned is the first in
//!   configuration order rather than the first to arrive, so the answer
//!   does not depend on timing.

mod client;
mod config;

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde_json::{json, Value};

use client::CallError;
pub(crate) use client::TlsConfigs;
pub(crate) use config::{default_configuration, validate_configuration};
use config::{Hook, Rule};

use crate::error::{ApiError, StatusFailure, Target};
use crate::registry::ResourceInfo;
use crate::rest::decode;
use crate::ApiServer;

/// What a webhook is told about a request (kube-apiserver's admission
/// attributes).
// Until the request pipeline (rest.rs) calls the entry points.
pub(crate) struct WebhookRequest<'a> {
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: &'a str,
    /// The resource addressed (for a subresource: its parent resource).
    pub info: &'a ResourceInfo,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub user: &'a rudder_auth::UserInfo,
    pub dry_run: bool,
    /// The object before an update or a delete.
    pub old_object: Option<&'a Value>,
    /// The CreateOptions, UpdateOptions or DeleteOptions of the request.
    pub options: Option<Value>,
}

impl WebhookRequest<'_> {
    fn is_namespace_object(&self) -> bool {
        self.info.group.is_empty() && self.info.plural == "namespaces"
    }

    /// kube-apiserver gives a request for a Namespace object the namespace's
    /// own name as its namespace (the path names it), except on create.
    fn namespace(&self) -> Option<&str> {
        if self.is_namespace_object() && self.operation != "CREATE" && !self.name.is_empty() {
            return Some(self.name);
        }
        self.namespace.filter(|ns| !ns.is_empty())
    }

    /// The kind sent for the resource or subresource addressed.
    fn kind(&self) -> (&str, &str, &str) {
        match (
            self.info.group.as_str(),
            self.info.plural.as_str(),
            self.subresource,
        ) {
            ("", "pods", Some("eviction")) => ("policy", "v1", "Eviction"),
            ("", "pods", Some("binding")) => ("", "v1", "Binding"),
            (_, _, Some("scale")) => ("autoscaling", "v1", "Scale"),
            ("", "serviceaccounts", Some("token")) => {
                ("authentication.k8s.io", "v1", "TokenRequest")
            }
            _ => (&self.info.group, &self.info.version, &self.info.kind),
        }
    }

    /// The AdmissionReview sent, with `object` as the object now.
    fn review(&self, uid: &str, object: Option<&Value>) -> Value {
        let (group, version, kind) = self.kind();
        let kind = json!({"group": group, "version": version, "kind": kind});
        let resource = json!({
            "group": self.info.group,
            "version": self.info.version,
            "resource": self.info.plural,
        });
        let mut request = json!({
            "uid": uid,
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "operation": self.operation,
            "userInfo": self.user,
            "object": object.cloned().unwrap_or(Value::Null),
            "oldObject": self.old_object.cloned().unwrap_or(Value::Null),
            "dryRun": self.dry_run,
            "options": self.options.clone().unwrap_or(Value::Null),
        });
        if let Some(sub) = self.subresource.filter(|s| !s.is_empty()) {
            request["subResource"] = json!(sub);
            request["requestSubResource"] = json!(sub);
        }
        if !self.name.is_empty() {
            request["name"] = json!(self.name);
        }
        if let Some(ns) = self.namespace() {
            request["namespace"] = json!(ns);
        }
        json!({
            "kind": "AdmissionReview",
            "apiVersion": "admission.k8s.io/v1",
            "request": request,
        })
    }
}

/// Webhook configurations themselves never go through webhooks, so a
/// broken webhook cannot lock its own configuration.
fn is_exempt(info: &ResourceInfo) -> bool {
    info.group == config::GROUP
        && matches!(
            info.kind.as_str(),
            "ValidatingWebhookConfiguration"
                | "MutatingWebhookConfiguration"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
                | "MutatingAdmissionPolicy"
                | "MutatingAdmissionPolicyBinding"
        )
}

fn exact_or_wildcard(items: &[String], requested: &str) -> bool {
    items.iter().any(|i| i == "*" || i == requested)
}

/// Whether one rule covers the request (kube-apiserver's `rules.Matcher`).
fn rule_matches(rule: &Rule, req: &WebhookRequest<'_>) -> bool {
    let scope = match rule.scope.as_str() {
        "" | "*" => true,
        // A Namespace object is cluster-scoped, though its requests carry
        // its own name as their namespace.
        "Namespaced" => !req.is_namespace_object() && req.namespace().is_some(),
        "Cluster" => req.is_namespace_object() || req.namespace().is_none(),
        _ => false,
    };
    let subresource = req.subresource.unwrap_or("");
    scope
        && exact_or_wildcard(&rule.operations, req.operation)
        && exact_or_wildcard(&rule.api_groups, &req.info.group)
        && exact_or_wildcard(&rule.api_versions, &req.info.version)
        && rule.resources.iter().any(|r| {
            let (res, sub) = r.split_once('/').unwrap_or((r, ""));
            (res == "*" || res == req.info.plural) && (sub == "*" || sub == subresource)
        })
}

fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The objectSelector: the new object's labels or the old one's.
fn object_selected(hook: &Hook, object: Option<&Value>, old: Option<&Value>) -> bool {
    hook.object_selector.is_empty()
        || object.is_some_and(|o| hook.object_selector.matches_object(o))
        || old.is_some_and(|o| hook.object_selector.matches_object(o))
}

/// `admission webhook "NAME" denied the request: MESSAGE`, with the code
/// (400 at least), reason and details the webhook's Status gives
/// (kube-apiserver's `ToStatusErr`).
fn denied(hook: &str, status: &Value) -> ApiError {
    let denied_by = format!("admission webhook {hook:?} denied the request");
    let text = |f: &str| status.get(f).and_then(Value::as_str).unwrap_or("");
    let message = match (text("message"), text("reason")) {
        (m, _) if !m.is_empty() => format!("{denied_by}: {m}"),
        (_, r) if !r.is_empty() => format!("{denied_by}: {r}"),
        _ => format!("{denied_by} without explanation"),
    };
    let code = status
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400)
        .and_then(|c| axum::http::StatusCode::from_u16(c).ok())
        .unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    ApiError::Status(Box::new(StatusFailure {
        code,
        reason: text("reason").to_owned(),
        message,
        details: status.get("details").filter(|d| d.is_object()).cloned(),
    }))
}

/// kube-apiserver's `NewInternalError`: 500, `Internal error occurred: …`.
fn internal(cause: impl std::fmt::Display) -> ApiError {
    let cause = cause.to_string();
    ApiError::Status(Box::new(StatusFailure {
        code: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        reason: "InternalError".into(),
        message: format!("Internal error occurred: {cause}"),
        details: Some(json!({"causes": [{"message": cause}]})),
    }))
}

/// How one webhook call went wrong.
enum HookError {
    /// The webhook could not be called or answered wrongly: its
    /// failurePolicy decides.
    Call(String, CallError),
    /// Refused, or failed in a way no failurePolicy excuses.
    Final(ApiError),
}

impl HookError {
    /// The error of a call that failed, under the webhook's failurePolicy:
    /// `None` when it is ignored.
    fn into_error(self, hook: &Hook) -> Option<ApiError> {
        match self {
            HookError::Call(name, cause) if hook.ignore_failures => {
                tracing::warn!(webhook = %name, error = %cause, "Failed calling webhook, failing open");
                None
            }
            HookError::Call(name, cause) => {
                tracing::warn!(webhook = %name, error = %cause, "Failed calling webhook, failing closed");
                Some(internal(format!(
                    "failed calling webhook {name:?}: {cause}"
                )))
            }
            HookError::Final(err) => Some(err),
        }
    }
}

/// A webhook's answer, checked (kube-apiserver's `VerifyAdmissionResponse`).
struct Answer {
    allowed: bool,
    status: Value,
    patch: Vec<u8>,
    patch_type: Option<String>,
    warnings: Vec<String>,
}

fn verify_answer(uid: &str, mutating: bool, review: &Value) -> Result<Answer, CallError> {
    let invalid = |m: String| CallError::InvalidResponse(m);
    let Some(response) = review.get("response").filter(|r| r.is_object()) else {
        return Err(invalid("webhook response was absent".into()));
    };
    let got_uid = response["uid"].as_str().unwrap_or("");
    if got_uid != uid {
        return Err(invalid(format!(
            "expected response.uid={uid:?}, got {got_uid:?}"
        )));
    }
    let api_version = review["apiVersion"].as_str().unwrap_or("");
    let kind = review["kind"].as_str().unwrap_or("");
    if (api_version, kind) != ("admission.k8s.io/v1", "AdmissionReview") {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        return Err(invalid(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {group}/{version}, Kind={kind}"
        )));
    }
    let patch = match response.get("patch").and_then(Value::as_str) {
        Some(p) => base64::engine::general_purpose::STANDARD
            .decode(p)
            .map_err(|e| {
                CallError::Answer(format!("illegal base64 data in response.patch: {e}"))
            })?,
        None => Vec::new(),
    };
    let patch_type = response
        .get("patchType")
        .filter(|t| !t.is_null())
        .map(|t| t.as_str().unwrap_or("").to_owned());
    if mutating {
        if !patch.is_empty() && patch_type.is_none() {
            return Err(invalid(
                "webhook returned response.patch but not response.patchType".into(),
            ));
        }
        if patch.is_empty() && patch_type.is_some() {
            return Err(invalid(
                "webhook returned response.patchType but not response.patch".into(),
            ));
        }
        if patch_type.as_deref() == Some("") {
            return Err(invalid(
                "webhook returned invalid response.patchType of \"\"".into(),
            ));
        }
    } else {
        if !patch.is_empty() {
            return Err(invalid(
                "validating webhook may not return response.patch".into(),
            ));
        }
        if patch_type.is_some() {
            return Err(invalid(
                "validating webhook may not return response.patchType".into(),
            ));
        }
    }
    Ok(Answer {
        allowed: response["allowed"].as_bool().unwrap_or(false),
        status: response.get("status").cloned().unwrap_or(Value::Null),
        patch,
        patch_type,
        warnings: response["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_str().map(str::to_owned))
            .collect(),
    })
}

/// Applies a mutating webhook's answer to the object: whether it changed.
fn apply_answer(
    hook: &str,
    answer: &Answer,
    object: Option<&mut Value>,
) -> Result<bool, HookError> {
    if !answer.allowed {
        return Err(HookError::Final(denied(hook, &answer.status)));
    }
    if answer.patch.is_empty() {
        return Ok(false);
    }
    let patch: json_patch::Patch =
        serde_json::from_slice(&answer.patch).map_err(|e| HookError::Final(internal(e)))?;
    if patch.0.is_empty() {
        return Ok(false);
    }
    let Some(object) = object else {
        return Err(HookError::Final(internal(format!(
            "admission webhook {hook:?} attempted to modify the object, which is not supported for this operation"
        ))));
    };
    let patch_type = answer.patch_type.clone().unwrap_or_default();
    if patch_type != "JSONPatch" {
        return Err(HookError::Call(
            hook.to_owned(),
            CallError::PatchType(patch_type),
        ));
    }
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch).map_err(|e| HookError::Final(internal(e)))?;
    if patched == *object {
        return Ok(false);
    }
    *object = patched;
    Ok(true)
}

impl ApiServer {
    /// The webhooks of every configuration of one kind, configurations in
    /// name order (as kube-apiserver orders them), webhooks in list order.
    /// Read from the watch cache, which may lag a write by a moment, as
    /// kube-apiserver's informers do.
    async fn webhooks(&self, mutating: bool) -> Vec<Hook> {
        let plural = if mutating {
            config::MUTATING
        } else {
            config::VALIDATING
        };
        let Some(info) = self.registry().get(config::GROUP, "v1", plural) else {
            return Vec::new();
        };
        let prefix = info.key_prefix();
        let (configurations, _) = self
            .caches()
            .get(self.store(), &prefix)
            .snapshot(&prefix)
            .await;
        configurations
            .iter()
            .flat_map(|c| config::parse_configuration(c, mutating))
            .collect()
    }

    /// The labels of the request's namespace: of the Namespace object
    /// itself when one is created or updated; otherwise of the stored
    /// namespace (404 when there is none, as kube-apiserver answers).
    async fn namespace_labels(
        &self,
        req: &WebhookRequest<'_>,
        object: Option<&Value>,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        if req.is_namespace_object()
            && req.subresource.is_none_or(str::is_empty)
            && matches!(req.operation, "CREATE" | "UPDATE")
        {
            return Ok(object.map(labels_of).unwrap_or_default());
        }
        let name = req.namespace().unwrap_or("");
        let namespaces = self
            .registry()
            .get("", "v1", "namespaces")
            .ok_or_else(|| ApiError::Internal("namespaces are not registered".into()))?;
        match self.store().get(&namespaces.key(None, name), None).await?.0 {
            Some(kv) => Ok(labels_of(&decode(&kv)?)),
            None => Err(ApiError::NotFound(Target::new(&namespaces, name))),
        }
    }

    /// Whether a webhook is to be called: its rules, then its object and
    /// namespace selectors (cluster-scoped objects other than Namespaces
    /// are never exempted by a namespaceSelector). The namespace's labels
    /// are read at most once per request.
    async fn should_call(
        &self,
        hook: &Hook,
        req: &WebhookRequest<'_>,
        object: Option<&Value>,
        namespace_labels: &mut Option<BTreeMap<String, String>>,
    ) -> Result<bool, ApiError> {
        if !hook.rules.iter().any(|r| rule_matches(r, req)) {
            return Ok(false);
        }
        if !object_selected(hook, object, req.old_object) {
            return Ok(false);
        }
        if hook.namespace_selector.is_empty()
            || (req.namespace().is_none() && !req.is_namespace_object())
        {
            return Ok(true);
        }
        if namespace_labels.is_none() {
            *namespace_labels = Some(self.namespace_labels(req, object).await?);
        }
        let labels = namespace_labels.as_ref().expect("just read");
        Ok(hook.namespace_selector.matches(labels))
    }

    /// Sends the request to one webhook and checks its answer.
    async fn call_hook(
        &self,
        hook: &Hook,
        req: &WebhookRequest<'_>,
        object: Option<&Value>,
        mutating: bool,
    ) -> Result<Answer, HookError> {
        if req.dry_run && !matches!(hook.side_effects.as_str(), "None" | "NoneOnDryRun") {
            return Err(HookError::Final(ApiError::BadRequest(format!(
                "admission webhook {:?} does not support dry run",
                hook.name
            ))));
        }
        let uid = uuid::Uuid::new_v4().to_string();
        let review = req.review(&uid, object);
        let call = |e| HookError::Call(hook.name.clone(), e);
        let answer = self
            .post_review(&hook.endpoint, &hook.ca_bundle, hook.timeout, &review)
            .await
            .map_err(call)?;
        verify_answer(&uid, mutating, &answer).map_err(call)
    }

    /// Runs the mutating webhooks that match the request, one after the
    /// other in configuration-name order, each seeing the object as the
    /// ones before left it and patching it with its JSONPatch answer.
    /// When a webhook changes the object, the earlier webhooks with
    /// `reinvocationPolicy: IfNeeded` run once more afterwards. `object`
    /// is `None` for a delete (and for a connect). Returns the webhooks'
    /// warnings.
    pub(crate) async fn call_mutating_webhooks(
        &self,
        req: &WebhookRequest<'_>,
        mut object: Option<&mut Value>,
    ) -> Result<Vec<String>, ApiError> {
        if is_exempt(req.info) {
            return Ok(Vec::new());
        }
        let hooks = self.webhooks(true).await;
        let mut warnings = Vec::new();
        let mut namespace_labels = None;
        // Webhooks that may be reinvoked, and those that will be.
        let mut reinvocable: Vec<usize> = Vec::new();
        let mut reinvoke: BTreeSet<usize> = BTreeSet::new();
        for round in 0..2 {
            for (i, hook) in hooks.iter().enumerate() {
                if round == 1 && !reinvoke.contains(&i) {
                    continue;
                }
                if !self
                    .should_call(hook, req, object.as_deref(), &mut namespace_labels)
                    .await?
                {
                    continue;
                }
                let result = match self.call_hook(hook, req, object.as_deref(), true).await {
                    Ok(answer) => {
                        warnings.extend(answer.warnings.iter().cloned());
                        apply_answer(&hook.name, &answer, object.as_deref_mut())
                    }
                    Err(err) => Err(err),
                };
                match result {
                    Ok(true) if round == 0 => reinvoke.extend(reinvocable.drain(..)),
                    Ok(_) => {}
                    Err(err) => {
                        if let Some(err) = err.into_error(hook) {
                            return Err(err);
                        }
                    }
                }
                if round == 0 && hook.reinvoke_if_needed {
                    reinvocable.push(i);
                }
            }
            if reinvoke.is_empty() {
                break;
            }
        }
        Ok(warnings)
    }

    /// Runs the validating webhooks that match the request, all at once as
    /// kube-apiserver does. `object` is the object to be stored (`None` for
    /// a delete). The first refusal in configuration order is the answer;
    /// otherwise the webhooks' warnings.
    pub(crate) async fn call_validating_webhooks(
        &self,
        req: &WebhookRequest<'_>,
        object: Option<&Value>,
    ) -> Result<Vec<String>, ApiError> {
        if is_exempt(req.info) {
            return Ok(Vec::new());
        }
        let mut namespace_labels = None;
        let mut matching = Vec::new();
        for hook in self.webhooks(false).await {
            if self
                .should_call(&hook, req, object, &mut namespace_labels)
                .await?
            {
                matching.push(hook);
            }
        }
        let calls = matching.iter().map(|hook| async move {
            match self.call_hook(hook, req, object, false).await {
                Ok(answer) if answer.allowed => Ok(answer.warnings),
                Ok(answer) => Err(denied(&hook.name, &answer.status)),
                Err(err) => err.into_error(hook).map_or(Ok(Vec::new()), Err),
            }
        });
        let mut warnings = Vec::new();
        for result in futures::future::join_all(calls).await {
            match result {
                Ok(w) => warnings.extend(w),
                Err(err) => return Err(err),
            }
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests;
