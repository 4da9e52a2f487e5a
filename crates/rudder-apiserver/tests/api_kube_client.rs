//! The API server through the `kube` crate, as Rust controllers will use
//! it: a real server on a free port over a real store.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::Status;
use kube::Client;
use rudder_apiserver::ApiServer;
use rudder_store::{DynStore, SqliteConfig, SqliteStore};
use serde_json::json;

struct TestServer {
    client: Client,
    _dir: tempfile::TempDir,
    _etcd: Option<rudder_store::local_etcd::LocalEtcd>,
}

async fn serve(
    store: DynStore,
    dir: tempfile::TempDir,
    etcd: Option<rudder_store::local_etcd::LocalEtcd>,
) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ApiServer::new(store, addr.to_string());
    server.bootstrap().await.unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    TestServer {
        client: Client::try_from(config).unwrap(),
        _dir: dir,
        _etcd: etcd,
    }
}

async fn sqlite_server() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("state.db")))
        .await
        .unwrap();
    serve(Arc::new(store), dir, None).await
}

async fn etcd_server() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let etcd = rudder_store::local_etcd::LocalEtcd::start(dir.path()).unwrap();
    let store = etcd.connect_with(etcd.config()).await.unwrap();
    serve(Arc::new(store), dir, Some(etcd)).await
}

fn configmap(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        },
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap()
}

fn api_error(err: kube::Error) -> Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other}"),
    }
}

async fn crud_round_trip(server: TestServer) {
    let namespaces: Api<Namespace> = Api::all(server.client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for system in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.contains(&system.to_string()), "{names:?}");
    }

    let cms: Api<ConfigMap> = Api::namespaced(server.client.clone(), "default");
    let created = cms
        .create(
            &PostParams::default(),
            &configmap("web", &[("tier", "web")], &[("a", "1")]),
        )
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert_eq!(uid.len(), 36);
    assert!(created.metadata.creation_timestamp.is_some());
    cms.create(
        &PostParams::default(),
        &configmap("db", &[("tier", "db")], &[]),
    )
    .await
    .unwrap();

    let err = api_error(
        cms.create(&PostParams::default(), &configmap("web", &[], &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(err.message, r#"configmaps "web" already exists"#);

    let selected = cms
        .list(&ListParams::default().labels("tier in (web)"))
        .await
        .unwrap();
    assert_eq!(selected.items.len(), 1);
    let by_field = cms
        .list(&ListParams::default().fields("metadata.name=db"))
        .await
        .unwrap();
    assert_eq!(by_field.items[0].metadata.name.as_deref(), Some("db"));

    let patched = cms
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.as_ref().unwrap()["b"], "2");
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );

    // A replace with the resourceVersion of the first read lost the race.
    let err = api_error(
        cms.replace("web", &PostParams::default(), &created)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));

    let err = api_error(
        cms.create(&PostParams::default(), &configmap("Bad_Name", &[], &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));

    cms.delete("web", &DeleteParams::default()).await.unwrap();
    let err = api_error(cms.get("web").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, r#"configmaps "web" not found"#);

    let missing: Api<ConfigMap> = Api::namespaced(server.client.clone(), "nowhere");
    let err = api_error(
        missing
            .create(&PostParams::default(), &configmap("x", &[], &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
}

#[tokio::test]
async fn crud_round_trip_on_sqlite() {
    crud_round_trip(sqlite_server().await).await;
}

#[tokio::test]
async fn crud_round_trip_on_etcd() {
    crud_round_trip(etcd_server().await).await;
}

#[tokio::test]
async fn watch_streams_changes_in_order_and_resumes() {
    let server = sqlite_server().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client.clone(), "default");
    let first = cms
        .create(&PostParams::default(), &configmap("w1", &[], &[]))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();

    let stream = cms
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap();
    cms.create(&PostParams::default(), &configmap("w2", &[], &[]))
        .await
        .unwrap();
    cms.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "y"}})),
    )
    .await
    .unwrap();
    cms.delete("w2", &DeleteParams::default()).await.unwrap();
    let events: Vec<String> = stream
        .take(3)
        .map_ok(|event| match event {
            WatchEvent::Added(cm) => format!("ADDED {}", cm.metadata.name.unwrap()),
            WatchEvent::Modified(cm) => format!("MODIFIED {}", cm.metadata.name.unwrap()),
            WatchEvent::Deleted(cm) => format!("DELETED {}", cm.metadata.name.unwrap()),
            WatchEvent::Bookmark(_) => "BOOKMARK".into(),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(events, vec!["ADDED w2", "MODIFIED w1", "DELETED w2"]);

    // Without a resourceVersion the watch starts with the current state.
    let initial: Vec<_> = cms
        .watch(&WatchParams::default().timeout(2), "0")
        .await
        .unwrap()
        .take(1)
        .try_collect()
        .await
        .unwrap();
    assert!(
        matches!(&initial[0], WatchEvent::Added(cm) if cm.metadata.name.as_deref() == Some("w1"))
    );
}

#[tokio::test]
async fn lists_page_with_continue_tokens() {
    let server = sqlite_server().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client.clone(), "default");
    for i in 0..25 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("page-{i:02}"), &[], &[]),
        )
        .await
        .unwrap();
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = ListParams::default().limit(10);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = cms.list(&params).await.unwrap();
        pages += 1;
        names.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("page-{i:02}")).collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn deployments_are_defaulted_scaled_and_applied_server_side() {
    let server = sqlite_server().await;
    let deployments: Api<Deployment> = Api::namespaced(server.client.clone(), "default");
    let manifest = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "web:1.0"}]}}
        }
    });
    let applied = deployments
        .patch(
            "web",
            &PatchParams::apply("first"),
            &Patch::Apply(manifest.clone()),
        )
        .await
        .unwrap();
    let spec = applied.spec.unwrap();
    assert_eq!(
        spec.strategy.unwrap().type_.as_deref(),
        Some("RollingUpdate")
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        pod.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(
        applied.metadata.managed_fields.unwrap()[0]
            .manager
            .as_deref(),
        Some("first")
    );

    let scale = deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(5));
    let current = deployments.get("web").await.unwrap();
    assert_eq!(current.spec.unwrap().replicas, Some(5));
    assert_eq!(current.metadata.generation, Some(2));

    // Another manager changing a field "first" owns conflicts.
    let mut other = manifest.clone();
    other["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web:2.0");
    let err = api_error(
        deployments
            .patch(
                "web",
                &PatchParams::apply("second"),
                &Patch::Apply(other.clone()),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    assert!(err.message.contains("image"), "{}", err.message);
    let forced = deployments
        .patch(
            "web",
            &PatchParams::apply("second").force(),
            &Patch::Apply(other),
        )
        .await
        .unwrap();
    let image = forced.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("web:2.0"));

    // The selector of an apps/v1 workload never changes.
    let err = api_error(
        deployments
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"app": "x"}},
                                      "template": {"metadata": {"labels": {"app": "x"}}}}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message.contains("field is immutable"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn bound_pods_are_deleted_gracefully() {
    use k8s_openapi::api::core::v1::Pod;
    let server = sqlite_server().await;
    let pods: Api<Pod> = Api::namespaced(server.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "terminationGracePeriodSeconds": 20}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));

    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    pods.create_subresource::<serde_json::Value, serde_json::Value>(
        "binding",
        "p",
        &PostParams::default(),
        &binding,
    )
    .await
    .unwrap();
    let bound = pods.get("p").await.unwrap();
    assert_eq!(
        bound.spec.as_ref().unwrap().node_name.as_deref(),
        Some("n1")
    );
    let err = api_error(
        pods.create_subresource::<serde_json::Value, serde_json::Value>(
            "binding",
            "p",
            &PostParams::default(),
            &binding,
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 409, "a pod is bound once");

    pods.delete("p", &DeleteParams::default()).await.unwrap();
    let terminating = pods.get("p").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(20));

    pods.delete("p", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(api_error(pods.get("p").await.unwrap_err()).code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_share_the_watch_cache() {
    let server = sqlite_server().await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client.clone(), "default");
    cms.create(&PostParams::default(), &configmap("before", &[], &[]))
        .await
        .unwrap();

    // An informer's list: resourceVersion=0, served from the cache.
    let listed = cms.list(&ListParams::default().match_any()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let rv = listed.metadata.resource_version.unwrap();

    let mut watchers = Vec::new();
    for _ in 0..100 {
        let cms = cms.clone();
        let rv = rv.clone();
        watchers.push(tokio::spawn(async move {
            let stream = cms
                .watch(&WatchParams::default().timeout(30), &rv)
                .await
                .unwrap();
            stream
                .take(20)
                .map_ok(|event| match event {
                    WatchEvent::Added(cm) => cm.metadata.name.unwrap(),
                    other => panic!("unexpected {other:?}"),
                })
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for i in 0..20 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("fan-{i:02}"), &[], &[]),
        )
        .await
        .unwrap();
    }
    let expected: Vec<String> = (0..20).map(|i| format!("fan-{i:02}")).collect();
    for watcher in watchers {
        assert_eq!(watcher.await.unwrap(), expected);
    }
}

#[tokio::test]
async fn pod_priority_comes_from_its_priority_class() {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let server = sqlite_server().await;
    let classes: Api<PriorityClass> = Api::all(server.client.clone());
    assert_eq!(
        classes.get("system-node-critical").await.unwrap().value,
        2_000_001_000
    );
    let class: PriorityClass =
        serde_json::from_value(json!({"metadata": {"name": "high"}, "value": 1000})).unwrap();
    classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(server.client.clone(), "default");
    let pod = |name: &str, class: Option<&str>| -> Pod {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        if let Some(class) = class {
            spec["priorityClassName"] = json!(class);
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let high = pods
        .create(&PostParams::default(), &pod("high", Some("high")))
        .await
        .unwrap();
    assert_eq!(high.spec.unwrap().priority, Some(1000));
    let plain = pods
        .create(&PostParams::default(), &pod("plain", None))
        .await
        .unwrap();
    assert_eq!(plain.spec.unwrap().priority, Some(0));
    let err = api_error(
        pods.create(&PostParams::default(), &pod("nopc", Some("nope")))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 403);
    assert!(
        err.message
            .contains("no PriorityClass with name nope was found"),
        "{}",
        err.message
    );

    let default: PriorityClass = serde_json::from_value(
        json!({"metadata": {"name": "everyone"}, "value": 7, "globalDefault": true}),
    )
    .unwrap();
    classes
        .create(&PostParams::default(), &default)
        .await
        .unwrap();
    let defaulted = pods
        .create(&PostParams::default(), &pod("defaulted", None))
        .await
        .unwrap();
    let spec = defaulted.spec.unwrap();
    assert_eq!(
        (spec.priority, spec.priority_class_name.as_deref()),
        (Some(7), Some("everyone"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_and_foreground_deletion_leave_finalizers_for_the_collector() {
    let server = sqlite_server().await;
    let maps: Api<ConfigMap> = Api::namespaced(server.client.clone(), "default");
    for name in ["orphan", "fore", "back"] {
        maps.create(&PostParams::default(), &configmap(name, &[], &[]))
            .await
            .unwrap();
    }
    maps.delete("orphan", &DeleteParams::orphan())
        .await
        .unwrap();
    let held = maps.get("orphan").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.metadata.finalizers, Some(vec!["orphan".to_string()]));

    maps.delete("fore", &DeleteParams::foreground())
        .await
        .unwrap();
    let held = maps.get("fore").await.unwrap();
    assert_eq!(
        held.metadata.finalizers,
        Some(vec!["foregroundDeletion".to_string()])
    );

    maps.delete("back", &DeleteParams::background())
        .await
        .unwrap();
    assert_eq!(api_error(maps.get("back").await.unwrap_err()).code, 404);

    // The collector's removal of the finalizer completes the deletion.
    maps.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(maps.get("orphan").await.unwrap_err()).code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_namespace_goes_when_its_finalizers_are_removed() {
    let server = sqlite_server().await;
    let namespaces: Api<Namespace> = Api::all(server.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = namespaces.get("doomed").await.unwrap();
    assert_eq!(
        terminating.status.unwrap().phase.as_deref(),
        Some("Terminating")
    );
    // A label change does not complete the deletion: `kubernetes` holds it.
    namespaces
        .patch(
            "doomed",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert!(namespaces.get("doomed").await.is_ok());
    let finalize = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "doomed"}, "spec": {"finalizers": []}});
    namespaces
        .replace_subresource("finalize", "doomed", &PostParams::default(), &finalize)
        .await
        .unwrap();
    assert_eq!(
        api_error(namespaces.get("doomed").await.unwrap_err()).code,
        404
    );
}

#[tokio::test]
async fn claims_get_the_default_class_and_storage_finalizers() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use k8s_openapi::api::storage::v1::StorageClass;
    let server = sqlite_server().await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(server.client.clone(), "default");
    let claim = |name: &str, class: Option<&str>| -> PersistentVolumeClaim {
        let mut spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});
        if let Some(class) = class {
            spec["storageClassName"] = json!(class);
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let before = claims
        .create(&PostParams::default(), &claim("before", None))
        .await
        .unwrap();
    assert_eq!(
        before.spec.unwrap().storage_class_name,
        None,
        "no default class yet"
    );
    assert_eq!(
        before.metadata.finalizers,
        Some(vec!["kubernetes.io/pvc-protection".to_owned()])
    );

    let classes: Api<StorageClass> = Api::all(server.client.clone());
    for name in ["standard", "plain"] {
        let mut class = json!({"metadata": {"name": name}, "provisioner": "example.com/p"});
        if name == "standard" {
            class["metadata"]["annotations"] =
                json!({"storageclass.kubernetes.io/is-default-class": "true"});
        }
        classes
            .create(
                &PostParams::default(),
                &serde_json::from_value(class).unwrap(),
            )
            .await
            .unwrap();
    }
    let defaulted = claims
        .create(&PostParams::default(), &claim("defaulted", None))
        .await
        .unwrap();
    assert_eq!(
        defaulted.spec.unwrap().storage_class_name.as_deref(),
        Some("standard")
    );
    let explicit = claims
        .create(&PostParams::default(), &claim("explicit", Some("plain")))
        .await
        .unwrap();
    assert_eq!(
        explicit.spec.unwrap().storage_class_name.as_deref(),
        Some("plain")
    );
    let none = claims
        .create(&PostParams::default(), &claim("none", Some("")))
        .await
        .unwrap();
    assert_eq!(
        none.spec.unwrap().storage_class_name.as_deref(),
        Some(""),
        "an empty class means no class"
    );

    let volumes: Api<PersistentVolume> = Api::all(server.client.clone());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "pv1"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/tmp/pv1"}}
    }))
    .unwrap();
    let pv = volumes.create(&PostParams::default(), &pv).await.unwrap();
    assert_eq!(
        pv.metadata.finalizers,
        Some(vec!["kubernetes.io/pv-protection".to_owned()])
    );
}
