//! rustls configurations for the API server, node agents and their
//! clients, always on the `ring` provider (named explicitly, so that no
//! process-wide default decides which cryptography runs).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::{CertAndKey, PkiError};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server presenting `serving` that asks for, but does not require,
/// a client certificate: clients without one can still authenticate with a
/// bearer token. The handshake proves the client holds the key of the
/// certificate it presents; whether `client_ca_pem` signed it is the
/// caller's to check with a [`ClientChainVerifier`] (the presented chain is
/// the connection's `peer_certificates()`). That is how kube-apiserver
/// treats client certificates: one from an unknown CA is not a failed
/// handshake but an unauthenticated request (401), and a bearer token on
/// the same request still counts. ALPN offers `http/1.1` only (the servers
/// speak HTTP/1.1).
pub fn server_config(
    serving: &CertAndKey,
    client_ca_pem: &str,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let verifier = ClientChainVerifier::new(client_ca_pem)?.handshake_verifier();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&serving.cert_pem)?, key(&serving.key_pem)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Checks a client certificate chain (leaf first) against the client CA:
/// signed by it, meant for client authentication, valid now.
#[derive(Clone, Debug)]
pub struct ClientChainVerifier(Arc<dyn ClientCertVerifier>);

impl ClientChainVerifier {
    pub fn new(client_ca_pem: &str) -> Result<Self, PkiError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(client_ca_pem)?),
            provider(),
        )
        .allow_unauthenticated()
        .build()?;
        Ok(ClientChainVerifier(verifier))
    }

    /// For a server's handshake: asks for a client certificate and checks
    /// the client holds its key, but accepts any chain, leaving it to
    /// [`Self::verify`] after the handshake (see [`server_config`]).
    pub fn handshake_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(DeferredChainVerifier(self.0.clone()))
    }

    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<(), PkiError> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| PkiError::invalid("client certificate", "none presented"))?;
        self.0
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| PkiError::invalid("client certificate", e))
    }
}

/// Requests a client certificate and checks the handshake signature made
/// with its key, but accepts any chain: [`ClientChainVerifier`] decides
/// after the handshake whether it names a user.
#[derive(Debug)]
struct DeferredChainVerifier(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for DeferredChainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A TLS client that trusts only `ca_pem` and, when given one, presents
/// `client`'s certificate.
pub fn client_config(
    ca_pem: &str,
    client: Option<&CertAndKey>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    let config = match client {
        Some(client) => {
            builder.with_client_auth_cert(certs(&client.cert_pem)?, key(&client.key_pem)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// **DANGER: this client accepts ANY server certificate.** It authenticates
/// nothing: whoever answers can read and change everything sent over it.
///
/// It exists for one step only: a node joining with a token fetches the
/// cluster's CA bundle over it, then checks the bundle against the hash the
/// join token pins ([`super::JoinToken::matches_ca`]) and from then on
/// uses [`client_config`] with that CA. Never send a secret over it, never
/// use it for anything else. (The server's handshake signature is still
/// checked, which proves nothing about who the server is.)
pub fn unverified_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyServerCert(
        provider.signature_verification_algorithms,
    ));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAnyServerCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::invalid("certificate PEM", e))?;
    if certs.is_empty() {
        return Err(PkiError::invalid("certificate PEM", "no certificate in it"));
    }
    Ok(certs)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::invalid("private key PEM", e))
}

fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| PkiError::invalid("CA certificate", e))?;
    }
    Ok(roots)
}
