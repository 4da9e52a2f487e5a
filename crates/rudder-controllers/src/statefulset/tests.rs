//! The StatefulSet controller against a real in-process API server. No
//! kubelet runs: the tests mark pods Running and Ready through the
//! `status` subresource, and hold pods in Terminating with a finalizer.

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};

use super::*;
use crate::testing::{eventually, namespace, TestCluster};

const HOLD: &str = "test.rudder.dev/hold";

fn stateful_set(name: &str, replicas: i32, policy: &str, extra_spec: Value) -> StatefulSet {
    let mut spec = json!({
        "serviceName": "nginx",
        "replicas": replicas,
        "podManagementPolicy": policy,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "nginx", "image": "web:1.0"}]}
        },
        "volumeClaimTemplates": [{
            "metadata": {"name": "www"},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}
        }]
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

async fn mark_ready(pods: &Api<Pod>, name: &str) {
    let now = rudder_apimachinery::time::now_rfc3339();
    let status = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

async fn pod_names(pods: &Api<Pod>, app: &str) -> Vec<String> {
    let mut names: Vec<String> = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// Marks every pending pod of `app` ready, as a kubelet would run it.
fn run_kubelet(client: Client, ns: &str, app: &str) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let selector = format!("app={app}");
    tokio::spawn(async move {
        loop {
            if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
                for pod in list.items {
                    if crate::util::phase(&pod) == "Pending"
                        && pod.metadata.deletion_timestamp.is_none()
                    {
                        let now = rudder_apimachinery::time::now_rfc3339();
                        let status = json!({"status": {"phase": "Running", "conditions": [
                            {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
                        let _ = pods
                            .patch_status(
                                &pod.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(status),
                            )
                            .await;
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
}

async fn set_finalizers(pods: &Api<Pod>, name: &str, finalizers: Value) {
    pods.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
    )
    .await
    .unwrap();
}

async fn status_of(
    sets: &Api<StatefulSet>,
    name: &str,
) -> k8s_openapi::api::apps::v1::StatefulSetStatus {
    sets.get_status(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_come_up_in_order_with_identity_and_claims_and_go_from_the_top() {
    let cluster = TestCluster::start().await;
    cluster.run_controllers(&["statefulset"]);
    namespace(&cluster.client, "wl").await;
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), "wl");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "wl");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), "wl");
    sets.create(
        &PostParams::default(),
        &stateful_set("web", 3, "OrderedReady", json!({})),
    )
    .await
    .unwrap();

    for i in 0..3 {
        let name = format!("web-{i}");
        eventually(&format!("{name} is created"), || async {
            pods.get_opt(&name).await.unwrap()
        })
        .await;
        // The status written after the pod was seen: the controller has
        // decided, and waits for the pod to be ready before the next one.
        eventually("the status counts the new member", || async {
            (status_of(&sets, "web").await.replicas == i + 1).then_some(())
        })
        .await;
        assert_eq!(
            pod_names(&pods, "web").await.len(),
            i as usize + 1,
            "no member before its predecessor is ready"
        );
        set_finalizers(&pods, &name, json!([HOLD])).await;
        mark_ready(&pods, &name).await;
    }
    eventually("three ready members", || async {
        let s = status_of(&sets, "web").await;
        (s.ready_replicas == Some(3) && s.available_replicas == Some(3)).then_some(s)
    })
    .await;
    let status = status_of(&sets, "web").await;
    assert_eq!(status.current_replicas, Some(3));
    assert_eq!(status.updated_replicas, Some(3));
    assert_eq!(status.current_revision, status.update_revision);
    assert_eq!(status.observed_generation, Some(1));

    let web1 = pods.get("web-1").await.unwrap();
    let spec = web1.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
    assert_eq!(web1.labels()[POD_NAME_LABEL], "web-1");
    assert_eq!(web1.labels()[POD_INDEX_LABEL], "1");
    assert_eq!(
        web1.labels()["controller-revision-hash"],
        status.update_revision.clone().unwrap()
    );
    let volume = &spec.volumes.as_ref().unwrap()[0];
    assert_eq!(volume.name, "www");
    assert_eq!(
        volume.persistent_volume_claim.as_ref().unwrap().claim_name,
        "www-web-1"
    );
    let owner = controller_of(&web1.metadata).unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("StatefulSet", "web")
    );
    let claim_list = claims.list(&ListParams::default()).await.unwrap().items;
    let mut claim_names: Vec<_> = claim_list.iter().map(|c| c.name_any()).collect();
    claim_names.sort();
    assert_eq!(claim_names, ["www-web-0", "www-web-1", "www-web-2"]);
    assert!(claim_list.iter().all(|c| c.labels()["app"] == "web"
        && c.metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty())));

    // Scale down: the highest ordinal goes first, and the next waits until
    // it is gone.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually("web-2 is terminating", || async {
        pods.get("web-2")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .map(|_| ())
    })
    .await;
    eventually("the status sees web-2 terminating", || async {
        (status_of(&sets, "web").await.current_replicas == Some(2)).then_some(())
    })
    .await;
    assert!(pods
        .get("web-1")
        .await
        .unwrap()
        .metadata
        .deletion_timestamp
        .is_none());
    set_finalizers(&pods, "web-2", json!(null)).await;
    eventually("web-1 is terminating once web-2 is gone", || async {
        pods.get("web-1")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .map(|_| ())
    })
    .await;
    set_finalizers(&pods, "web-1", json!(null)).await;
    eventually("only web-0 is left", || async {
        (pod_names(&pods, "web").await == ["web-0"]).then_some(())
    })
    .await;
    assert_eq!(
        claims
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );

    // A deleted member comes back under its name, only once the old pod is
    // gone.
    let old = pods.get("web-0").await.unwrap();
    pods.delete("web-0", &DeleteParams::default())
        .await
        .unwrap();
    eventually("web-0 is terminating", || async {
        pods.get("web-0")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .map(|_| ())
    })
    .await;
    assert_eq!(pods.get("web-0").await.unwrap().uid(), old.uid());
    set_finalizers(&pods, "web-0", json!(null)).await;
    let new = eventually("web-0 comes back", || async {
        pods.get_opt("web-0")
            .await
            .unwrap()
            .filter(|p| p.uid() != old.uid())
    })
    .await;
    assert_eq!(new.spec.unwrap().hostname.as_deref(), Some("web-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_respects_the_partition_and_rollback_reuses_history() {
    let cluster = TestCluster::start().await;
    cluster.run_controllers(&["statefulset"]);
    namespace(&cluster.client, "wl").await;
    let kubelet = run_kubelet(cluster.client.clone(), "wl", "db");
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), "wl");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "wl");
    let revisions: Api<ControllerRevision> = Api::namespaced(cluster.client.clone(), "wl");
    sets.create(
        &PostParams::default(),
        &stateful_set("db", 3, "Parallel", json!({})),
    )
    .await
    .unwrap();
    let first = eventually("three ready members", || async {
        let s = status_of(&sets, "db").await;
        (s.ready_replicas == Some(3)).then_some(s)
    })
    .await;
    let first_revision = first.current_revision.clone().unwrap();

    let image = |image: &str| json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": image}]}}}});
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"type": "RollingUpdate",
            "rollingUpdate": {"partition": 2}}}})),
    )
    .await
    .unwrap();
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Strategic(image("web:2.0")),
    )
    .await
    .unwrap();
    let status = eventually("db-2 is updated and ready", || async {
        let s = status_of(&sets, "db").await;
        (s.updated_replicas == Some(1)
            && s.ready_replicas == Some(3)
            && s.current_replicas == Some(2))
        .then_some(s)
    })
    .await;
    let second_revision = status.update_revision.clone().unwrap();
    assert_ne!(second_revision, first_revision);
    assert_eq!(
        status.current_revision.as_deref(),
        Some(first_revision.as_str())
    );
    let image_of = |p: &Pod| {
        p.spec.as_ref().unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    };
    assert_eq!(image_of(&pods.get("db-2").await.unwrap()), "web:2.0");
    assert_eq!(image_of(&pods.get("db-1").await.unwrap()), "web:1.0");
    assert_eq!(image_of(&pods.get("db-0").await.unwrap()), "web:1.0");

    // Partition 0: the rest follow, and the update becomes current.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    eventually("every member is updated", || async {
        let s = status_of(&sets, "db").await;
        (s.updated_replicas == Some(3)
            && s.ready_replicas == Some(3)
            && s.current_revision.as_deref() == Some(second_revision.as_str()))
        .then_some(s)
    })
    .await;
    for i in 0..3 {
        assert_eq!(
            image_of(&pods.get(&format!("db-{i}")).await.unwrap()),
            "web:2.0"
        );
    }
    let history = revisions
        .list(&ListParams::default().labels("app=db"))
        .await
        .unwrap()
        .items;
    assert_eq!(history.len(), 2);
    let r = history
        .iter()
        .find(|r| r.name_any() == second_revision)
        .unwrap();
    assert_eq!(r.revision, 2);
    assert_eq!(
        r.data.as_ref().unwrap().0["spec"]["template"]["$patch"],
        "replace"
    );
    assert!(r.labels().contains_key(crate::history::REVISION_HASH_LABEL));

    // Back to the first template: its revision is renumbered, not copied.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Strategic(image("web:1.0")),
    )
    .await
    .unwrap();
    eventually("the first revision is current again", || async {
        let s = status_of(&sets, "db").await;
        (s.current_revision.as_deref() == Some(first_revision.as_str())
            && s.updated_replicas == Some(3)
            && s.ready_replicas == Some(3))
        .then_some(s)
    })
    .await;
    let history = revisions
        .list(&ListParams::default().labels("app=db"))
        .await
        .unwrap()
        .items;
    assert_eq!(history.len(), 2);
    let r = history
        .iter()
        .find(|r| r.name_any() == first_revision)
        .unwrap();
    assert_eq!(r.revision, 3);
    kubelet.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_follow_the_retention_policy_and_orphans_are_adopted() {
    let cluster = TestCluster::start().await;
    cluster.run_controllers(&["statefulset"]);
    namespace(&cluster.client, "wl").await;
    let kubelet = run_kubelet(cluster.client.clone(), "wl", "kv");
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), "wl");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "wl");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), "wl");
    let policy = json!({"persistentVolumeClaimRetentionPolicy":
        {"whenDeleted": "Delete", "whenScaled": "Delete"}});
    let set = sets
        .create(
            &PostParams::default(),
            &stateful_set("kv", 2, "Parallel", policy),
        )
        .await
        .unwrap();
    eventually("both claims are owned by the set", || async {
        let list = claims.list(&ListParams::default()).await.unwrap().items;
        (list.len() == 2
            && list.iter().all(|c| {
                c.metadata.owner_references.as_ref().is_some_and(|r| {
                    r.len() == 1 && r[0].kind == "StatefulSet" && r[0].uid == set.uid().unwrap()
                })
            }))
        .then_some(())
    })
    .await;
    eventually("two ready members", || async {
        (status_of(&sets, "kv").await.ready_replicas == Some(2)).then_some(())
    })
    .await;

    // Scaled away, kv-1 owns its claim, so the claim goes with it.
    let kv1 = pods.get("kv-1").await.unwrap();
    sets.patch(
        "kv",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually("kv-1 is gone", || async {
        pods.get_opt("kv-1").await.unwrap().is_none().then_some(())
    })
    .await;
    let claim = claims.get("www-kv-1").await.unwrap();
    let refs = claim.metadata.owner_references.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(
        (refs[0].kind.as_str(), refs[0].uid.as_str()),
        ("Pod", kv1.uid().unwrap().as_str())
    );

    // Scaling up again waits while the claim still belongs to the old pod
    // (the garbage collector deletes it; here the test does, and releases
    // the protection finalizer the pvc-protection controller would).
    sets.patch(
        "kv",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .unwrap();
    eventually("the status sees two replicas wanted", || async {
        (sets.get("kv").await.unwrap().status?.observed_generation == Some(3)).then_some(())
    })
    .await;
    assert!(pods.get_opt("kv-1").await.unwrap().is_none());
    let old_claim = claims.get("www-kv-1").await.unwrap().uid();
    claims
        .delete("www-kv-1", &DeleteParams::default())
        .await
        .unwrap();
    claims
        .patch(
            "www-kv-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .ok();
    eventually("kv-1 comes back with a fresh claim", || async {
        let pod = pods.get_opt("kv-1").await.unwrap()?;
        let claim = claims.get_opt("www-kv-1").await.unwrap()?;
        (claim.uid() != old_claim && pod.uid() != kv1.uid()).then_some(())
    })
    .await;

    // An orphan named after the set and matching its selector is adopted;
    // one that stops matching is released.
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "kv-7", "labels": {"app": "kv"}},
        "spec": {"containers": [{"name": "c", "image": "x"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    eventually(
        "the orphan is adopted (and, out of range, removed)",
        || async {
            match pods.get_opt("kv-7").await.unwrap() {
                None => Some(()),
                Some(p) => controller_of(&p.metadata).map(|_| ()),
            }
        },
    )
    .await;
    pods.patch(
        "kv-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    eventually("kv-0 is released", || async {
        controller_of(&pods.get("kv-0").await.unwrap().metadata)
            .is_none()
            .then_some(())
    })
    .await;
    kubelet.abort();
}
