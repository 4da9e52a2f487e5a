//! The simulator against a real API server, in-process on a free port: it
//! registers its nodes, keeps their Leases fresh, runs the pods bound to
//! them, finishes their deletions, and leaves other nodes' pods alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use rudder_apiserver::ApiServer;
use rudder_simulator::{OptionsError, SimulateOptions};
use rudder_store::{SqliteConfig, SqliteStore};
use serde_json::json;

/// Long enough for a slow, loaded machine; polls return as soon as the
/// condition holds.
const PATIENCE: Duration = Duration::from_secs(90);

struct TestServer {
    client: Client,
    _dir: tempfile::TempDir,
}

async fn start_server() -> TestServer {
    // The simulator's logs, with RUST_LOG=rudder_simulator=debug.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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
    TestServer {
        client: Client::try_from(config).unwrap(),
        _dir: dir,
    }
}

/// Polls `check` until it returns `Some`, or panics after [`PATIENCE`]
/// with `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "initContainers": [{"name": "setup", "image": "busybox:1.35"}],
            "containers": [
                {"name": "app", "image": "web:1.0"},
                {"name": "sidecar", "image": "busybox:1.35"},
            ],
        },
    }))
    .unwrap()
}

fn is_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn running_pod(pods: &Api<Pod>, name: &str) -> Pod {
    eventually(&format!("pod {name} is Running and Ready"), || async {
        pods.get(name).await.ok().filter(is_ready)
    })
    .await
}

fn renew_time(lease: &Lease) -> Option<String> {
    serde_json::to_value(lease).ok()?["spec"]["renewTime"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_register_renew_and_run_their_pods() {
    let server = start_server().await;
    let client = server.client.clone();
    let simulator = tokio::spawn(rudder_simulator::run(
        client.clone(),
        SimulateOptions {
            nodes: 3,
            cpu: "4".into(),
            memory: "8Gi".into(),
            pods: 110,
            name_prefix: "sim-".into(),
        },
    ));

    // Three Ready nodes with the requested capacity.
    let nodes: Api<Node> = Api::all(client.clone());
    let registered = eventually("three simulated nodes are Ready", || async {
        let list = nodes
            .list(&ListParams::default().labels("node.rudder.dev/simulated=true"))
            .await
            .ok()?;
        let ready = list
            .items
            .iter()
            .filter(|node| {
                node.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == 3).then_some(list.items)
    })
    .await;
    let mut names: Vec<String> = registered
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["sim-1", "sim-2", "sim-3"]);
    for node in &registered {
        let node = serde_json::to_value(node).unwrap();
        let expected =
            json!({"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"});
        assert_eq!(node["status"]["capacity"], expected, "{node}");
        assert_eq!(node["status"]["allocatable"], expected, "{node}");
        assert_eq!(
            node["metadata"]["labels"]["kubernetes.io/hostname"],
            node["metadata"]["name"]
        );
        assert_eq!(
            node["status"]["nodeInfo"]["kubeletVersion"],
            "v1.33.0-rudder-sim"
        );
    }
    let sim_2 = nodes.get("sim-2").await.unwrap();
    assert_eq!(
        sim_2.spec.as_ref().unwrap().pod_cidr.as_deref(),
        Some("10.244.2.0/24")
    );

    // A Lease per node, renewed.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let first_renewal = eventually("the Lease of sim-1 exists", || async {
        leases.get("sim-1").await.ok()
    })
    .await;
    let spec = first_renewal.spec.as_ref().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("sim-1"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    for name in ["sim-2", "sim-3"] {
        eventually(&format!("the Lease of {name} exists"), || async {
            leases.get(name).await.ok()
        })
        .await;
    }
    let first_time = renew_time(&first_renewal).unwrap();
    eventually("the Lease of sim-1 is renewed", || async {
        let lease = leases.get("sim-1").await.ok()?;
        (renew_time(&lease)? != first_time).then_some(())
    })
    .await;

    // A pod bound to a simulated node runs, with an IP from its pod CIDR.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("web", "sim-2"))
        .await
        .unwrap();
    let web = running_pod(&pods, "web").await;
    let status = web.status.clone().unwrap();
    let web_ip = status.pod_ip.clone().unwrap();
    assert!(web_ip.starts_with("10.244.2."), "{web_ip}");
    assert_eq!(status.host_ip.as_deref(), Some("10.244.2.1"));
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    let containers = status.container_statuses.unwrap();
    assert_eq!(containers.len(), 2);
    assert!(containers.iter().all(|c| c.ready
        && c.started == Some(true)
        && c.state.as_ref().unwrap().running.is_some()));
    let init = status.init_container_statuses.unwrap();
    let terminated = init[0].state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );

    // A pod of a node the simulator does not own is left alone. Once a pod
    // created after it runs, the simulator has seen it, and must have
    // passed it by.
    pods.create(&PostParams::default(), &pod("elsewhere", "real-node"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("web-2", "sim-2"))
        .await
        .unwrap();
    let web_2 = running_pod(&pods, "web-2").await;
    let web_2_ip = web_2.status.unwrap().pod_ip.unwrap();
    assert_ne!(web_2_ip, web_ip, "pod IPs are unique");
    let elsewhere = pods.get("elsewhere").await.unwrap();
    assert_eq!(elsewhere.status.unwrap().phase.as_deref(), Some("Pending"));

    // A graceful deletion completes at once.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("pod web is gone", || async {
        match pods.get("web").await {
            Err(kube::Error::Api(status)) if status.code == 404 => Some(()),
            _ => None,
        }
    })
    .await;

    // A node deleted by a user stays deleted: a full lease round later it
    // has not come back.
    nodes
        .delete("sim-3", &DeleteParams::default())
        .await
        .unwrap();
    let before = renew_time(&leases.get("sim-1").await.unwrap()).unwrap();
    eventually("the Lease of sim-1 is renewed again", || async {
        let lease = leases.get("sim-1").await.ok()?;
        (renew_time(&lease)? != before).then_some(())
    })
    .await;
    assert!(nodes.get_opt("sim-3").await.unwrap().is_none());
    assert!(!simulator.is_finished(), "the simulator runs until dropped");
    simulator.abort();
}

#[tokio::test]
async fn invalid_options_fail_before_anything_is_sent() {
    // Nothing listens on port 9: the options are refused before the
    // simulator waits for the API server.
    let client =
        Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    let err = rudder_simulator::run(
        client,
        SimulateOptions {
            cpu: "lots".into(),
            ..SimulateOptions::default()
        },
    )
    .await
    .unwrap_err();
    let err = err.downcast::<rudder_simulator::Error>().unwrap();
    assert!(matches!(
        err,
        rudder_simulator::Error::InvalidOptions(OptionsError::InvalidQuantity { field: "cpu", .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_simulator_takes_its_nodes_and_pods_over() {
    let server = start_server().await;
    let client = server.client.clone();
    let options = SimulateOptions {
        nodes: 2,
        name_prefix: "rack-".into(),
        ..SimulateOptions::default()
    };
    let first = tokio::spawn(rudder_simulator::run(client.clone(), options.clone()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("before", "rack-1"))
        .await
        .unwrap();
    let before_ip = running_pod(&pods, "before")
        .await
        .status
        .unwrap()
        .pod_ip
        .unwrap();
    first.abort();
    let _ = first.await;

    // The second run finds its nodes registered, and a pod that the first
    // run addressed: it must not hand that address out again.
    let second = tokio::spawn(rudder_simulator::run(client.clone(), options));
    pods.create(&PostParams::default(), &pod("after", "rack-1"))
        .await
        .unwrap();
    let after_ip = running_pod(&pods, "after")
        .await
        .status
        .unwrap()
        .pod_ip
        .unwrap();
    assert_ne!(after_ip, before_ip);
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        nodes
            .list(&ListParams::default().labels("node.rudder.dev/simulated=true"))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    pods.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    eventually("pod before is gone", || async {
        pods.get_opt("before").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(!second.is_finished());
    second.abort();
}
