//! Rudder's API server: the Kubernetes REST API, and the only component
//! that touches the store. Every request goes through one pipeline
//! (authenticate, authorize, admit, validate, store); every failure leaves
//! as a `metav1.Status` built in one place, [`ApiError`].

mod error;
mod health;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use rudder_store::DynStore;
use tokio::net::TcpListener;

pub use error::ApiError;

/// The Kubernetes version this server speaks, as `/version` reports it.
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "32");

/// State shared by every handler.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

struct Inner {
    store: DynStore,
}

impl ApiServer {
    pub fn new(store: DynStore) -> Self {
        ApiServer {
            inner: Arc::new(Inner { store }),
        }
    }

    pub fn store(&self) -> &DynStore {
        &self.inner.store
    }

    /// Every route the server answers.
    pub fn router(&self) -> Router {
        health::routes()
            .fallback(|| async { ApiError::not_found_path() })
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then lets requests
    /// in flight finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}
