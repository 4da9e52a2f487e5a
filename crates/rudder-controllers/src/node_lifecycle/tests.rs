//! The node lifecycle controllers against a real API server, with a
//! clock the tests move.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::clock::FakeClock;
use super::eviction::{TaintEvictionConfig, TaintEvictionController};
use super::podgc::{PodGcConfig, PodGcController};
use super::*;
use crate::testing::{eventually, namespace, TestCluster};

fn ready_condition(status: &str, heartbeat: Timestamp) -> serde_json::Value {
    json!({"type": "Ready", "status": status, "reason": "KubeletReady", "message": "kubelet is posting ready status",
           "lastHeartbeatTime": heartbeat.to_string(), "lastTransitionTime": heartbeat.to_string()})
}

async fn create_node(client: &Client, name: &str, now: Timestamp) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
        "status": {"conditions": [ready_condition("True", now),
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "lastHeartbeatTime": now.to_string(), "lastTransitionTime": now.to_string()}]}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
}

/// Creates or renews the node's Lease with the given renew time.
async fn renew_lease(client: &Client, name: &str, at: Timestamp) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let renew = at.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": NODE_LEASE_NAMESPACE},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": renew}});
    leases
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&lease),
        )
        .await
        .unwrap();
}

async fn create_pod(
    client: &Client,
    ns: &str,
    name: &str,
    node: &str,
    tolerations: serde_json::Value,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "tolerations": tolerations,
                 "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap()
}

async fn set_pod_status(client: &Client, ns: &str, name: &str, status: serde_json::Value) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .unwrap();
}

fn taint_keys(node: &Node) -> Vec<String> {
    let mut keys: Vec<String> = taints::node_taints(node)
        .iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_goes_unknown_and_tainted_and_comes_back() {
    let cluster = TestCluster::start().await;
    let client = cluster.client.clone();
    let start = Timestamp::now();
    let clock = FakeClock::new(start);
    create_node(&client, "quiet", start).await;
    create_node(&client, "chatty", start).await;
    renew_lease(&client, "quiet", start).await;
    renew_lease(&client, "chatty", start).await;
    namespace(&client, "work").await;
    create_pod(&client, "work", "victim", "quiet", json!([])).await;
    set_pod_status(
        &client,
        "work",
        "victim",
        json!({"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": start.to_string()}]}),
    )
    .await;

    let controller = NodeLifecycleController::new(
        &cluster.ctx,
        NodeLifecycleConfig {
            monitor_period: Duration::from_millis(50),
            tainting_period: Duration::from_millis(20),
            clock: Arc::new(clock.clone()),
            ..Default::default()
        },
    );
    let handle = controller.clone();
    tokio::spawn(controller.run());
    cluster.ctx.informers.start();
    let nodes: Api<Node> = Api::all(client.clone());

    eventually("both nodes observed", || async {
        (handle.last_probe("quiet").is_some() && handle.last_probe("chatty").is_some())
            .then_some(())
    })
    .await;
    // The beta OS label follows the stable one.
    eventually("beta os label", || async {
        let node = nodes.get("quiet").await.unwrap();
        (node
            .metadata
            .labels
            .unwrap()
            .get("beta.kubernetes.io/os")
            .map(String::as_str)
            == Some("linux"))
        .then_some(())
    })
    .await;

    // Thirty seconds on, only "chatty" renews its Lease.
    clock.advance(Duration::from_secs(30));
    let renewed_at = clock.now();
    renew_lease(&client, "chatty", renewed_at).await;
    eventually("chatty's renewal seen", || async {
        (handle.last_probe("chatty") == Some(renewed_at)).then_some(())
    })
    .await;
    // Thirty more: "quiet" has been silent for 60 s > 50 s.
    clock.advance(Duration::from_secs(30));

    let node = eventually("quiet goes Unknown and unreachable", || async {
        let node = nodes.get("quiet").await.unwrap();
        let keys = taint_keys(&node);
        (health::condition(&node, "Ready")?.status == "Unknown"
            && keys
                == [
                    "node.kubernetes.io/unreachable:NoExecute",
                    "node.kubernetes.io/unreachable:NoSchedule",
                ])
        .then_some(node)
    })
    .await;
    let ready = health::condition(&node, "Ready").unwrap();
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    let memory = health::condition(&node, "MemoryPressure").unwrap();
    assert_eq!(memory.status, "Unknown");
    assert!(taints::node_taints(&node)
        .iter()
        .all(|t| t.time_added.is_some()));
    assert_eq!(
        health::condition(&nodes.get("chatty").await.unwrap(), "Ready")
            .unwrap()
            .status,
        "True"
    );
    assert!(taint_keys(&nodes.get("chatty").await.unwrap()).is_empty());

    // Its pod is marked not ready.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "work");
    eventually("the pod on the silent node is not ready", || async {
        let pod = pods.get("victim").await.unwrap();
        let ready = pod
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.status == "False").then_some(())
    })
    .await;

    // The kubelet comes back.
    let back = clock.now();
    renew_lease(&client, "quiet", back).await;
    nodes
        .patch_status(
            "quiet",
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": [ready_condition("True", back)]}})),
        )
        .await
        .unwrap();
    eventually("taints removed once ready again", || async {
        taint_keys(&nodes.get("quiet").await.unwrap())
            .is_empty()
            .then_some(())
    })
    .await;

    // Cordoning adds the unschedulable taint, uncordoning removes it.
    let cordon = |on: bool| json!({"spec": {"unschedulable": on}});
    nodes
        .patch(
            "chatty",
            &PatchParams::default(),
            &Patch::Merge(cordon(true)),
        )
        .await
        .unwrap();
    eventually("unschedulable taint", || async {
        (taint_keys(&nodes.get("chatty").await.unwrap())
            == ["node.kubernetes.io/unschedulable:NoSchedule"])
        .then_some(())
    })
    .await;
    nodes
        .patch(
            "chatty",
            &PatchParams::default(),
            &Patch::Merge(cordon(false)),
        )
        .await
        .unwrap();
    eventually("unschedulable taint removed", || async {
        taint_keys(&nodes.get("chatty").await.unwrap())
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_execute_taints_evict_untolerating_pods_now_and_tolerating_ones_later() {
    let cluster = TestCluster::start().await;
    let client = cluster.client.clone();
    let clock = FakeClock::new(Timestamp::now());
    create_node(&client, "sim-2", clock.now()).await;
    create_node(&client, "sim-3", clock.now()).await;
    namespace(&client, "wl").await;
    let exists = |effect: &str| json!([{"key": "maint", "operator": "Exists", "effect": effect}]);
    let for_30s = json!([{"key": "maint", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]);
    create_pod(&client, "wl", "evictme", "sim-2", json!([])).await;
    create_pod(&client, "wl", "stays", "sim-2", exists("NoExecute")).await;
    create_pod(&client, "wl", "later", "sim-2", for_30s.clone()).await;
    create_pod(&client, "wl", "reprieved", "sim-3", for_30s).await;
    create_pod(&client, "wl", "wrong-effect", "sim-3", exists("NoSchedule")).await;

    tokio::spawn(
        TaintEvictionController::new(
            &cluster.ctx,
            TaintEvictionConfig {
                clock: Arc::new(clock.clone()),
                timer_resolution: Duration::from_millis(20),
            },
        )
        .run(),
    );
    cluster.ctx.informers.start();

    let nodes: Api<Node> = Api::all(client.clone());
    let taint_node = |name: &'static str, taints: serde_json::Value| {
        let nodes = nodes.clone();
        async move {
            nodes
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"taints": taints}})),
                )
                .await
                .unwrap();
        }
    };
    let maint = json!([{"key": "maint", "value": "now", "effect": "NoExecute"}]);
    taint_node("sim-2", maint.clone()).await;
    taint_node("sim-3", maint).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "wl");
    // Bound pods are deleted gracefully: the kubelet would finish them.
    let deleting = |name: &'static str| {
        let pods = pods.clone();
        async move {
            pods.get_opt(name)
                .await
                .unwrap()
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
        }
    };
    eventually("untolerating pods are evicted at once", || async {
        (deleting("evictme").await && deleting("wrong-effect").await).then_some(())
    })
    .await;
    let evicted = pods.get("evictme").await.unwrap();
    let target = evicted
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("the DisruptionTarget condition");
    assert_eq!(target.status, "True");
    assert_eq!(target.reason.as_deref(), Some("DeletionByTaintManager"));
    assert_eq!(
        target.message.as_deref(),
        Some("Taint manager: deleting due to NoExecute taint")
    );

    // The taint leaves sim-3: its pending eviction is cancelled.
    taint_node("sim-3", json!(null)).await;
    let events: Api<Event> = Api::namespaced(client.clone(), "wl");
    eventually("the eviction of reprieved is cancelled", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .any(|e| {
                e.reason.as_deref() == Some("TaintManagerEviction")
                    && e.message.as_deref() == Some("Cancelling deletion of Pod wl/reprieved")
            })
            .then_some(())
    })
    .await;
    assert!(!deleting("later").await, "tolerated for 30 s");

    clock.advance(Duration::from_secs(31));
    eventually("the 30 s toleration runs out", || async {
        deleting("later").await.then_some(())
    })
    .await;
    assert!(!deleting("stays").await, "tolerates for ever");
    assert!(!deleting("reprieved").await, "its eviction was cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gc_removes_orphans_and_old_terminated_pods() {
    let cluster = TestCluster::start().await;
    let client = cluster.client.clone();
    let clock = FakeClock::new(Timestamp::now());
    create_node(&client, "alive", clock.now()).await;
    namespace(&client, "gc").await;
    create_pod(&client, "gc", "orphan", "gone", json!([])).await;
    create_pod(&client, "gc", "kept", "alive", json!([])).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "gc");
    for name in ["done-1", "done-2", "done-3"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        set_pod_status(&client, "gc", name, json!({"phase": "Succeeded"})).await;
    }
    let gc = PodGcController::new(
        &cluster.ctx,
        PodGcConfig {
            terminated_pod_threshold: 1,
            period: Duration::from_millis(50),
            quarantine: Duration::from_secs(40),
            clock: Arc::new(clock.clone()),
        },
    );
    tokio::spawn(gc.run());
    cluster.ctx.informers.start();
    // Created in name order, so oldest first (names break ties).
    eventually("the two oldest terminated pods are collected", || async {
        let left = pods.list(&ListParams::default()).await.unwrap();
        let names: Vec<String> = left
            .items
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        (!names.contains(&"done-1".to_string()) && !names.contains(&"done-2".to_string()))
            .then_some(names)
    })
    .await;
    assert!(pods.get_opt("done-3").await.unwrap().is_some());
    // The orphan waits out the quarantine first.
    assert!(pods.get_opt("orphan").await.unwrap().is_some());
    clock.advance(Duration::from_secs(41));
    eventually("the orphan is force-deleted", || async {
        pods.get_opt("orphan")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(pods.get_opt("kept").await.unwrap().is_some());
}
