//! `rudder-bench api --rbac`: what authentication and authorization cost.
//! The same creates and GETs run as a ServiceAccount authorized through a
//! Role and RoleBinding (a bearer token: signature check, the account and
//! token still live, the RBAC walk) and as `system:masters` (a client
//! certificate, allowed before any authorizer), alternating so both see
//! the same server. `rbac_overhead_pct` compares the server's CPU time per
//! request (median round of each), which is what authentication and
//! authorization add; wall-clock throughput is printed beside it. Fresh
//! TLS handshakes are timed on their own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::api::{ms, pod, ApiArgs};

/// Rounds per identity; the medians of all but the first (warm-up) count.
const ROUNDS: usize = 7;
/// Turns each identity takes per round.
const SLICES: usize = 8;
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

    let per_round = args.pods.clamp(SLICES * 10, 2_000);
    let pid = server.pid().context("--rbac needs a server it starts")?;
    let apis = [
        Api::<Pod>::namespaced(account.clone(), "bench-sa"),
        Api::<Pod>::namespaced(admin.clone(), "bench-admin"),
    ];
    let (mut sa_rounds, mut admin_rounds) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // The identities take turns in short slices (who starts
        // alternates), so background work (the store's, the allocator's)
        // falls on both alike.
        let mut totals = [Round::default(), Round::default()];
        let slice = per_round / SLICES;
        for part in 0..SLICES {
            let order = if (round + part) % 2 == 0 {
                [0, 1]
            } else {
                [1, 0]
            };
            for who in order {
                let names = part * slice..(part + 1) * slice;
                let done = workload(&apis[who], names, args.clients, round, pid).await?;
                totals[who].seconds += done.seconds;
                totals[who].server_cpu_s += done.server_cpu_s;
            }
        }
        let [sa, adm] = totals;
        eprintln!(
            "round {round}: ServiceAccount {:.3} s, {:.2} server CPU-s; system:masters {:.3} s, {:.2} server CPU-s",
            sa.seconds, sa.server_cpu_s, adm.seconds, adm.server_cpu_s
        );
        for api in &apis {
            api.delete_collection(&DeleteParams::default(), &ListParams::default())
                .await?;
        }
        // The deletions' watch events and store clean-up settle outside
        // the measurements.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The first round warms caches and the allocator up.
        if round > 0 {
            sa_rounds.push(sa);
            admin_rounds.push(adm);
        }
    }
    let median = |rounds: &[Round], f: fn(&Round) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        crate::percentile(&values, 50.0)
    };
    let ops = (per_round / SLICES * SLICES * 2) as f64;
    let (sa_s, admin_s) = (
        median(&sa_rounds, |r| r.seconds),
        median(&admin_rounds, |r| r.seconds),
    );
    let (sa_cpu, admin_cpu) = (
        median(&sa_rounds, |r| r.server_cpu_s),
        median(&admin_rounds, |r| r.server_cpu_s),
    );
    let handshake = handshakes(&server.url, &ca).await?;
    // The overhead is what authentication and authorization add to the
    // server's work per request. Wall-clock throughput is printed too, but
    // on a small machine the benchmark's own clients share the cores with
    // the server.
    println!(
        "api-rbac ops_per_round={} clients={} rounds={} sa_ops_per_s={:.0} admin_ops_per_s={:.0} wall_overhead_pct={:.1} sa_server_cpu_us_per_op={:.1} admin_server_cpu_us_per_op={:.1} rbac_overhead_pct={:.1} tls_handshake_ms={:.2}",
        ops,
        args.clients,
        ROUNDS - 1,
        ops / sa_s,
        ops / admin_s,
        (sa_s / admin_s - 1.0) * 100.0,
        sa_cpu / ops * 1e6,
        admin_cpu / ops * 1e6,
        (sa_cpu / admin_cpu - 1.0) * 100.0,
        handshake,
    );
    Ok(())
}

/// One identity's share of a round: wall-clock seconds and the server's
/// CPU seconds.
#[derive(Default)]
struct Round {
    seconds: f64,
    server_cpu_s: f64,
}

/// Creates and GETs the pods numbered `names` over `clients` connections,
/// and what they cost the server (`pid`).
async fn workload(
    pods: &Api<Pod>,
    names: std::ops::Range<usize>,
    clients: usize,
    round: usize,
    pid: u32,
) -> anyhow::Result<Round> {
    let next = Arc::new(AtomicUsize::new(names.start));
    let cpu_before = crate::cpu_s(pid).context("reading the server's CPU time")?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (pods, next, end) = (pods.clone(), next.clone(), names.end);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
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
    Ok(Round {
        seconds: started.elapsed().as_secs_f64(),
        server_cpu_s: crate::cpu_s(pid).context("reading the server's CPU time")? - cpu_before,
    })
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
