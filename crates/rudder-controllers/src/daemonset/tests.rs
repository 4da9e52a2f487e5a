//! The DaemonSet controller against a real in-process API server, with
//! Node objects created directly. No scheduler or kubelet runs: pods stay
//! unbound (pinned by affinity) and the tests mark them ready.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};

use super::*;
use crate::testing::{eventually, namespace, TestCluster};

async fn node(client: &Client, name: &str, labels: Value, taints: Value) {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &node).await.unwrap();
}

fn daemon_set(name: &str, extra_pod_spec: Value, strategy: Value) -> DaemonSet {
    let mut spec = json!({"containers": [{"name": "a", "image": "agent:1"}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_pod_spec.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"name": name}},
            "template": {"metadata": {"labels": {"name": name}}, "spec": spec},
            "updateStrategy": strategy,
        }
    }))
    .unwrap()
}

/// Node name → pods for it, of the DaemonSet `name` (not terminating).
async fn placement(pods: &Api<Pod>, name: &str) -> Vec<(String, Pod)> {
    let mut out: Vec<(String, Pod)> = pods
        .list(&ListParams::default().labels(&format!("name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (placement::target_node(&p).unwrap_or_default(), p))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn nodes_of(pods: &Api<Pod>, name: &str) -> Vec<String> {
    placement(pods, name)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

fn run_kubelet(client: Client, ns: &str) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        loop {
            if let Ok(list) = pods.list(&ListParams::default()).await {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_per_eligible_node_following_selectors_taints_and_node_changes() {
    let cluster = TestCluster::start().await;
    let client = cluster.client.clone();
    node(&client, "n1", json!({"role": "web"}), json!([])).await;
    node(&client, "n2", json!({"role": "web"}), json!([])).await;
    node(
        &client,
        "n3",
        json!({"role": "web"}),
        json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]),
    )
    .await;
    node(
        &client,
        "n4",
        json!({"role": "db"}),
        json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
    )
    .await;
    cluster.run_controllers(&["daemonset"]);
    namespace(&client, "wl").await;
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "wl");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "wl");
    let nodes: Api<Node> = Api::all(client.clone());
    let rolling = json!({"type": "RollingUpdate"});
    sets.create(
        &PostParams::default(),
        &daemon_set("agent", json!({}), rolling.clone()),
    )
    .await
    .unwrap();
    sets.create(
        &PostParams::default(),
        &daemon_set(
            "web",
            json!({"nodeSelector": {"role": "web"}}),
            rolling.clone(),
        ),
    )
    .await
    .unwrap();

    // The tainted node is left out; the cordoned one is not.
    eventually("agent on n1, n2, n4", || async {
        (nodes_of(&pods, "agent").await == ["n1", "n2", "n4"]).then_some(())
    })
    .await;
    eventually("web on the web nodes it tolerates", || async {
        (nodes_of(&pods, "web").await == ["n1", "n2"]).then_some(())
    })
    .await;
    let status = eventually("agent's status", || async {
        let s = sets.get_status("agent").await.unwrap().status?;
        (s.desired_number_scheduled == 3 && s.current_number_scheduled == 3).then_some(s)
    })
    .await;
    assert_eq!(status.number_misscheduled, 0);
    assert_eq!(status.number_ready, 0);
    assert_eq!(status.number_unavailable, Some(3));
    assert_eq!(status.observed_generation, Some(1));

    let (_, pod) = placement(&pods, "agent").await.remove(0);
    let spec = pod.spec.as_ref().unwrap();
    assert!(
        spec.node_name.as_deref().unwrap_or("").is_empty(),
        "the scheduler binds"
    );
    let tolerations: BTreeSet<(String, String)> = spec
        .tolerations
        .iter()
        .flatten()
        .map(|t| {
            (
                t.key.clone().unwrap_or_default(),
                t.effect.clone().unwrap_or_default(),
            )
        })
        .collect();
    for (key, effect) in [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        assert!(tolerations.contains(&(key.into(), effect.into())), "{key}");
    }
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "wl");
    let history = revisions
        .list(&ListParams::default().labels("name=agent"))
        .await
        .unwrap()
        .items;
    assert_eq!(history.len(), 1);
    let hash = history[0].labels()[POD_REVISION_LABEL].clone();
    assert_eq!(history[0].name_any(), format!("agent-{hash}"));
    assert_eq!(pod.labels()[POD_REVISION_LABEL], hash);
    assert_eq!(pod.labels()[TEMPLATE_GENERATION_LABEL], "1");

    // A toleration extends it to the tainted node.
    sets.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"template": {"spec": {"tolerations": [
            {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}}}})),
    )
    .await
    .unwrap();
    eventually("agent on every node", || async {
        let placed = placement(&pods, "agent").await;
        (placed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>() == ["n1", "n2", "n3", "n4"])
            .then_some(())
    })
    .await;

    // New nodes get a pod, removed ones lose it, a NoExecute taint evicts.
    node(&client, "n5", json!({"role": "web"}), json!([])).await;
    nodes.delete("n4", &DeleteParams::default()).await.unwrap();
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [{"key": "maint", "effect": "NoExecute"}]}})),
        )
        .await
        .unwrap();
    eventually("web follows the nodes", || async {
        (nodes_of(&pods, "web").await == ["n2", "n5"]).then_some(())
    })
    .await;
    eventually("agent follows the nodes", || async {
        let placed = nodes_of(&pods, "agent").await;
        (placed.len() == 3
            && placed.iter().collect::<BTreeSet<_>>().len() == 3
            && !placed.contains(&"n1".into())
            && !placed.contains(&"n4".into())
            && placed.contains(&"n5".into()))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_keeps_max_unavailable_and_undo_renumbers_history() {
    let cluster = TestCluster::start().await;
    let client = cluster.client.clone();
    for i in 1..=5 {
        node(&client, &format!("n{i}"), json!({}), json!([])).await;
    }
    cluster.run_controllers(&["daemonset"]);
    namespace(&client, "wl").await;
    let kubelet = run_kubelet(client.clone(), "wl");
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "wl");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "wl");
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "wl");
    sets.create(
        &PostParams::default(),
        &daemon_set(
            "agent",
            json!({}),
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "40%"}}),
        ),
    )
    .await
    .unwrap();
    eventually("five available pods", || async {
        let s = sets.get_status("agent").await.unwrap().status?;
        (s.number_available == Some(5)).then_some(())
    })
    .await;

    sets.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "agent:2"}]}}}})),
    )
    .await
    .unwrap();
    // 40% of 5 rounds up to 2: never fewer than 3 nodes with a ready pod.
    let worst = Arc::new(AtomicUsize::new(0));
    let status = eventually("the rollout completes", || {
        let (pods, sets, worst) = (pods.clone(), sets.clone(), worst.clone());
        async move {
            let placed = placement(&pods, "agent").await;
            let ready: BTreeSet<&String> = placed
                .iter()
                .filter(|(_, p)| crate::util::is_pod_ready(p))
                .map(|(n, _)| n)
                .collect();
            worst.fetch_max(5 - ready.len(), Ordering::SeqCst);
            let s = sets.get_status("agent").await.unwrap().status?;
            (s.updated_number_scheduled == Some(5)
                && s.number_available == Some(5)
                && s.observed_generation == Some(2)
                && placed.len() == 5)
                .then_some(s)
        }
    })
    .await;
    let worst = worst.load(Ordering::SeqCst);
    assert!(worst <= 2, "{worst} nodes were unavailable at once");
    assert_eq!(status.number_unavailable.unwrap_or(0), 0);
    let images: BTreeSet<String> = placement(&pods, "agent")
        .await
        .iter()
        .map(|(_, p)| {
            p.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        })
        .collect();
    assert_eq!(images.into_iter().collect::<Vec<_>>(), ["agent:2"]);

    let mut history = revisions
        .list(&ListParams::default().labels("name=agent"))
        .await
        .unwrap()
        .items;
    history.sort_by_key(|r| r.revision);
    assert_eq!(
        history.iter().map(|r| r.revision).collect::<Vec<_>>(),
        [1, 2]
    );
    let first = history[0].clone();
    let data = first.data.clone().unwrap().0;
    assert_eq!(data["spec"]["template"]["$patch"], "replace");
    assert_eq!(
        data["spec"]["template"]["spec"]["containers"][0]["image"],
        "agent:1"
    );

    // `kubectl rollout undo`: the previous revision's data, applied as a
    // strategic merge patch.
    sets.patch("agent", &PatchParams::default(), &Patch::Strategic(data))
        .await
        .unwrap();
    eventually("the first template rolls back out", || async {
        let s = sets.get_status("agent").await.unwrap().status?;
        let placed = placement(&pods, "agent").await;
        (s.observed_generation == Some(3)
            && s.updated_number_scheduled == Some(5)
            && s.number_available == Some(5)
            && placed
                .iter()
                .all(|(_, p)| p.labels()[POD_REVISION_LABEL] == first.labels()[POD_REVISION_LABEL]))
        .then_some(())
    })
    .await;
    let renumbered = revisions.get(&first.name_any()).await.unwrap();
    assert_eq!(renumbered.revision, 3);
    assert_eq!(
        revisions
            .list(&ListParams::default().labels("name=agent"))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    kubelet.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_daemon_pods_are_replaced_and_surge_starts_new_pods_first() {
    let cluster = TestCluster::start().await;
    let client = cluster.client.clone();
    node(&client, "n1", json!({}), json!([])).await;
    node(&client, "n2", json!({}), json!([])).await;
    cluster.run_controllers(&["daemonset"]);
    namespace(&client, "wl").await;
    let kubelet = run_kubelet(client.clone(), "wl");
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "wl");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "wl");
    sets.create(
        &PostParams::default(),
        &daemon_set(
            "agent",
            json!({}),
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
        ),
    )
    .await
    .unwrap();
    eventually("two available pods", || async {
        let s = sets.get_status("agent").await.unwrap().status?;
        (s.number_available == Some(2)).then_some(())
    })
    .await;

    let (_, victim) = placement(&pods, "agent").await.remove(0);
    pods.patch_status(
        &victim.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed", "conditions": []}})),
    )
    .await
    .unwrap();
    eventually("the failed pod is replaced", || async {
        let placed = placement(&pods, "agent").await;
        (placed.len() == 2
            && placed.iter().all(|(_, p)| p.uid() != victim.uid())
            && placed.iter().all(|(_, p)| crate::util::is_pod_ready(p)))
        .then_some(())
    })
    .await;

    // maxSurge=1, maxUnavailable=0: a node never lacks a ready pod.
    sets.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "agent:2"}]}}}})),
    )
    .await
    .unwrap();
    let surged = Arc::new(AtomicBool::new(false));
    let lacked = Arc::new(AtomicBool::new(false));
    eventually("the surge rollout completes", || {
        let (pods, sets) = (pods.clone(), sets.clone());
        let (surged, lacked) = (surged.clone(), lacked.clone());
        async move {
            let placed = placement(&pods, "agent").await;
            let ready: BTreeSet<&String> = placed
                .iter()
                .filter(|(_, p)| crate::util::is_pod_ready(p))
                .map(|(n, _)| n)
                .collect();
            lacked.fetch_or(ready.len() < 2, Ordering::SeqCst);
            surged.fetch_or(placed.len() > 2, Ordering::SeqCst);
            let s = sets.get_status("agent").await.unwrap().status?;
            (s.updated_number_scheduled == Some(2)
                && s.number_available == Some(2)
                && s.observed_generation == Some(2)
                && placed.len() == 2
                && placed.iter().all(|(_, p)| {
                    p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("agent:2")
                }))
            .then_some(())
        }
    })
    .await;
    assert!(
        !lacked.load(Ordering::SeqCst),
        "a node was left without a ready pod"
    );
    kubelet.abort();
}
