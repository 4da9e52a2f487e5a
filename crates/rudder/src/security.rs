//! The server's PKI and credentials at start-up, and a joining agent's
//! TLS bootstrap.
//!
//! `rudder server` keeps its CAs and certificates under `DATA_DIR/tls`,
//! renews leaf certificates that near their end at every start, writes
//! the admin kubeconfig (`system:admin` in `system:masters`) and one
//! kubeconfig per component under `DATA_DIR/cred`, and the join token to
//! `DATA_DIR/node-token`. `rudder agent --token` checks the server's CA
//! against the token's hash before trusting it, asks for its client and
//! serving certificates through CertificateSigningRequests, and keeps them
//! in its data dir.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use rudder_auth::pki::{self, CertAndKey, ClusterPki, JoinToken};

/// The issuer (and default audience) of ServiceAccount tokens, as
/// kube-apiserver's default.
pub const TOKEN_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// What `rudder server` secures itself with.
pub struct ServerCredentials {
    pub pki: Arc<ClusterPki>,
    pub api: rudder_apiserver::SecurityConfig,
}

/// Every name and address the API server is reached at: the listen
/// address (or, listening on all, the host's), the host's name,
/// `localhost`, the `kubernetes` Service's names and its first address.
fn serving_names(
    listen: SocketAddr,
    service_ip: Ipv4Addr,
    extra: &[String],
) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns: Vec<String> = vec![
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    let mut ips: Vec<IpAddr> = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(service_ip)];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim().to_ascii_lowercase();
        if !host.is_empty() {
            dns.push(host);
        }
    }
    if !listen.ip().is_unspecified() {
        ips.push(listen.ip());
    }
    if let Some(ip) = default_route_address() {
        ips.push(ip);
    }
    for name in extra {
        match name.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(name.clone()),
        }
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    (dns, ips)
}

/// The source address of the default route (no packet is sent).
pub fn default_route_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Loads (creating on first start) the PKI, the serving certificate, the
/// token key and the join token.
pub fn server_credentials(
    data_dir: &Path,
    listen: SocketAddr,
    service_ip: Ipv4Addr,
    tls_sans: &[String],
) -> anyhow::Result<ServerCredentials> {
    let pki =
        ClusterPki::load_or_create(&data_dir.join("tls")).context("loading the cluster PKI")?;
    let (dns, ips) = serving_names(listen, service_ip, tls_sans);
    let serving = pki
        .ensure_serving(pki::SERVING_KUBE_APISERVER, &dns, &ips)
        .context("issuing the API server's serving certificate")?;
    let tls = pki::server_config(&serving, pki.client_ca_pem()).context("configuring HTTPS")?;
    let key = pki
        .service_account_key_pem()
        .context("loading the ServiceAccount token key")?;
    let tokens = rudder_auth::token::TokenIssuer::from_pem(&key, TOKEN_ISSUER)
        .context("loading the ServiceAccount token key")?;
    let join_token = pki::load_or_create_join_token(data_dir, pki.server_ca_pem())
        .context("writing the join token")?;
    let kubelet_client = pki
        .ensure_client(pki::CLIENT_KUBE_APISERVER, "system:kube-apiserver", &[])
        .context("issuing the API server's client certificate for node agents")?;
    let kubelet_tls = pki::client_config(pki.server_ca_pem(), Some(&kubelet_client))
        .context("configuring TLS to node agents")?;
    let api = rudder_apiserver::SecurityConfig {
        tls,
        server_ca_pem: pki.server_ca_pem().to_owned(),
        client_ca_pem: pki.client_ca_pem().to_owned(),
        tokens,
        bootstrap_secret: Some(join_token.secret.clone()),
        kubelet_client: Some(kubelet_tls),
        api_audiences: vec![TOKEN_ISSUER.to_owned()],
        audit: None,
    };
    Ok(ServerCredentials {
        pki: Arc::new(pki),
        api,
    })
}

/// Writes a kubeconfig for `user` (certificate and key embedded).
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    credentials: &CertAndKey,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::kubeconfig::write(
        path,
        &crate::kubeconfig::render(server, Some(ca_pem), user, Some(credentials)),
    )
}

/// The component kubeconfigs of `rudder server`, under `DATA_DIR/cred`.
pub fn component_kubeconfig(
    data_dir: &Path,
    pki: &ClusterPki,
    server: &str,
    stem: &str,
    common_name: &str,
    groups: &[&str],
) -> anyhow::Result<PathBuf> {
    let credentials = pki
        .ensure_client(stem, common_name, groups)
        .with_context(|| format!("issuing the certificate of {common_name}"))?;
    let path = data_dir.join("cred").join(format!("{stem}.kubeconfig"));
    write_kubeconfig(
        &path,
        server,
        pki.server_ca_pem(),
        common_name,
        &credentials,
    )?;
    Ok(path)
}

/// `rudder certificate rotate`.
pub fn rotate_certificates(data_dir: &Path) -> anyhow::Result<()> {
    let dir = data_dir.join("tls");
    if !dir.join(format!("{}.crt", pki::SERVER_CA)).exists() {
        bail!(
            "no cluster PKI in {} (is --data-dir the server's?)",
            dir.display()
        );
    }
    let pki = ClusterPki::load_or_create(&dir).context("loading the cluster PKI")?;
    let rotated = pki.rotate().context("re-issuing the certificates")?;
    for path in &rotated {
        println!("rotated {}", path.display());
    }
    println!("restart `rudder server` to use them (kubeconfigs are rewritten at start)");
    Ok(())
}

/// `rudder token rotate`.
pub fn rotate_token(data_dir: &Path) -> anyhow::Result<()> {
    let dir = data_dir.join("tls");
    if !dir.join(format!("{}.crt", pki::SERVER_CA)).exists() {
        bail!(
            "no cluster PKI in {} (is --data-dir the server's?)",
            dir.display()
        );
    }
    let pki = ClusterPki::load_or_create(&dir).context("loading the cluster PKI")?;
    let token =
        pki::rotate_join_token(data_dir, pki.server_ca_pem()).context("rotating the join token")?;
    println!("{token}");
    println!(
        "written to {}; restart `rudder server` to accept it (the old token stops working)",
        data_dir.join(pki::join::NODE_TOKEN_FILE).display()
    );
    Ok(())
}

// --- joining agents ------------------------------------------------------

/// Fetches `path` from the server over TLS with `config` (plain HTTP/1.1,
/// one request: only for the CA bundles before the agent has a client).
async fn fetch(
    server: &http::Uri,
    path: &str,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = server
        .host()
        .context("the --server URL has no host")?
        .to_owned();
    let port = server.port_u16().unwrap_or(443);
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.trim_matches(|c| c == '[' || c == ']'), port)),
    )
    .await
    .context("connecting to the server timed out")?
    .with_context(|| format!("connecting to {host}:{port}"))?;
    let name = match host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => rustls::pki_types::ServerName::try_from(host.clone())
            .context("the --server host is not a valid name")?,
    };
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .context("TLS handshake with the server")?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the server's answer has no body")?;
    let head = String::from_utf8_lossy(&response[..split]);
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    let body = response[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(&body));
    }
    Ok(body)
}

fn dechunk(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        let end = (start + size).min(rest.len());
        out.extend_from_slice(&rest[start..end]);
        rest = &rest[(end + 2).min(rest.len())..];
    }
    out
}

/// An agent's credentials: the kubeconfig it talks to the API with, and
/// what its own HTTPS API serves and trusts.
pub struct AgentCredentials {
    pub kubeconfig: PathBuf,
    pub serving: CertAndKey,
    pub client_ca_pem: String,
}

/// Where a joined agent keeps its client credentials.
pub fn agent_kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubelet.kubeconfig")
}

/// Whether a certificate is good for at least another day.
fn still_valid(cert_pem: &str) -> bool {
    pki::not_after(cert_pem)
        .map(|end| end > SystemTime::now() + Duration::from_secs(24 * 3600))
        .unwrap_or(false)
}

/// TLS bootstrapping with a join token: trusts the server only if its CA
/// matches the token, then obtains (or reuses) a client certificate for
/// `system:node:NAME` and a serving certificate for the node's addresses.
pub async fn join(
    server: &str,
    token: &str,
    data_dir: &Path,
    node_name: &str,
    node_ips: &[IpAddr],
) -> anyhow::Result<AgentCredentials> {
    let token = JoinToken::parse(token).context("reading --token")?;
    let url: http::Uri = server
        .parse()
        .with_context(|| format!("invalid --server {server:?}"))?;
    if url.scheme_str() != Some("https") {
        bail!("--token needs an https:// --server (got {server})");
    }
    let ca = fetch(&url, "/cacerts", pki::unverified_client_config())
        .await
        .context("fetching the cluster CA")?;
    if token.ca_hash.is_some() && !token.matches_ca(&ca) {
        bail!(
            "the server at {server} presented a CA that does not match the join token's hash: refusing to trust it (is the token for this cluster?)"
        );
    }
    let ca_pem = String::from_utf8(ca).context("the cluster CA is not PEM text")?;
    let verified = pki::client_config(&ca_pem, None).context("trusting the cluster CA")?;
    let client_ca = fetch(&url, "/client-ca.crt", verified)
        .await
        .context("fetching the client CA")?;
    let client_ca_pem = String::from_utf8(client_ca).context("the client CA is not PEM text")?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;

    let user = format!("system:node:{node_name}");
    let kubeconfig = agent_kubeconfig_path(data_dir);
    let client_files = (
        data_dir.join("client-kubelet.crt"),
        data_dir.join("client-kubelet.key"),
    );
    let reusable = read_pair(&client_files)
        .filter(|c| still_valid(&c.cert_pem) && issued_for(&c.cert_pem, &user));
    let client_credentials = match reusable {
        Some(credentials) => credentials,
        None => {
            let bootstrap = bearer_client(server, &ca_pem, &token.secret)?;
            let (key_pem, csr_pem) = pki::new_key_and_csr(&user, &["system:nodes"], &[], &[])
                .context("making the node's key")?;
            let cert_pem = request_certificate(
                &bootstrap,
                &csr_pem,
                "kubernetes.io/kube-apiserver-client-kubelet",
                &["digital signature", "client auth"],
            )
            .await
            .context("obtaining the node's client certificate")?;
            let credentials = CertAndKey { cert_pem, key_pem };
            write_pair(&client_files, &credentials)?;
            credentials
        }
    };
    write_kubeconfig(&kubeconfig, server, &ca_pem, &user, &client_credentials)?;

    let client = crate::client::client_from(Some(&kubeconfig)).await?;
    let serving = ensure_serving(&client, data_dir, &user, node_name, node_ips).await?;
    Ok(AgentCredentials {
        kubeconfig,
        serving,
        client_ca_pem,
    })
}

/// The node's serving certificate from `DATA_DIR/serving-kubelet.{crt,key}`
/// while it is good for another day, else a new one through a CSR that
/// `client` (speaking as `user`, the node) files for the kubelet-serving
/// signer.
async fn ensure_serving(
    client: &kube::Client,
    data_dir: &Path,
    user: &str,
    node_name: &str,
    node_ips: &[IpAddr],
) -> anyhow::Result<CertAndKey> {
    let serving_files = (
        data_dir.join("serving-kubelet.crt"),
        data_dir.join("serving-kubelet.key"),
    );
    if let Some(serving) = read_pair(&serving_files).filter(|c| still_valid(&c.cert_pem)) {
        return Ok(serving);
    }
    let (key_pem, csr_pem) =
        pki::new_key_and_csr(user, &["system:nodes"], &[node_name.to_owned()], node_ips)
            .context("making the node's serving key")?;
    let cert_pem = request_certificate(
        client,
        &csr_pem,
        "kubernetes.io/kubelet-serving",
        &["digital signature", "server auth"],
    )
    .await
    .context("obtaining the node's serving certificate")?;
    let serving = CertAndKey { cert_pem, key_pem };
    write_pair(&serving_files, &serving)?;
    Ok(serving)
}

/// An agent started with `--kubeconfig` secures its own API as a joined
/// agent does when that kubeconfig speaks for this node
/// (`system:node:NAME`, asked with a SelfSubjectReview): the client CA
/// from the server, and a serving certificate. `Ok(None)` (with the
/// reason) when it speaks for someone else or the server is not a secured
/// Rudder: the kubelet-serving signer only signs for the node itself.
pub async fn kubeconfig_serving(
    client: &kube::Client,
    data_dir: &Path,
    node_name: &str,
    node_ips: &[IpAddr],
) -> anyhow::Result<Result<(CertAndKey, String), String>> {
    let review = kube::core::Request::new("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .create(
            &kube::api::PostParams::default(),
            serde_json::to_vec(&serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "SelfSubjectReview",
            }))?,
        )?;
    let review: serde_json::Value = match client.request(review).await {
        Ok(review) => review,
        Err(err) => {
            return Ok(Err(format!(
                "the server did not say who the kubeconfig is ({err})"
            )))
        }
    };
    let user = review
        .pointer("/status/userInfo/username")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let node_user = format!("system:node:{node_name}");
    if user != node_user {
        return Ok(Err(format!(
            "the kubeconfig is {user:?}, not {node_user:?}, and only a node may have its serving certificate signed"
        )));
    }
    let client_ca_pem = client
        .request_text(http::Request::get("/client-ca.crt").body(Vec::new())?)
        .await
        .context("fetching the client CA")?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let serving = ensure_serving(client, data_dir, &user, node_name, node_ips).await?;
    Ok(Ok((serving, client_ca_pem)))
}

fn issued_for(cert_pem: &str, user: &str) -> bool {
    let Ok(der) = pem_to_der(cert_pem) else {
        return false;
    };
    pki::client_identity(&der).is_ok_and(|(name, _)| name == user)
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

fn read_pair(files: &(PathBuf, PathBuf)) -> Option<CertAndKey> {
    Some(CertAndKey {
        cert_pem: std::fs::read_to_string(&files.0).ok()?,
        key_pem: std::fs::read_to_string(&files.1).ok()?,
    })
}

fn write_pair(files: &(PathBuf, PathBuf), credentials: &CertAndKey) -> anyhow::Result<()> {
    crate::kubeconfig::write(&files.0, &credentials.cert_pem)?;
    crate::kubeconfig::write(&files.1, &credentials.key_pem)
}

/// A client that authenticates with the join secret (bootstrap only).
fn bearer_client(server: &str, ca_pem: &str, secret: &str) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::new(
        server
            .parse()
            .with_context(|| format!("invalid --server {server:?}"))?,
    );
    config.root_cert = Some(vec![pem_to_der(ca_pem)?]);
    config.auth_info.token = Some(secret.to_owned().into());
    kube::Client::try_from(config).context("creating the bootstrap client")
}

/// Creates a CertificateSigningRequest and waits for its certificate.
async fn request_certificate(
    client: &kube::Client,
    csr_pem: &str,
    signer: &str,
    usages: &[&str],
) -> anyhow::Result<String> {
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequest, CertificateSigningRequestSpec,
    };
    let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client.clone());
    let request = CertificateSigningRequest {
        metadata: kube::api::ObjectMeta {
            generate_name: Some("node-csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(csr_pem.as_bytes().to_vec()),
            signer_name: signer.into(),
            usages: Some(usages.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let created = api
        .create(&kube::api::PostParams::default(), &request)
        .await
        .context("creating the CertificateSigningRequest (is the join token right?)")?;
    let name = created.metadata.name.unwrap_or_default();
    tracing::info!(csr = %name, signer, "waiting for the certificate");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let csr = api
            .get(&name)
            .await
            .with_context(|| format!("reading {name}"))?;
        if let Some(status) = &csr.status {
            for condition in status.conditions.iter().flatten() {
                if (condition.type_ == "Denied" || condition.type_ == "Failed")
                    && condition.status == "True"
                {
                    bail!(
                        "the CertificateSigningRequest {name} was {}: {}",
                        condition.type_.to_lowercase(),
                        condition.message.as_deref().unwrap_or("")
                    );
                }
            }
            if let Some(cert) = status.certificate.as_ref().filter(|c| !c.0.is_empty()) {
                return String::from_utf8(cert.0.clone())
                    .context("the certificate is not PEM text");
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the CertificateSigningRequest {name} was not signed within 5 minutes (is the controller manager running?)");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_certificate_names_every_way_to_the_api() {
        let (dns, ips) = serving_names(
            "10.99.0.1:6443".parse().unwrap(),
            Ipv4Addr::new(10, 43, 0, 1),
            &["api.example.com".into()],
        );
        for name in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "api.example.com",
        ] {
            assert!(dns.contains(&name.to_string()), "{name}");
        }
        for ip in ["10.99.0.1", "127.0.0.1", "10.43.0.1"] {
            assert!(ips.contains(&ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
    }
}
