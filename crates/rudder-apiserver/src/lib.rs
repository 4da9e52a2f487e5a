//! Rudder's API server: the Kubernetes REST API, and the only component
//! that touches the store. Every request goes through one pipeline
//! (authenticate, authorize, admit, validate, store); every failure leaves
//! as a `metav1.Status` built in one place, [`ApiError`].

mod admission;
mod auth;
mod bootstrap;
mod cache;
mod crd;
mod defaults;
mod discovery;
mod error;
mod health;
mod limitrange;
mod managed_fields;
mod metrics;
mod node_proxy;
mod object;
mod openapi;
mod patch;
mod quota;
mod registry;
mod request;
mod rest;
mod scale;
mod selection;
mod service_alloc;
mod table;
mod validation;
mod watch;
mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rudder_store::DynStore;
use tokio::net::TcpListener;

pub use auth::{AuditConfig, SecurityConfig};
pub use error::{ApiError, FieldCause, StatusFailure};
pub use registry::{Registry, ResourceInfo};
pub use service_alloc::ServiceCidr;

/// The Kubernetes version this server speaks, as `/version` reports it.
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "32");

/// State shared by every handler.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

struct Inner {
    store: DynStore,
    registry: Registry,
    advertise_address: String,
    /// Service cluster IPs and node ports.
    services: service_alloc::ServiceAllocator,
    /// Rebuilt when custom resources come or go.
    openapi: std::sync::RwLock<Arc<openapi::OpenApi>>,
    /// The resources CRDs serve now.
    custom: std::sync::Mutex<crd::CustomSet>,
    caches: cache::WatchCaches,
    /// TLS clients of admission webhooks, one per caBundle.
    webhook_tls: webhook::TlsConfigs,
    /// Set when the server shuts down: open watches end, so the graceful
    /// shutdown does not wait for their clients.
    closing: tokio::sync::watch::Sender<bool>,
    /// HTTPS, authentication and authorization; `None` serves plain HTTP
    /// to anyone (in-process tests and embedding only: `rudder server`
    /// always sets it).
    security: Option<Arc<auth::Security>>,
}

impl ApiServer {
    /// A server over `store`, reachable by clients at `advertise_address`
    /// (`host:port`).
    pub fn new(store: DynStore, advertise_address: String) -> Self {
        let registry = Registry::with_builtins();
        let openapi = openapi::OpenApi::build(&registry, &Default::default());
        ApiServer {
            inner: Arc::new(Inner {
                store,
                registry,
                advertise_address,
                services: service_alloc::ServiceAllocator::new(
                    service_alloc::DEFAULT_SERVICE_CIDR
                        .parse()
                        .expect("the default service CIDR parses"),
                ),
                openapi: std::sync::RwLock::new(Arc::new(openapi)),
                custom: std::sync::Mutex::new(Default::default()),
                caches: cache::WatchCaches::default(),
                webhook_tls: Default::default(),
                closing: tokio::sync::watch::channel(false).0,
                security: None,
            }),
        }
    }

    /// Services get their cluster IPs from `cidr` (default 10.43.0.0/16);
    /// `cluster_dns` is the kube-dns Service's address (default: the
    /// CIDR's tenth). Call before the server is cloned or served.
    pub fn with_service_cidr(
        mut self,
        cidr: ServiceCidr,
        cluster_dns: Option<std::net::Ipv4Addr>,
    ) -> Self {
        let mut services = service_alloc::ServiceAllocator::new(cidr);
        if let Some(ip) = cluster_dns {
            services = services.with_cluster_dns(ip);
        }
        Arc::get_mut(&mut self.inner)
            .expect("the service CIDR is set before the server is shared")
            .services = services;
        self
    }

    /// Serves HTTPS only, authenticates every request and authorizes it
    /// (system:masters, the Node authorizer, RBAC). Call before the server
    /// is cloned or served.
    pub fn with_security(mut self, config: SecurityConfig) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("security is set before the server is shared")
            .security = Some(Arc::new(auth::Security::new(config)));
        self
    }

    pub(crate) fn security(&self) -> Option<&auth::Security> {
        self.inner.security.as_deref()
    }

    /// Open watches end from now on.
    pub(crate) fn begin_closing(&self) {
        self.inner.closing.send_replace(true);
    }

    pub(crate) fn services(&self) -> &service_alloc::ServiceAllocator {
        &self.inner.services
    }

    pub fn store(&self) -> &DynStore {
        &self.inner.store
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub(crate) fn openapi(&self) -> Arc<openapi::OpenApi> {
        self.inner
            .openapi
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves when the server starts shutting down.
    pub(crate) async fn closing(&self) {
        let mut closing = self.inner.closing.subscribe();
        let _ = closing.wait_for(|c| *c).await;
    }

    pub(crate) fn caches(&self) -> &cache::WatchCaches {
        &self.inner.caches
    }

    pub(crate) fn advertise_address(&self) -> &str {
        &self.inner.advertise_address
    }

    /// Creates what every cluster has from the start (the system
    /// namespaces) and serves the custom resources already defined. Safe
    /// to run at every start.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        bootstrap::run(self).await?;
        self.sync_custom_resources().await
    }

    /// Every route the server answers.
    pub fn router(&self) -> Router {
        health::routes()
            .fallback(dispatch)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                auth::guard,
            ))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then lets requests
    /// in flight finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Some(tls) = self.security().map(|s| s.config.tls.clone()) {
            return auth::tls::serve(self, listener, tls, shutdown).await;
        }
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// The request body as JSON: kubectl's typed clients send built-in objects
/// (and reviews) as protobuf; everything past this point works on JSON.
fn json_body(
    headers: &axum::http::HeaderMap,
    body: bytes::Bytes,
) -> Result<bytes::Bytes, ApiError> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !rudder_apimachinery::protobuf::is_protobuf_content_type(content_type) {
        return Ok(body);
    }
    let object = rudder_apimachinery::protobuf::decode(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the protobuf request body could not be decoded: {e}"
        ))
    })?;
    Ok(serde_json::to_vec(&object)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .into())
}

/// Routes every API path: discovery documents and resources.
async fn dispatch(State(server): State<ApiServer>, request: Request<Body>) -> Response {
    let path = request.uri().path().to_owned();
    // Pod logs, exec, attach and port-forward go to the pod's node agent,
    // streamed or upgraded: they keep the request whole.
    if let Ok(Some(target)) = request::parse_resource_path(server.registry(), &path) {
        if metrics::handles(&target) {
            let (method, query) = (request.method().clone(), request.uri().query());
            return metrics::serve(&server, target, &method, query, request.headers()).await;
        }
        if node_proxy::handles(&target) {
            return node_proxy::serve(&server, target, request).await;
        }
    }
    let (parts, body) = request.into_parts();
    let result = async {
        if parts.method == axum::http::Method::GET {
            if let Some(response) = server.discovery(&path, &parts.headers) {
                return Ok(response);
            }
            if let Some(response) = server.openapi_document(&path) {
                return Ok(response);
            }
        }
        if server.security().is_some() && auth::is_review(&path) {
            let body = json_body(&parts.headers, rest::read_body(body).await?)?;
            if let Some(answer) = auth::serve_review(&server, &parts.method, &path, &body).await {
                return answer;
            }
            return Err(ApiError::MethodNotAllowed(
                "the server does not allow this method on the requested resource".to_string(),
            ));
        }
        let Some(target) = request::parse_resource_path(server.registry(), &path)? else {
            return Err(ApiError::NotFoundPath);
        };
        let query = request::Query::parse(parts.uri.query())?;
        let body = json_body(&parts.headers, rest::read_body(body).await?)?;
        server
            .handle_resource(
                parts.method.clone(),
                target,
                query,
                parts.headers.clone(),
                body,
            )
            .await
    }
    .await;
    match result {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(method = %parts.method, path, error = %err, "request failed");
            err.into_response()
        }
    }
}
