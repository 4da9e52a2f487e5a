//! The dispatcher: matching tables, answers, and calls to a real HTTPS
//! webhook server (a certificate from a test CA, served with rustls) from
//! a server over a real store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rudder_auth::UserInfo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::{parse_configuration, Hook};
use super::*;
use crate::registry::Registry;

fn info(group: &str, version: &str, plural: &str) -> ResourceInfo {
    Registry::with_builtins()
        .get(group, version, plural)
        .map(|i| (*i).clone())
        .unwrap_or_else(|| panic!("{plural} is served"))
}

fn request<'a>(
    operation: &'a str,
    info: &'a ResourceInfo,
    subresource: Option<&'a str>,
    namespace: Option<&'a str>,
    user: &'a UserInfo,
) -> WebhookRequest<'a> {
    WebhookRequest {
        operation,
        info,
        subresource,
        namespace,
        name: "obj",
        user,
        dry_run: false,
        old_object: None,
        options: None,
    }
}

fn rule(ops: &[&str], groups: &[&str], versions: &[&str], resources: &[&str], scope: &str) -> Rule {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Rule {
        operations: owned(ops),
        api_groups: owned(groups),
        api_versions: owned(versions),
        resources: owned(resources),
        scope: scope.into(),
    }
}

#[test]
fn rules_match_as_kubernetes_matches_them() {
    let pods = info("", "v1", "pods");
    let deployments = info("apps", "v1", "deployments");
    let nodes = info("", "v1", "nodes");
    let namespaces = info("", "v1", "namespaces");
    let user = UserInfo::default();
    let pod_create = request("CREATE", &pods, None, Some("ns"), &user);
    let pod_status = request("UPDATE", &pods, Some("status"), Some("ns"), &user);
    let deploy_scale = request("UPDATE", &deployments, Some("scale"), Some("ns"), &user);
    let node_delete = request("DELETE", &nodes, None, None, &user);
    let ns_update = request("UPDATE", &namespaces, None, None, &user);
    let table: &[(Rule, &WebhookRequest<'_>, bool)] = &[
        (
            rule(&["CREATE"], &[""], &["v1"], &["pods"], "*"),
            &pod_create,
            true,
        ),
        (rule(&["*"], &["*"], &["*"], &["*"], "*"), &pod_create, true),
        (
            rule(&["UPDATE"], &[""], &["v1"], &["pods"], "*"),
            &pod_create,
            false,
        ),
        (
            rule(&["CREATE"], &["apps"], &["v1"], &["pods"], "*"),
            &pod_create,
            false,
        ),
        (
            rule(&["CREATE"], &[""], &["v2"], &["pods"], "*"),
            &pod_create,
            false,
        ),
        // `pods` does not cover a subresource; `pods/status`, `pods/*` and `*/*` do.
        (
            rule(&["UPDATE"], &[""], &["v1"], &["pods"], "*"),
            &pod_status,
            false,
        ),
        (
            rule(&["UPDATE"], &[""], &["v1"], &["pods/status"], "*"),
            &pod_status,
            true,
        ),
        (
            rule(&["UPDATE"], &[""], &["v1"], &["pods/*"], "*"),
            &pod_status,
            true,
        ),
        (
            rule(&["UPDATE"], &["*"], &["*"], &["*/*"], "*"),
            &pod_status,
            true,
        ),
        (
            rule(&["UPDATE"], &["*"], &["*"], &["*"], "*"),
            &pod_status,
            false,
        ),
        (
            rule(&["UPDATE"], &["*"], &["*"], &["*/scale"], "*"),
            &deploy_scale,
            true,
        ),
        (
            rule(&["UPDATE"], &["*"], &["*"], &["*/scale"], "*"),
            &pod_status,
            false,
        ),
        // Scopes: a Namespace object is cluster-scoped.
        (
            rule(&["*"], &["*"], &["*"], &["*"], "Namespaced"),
            &pod_create,
            true,
        ),
        (
            rule(&["*"], &["*"], &["*"], &["*"], "Cluster"),
            &pod_create,
            false,
        ),
        (
            rule(&["*"], &["*"], &["*"], &["*"], "Cluster"),
            &node_delete,
            true,
        ),
        (
            rule(&["*"], &["*"], &["*"], &["*"], "Namespaced"),
            &node_delete,
            false,
        ),
        (
            rule(&["*"], &["*"], &["*"], &["*"], "Cluster"),
            &ns_update,
            true,
        ),
        (
            rule(&["*"], &["*"], &["*"], &["*"], "Namespaced"),
            &ns_update,
            false,
        ),
    ];
    for (i, (rule, req, expected)) in table.iter().enumerate() {
        assert_eq!(rule_matches(rule, req), *expected, "case {i}: {rule:?}");
    }
    assert_eq!(
        ns_update.namespace(),
        Some("obj"),
        "a Namespace's requests carry its name"
    );
    assert!(is_exempt(&info(config::GROUP, "v1", config::VALIDATING)));
    assert!(!is_exempt(&pods));
}

fn hook_with_selectors(namespace: Value, object: Value) -> Hook {
    let config = json!({"webhooks": [{
        "name": "h.example.com",
        "clientConfig": {"url": "https://127.0.0.1/"},
        "rules": [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "namespaceSelector": namespace,
        "objectSelector": object,
    }]});
    parse_configuration(&config, false).remove(0)
}

#[test]
fn object_selectors_look_at_the_new_and_the_old_object() {
    let hook = hook_with_selectors(json!({}), json!({"matchLabels": {"app": "web"}}));
    let web = json!({"metadata": {"labels": {"app": "web"}}});
    let db = json!({"metadata": {"labels": {"app": "db"}}});
    assert!(object_selected(&hook, Some(&web), None));
    assert!(!object_selected(&hook, Some(&db), None));
    assert!(
        object_selected(&hook, Some(&db), Some(&web)),
        "the old object counts"
    );
    assert!(
        object_selected(&hook, None, Some(&web)),
        "a delete has only the old object"
    );
    assert!(!object_selected(&hook, None, None));
    let everything = hook_with_selectors(json!({}), json!({}));
    assert!(object_selected(&everything, None, None));
}

#[test]
fn refusals_keep_the_webhooks_code_and_reason() {
    let status = |e: ApiError| e.status();
    let s = status(denied(
        "deny.example.com",
        &json!({"code": 403, "reason": "Forbidden", "message": "no thanks"}),
    ));
    assert_eq!(s["code"], 403);
    assert_eq!(s["reason"], "Forbidden");
    assert_eq!(
        s["message"],
        r#"admission webhook "deny.example.com" denied the request: no thanks"#
    );
    let s = status(denied("d.e.f", &json!({"code": 200})));
    assert_eq!(s["code"], 400, "a refusal is never a success");
    assert_eq!(
        s["message"],
        r#"admission webhook "d.e.f" denied the request without explanation"#
    );
    assert!(s.get("reason").is_none());
    let s = status(denied("d.e.f", &json!({"reason": "Because"})));
    assert_eq!(
        s["message"],
        r#"admission webhook "d.e.f" denied the request: Because"#
    );
    let s = status(denied("d.e.f", &Value::Null));
    assert_eq!(s["code"], 400);
    let s = status(internal("boom"));
    assert_eq!(
        (s["code"].clone(), s["reason"].clone()),
        (json!(500), json!("InternalError"))
    );
    assert_eq!(s["message"], "Internal error occurred: boom");
}

#[test]
fn answers_are_checked_as_kube_apiserver_checks_them() {
    let review = |response: Value| json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
    let err = |uid: &str, mutating: bool, v: Value| {
        verify_answer(uid, mutating, &v)
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(
        err(
            "u",
            false,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})
        ),
        Some("received invalid webhook response: webhook response was absent".into())
    );
    assert_eq!(
        err("u", false, review(json!({"uid": "x", "allowed": true}))),
        Some(r#"received invalid webhook response: expected response.uid="u", got "x""#.into())
    );
    assert_eq!(
        err("u", false, json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "response": {"uid": "u"}})),
        Some("received invalid webhook response: expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got admission.k8s.io/v1beta1, Kind=AdmissionReview".into())
    );
    let patch = base64::engine::general_purpose::STANDARD.encode(b"[]");
    assert_eq!(
        err(
            "u",
            false,
            review(json!({"uid": "u", "allowed": true, "patch": patch}))
        ),
        Some(
            "received invalid webhook response: validating webhook may not return response.patch"
                .into()
        )
    );
    assert_eq!(
        err("u", true, review(json!({"uid": "u", "allowed": true, "patch": patch}))),
        Some("received invalid webhook response: webhook returned response.patch but not response.patchType".into())
    );
    let ok = verify_answer(
        "u",
        true,
        &review(json!({"uid": "u", "allowed": true, "warnings": ["careful"]})),
    )
    .ok()
    .unwrap();
    assert!(ok.allowed && ok.patch.is_empty());
    assert_eq!(ok.warnings, vec!["careful".to_owned()]);
}

#[test]
fn patches_apply_or_fail_as_upstream() {
    let answer = |patch: &str, patch_type: &str| Answer {
        allowed: true,
        status: Value::Null,
        patch: patch.as_bytes().to_vec(),
        patch_type: Some(patch_type.into()),
        warnings: Vec::new(),
    };
    let mut obj = json!({"metadata": {"name": "x"}});
    let add = r#"[{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]"#;
    assert!(matches!(
        apply_answer("m.e.f", &answer(add, "JSONPatch"), Some(&mut obj)),
        Ok(true)
    ));
    assert_eq!(obj["metadata"]["labels"]["a"], "b");
    let same = r#"[{"op": "replace", "path": "/metadata/name", "value": "x"}]"#;
    assert!(matches!(
        apply_answer("m.e.f", &answer(same, "JSONPatch"), Some(&mut obj)),
        Ok(false)
    ));
    match apply_answer("m.e.f", &answer(add, "JSONPatch"), None) {
        Err(HookError::Final(e)) => assert_eq!(
            e.to_string(),
            r#"Internal error occurred: admission webhook "m.e.f" attempted to modify the object, which is not supported for this operation"#
        ),
        _ => panic!("a patch without an object fails"),
    }
    match apply_answer("m.e.f", &answer(add, "MergePatch"), Some(&mut obj)) {
        Err(HookError::Call(_, e)) => {
            assert_eq!(e.to_string(), r#"unsupported patch type "MergePatch""#)
        }
        _ => panic!("only JSONPatch is applied"),
    }
    let bad = r#"[{"op": "remove", "path": "/spec/nothing"}]"#;
    assert!(matches!(
        apply_answer("m.e.f", &answer(bad, "JSONPatch"), Some(&mut obj)),
        Err(HookError::Final(_))
    ));
}

// --- Calls to a real webhook server. ---

/// A test CA and a serving certificate for `hook.webhooks.svc` and
/// 127.0.0.1 signed by it.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["hook.webhooks.svc".into(), "127.0.0.1".into()])
            .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

type Handler = Arc<dyn Fn(&Value) -> Value + Send + Sync>;
/// A handler's answer holding this key is sent late (after 3 seconds).
const HANG: &str = "hang";

/// Serves webhook calls on 127.0.0.1: each AdmissionReview request is
/// answered with the handler's `response` (its uid filled in). Counts the
/// calls to each path.
struct WebhookServer {
    port: u16,
    calls: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn webhook_server(pki: &Pki, handler: Handler) -> WebhookServer {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = vec![CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, handler, recorded) =
                (acceptor.clone(), handler.clone(), recorded.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Some((path, body)) = read_request(&mut tls).await else {
                    return;
                };
                recorded.lock().unwrap().push(path);
                let review: Value = serde_json::from_slice(&body).unwrap();
                let mut response = handler(&review);
                if response
                    .as_object_mut()
                    .and_then(|r| r.remove(HANG))
                    .is_some()
                {
                    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                }
                response["uid"] = review["request"]["uid"].clone();
                let answer = serde_json::to_vec(&json!({
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "response": response,
                }))
                .unwrap();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&answer).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    WebhookServer { port, calls }
}

/// One HTTP/1.1 request: its path and body.
async fn read_request(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let path = head.split(' ').nth(1)?.to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    Some((path, data[head_end..head_end + length].to_vec()))
}

struct TestApi {
    server: ApiServer,
    _dir: tempfile::TempDir,
}

/// A server over a fresh store holding `objects` (key, object), written
/// before the first webhook lookup so the watch cache starts with them.
async fn api_with(objects: &[(String, Value)]) -> TestApi {
    let dir = tempfile::tempdir().unwrap();
    let store = rudder_store::SqliteStore::open(rudder_store::SqliteConfig::new(
        dir.path().join("state.db"),
    ))
    .await
    .unwrap();
    let server = ApiServer::new(Arc::new(store), "127.0.0.1:0".into());
    for (key, obj) in objects {
        server
            .store()
            .create(key, serde_json::to_vec(obj).unwrap())
            .await
            .unwrap();
    }
    TestApi { server, _dir: dir }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn namespace(name: &str, labels: Value) -> (String, Value) {
    (
        format!("/namespaces/{name}"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
    )
}

/// The Service `webhooks/hook` at 127.0.0.1 on `port`.
fn hook_service(port: u16) -> (String, Value) {
    (
        "/services/webhooks/hook".into(),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "hook", "namespace": "webhooks"},
               "spec": {"type": "ClusterIP", "clusterIP": "127.0.0.1", "ports": [{"port": port}]}}),
    )
}

fn configuration(plural: &str, name: &str, hooks: Vec<Value>) -> (String, Value) {
    (
        format!("/{plural}.admissionregistration.k8s.io/{name}"),
        json!({"metadata": {"name": name}, "webhooks": hooks}),
    )
}

fn pod_hook(name: &str, client_config: Value, extra: Value) -> Value {
    let mut hook = json!({
        "name": name,
        "clientConfig": client_config,
        "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        hook[k] = v.clone();
    }
    hook
}

fn configmap(labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "obj", "namespace": "on", "labels": labels}})
}

/// Refuses objects labelled `deny: "true"` with a 403; allows the rest
/// with a warning.
fn deny_by_label() -> Handler {
    Arc::new(|review: &Value| {
        if review["request"]["object"]["metadata"]["labels"]["deny"] == "true" {
            json!({"allowed": false, "status": {"code": 403, "reason": "Forbidden", "message": "objects labelled deny are refused"}})
        } else {
            json!({"allowed": true, "warnings": [format!("seen by {}", review["request"]["userInfo"]["username"].as_str().unwrap_or(""))]})
        }
    })
}

#[tokio::test]
async fn validating_webhooks_refuse_allow_and_follow_namespace_selectors() {
    let pki = pki();
    let hook = webhook_server(&pki, deny_by_label()).await;
    let client = json!({"service": {"namespace": "webhooks", "name": "hook", "path": "/validate", "port": hook.port},
                        "caBundle": b64(&pki.ca_pem)});
    let api = api_with(&[
        hook_service(hook.port),
        namespace("on", json!({"webhooks": "enabled"})),
        namespace("off", json!({})),
        configuration(
            config::VALIDATING,
            "deny",
            vec![pod_hook(
                "deny.example.com",
                client,
                json!({"namespaceSelector": {"matchLabels": {"webhooks": "enabled"}}}),
            )],
        ),
    ])
    .await;
    let server = &api.server;
    let cms = info("", "v1", "configmaps");
    let user = UserInfo::authenticated("alice", &[]);

    let req = request("CREATE", &cms, None, Some("on"), &user);
    let refused = server
        .call_validating_webhooks(&req, Some(&configmap(json!({"deny": "true"}))))
        .await
        .unwrap_err();
    let status = refused.status();
    assert_eq!(status["code"], 403);
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        r#"admission webhook "deny.example.com" denied the request: objects labelled deny are refused"#
    );
    let warnings = server
        .call_validating_webhooks(&req, Some(&configmap(json!({}))))
        .await
        .unwrap();
    assert_eq!(warnings, vec!["seen by alice".to_owned()]);
    assert!(hook
        .calls
        .lock()
        .unwrap()
        .iter()
        .all(|p| p == "/validate?timeout=10s"));

    // The namespace's labels do not select it: the webhook is not called.
    let off = request("CREATE", &cms, None, Some("off"), &user);
    let calls_before = hook.calls.lock().unwrap().len();
    server
        .call_validating_webhooks(&off, Some(&configmap(json!({"deny": "true"}))))
        .await
        .unwrap();
    assert_eq!(hook.calls.lock().unwrap().len(), calls_before);

    // A namespace that does not exist is a 404, as kube-apiserver answers.
    let missing = request("CREATE", &cms, None, Some("missing"), &user);
    let err = server
        .call_validating_webhooks(&missing, Some(&configmap(json!({}))))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), r#"namespaces "missing" not found"#);

    // The rules do not cover a delete.
    let delete = request("DELETE", &cms, None, Some("on"), &user);
    assert!(server.call_validating_webhooks(&delete, None).await.is_ok());
}

#[tokio::test]
async fn failure_policy_decides_when_a_webhook_cannot_be_called() {
    let pki = pki();
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("https://127.0.0.1:{port}/check");
    let client = json!({"url": url, "caBundle": b64(&pki.ca_pem)});
    let api = api_with(&[
        namespace("on", json!({})),
        configuration(
            config::VALIDATING,
            "a-ignored",
            vec![pod_hook(
                "ignored.example.com",
                client.clone(),
                json!({"failurePolicy": "Ignore"}),
            )],
        ),
    ])
    .await;
    let cms = info("", "v1", "configmaps");
    let user = UserInfo::default();
    let req = request("CREATE", &cms, None, Some("on"), &user);
    let obj = configmap(json!({}));
    assert_eq!(
        api.server
            .call_validating_webhooks(&req, Some(&obj))
            .await
            .unwrap(),
        Vec::<String>::new(),
        "failurePolicy Ignore lets the request through"
    );

    let api = api_with(&[
        namespace("on", json!({})),
        configuration(
            config::VALIDATING,
            "b-failing",
            vec![pod_hook("down.example.com", client, json!({}))],
        ),
    ])
    .await;
    let err = api
        .server
        .call_validating_webhooks(&req, Some(&obj))
        .await
        .unwrap_err();
    let status = err.status();
    assert_eq!(status["code"], 500);
    assert_eq!(status["reason"], "InternalError");
    assert_eq!(
        status["message"],
        format!(
            r#"Internal error occurred: failed calling webhook "down.example.com": failed to call webhook: Post "https://127.0.0.1:{port}/check?timeout=10s": dial tcp 127.0.0.1:{port}: connect: connection refused"#
        )
    );
}

#[tokio::test]
async fn slow_webhooks_time_out() {
    let pki = pki();
    let other = self::pki();
    let slow: Handler = Arc::new(|_| json!({"allowed": true, HANG: true}));
    let slow_server = webhook_server(&pki, slow).await;
    let fast = webhook_server(&pki, deny_by_label()).await;
    let api = api_with(&[
        namespace("on", json!({})),
        configuration(
            config::VALIDATING,
            "a-slow",
            vec![pod_hook(
                "slow.example.com",
                json!({"url": format!("https://127.0.0.1:{}/", slow_server.port), "caBundle": b64(&pki.ca_pem)}),
                json!({"timeoutSeconds": 1}),
            )],
        ),
        configuration(
            config::VALIDATING,
            "b-untrusted",
            vec![pod_hook(
                "untrusted.example.com",
                json!({"url": format!("https://127.0.0.1:{}/", fast.port), "caBundle": b64(&other.ca_pem)}),
                json!({}),
            )],
        ),
    ])
    .await;
    let cms = info("", "v1", "configmaps");
    let user = UserInfo::default();
    let req = request("UPDATE", &cms, None, Some("on"), &user);
    let err = api
        .server
        .call_validating_webhooks(&req, Some(&configmap(json!({}))))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            r#"Internal error occurred: failed calling webhook "slow.example.com": failed to call webhook: Post "https://127.0.0.1:{}/?timeout=1s": context deadline exceeded"#,
            slow_server.port
        )
    );
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_call() {
    let pki = pki();
    let other = self::pki();
    let server = webhook_server(&pki, deny_by_label()).await;
    let api = api_with(&[
        namespace("on", json!({})),
        configuration(
            config::VALIDATING,
            "untrusted",
            vec![pod_hook(
                "untrusted.example.com",
                json!({"url": format!("https://127.0.0.1:{}/", server.port), "caBundle": b64(&other.ca_pem)}),
                json!({}),
            )],
        ),
    ])
    .await;
    let cms = info("", "v1", "configmaps");
    let user = UserInfo::default();
    let req = request("CREATE", &cms, None, Some("on"), &user);
    let err = api
        .server
        .call_validating_webhooks(&req, Some(&configmap(json!({}))))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(r#"Internal error occurred: failed calling webhook "untrusted.example.com": failed to call webhook: Post"#)
            && err.contains("tls: failed to verify certificate"),
        "{err}"
    );
    assert!(server.calls.lock().unwrap().is_empty());
}

/// What `openssl req -x509` makes: one self-signed certificate marked as
/// a CA, used as the webhook's serving certificate and as its own
/// caBundle. Go's crypto/x509 (kube-apiserver) trusts it; so must we.
fn self_signed_ca_as_leaf(names: Vec<String>) -> Pki {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Pki {
        ca_pem: cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[tokio::test]
async fn a_self_signed_certificate_is_its_own_ca_bundle() {
    let pki = self_signed_ca_as_leaf(vec!["127.0.0.1".into()]);
    let server = webhook_server(&pki, deny_by_label()).await;
    let api = api_with(&[
        namespace("on", json!({})),
        configuration(
            config::VALIDATING,
            "self-signed",
            vec![pod_hook(
                "self.example.com",
                json!({"url": format!("https://127.0.0.1:{}/", server.port), "caBundle": b64(&pki.ca_pem)}),
                json!({}),
            )],
        ),
    ])
    .await;
    let cms = info("", "v1", "configmaps");
    let user = UserInfo::default();
    let req = request("CREATE", &cms, None, Some("on"), &user);
    let err = api
        .server
        .call_validating_webhooks(&req, Some(&configmap(json!({"deny": "true"}))))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("denied the request"), "{err}");
    assert_eq!(server.calls.lock().unwrap().len(), 1);

    // The same kind of certificate for another name is still refused.
    let wrong = self_signed_ca_as_leaf(vec!["elsewhere.example.com".into()]);
    let server = webhook_server(&wrong, deny_by_label()).await;
    let api = api_with(&[
        namespace("on", json!({})),
        configuration(
            config::VALIDATING,
            "self-signed",
            vec![pod_hook(
                "self.example.com",
                json!({"url": format!("https://127.0.0.1:{}/", server.port), "caBundle": b64(&wrong.ca_pem)}),
                json!({}),
            )],
        ),
    ])
    .await;
    let err = api
        .server
        .call_validating_webhooks(&req, Some(&configmap(json!({}))))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls: failed to verify certificate"), "{err}");
}

/// Adds the label `NAME: "yes"` when absent, and counts its calls.
fn add_label(label: &'static str, calls: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |review: &Value| {
        calls.fetch_add(1, Ordering::SeqCst);
        let labels = &review["request"]["object"]["metadata"]["labels"];
        if labels.get(label).is_some() {
            return json!({"allowed": true});
        }
        let patch = if labels.is_object() {
            json!([{"op": "add", "path": format!("/metadata/labels/{label}"), "value": "yes"}])
        } else {
            json!([{"op": "add", "path": "/metadata/labels", "value": {label: "yes"}}])
        };
        json!({"allowed": true, "patchType": "JSONPatch",
               "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string())})
    })
}

#[tokio::test]
async fn mutating_webhooks_patch_in_order_and_reinvoke_if_needed() {
    let pki = pki();
    let (first_calls, second_calls) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let first = webhook_server(&pki, add_label("first", first_calls.clone())).await;
    let second = webhook_server(&pki, add_label("second", second_calls.clone())).await;
    let url = |port: u16| json!({"url": format!("https://127.0.0.1:{port}/mutate"), "caBundle": b64(&pki.ca_pem)});
    let api = api_with(&[
        namespace("on", json!({})),
        hook_service(second.port),
        configuration(
            config::MUTATING,
            "a-first",
            vec![pod_hook("first.example.com", url(first.port), json!({"reinvocationPolicy": "IfNeeded"}))],
        ),
        configuration(
            config::MUTATING,
            "b-second",
            vec![pod_hook(
                "second.example.com",
                json!({"service": {"namespace": "webhooks", "name": "hook", "port": second.port}, "caBundle": b64(&pki.ca_pem)}),
                json!({}),
            )],
        ),
    ])
    .await;
    let cms = info("", "v1", "configmaps");
    let user = UserInfo::default();
    let req = request("CREATE", &cms, None, Some("on"), &user);
    let mut obj = configmap(Value::Null);
    api.server
        .call_mutating_webhooks(&req, Some(&mut obj))
        .await
        .unwrap();
    assert_eq!(
        obj["metadata"]["labels"],
        json!({"first": "yes", "second": "yes"})
    );
    // The second webhook changed the object after the first ran: the
    // first (IfNeeded) runs again; the second (Never) does not.
    assert_eq!(first_calls.load(Ordering::SeqCst), 2);
    assert_eq!(second_calls.load(Ordering::SeqCst), 1);
    assert_eq!(second.calls.lock().unwrap().as_slice(), ["/?timeout=10s"]);

    // An object that already has both labels: nothing changes, no reinvocation.
    let mut obj = configmap(json!({"first": "yes", "second": "yes"}));
    api.server
        .call_mutating_webhooks(&req, Some(&mut obj))
        .await
        .unwrap();
    assert_eq!(first_calls.load(Ordering::SeqCst), 3);

    // A dry run is refused by a webhook with side effects.
    let mut dry = request("CREATE", &cms, None, Some("on"), &user);
    dry.dry_run = true;
    let api = api_with(&[
        namespace("on", json!({})),
        configuration(
            config::MUTATING,
            "effects",
            vec![pod_hook(
                "effects.example.com",
                url(first.port),
                json!({"sideEffects": "Some"}),
            )],
        ),
    ])
    .await;
    let err = api
        .server
        .call_mutating_webhooks(&dry, Some(&mut configmap(json!({}))))
        .await
        .unwrap_err();
    assert_eq!(err.status()["code"], 400);
    assert_eq!(
        err.to_string(),
        r#"admission webhook "effects.example.com" does not support dry run"#
    );
}

#[test]
fn reviews_carry_what_kubernetes_sends() {
    let pods = info("", "v1", "pods");
    let user = UserInfo::authenticated("bob", &["devs"]);
    let old = json!({"metadata": {"name": "obj"}});
    let mut req = request("CREATE", &pods, Some("eviction"), Some("ns"), &user);
    req.old_object = Some(&old);
    req.dry_run = true;
    req.options = Some(json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}));
    let review = req.review("uid-1", Some(&json!({"kind": "Eviction"})));
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    let r = &review["request"];
    assert_eq!(r["uid"], "uid-1");
    assert_eq!(
        r["kind"],
        json!({"group": "policy", "version": "v1", "kind": "Eviction"})
    );
    assert_eq!(
        r["resource"],
        json!({"group": "", "version": "v1", "resource": "pods"})
    );
    assert_eq!(r["subResource"], "eviction");
    assert_eq!(r["namespace"], "ns");
    assert_eq!(r["name"], "obj");
    assert_eq!(r["userInfo"]["username"], "bob");
    assert_eq!(
        r["userInfo"]["groups"],
        json!(["devs", "system:authenticated"])
    );
    assert_eq!(r["oldObject"], old);
    assert_eq!(r["dryRun"], true);
    assert_eq!(r["options"]["kind"], "CreateOptions");
}
