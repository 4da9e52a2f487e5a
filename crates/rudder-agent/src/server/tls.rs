//! The secure server's TLS: the node's serving certificate, client
//! certificates requested (not required) and verified against the client
//! CA, and the accept loop that hands each connection's verified client
//! user to the routes.
//!
//! axum does not terminate TLS, so connections are accepted here, the
//! handshake done with tokio-rustls, and each connection served by hyper's
//! HTTP/1.1 server with upgrades enabled: exec, attach and port-forward
//! switch protocols (WebSocket, SPDY) on it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tower_service::Service;

use super::auth::ClientCertificateUser;
use super::x509;

/// A client has this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The serving certificate and the client CA, PEM-encoded.
#[derive(Clone)]
pub struct ServingTls {
    /// The node's serving certificate, then its chain.
    pub cert_pem: String,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
    /// The CA(s) client certificates must chain to (the cluster CA, whose
    /// certificates the API server and node agents present).
    pub client_ca_pem: String,
}

impl std::fmt::Debug for ServingTls {
    /// Without the private key, so that configurations can be logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingTls")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("client_ca_pem", &self.client_ca_pem)
            .finish()
    }
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("the {what} is not valid PEM: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the {0} holds no certificate")]
    NoCertificate(&'static str),
    #[error("the client CA is unusable: {0}")]
    ClientCa(String),
    #[error("the serving certificate and key are unusable: {0}")]
    Rustls(#[from] rustls::Error),
}

fn certificates(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::Pem { what, source })?;
    if certificates.is_empty() {
        return Err(TlsConfigError::NoCertificate(what));
    }
    Ok(certificates)
}

/// The secure server's TLS: the rustls configuration, and the client CA
/// check each presented certificate chain gets after the handshake.
#[derive(Clone)]
pub struct SecureTls {
    pub config: Arc<rustls::ServerConfig>,
    chains: rudder_auth::pki::ClientChainVerifier,
}

/// TLS 1.2 and 1.3 with ring, HTTP/1.1 by ALPN, the serving certificate,
/// and client certificates requested. A client certificate the client CA
/// did not sign completes the handshake but names nobody: its requests go
/// on to bearer-token authentication and are 401 without a token, as the
/// kubelet answers them.
pub fn server_config(tls: &ServingTls) -> Result<SecureTls, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&tls.cert_pem, "serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|source| {
        TlsConfigError::Pem {
            what: "serving key",
            source,
        }
    })?;
    certificates(&tls.client_ca_pem, "client CA")?;
    let chains = rudder_auth::pki::ClientChainVerifier::new(&tls.client_ca_pem)
        .map_err(|e| TlsConfigError::ClientCa(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(chains.handshake_verifier())
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(SecureTls {
        config: Arc::new(config),
        chains,
    })
}

/// Serves `app` over TLS on `listener`, forever. Each request carries its
/// connection's [`ClientCertificateUser`] as an extension. Accept errors
/// (out of file descriptors) are waited out, as `axum::serve` does.
pub async fn serve_tls(listener: tokio::net::TcpListener, tls: SecureTls, app: Router) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection to the agent's API failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let user = client_certificate_user(&tls.chains, stream.get_ref().1);
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(user.clone());
                    let mut app = app.clone();
                    async move { app.call(request).await }
                });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, error = %e, "serving a connection to the agent's API");
            }
        });
    }
}

/// The user of the connection's client certificate: none without one,
/// and a refused one (another CA's, expired, not for client auth) names
/// nobody either.
fn client_certificate_user(
    chains: &rudder_auth::pki::ClientChainVerifier,
    connection: &rustls::ServerConnection,
) -> ClientCertificateUser {
    let Some(chain) = connection.peer_certificates().filter(|c| !c.is_empty()) else {
        return ClientCertificateUser(None);
    };
    if let Err(e) = chains.verify(chain) {
        tracing::debug!(error = %e, "client certificate refused");
        return ClientCertificateUser(None);
    }
    match x509::certificate_user(&chain[0]) {
        Ok(user) => ClientCertificateUser(user),
        Err(e) => {
            tracing::debug!(error = %e, "reading the client certificate's subject");
            ClientCertificateUser(None)
        }
    }
}
