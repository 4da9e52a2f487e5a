//! VolumeBinding's PreBind against a real API server: the scheduler
//! writes the claim's selected node or the chosen volume's claimRef, and
//! binds the pod only once the claims are bound (here the test plays the
//! PV controller and the provisioner).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rudder_apiserver::ApiServer;
use rudder_scheduler::{Scheduler, SchedulerConfiguration};
use rudder_store::{SqliteConfig, SqliteStore};
use serde_json::{json, Value};

struct Cluster {
    client: Client,
    _dir: tempfile::TempDir,
}

async fn cluster() -> Cluster {
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
    Cluster {
        client: Client::try_from(config).unwrap(),
        _dir: dir,
    }
}

fn start_scheduler(client: &Client, bind_timeout: Duration) {
    let profiles = SchedulerConfiguration::default().profiles().unwrap();
    let scheduler = Scheduler::new(client.clone(), profiles);
    scheduler.set_volume_bind_timeout(bind_timeout);
    tokio::spawn(scheduler.run());
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create<K>(api: Api<K>, value: Value) -> K
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap()
}

async fn node(client: &Client, name: &str, labels: Value) {
    let mut all = json!({"kubernetes.io/hostname": name});
    for (k, v) in labels.as_object().unwrap() {
        all[k] = v.clone();
    }
    create::<Node>(
        Api::all(client.clone()),
        json!({"metadata": {"name": name, "labels": all},
               "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                          "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"}}}),
    )
    .await;
}

async fn pod_using(client: &Client, name: &str, claim: &str) {
    create::<Pod>(
        Api::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": name}, "spec": {
            "containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}),
    )
    .await;
}

fn node_name(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
}

/// Completes a binding as the PV controller does.
async fn bind_claim(client: &Client, claim: &str, volume: &str) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    claims
        .patch(
            claim,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                "spec": {"volumeName": volume}})),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_to_provision_gets_the_node_and_the_pod_waits_for_its_volume() {
    let c = cluster().await;
    node(&c.client, "a", json!({"zone": "east"})).await;
    node(&c.client, "b", json!({"zone": "west"})).await;
    create::<StorageClass>(
        Api::all(c.client.clone()),
        json!({"metadata": {"name": "local"}, "provisioner": "example.com/local",
               "volumeBindingMode": "WaitForFirstConsumer",
               "allowedTopologies": [{"matchLabelExpressions": [{"key": "zone", "values": ["west"]}]}]}),
    )
    .await;
    create::<PersistentVolumeClaim>(
        Api::namespaced(c.client.clone(), "default"),
        json!({"metadata": {"name": "data"}, "spec": {"storageClassName": "local",
               "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    start_scheduler(&c.client, Duration::from_secs(60));
    pod_using(&c.client, "web", "data").await;

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let claim = eventually("the selected node on the claim", || async {
        claims.get("data").await.ok().filter(|c| {
            c.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("volume.kubernetes.io/selected-node"))
        })
    })
    .await;
    // Only b is in the class's allowed topology.
    assert_eq!(
        claim.metadata.annotations.as_ref().unwrap()["volume.kubernetes.io/selected-node"],
        "b"
    );
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    assert_eq!(
        node_name(&pods.get("web").await.unwrap()),
        None,
        "not bound before its claim is"
    );

    // The provisioner makes the volume on b; the PV controller binds it.
    create::<PersistentVolume>(
        Api::all(c.client.clone()),
        json!({"metadata": {"name": "pvc-data"}, "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local", "hostPath": {"path": "/tmp/data"},
            "claimRef": {"namespace": "default", "name": "data", "uid": claim.metadata.uid},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]}}}}),
    )
    .await;
    bind_claim(&c.client, "data", "pvc-data").await;
    let placed = eventually("the pod bound", || async {
        pods.get("web").await.ok().and_then(|p| node_name(&p))
    })
    .await;
    assert_eq!(placed, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_volume_is_pre_bound_and_a_late_binding_retries() {
    let c = cluster().await;
    node(&c.client, "a", json!({})).await;
    node(&c.client, "b", json!({})).await;
    create::<StorageClass>(
        Api::all(c.client.clone()),
        json!({"metadata": {"name": "local"}, "provisioner": "kubernetes.io/no-provisioner",
               "volumeBindingMode": "WaitForFirstConsumer"}),
    )
    .await;
    create::<PersistentVolume>(
        Api::all(c.client.clone()),
        json!({"metadata": {"name": "disk-b"}, "spec": {
            "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local", "local": {"path": "/mnt/disk"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]}}}}),
    )
    .await;
    // The PV controller would mark it Available.
    let volumes: Api<PersistentVolume> = Api::all(c.client.clone());
    volumes
        .patch_status(
            "disk-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Available"}})),
        )
        .await
        .unwrap();
    create::<PersistentVolumeClaim>(
        Api::namespaced(c.client.clone(), "default"),
        json!({"metadata": {"name": "data"}, "spec": {"storageClassName": "local",
               "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    // Nobody completes the binding at first: PreBind gives up quickly.
    start_scheduler(&c.client, Duration::from_millis(300));
    pod_using(&c.client, "web", "data").await;

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let claim = claims.get("data").await.unwrap();
    let volume = eventually("the volume pre-bound to the claim", || async {
        volumes.get("disk-b").await.ok().filter(|v| {
            v.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| r.uid.clone())
                == claim.metadata.uid
        })
    })
    .await;
    assert_eq!(
        volume.metadata.annotations.as_ref().unwrap()["pv.kubernetes.io/bound-by-controller"],
        "yes"
    );
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let message = eventually("a PreBind failure event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some("web"))
            .filter_map(|e| e.message)
            .find(|m| m.contains("PreBind"))
    })
    .await;
    assert_eq!(
        message,
        "running PreBind plugin \"VolumeBinding\": binding volumes: context deadline exceeded"
    );

    // The PV controller completes the binding; the retried pod goes to b.
    bind_claim(&c.client, "data", "disk-b").await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let placed = eventually("the pod bound", || async {
        pods.get("web").await.ok().and_then(|p| node_name(&p))
    })
    .await;
    assert_eq!(placed, "b");
}
