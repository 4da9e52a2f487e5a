//! `rudder-bench scheduler`: the upstream scheduler_perf cases against a
//! real API server and a separate `rudder scheduler` process. Nodes are
//! created as objects (as scheduler_perf does); pods are created through
//! the API and counted when their binding is seen on a watch.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::Client;
use serde_json::{json, Value};

use crate::server::Process;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// SchedulingBasic: pods requesting 100m / 500Mi on empty nodes.
    Basic,
    /// PreemptionBasic: low-priority pods fill the nodes, high-priority
    /// pods preempt them.
    Preemption,
    /// SchedulingPodAffinity: pods must join existing pods of their group
    /// in the same zone.
    Affinity,
}

#[derive(Args)]
pub struct SchedulerArgs {
    #[arg(long, value_enum, default_value = "basic")]
    workload: Workload,
    #[arg(long, default_value_t = 5_000)]
    nodes: usize,
    /// Pods created (and scheduled) before measuring.
    #[arg(long, default_value_t = 1_000)]
    init_pods: usize,
    /// Pods measured.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent clients creating pods.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// The `rudder` binary (default: beside this one).
    #[arg(long)]
    rudder_bin: Option<PathBuf>,
}

const NAMESPACE: &str = "sched-bench";

fn node(name: &str, zone: usize) -> Value {
    json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("zone-{zone}"),
        }},
        "status": {
            "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        }
    })
}

fn pod(name: &str, workload: Workload, measured: bool, index: usize) -> Value {
    let mut pod = json!({
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "registry.local/pause:3.9",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]}
    });
    match workload {
        Workload::Basic => {}
        Workload::Preemption => {
            // Four low-priority pods fill a node; each high-priority pod
            // needs one of them gone.
            pod["spec"]["containers"][0]["resources"]["requests"] =
                json!({"cpu": "1", "memory": "1Gi"});
            pod["spec"]["priorityClassName"] =
                json!(if measured { "bench-high" } else { "bench-low" });
        }
        Workload::Affinity => {
            let group = format!("group-{}", index % 50);
            pod["metadata"]["labels"]["group"] = json!(group);
            if measured {
                pod["spec"]["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"group": group}}, "topologyKey": "topology.kubernetes.io/zone"}]}});
            }
        }
    }
    pod
}

/// Creates `count` objects with `clients` concurrent tasks.
async fn create_many<K, F>(api: Api<K>, count: usize, clients: usize, make: F) -> anyhow::Result<()>
where
    K: Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: Fn(usize) -> Value + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (api, next, make) = (api.clone(), next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                let object: K = serde_json::from_value(make(i))?;
                api.create(&PostParams::default(), &object).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Counts pods as they are bound, in one-second buckets; also completes
/// graceful deletions (the node agent's part), which preemption needs.
async fn watch_bindings(client: Client, expected: usize) -> anyhow::Result<(Duration, Vec<usize>)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut rv = pods
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut bound = std::collections::HashSet::new();
    let mut buckets = Vec::new();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    // A watch the server closes (a timeout, a slow watcher) is resumed from
    // the last resourceVersion seen.
    'watch: while bound.len() < expected {
        let mut stream = pods
            .watch(&WatchParams::default().timeout(290), &rv)
            .await?
            .boxed();
        while bound.len() < expected {
            let next = tokio::time::timeout(Duration::from_secs(120), stream.try_next())
                .await
                .context("no binding for 120 s")?;
            let pod = match next {
                Ok(Some(WatchEvent::Added(p) | WatchEvent::Modified(p))) => p,
                Ok(Some(WatchEvent::Bookmark(b))) => {
                    rv = b.metadata.resource_version;
                    continue;
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => continue 'watch,
            };
            if let Some(v) = &pod.metadata.resource_version {
                rv = v.clone();
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                let pods = pods.clone();
                tokio::spawn(async move {
                    pods.delete(&name, &DeleteParams::default().grace_period(0))
                        .await
                });
                continue;
            }
            if !name.starts_with("measured-")
                || pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_none()
            {
                continue;
            }
            if bound.insert(name) {
                let now = Instant::now();
                let start = *first.get_or_insert(now);
                let bucket = now.duration_since(start).as_secs() as usize;
                if buckets.len() <= bucket {
                    buckets.resize(bucket + 1, 0);
                }
                buckets[bucket] += 1;
                last = now;
            }
        }
    }
    Ok((last.duration_since(first.unwrap_or(last)), buckets))
}

async fn wait_bound(client: &Client, prefix: &str, expected: usize) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = pods.list(&ListParams::default()).await?;
        let bound = list
            .items
            .iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        if bound >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {bound} of {expected} {prefix} pods were bound");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let server = crate::server::start(
        None,
        args.rudder_bin.as_deref(),
        None,
        // The API server and this scheduler only, as upstream's
        // scheduler_perf runs it: no controllers.
        &["--disable-scheduler", "--disable-controller-manager"],
    )?;
    let client = server.client().await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await?;
    if args.workload == Workload::Preemption {
        let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> =
            Api::all(client.clone());
        for (name, value) in [("bench-low", 10), ("bench-high", 1000)] {
            let class =
                serde_json::from_value(json!({"metadata": {"name": name}, "value": value}))?;
            classes.create(&PostParams::default(), &class).await?;
        }
    }

    let nodes: Api<Node> = Api::all(client.clone());
    create_many(nodes, args.nodes, args.clients, |i| {
        node(&format!("node-{i:05}"), i % 10)
    })
    .await?;

    let kubeconfig = server.kubeconfig().context("no kubeconfig")?;
    let bin = crate::server::rudder_bin(args.rudder_bin.as_deref())?;
    let scheduler = Process(
        Command::new(&bin)
            .args(["scheduler", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} scheduler", bin.display()))?,
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let workload = args.workload;
    create_many(pods.clone(), args.init_pods, args.clients, move |i| {
        pod(&format!("init-{i:06}"), workload, false, i)
    })
    .await?;
    wait_bound(&client, "init-", args.init_pods).await?;

    let watcher = tokio::spawn(watch_bindings(client.clone(), args.pods));
    tokio::time::sleep(Duration::from_millis(500)).await;
    create_many(pods, args.pods, args.clients, move |i| {
        pod(&format!("measured-{i:06}"), workload, true, i)
    })
    .await?;
    let (elapsed, buckets) = watcher.await??;
    let rss = crate::rss_mb(scheduler.0.id());

    let avg = args.pods as f64 / elapsed.as_secs_f64().max(0.001);
    // Whole seconds only: the last bucket is partial.
    let mut samples: Vec<f64> = buckets
        .iter()
        .take(buckets.len().saturating_sub(1))
        .map(|n| *n as f64)
        .collect();
    if samples.is_empty() {
        samples.push(avg);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "scheduler workload={:?} nodes={} init_pods={} pods={} pods_per_s_avg={:.0} pods_per_s_p50={:.0} pods_per_s_p99={:.0} scheduler_rss_mb={}",
        args.workload,
        args.nodes,
        args.init_pods,
        args.pods,
        avg,
        crate::percentile(&samples, 50.0),
        // Percentiles of the per-second samples, as scheduler_perf
        // reports throughput.
        crate::percentile(&samples, 99.0),
        rss.map(|r| format!("{r:.1}")).unwrap_or_else(|| "n/a".into()),
    );
    drop(scheduler);
    Ok(())
}
