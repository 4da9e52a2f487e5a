//! The kubelet's server: the streaming endpoints the API server proxies
//! `kubectl logs`, `exec` and `attach` to, and the node's stats and pods.
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}` ([`logs`]): the
//!   container's CRI log, decoded, with the `PodLogOptions` query parameters.
//! - `GET|POST /exec/{namespace}/{pod}/{container}?command=..` ([`exec`]): a
//!   command in the container, over a WebSocket speaking the
//!   `v5.channel.k8s.io` / `v4.channel.k8s.io` protocols ([`channel`]).
//! - `GET|POST /portForward/{namespace}/{pod}` ([`portforward`]): TCP
//!   connections into the pod's network namespace, over SPDY/3.1 ([`spdy`]),
//!   SPDY tunnelled in a WebSocket, or the WebSocket channel protocol.
//! - `GET /stats/summary` ([`stats`]): the Summary API's node, pod and
//!   container CPU and memory, which the API server serves as
//!   `metrics.k8s.io`.
//! - `GET|POST /attach/{namespace}/{pod}/{container}` ([`attach`]): the
//!   output of a container's main process from now on, and its stdin when
//!   the container has one, over the same WebSocket protocols as exec.
//! - `GET /pods` ([`pods`]): the node's pods as a v1 PodList.
//!
//! Served two ways ([`ServerSecurity`]): the kubelet's secure server, HTTPS
//! with callers authenticated by client certificate or bearer token and
//! authorized by SubjectAccessReview ([`tls`], [`auth`]); or plain HTTP to
//! anyone, for in-process tests and clusters without a PKI.
//!
//! Errors follow the kubelet: plain text with an HTTP code (the API server
//! turns a log 400 into a BadRequest Status carrying that text; client-go
//! prints a refused upgrade as `unable to upgrade connection: <text>`).

pub mod attach;
pub mod auth;
pub mod channel;
pub mod exec;
pub mod logs;
pub mod pods;
pub mod portforward;
pub mod spdy;
pub mod stats;
pub mod tls;
pub mod x509;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rudder_cri::cri::{
    Container, ContainerFilter, PodSandboxFilter, RuntimeService, LABEL_CONTAINER_NAME,
    LABEL_POD_NAME, LABEL_POD_NAMESPACE,
};

pub use auth::{Guard, KubeReviewer, Reviewer};
pub use pods::PodLister;
pub use tls::ServingTls;

/// How the node agent's API is served.
#[derive(Clone, Debug, Default)]
pub enum ServerSecurity {
    /// Plain HTTP, every request let through: for in-process tests and
    /// clusters without a PKI. Bind it where only the API server reaches.
    #[default]
    Insecure,
    /// The kubelet's secure server: HTTPS with this certificate; callers
    /// authenticated by a client certificate of the client CA or a bearer
    /// token (TokenReview), and authorized by SubjectAccessReview on
    /// `nodes/{proxy,stats,metrics,log}` of this node.
    Tls(ServingTls),
}

/// What the handlers share: the node's runtime service.
#[derive(Clone)]
pub struct ServerState {
    pub runtime: Arc<dyn RuntimeService>,
}

/// Serves the kubelet's endpoints (without `/pods`) over plain HTTP to
/// anyone on `listener` until the task is dropped or the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    runtime: Arc<rudder_cri::NodeRuntime>,
) -> anyhow::Result<()> {
    axum::serve(listener, router(runtime, None)).await?;
    Ok(())
}

/// Serves `app` as the kubelet's secure server on `listener`, forever:
/// TLS by `tls` (see [`tls::server_config`]), every request authenticated
/// and authorized by `guard` before it reaches a route (unknown paths
/// included, as the kubelet filters before routing).
pub async fn serve_secure(
    listener: tokio::net::TcpListener,
    tls: tls::SecureTls,
    guard: Guard,
    app: Router,
) {
    let app = app.layer(axum::middleware::from_fn_with_state(guard, auth::guard));
    tls::serve_tls(listener, tls, app).await;
}

/// The kubelet's routes over any runtime service; `/pods` when there is a
/// pod source.
pub fn router(runtime: Arc<dyn RuntimeService>, pods: Option<Arc<dyn PodLister>>) -> Router {
    let mut router = Router::new()
        .merge(stats::routes(runtime.clone()))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(exec::exec).post(exec::exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(attach::attach).post(attach::attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(portforward::port_forward).post(portforward::port_forward),
        )
        .with_state(ServerState { runtime });
    if let Some(pods) = pods {
        router = router.route("/pods", get(pods::list_pods).with_state(pods));
    }
    router
}

/// A query string's pairs, decoded, in order (repeated keys kept).
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The first value of `key`.
pub(crate) fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A boolean query parameter as Kubernetes converts query strings into
/// options (`Convert_Slice_string_To_bool`): absent is false; `0`, `f` and
/// `false` (any case) are false; anything else, even empty, is true.
pub(crate) fn query_bool(pairs: &[(String, String)], key: &str) -> bool {
    match query_get(pairs, key) {
        None => false,
        Some(v) => !(v == "0" || v.eq_ignore_ascii_case("f") || v.eq_ignore_ascii_case("false")),
    }
}

/// A plain-text error, as the kubelet's log endpoint writes them.
pub(crate) fn text_error(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

/// Why looking a container up failed.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// No sandbox of that pod on this node.
    NoPod,
    /// The runtime failed.
    Runtime(rudder_cri::CriError),
}

/// The containers named `container` of the pod, newest first (the current
/// one, then the one it replaced, ...).
pub(crate) async fn pod_containers(
    runtime: &Arc<dyn RuntimeService>,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Vec<Container>, Lookup> {
    let runtime = runtime.clone();
    let (namespace, pod, container) = (
        namespace.to_string(),
        pod.to_string(),
        container.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let mut selector = std::collections::BTreeMap::new();
        selector.insert(LABEL_POD_NAMESPACE.to_string(), namespace.clone());
        selector.insert(LABEL_POD_NAME.to_string(), pod.clone());
        let sandboxes = runtime
            .list_pod_sandbox(&PodSandboxFilter::default())
            .map_err(Lookup::Runtime)?;
        let has_pod = sandboxes
            .iter()
            .any(|s| s.metadata.namespace == namespace && s.metadata.name == pod);
        selector.insert(LABEL_CONTAINER_NAME.to_string(), container);
        let mut containers = runtime
            .list_containers(&ContainerFilter {
                label_selector: selector,
                ..Default::default()
            })
            .map_err(Lookup::Runtime)?;
        if !has_pod && containers.is_empty() {
            return Err(Lookup::NoPod);
        }
        containers.sort_by(|a, b| {
            (b.created_at, b.metadata.attempt).cmp(&(a.created_at, a.metadata.attempt))
        });
        Ok(containers)
    })
    .await
    .map_err(|e| {
        Lookup::Runtime(rudder_cri::CriError::Invalid(format!(
            "the container lookup failed: {e}"
        )))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_booleans_convert_as_kubernetes_does() {
        let pairs = query_pairs(Some("a=true&b=1&c=&d=0&e=False&f=F&g=yes&cmd=x%20y&cmd=z"));
        assert!(query_bool(&pairs, "a"));
        assert!(query_bool(&pairs, "b"));
        assert!(query_bool(&pairs, "c"));
        assert!(!query_bool(&pairs, "d"));
        assert!(!query_bool(&pairs, "e"));
        assert!(!query_bool(&pairs, "f"));
        assert!(query_bool(&pairs, "g"));
        assert!(!query_bool(&pairs, "missing"));
        let cmds: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == "cmd")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cmds, ["x y", "z"]);
    }
}
