//! TLS termination: certificates from `kubernetes.io/tls` Secrets, chosen
//! per connection by the name the client asks for (SNI), swapped in as
//! the Ingresses change without restarting the listeners.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificates by host name.
#[derive(Debug, Default)]
pub struct CertStore {
    pub(crate) exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the domain after `*.`.
    pub(crate) wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients that send no name, or a name no Ingress lists: the first
    /// certificate loaded (of the oldest Ingress).
    pub(crate) fallback: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// The certificate for a server name: exact, then wildcard (one
    /// label), then the fallback.
    pub fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = server_name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).cloned().or_else(|| {
                let (label, domain) = name.split_once('.')?;
                if label.is_empty() {
                    return None;
                }
                self.wildcard.get(domain).cloned()
            })
        });
        by_name.or_else(|| self.fallback.clone())
    }

    /// Whether there is no certificate at all.
    pub fn is_empty(&self) -> bool {
        self.fallback.is_none()
    }
}

/// Why a Secret cannot serve as a certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsSecretError {
    #[error("no {field} in the secret (type {kind}; a kubernetes.io/tls secret holds tls.crt and tls.key)")]
    MissingField { field: &'static str, kind: String },
    #[error("{field}: {source}")]
    Pem {
        field: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    #[error("tls.crt and tls.key: {0}")]
    Key(#[source] rustls::Error),
}

/// The certificate and key of a Secret's `tls.crt` and `tls.key` (PEM),
/// checked to belong together.
pub fn certified_key(secret: &Secret) -> Result<CertifiedKey, TlsSecretError> {
    let data = secret.data.as_ref();
    let field = |field: &'static str| {
        data.and_then(|d| d.get(field))
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| TlsSecretError::MissingField {
                field,
                kind: secret.type_.clone().unwrap_or_else(|| "Opaque".into()),
            })
    };
    let chain = CertificateDer::pem_slice_iter(field("tls.crt")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsSecretError::Pem {
            field: "tls.crt",
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsSecretError::NoCertificate);
    }
    let key =
        PrivateKeyDer::from_pem_slice(field("tls.key")?).map_err(|source| TlsSecretError::Pem {
            field: "tls.key",
            source,
        })?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(TlsSecretError::Key)
}

/// The rustls side: looks the certificate up in the current store on each
/// handshake.
#[derive(Debug)]
pub(crate) struct Resolver {
    pub(crate) store: Arc<RwLock<Arc<CertStore>>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let store = self.store.read().unwrap_or_else(|e| e.into_inner()).clone();
        let key = store.resolve(hello.server_name());
        if key.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "no certificate; refusing the handshake");
        }
        key
    }
}

/// The server configuration: TLS 1.2 and 1.3 with ring, HTTP/1.1 by ALPN,
/// certificates from `store`.
pub(crate) fn server_config(store: Arc<RwLock<Arc<CertStore>>>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { store }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}
