//! The cluster PKI: two certificate authorities (one for serving
//! certificates, one for client certificates, as k3s keeps them) and the
//! leaf certificates the control plane needs, kept as PEM files in one
//! directory (the server passes `DATA_DIR/tls`).
//!
//! The CAs are created once and never replaced: every kubeconfig, node and
//! join token pins them. Leaf certificates are cheap: they are re-issued
//! when missing, when they expire within [`RENEW_BEFORE`] (k3s' rule), when
//! they no longer say what is asked of them (subject, SANs), or when they
//! were not signed by the CA in the directory. Every certificate has a
//! fresh ECDSA P-256 key.
//!
//! Sub-modules: [`csr`] (certificate signing requests), [`join`] (node join
//! tokens) and [`tls`] (rustls configurations).

pub mod csr;
mod der;
pub mod join;
pub mod tls;

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

pub use csr::{new_key_and_csr, parse_csr, CsrInfo, Signer};
pub use join::{ca_hash, load_or_create_join_token, rotate_join_token, JoinToken};
pub use tls::{client_config, server_config, unverified_client_config, ClientChainVerifier};

/// The CA that signs serving certificates (API server, node agents).
pub const SERVER_CA: &str = "server-ca";
/// The CA that signs client certificates; the API server trusts it.
pub const CLIENT_CA: &str = "client-ca";
/// The API server's serving certificate.
pub const SERVING_KUBE_APISERVER: &str = "serving-kube-apiserver";
/// `system:admin` in `system:masters`: the admin kubeconfig.
pub const CLIENT_ADMIN: &str = "client-admin";
pub const CLIENT_KUBE_SCHEDULER: &str = "client-kube-scheduler";
pub const CLIENT_KUBE_CONTROLLER_MANAGER: &str = "client-kube-controller-manager";
/// The API server's client certificate towards node agents (logs, exec).
pub const CLIENT_KUBE_APISERVER: &str = "client-kube-apiserver";
/// The ServiceAccount token signing key (ECDSA P-256, PKCS#8).
pub const SERVICE_ACCOUNT_KEY: &str = "service.key";

/// How long a CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf certificate is valid unless asked otherwise.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A leaf expiring within this is re-issued at start (k3s' rule).
pub const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start this much in the past, so that a node whose clock is
/// a little behind the server's accepts them at once.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("generating or signing a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("the certificate signing request's signature does not verify")]
    CsrSignature,
    /// The request is not one the signer may sign; the message is
    /// Kubernetes' (for example `subject organization is not system:nodes`).
    #[error("{0}")]
    NotAllowed(String),
    #[error("{}: the CA certificate is there but its key is not: refusing to replace a CA", path.display())]
    CaKeyMissing { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl PkiError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
        move |source| PkiError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn invalid(what: &'static str, reason: impl ToString) -> PkiError {
        PkiError::Invalid {
            what,
            reason: reason.to_string(),
        }
    }
}

/// A certificate (PEM, possibly a chain) and its private key (PKCS#8 PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    /// The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// One of the two CAs, able to sign.
struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("issuer", &self.issuer).finish()
    }
}

/// What a leaf certificate is for: its extended key usage and its CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Usage {
    Server,
    Client,
}

/// Everything a leaf certificate says, to issue one or to check one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Subject {
    common_name: String,
    organizations: Vec<String>,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
}

/// The cluster's CAs in their directory; issues and keeps leaf certificates.
#[derive(Debug)]
pub struct ClusterPki {
    dir: PathBuf,
    server_ca: Ca,
    client_ca: Ca,
}

impl ClusterPki {
    /// Loads both CAs from `dir`, creating the directory (0700) and any CA
    /// that is not there yet. An existing CA is never replaced; a CA
    /// certificate without its key is an error rather than a new CA.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        fs::create_dir_all(dir).map_err(PkiError::io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(PkiError::io(dir))?;
        Ok(ClusterPki {
            server_ca: load_or_create_ca(dir, SERVER_CA)?,
            client_ca: load_or_create_ca(dir, CLIENT_CA)?,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA bundle clients use to verify serving certificates (and the
    /// one join tokens pin).
    pub fn server_ca_pem(&self) -> &str {
        &self.server_ca.cert_pem
    }

    /// The CA the API server and node agents trust for client certificates.
    pub fn client_ca_pem(&self) -> &str {
        &self.client_ca.cert_pem
    }

    /// A serving certificate `<stem>.crt`/`.key` signed by the server CA,
    /// covering `dns` and `ips`; re-issued when it does not cover them
    /// (any more), expires within [`RENEW_BEFORE`] or is missing. Its
    /// common name is the stem without its `serving-` prefix
    /// (`kube-apiserver`).
    pub fn ensure_serving(
        &self,
        stem: &str,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<CertAndKey, PkiError> {
        let wanted = Subject {
            common_name: stem.strip_prefix("serving-").unwrap_or(stem).to_string(),
            organizations: Vec::new(),
            dns_names: dedup(dns.to_vec()),
            ip_addresses: dedup(ips.to_vec()),
        };
        self.ensure_leaf(stem, &wanted, Usage::Server, |have| {
            wanted.dns_names.iter().all(|d| have.dns_names.contains(d))
                && wanted
                    .ip_addresses
                    .iter()
                    .all(|i| have.ip_addresses.contains(i))
        })
    }

    /// A client certificate `<stem>.crt`/`.key` signed by the client CA for
    /// user `common_name` in groups `organizations`; re-issued when it names
    /// someone else, expires within [`RENEW_BEFORE`] or is missing.
    pub fn ensure_client(
        &self,
        stem: &str,
        common_name: &str,
        organizations: &[&str],
    ) -> Result<CertAndKey, PkiError> {
        let wanted = client_subject(common_name, organizations);
        self.ensure_leaf(stem, &wanted, Usage::Client, |have| {
            have.common_name == wanted.common_name && have.organizations == wanted.organizations
        })
    }

    /// A fresh client certificate, not stored (a kubeconfig for a user).
    pub fn issue_client(
        &self,
        common_name: &str,
        organizations: &[&str],
        validity: Duration,
    ) -> Result<CertAndKey, PkiError> {
        let key = KeyPair::generate()?;
        let subject = client_subject(common_name, organizations);
        let cert_pem = self.issue(&subject, Usage::Client, &key, validity)?;
        Ok(CertAndKey {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate signing request (PEM) as `signer` does in
    /// Kubernetes: the subject and the DNS and IP SANs come from the
    /// request (whose signature is checked), the usages and the CA from the
    /// signer, after the signer's restrictions ([`Signer::check`]).
    /// Returns the certificate (PEM).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        signer: Signer,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let (info, public_key) = csr::parse_with_key(csr_pem)?;
        signer.check(&info)?;
        let subject = Subject {
            common_name: info.common_name,
            organizations: info.organizations,
            dns_names: info.dns_names,
            ip_addresses: info.ip_addresses,
        };
        let usage = if signer.is_serving() {
            Usage::Server
        } else {
            Usage::Client
        };
        self.issue(&subject, usage, &public_key, validity)
    }

    /// The ServiceAccount token signing key (PKCS#8 PEM), created on first
    /// use and kept in `service.key` (0600) ever after: every token the
    /// cluster issued stays valid across restarts.
    pub fn service_account_key_pem(&self) -> Result<String, PkiError> {
        let path = self.dir.join(SERVICE_ACCOUNT_KEY);
        match fs::read_to_string(&path) {
            Ok(pem) => return Ok(pem),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(PkiError::io(&path)(e)),
        }
        let pem = KeyPair::generate()?.serialize_pem();
        write_file(&path, pem.as_bytes(), 0o600)?;
        Ok(pem)
    }

    /// Re-issues every leaf certificate in the directory with a new key and
    /// a new validity, keeping its subject and SANs (`rudder certificate
    /// rotate`); the CAs are untouched, so nothing that trusts them needs
    /// to change. Files that no CA of ours signed are left alone. Returns
    /// the files rewritten.
    pub fn rotate(&self) -> Result<Vec<PathBuf>, PkiError> {
        let mut crts: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(PkiError::io(&self.dir))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "crt"))
            .filter(|p| {
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                stem != SERVER_CA && stem != CLIENT_CA
            })
            .collect();
        crts.sort();
        let mut rewritten = Vec::new();
        for crt in crts {
            let Ok(pem) = fs::read_to_string(&crt) else {
                continue;
            };
            let Ok(der) = first_cert_der(&pem) else {
                continue;
            };
            let Ok(facts) = LeafFacts::parse(&der) else {
                continue;
            };
            let usage = if facts.signed_by(&self.server_ca) {
                Usage::Server
            } else if facts.signed_by(&self.client_ca) {
                Usage::Client
            } else {
                continue;
            };
            let stem = crt.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            self.write_new_leaf(stem, &facts.subject, usage)?;
            rewritten.push(crt.clone());
            rewritten.push(crt.with_extension("key"));
        }
        Ok(rewritten)
    }

    fn ca(&self, usage: Usage) -> &Ca {
        match usage {
            Usage::Server => &self.server_ca,
            Usage::Client => &self.client_ca,
        }
    }

    /// The stored `<stem>` leaf when it is still good (ours, its key with
    /// it, not expiring, and `satisfies` what is wanted), else a new one.
    fn ensure_leaf(
        &self,
        stem: &str,
        wanted: &Subject,
        usage: Usage,
        satisfies: impl Fn(&Subject) -> bool,
    ) -> Result<CertAndKey, PkiError> {
        if let Some(current) = self.read_leaf(stem) {
            if let Ok(der) = first_cert_der(&current.cert_pem) {
                if let Ok(facts) = LeafFacts::parse(&der) {
                    let fresh = facts
                        .not_after
                        .duration_since(SystemTime::now())
                        .is_ok_and(|left| left > RENEW_BEFORE);
                    if fresh
                        && facts.signed_by(self.ca(usage))
                        && facts.has_usage(usage)
                        && facts.key_matches(&current.key_pem)
                        && satisfies(&facts.subject)
                    {
                        return Ok(current);
                    }
                }
            }
        }
        self.write_new_leaf(stem, wanted, usage)
    }

    fn read_leaf(&self, stem: &str) -> Option<CertAndKey> {
        Some(CertAndKey {
            cert_pem: fs::read_to_string(self.dir.join(format!("{stem}.crt"))).ok()?,
            key_pem: fs::read_to_string(self.dir.join(format!("{stem}.key"))).ok()?,
        })
    }

    /// Issues a leaf with a new key and writes it: the key first, so that
    /// a crash in between leaves a certificate that no longer matches its
    /// key, which the next start re-issues.
    fn write_new_leaf(
        &self,
        stem: &str,
        subject: &Subject,
        usage: Usage,
    ) -> Result<CertAndKey, PkiError> {
        let key = KeyPair::generate()?;
        let cert_pem = self.issue(subject, usage, &key, LEAF_VALIDITY)?;
        let leaf = CertAndKey {
            cert_pem,
            key_pem: key.serialize_pem(),
        };
        write_file(
            &self.dir.join(format!("{stem}.key")),
            leaf.key_pem.as_bytes(),
            0o600,
        )?;
        write_file(
            &self.dir.join(format!("{stem}.crt")),
            leaf.cert_pem.as_bytes(),
            0o644,
        )?;
        Ok(leaf)
    }

    /// Signs a leaf certificate for `public_key`.
    fn issue(
        &self,
        subject: &Subject,
        usage: Usage,
        public_key: &impl PublicKeyData,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let ca = self.ca(usage);
        let mut params = base_params(validity)?;
        params.subject_alt_names = subject
            .dns_names
            .iter()
            .map(|d| {
                d.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| PkiError::invalid("DNS name", format!("{d:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        params
            .subject_alt_names
            .extend(subject.ip_addresses.iter().copied().map(SanType::IpAddress));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if public_key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        let (dn, rewrite) = der::subject_name(&subject.common_name, &subject.organizations);
        params.distinguished_name = dn;
        let cert = params.signed_by(public_key, &ca.issuer)?;
        let der = match rewrite {
            Some(rewrite) => rewrite.apply(cert.der(), ca.issuer.key())?,
            None => cert.der().to_vec(),
        };
        Ok(pem_encode("CERTIFICATE", &der))
    }
}

fn client_subject(common_name: &str, organizations: &[&str]) -> Subject {
    Subject {
        common_name: common_name.to_string(),
        organizations: organizations.iter().map(|o| o.to_string()).collect(),
        ..Default::default()
    }
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Parameters every certificate shares: a random serial number and a
/// validity from a little before now.
fn base_params(validity: Duration) -> Result<CertificateParams, PkiError> {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
    let mut serial = [0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| PkiError::invalid("random source", "no random bytes"))?;
    // Positive, and 16 bytes long: RFC 5280 wants at most 20 octets.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

fn load_or_create_ca(dir: &Path, stem: &str) -> Result<Ca, PkiError> {
    let crt = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let (cert_pem, key_pem) = match fs::read_to_string(&crt) {
        Ok(cert_pem) => {
            let key_pem = fs::read_to_string(&key).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => PkiError::CaKeyMissing { path: crt.clone() },
                _ => PkiError::io(&key)(e),
            })?;
            (cert_pem, key_pem)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key_pair = KeyPair::generate()?;
            let mut params = base_params(CA_VALIDITY)?;
            let since_epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            // k3s names its CAs `k3s-server-ca@<unix time>`: a new CA has a
            // new name, so a stale cached issuer never matches it.
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, format!("rudder-{stem}@{since_epoch}"));
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
            let cert_pem = params.self_signed(&key_pair)?.pem();
            let key_pem = key_pair.serialize_pem();
            write_file(&key, key_pem.as_bytes(), 0o600)?;
            write_file(&crt, cert_pem.as_bytes(), 0o644)?;
            (cert_pem, key_pem)
        }
        Err(e) => return Err(PkiError::io(&crt)(e)),
    };
    let key_pair = KeyPair::from_pem(&key_pem)
        .map_err(|e| PkiError::invalid("CA key", format!("{}: {e}", key.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair)
        .map_err(|e| PkiError::invalid("CA certificate", format!("{}: {e}", crt.display())))?;
    Ok(Ca {
        cert_der: first_cert_der(&cert_pem)?,
        cert_pem,
        issuer,
    })
}

/// What a stored leaf certificate says.
struct LeafFacts {
    der: Vec<u8>,
    subject: Subject,
    not_after: SystemTime,
    server_auth: bool,
    client_auth: bool,
    public_key_der: Vec<u8>,
}

impl LeafFacts {
    fn parse(der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse_cert(der)?;
        let (common_name, organizations) = name_of(&cert);
        let mut subject = Subject {
            common_name,
            organizations,
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => subject.dns_names.push(d.to_string()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            subject.ip_addresses.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        let (server_auth, client_auth) = match cert.extended_key_usage() {
            Ok(Some(eku)) => (eku.value.server_auth, eku.value.client_auth),
            _ => (false, false),
        };
        Ok(LeafFacts {
            subject,
            not_after: asn1_time(cert.validity().not_after),
            server_auth,
            client_auth,
            public_key_der: cert.public_key().raw.to_vec(),
            der: der.to_vec(),
        })
    }

    fn signed_by(&self, ca: &Ca) -> bool {
        let (Ok(cert), Ok(ca_cert)) = (parse_cert(&self.der), parse_cert(&ca.cert_der)) else {
            return false;
        };
        cert.issuer() == ca_cert.subject()
            && cert.verify_signature(Some(ca_cert.public_key())).is_ok()
    }

    fn has_usage(&self, usage: Usage) -> bool {
        match usage {
            Usage::Server => self.server_auth,
            Usage::Client => self.client_auth,
        }
    }

    fn key_matches(&self, key_pem: &str) -> bool {
        KeyPair::from_pem(key_pem).is_ok_and(|k| k.subject_public_key_info() == self.public_key_der)
    }
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::invalid("certificate", e))
}

/// The subject's common name and organizations.
fn name_of(cert: &X509Certificate<'_>) -> (String, Vec<String>) {
    names_in(cert.subject())
}

fn names_in(name: &x509_parser::x509::X509Name<'_>) -> (String, Vec<String>) {
    let common_name = name
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let organizations = name
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    (common_name, organizations)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn asn1_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// The first certificate of a PEM bundle, as DER.
fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| PkiError::invalid("certificate PEM", e))
}

/// The user an x509 client certificate stands for, as the API server names
/// it: the subject's common name is the user name, its organizations the
/// groups.
pub fn client_identity(cert_der: &[u8]) -> Result<(String, Vec<String>), PkiError> {
    Ok(name_of(&parse_cert(cert_der)?))
}

/// The credential id Kubernetes records for a client certificate (user
/// extra `authentication.kubernetes.io/credential-id`):
/// `X509SHA256=<hex SHA-256 of the certificate DER>`.
pub fn x509_credential_id(cert_der: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("X509SHA256={hex}")
}

/// When the first certificate of `cert_pem` expires.
pub fn not_after(cert_pem: &str) -> Result<SystemTime, PkiError> {
    let der = first_cert_der(cert_pem)?;
    Ok(asn1_time(parse_cert(&der)?.validity().not_after))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `path` whole or not at all (a temporary file renamed over it),
/// created with `mode` so that a key is never readable by others, not even
/// for a moment.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(PkiError::io(&tmp))?;
    file.write_all(contents)
        .and_then(|_| file.sync_all())
        .map_err(PkiError::io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(PkiError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(PkiError::io(path))
}

#[cfg(test)]
mod tests;
