//! The kubelet's secure server end to end over real TLS: certificates made
//! here, the API server's reviews answered by a table, the container
//! runtime faked (its exec runs the command on the host).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rudder_agent::server::{self, Guard, PodLister, Reviewer, ServingTls};
use rudder_auth::{Attributes, Decision, UserInfo};
use rudder_cri::cri::*;
use rudder_cri::Result;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const NODE: &str = "n1";

// --- PKI ---------------------------------------------------------------

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate and key (PEM) issued by `ca`.
fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    common_name: &str,
    organizations: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    for organization in organizations {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *organization);
    }
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let certificate = params.signed_by(&key, ca).unwrap();
    (certificate.pem(), key.serialize_pem())
}

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    serving: (String, String),
}

impl Pki {
    fn new() -> Pki {
        let ca = certificate_authority("cluster-ca");
        let serving = issue(
            &ca,
            &["localhost", "127.0.0.1"],
            NODE,
            &[],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        Pki { ca, serving }
    }

    fn client(&self, user: &str, groups: &[&str]) -> (String, String) {
        issue(
            &self.ca,
            &[],
            user,
            groups,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

// --- the API server's answers and the runtime, faked ------------------

/// Tokens `bob-token` (bob) and `eve-token` (eve) are authenticated;
/// `alice`, `bob` and members of `system:masters` may do anything.
struct TableReviewer;

impl Reviewer for TableReviewer {
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserInfo>, server::auth::ReviewError>> {
        Box::pin(async move {
            Ok(match token {
                "bob-token" => Some(UserInfo::authenticated("bob", &[])),
                "eve-token" => Some(UserInfo::authenticated("eve", &[])),
                _ => None,
            })
        })
    }

    fn review_access<'a>(
        &'a self,
        attributes: &'a Attributes,
    ) -> BoxFuture<'a, Result<Decision, server::auth::ReviewError>> {
        Box::pin(async move {
            let user = &attributes.user;
            assert_eq!(
                (attributes.resource.as_str(), attributes.name.as_str()),
                ("nodes", NODE)
            );
            Ok(
                if ["alice", "bob"].contains(&user.username.as_str())
                    || user.in_group(rudder_auth::user::MASTERS)
                {
                    Decision::Allow(String::new())
                } else {
                    Decision::NoOpinion(String::new())
                },
            )
        })
    }
}

/// One pod, `default/web`, with one running container, `app`, whose exec
/// runs the command on the host.
struct FakeRuntime;

fn labels(container: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_POD_NAMESPACE.to_string(), "default".to_string()),
        (LABEL_POD_NAME.to_string(), "web".to_string()),
        (LABEL_CONTAINER_NAME.to_string(), container.to_string()),
    ])
}

fn unsupported<T>() -> Result<T> {
    Err(rudder_cri::CriError::Invalid("not in this test".into()))
}

impl RuntimeService for FakeRuntime {
    fn version(&self) -> Result<VersionInfo> {
        unsupported()
    }
    fn run_pod_sandbox(&self, _: &PodSandboxConfig) -> Result<String> {
        unsupported()
    }
    fn stop_pod_sandbox(&self, _: &str) -> Result<()> {
        unsupported()
    }
    fn remove_pod_sandbox(&self, _: &str) -> Result<()> {
        unsupported()
    }
    fn pod_sandbox_status(&self, _: &str) -> Result<PodSandboxStatus> {
        unsupported()
    }
    fn list_pod_sandbox(&self, _: &PodSandboxFilter) -> Result<Vec<PodSandbox>> {
        Ok(vec![PodSandbox {
            id: "sandbox".into(),
            metadata: PodSandboxMetadata {
                name: "web".into(),
                uid: "uid-web".into(),
                namespace: "default".into(),
                attempt: 0,
            },
            state: PodSandboxState::SandboxReady,
            ..Default::default()
        }])
    }
    fn create_container(
        &self,
        _: &str,
        _: &ContainerConfig,
        _: &PodSandboxConfig,
    ) -> Result<String> {
        unsupported()
    }
    fn start_container(&self, _: &str) -> Result<()> {
        unsupported()
    }
    fn stop_container(&self, _: &str, _: Duration) -> Result<()> {
        unsupported()
    }
    fn remove_container(&self, _: &str) -> Result<()> {
        unsupported()
    }
    fn container_status(&self, _: &str) -> Result<ContainerStatus> {
        unsupported()
    }
    fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<Container>> {
        let app = Container {
            id: "app-id".into(),
            pod_sandbox_id: "sandbox".into(),
            metadata: ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            },
            state: ContainerState::ContainerRunning,
            labels: labels("app"),
            ..Default::default()
        };
        Ok([app]
            .into_iter()
            .filter(|c| labels_match(&filter.label_selector, &c.labels))
            .collect())
    }
    fn exec_sync(&self, _: &str, _: &[String], _: Duration) -> Result<ExecSyncResult> {
        unsupported()
    }
    fn exec(
        &self,
        _: &str,
        cmd: &[String],
        _: &[KeyValue],
        _: bool,
    ) -> Result<std::process::Command> {
        let mut command = std::process::Command::new(&cmd[0]);
        command.args(&cmd[1..]);
        Ok(command)
    }
    fn port_forward(&self, _: &str, _: u16) -> Result<std::net::TcpStream> {
        unsupported()
    }
    fn open_stdin(&self, _: &str) -> Result<std::fs::File> {
        unsupported()
    }
    fn container_stats(&self, _: &str) -> Result<ContainerStats> {
        unsupported()
    }
    fn list_container_stats(&self, _: &ContainerStatsFilter) -> Result<Vec<ContainerStats>> {
        unsupported()
    }
}

struct OnePod;

impl PodLister for OnePod {
    fn pods(&self) -> Vec<Pod> {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("default".into());
        pod.metadata.name = Some("web".into());
        vec![pod]
    }
}

// --- the server and a client --------------------------------------------

struct Server {
    pki: Pki,
    port: u16,
}

async fn start() -> Server {
    let pki = Pki::new();
    let tls = server::tls::server_config(&ServingTls {
        cert_pem: pki.serving.0.clone(),
        key_pem: pki.serving.1.clone(),
        client_ca_pem: pki.ca.pem(),
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = server::router(Arc::new(FakeRuntime), Some(Arc::new(OnePod)));
    tokio::spawn(server::serve_secure(
        listener,
        tls,
        Guard::new(Arc::new(TableReviewer), NODE),
        app,
    ));
    Server { pki, port }
}

impl Server {
    /// A TLS connection trusting the cluster CA, with `client` (PEM
    /// certificate and key) when given.
    async fn connect(
        &self,
        client: Option<&(String, String)>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.pki.ca.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        // TLS 1.3 reports a refused client certificate after the
        // handshake: one round trip shows it.
        stream.flush().await?;
        Ok(stream)
    }

    /// `METHOD path` with `headers`; the status and body.
    async fn request(
        &self,
        method: &str,
        path: &str,
        client: Option<&(String, String)>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, String)> {
        let mut stream = self.connect(client).await?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        match stream.read_to_end(&mut response).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
            Err(e) => return Err(e),
        }
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        Ok((status, body.to_string()))
    }

    async fn get(&self, path: &str, client: Option<&(String, String)>) -> (u16, String) {
        self.request("GET", path, client, &[]).await.unwrap()
    }

    async fn get_with_token(&self, path: &str, token: &str) -> (u16, String) {
        let header = format!("Bearer {token}");
        self.request("GET", path, None, &[("Authorization", &header)])
            .await
            .unwrap()
    }
}

// --- the tests -------------------------------------------------------------

#[tokio::test]
async fn anonymous_requests_are_unauthorized_on_every_path() {
    let server = start().await;
    for path in [
        "/pods",
        "/stats/summary",
        "/containerLogs/default/web/app",
        "/no-such-path",
    ] {
        assert_eq!(
            server.get(path, None).await,
            (401, "Unauthorized".to_string()),
            "{path}"
        );
    }
    assert_eq!(server.get_with_token("/pods", "forged").await.0, 401);
}

#[tokio::test]
async fn an_allowed_client_certificate_reaches_the_handlers() {
    let server = start().await;
    let alice = server.pki.client("alice", &[]);
    let (status, body) = server.get("/pods", Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"][0]["metadata"]["name"], "web");
    assert_eq!(
        server
            .get("/containerLogs/default/gone/app", Some(&alice))
            .await,
        (404, "pod \"gone\" does not exist".to_string())
    );
    let admin = server.pki.client("admin", &["system:masters"]);
    assert_eq!(server.get("/pods", Some(&admin)).await.0, 200);
}

#[tokio::test]
async fn a_refused_user_gets_the_kubelets_forbidden_message() {
    let server = start().await;
    let mallory = server.pki.client("mallory", &["devs"]);
    assert_eq!(
        server.get("/stats/summary", Some(&mallory)).await,
        (
            403,
            "Forbidden (user=mallory, verb=get, resource=nodes, subresource=stats)".to_string()
        )
    );
    let (status, body) = server
        .request(
            "POST",
            "/exec/default/web/app?command=id",
            Some(&mallory),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (
            403,
            "Forbidden (user=mallory, verb=create, resource=nodes, subresource=proxy)"
        )
    );
    assert_eq!(
        server.get_with_token("/pods", "eve-token").await,
        (
            403,
            "Forbidden (user=eve, verb=get, resource=nodes, subresource=proxy)".to_string()
        )
    );
}

#[tokio::test]
async fn a_reviewed_bearer_token_passes() {
    let server = start().await;
    let (status, body) = server.get_with_token("/pods", "bob-token").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_names_nobody() {
    let server = start().await;
    let other = certificate_authority("other-ca");
    let stranger = issue(
        &other,
        &[],
        "alice",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    // The handshake completes; the request is anonymous, so 401 as the
    // kubelet answers, and a valid token on it still counts.
    let (status, body) = server
        .request("GET", "/pods", Some(&stranger), &[])
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (401, "Unauthorized"));
    let (status, body) = server
        .request(
            "GET",
            "/pods",
            Some(&stranger),
            &[("Authorization", "Bearer bob-token")],
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn exec_upgrades_to_a_websocket_over_tls() {
    let server = start().await;
    let alice = server.pki.client("alice", &[]);
    let stream = server.connect(Some(&alice)).await.unwrap();
    let mut request = "wss://localhost/exec/default/web/app?command=echo&command=hello&output=1"
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        rudder_agent::server::channel::V5.parse().unwrap(),
    );
    let (mut socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    let mut stdout = Vec::new();
    let mut status = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap()
    {
        match message.unwrap() {
            Message::Binary(data) if data.first() == Some(&1) => {
                stdout.extend_from_slice(&data[1..])
            }
            Message::Binary(data) if data.first() == Some(&3) => {
                status = Some(serde_json::from_slice::<serde_json::Value>(&data[1..]).unwrap())
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let _ = socket.close(None).await;
    assert_eq!(String::from_utf8(stdout).unwrap(), "hello\n");
    assert_eq!(status.unwrap()["status"], "Success");
}
