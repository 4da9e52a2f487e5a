//! The storage controllers against a real in-process API server.

use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::fixtures::{class, pv, pvc};
use super::*;
use crate::testing::{eventually, TestCluster};

async fn create<K>(api: &Api<K>, obj: &K) -> K
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.create(&PostParams::default(), obj).await.unwrap()
}

fn apis(client: &Client) -> (Api<PersistentVolume>, Api<PersistentVolumeClaim>) {
    (
        Api::all(client.clone()),
        Api::namespaced(client.clone(), "default"),
    )
}

async fn bound_claim(claims: &Api<PersistentVolumeClaim>, name: &str) -> PersistentVolumeClaim {
    eventually(&format!("claim {name} bound"), || async {
        claims
            .get(name)
            .await
            .ok()
            .filter(|c| claim_phase(c) == "Bound")
    })
    .await
}

async fn volume_in_phase(
    volumes: &Api<PersistentVolume>,
    name: &str,
    phase: &str,
) -> PersistentVolume {
    eventually(&format!("volume {name} {phase}"), || async {
        volumes
            .get(name)
            .await
            .ok()
            .filter(|v| volume_phase(v) == phase)
    })
    .await
}

async fn event_reasons(client: &Client, object: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(object))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_bind_to_the_smallest_fitting_volume_on_both_sides() {
    let cluster = TestCluster::start().await;
    let (volumes, claims) = apis(&cluster.client);
    create(&volumes, &pv("big", "5Gi", json!({}))).await;
    create(&volumes, &pv("small", "2Gi", json!({}))).await;
    create(&volumes, &pv("too-small", "500Mi", json!({}))).await;
    create(
        &volumes,
        &pv(
            "gold",
            "10Gi",
            json!({"metadata": {"labels": {"tier": "gold"}}}),
        ),
    )
    .await;
    create(
        &volumes,
        &pv(
            "promised",
            "10Gi",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "mine"}}}),
        ),
    )
    .await;
    create(&volumes, &pv("named", "3Gi", json!({}))).await;
    cluster.run_controllers(&["persistentvolume-binder"]);
    // As in Kubernetes, only Available volumes are matched: let the
    // binder mark them first.
    for name in ["big", "small", "too-small", "gold", "promised", "named"] {
        volume_in_phase(&volumes, name, "Available").await;
    }

    create(
        &claims,
        &pvc("plain", json!({"spec": {"storageClassName": ""}})),
    )
    .await;
    let plain = bound_claim(&claims, "plain").await;
    assert_eq!(claim_volume_name(&plain), Some("small"));
    assert_eq!(annotation(&plain.metadata, ANN_BIND_COMPLETED), Some("yes"));
    assert_eq!(
        annotation(&plain.metadata, ANN_BOUND_BY_CONTROLLER),
        Some("yes")
    );
    let status = plain.status.clone().unwrap();
    assert_eq!(status.capacity.unwrap()["storage"].0, "2Gi");
    assert_eq!(status.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
    let small = volume_in_phase(&volumes, "small", "Bound").await;
    let reference = claim_ref(&small).unwrap();
    assert_eq!(reference.uid, plain.metadata.uid);
    assert_eq!(reference.name.as_deref(), Some("plain"));
    assert_eq!(
        annotation(&small.metadata, ANN_BOUND_BY_CONTROLLER),
        Some("yes")
    );

    // A selector picks by label; a volume pre-bound by the user goes to
    // its claim and keeps no bound-by-controller mark.
    create(&claims, &pvc("picky", json!({"spec": {"storageClassName": "", "selector": {"matchLabels": {"tier": "gold"}}}}))).await;
    assert_eq!(
        claim_volume_name(&bound_claim(&claims, "picky").await),
        Some("gold")
    );
    create(
        &claims,
        &pvc("mine", json!({"spec": {"storageClassName": ""}})),
    )
    .await;
    assert_eq!(
        claim_volume_name(&bound_claim(&claims, "mine").await),
        Some("promised")
    );
    let promised = volume_in_phase(&volumes, "promised", "Bound").await;
    assert_eq!(
        annotation(&promised.metadata, ANN_BOUND_BY_CONTROLLER),
        None
    );

    // A claim naming its volume gets it, and is not marked bound by us.
    create(
        &claims,
        &pvc(
            "chooser",
            json!({"spec": {"storageClassName": "", "volumeName": "named"}}),
        ),
    )
    .await;
    let chooser = bound_claim(&claims, "chooser").await;
    assert_eq!(annotation(&chooser.metadata, ANN_BOUND_BY_CONTROLLER), None);
    assert_eq!(
        claim_ref(&volume_in_phase(&volumes, "named", "Bound").await)
            .unwrap()
            .uid,
        chooser.metadata.uid
    );

    // Nothing fits: Pending, and the user is told.
    create(&claims, &pvc("huge", json!({"spec": {"storageClassName": "", "resources": {"requests": {"storage": "1Ti"}}}}))).await;
    eventually("a FailedBinding event", || async {
        event_reasons(&cluster.client, "huge")
            .await
            .contains(&"FailedBinding".to_owned())
            .then_some(())
    })
    .await;
    assert_eq!(claim_phase(&claims.get("huge").await.unwrap()), "Pending");
    assert_eq!(
        volume_phase(&volumes.get("big").await.unwrap()),
        "Available"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_volumes_follow_their_reclaim_policy_and_protection() {
    let cluster = TestCluster::start().await;
    let (volumes, claims) = apis(&cluster.client);
    create(&volumes, &pv("kept", "1Gi", json!({"spec": {"persistentVolumeReclaimPolicy": "Retain", "storageClassName": "keep"}}))).await;
    create(&volumes, &pv("static-delete", "1Gi", json!({"spec": {"persistentVolumeReclaimPolicy": "Delete", "storageClassName": "drop"}}))).await;
    cluster.run_controllers(&["persistentvolume-binder", "pvc-protection", "pv-protection"]);
    create(
        &claims,
        &pvc("keep", json!({"spec": {"storageClassName": "keep"}})),
    )
    .await;
    create(
        &claims,
        &pvc("drop", json!({"spec": {"storageClassName": "drop"}})),
    )
    .await;
    bound_claim(&claims, "keep").await;
    bound_claim(&claims, "drop").await;

    // A claim in use by a running pod outlives its deletion until the pod
    // is done.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "user"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "keep"}}]}
    }))
    .unwrap();
    create(&pods, &pod).await;
    claims
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    // A bound volume outlives its deletion too.
    volumes
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    let deleting = eventually("the claim marked for deletion", || async {
        claims
            .get("keep")
            .await
            .ok()
            .filter(|c| c.metadata.deletion_timestamp.is_some())
    })
    .await;
    assert!(has_finalizer(&deleting.metadata, PVC_PROTECTION_FINALIZER));
    assert!(volumes
        .get("kept")
        .await
        .unwrap()
        .metadata
        .deletion_timestamp
        .is_some());
    assert_eq!(volume_phase(&volumes.get("kept").await.unwrap()), "Bound");

    pods.patch_status(
        "user",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap();
    eventually("the claim gone once its pod finished", || async {
        claims
            .get_opt("keep")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // Retain: Released, then (being deleted, no longer Bound) gone.
    eventually("the retained volume released and removed", || async {
        volumes
            .get_opt("kept")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    // Delete on a static volume: no plugin can delete its storage.
    claims
        .delete("drop", &DeleteParams::default())
        .await
        .unwrap();
    let failed = volume_in_phase(&volumes, "static-delete", "Failed").await;
    assert_eq!(
        failed.status.unwrap().message.as_deref(),
        Some("error getting deleter volume plugin for volume \"static-delete\": no deletable volume plugin matched")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_consumer_claims_wait_for_the_scheduler() {
    let cluster = TestCluster::start().await;
    let (volumes, claims) = apis(&cluster.client);
    let classes: Api<StorageClass> = Api::all(cluster.client.clone());
    create(
        &classes,
        &class("local", NO_PROVISIONER, "WaitForFirstConsumer"),
    )
    .await;
    create(&volumes, &pv("local-a", "1Gi", json!({"spec": {"storageClassName": "local", "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}]}}}}))).await;
    cluster.run_controllers(&["persistentvolume-binder"]);
    create(
        &claims,
        &pvc("data", json!({"spec": {"storageClassName": "local"}})),
    )
    .await;
    eventually("a WaitForFirstConsumer event", || async {
        event_reasons(&cluster.client, "data")
            .await
            .contains(&"WaitForFirstConsumer".to_owned())
            .then_some(())
    })
    .await;
    assert_eq!(claim_volume_name(&claims.get("data").await.unwrap()), None);
    assert_eq!(
        volume_phase(&volumes.get("local-a").await.unwrap()),
        "Available"
    );

    // The scheduler pre-binds the volume it chose on the node; the
    // binder completes the binding.
    let claim = claims.get("data").await.unwrap();
    volumes
        .patch(
            "local-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"claimRef": reference_to(&claim)}})),
        )
        .await
        .unwrap();
    assert_eq!(
        claim_volume_name(&bound_claim(&claims, "data").await),
        Some("local-a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_path_volumes_are_provisioned_on_the_selected_node_and_deleted() {
    let cluster = TestCluster::start().await;
    let (volumes, claims) = apis(&cluster.client);
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {
        "name": "n1", "labels": {"kubernetes.io/hostname": "n1-host"},
        "annotations": {local_path::ANN_STORAGE_DIR: "/srv/agent/storage"}}}))
    .unwrap();
    create(&nodes, &node).await;
    // Made before the default class exists: given it when it appears.
    let early = create(&claims, &pvc("www-web-0", json!({}))).await;
    assert!(!claim_has_class(&early));
    cluster.run_controllers(&[
        "persistentvolume-binder",
        "local-path-provisioner",
        "pvc-protection",
        "pv-protection",
    ]);
    let classes: Api<StorageClass> = Api::all(cluster.client.clone());
    let class = eventually("the local-path class", || async {
        classes.get_opt(local_path::CLASS_NAME).await.unwrap()
    })
    .await;
    assert!(is_default_class(&class));
    assert_eq!(class.provisioner, local_path::PROVISIONER);
    assert_eq!(
        class.volume_binding_mode.as_deref(),
        Some("WaitForFirstConsumer")
    );
    assert_eq!(class.reclaim_policy.as_deref(), Some("Delete"));
    let claim = eventually("the default class assigned", || async {
        claims
            .get("www-web-0")
            .await
            .ok()
            .filter(|c| claim_class(c) == local_path::CLASS_NAME)
    })
    .await;
    // Waiting for a consumer: no provisioner asked yet.
    assert_eq!(annotation(&claim.metadata, ANN_STORAGE_PROVISIONER), None);

    // The scheduler picks n1.
    claims
        .patch(
            "www-web-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ANN_SELECTED_NODE: "n1"}}})),
        )
        .await
        .unwrap();
    let bound = bound_claim(&claims, "www-web-0").await;
    let uid = bound.metadata.uid.clone().unwrap();
    assert_eq!(
        annotation(&bound.metadata, ANN_STORAGE_PROVISIONER),
        Some(local_path::PROVISIONER)
    );
    assert_eq!(
        annotation(&bound.metadata, ANN_BETA_STORAGE_PROVISIONER),
        Some(local_path::PROVISIONER)
    );
    let name = format!("pvc-{uid}");
    assert_eq!(claim_volume_name(&bound), Some(name.as_str()));
    let volume = volume_in_phase(&volumes, &name, "Bound").await;
    assert_eq!(
        annotation(&volume.metadata, ANN_DYNAMICALLY_PROVISIONED),
        Some(local_path::PROVISIONER)
    );
    let spec = volume.spec.clone().unwrap();
    assert_eq!(
        spec.host_path.unwrap().path,
        format!("/srv/agent/storage/pvc-{uid}_default_www-web-0")
    );
    let values = &spec
        .node_affinity
        .unwrap()
        .required
        .unwrap()
        .node_selector_terms[0]
        .match_expressions
        .clone()
        .unwrap()[0];
    assert_eq!(values.values, Some(vec!["n1-host".to_owned()]));
    let reasons = event_reasons(&cluster.client, "www-web-0").await;
    for reason in ["ExternalProvisioning", "ProvisioningSucceeded"] {
        assert!(
            reasons.contains(&reason.to_owned()),
            "{reason} in {reasons:?}"
        );
    }

    // Delete: the claim goes, the volume is released and deleted.
    claims
        .delete("www-web-0", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the provisioned volume deleted", || async {
        volumes
            .get_opt(&name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}
