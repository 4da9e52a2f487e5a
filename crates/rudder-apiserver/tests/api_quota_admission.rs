//! LimitRanger and ResourceQuota admission through a real server: defaults
//! and refusals with Kubernetes' messages, and quota charging that two
//! racing creates cannot get past.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolumeClaim, Pod, ResourceQuota,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use rudder_apiserver::ApiServer;
use rudder_store::{SqliteConfig, SqliteStore};
use serde_json::{json, Value};

struct TestServer {
    client: Client,
    _dir: tempfile::TempDir,
}

async fn server() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("state.db")))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ApiServer::new(Arc::new(store), addr.to_string());
    server.bootstrap().await.unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    TestServer { client, _dir: dir }
}

fn pod(name: &str, resources: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "web:1", "resources": resources}]}
    }))
    .unwrap()
}

/// The refusal's status code and message.
fn refusal(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.message),
        other => panic!("not an API error: {other}"),
    }
}

/// Creates a quota and sets its status as the quota controller would.
async fn quota(client: &Client, name: &str, hard: Value, used: Value) {
    let api: Api<ResourceQuota> = Api::namespaced(client.clone(), "team");
    let q: ResourceQuota =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"hard": hard}}))
            .unwrap();
    api.create(&PostParams::default(), &q).await.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"hard": hard, "used": used}})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_default_and_bound_pods_and_claims() {
    let s = server().await;
    let ranges: Api<LimitRange> = Api::namespaced(s.client.clone(), "team");
    let range: LimitRange = serde_json::from_value(json!({
        "metadata": {"name": "limits"},
        "spec": {"limits": [
            {"type": "Container", "max": {"cpu": "1"}, "defaultRequest": {"cpu": "250m"},
             "default": {"memory": "256Mi"}},
            {"type": "PersistentVolumeClaim", "max": {"storage": "10Gi"}}]}
    }))
    .unwrap();
    let stored = ranges.create(&PostParams::default(), &range).await.unwrap();
    // The range itself gets Kubernetes' defaults: the default limit from
    // max, the default request from the default limit.
    let item = &stored.spec.unwrap().limits[0];
    assert_eq!(item.default.as_ref().unwrap()["cpu"].0, "1");
    assert_eq!(item.default_request.as_ref().unwrap()["memory"].0, "256Mi");

    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "team");
    let created = pods
        .create(&PostParams::default(), &pod("defaulted", json!({})))
        .await
        .unwrap();
    let resources = created.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "250m");
    assert_eq!(resources.limits.as_ref().unwrap()["cpu"].0, "1");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "256Mi");
    assert_eq!(
        created.metadata.annotations.unwrap()["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
    );

    let err = pods
        .create(
            &PostParams::default(),
            &pod("x", json!({"limits": {"cpu": "2"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refusal(err),
        (
            403,
            "pods \"x\" is forbidden: maximum cpu usage per Container is 1, but limit is 2".into()
        )
    );

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(s.client.clone(), "team");
    let claim = |size: &str| -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}))
        .unwrap()
    };
    let err = claims
        .create(&PostParams::default(), &claim("20Gi"))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(err),
        (
            403,
            "persistentvolumeclaims \"data\" is forbidden: maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi".into()
        )
    );
    claims
        .create(&PostParams::default(), &claim("5Gi"))
        .await
        .unwrap();
    // Growing a claim past the range is refused too.
    let err = claims
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "11Gi"}}}})),
        )
        .await
        .unwrap_err();
    assert_eq!(refusal(err).0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_refuses_past_hard_and_charges_what_it_admits() {
    let s = server().await;
    quota(
        &s.client,
        "q",
        json!({"pods": "2", "limits.cpu": "2", "count/configmaps": "1"}),
        json!({"pods": "1", "limits.cpu": "500m", "count/configmaps": "0"}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "team");
    // A quota on limits.cpu needs every container to state one.
    let err = pods
        .create(&PostParams::default(), &pod("x", json!({})))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(err),
        (
            403,
            "pods \"x\" is forbidden: failed quota: q: must specify limits.cpu for: c".into()
        )
    );
    let err = pods
        .create(
            &PostParams::default(),
            &pod("x", json!({"limits": {"cpu": "1600m"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refusal(err),
        (
            403,
            "pods \"x\" is forbidden: exceeded quota: q, requested: limits.cpu=1600m, used: limits.cpu=500m, limited: limits.cpu=2".into()
        )
    );
    pods.create(
        &PostParams::default(),
        &pod("a", json!({"limits": {"cpu": "1"}})),
    )
    .await
    .unwrap();
    let quotas: Api<ResourceQuota> = Api::namespaced(s.client.clone(), "team");
    let used = quotas.get("q").await.unwrap().status.unwrap().used.unwrap();
    assert_eq!(used["pods"].0, "2");
    assert_eq!(used["limits.cpu"].0, "1500m");
    let err = pods
        .create(
            &PostParams::default(),
            &pod("b", json!({"limits": {"cpu": "100m"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refusal(err),
        (
            403,
            "pods \"b\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2".into()
        )
    );
    // Object counts.
    let maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), "team");
    let map = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    maps.create(&PostParams::default(), &map("one"))
        .await
        .unwrap();
    let err = maps
        .create(&PostParams::default(), &map("two"))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(err),
        (
            403,
            "configmaps \"two\" is forbidden: exceeded quota: q, requested: count/configmaps=1, used: count/configmaps=1, limited: count/configmaps=1".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_cannot_both_take_the_last_unit() {
    let s = server().await;
    quota(
        &s.client,
        "q",
        json!({"configmaps": "5"}),
        json!({"configmaps": "4"}),
    )
    .await;
    let maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), "team");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let maps = maps.clone();
        tasks.push(tokio::spawn(async move {
            let map: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": format!("m{i}")}})).unwrap();
            maps.create(&PostParams::default(), &map).await
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(err) => {
                let (code, message) = refusal(err);
                assert_eq!(code, 403);
                assert!(message.contains("exceeded quota: q, requested: configmaps=1, used: configmaps=5, limited: configmaps=5"), "{message}");
            }
        }
    }
    assert_eq!(admitted, 1, "exactly one create takes the last unit");
    let quotas: Api<ResourceQuota> = Api::namespaced(s.client.clone(), "team");
    let used = quotas.get("q").await.unwrap().status.unwrap().used.unwrap();
    assert_eq!(used["configmaps"].0, "5");
}
