//! `rudder-bench api`: the API server under load from real clients (the
//! `kube` crate): pod creates, GETs, a 10,000-pod LIST, watch fan-out to
//! 1,000 watchers, and the server's memory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

#[derive(Args)]
pub struct ApiArgs {
    /// A running server (`http://host:port`); without it, a fresh
    /// `rudder server --disable-agent` is started on a free port.
    #[arg(long)]
    pub(crate) server: Option<String>,
    /// The `rudder` binary to start (default: beside this one).
    #[arg(long)]
    pub(crate) rudder_bin: Option<PathBuf>,
    /// Extra flags for the started server, e.g. `--datastore-endpoint URL`.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) server_flags: Option<String>,
    /// Pods to create.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) pods: usize,
    /// Concurrent clients for creates and GETs.
    #[arg(long, default_value_t = 32)]
    pub(crate) clients: usize,
    /// Concurrent watchers for the fan-out test.
    #[arg(long, default_value_t = 1_000)]
    watchers: usize,
    /// Changes each watcher must receive.
    #[arg(long, default_value_t = 100)]
    watch_events: usize,
    /// Instead: the cost of authentication and authorization. Creates and
    /// GETs run twice in one go, once as a ServiceAccount whose rights
    /// come through RBAC bindings (a bearer token), once as
    /// `system:masters` (a client certificate), and fresh TLS handshakes
    /// are timed.
    #[arg(long)]
    rbac: bool,
}

pub(crate) fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/busybox:1.35",
                                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    }))
    .expect("a valid pod")
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    if args.rbac {
        return crate::rbac::run(args).await;
    }
    let server = crate::server::start(
        args.server.as_deref(),
        args.rudder_bin.as_deref(),
        args.server_flags.as_deref(),
        // The API server alone: an in-process scheduler would try to
        // place the 10,000 node-less pods and write events about them, and
        // controllers would add their own load.
        &["--disable-scheduler", "--disable-controller-manager"],
    )?;
    let pid = server.pid();
    let client = server.client().await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in ["bench", "bench-watch"] {
        let body = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        match namespaces.create(&PostParams::default(), &body).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(err) => return Err(err.into()),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = pid.and_then(crate::rss_mb);

    // Creates: `clients` tasks share the pods to create.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (pods, next, total) = (pods.clone(), next.clone(), args.pods);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(latencies);
                }
                let t = Instant::now();
                pods.create(&PostParams::default(), &pod(&format!("pod-{i:06}")))
                    .await?;
                latencies.push(ms(t.elapsed()));
            }
        }));
    }
    let mut create_latencies = Vec::new();
    for task in tasks {
        create_latencies.extend(task.await??);
    }
    let creates_per_s = args.pods as f64 / started.elapsed().as_secs_f64();
    create_latencies.sort_by(f64::total_cmp);

    // Single GETs, spread over the pods.
    let gets = args.pods.min(10_000);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (pods, next, total) = (pods.clone(), next.clone(), args.pods);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= gets {
                    return anyhow::Ok(());
                }
                pods.get(&format!("pod-{:06}", (i * 7919) % total)).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let gets_per_s = gets as f64 / started.elapsed().as_secs_f64();

    // A full, consistent LIST (from the store), best of three.
    let mut list_ms = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let listed = pods.list(&ListParams::default()).await?;
        list_ms = list_ms.min(ms(t.elapsed()));
        if listed.items.len() != args.pods {
            bail!("listed {} pods, expected {}", listed.items.len(), args.pods);
        }
    }
    let rss_pods = pid.and_then(crate::rss_mb);

    // Watch fan-out: every watcher gets every change; the delay is from just
    // before the write to the watcher's receipt.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "bench-watch");
    let origin = Instant::now();
    let rv = cms
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let (cms, rv, expected) = (cms.clone(), rv.clone(), args.watch_events);
        watchers.push(tokio::spawn(async move {
            let stream = cms.watch(&WatchParams::default().timeout(290), &rv).await?;
            let delays: Vec<f64> = stream
                .take(expected)
                .map_ok(move |event| match event {
                    WatchEvent::Added(cm) => {
                        let sent: u64 = cm
                            .data
                            .and_then(|d| d.get("sent").and_then(|s| s.parse().ok()))
                            .unwrap_or(0);
                        let now = origin.elapsed().as_micros() as u64;
                        now.saturating_sub(sent) as f64 / 1000.0
                    }
                    _ => f64::NAN,
                })
                .try_collect()
                .await?;
            anyhow::Ok(delays)
        }));
    }
    // Let every watcher connect before the changes start.
    tokio::time::sleep(Duration::from_secs(2) + Duration::from_millis(2 * args.watchers as u64))
        .await;
    for i in 0..args.watch_events {
        let sent = origin.elapsed().as_micros().to_string();
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("w-{i:05}")}, "data": {"sent": sent}}),
        )?;
        cms.create(&PostParams::default(), &cm).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut delays = Vec::new();
    for watcher in watchers {
        delays.extend(tokio::time::timeout(Duration::from_secs(300), watcher).await???);
    }
    delays.retain(|d| d.is_finite());
    delays.sort_by(f64::total_cmp);

    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "n/a".into());
    println!(
        "api pods={} clients={} watchers={} creates_per_s={:.0} create_p50_ms={:.2} create_p99_ms={:.2} gets_per_s={:.0} list_10k_ms={:.1} watch_p50_ms={:.2} watch_p99_ms={:.2} idle_rss_mb={} rss_10k_pods_mb={}",
        args.pods,
        args.clients,
        args.watchers,
        creates_per_s,
        crate::percentile(&create_latencies, 50.0),
        crate::percentile(&create_latencies, 99.0),
        gets_per_s,
        list_ms,
        crate::percentile(&delays, 50.0),
        crate::percentile(&delays, 99.0),
        fmt(idle_rss),
        fmt(rss_pods),
    );
    Ok(())
}
