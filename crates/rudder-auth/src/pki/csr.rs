//! Certificate signing requests: making one (node agents ask for their
//! client and serving certificates this way), reading one, and the
//! Kubernetes signers that may sign them.

use std::net::IpAddr;

use rcgen::{CertificateParams, KeyPair, SanType, SubjectPublicKeyInfo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::{der, ip_from_bytes, names_in, pem_encode, PkiError};
use crate::user::{NODES, NODE_USER_PREFIX};

/// What a certificate signing request asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsrInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Kept to refuse them: no Kubernetes signer of ours signs these.
    pub email_addresses: Vec<String>,
    pub uris: Vec<String>,
}

/// Reads a certificate signing request (PEM) and checks its signature,
/// which proves the requester holds the key.
pub fn parse_csr(csr_pem: &str) -> Result<CsrInfo, PkiError> {
    parse_with_key(csr_pem).map(|(info, _)| info)
}

/// The request and its public key, to sign it.
pub(super) fn parse_with_key(csr_pem: &str) -> Result<(CsrInfo, SubjectPublicKeyInfo), PkiError> {
    // Kubernetes' message for a request that is not one.
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|_| PkiError::NotAllowed("PEM block type must be CERTIFICATE REQUEST".into()))?;
    let (_, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| PkiError::invalid("certificate signing request", e))?;
    csr.verify_signature().map_err(|_| PkiError::CsrSignature)?;
    let request = &csr.certification_request_info;
    let (common_name, organizations) = names_in(&request.subject);
    let mut info = CsrInfo {
        common_name,
        organizations,
        ..Default::default()
    };
    for extension in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = extension else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(d) => info.dns_names.push(d.to_string()),
                GeneralName::IPAddress(bytes) => match ip_from_bytes(bytes) {
                    Some(ip) => info.ip_addresses.push(ip),
                    None => {
                        return Err(PkiError::invalid("IP subjectAltName", format!("{bytes:?}")))
                    }
                },
                GeneralName::RFC822Name(e) => info.email_addresses.push(e.to_string()),
                GeneralName::URI(u) => info.uris.push(u.to_string()),
                _ => {}
            }
        }
    }
    let public_key = SubjectPublicKeyInfo::from_der(request.subject_pki.raw)
        .map_err(|e| PkiError::invalid("certificate signing request's public key", e))?;
    Ok((info, public_key))
}

/// A new ECDSA P-256 key (PKCS#8 PEM) and a request signed by it for
/// `common_name` in `organizations`, with DNS and IP SANs.
pub fn new_key_and_csr(
    common_name: &str,
    organizations: &[&str],
    dns: &[String],
    ips: &[IpAddr],
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let organizations: Vec<String> = organizations.iter().map(|o| o.to_string()).collect();
    let (dn, rewrite) = der::subject_name(common_name, &organizations);
    params.distinguished_name = dn;
    for d in dns {
        let name = d
            .clone()
            .try_into()
            .map_err(|e| PkiError::invalid("DNS name", format!("{d:?}: {e}")))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params
        .subject_alt_names
        .extend(ips.iter().copied().map(SanType::IpAddress));
    let csr = params.serialize_request(&key)?;
    let csr_der = match rewrite {
        Some(rewrite) => rewrite.apply(csr.der(), &key)?,
        None => csr.der().to_vec(),
    };
    Ok((
        key.serialize_pem(),
        pem_encode("CERTIFICATE REQUEST", &csr_der),
    ))
}

/// The Kubernetes signers (`spec.signerName` of a
/// CertificateSigningRequest) the cluster signs for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signer {
    /// `kubernetes.io/kube-apiserver-client`: any client certificate the
    /// API server accepts (client CA, clientAuth).
    KubeApiserverClient,
    /// `kubernetes.io/kube-apiserver-client-kubelet`: a node agent's
    /// client certificate (client CA, clientAuth).
    KubeApiserverClientKubelet,
    /// `kubernetes.io/kubelet-serving`: a node agent's serving certificate
    /// (server CA, serverAuth).
    KubeletServing,
}

impl Signer {
    pub const ALL: [Signer; 3] = [
        Signer::KubeApiserverClient,
        Signer::KubeApiserverClientKubelet,
        Signer::KubeletServing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Signer::KubeApiserverClient => "kubernetes.io/kube-apiserver-client",
            Signer::KubeApiserverClientKubelet => "kubernetes.io/kube-apiserver-client-kubelet",
            Signer::KubeletServing => "kubernetes.io/kubelet-serving",
        }
    }

    /// The signer called `name`, if we sign for it.
    pub fn from_name(name: &str) -> Option<Signer> {
        Signer::ALL.into_iter().find(|s| s.name() == name)
    }

    pub(super) fn is_serving(self) -> bool {
        self == Signer::KubeletServing
    }

    /// The signer's restrictions on what is requested, with Kubernetes'
    /// messages: node certificates are for `system:node:NAME` in
    /// `system:nodes` only; a node's client certificate names no host, its
    /// serving certificate at least one. Emails and URIs are never signed.
    pub fn check(self, csr: &CsrInfo) -> Result<(), PkiError> {
        let refuse = |message: &str| Err(PkiError::NotAllowed(message.to_string()));
        if self == Signer::KubeApiserverClient {
            if csr.common_name.is_empty() {
                return refuse("subject common name is required");
            }
            if !csr.email_addresses.is_empty() {
                return refuse("Email subjectAltNames are not allowed");
            }
            if !csr.uris.is_empty() {
                return refuse("URI subjectAltNames are not allowed");
            }
            return Ok(());
        }
        if csr.organizations != [NODES] {
            return refuse("subject organization is not system:nodes");
        }
        if self == Signer::KubeletServing {
            if csr.dns_names.is_empty() && csr.ip_addresses.is_empty() {
                return refuse("DNS or IP subjectAltName is required");
            }
        } else {
            if !csr.dns_names.is_empty() {
                return refuse("DNS subjectAltNames are not allowed");
            }
            if !csr.ip_addresses.is_empty() {
                return refuse("IP subjectAltNames are not allowed");
            }
        }
        if !csr.email_addresses.is_empty() {
            return refuse("Email subjectAltNames are not allowed");
        }
        if !csr.uris.is_empty() {
            return refuse("URI subjectAltNames are not allowed");
        }
        if !csr.common_name.starts_with(NODE_USER_PREFIX) {
            return refuse("subject common name does not begin with system:node:");
        }
        Ok(())
    }

    /// Whether a CertificateSigningRequest's `spec.usages` are the ones
    /// this signer grants (Kubernetes accepts them with or without `key
    /// encipherment`, which only RSA keys use). Kubernetes' message when
    /// not.
    pub fn check_usages(self, usages: &[String]) -> Result<(), PkiError> {
        let purpose = if self.is_serving() {
            "server auth"
        } else {
            "client auth"
        };
        let mut have: Vec<&str> = usages.iter().map(String::as_str).collect();
        have.sort_unstable();
        have.dedup();
        let mut with_rsa = vec!["digital signature", "key encipherment", purpose];
        with_rsa.sort_unstable();
        let mut without_rsa = vec!["digital signature", purpose];
        without_rsa.sort_unstable();
        if self == Signer::KubeApiserverClient {
            // Any subset of what a client certificate may do, as long as it
            // is for client auth.
            let allowed = ["digital signature", "key encipherment", "client auth"];
            if have.contains(&"client auth") && have.iter().all(|u| allowed.contains(u)) {
                return Ok(());
            }
        } else if have == with_rsa || have == without_rsa {
            return Ok(());
        }
        Err(PkiError::NotAllowed(format!(
            "usages did not match [{}]",
            with_rsa.join(" ")
        )))
    }
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
