use super::*;
use crate::testing::{eventually, namespace, TestCluster};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::ResourceExt;

async fn configmap(
    api: &Api<ConfigMap>,
    name: &str,
    owners: &[&ConfigMap],
    block: bool,
) -> ConfigMap {
    let refs: Vec<_> = owners
        .iter()
        .map(|o| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o.name_any(), "uid": o.uid(), "blockOwnerDeletion": block}))
        .collect();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": refs}}))
            .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap()
}

async fn gone(api: &Api<ConfigMap>, name: &str) -> Option<()> {
    api.get_opt(name).await.unwrap().is_none().then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_deletion_takes_the_dependents_and_spares_shared_ones() {
    let cluster = TestCluster::start().await;
    namespace(&cluster.client, "gc").await;
    cluster.run_controllers(&["garbagecollector"]);
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "gc");
    let owner = configmap(&api, "owner", &[], false).await;
    let other = configmap(&api, "other", &[], false).await;
    configmap(&api, "child", &[&owner], false).await;
    configmap(&api, "shared", &[&owner, &other], false).await;
    let grandchild_parent = api.get("child").await.unwrap();
    configmap(&api, "grandchild", &[&grandchild_parent], false).await;

    api.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    eventually("the child and grandchild go", || async {
        gone(&api, "child").await?;
        gone(&api, "grandchild").await
    })
    .await;
    eventually("the shared one stays, without the dead owner", || async {
        let shared = api.get("shared").await.ok()?;
        let refs = shared.metadata.owner_references?;
        (refs.len() == 1 && refs[0].name == "other").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_of_an_owner_that_never_existed_is_collected() {
    let cluster = TestCluster::start().await;
    namespace(&cluster.client, "gc").await;
    cluster.run_controllers(&["garbagecollector"]);
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "gc");
    let phantom: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "phantom", "uid": "00000000-0000-0000-0000-000000000000"}}),
    )
    .unwrap();
    configmap(&api, "lost", &[&phantom], false).await;
    eventually("the dependent of a missing owner goes", || {
        gone(&api, "lost")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_deletion_keeps_dependents_and_drops_the_reference() {
    let cluster = TestCluster::start().await;
    namespace(&cluster.client, "gc").await;
    cluster.run_controllers(&["garbagecollector"]);
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "gc");
    let owner = configmap(&api, "owner", &[], false).await;
    configmap(&api, "child", &[&owner], true).await;
    api.delete("owner", &DeleteParams::orphan()).await.unwrap();
    eventually("the owner goes", || gone(&api, "owner")).await;
    let child = api.get("child").await.unwrap();
    assert!(
        child.metadata.owner_references.is_none(),
        "{:?}",
        child.metadata.owner_references
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletion_removes_dependents_first() {
    let cluster = TestCluster::start().await;
    namespace(&cluster.client, "gc").await;
    // A finalizer on the dependent holds it, so the order can be seen.
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "gc");
    let owner = configmap(&api, "owner", &[], false).await;
    configmap(&api, "child", &[&owner], true).await;
    api.patch(
        "child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["test/hold"]}})),
    )
    .await
    .unwrap();
    cluster.run_controllers(&["garbagecollector"]);
    api.delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("the child is being deleted", || async {
        api.get("child")
            .await
            .ok()?
            .metadata
            .deletion_timestamp
            .map(|_| ())
    })
    .await;
    let owner_now = api.get("owner").await.unwrap();
    assert!(
        owner_now
            .finalizers()
            .iter()
            .any(|f| f == "foregroundDeletion"),
        "the owner waits"
    );
    api.patch(
        "child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("then the owner goes", || gone(&api, "owner")).await;
}
