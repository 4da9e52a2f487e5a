use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn der_of(pem: &str) -> Vec<u8> {
    first_cert_der(pem).unwrap()
}

fn facts(pem: &str) -> LeafFacts {
    LeafFacts::parse(&der_of(pem)).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn cas_are_created_once_and_reloaded_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let pki = ClusterPki::load_or_create(&tls).unwrap();
    assert_ne!(pki.server_ca_pem(), pki.client_ca_pem());
    for stem in [SERVER_CA, CLIENT_CA] {
        assert_eq!(mode(&tls.join(format!("{stem}.key"))), 0o600);
        let der = der_of(&fs::read_to_string(tls.join(format!("{stem}.crt"))).unwrap());
        let cert = parse_cert(&der).unwrap();
        assert!(cert.is_ca());
        let years = asn1_time(cert.validity().not_after)
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / (365 * 24 * 3600);
        assert_eq!(years, 9, "ten years, less the time the test took");
    }
    assert_eq!(mode(&tls), 0o700);

    let again = ClusterPki::load_or_create(&tls).unwrap();
    assert_eq!(again.server_ca_pem(), pki.server_ca_pem());
    assert_eq!(again.client_ca_pem(), pki.client_ca_pem());
    // The reloaded CA signs certificates its old self's certificates chain to.
    let leaf = again.issue_client("jane", &[], LEAF_VALIDITY).unwrap();
    assert!(facts(&leaf.cert_pem).signed_by(&pki.client_ca));
}

#[test]
fn a_ca_certificate_without_its_key_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path()).unwrap();
    fs::remove_file(dir.path().join("client-ca.key")).unwrap();
    let err = ClusterPki::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, PkiError::CaKeyMissing { .. }), "{err}");
    assert_eq!(
        fs::read_to_string(dir.path().join("client-ca.crt")).unwrap(),
        pki.client_ca_pem()
    );
}

#[test]
fn serving_certificates_cover_their_names_and_follow_them() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path()).unwrap();
    let dns = vec![
        "kubernetes".to_string(),
        "kubernetes.default.svc".to_string(),
    ];
    let ips = vec![ip(127, 0, 0, 1), ip(10, 43, 0, 1)];
    let first = pki
        .ensure_serving(SERVING_KUBE_APISERVER, &dns, &ips)
        .unwrap();
    let leaf = facts(&first.cert_pem);
    assert_eq!(leaf.subject.common_name, "kube-apiserver");
    assert_eq!(leaf.subject.dns_names, dns);
    assert_eq!(leaf.subject.ip_addresses, ips);
    assert!(leaf.server_auth && !leaf.client_auth);
    assert!(leaf.signed_by(&pki.server_ca) && !leaf.signed_by(&pki.client_ca));
    assert!(leaf.key_matches(&first.key_pem));
    assert_eq!(mode(&dir.path().join("serving-kube-apiserver.key")), 0o600);
    let days = not_after(&first.cert_pem)
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs()
        / (24 * 3600);
    assert_eq!(days, 364, "a year, less the time the test took");

    // A restart asks for the same names, or fewer: nothing changes.
    let restarted = ClusterPki::load_or_create(dir.path()).unwrap();
    assert_eq!(
        restarted
            .ensure_serving(SERVING_KUBE_APISERVER, &dns, &ips)
            .unwrap(),
        first
    );
    assert_eq!(
        restarted
            .ensure_serving(SERVING_KUBE_APISERVER, &dns[..1], &[])
            .unwrap(),
        first
    );

    // A new address re-issues it.
    let more_ips = [ips.clone(), vec![ip(192, 168, 1, 10)]].concat();
    let reissued = restarted
        .ensure_serving(SERVING_KUBE_APISERVER, &dns, &more_ips)
        .unwrap();
    assert_ne!(reissued, first);
    assert_eq!(facts(&reissued.cert_pem).subject.ip_addresses, more_ips);
    assert_eq!(
        fs::read_to_string(dir.path().join("serving-kube-apiserver.crt")).unwrap(),
        reissued.cert_pem
    );
}

#[test]
fn client_certificates_are_reissued_when_expiring_or_naming_someone_else() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path()).unwrap();
    let admin = pki
        .ensure_client(CLIENT_ADMIN, "system:admin", &["system:masters"])
        .unwrap();
    assert_eq!(
        client_identity(&der_of(&admin.cert_pem)).unwrap(),
        (
            "system:admin".to_string(),
            vec!["system:masters".to_string()]
        )
    );
    let leaf = facts(&admin.cert_pem);
    assert!(leaf.client_auth && !leaf.server_auth && leaf.signed_by(&pki.client_ca));
    assert_eq!(
        pki.ensure_client(CLIENT_ADMIN, "system:admin", &["system:masters"])
            .unwrap(),
        admin
    );

    let renamed = pki
        .ensure_client(CLIENT_ADMIN, "root", &["system:masters"])
        .unwrap();
    assert_eq!(
        client_identity(&der_of(&renamed.cert_pem)).unwrap().0,
        "root"
    );

    // Expiring within 90 days: re-issued for a year.
    let short = pki
        .issue_client(
            "system:admin",
            &["system:masters"],
            Duration::from_secs(30 * 24 * 3600),
        )
        .unwrap();
    fs::write(dir.path().join("client-admin.crt"), &short.cert_pem).unwrap();
    fs::write(dir.path().join("client-admin.key"), &short.key_pem).unwrap();
    let renewed = pki
        .ensure_client(CLIENT_ADMIN, "system:admin", &["system:masters"])
        .unwrap();
    assert_ne!(renewed, short);
    assert!(not_after(&renewed.cert_pem).unwrap() > SystemTime::now() + RENEW_BEFORE);

    // A certificate that does not match its key is re-issued too.
    fs::write(dir.path().join("client-admin.key"), &short.key_pem).unwrap();
    let rematched = pki
        .ensure_client(CLIENT_ADMIN, "system:admin", &["system:masters"])
        .unwrap();
    assert_ne!(rematched, renewed);
    assert!(facts(&rematched.cert_pem).key_matches(&rematched.key_pem));
}

#[test]
fn several_organizations_are_all_groups() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path()).unwrap();
    let jane = pki
        .issue_client("jane", &["dev", "ops", "system:masters"], LEAF_VALIDITY)
        .unwrap();
    assert_eq!(
        client_identity(&der_of(&jane.cert_pem)).unwrap(),
        (
            "jane".to_string(),
            vec![
                "dev".to_string(),
                "ops".to_string(),
                "system:masters".to_string()
            ]
        )
    );
    let leaf = facts(&jane.cert_pem);
    assert!(
        leaf.signed_by(&pki.client_ca),
        "the rewritten certificate is signed again"
    );
    assert!(leaf.key_matches(&jane.key_pem));

    let (_, csr) = new_key_and_csr("bob", &["a", "b"], &[], &[]).unwrap();
    let info = parse_csr(&csr).unwrap();
    assert_eq!(
        (info.common_name.as_str(), info.organizations.len()),
        ("bob", 2)
    );
}

#[test]
fn csrs_round_trip_through_the_signers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path()).unwrap();

    let (key, csr) = new_key_and_csr("system:node:n1", &["system:nodes"], &[], &[]).unwrap();
    let info = parse_csr(&csr).unwrap();
    assert_eq!(info.common_name, "system:node:n1");
    assert_eq!(info.organizations, ["system:nodes"]);
    let cert = pki
        .sign_csr(&csr, Signer::KubeApiserverClientKubelet, LEAF_VALIDITY)
        .unwrap();
    assert_eq!(
        client_identity(&der_of(&cert)).unwrap(),
        (
            "system:node:n1".to_string(),
            vec!["system:nodes".to_string()]
        )
    );
    let leaf = facts(&cert);
    assert!(leaf.client_auth && leaf.signed_by(&pki.client_ca) && leaf.key_matches(&key));

    let dns = vec!["n1".to_string()];
    let ips = vec![ip(10, 0, 0, 5)];
    let (key, csr) = new_key_and_csr("system:node:n1", &["system:nodes"], &dns, &ips).unwrap();
    let info = parse_csr(&csr).unwrap();
    assert_eq!(
        (info.dns_names.clone(), info.ip_addresses.clone()),
        (dns.clone(), ips.clone())
    );
    let cert = pki
        .sign_csr(&csr, Signer::KubeletServing, Duration::from_secs(3600))
        .unwrap();
    let leaf = facts(&cert);
    assert!(leaf.server_auth && leaf.signed_by(&pki.server_ca) && leaf.key_matches(&key));
    assert_eq!(
        (leaf.subject.dns_names, leaf.subject.ip_addresses),
        (dns, ips)
    );
    assert!(not_after(&cert).unwrap() < SystemTime::now() + Duration::from_secs(3601));

    // A node client certificate names no host: Kubernetes' message.
    let err = pki
        .sign_csr(&csr, Signer::KubeApiserverClientKubelet, LEAF_VALIDITY)
        .unwrap_err();
    assert_eq!(err.to_string(), "DNS subjectAltNames are not allowed");
}

#[test]
fn a_tampered_csr_is_refused() {
    let (_, csr) = new_key_and_csr("system:node:n1", &["system:nodes"], &[], &[]).unwrap();
    let mut der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
        .unwrap()
        .to_vec();
    // Change one letter of the common name: the signature no longer holds.
    let at = der.windows(2).position(|w| w == b"n1").unwrap();
    der[at + 1] = b'2';
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    assert!(matches!(parse_csr(&tampered), Err(PkiError::CsrSignature)));
    assert!(matches!(
        parse_csr("not a csr"),
        Err(PkiError::NotAllowed(_))
    ));
}

use rustls_pki_types::CertificateSigningRequestDer;

#[test]
fn signers_restrict_what_they_sign() {
    let node = |dns: &[&str], ips: &[IpAddr]| CsrInfo {
        common_name: "system:node:n1".into(),
        organizations: vec!["system:nodes".into()],
        dns_names: dns.iter().map(|d| d.to_string()).collect(),
        ip_addresses: ips.to_vec(),
        ..Default::default()
    };
    let other_org = CsrInfo {
        organizations: vec!["system:masters".into()],
        ..node(&[], &[])
    };
    let not_a_node = CsrInfo {
        common_name: "jane".into(),
        ..node(&["n1"], &[])
    };
    let email = CsrInfo {
        email_addresses: vec!["a@b".into()],
        ..node(&["n1"], &[])
    };
    use Signer::*;
    let cases: Vec<(Signer, CsrInfo, Result<(), &str>)> = vec![
        (KubeApiserverClientKubelet, node(&[], &[]), Ok(())),
        (
            KubeApiserverClientKubelet,
            node(&[], &[ip(1, 2, 3, 4)]),
            Err("IP subjectAltNames are not allowed"),
        ),
        (
            KubeApiserverClientKubelet,
            other_org.clone(),
            Err("subject organization is not system:nodes"),
        ),
        (
            KubeApiserverClientKubelet,
            CsrInfo {
                common_name: "jane".into(),
                ..node(&[], &[])
            },
            Err("subject common name does not begin with system:node:"),
        ),
        (KubeletServing, node(&["n1"], &[]), Ok(())),
        (KubeletServing, node(&[], &[ip(1, 2, 3, 4)]), Ok(())),
        (
            KubeletServing,
            node(&[], &[]),
            Err("DNS or IP subjectAltName is required"),
        ),
        (
            KubeletServing,
            not_a_node.clone(),
            Err("subject common name does not begin with system:node:"),
        ),
        (
            KubeletServing,
            email.clone(),
            Err("Email subjectAltNames are not allowed"),
        ),
        (KubeApiserverClient, other_org, Ok(())),
        (KubeApiserverClient, not_a_node, Ok(())),
        (
            KubeApiserverClient,
            email,
            Err("Email subjectAltNames are not allowed"),
        ),
    ];
    for (signer, csr, want) in cases {
        let got = signer.check(&csr).map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(str::to_string), "{signer} {csr:?}");
    }

    let usages = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(KubeletServing
        .check_usages(&usages(&["digital signature", "server auth"]))
        .is_ok());
    assert!(KubeletServing
        .check_usages(&usages(&[
            "server auth",
            "key encipherment",
            "digital signature"
        ]))
        .is_ok());
    assert_eq!(
        KubeletServing
            .check_usages(&usages(&["client auth", "digital signature"]))
            .unwrap_err()
            .to_string(),
        "usages did not match [digital signature key encipherment server auth]"
    );
    assert!(KubeApiserverClientKubelet
        .check_usages(&usages(&["digital signature", "client auth"]))
        .is_ok());
    assert!(KubeApiserverClient
        .check_usages(&usages(&["client auth"]))
        .is_ok());
    assert!(KubeApiserverClient
        .check_usages(&usages(&["client auth", "server auth"]))
        .is_err());
    for signer in Signer::ALL {
        assert_eq!(Signer::from_name(signer.name()), Some(signer));
    }
    assert_eq!(Signer::from_name("kubernetes.io/legacy-unknown"), None);
}

#[test]
fn the_service_account_key_is_created_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path()).unwrap();
    let key = pki.service_account_key_pem().unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(pki.service_account_key_pem().unwrap(), key);
    assert_eq!(mode(&dir.path().join(SERVICE_ACCOUNT_KEY)), 0o600);
    let reloaded = ClusterPki::load_or_create(dir.path()).unwrap();
    assert_eq!(reloaded.service_account_key_pem().unwrap(), key);
}

#[test]
fn rotation_reissues_every_leaf_and_keeps_the_cas() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path()).unwrap();
    let dns = vec!["kubernetes".to_string()];
    let serving = pki
        .ensure_serving(SERVING_KUBE_APISERVER, &dns, &[ip(10, 43, 0, 1)])
        .unwrap();
    let admin = pki
        .ensure_client(CLIENT_ADMIN, "system:admin", &["system:masters"])
        .unwrap();
    let sa_key = pki.service_account_key_pem().unwrap();
    // Not ours: left alone.
    let stranger = ClusterPki::load_or_create(&dir.path().join("other"))
        .unwrap()
        .issue_client("x", &[], LEAF_VALIDITY)
        .unwrap();
    fs::write(dir.path().join("stranger.crt"), &stranger.cert_pem).unwrap();

    let rewritten = pki.rotate().unwrap();
    let names: Vec<String> = rewritten
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "client-admin.crt",
            "client-admin.key",
            "serving-kube-apiserver.crt",
            "serving-kube-apiserver.key"
        ]
    );
    let reloaded = ClusterPki::load_or_create(dir.path()).unwrap();
    assert_eq!(reloaded.server_ca_pem(), pki.server_ca_pem());
    assert_eq!(reloaded.client_ca_pem(), pki.client_ca_pem());
    assert_eq!(reloaded.service_account_key_pem().unwrap(), sa_key);

    let new_serving = pki.read_leaf(SERVING_KUBE_APISERVER).unwrap();
    assert_ne!(new_serving, serving);
    assert_eq!(
        facts(&new_serving.cert_pem).subject,
        facts(&serving.cert_pem).subject
    );
    assert!(facts(&new_serving.cert_pem).server_auth);
    let new_admin = pki.read_leaf(CLIENT_ADMIN).unwrap();
    assert_ne!(new_admin.key_pem, admin.key_pem);
    assert_eq!(
        client_identity(&der_of(&new_admin.cert_pem)).unwrap(),
        client_identity(&der_of(&admin.cert_pem)).unwrap()
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("stranger.crt")).unwrap(),
        stranger.cert_pem
    );
}

/// One TLS connection over an in-memory pipe: the server echoes one line
/// and reports the client certificate it saw.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<Option<Vec<u8>>, String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server_task = tokio::spawn(async move {
        let mut stream = TlsAcceptor::from(server)
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|c| c.to_vec());
        let mut buf = [0u8; 5];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(&buf).await.map_err(|e| e.to_string())?;
        stream.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let client_result = async {
        let mut stream = TlsConnector::from(client)
            .connect(name, client_io)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"hello")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"hello");
        Ok::<_, String>(())
    }
    .await;
    let server_result = server_task.await.unwrap();
    client_result?;
    server_result
}

use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;

#[tokio::test]
async fn tls_with_and_without_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path()).unwrap();
    let serving = pki
        .ensure_serving(
            SERVING_KUBE_APISERVER,
            &["kubernetes".to_string()],
            &[ip(127, 0, 0, 1)],
        )
        .unwrap();
    let server = server_config(&serving, pki.client_ca_pem()).unwrap();
    assert_eq!(server.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let admin = pki
        .ensure_client(CLIENT_ADMIN, "system:admin", &["system:masters"])
        .unwrap();

    // With a client certificate: the server sees who it is.
    let client = client_config(pki.server_ca_pem(), Some(&admin)).unwrap();
    let peer = handshake(server.clone(), client, "kubernetes")
        .await
        .unwrap();
    let peer = peer.expect("the server saw the client certificate");
    assert_eq!(peer, der_of(&admin.cert_pem));
    assert!(x509_credential_id(&peer).starts_with("X509SHA256="));
    assert_eq!(x509_credential_id(&peer).len(), "X509SHA256=".len() + 64);
    assert_eq!(
        client_identity(&peer).unwrap(),
        (
            "system:admin".to_string(),
            vec!["system:masters".to_string()]
        )
    );

    // webpki accepts a certificate whose subject was rewritten (several
    // organizations) and the server sees every group.
    let jane = pki
        .issue_client("jane", &["dev", "ops"], LEAF_VALIDITY)
        .unwrap();
    let client = client_config(pki.server_ca_pem(), Some(&jane)).unwrap();
    let peer = handshake(server.clone(), client, "kubernetes")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client_identity(&peer).unwrap().1, ["dev", "ops"]);

    // Without one (a bearer token client), by IP address.
    let anonymous = client_config(pki.server_ca_pem(), None).unwrap();
    assert_eq!(
        handshake(server.clone(), anonymous, "127.0.0.1")
            .await
            .unwrap(),
        None
    );

    // A name the certificate does not cover fails.
    let anonymous = client_config(pki.server_ca_pem(), None).unwrap();
    assert!(handshake(server.clone(), anonymous, "elsewhere")
        .await
        .is_err());

    // Trusting another CA fails.
    let other = ClusterPki::load_or_create(&dir.path().join("other")).unwrap();
    let wrong_ca = client_config(other.server_ca_pem(), Some(&admin)).unwrap();
    let err = handshake(server.clone(), wrong_ca, "kubernetes")
        .await
        .unwrap_err();
    assert!(err.contains("invalid peer certificate"), "{err}");

    // A client certificate from another CA completes the handshake (the
    // request is then unauthenticated, as with kube-apiserver), but the
    // chain verifier refuses it; the real one passes.
    let forged = other
        .issue_client("system:admin", &["system:masters"], LEAF_VALIDITY)
        .unwrap();
    let forger = client_config(pki.server_ca_pem(), Some(&forged)).unwrap();
    let presented = handshake(server.clone(), forger, "kubernetes")
        .await
        .unwrap()
        .expect("the server saw the forged certificate");
    let chains = ClientChainVerifier::new(pki.client_ca_pem()).unwrap();
    let err = chains
        .verify(&[CertificateDer::from(presented)])
        .unwrap_err();
    assert!(err.to_string().contains("client certificate"), "{err}");
    chains
        .verify(&[CertificateDer::from(der_of(&admin.cert_pem))])
        .unwrap();
    assert!(chains.verify(&[]).is_err());
    // A serving certificate of the right CA is no client certificate.
    let serving_as_client = client_config(pki.server_ca_pem(), Some(&serving)).unwrap();
    let presented = handshake(server.clone(), serving_as_client, "kubernetes")
        .await
        .unwrap()
        .unwrap();
    assert!(chains.verify(&[CertificateDer::from(presented)]).is_err());

    // The unverified client connects to anyone: the join-time CA fetch.
    let unverified = unverified_client_config();
    assert_eq!(
        handshake(server, unverified, "elsewhere").await.unwrap(),
        None
    );
}
