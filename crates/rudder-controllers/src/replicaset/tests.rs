use super::*;
use crate::testing::{eventually, namespace, TestCluster};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;

fn replicaset(name: &str, replicas: i32, app: &str) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }))
    .unwrap()
}

async fn pods_of(api: &Api<Pod>, app: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

async fn mark_ready(api: &Api<Pod>, pod: &Pod) {
    let now = rudder_apimachinery::time::now_rfc3339();
    let status = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicaset_keeps_its_replicas_and_reports_them() {
    let cluster = TestCluster::start().await;
    namespace(&cluster.client, "rs").await;
    cluster.run_controllers(&["replicaset"]);
    let sets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "rs");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "rs");
    sets.create(&PostParams::default(), &replicaset("web", 3, "web"))
        .await
        .unwrap();
    let created = eventually("three pods", || async {
        let p = pods_of(&pods, "web").await;
        (p.len() == 3).then_some(p)
    })
    .await;
    for pod in &created {
        let owner = controller_of(&pod.metadata).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ReplicaSet", "web")
        );
        assert!(pod.metadata.name.as_deref().unwrap().starts_with("web-"));
        mark_ready(&pods, pod).await;
    }
    eventually("status counts ready pods", || async {
        let s = sets.get("web").await.unwrap().status?;
        (s.replicas == 3
            && s.ready_replicas == Some(3)
            && s.available_replicas == Some(3)
            && s.fully_labeled_replicas == Some(3)
            && s.observed_generation == Some(1))
        .then_some(())
    })
    .await;

    // A pod deleted under it is replaced.
    pods.delete(
        created[0].metadata.name.as_deref().unwrap(),
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    eventually("a replacement", || async {
        let p = pods_of(&pods, "web").await;
        (p.len() == 3 && p.iter().all(|p| p.metadata.uid != created[0].metadata.uid)).then_some(())
    })
    .await;

    // Scale down: the not-ready replacement goes first.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .unwrap();
    let left = eventually("two pods", || async {
        let p = pods_of(&pods, "web").await;
        (p.len() == 2).then_some(p)
    })
    .await;
    assert!(left.iter().all(is_pod_ready), "the ready pods stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_adopted_and_mismatched_pods_released() {
    let cluster = TestCluster::start().await;
    namespace(&cluster.client, "rs").await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "rs");
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "labels": {"app": "db"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    cluster.run_controllers(&["replicaset"]);
    let sets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "rs");
    sets.create(&PostParams::default(), &replicaset("db", 2, "db"))
        .await
        .unwrap();
    eventually("the orphan adopted and one more made", || async {
        let p = pods_of(&pods, "db").await;
        let stray = p
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("stray"))?;
        (p.len() == 2 && controller_of(&stray.metadata).is_some_and(|o| o.name == "db"))
            .then_some(())
    })
    .await;

    // Relabelled: released, and replaced.
    pods.patch(
        "stray",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    eventually("released and replaced", || async {
        let stray = pods.get("stray").await.ok()?;
        let p = pods_of(&pods, "db").await;
        (stray.metadata.owner_references.is_none() && p.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controllers_work_the_same_and_restarts_add_nothing() {
    let cluster = TestCluster::start().await;
    namespace(&cluster.client, "rc").await;
    cluster.run_controllers(&["replicaset"]);
    let rcs: Api<ReplicationController> = Api::namespaced(cluster.client.clone(), "rc");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "rc");
    let rc: ReplicationController = serde_json::from_value(json!({
        "metadata": {"name": "legacy"},
        "spec": {"replicas": 4, "selector": {"app": "legacy"}, "template": {
            "metadata": {"labels": {"app": "legacy"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    rcs.create(&PostParams::default(), &rc).await.unwrap();
    let first = eventually("four pods", || async {
        let p = pods_of(&pods, "legacy").await;
        (p.len() == 4).then_some(p)
    })
    .await;
    assert_eq!(
        controller_of(&first[0].metadata).unwrap().kind,
        "ReplicationController"
    );

    // A second controller manager on the same cluster (a restart) finds
    // everything in place and creates nothing.
    let second = crate::Context::new(cluster.client.clone());
    let task = start(&second);
    second.informers.start();
    let handle = tokio::spawn(task);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = pods_of(&pods, "legacy").await;
    assert_eq!(after.len(), 4);
    let mut before: Vec<_> = first.iter().map(|p| p.metadata.uid.clone()).collect();
    let mut now: Vec<_> = after.iter().map(|p| p.metadata.uid.clone()).collect();
    before.sort();
    now.sort();
    assert_eq!(before, now, "the same pods");
    handle.abort();
}
