//! Pod startup on one real node: `rudder server --disable-agent` plus a
//! separate `rudder agent` process (so its memory can be measured), the
//! image already in the node's store. Measures the time from creating each
//! pod to seeing it Ready, then the time for the node to fill to a density
//! of `--density` pods, with the agent's RSS at both points.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;

use crate::server::{self, Process};
use crate::{percentile, rss_mb};

#[derive(Args)]
pub struct PodsArgs {
    /// Pods created at once for the startup latency.
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Pods on the node for the density phase (the kubelet's default maximum).
    #[arg(long, default_value_t = 110)]
    density: usize,
    #[arg(long, default_value = "127.0.0.1:5000/busybox:1.35")]
    image: String,
    /// The `rudder` binary (default: beside rudder-bench).
    #[arg(long)]
    rudder_bin: Option<PathBuf>,
}

fn pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "c",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }],
        },
    }))
    .expect("a valid pod")
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates `names` at once; returns when each was first seen Ready, after
/// its creation began.
async fn start_pods(
    client: &Client,
    names: &[String],
    image: &str,
) -> anyhow::Result<Vec<Duration>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut events = watcher::watcher(pods.clone(), watcher::Config::default()).boxed();
    let begin = Instant::now();
    let mut created_at: HashMap<String, Instant> = HashMap::new();
    let creates = futures::future::join_all(names.iter().map(|name| {
        let pods = pods.clone();
        let body = pod(name, image);
        async move {
            let at = Instant::now();
            pods.create(&PostParams::default(), &body)
                .await
                .map(|_| (body.metadata.name.clone().unwrap_or_default(), at))
        }
    }))
    .await;
    for created in creates {
        let (name, at) = created?;
        created_at.insert(name, at);
    }
    let mut startup: HashMap<String, Duration> = HashMap::new();
    let deadline = begin + Duration::from_secs(600);
    while startup.len() < names.len() {
        let event = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .context("pods did not all become Ready within 10 minutes")?;
        let Some(event) = event else {
            bail!("the watch ended")
        };
        let now = Instant::now();
        let seen: Vec<Pod> = match event {
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => vec![p],
            _ => Vec::new(),
        };
        for p in seen {
            let name = p.metadata.name.clone().unwrap_or_default();
            if let Some(at) = created_at.get(&name) {
                if ready(&p) && !startup.contains_key(&name) {
                    startup.insert(name, now.duration_since(*at));
                }
            }
        }
    }
    Ok(startup.into_values().collect())
}

pub async fn run(args: PodsArgs) -> anyhow::Result<()> {
    let bin = server::rudder_bin(args.rudder_bin.as_deref())?;
    let srv = server::start(
        None,
        Some(&bin),
        None,
        &[
            "--cluster-cidr",
            "10.79.0.0/16",
            "--service-cidr",
            "10.112.0.0/16",
        ],
    )?;
    let dir = srv
        .dir
        .as_ref()
        .context("a started server has a data dir")?;
    let agent_dir = dir.path().join("bench-agent");
    let pull = Command::new(&bin)
        .args(["ctr", "--data-dir"])
        .arg(&agent_dir)
        .args(["images", "pull", &args.image])
        .output()?;
    if !pull.status.success() {
        bail!(
            "pulling {} failed (run shared/acceptance/images/build.sh for the local registry): {}",
            args.image,
            String::from_utf8_lossy(&pull.stderr)
        );
    }
    let agent = Process(
        Command::new(&bin)
            .args(["agent", "--kubeconfig"])
            .arg(dir.path().join("kubeconfig.yaml"))
            .arg("--data-dir")
            .arg(&agent_dir)
            .args([
                "--node-name",
                "bench-node",
                "--bridge-name",
                "rdbench0",
                "--agent-port",
                "0",
                "--cluster-cidr",
                "10.79.0.0/16",
                "--service-cidr",
                "10.112.0.0/16",
            ])
            .stdout(Stdio::null())
            .stderr(server::log_output(Some(dir.path()), "agent.log")?)
            .spawn()
            .context("starting rudder agent")?,
    );
    let client = srv.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes.get_opt("bench-node").await?.is_some_and(|n| {
            n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some()
                && n.status
                    .and_then(|s| s.conditions)
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("the node did not become Ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The bridge comes up once the podCIDR is seen; give the agent that moment.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let result = async {
        let names: Vec<String> = (0..args.pods).map(|i| format!("startup-{i}")).collect();
        let mut startup: Vec<f64> = start_pods(&client, &names, &args.image)
            .await?
            .into_iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        startup.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        let rss = rss_mb(agent.0.id()).unwrap_or(0.0);

        let more: Vec<String> = (args.pods..args.density).map(|i| format!("density-{i}")).collect();
        let begin = Instant::now();
        start_pods(&client, &more, &args.image).await?;
        let density_s = begin.elapsed().as_secs_f64();
        let density_rss = rss_mb(agent.0.id()).unwrap_or(0.0);
        Ok::<_, anyhow::Error>(format!(
            "pods pods={} startup_p50_ms={:.0} startup_p99_ms={:.0} agent_rss_mb={:.1} density_pods={} density_fill_s={:.1} density_agent_rss_mb={:.1}",
            args.pods,
            percentile(&startup, 50.0),
            percentile(&startup, 99.0),
            rss,
            args.density,
            density_s,
            density_rss
        ))
    }
    .await;

    // Clean up: the pods, then the node (its containers, network and data).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let _ = pods
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=bench"),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline
        && pods
            .list(&ListParams::default().labels("app=bench"))
            .await
            .map(|l| !l.items.is_empty())
            .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(agent);
    let _ = Command::new(&bin)
        .arg("reset")
        .arg("--data-dir")
        .arg(&agent_dir)
        .output();
    println!("{}", result?);
    Ok(())
}
