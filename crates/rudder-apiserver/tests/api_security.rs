//! A secured server (HTTPS, authentication, authorization, admission)
//! through the `kube` crate, as users and components meet it: anonymous
//! refusal, client certificates, ServiceAccount tokens and their binding to
//! pods, RBAC with Kubernetes' messages and escalation prevention,
//! impersonation with SelfSubjectAccessReview, NodeRestriction, PodSecurity,
//! TokenReview.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use rudder_apiserver::{ApiServer, SecurityConfig};
use rudder_auth::pki::{self, CertAndKey, ClusterPki};
use rudder_store::{SqliteConfig, SqliteStore};
use serde_json::{json, Value};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

struct Cluster {
    url: String,
    pki: ClusterPki,
    admin: Client,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("state.db")))
            .await
            .unwrap();
        let pki = ClusterPki::load_or_create(&dir.path().join("tls")).unwrap();
        let serving = pki
            .ensure_serving(
                pki::SERVING_KUBE_APISERVER,
                &["localhost".into()],
                &["127.0.0.1".parse().unwrap()],
            )
            .unwrap();
        let tokens = rudder_auth::token::TokenIssuer::from_pem(
            &pki.service_account_key_pem().unwrap(),
            ISSUER,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            ApiServer::new(Arc::new(store), addr.to_string()).with_security(SecurityConfig {
                tls: pki::server_config(&serving, pki.client_ca_pem()).unwrap(),
                server_ca_pem: pki.server_ca_pem().to_owned(),
                client_ca_pem: pki.client_ca_pem().to_owned(),
                tokens,
                bootstrap_secret: Some("join-secret".into()),
                kubelet_client: None,
                api_audiences: vec![ISSUER.into()],
                audit: None,
            });
        server.bootstrap().await.unwrap();
        tokio::spawn(server.serve(listener, std::future::pending()));
        let url = format!("https://127.0.0.1:{}", addr.port());
        let admin_cert = pki
            .issue_client("system:admin", &["system:masters"], pki::LEAF_VALIDITY)
            .unwrap();
        let admin = client_with_cert(&url, &pki, &admin_cert);
        Cluster {
            url,
            pki,
            admin,
            _dir: dir,
        }
    }

    fn as_user(&self, user: &str, groups: &[&str]) -> Client {
        let cert = self
            .pki
            .issue_client(user, groups, pki::LEAF_VALIDITY)
            .unwrap();
        client_with_cert(&self.url, &self.pki, &cert)
    }

    fn with_token(&self, token: &str) -> Client {
        let mut config = kube::Config::new(self.url.parse().unwrap());
        config.root_cert = Some(vec![der(self.pki.server_ca_pem())]);
        config.auth_info.token = Some(token.to_owned().into());
        Client::try_from(config).unwrap()
    }

    fn anonymous(&self) -> Client {
        let mut config = kube::Config::new(self.url.parse().unwrap());
        config.root_cert = Some(vec![der(self.pki.server_ca_pem())]);
        Client::try_from(config).unwrap()
    }

    async fn apply(&self, path: &str, body: Value) -> Value {
        post(&self.admin, path, body).await.unwrap()
    }

    async fn token(
        &self,
        namespace: &str,
        account: &str,
        bound_pod: Option<(&str, &str)>,
    ) -> String {
        let mut spec = json!({"expirationSeconds": 3600});
        if let Some((name, uid)) = bound_pod {
            spec["boundObjectRef"] =
                json!({"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid});
        }
        let answer = self
            .apply(
                &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"),
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
            )
            .await;
        answer["status"]["token"].as_str().unwrap().to_owned()
    }
}

fn der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn client_with_cert(url: &str, pki: &ClusterPki, cert: &CertAndKey) -> Client {
    let mut config = kube::Config::new(url.parse().unwrap());
    config.root_cert = Some(vec![der(pki.server_ca_pem())]);
    config.auth_info.client_certificate_data = Some(base64(&cert.cert_pem));
    config.auth_info.client_key_data = Some(base64(&cert.key_pem).into());
    Client::try_from(config).unwrap()
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn post(client: &Client, path: &str, body: Value) -> Result<Value, kube::Error> {
    let request = kube::core::Request::new(path)
        .create(&PostParams::default(), serde_json::to_vec(&body).unwrap())
        .unwrap();
    client.request::<Value>(request).await
}

fn status(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Waits for the authorizer's RBAC snapshot to see a change.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what}: not true within 10 s");
}

#[tokio::test]
async fn callers_are_authenticated_and_authorized() {
    let cluster = Cluster::start().await;
    // Anonymous: 401 with Kubernetes' Status.
    let anonymous: Api<ConfigMap> = Api::namespaced(cluster.anonymous(), "default");
    let (code, message) = status(anonymous.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, message.as_str()), (401, "Unauthorized"));
    // A bad bearer token: 401 too.
    let forged: Api<ConfigMap> = Api::namespaced(cluster.with_token("a.b.c"), "default");
    assert_eq!(
        status(forged.list(&ListParams::default()).await.unwrap_err()).0,
        401
    );
    // A client certificate another CA signed names nobody: the handshake
    // completes and the request is 401, as kube-apiserver answers it, even
    // on the otherwise open health endpoint.
    let elsewhere = tempfile::tempdir().unwrap();
    let other_pki = ClusterPki::load_or_create(elsewhere.path()).unwrap();
    let foreign = other_pki
        .issue_client("system:admin", &["system:masters"], pki::LEAF_VALIDITY)
        .unwrap();
    let foreign = client_with_cert(&cluster.url, &cluster.pki, &foreign);
    let as_foreign: Api<ConfigMap> = Api::namespaced(foreign.clone(), "default");
    let (code, message) = status(as_foreign.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, message.as_str()), (401, "Unauthorized"));
    let health = foreign
        .request_text(http::Request::get("/healthz").body(Vec::new()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(status(health).0, 401);

    // The reviews are in discovery (create only), so `kubectl
    // api-resources` and `kubectl explain` know them.
    let authorization = cluster
        .admin
        .request_text(
            http::Request::get("/apis/authorization.k8s.io/v1")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let list: Value = serde_json::from_str(&authorization).unwrap();
    let names: Vec<(&str, bool, &Value)> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["namespaced"].as_bool().unwrap(),
                &r["verbs"],
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("localsubjectaccessreviews", true, &json!(["create"])),
            ("selfsubjectaccessreviews", false, &json!(["create"])),
            ("selfsubjectrulesreviews", false, &json!(["create"])),
            ("subjectaccessreviews", false, &json!(["create"])),
        ]
    );
    let groups = cluster
        .admin
        .request_text(http::Request::get("/apis").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert!(groups.contains("\"authentication.k8s.io\""), "{groups}");

    // The admin (system:masters) may do anything.
    cluster
        .apply(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sec"}}),
        )
        .await;
    cluster
        .apply(
            "/api/v1/namespaces/sec/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}),
        )
        .await;
    let token = cluster.token("sec", "reader", None).await;
    let reader = cluster.with_token(&token);
    let review = post(
        &reader,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
    )
    .await
    .unwrap();
    assert_eq!(
        review["status"]["userInfo"]["username"],
        "system:serviceaccount:sec:reader"
    );
    assert!(review["status"]["userInfo"]["groups"]
        .as_array()
        .unwrap()
        .contains(&json!("system:serviceaccounts:sec")));

    // No role yet: 403 with Kubernetes' words.
    let pods: Api<Pod> = Api::namespaced(reader.clone(), "sec");
    let (code, message) = status(pods.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "pods is forbidden: User \"system:serviceaccount:sec:reader\" cannot list resource \"pods\" in API group \"\" in the namespace \"sec\""
    );
    cluster
        .apply("/apis/rbac.authorization.k8s.io/v1/namespaces/sec/roles", json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}))
        .await;
    cluster
        .apply("/apis/rbac.authorization.k8s.io/v1/namespaces/sec/rolebindings", json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "read-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "sec"}]}))
        .await;
    eventually("the binding grants the list", || async {
        pods.list(&ListParams::default()).await.is_ok()
    })
    .await;
    let elsewhere: Api<Pod> = Api::namespaced(reader.clone(), "default");
    assert_eq!(
        status(elsewhere.list(&ListParams::default()).await.unwrap_err()).0,
        403
    );

    // Impersonation, as `kubectl auth can-i --as` uses it.
    let can = |verb: &str, resource: &str| {
        let admin = cluster.admin.clone();
        let (verb, resource) = (verb.to_owned(), resource.to_owned());
        async move {
            let mut request = http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
                .header("Impersonate-User", "system:serviceaccount:sec:reader")
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(&json!({
                    "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": {"namespace": "sec", "verb": verb, "resource": resource}}
                })).unwrap())
                .unwrap();
            request.headers_mut();
            let answer: Value = admin.request(request).await.unwrap();
            answer["status"]["allowed"].as_bool().unwrap()
        }
    };
    assert!(can("list", "pods").await);
    assert!(!can("delete", "pods").await);
    // Impersonating takes the impersonate verb.
    let mut request = http::Request::get("/api/v1/namespaces/sec/pods")
        .header("Impersonate-User", "system:admin")
        .body(Vec::new())
        .unwrap();
    request.headers_mut();
    let (code, message) = status(reader.request::<Value>(request).await.unwrap_err());
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("cannot impersonate resource \"users\""),
        "{message}"
    );

    // TokenReview, as node agents check their callers.
    let review = cluster
        .apply("/apis/authentication.k8s.io/v1/tokenreviews", json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}))
        .await;
    assert_eq!(review["status"]["authenticated"], true);
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:sec:reader"
    );
}

#[tokio::test]
async fn roles_cannot_grant_what_their_author_lacks() {
    let cluster = Cluster::start().await;
    cluster
        .apply(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
        )
        .await;
    // alice may manage RoleBindings in "team" and read pods there, no more.
    cluster
        .apply("/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles", json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "binder"},
            "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings", "roles"], "verbs": ["create"]},
                      {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}))
        .await;
    cluster
        .apply("/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings", json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "binder"},
            "subjects": [{"kind": "User", "name": "alice"}]}))
        .await;
    let alice = cluster.as_user("alice", &[]);
    let probe = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-getter"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
    eventually("alice's binding applies", || async {
        post(
            &alice,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles",
            probe.clone(),
        )
        .await
        .is_ok()
    })
    .await;
    // Granting secrets, which she cannot read herself: refused.
    let err = post(&alice, "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles", json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "secrets"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}))
    .await
    .unwrap_err();
    let (code, message) = status(err);
    assert_eq!(code, 403);
    assert!(
        message.contains("is attempting to grant RBAC permissions not currently held"),
        "{message}"
    );
    // Binding cluster-admin to herself: refused as well.
    let err = post(&alice, "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings", json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "escalate"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "alice"}]}))
    .await
    .unwrap_err();
    assert_eq!(status(err).0, 403);
}

#[tokio::test]
async fn pod_bound_tokens_die_with_their_pod() {
    let cluster = Cluster::start().await;
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    let created = Api::<Pod>::namespaced(cluster.admin.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    // ServiceAccount admission: the default account and its token volume.
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    let volume = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name.starts_with("kube-api-access-"))
        .expect("the token volume");
    let sources = volume.projected.unwrap().sources.unwrap();
    assert_eq!(
        sources[0]
            .service_account_token
            .as_ref()
            .unwrap()
            .expiration_seconds,
        Some(3607)
    );
    assert_eq!(
        sources[1].config_map.as_ref().unwrap().name,
        "kube-root-ca.crt"
    );
    assert_eq!(
        spec.containers[0].volume_mounts.as_ref().unwrap()[0].mount_path,
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );

    cluster
        .apply(
            "/api/v1/namespaces/default/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
        )
        .await;
    let uid = created.metadata.uid.clone().unwrap();
    let token = cluster.token("default", "default", Some(("p", &uid))).await;
    let client = cluster.with_token(&token);
    let whoami = || async {
        post(
            &client,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .await
    };
    let me = whoami().await.unwrap();
    assert_eq!(
        me["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["p"])
    );
    Api::<Pod>::namespaced(cluster.admin.clone(), "default")
        .delete("p", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("the token stops working", || async {
        matches!(whoami().await, Err(kube::Error::Api(s)) if s.code == 401)
    })
    .await;
    // A token bound to a pod that is not (or no longer) there: refused.
    let err = post(
        &cluster.admin,
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": uid}}}),
    )
    .await
    .unwrap_err();
    assert_eq!(status(err).0, 404);
}

#[tokio::test]
async fn nodes_may_change_only_their_own_node() {
    let cluster = Cluster::start().await;
    let nodes: Api<Node> = Api::all(cluster.admin.clone());
    for name in ["n1", "n2"] {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
    let n1 = cluster.as_user("system:node:n1", &["system:nodes"]);
    let as_n1: Api<Node> = Api::all(n1.clone());
    let label =
        |value: &str| kube::api::Patch::Merge(json!({"metadata": {"labels": {"hacked": value}}}));
    as_n1
        .patch("n1", &Default::default(), &label("no"))
        .await
        .expect("a node labels itself");
    let (code, message) = status(
        as_n1
            .patch("n2", &Default::default(), &label("yes"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403, "{message}");
    assert!(
        message.starts_with("nodes \"n2\" is forbidden: "),
        "{message}"
    );
    // A node reads no Secret its pods do not use.
    Api::<Secret>::namespaced(cluster.admin.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(n1, "default");
    assert_eq!(status(secrets.get("s").await.unwrap_err()).0, 403);
}

#[tokio::test]
async fn pod_security_enforces_and_warns_by_namespace_label() {
    let cluster = Cluster::start().await;
    cluster
        .apply(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "locked",
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}),
        )
        .await;
    let namespace: Value = cluster
        .admin
        .request(
            kube::core::Request::new("/api/v1/namespaces")
                .get("locked", &Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        namespace["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "locked"
    );
    let privileged: Pod = serde_json::from_value(json!({"metadata": {"name": "priv"}, "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": true}}]}})).unwrap();
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), "locked");
    let (code, message) = status(
        pods.create(&PostParams::default(), &privileged)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert!(
        message.starts_with("pods \"priv\" is forbidden: violates PodSecurity \"restricted:latest\": privileged (container \"c\" must not set securityContext.privileged=true)"),
        "{message}"
    );
    let compliant: Pod = serde_json::from_value(json!({"metadata": {"name": "ok"}, "spec": {
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "image": "busybox", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}})).unwrap();
    pods.create(&PostParams::default(), &compliant)
        .await
        .unwrap();
}
