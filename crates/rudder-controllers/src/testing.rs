//! Test support: a real API server on a free port over a fresh SQLite
//! store, and helpers to wait for conditions. Controllers under test run
//! against it exactly as in production.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use rudder_apiserver::ApiServer;
use rudder_store::{SqliteConfig, SqliteStore};

use crate::Context;

pub struct TestCluster {
    pub client: Client,
    /// `http://127.0.0.1:PORT`, for clients other than `client`.
    pub url: String,
    pub ctx: Context,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// A server with its bootstrap objects (system namespaces, priority
    /// classes) and a context whose informers are not started yet.
    pub async fn start() -> TestCluster {
        // RUDDER_LOG=debug shows the controllers' logs in failing tests.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("RUDDER_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
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
        let client = Client::try_from(config).unwrap();
        TestCluster {
            url: format!("http://{addr}"),
            ctx: Context::new(client.clone()),
            client,
            _dir: dir,
        }
    }

    /// Starts the given controllers (by their `CONTROLLERS` names) in the
    /// background, then the informers.
    pub fn run_controllers(&self, names: &[&str]) {
        for (name, start) in crate::CONTROLLERS {
            if names.contains(name) {
                let task = start(&self.ctx);
                tokio::spawn(async move {
                    if let Err(err) = task.await {
                        panic!("controller {name} failed: {err:#}");
                    }
                });
            }
        }
        self.ctx.informers.start();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, for up to 30 s;
/// panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a namespace.
pub async fn namespace(client: &Client, name: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    api.create(&Default::default(), &ns).await.unwrap();
}

/// A stand-in for node agents in controller tests: every pod in
/// `namespace` becomes Running and Ready shortly after it appears (unless
/// its labels say `fake-kubelet: hold`). Stops when the returned handle is
/// dropped or aborted.
pub fn fake_kubelet(client: &Client, namespace: &str) -> tokio::task::JoinHandle<()> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{ListParams, Patch, PatchParams};
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    tokio::spawn(async move {
        loop {
            if let Ok(list) = api.list(&ListParams::default()).await {
                for pod in list.items {
                    let hold =
                        pod.metadata.labels.as_ref().is_some_and(|l| {
                            l.get("fake-kubelet").map(String::as_str) == Some("hold")
                        });
                    if hold
                        || pod.metadata.deletion_timestamp.is_some()
                        || crate::util::is_pod_ready(&pod)
                    {
                        continue;
                    }
                    let now = rudder_apimachinery::time::now_rfc3339();
                    let status = serde_json::json!({"status": {"phase": "Running", "startTime": now,
                        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let _ = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}
