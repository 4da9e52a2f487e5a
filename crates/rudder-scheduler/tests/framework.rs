//! The framework's later extension points and PDB-aware preemption
//! against a real API server: a Permit plugin holding a pod, then
//! allowing or rejecting it (the pod is unreserved and scheduled again),
//! and preemption sparing a pod its PodDisruptionBudget protects.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rudder_apiserver::ApiServer;
use rudder_scheduler::cache::{ClusterCache, PodInfo};
use rudder_scheduler::framework::{
    CycleState, Handle, PermitDecision, PermitPlugin, Plugin, ReservePlugin, Status,
};
use rudder_scheduler::{Scheduler, SchedulerConfiguration, DEFAULT_SCHEDULER_NAME};
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

async fn node(client: &Client, name: &str, cpu: &str) {
    create::<Node>(
        Api::all(client.clone()),
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
               "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                          "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"}}}),
    )
    .await;
}

fn node_name(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
}

async fn event_message(client: &Client, pod: &str, contains: &str) -> String {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    eventually("a FailedScheduling event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(pod))
            .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
            .filter_map(|e| e.message)
            .find(|m| m.contains(contains))
    })
    .await
}

/// Holds every pod at Permit for `wait`; counts Unreserve calls.
struct Gate {
    wait: Duration,
    unreserved: Arc<AtomicUsize>,
    reserved: Arc<Mutex<Vec<String>>>,
}

impl Plugin for Gate {
    fn name(&self) -> &'static str {
        "Gate"
    }
}

impl PermitPlugin for Gate {
    fn permit(&self, _state: &mut CycleState, _pod: &PodInfo, _node: &str) -> PermitDecision {
        PermitDecision::Wait(self.wait)
    }
}

impl ReservePlugin for Gate {
    fn reserve(
        &self,
        _state: &mut CycleState,
        pod: &PodInfo,
        node: &str,
        _cache: &mut ClusterCache,
    ) -> Status {
        self.reserved
            .lock()
            .unwrap()
            .push(format!("{} on {node}", pod.key));
        Status::success()
    }

    fn unreserve(&self, _state: &CycleState, _pod: &PodInfo, _node: &str, _c: &mut ClusterCache) {
        self.unreserved.fetch_add(1, Ordering::SeqCst);
    }
}

struct Gated {
    scheduler: Arc<Scheduler>,
    unreserved: Arc<AtomicUsize>,
    reserved: Arc<Mutex<Vec<String>>>,
}

fn start_gated(client: &Client, wait: Duration) -> Gated {
    let mut profiles = SchedulerConfiguration::default().profiles().unwrap();
    let unreserved = Arc::new(AtomicUsize::new(0));
    let reserved = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Gate {
        wait,
        unreserved: unreserved.clone(),
        reserved: reserved.clone(),
    });
    let profile = Arc::get_mut(profiles.get_mut(DEFAULT_SCHEDULER_NAME).unwrap()).unwrap();
    profile.reserves.push(gate.clone());
    profile.permits.push(gate);
    let scheduler = Scheduler::new(client.clone(), profiles);
    tokio::spawn(scheduler.clone().run());
    Gated {
        scheduler,
        unreserved,
        reserved,
    }
}

async fn plain_pod(client: &Client, name: &str) -> Pod {
    create::<Pod>(
        Api::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_held_at_permit_is_bound_once_allowed() {
    let c = cluster().await;
    node(&c.client, "a", "4").await;
    let gated = start_gated(&c.client, Duration::from_secs(600));
    let pod = plain_pod(&c.client, "web").await;
    let uid = pod.metadata.uid.clone().unwrap();
    let waiting = eventually("the pod held at Permit", || async {
        gated.scheduler.waiting_pods().get(&uid)
    })
    .await;
    assert_eq!(waiting.node, "a");
    assert_eq!(waiting.pending_plugins(), vec!["Gate"]);
    // Held, the pod is assumed (its room is taken) but not bound.
    assert!(Handle::cache(gated.scheduler.as_ref()).is_assumed_or_bound(&uid));
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    assert_eq!(node_name(&pods.get("web").await.unwrap()), None);

    waiting.allow("Gate");
    let placed = eventually("the pod bound", || async {
        pods.get("web").await.ok().and_then(|p| node_name(&p))
    })
    .await;
    assert_eq!(placed, "a");
    assert_eq!(gated.unreserved.load(Ordering::SeqCst), 0);
    assert!(gated.scheduler.waiting_pods().get(&uid).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_pod_is_unreserved_and_scheduled_again() {
    let c = cluster().await;
    node(&c.client, "a", "4").await;
    let gated = start_gated(&c.client, Duration::from_secs(600));
    let pod = plain_pod(&c.client, "web").await;
    let uid = pod.metadata.uid.clone().unwrap();
    let waiting = eventually("the pod held at Permit", || async {
        gated.scheduler.waiting_pods().get(&uid)
    })
    .await;
    waiting.reject("Gate", "the gate is closed for maintenance");
    let message = event_message(&c.client, "web", "gate").await;
    assert_eq!(message, "the gate is closed for maintenance");
    eventually("Unreserve", || async {
        (gated.unreserved.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert!(!Handle::cache(gated.scheduler.as_ref()).is_assumed_or_bound(&uid));
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let current = pods.get("web").await.unwrap();
    assert_eq!(node_name(&current), None);
    let condition = current
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.message.as_deref()),
        ("False", Some("the gate is closed for maintenance"))
    );

    // A cluster change sends it back through the cycle; held again, it
    // is allowed this time.
    node(&c.client, "b", "4").await;
    let again = eventually("the pod held at Permit again", || async {
        gated.scheduler.waiting_pods().get(&uid)
    })
    .await;
    assert_eq!(gated.reserved.lock().unwrap().len(), 2);
    again.allow("Gate");
    eventually("the pod bound", || async {
        pods.get("web").await.ok().and_then(|p| node_name(&p))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_held_too_long_is_rejected_by_the_timeout() {
    let c = cluster().await;
    node(&c.client, "a", "4").await;
    let gated = start_gated(&c.client, Duration::from_millis(200));
    plain_pod(&c.client, "web").await;
    let message = event_message(&c.client, "web", "timeout").await;
    assert_eq!(
        message,
        "rejected due to timeout after waiting 200ms at plugin Gate"
    );
    eventually("Unreserve", || async {
        (gated.unreserved.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
}

async fn priority_class(client: &Client, name: &str, value: i32) {
    create::<PriorityClass>(
        Api::all(client.clone()),
        json!({"metadata": {"name": name}, "value": value}),
    )
    .await;
}

/// A pod already running on `node` (bound at creation).
async fn running_pod(client: &Client, name: &str, node: &str, app: &str) {
    create::<Pod>(
        Api::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": name, "labels": {"app": app}}, "spec": {
            "nodeName": node, "priorityClassName": "low",
            "containers": [{"name": "c", "image": "busybox",
                            "resources": {"requests": {"cpu": "3"}}}]}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_spares_the_pod_a_budget_protects() {
    let c = cluster().await;
    node(&c.client, "a", "4").await;
    node(&c.client, "b", "4").await;
    priority_class(&c.client, "low", 10).await;
    priority_class(&c.client, "high", 1000).await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.client.clone(), "default");
    create::<PodDisruptionBudget>(
        pdbs.clone(),
        json!({"metadata": {"name": "db"}, "spec": {"minAvailable": 1,
               "selector": {"matchLabels": {"app": "db"}}}}),
    )
    .await;
    // The disruption controller would find no disruption allowed.
    pdbs.patch_status(
        "db",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"disruptionsAllowed": 0, "currentHealthy": 1,
                                        "desiredHealthy": 1, "expectedPods": 1}}),
        ),
    )
    .await
    .unwrap();
    // The same priority on both nodes: without the budget, a (first in
    // order) would be chosen.
    running_pod(&c.client, "db-0", "a", "db").await;
    running_pod(&c.client, "batch-0", "b", "batch").await;
    let scheduler = Scheduler::new(
        c.client.clone(),
        SchedulerConfiguration::default().profiles().unwrap(),
    );
    tokio::spawn(scheduler.run());
    create::<Pod>(
        Api::namespaced(c.client.clone(), "default"),
        json!({"metadata": {"name": "urgent"}, "spec": {"priorityClassName": "high",
               "containers": [{"name": "c", "image": "busybox",
                               "resources": {"requests": {"cpu": "3"}}}]}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let nominated = eventually("the preemptor nominated", || async {
        pods.get("urgent")
            .await
            .ok()
            .and_then(|p| p.status.and_then(|s| s.nominated_node_name))
    })
    .await;
    assert_eq!(nominated, "b");
    eventually("the unprotected victim deleted", || async {
        match pods.get_opt("batch-0").await.unwrap() {
            None => Some(()),
            Some(p) => p.metadata.deletion_timestamp.map(|_| ()),
        }
    })
    .await;
    let db = pods.get("db-0").await.unwrap();
    assert!(db.metadata.deletion_timestamp.is_none(), "the budget held");
}
