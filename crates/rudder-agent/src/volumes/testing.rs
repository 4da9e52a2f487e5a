//! Test support: a real API server on a free port over a fresh SQLite store
//! (as the controllers' tests start one), and object helpers.

use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use rudder_apiserver::ApiServer;
use rudder_store::{SqliteConfig, SqliteStore};

pub struct TestApi {
    pub client: Client,
    _dir: tempfile::TempDir,
}

impl TestApi {
    pub async fn start() -> TestApi {
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
        TestApi {
            client: Client::try_from(config).unwrap(),
            _dir: dir,
        }
    }

    /// Creates a namespaced object from JSON.
    pub async fn create<K>(&self, namespace: &str, object: serde_json::Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let object: K = serde_json::from_value(object).unwrap();
        api.create(&PostParams::default(), &object).await.unwrap()
    }

    /// Creates a cluster-scoped object from JSON.
    pub async fn create_cluster<K>(&self, object: serde_json::Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let object: K = serde_json::from_value(object).unwrap();
        api.create(&PostParams::default(), &object).await.unwrap()
    }

    /// Merge-patches a namespaced object.
    pub async fn patch<K>(&self, namespace: &str, name: &str, patch: serde_json::Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap()
    }

    /// Creates a namespace.
    pub async fn namespace(&self, name: &str) {
        let _: k8s_openapi::api::core::v1::Namespace = self
            .create_cluster(serde_json::json!({"metadata": {"name": name}}))
            .await;
    }
}
