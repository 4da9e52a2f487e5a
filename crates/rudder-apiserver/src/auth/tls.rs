//! HTTPS serving: the TLS handshake (client certificates requested, not
//! required, so bearer tokens still work), then HTTP/1.1 with upgrades
//! (exec, attach and port-forward streams) on the same router as plain
//! HTTP. The verified client certificate's identity rides on every request
//! of its connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use rudder_auth::UserInfo;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::ApiServer;

/// What a connection's client certificate says about its requests.
#[derive(Clone, Debug)]
pub(crate) enum ConnectionIdentity {
    /// No certificate was presented.
    None,
    /// A certificate the client CA signed: CN is the user, each O a group.
    User(UserInfo),
    /// A certificate that names nobody (another CA's, expired, not for
    /// client authentication, unreadable): its requests are refused 401
    /// unless they carry a valid bearer token.
    Invalid,
}

/// A client that opens a connection and never finishes the handshake does
/// not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve(
    server: ApiServer,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    // The handshake leaves the client certificate's chain to us (see
    // `rudder_auth::pki::server_config`).
    let chains = server
        .security()
        .map(|security| {
            rudder_auth::pki::ClientChainVerifier::new(&security.config.client_ca_pem)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
        })
        .transpose()?
        .map(Arc::new);
    let router = server.router();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: keep serving.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let chains = chains.clone();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let identity = match tls.get_ref().1.peer_certificates() {
                Some(chain) if !chain.is_empty() => certificate_identity(&chains, chain, peer),
                _ => ConnectionIdentity::None,
            };
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(peer));
                    request.extensions_mut().insert(identity.clone());
                    router.clone().oneshot(request.map(axum::body::Body::new))
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                }
                _ = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    server.begin_closing();
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Who a presented certificate chain (leaf first) stands for.
fn certificate_identity(
    chains: &Option<Arc<rudder_auth::pki::ClientChainVerifier>>,
    chain: &[rustls::pki_types::CertificateDer<'static>],
    peer: SocketAddr,
) -> ConnectionIdentity {
    let Some(chains) = chains else {
        return ConnectionIdentity::Invalid;
    };
    if let Err(err) = chains.verify(chain) {
        tracing::debug!(%peer, error = %err, "client certificate refused");
        return ConnectionIdentity::Invalid;
    }
    match rudder_auth::pki::client_identity(chain[0].as_ref()) {
        Ok((name, groups)) => {
            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            ConnectionIdentity::User(UserInfo::authenticated(name, &groups))
        }
        Err(err) => {
            tracing::debug!(%peer, error = %err, "unreadable client certificate");
            ConnectionIdentity::Invalid
        }
    }
}

/// Resolves once the server stops (without holding the watch's lock across
/// an await, so the connection task stays `Send`).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
