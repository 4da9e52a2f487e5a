//! `rudder-bench api --rbac`: what authentication and authorization cost.
//! The same creates and GETs run as a ServiceAccount authorized through a
//! Role and RoleBinding (a bearer token: signature check, the account and
//! token still live, the RBAC walk) and as `system:masters` (a client
//! certificate, allowed before any authorizer), alternating so both see
//! the same server; the best round of each is compared. Fresh TLS
//! handshakes are timed on their own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::api::{ms, pod, ApiArgs};

/// Rounds per identity; the best of them counts (the first warms up).
const ROUNDS: usize = 4;
const HANDSHAKES: usize = 50;

pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let server = crate::server::start(
        args.server.as_deref(),
        args.rudder_bin.as_deref(),
        args.server_flags.as_deref(),
        &["--disable-scheduler", "--disable-controller-manager"],
    )?;
    let kubeconfig = server
        .kubeconfig()
        .context("--rbac needs a server it starts (its kubeconfig holds the admin credentials)")?;
    let admin = server.client().await?;
    let file = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    let ca = file
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .context("the kubeconfig carries no CA")?;

    for ns in ["bench-sa", "bench-admin"] {
        apply(
            &admin,
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await?;
    }
    apply(
        &admin,
        "/api/v1/namespaces/bench-sa/serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bench"}}),
    )
    .await?;
    apply(&admin, "/apis/rbac.authorization.k8s.io/v1/namespaces/bench-sa/roles", json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pods"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "delete", "deletecollection"]}]
    })).await?;
    apply(&admin, "/apis/rbac.authorization.k8s.io/v1/namespaces/bench-sa/rolebindings", json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "bench", "namespace": "bench-sa"}]
    })).await?;
    let request = kube::core::Request::new("/api/v1/namespaces/bench-sa/serviceaccounts/bench/token")
        .create(&PostParams::default(), serde_json::to_vec(&json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 7200}
        }))?)?;
    let answer: serde_json::Value = admin.request(request).await.context("requesting a token")?;
    let token = answer["status"]["token"]
        .as_str()
        .context("no token in the TokenRequest")?
        .to_owned();

    let mut config = kube::Config::new(server.url.parse()?);
    config.root_cert = Some(vec![pem_der(&String::from_utf8(base64_decode(&ca)?)?)?]);
    config.auth_info.token = Some(token.into());
    let account = Client::try_from(config)?;
    // The binding reaches the authorizer's snapshot within moments.
    let probe: Api<Pod> = Api::namespaced(account.clone(), "bench-sa");
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe.list(&ListParams::default().limit(1)).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the ServiceAccount never got its RBAC rights"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let per_round = args.pods.clamp(100, 2_000);
    let (mut best_sa, mut best_admin) = (f64::MAX, f64::MAX);
    for round in 0..ROUNDS {
        // Who goes first alternates: the round after a deletion of a whole
        // round's pods pays for some of its clean-up.
        let sa_api = Api::namespaced(account.clone(), "bench-sa");
        let admin_api = Api::namespaced(admin.clone(), "bench-admin");
        let (sa, adm) = if round % 2 == 0 {
            let sa = workload(sa_api, per_round, args.clients, round).await?;
            (
                sa,
                workload(admin_api, per_round, args.clients, round).await?,
            )
        } else {
            let adm = workload(admin_api, per_round, args.clients, round).await?;
            (workload(sa_api, per_round, args.clients, round).await?, adm)
        };
        eprintln!("round {round}: sa {sa:.3}s admin {adm:.3}s");
        best_sa = best_sa.min(sa);
        best_admin = best_admin.min(adm);
    }
    let overhead = (best_sa / best_admin - 1.0) * 100.0;
    let handshake = handshakes(&server.url, &ca).await?;
    println!(
        "api-rbac ops_per_round={} clients={} sa_ops_per_s={:.0} admin_ops_per_s={:.0} rbac_overhead_pct={:.1} tls_handshake_ms={:.2}",
        per_round * 2,
        args.clients,
        (per_round * 2) as f64 / best_sa,
        (per_round * 2) as f64 / best_admin,
        overhead,
        handshake,
    );
    Ok(())
}

/// `count` creates and `count` GETs over `clients` connections; seconds.
async fn workload(
    pods: Api<Pod>,
    count: usize,
    clients: usize,
    round: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (pods, next) = (pods.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                let name = format!("r{round}-{i:06}");
                pods.create(&PostParams::default(), &pod(&name)).await?;
                pods.get(&name).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    Ok(elapsed)
}

/// The median time to open a TCP connection and complete a TLS handshake.
async fn handshakes(url: &str, ca_b64: &str) -> anyhow::Result<f64> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().context("no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let ca = String::from_utf8(base64_decode(ca_b64)?)?;
    let config = rudder_auth::pki::client_config(&ca, None)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls::pki_types::ServerName::try_from(host.clone())?;
    let mut times = Vec::new();
    for _ in 0..HANDSHAKES {
        let started = Instant::now();
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let _tls = connector.connect(name.clone(), stream).await?;
        times.push(ms(started.elapsed()));
    }
    times.sort_by(f64::total_cmp);
    Ok(crate::percentile(&times, 50.0))
}

async fn apply(client: &Client, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let request = kube::core::Request::new(path)
        .create(&PostParams::default(), serde_json::to_vec(&body)?)?;
    match client.request::<serde_json::Value>(request).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.decode(text.trim())?)
}

fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64_decode(&body)
}
