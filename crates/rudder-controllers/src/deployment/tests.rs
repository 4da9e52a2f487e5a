use super::*;
use crate::testing::{eventually, fake_kubelet, namespace, TestCluster};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, PostParams};

fn deployment(name: &str, replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    }))
    .unwrap()
}

async fn sets_of(api: &Api<ReplicaSet>, app: &str) -> Vec<ReplicaSet> {
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

fn image_of(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .unwrap()
        .template
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

/// Rolled out: every replica updated and available, old ones gone.
async fn rolled_out(api: &Api<Deployment>, name: &str) -> Option<Deployment> {
    let d = api.get(name).await.ok()?;
    let s = d.status.clone()?;
    let want = d.spec.as_ref()?.replicas?;
    (s.observed_generation >= d.metadata.generation
        && s.updated_replicas == Some(want)
        && s.replicas == Some(want)
        && s.available_replicas == Some(want))
    .then_some(d)
}

fn set_image(image: &str) -> Patch<serde_json::Value> {
    Patch::Strategic(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_stays_within_max_surge_and_can_be_undone() {
    let cluster = TestCluster::start().await;
    namespace(&cluster.client, "d").await;
    cluster.run_controllers(&["replicaset", "deployment"]);
    let _kubelet = fake_kubelet(&cluster.client, "d");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "d");
    let sets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "d");
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 4, "web:1", strategy),
        )
        .await
        .unwrap();
    let d = eventually("first rollout", || rolled_out(&deployments, "web")).await;
    let conditions = d.status.unwrap().conditions.unwrap();
    let progressing = conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        progressing.reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    let first = sets_of(&sets, "web").await;
    assert_eq!(first.len(), 1);
    let hash = first[0].metadata.labels.as_ref().unwrap()[POD_TEMPLATE_HASH].clone();
    assert_eq!(
        first[0].metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_eq!(
        first[0].metadata.annotations.as_ref().unwrap()[REVISION],
        "1"
    );

    deployments
        .patch("web", &PatchParams::default(), &set_image("web:2"))
        .await
        .unwrap();
    // While it rolls, the ReplicaSets never ask for more than 4 + 1 pods.
    let mut peak = 0;
    loop {
        let total: i32 = sets_of(&sets, "web")
            .await
            .iter()
            .map(|rs| rs.spec.as_ref().unwrap().replicas.unwrap_or(0))
            .sum();
        peak = peak.max(total);
        if rolled_out(&deployments, "web").await.is_some()
            && sets_of(&sets, "web")
                .await
                .iter()
                .any(|rs| image_of(rs) == "web:2")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(peak <= 5, "maxSurge=1 allows 5 pods, saw {peak}");
    let after = sets_of(&sets, "web").await;
    assert_eq!(after.len(), 2);
    let old = after.iter().find(|rs| image_of(rs) == "web:1").unwrap();
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));
    let new = after.iter().find(|rs| image_of(rs) == "web:2").unwrap();
    assert_eq!(new.metadata.annotations.as_ref().unwrap()[REVISION], "2");

    // Undo the way kubectl does it: the old template back.
    deployments
        .patch("web", &PatchParams::default(), &set_image("web:1"))
        .await
        .unwrap();
    eventually("the old ReplicaSet is back under revision 3", || async {
        rolled_out(&deployments, "web").await?;
        let sets = sets_of(&sets, "web").await;
        let back = sets.iter().find(|rs| image_of(rs) == "web:1")?;
        let a = back.metadata.annotations.as_ref()?;
        (sets.len() == 2
            && a.get(REVISION)? == "3"
            && a.get("deployment.kubernetes.io/revision-history")? == "1"
            && back.spec.as_ref()?.replicas == Some(4))
        .then_some(())
    })
    .await;
    let d = deployments.get("web").await.unwrap();
    assert_eq!(d.metadata.annotations.unwrap()[REVISION], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deployment_scales_but_does_not_roll() {
    let cluster = TestCluster::start().await;
    namespace(&cluster.client, "d").await;
    cluster.run_controllers(&["replicaset", "deployment"]);
    let _kubelet = fake_kubelet(&cluster.client, "d");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "d");
    let sets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "d");
    deployments
        .create(
            &PostParams::default(),
            &deployment("api", 2, "api:1", json!({})),
        )
        .await
        .unwrap();
    eventually("rolled out", || rolled_out(&deployments, "api")).await;
    deployments
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .unwrap();
    deployments
        .patch("api", &PatchParams::default(), &set_image("api:2"))
        .await
        .unwrap();
    deployments
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    eventually(
        "paused: scaled in place, condition DeploymentPaused",
        || async {
            let d = deployments.get("api").await.ok()?;
            let paused = d.status.as_ref()?.conditions.as_ref()?.iter().any(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused")
            });
            let sets = sets_of(&sets, "api").await;
            (paused && sets.len() == 1 && sets[0].spec.as_ref()?.replicas == Some(3)).then_some(())
        },
    )
    .await;
    assert!(sets_of(&sets, "api")
        .await
        .iter()
        .all(|rs| image_of(rs) == "api:1"));
    deployments
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    eventually("resumed rollout completes on api:2", || async {
        rolled_out(&deployments, "api").await?;
        let sets = sets_of(&sets, "api").await;
        sets.iter()
            .any(|rs| image_of(rs) == "api:2" && rs.spec.as_ref().unwrap().replicas == Some(3))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_and_an_interrupted_rollout_converge_on_the_latest_template() {
    let cluster = TestCluster::start().await;
    namespace(&cluster.client, "d").await;
    cluster.run_controllers(&["replicaset", "deployment"]);
    let _kubelet = fake_kubelet(&cluster.client, "d");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "d");
    let sets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "d");
    deployments
        .create(
            &PostParams::default(),
            &deployment("db", 2, "db:1", json!({"type": "Recreate"})),
        )
        .await
        .unwrap();
    eventually("rolled out", || rolled_out(&deployments, "db")).await;
    // Two new templates in a row: the second wins.
    deployments
        .patch("db", &PatchParams::default(), &set_image("db:2"))
        .await
        .unwrap();
    deployments
        .patch("db", &PatchParams::default(), &set_image("db:3"))
        .await
        .unwrap();
    eventually("db:3 has every replica", || async {
        rolled_out(&deployments, "db").await?;
        let sets = sets_of(&sets, "db").await;
        let ok = sets.iter().all(|rs| {
            let r = rs.spec.as_ref().unwrap().replicas.unwrap_or(0);
            if image_of(rs) == "db:3" {
                r == 2
            } else {
                r == 0
            }
        });
        ok.then_some(())
    })
    .await;
}
