//! The metrics API and the HPA against a real in-process API server, with
//! a fake node agent serving `/stats/summary` for the pods bound to its
//! Node (no root, no containers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};

use crate::testing::{eventually, fake_kubelet, namespace, TestCluster};

/// A node agent whose every pod uses `cpu_millis` of CPU and 64 MiB.
struct FakeAgent {
    port: u16,
    cpu_millis: Arc<AtomicU64>,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    async fn start(client: &Client, node: &str) -> FakeAgent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cpu_millis = Arc::new(AtomicU64::new(0));
        let (client, node, cpu) = (client.clone(), node.to_string(), cpu_millis.clone());
        let app = axum::Router::new().route(
            "/stats/summary",
            axum::routing::get(move || {
                let (client, node, cpu) = (client.clone(), node.clone(), cpu.clone());
                async move { axum::Json(summary(&client, &node, cpu.load(Ordering::SeqCst)).await) }
            }),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeAgent {
            port,
            cpu_millis,
            _server: server,
        }
    }
}

async fn summary(client: &Client, node: &str, cpu_millis: u64) -> Value {
    let pods: Api<Pod> = Api::all(client.clone());
    let now = rudder_apimachinery::time::now_rfc3339();
    let running: Vec<Value> = pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let containers: Vec<Value> = p
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .map(|c| {
                    json!({"name": c.name,
                        "cpu": {"time": now, "usageNanoCores": cpu_millis * 1_000_000},
                        "memory": {"time": now, "workingSetBytes": 64u64 << 20}})
                })
                .collect();
            json!({"podRef": {"name": p.name_any(), "namespace": p.namespace(), "uid": p.uid()},
                   "containers": containers})
        })
        .collect();
    json!({
        "node": {"nodeName": node,
            "cpu": {"time": now, "usageNanoCores": 1_500_000_000u64},
            "memory": {"time": now, "workingSetBytes": 1u64 << 30}},
        "pods": running,
        "rudder.io/window-seconds": 15.0,
    })
}

async fn node(client: &Client, name: &str, port: u16) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"pool": "test"}},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "allocatable": {"cpu": "4", "memory": "8Gi"},
        },
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
}

async fn deployment(client: &Client, ns: &str, name: &str, node: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"nodeName": node, "containers": [{"name": "app", "image": "nginx",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
}

fn metrics_api(client: &Client, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", kind),
        if kind == "NodeMetrics" {
            "nodes"
        } else {
            "pods"
        },
    );
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

#[tokio::test]
async fn metrics_api_serves_node_and_pod_usage_from_node_agents() {
    let cluster = TestCluster::start().await;
    let client = cluster.client.clone();
    namespace(&client, "metrics").await;
    let agent = FakeAgent::start(&client, "node-a").await;
    agent.cpu_millis.store(250, Ordering::SeqCst);
    node(&client, "node-a", agent.port).await;
    // An agent that does not answer: its node is left out.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    node(&client, "node-gone", closed_port).await;
    cluster.run_controllers(&["replicaset", "deployment"]);
    let _kubelet = fake_kubelet(&client, "metrics");
    deployment(&client, "metrics", "web", "node-a").await;

    let resources = client
        .list_api_group_resources("metrics.k8s.io/v1beta1")
        .await
        .unwrap();
    let names: Vec<(&str, &str)> = resources
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r.kind.as_str()))
        .collect();
    assert!(names.contains(&("nodes", "NodeMetrics")) && names.contains(&("pods", "PodMetrics")));

    let nodes = metrics_api(&client, "NodeMetrics", None)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(nodes.items.len(), 1, "only the reachable node");
    let n = &nodes.items[0];
    assert_eq!(n.name_any(), "node-a");
    assert_eq!(n.labels().get("pool").map(String::as_str), Some("test"));
    assert_eq!(n.data["usage"], json!({"cpu": "1500m", "memory": "1Gi"}));
    assert_eq!(n.data["window"], "15s");
    let selected = metrics_api(&client, "NodeMetrics", None)
        .list(&ListParams::default().labels("pool=other"))
        .await
        .unwrap();
    assert!(selected.items.is_empty());

    let pods_api = metrics_api(&client, "PodMetrics", Some("metrics"));
    let pods = eventually("pod metrics for web", || {
        let pods_api = pods_api.clone();
        async move {
            let list = pods_api
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            (!list.items.is_empty()).then_some(list)
        }
    })
    .await;
    let p = &pods.items[0];
    assert!(p.name_any().starts_with("web-"));
    assert_eq!(
        p.data["containers"],
        json!([{"name": "app", "usage": {"cpu": "250m", "memory": "64Mi"}}])
    );
    let one = pods_api.get(&p.name_any()).await.unwrap();
    assert_eq!(one.data["containers"], p.data["containers"]);
    assert_eq!(
        metrics_api(&client, "PodMetrics", None)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    match pods_api.get("nope").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 404);
            assert_eq!(
                status.message,
                "podmetrics.metrics.k8s.io \"metrics/nope\" not found"
            );
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let object: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics", "metadata": {"name": "x"}})).unwrap();
    match pods_api.create(&PostParams::default(), &object).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 405),
        other => panic!("expected MethodNotAllowed, got {other:?}"),
    }
}

#[tokio::test]
async fn hpa_scales_a_deployment_on_cpu_utilization() {
    let mut cluster = TestCluster::start().await;
    cluster.ctx.options.hpa_sync_period = Duration::from_millis(500);
    cluster.ctx.options.hpa_downscale_stabilization = Duration::from_secs(3);
    // The fake agent's samples are fresh: no start-up period to sit out.
    cluster.ctx.options.hpa_cpu_initialization_period = Duration::ZERO;
    let client = cluster.client.clone();
    namespace(&client, "auto").await;
    let agent = FakeAgent::start(&client, "node-a").await;
    node(&client, "node-a", agent.port).await;
    cluster.run_controllers(&["replicaset", "deployment", "horizontalpodautoscaling"]);
    let _kubelet = fake_kubelet(&client, "auto");
    deployment(&client, "auto", "web", "node-a").await;

    // 200m used of 100m requested: 200% against a 50% target asks for
    // 8, held to maxReplicas 4.
    agent.cpu_millis.store(200, Ordering::SeqCst);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "auto");
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}]},
    }))
    .unwrap();
    hpas.create(&PostParams::default(), &hpa).await.unwrap();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "auto");
    eventually("scaled up to 4", || {
        let deployments = deployments.clone();
        async move { (replicas_of(&deployments.get("web").await.ok()?) == 4).then_some(()) }
    })
    .await;
    let status = eventually("HPA status after the rescale", || {
        let hpas = hpas.clone();
        async move {
            let status = serde_json::to_value(hpas.get("web").await.ok()?.status?).ok()?;
            (status["desiredReplicas"] == 4).then_some(status)
        }
    })
    .await;
    assert_eq!(
        status["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
        200
    );
    assert_eq!(
        status["currentMetrics"][0]["resource"]["current"]["averageValue"],
        "200m"
    );
    assert!(status["lastScaleTime"].is_string());
    let condition = |status: &Value, kind: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        condition(&status, "ScalingActive")["reason"],
        "ValidMetricFound"
    );
    assert_eq!(condition(&status, "AbleToScale")["status"], "True");
    let events: Api<Event> = Api::namespaced(client.clone(), "auto");
    eventually("a SuccessfulRescale event", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some("SuccessfulRescale")
                        && e.message.as_deref()
                            == Some("New size: 4; reason: cpu resource utilization (percentage of request) above target")
                })
                .map(|_| ())
        }
    })
    .await;

    // Once the new pods are ready and measured, the 8 they ask for is
    // held at the maximum.
    eventually("ScalingLimited by maxReplicas", || {
        let hpas = hpas.clone();
        async move {
            let status = serde_json::to_value(hpas.get("web").await.ok()?.status?).ok()?;
            (condition(&status, "ScalingLimited")["reason"] == "TooManyReplicas").then_some(())
        }
    })
    .await;

    // 52% of a 50% target is within the tolerance: the count holds.
    agent.cpu_millis.store(52, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replicas_of(&deployments.get("web").await.unwrap()), 4);

    // 10%: down to ceil(0.2 × 4) = 1, once the 3 s window has passed.
    agent.cpu_millis.store(10, Ordering::SeqCst);
    let started = std::time::Instant::now();
    eventually("scaled down to 1", || {
        let deployments = deployments.clone();
        async move { (replicas_of(&deployments.get("web").await.ok()?) == 1).then_some(()) }
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the scale-down waited for the stabilization window"
    );
}

#[tokio::test]
async fn hpa_reports_why_it_cannot_scale() {
    let mut cluster = TestCluster::start().await;
    cluster.ctx.options.hpa_sync_period = Duration::from_millis(500);
    let client = cluster.client.clone();
    namespace(&client, "broken").await;
    cluster.run_controllers(&["horizontalpodautoscaling"]);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "broken");
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "ghost"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ghost"},
            "maxReplicas": 3},
    }))
    .unwrap();
    hpas.create(&PostParams::default(), &hpa).await.unwrap();
    let condition = eventually("AbleToScale False", || {
        let hpas = hpas.clone();
        async move {
            let status = serde_json::to_value(hpas.get("ghost").await.ok()?.status?).ok()?;
            status["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "AbleToScale")
                .cloned()
        }
    })
    .await;
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "FailedGetScale");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.starts_with("the HPA controller was unable to get the target's current scale: "),
        "{message}"
    );

    // Validation is the API server's: maxReplicas below minReplicas.
    let bad: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "minReplicas": 3, "maxReplicas": 2},
    }))
    .unwrap();
    match hpas.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422);
            assert!(
                status
                    .message
                    .contains("spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"),
                "{}",
                status.message
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_reads_the_metrics_api() {
    let cluster = TestCluster::start().await;
    let client = cluster.client.clone();
    namespace(&client, "top").await;
    let agent = FakeAgent::start(&client, "node-a").await;
    agent.cpu_millis.store(120, Ordering::SeqCst);
    node(&client, "node-a", agent.port).await;
    cluster.run_controllers(&["replicaset", "deployment"]);
    let _kubelet = fake_kubelet(&client, "top");
    deployment(&client, "top", "web", "node-a").await;
    let kubectl = std::env::var("RUDDER_KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into());
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(&kubectl)
            .args(["--server", &cluster.url, "--cache-dir"])
            .arg(home.path())
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, nodes) = tokio::task::block_in_place(|| run(&["top", "nodes"]));
    assert!(ok, "{nodes}");
    assert!(
        nodes.contains("node-a") && nodes.contains("1500m") && nodes.contains("1024Mi"),
        "{nodes}"
    );
    let pods = eventually("kubectl top pods", || {
        let out = tokio::task::block_in_place(|| run(&["top", "pods", "-n", "top"]));
        async move { (out.0 && out.1.contains("web-")).then_some(out.1) }
    })
    .await;
    assert!(pods.contains("120m") && pods.contains("64Mi"), "{pods}");
    println!("{nodes}\n{pods}");
}
