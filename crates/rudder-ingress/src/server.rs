//! The listeners and the proxy: each request is routed by the current
//! table and forwarded to one endpoint of its backend over a pooled HTTP/1.1
//! client, the response streamed back.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::routes::{normalize_host, IngressConfig, RouteTable};
use crate::tls::{server_config, CertStore};

type Body = BoxBody<Bytes, hyper::Error>;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to an endpoint may take before 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Plain HTTP or TLS-terminated HTTPS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The ingress proxy: its routes and certificates can be replaced at any
/// time ([`IngressController::update`]); connections being served keep
/// the routes they started a request with.
#[derive(Clone)]
pub struct IngressController {
    inner: Arc<Inner>,
}

/// Builds the configuration from what its sources hold now, or `None`
/// when nothing changed since the last build.
pub type Refresh = Arc<dyn Fn() -> Option<IngressConfig> + Send + Sync>;

struct Inner {
    routes: RwLock<Arc<RouteTable>>,
    refresh: RwLock<Option<Refresh>>,
    certs: Arc<RwLock<Arc<CertStore>>>,
    tls: Arc<rustls::ServerConfig>,
    client: Client<HttpConnector, Incoming>,
}

impl Default for IngressController {
    fn default() -> Self {
        Self::new()
    }
}

impl IngressController {
    /// A controller with nothing routed yet (every request is 404).
    pub fn new() -> IngressController {
        let certs = Arc::new(RwLock::new(Arc::new(CertStore::default())));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        IngressController {
            inner: Arc::new(Inner {
                routes: RwLock::new(Arc::new(RouteTable::default())),
                refresh: RwLock::new(None),
                tls: server_config(certs.clone()),
                certs,
                client: Client::builder(TokioExecutor::new()).build(connector),
            }),
        }
    }

    /// Serves `config` from now on.
    pub fn update(&self, config: IngressConfig) {
        self.inner.install(config);
    }

    /// Lets a request that matches no route rebuild the configuration at
    /// once when `refresh` has newer objects, rather than wait for the
    /// owner's next (debounced) update: every node runs its own ingress,
    /// and a node whose table lags another's by a few milliseconds should
    /// still route what the other already does.
    pub fn set_refresh(&self, refresh: Refresh) {
        *self
            .inner
            .refresh
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(refresh);
    }

    /// The routes in force.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Listens on HTTP `http_port` and HTTPS `https_port` of every address
    /// (port 0 picks a free one). An address that cannot be bound (taken,
    /// or not ours) is logged and skipped: the others still serve.
    pub async fn listen(&self, addresses: &[IpAddr], http_port: u16, https_port: u16) -> Listening {
        let mut listening = Listening::default();
        for address in addresses {
            for (port, scheme) in [(http_port, Scheme::Http), (https_port, Scheme::Https)] {
                let at = SocketAddr::new(*address, port);
                match TcpListener::bind(at).await {
                    Ok(listener) => {
                        let local = listener.local_addr().unwrap_or(at);
                        tracing::info!(address = %local, scheme = scheme.as_str(), "ingress listening");
                        match scheme {
                            Scheme::Http => listening.http.push(local),
                            Scheme::Https => listening.https.push(local),
                        }
                        listening.tasks.push(self.serve(listener, scheme));
                    }
                    Err(e) => tracing::warn!(
                        address = %at,
                        scheme = scheme.as_str(),
                        error = %e,
                        "the ingress cannot listen here; serving on the other addresses"
                    ),
                }
            }
        }
        listening
    }

    /// Serves connections from `listener` until the task is aborted.
    pub fn serve(&self, listener: TcpListener, scheme: Scheme) -> JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            let acceptor = tokio_rustls::TlsAcceptor::from(inner.tls.clone());
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: pause, go on.
                        tracing::warn!(error = %e, "ingress accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let inner = inner.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match scheme {
                        Scheme::Http => serve_connection(inner, stream, peer, port, scheme).await,
                        Scheme::Https => match acceptor.accept(stream).await {
                            Ok(tls) => serve_connection(inner, tls, peer, port, scheme).await,
                            Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        },
                    }
                });
            }
        })
    }
}

async fn serve_connection<S>(
    inner: Arc<Inner>,
    stream: S,
    peer: SocketAddr,
    port: u16,
    scheme: Scheme,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let inner = inner.clone();
        async move { Ok::<_, Infallible>(proxy(&inner, req, peer, port, scheme).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "ingress connection ended");
    }
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1),
/// plus those the `Connection` header names: never forwarded.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// The routes rebuilt now, if the owner's objects changed since the last
/// build.
fn refresh(inner: &Inner) -> Option<Arc<RouteTable>> {
    let refresh = inner
        .refresh
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()?;
    Some(inner.install(refresh()?))
}

impl Inner {
    /// Serves `config`'s routes and certificates from now on; the routes.
    fn install(&self, config: IngressConfig) -> Arc<RouteTable> {
        let routes = Arc::new(config.routes);
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes.clone();
        *self.certs.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config.certs);
        routes
    }
}

async fn proxy(
    inner: &Inner,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    port: u16,
    scheme: Scheme,
) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let routes = inner
        .routes
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let refreshed;
    let backend = match routes.route(&host, &path) {
        Some(backend) => Some(backend),
        None => {
            refreshed = refresh(inner);
            refreshed.as_ref().and_then(|r| r.route(&host, &path))
        }
    };
    let Some(backend) = backend else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "404 Not Found: no ingress rule for host {:?} and path {path:?}\n",
                normalize_host(&host)
            ),
        );
    };
    let endpoint = match backend.pick() {
        Ok(endpoint) => endpoint,
        Err(why) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("503 Service Unavailable: {why}\n"),
            )
        }
    };
    let backend_name = backend.name.clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let Ok(uri) = format!("http://{endpoint}{path_and_query}").parse::<Uri>() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("400 Bad Request: cannot forward {path_and_query:?}\n"),
        );
    };
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    // The backend sees the host the client asked for, as behind any
    // ingress controller; the client's own forwarding headers are not
    // trusted and replaced.
    if let Ok(value) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, value.clone());
        headers.insert(HeaderName::from_static("x-forwarded-host"), value);
    }
    let client_ip = peer.ip().to_canonical().to_string();
    for (name, value) in [
        ("x-forwarded-for", client_ip.clone()),
        ("x-real-ip", client_ip),
        ("x-forwarded-proto", scheme.as_str().to_string()),
        ("x-forwarded-port", port.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    match inner.client.request(req).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => {
            tracing::warn!(backend = %backend_name, %endpoint, error = %e, "proxying failed");
            text(
                StatusCode::BAD_GATEWAY,
                format!("502 Bad Gateway: {backend_name} at {endpoint}: {e}\n"),
            )
        }
    }
}

/// The addresses a controller listens on; dropping it stops the listeners.
#[derive(Debug, Default)]
pub struct Listening {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
