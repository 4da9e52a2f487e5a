//! The admission plugins that depend on who is asking or that guard the
//! cluster's security: ServiceAccount (the default account and its token
//! volume), NodeRestriction, RBAC escalation prevention, PodSecurity, the
//! `kubernetes.io/metadata.name` namespace label, legacy ServiceAccount
//! token Secrets, and the admission webhooks.

use std::sync::Mutex;

use rudder_auth::user::UserInfo;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::object::meta_str;
use crate::registry::ResourceInfo;
use crate::ApiServer;

/// Where the ServiceAccount token volume is mounted in every container.
pub(crate) const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Kubernetes' lifetime for the projected token (an hour, and 7 s so the
/// kubelet's refresh is not synchronised with anything else).
const PROJECTED_TOKEN_SECONDS: i64 = 3607;
pub(crate) const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const LEGACY_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
const SA_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

tokio::task_local! {
    /// Warnings for the client (`Warning:` headers), from admission.
    pub(crate) static REQUEST_WARNINGS: Mutex<Vec<String>>;
}

/// Adds a warning to the current request's response.
pub(crate) fn warn(message: String) {
    let _ =
        REQUEST_WARNINGS.try_with(|w| w.lock().unwrap_or_else(|e| e.into_inner()).push(message));
}

/// What is being done, in admission's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// One admission request.
pub(crate) struct Request<'a> {
    pub operation: Operation,
    pub info: &'a ResourceInfo,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    /// Webhooks with side effects refuse dry runs.
    pub dry_run: bool,
}

/// NodeRestriction's refusal, as Kubernetes words it:
/// `pods "x" is forbidden: node "n1" can only …`.
fn forbidden(request: &Request<'_>, reason: &str) -> ApiError {
    let subject = if request.info.group.is_empty() {
        request.info.plural.clone()
    } else {
        format!("{}.{}", request.info.plural, request.info.group)
    };
    ApiError::Forbidden(format!(
        "{subject} \"{}\" is forbidden: {reason}",
        request.name
    ))
}

/// The Pod Security Standards as of the Kubernetes version this server
/// reports (`latest` means that version's rules).
fn pod_security_evaluator() -> rudder_auth::pod_security::Evaluator {
    let minor = crate::KUBERNETES_VERSION.1.parse().unwrap_or(32);
    rudder_auth::pod_security::Evaluator::emulating(minor)
}

fn is(info: &ResourceInfo, group: &str, plural: &str) -> bool {
    info.group == group && info.plural == plural
}

impl ApiServer {
    /// The mutating plugins, before the object's own validation.
    pub(crate) async fn admit_secure_mutating(
        &self,
        request: &Request<'_>,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if is(request.info, "", "namespaces") && request.subresource.is_none() {
            // Every namespace carries its own name as a label, so selectors
            // (NetworkPolicy, webhooks) can pick namespaces by name.
            if !obj["metadata"]["labels"].is_object() {
                obj["metadata"]["labels"] = json!({});
            }
            obj["metadata"]["labels"][NAMESPACE_NAME_LABEL] = json!(request.name);
        }
        let is_new_pod = request.operation == Operation::Create
            && is(request.info, "", "pods")
            && request.subresource.is_none();
        let is_mirror = obj
            .pointer(&format!(
                "/metadata/annotations/{}",
                MIRROR_ANNOTATION.replace('/', "~1")
            ))
            .is_some();
        if is_new_pod && !is_mirror && obj["spec"].is_object() {
            // Pods run as `default` unless they name an account (mirror
            // pods have none): part of the ServiceAccount plugin that
            // holds on every server.
            let named = obj
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !named {
                let account = obj
                    .pointer("/spec/serviceAccount")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or("default")
                    .to_owned();
                obj["spec"]["serviceAccountName"] = json!(account);
            }
        }
        let Some(user) = super::current_user() else {
            return Ok(());
        };
        if self.security().is_none() {
            return Ok(());
        }
        if is_new_pod && !is_mirror {
            self.admit_service_account(request, obj).await?;
        }
        if request.operation == Operation::Create
            && is(
                request.info,
                "certificates.k8s.io",
                "certificatesigningrequests",
            )
        {
            // Who asked is part of the request, and only the server says it.
            if !obj["spec"].is_object() {
                obj["spec"] = json!({});
            }
            obj["spec"]["username"] = json!(user.username);
            obj["spec"]["groups"] = json!(user.groups);
            if user.uid.is_empty() {
                obj["spec"].as_object_mut().map(|s| s.remove("uid"));
            } else {
                obj["spec"]["uid"] = json!(user.uid);
            }
            if user.extra.is_empty() {
                obj["spec"].as_object_mut().map(|s| s.remove("extra"));
            } else {
                obj["spec"]["extra"] = json!(user.extra);
            }
        }
        if request.operation == Operation::Create && is(request.info, "", "secrets") {
            self.fill_legacy_token(request, obj).await?;
        }
        rudder_auth::node::node_restriction(
            &user,
            request.operation.as_str(),
            &request.info.group,
            &request.info.plural,
            request.subresource.unwrap_or(""),
            request.namespace.unwrap_or(""),
            request.name,
            old,
            Some(obj),
        )
        .map_err(|reason| forbidden(request, &reason))?;
        let webhook = crate::webhook::WebhookRequest {
            operation: request.operation.as_str(),
            info: request.info,
            subresource: request.subresource,
            namespace: request.namespace,
            name: request.name,
            user: &user,
            dry_run: request.dry_run,
            old_object: old,
            options: None,
        };
        for warning in self.call_mutating_webhooks(&webhook, Some(obj)).await? {
            warn(warning);
        }
        Ok(())
    }

    /// The validating plugins, after the object's own validation.
    pub(crate) async fn admit_secure_validating(
        &self,
        request: &Request<'_>,
        obj: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let Some(user) = super::current_user() else {
            return Ok(());
        };
        if self.security().is_none() {
            return Ok(());
        }
        if request.operation == Operation::Delete {
            rudder_auth::node::node_restriction(
                &user,
                "DELETE",
                &request.info.group,
                &request.info.plural,
                request.subresource.unwrap_or(""),
                request.namespace.unwrap_or(""),
                request.name,
                old,
                None,
            )
            .map_err(|reason| forbidden(request, &reason))?;
        }
        if let Some(obj) = obj {
            if request.info.group == "rbac.authorization.k8s.io"
                && request.operation != Operation::Delete
            {
                self.prevent_escalation(&user, request, obj).await?;
            }
            if request.subresource.is_none() && request.operation != Operation::Delete {
                if is(request.info, "", "namespaces") {
                    self.admit_namespace_pod_security(request, obj, old).await?;
                } else {
                    self.admit_pod_security(request, obj, old).await?;
                }
            }
        }
        let webhook = crate::webhook::WebhookRequest {
            operation: request.operation.as_str(),
            info: request.info,
            subresource: request.subresource,
            namespace: request.namespace,
            name: request.name,
            user: &user,
            dry_run: request.dry_run,
            old_object: old,
            options: None,
        };
        for warning in self.call_validating_webhooks(&webhook, obj).await? {
            warn(warning);
        }
        Ok(())
    }

    /// The ServiceAccount plugin for a new pod that is not a mirror pod
    /// (the caller checks): pods run as `default` unless they name an
    /// account, the account must exist, and its token, the cluster CA and
    /// the namespace are mounted into every container.
    async fn admit_service_account(
        &self,
        request: &Request<'_>,
        pod: &mut Value,
    ) -> Result<(), ApiError> {
        let namespace = request.namespace.unwrap_or("default");
        if !pod["spec"].is_object() {
            return Ok(());
        }
        let account_name = pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .or_else(|| {
                pod.pointer("/spec/serviceAccount")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or("default")
            .to_owned();
        pod["spec"]["serviceAccountName"] = json!(account_name);
        let account = self
            .cached_object("", "serviceaccounts", namespace, &account_name)
            .await;
        if account.is_none() && account_name != "default" {
            // `default` is created by the serviceaccount controller moments
            // after its namespace; a pod created in that moment is let
            // through rather than refused (kube-apiserver refuses it).
            return Err(ApiError::Forbidden(format!(
                "pods \"{}\" is forbidden: error looking up service account {namespace}/{account_name}: serviceaccount \"{account_name}\" not found",
                request.name
            )));
        }
        let automount = pod
            .pointer("/spec/automountServiceAccountToken")
            .and_then(Value::as_bool)
            .or_else(|| {
                account
                    .as_ref()
                    .and_then(|a| a.get("automountServiceAccountToken"))
                    .and_then(Value::as_bool)
            })
            .unwrap_or(true);
        if !automount {
            return Ok(());
        }
        let mounted = ["containers", "initContainers"].iter().any(|list| {
            pod["spec"][list].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["volumeMounts"].as_array().is_some_and(|ms| {
                        ms.iter()
                            .any(|m| m["mountPath"].as_str() == Some(SERVICE_ACCOUNT_MOUNT))
                    })
                })
            })
        });
        if mounted {
            return Ok(());
        }
        let volume_name = format!("kube-api-access-{}", crate::object::random_suffix());
        if !pod["spec"]["volumes"].is_array() {
            pod["spec"]["volumes"] = json!([]);
        }
        pod["spec"]["volumes"]
            .as_array_mut()
            .expect("just made an array")
            .push(json!({
                "name": volume_name,
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": PROJECTED_TOKEN_SECONDS, "path": "token"}},
                        {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                    ],
                },
            }));
        for list in ["containers", "initContainers"] {
            if let Some(containers) = pod["spec"][list].as_array_mut() {
                for container in containers {
                    if !container["volumeMounts"].is_array() {
                        container["volumeMounts"] = json!([]);
                    }
                    container["volumeMounts"]
                        .as_array_mut()
                        .expect("just made an array")
                        .push(json!({"name": volume_name, "mountPath": SERVICE_ACCOUNT_MOUNT, "readOnly": true}));
                }
            }
        }
        Ok(())
    }

    /// A Secret of type `kubernetes.io/service-account-token` gets a
    /// long-lived token for its account (the legacy token controller's
    /// work, done as the Secret is created).
    async fn fill_legacy_token(
        &self,
        request: &Request<'_>,
        secret: &mut Value,
    ) -> Result<(), ApiError> {
        if secret.get("type").and_then(Value::as_str) != Some(LEGACY_TOKEN_TYPE) {
            return Ok(());
        }
        let namespace = request.namespace.unwrap_or("default");
        let account_name = secret
            .pointer(&format!(
                "/metadata/annotations/{}",
                SA_NAME_ANNOTATION.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if account_name.is_empty() {
            return Err(ApiError::invalid_simple(
                "Secret",
                request.name,
                &format!("metadata.annotations[{SA_NAME_ANNOTATION}]"),
                "Required value",
            ));
        }
        let Some(account) = self
            .cached_object("", "serviceaccounts", namespace, &account_name)
            .await
        else {
            return Err(ApiError::Forbidden(format!(
                "secrets \"{}\" is forbidden: error looking up service account {namespace}/{account_name}: serviceaccount \"{account_name}\" not found",
                request.name
            )));
        };
        let Some(security) = self.security() else {
            return Ok(());
        };
        let account_uid = meta_str(&account, "uid").unwrap_or("").to_owned();
        let claims = rudder_auth::token::Claims::legacy(
            namespace,
            &account_name,
            &account_uid,
            request.name,
        );
        let token = security
            .config
            .tokens
            .issue(&claims)
            .map_err(|e| ApiError::Internal(format!("signing the token: {e}")))?;
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        secret["metadata"]["annotations"][SA_UID_ANNOTATION] = json!(account_uid);
        if !secret["data"].is_object() {
            secret["data"] = json!({});
        }
        secret["data"]["token"] = json!(b64(&token));
        secret["data"]["ca.crt"] = json!(b64(&security.config.server_ca_pem));
        secret["data"]["namespace"] = json!(b64(namespace));
        Ok(())
    }

    /// RBAC escalation prevention: a Role may hold only rules its author
    /// holds (or may `escalate`), a binding may grant only a role whose
    /// rules its author holds (or may `bind`).
    async fn prevent_escalation(
        &self,
        user: &UserInfo,
        request: &Request<'_>,
        obj: &Value,
    ) -> Result<(), ApiError> {
        if user.in_group(rudder_auth::user::MASTERS) {
            return Ok(());
        }
        let Some(security) = self.security() else {
            return Ok(());
        };
        let namespace = request.namespace.unwrap_or("");
        let special = |verb: &str, resource: &str, ns: &str, name: &str| rudder_auth::Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            namespace: ns.into(),
            api_group: "rbac.authorization.k8s.io".into(),
            api_version: "v1".into(),
            resource: resource.into(),
            name: name.into(),
            ..Default::default()
        };
        let (rules, exempt) = match request.info.plural.as_str() {
            "roles" | "clusterroles" => {
                let rules: Vec<rudder_auth::rbac::PolicyRule> =
                    serde_json::from_value(obj.get("rules").cloned().unwrap_or(json!([])))
                        .unwrap_or_default();
                let exempt = self
                    .authorize(&special(
                        "escalate",
                        &request.info.plural,
                        namespace,
                        request.name,
                    ))
                    .await
                    .allowed();
                (rules, exempt)
            }
            "rolebindings" | "clusterrolebindings" => {
                let kind = obj
                    .pointer("/roleRef/kind")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let role_name = obj
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let (plural, role_ns) = if kind == "ClusterRole" {
                    ("clusterroles", "")
                } else {
                    ("roles", namespace)
                };
                let exempt = self
                    .authorize(&special("bind", plural, namespace, role_name))
                    .await
                    .allowed();
                let role = self
                    .cached_object("rbac.authorization.k8s.io", plural, role_ns, role_name)
                    .await;
                let rules = role
                    .and_then(|r| r.get("rules").cloned())
                    .and_then(|r| serde_json::from_value(r).ok())
                    .unwrap_or_default();
                (rules, exempt)
            }
            _ => return Ok(()),
        };
        if exempt {
            return Ok(());
        }
        let rbac = security.policy.rbac(self).await;
        rbac.confirm_no_escalation(user, namespace, &rules)
            .map_err(|message| {
                let subject = if request.info.group.is_empty() {
                    request.info.plural.clone()
                } else {
                    format!("{}.{}", request.info.plural, request.info.group)
                };
                ApiError::Forbidden(format!(
                    "{subject} \"{}\" is forbidden: {message}",
                    request.name
                ))
            })
    }

    /// PodSecurity on namespaces: its labels must name real levels and
    /// versions, and tightening `enforce` warns about the pods already
    /// there that the new level would refuse.
    async fn admit_namespace_pod_security(
        &self,
        request: &Request<'_>,
        namespace: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        use rudder_auth::pod_security as pss;
        let labels = namespace
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(Value::Null);
        let policy = match pss::NamespacePolicy::from_labels(&labels) {
            Ok(policy) => policy,
            Err(errors) => {
                let causes = errors
                    .iter()
                    .map(|e| crate::error::FieldCause {
                        reason: "FieldValueInvalid",
                        field: e.field.clone(),
                        message: format!("Invalid value: {:?}: {}", e.value, e.detail),
                    })
                    .collect();
                return Err(ApiError::invalid(request.info, request.name, causes));
            }
        };
        let Some(old) = old else {
            return Ok(());
        };
        let old_labels = old
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(Value::Null);
        let (old_policy, _) =
            pss::NamespacePolicy::evaluate_labels(&old_labels, Default::default());
        if !policy.enforce_tightened_from(&old_policy) {
            return Ok(());
        }
        let (pods, _) = self
            .caches()
            .get(self.store(), "/pods/")
            .snapshot(&format!("/pods/{}/", request.name))
            .await;
        let pods: Vec<Value> = pods.iter().map(|p| (**p).clone()).collect();
        for message in pss::pods_in_namespace_warnings(
            &pod_security_evaluator(),
            request.name,
            &policy.enforce,
            &pods,
        ) {
            warn(message);
        }
        Ok(())
    }

    /// PodSecurity: the namespace's `enforce` level refuses pods that
    /// break it; `warn` answers with warnings. Workload templates are
    /// checked for warnings only, as Kubernetes does.
    async fn admit_pod_security(
        &self,
        request: &Request<'_>,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        use rudder_auth::pod_security as pss;
        let Some(namespace) = request.namespace else {
            return Ok(());
        };
        let Some((meta, spec)) = pss::pod_template(&request.info.group, &request.info.plural, obj)
        else {
            return Ok(());
        };
        let is_pod = is(request.info, "", "pods");
        if is_pod && request.operation == Operation::Update {
            if let Some(old) = old {
                if !pss::update_needs_check(old, obj) {
                    return Ok(());
                }
            }
        }
        let Some(ns) = self.cached_object("", "namespaces", "", namespace).await else {
            return Ok(());
        };
        let labels = ns
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(Value::Null);
        // Unreadable labels fall back as kube-apiserver's do (enforce:
        // restricted; audit and warn: privileged).
        let (policy, _) = pss::NamespacePolicy::evaluate_labels(&labels, Default::default());
        let evaluator = pod_security_evaluator();
        if is_pod {
            let results = evaluator.check_pod(&policy.enforce, meta, spec);
            if !results.is_empty() {
                return Err(ApiError::Forbidden(format!(
                    "pods \"{}\" is forbidden: {}",
                    request.name,
                    pss::forbidden_message(&results, &policy.enforce)
                )));
            }
        }
        // Templates of workloads are not refused (their pods will be):
        // they are warned about at the enforce level too.
        let mut levels = vec![&policy.warn];
        if !is_pod && policy.enforce != policy.warn {
            levels.push(&policy.enforce);
        }
        for level in levels {
            let results = evaluator.check_pod(level, meta, spec);
            if !results.is_empty() {
                warn(pss::warning_message(&results, level));
            }
        }
        Ok(())
    }
}
