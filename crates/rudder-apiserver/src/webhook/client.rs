//! Posting an AdmissionReview to a webhook over HTTPS: the address a
//! `clientConfig` names (a URL, or a Service resolved to its ClusterIP as
//! kube-apiserver resolves it), TLS verified against the `caBundle` (or the
//! system's roots when there is none) for the name kube-apiserver checks,
//! and the timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use super::config::Endpoint;
use crate::rest::decode;
use crate::ApiServer;

/// Why a call failed: the text after `failed calling webhook "NAME": `,
/// as kube-apiserver words it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The TLS client could not be built from the configuration.
    #[error("could not get REST client: {0}")]
    Client(String),
    /// The request was not answered: `Post "URL": cause`.
    #[error("failed to call webhook: Post {url:?}: {cause}")]
    Post { url: String, cause: String },
    /// An answer that is not a usable AdmissionReview.
    #[error("failed to call webhook: {0}")]
    Answer(String),
    #[error("received invalid webhook response: {0}")]
    InvalidResponse(String),
    #[error("unsupported patch type {0:?}")]
    PatchType(String),
}

/// TLS client configurations, one per distinct caBundle, built once.
#[derive(Default)]
pub(crate) struct TlsConfigs {
    by_bundle: Mutex<HashMap<Vec<u8>, Arc<rustls::ClientConfig>>>,
}

impl TlsConfigs {
    fn get(&self, ca_bundle: &[u8]) -> Result<Arc<rustls::ClientConfig>, CallError> {
        let mut configs = self.by_bundle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = configs.get(ca_bundle) {
            return Ok(config.clone());
        }
        let config = Arc::new(build_tls_config(ca_bundle)?);
        configs.insert(ca_bundle.to_vec(), config.clone());
        Ok(config)
    }
}

/// A client trusting `ca_bundle` (PEM), or the system's roots when it is
/// empty, as kube-apiserver falls back to them. HTTP/1.1 only, as
/// kube-apiserver asks of webhooks.
fn build_tls_config(ca_bundle: &[u8]) -> Result<rustls::ClientConfig, CallError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut anchors: Vec<CertificateDer<'static>> = Vec::new();
    if ca_bundle.is_empty() {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system certificate rustls cannot use is skipped, as Go skips it.
            let _ = roots.add(cert);
        }
    } else {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_bundle)
            .collect::<Result<_, _>>()
            .map_err(|e| CallError::Client(format!("unable to load root certificates: {e}")))?;
        if certs.is_empty() {
            return Err(CallError::Client(
                "unable to load root certificates: unable to parse bytes as PEM block".into(),
            ));
        }
        for cert in certs {
            anchors.push(cert.clone());
            roots
                .add(cert)
                .map_err(|e| CallError::Client(format!("unable to load root certificates: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| CallError::Client(format!("unable to load root certificates: {e}")))?;
    let verifier = Arc::new(BundleVerifier {
        webpki,
        anchors,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CallError::Client(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The caBundle's verification as Go's crypto/x509 does it: a chain to one
/// of its certificates, or the server's certificate being one of them.
/// Go trusts a certificate found in the root pool as it is, CA or not, so
/// a self-signed webhook certificate can serve as its own caBundle (what
/// `openssl req -x509` makes carries CA:TRUE, which webpki refuses as an
/// end entity). The name and validity period are still checked.
#[derive(Debug)]
struct BundleVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    anchors: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for BundleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let chained = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if chained.is_ok()
            || !self
                .anchors
                .iter()
                .any(|a| a.as_ref() == end_entity.as_ref())
        {
            return chained;
        }
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        cert.verify_is_valid_for_subject_name(server_name)
            .map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
            })?;
        let parsed = x509_validity(end_entity.as_ref());
        if let Some((not_before, not_after)) = parsed {
            let now = now.as_secs();
            if now < not_before {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidYet,
                ));
            }
            if now > not_after {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired,
                ));
            }
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A certificate's notBefore and notAfter (Unix seconds).
fn x509_validity(der: &[u8]) -> Option<(u64, u64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    Some((
        u64::try_from(validity.not_before.timestamp()).ok()?,
        u64::try_from(validity.not_after.timestamp()).ok()?,
    ))
}

/// Where to connect and what to verify, for one call.
struct Target {
    /// The URL as messages show it (with kube-apiserver's `?timeout=`).
    url: String,
    /// `host:port` to connect to.
    connect: String,
    /// The name the certificate must hold.
    server_name: String,
    /// The Host header.
    authority: String,
    /// Path and query of the request.
    path_and_query: String,
}

fn timeout_query(timeout: Duration) -> String {
    format!("timeout={}s", timeout.as_secs())
}

/// Splits `https://host[:port][/path]` into host, port and path.
fn split_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, tail) = v6.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => 443,
        };
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (authority.to_owned(), 443),
        }
    };
    (!host.is_empty()).then_some((host, port, path.to_owned()))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl ApiServer {
    /// Where a webhook's endpoint is. For a Service: its ClusterIP and the
    /// Service port equal to the configured one (kube-apiserver's
    /// `ResolveCluster`), verified as `NAME.NAMESPACE.svc`; the failure
    /// to resolve reads as a failed Post, as the resolution happens when
    /// kube-apiserver dials.
    async fn resolve(&self, endpoint: &Endpoint, timeout: Duration) -> Result<Target, CallError> {
        match endpoint {
            Endpoint::Url(url) => {
                let (host, port, path) = split_url(url)
                    .ok_or_else(|| CallError::Client(format!("Unparsable URL: {url:?}")))?;
                let path = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                let path_and_query = format!("{path}?{}", timeout_query(timeout));
                let authority = url
                    .strip_prefix("https://")
                    .and_then(|r| r.split('/').next())
                    .unwrap_or(&host)
                    .to_owned();
                Ok(Target {
                    url: format!("https://{authority}{path_and_query}"),
                    connect: join_host_port(&host, port),
                    server_name: host,
                    authority,
                    path_and_query,
                })
            }
            Endpoint::Service {
                namespace,
                name,
                path,
                port,
            } => {
                let server_name = format!("{name}.{namespace}.svc");
                let authority = format!("{server_name}:{port}");
                let path = if path.is_empty() { "/" } else { path };
                let path_and_query = format!("{path}?{}", timeout_query(timeout));
                let url = format!("https://{authority}{path_and_query}");
                let connect =
                    self.service_address(namespace, name, *port)
                        .await
                        .map_err(|cause| CallError::Post {
                            url: url.clone(),
                            cause,
                        })?;
                Ok(Target {
                    url,
                    connect,
                    server_name,
                    authority,
                    path_and_query,
                })
            }
        }
    }

    async fn service_address(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Result<String, String> {
        let services = self
            .registry()
            .get("", "v1", "services")
            .ok_or("services are not registered")?;
        let kv = self
            .store()
            .get(&services.key(Some(namespace), name), None)
            .await
            .map_err(|e| e.to_string())?
            .0
            .ok_or_else(|| format!("services {name:?} not found"))?;
        let svc = decode(&kv).map_err(|e| e.to_string())?;
        let spec = &svc["spec"];
        let kind = spec["type"].as_str().unwrap_or("ClusterIP");
        let cluster_ip = spec["clusterIP"].as_str().unwrap_or("");
        match kind {
            "ClusterIP" if cluster_ip == "None" => {
                Err(r#"cannot route to service with ClusterIP "None""#.to_owned())
            }
            "ClusterIP" | "NodePort" | "LoadBalancer" => {
                let has_port = spec["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["port"].as_u64() == Some(u64::from(port)));
                if !has_port {
                    return Err(format!("no service port {port} found for service {name:?}"));
                }
                Ok(join_host_port(cluster_ip, port))
            }
            "ExternalName" => Ok(join_host_port(
                spec["externalName"].as_str().unwrap_or(""),
                port,
            )),
            other => Err(format!("unsupported service type {other:?}")),
        }
    }

    /// Posts `review` to a webhook and returns the answer's JSON, within
    /// `timeout` (connection, handshake and answer together).
    pub(super) async fn post_review(
        &self,
        endpoint: &Endpoint,
        ca_bundle: &[u8],
        timeout: Duration,
        review: &Value,
    ) -> Result<Value, CallError> {
        let tls = self.inner.webhook_tls.get(ca_bundle)?;
        let target = self.resolve(endpoint, timeout).await?;
        let url = target.url.clone();
        let body = serde_json::to_vec(review).map_err(|e| CallError::Answer(e.to_string()))?;
        let exchange = exchange(tls, &target, body);
        let (status, answer) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                return Err(CallError::Post {
                    url,
                    cause: "context deadline exceeded".into(),
                })
            }
            Ok(Err(cause)) => return Err(CallError::Post { url, cause }),
            Ok(Ok(answer)) => answer,
        };
        if !(200..300).contains(&status) {
            return Err(CallError::Answer(server_error(status, &answer)));
        }
        serde_json::from_slice(&answer).map_err(|e| CallError::Answer(e.to_string()))
    }
}

/// The message client-go gives an answer that is not a success: the
/// Status it holds, or its generic one.
fn server_error(status: u16, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if v["kind"] == "Status" {
            if let Some(message) = v["message"].as_str().filter(|m| !m.is_empty()) {
                return message.to_owned();
            }
        }
    }
    if status == 404 {
        return "the server could not find the requested resource".into();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let text = if text.is_empty() { "unknown" } else { text };
    format!("an error on the server ({text:?}) has prevented the request from succeeding")
}

/// Connects, handshakes and posts; the answer's status and body.
async fn exchange(
    tls: Arc<rustls::ClientConfig>,
    target: &Target,
    body: Vec<u8>,
) -> Result<(u16, Bytes), String> {
    let tcp = tokio::net::TcpStream::connect(&target.connect)
        .await
        .map_err(|e| format!("dial tcp {}: connect: {}", target.connect, io_text(&e)))?;
    let server_name = ServerName::try_from(target.server_name.clone())
        .map_err(|e| format!("invalid server name {:?}: {e}", target.server_name))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("tls: failed to verify certificate: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::post(&target.path_and_query)
        .header(hyper::header::HOST, &target.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json, */*")
        .header(hyper::header::USER_AGENT, "rudder-apiserver-admission")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string());
    let result = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            response
                .into_body()
                .collect()
                .await
                .map(|b| (status, b.to_bytes()))
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

/// An I/O error as Go words the common ones (`connection refused`).
fn io_text(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset by peer".into(),
        std::io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            split_url("https://hook.example.com/v"),
            Some(("hook.example.com".into(), 443, "/v".into()))
        );
        assert_eq!(
            split_url("https://127.0.0.1:8443"),
            Some(("127.0.0.1".into(), 8443, String::new()))
        );
        assert_eq!(
            split_url("https://[::1]:9443/a/b"),
            Some(("::1".into(), 9443, "/a/b".into()))
        );
        assert_eq!(split_url("http://x/"), None);
        assert_eq!(join_host_port("::1", 443), "[::1]:443");
    }

    #[test]
    fn failed_answers_read_as_client_go_reports_them() {
        assert_eq!(
            server_error(500, b""),
            r#"an error on the server ("unknown") has prevented the request from succeeding"#
        );
        assert_eq!(
            server_error(403, br#"{"kind":"Status","message":"go away"}"#),
            "go away"
        );
        assert_eq!(
            server_error(404, b"nope"),
            "the server could not find the requested resource"
        );
    }

    #[test]
    fn a_bundle_that_is_not_pem_is_refused() {
        let err = build_tls_config(b"not a certificate").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("could not get REST client: unable to load root certificates"),
            "{err}"
        );
    }
}
