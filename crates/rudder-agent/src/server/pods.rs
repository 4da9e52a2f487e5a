//! `GET /pods`: the pods this node runs, as a v1 PodList (the kubelet's
//! endpoint, which monitoring agents read instead of asking the API server).

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;

use crate::pods::PodManager;

/// Where the server finds the node's pods.
pub trait PodLister: Send + Sync {
    fn pods(&self) -> Vec<Pod>;
}

impl PodLister for PodManager {
    fn pods(&self) -> Vec<Pod> {
        PodManager::pods(self)
    }
}

/// The pod manager, once it exists: the server starts before it (the
/// node must register with the server's port first). Until then the agent
/// knows no pods and lists none.
#[derive(Default)]
pub struct LatePodManager(OnceLock<PodManager>);

impl LatePodManager {
    /// Sets the manager; a second call is ignored.
    pub fn set(&self, manager: PodManager) {
        let _ = self.0.set(manager);
    }
}

impl PodLister for LatePodManager {
    fn pods(&self) -> Vec<Pod> {
        self.0.get().map(PodManager::pods).unwrap_or_default()
    }
}

/// `GET /pods`.
pub async fn list_pods(State(pods): State<Arc<dyn PodLister>>) -> Response {
    let list = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": pods.pods(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        list.to_string(),
    )
        .into_response()
}
