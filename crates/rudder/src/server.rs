//! `rudder server`: the control plane in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rudder_apiserver::ApiServer;
use rudder_store::Compactor;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where all state lives (the embedded store, the kubeconfig).
    #[arg(
        long,
        default_value = "/var/lib/rudder/server",
        env = "RUDDER_DATA_DIR"
    )]
    data_dir: PathBuf,
    /// Address the API is served on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Use an etcd cluster instead of the embedded store:
    /// `http://host:2379[,http://host2:2379…]`.
    #[arg(long, env = "RUDDER_DATASTORE_ENDPOINT")]
    datastore_endpoint: Option<String>,
    /// Run only the control plane, no node agent on this machine.
    #[arg(long)]
    disable_agent: bool,
    /// Do not run the scheduler in this process (run `rudder scheduler`
    /// elsewhere).
    #[arg(long)]
    disable_scheduler: bool,
    /// Do not run the controller manager in this process (run `rudder
    /// controller-manager` elsewhere).
    #[arg(long)]
    disable_controller_manager: bool,
    #[command(flatten)]
    controller_flags: crate::client::ControllerFlags,
    #[command(flatten)]
    agent_flags: crate::agent::AgentFlags,
    /// The Services' virtual address range (kube-apiserver's
    /// --service-cluster-ip-range; k3s' default).
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
    /// The scheduler's KubeSchedulerConfiguration file.
    #[arg(long)]
    scheduler_config: Option<PathBuf>,
    /// How often old store revisions are compacted (history is kept for
    /// at least this long, as kube-apiserver's --etcd-compaction-interval).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    compaction_interval: Duration,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration {text:?}: use ms, s, m or h")),
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let store = rudder_store::open(&args.data_dir, args.datastore_endpoint.as_deref())
        .await
        .context("opening the store")?;
    let store = rudder_store::encryption::encrypted(
        store,
        &rudder_store::EncryptionConfig::load_or_create(&args.data_dir)?,
    );
    tracing::info!(backend = store.backend(), "store ready");
    tokio::spawn(Compactor::new(store.clone(), args.compaction_interval).run());

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    let service_cidr: rudder_apiserver::ServiceCidr = args
        .service_cidr
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid --service-cidr: {e}"))?;
    let server = ApiServer::new(store, local.to_string())
        .with_service_cidr(service_cidr, args.agent_flags.cluster_dns());
    server
        .bootstrap()
        .await
        .context("creating the system namespaces")?;
    let (stopping, mut stopping_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown_signal().await;
        stopping.send_replace(true);
    };
    let serving = tokio::spawn(server.clone().serve(listener, signal));

    let kubeconfig = args.data_dir.join("kubeconfig.yaml");
    crate::kubeconfig::write(
        &kubeconfig,
        &crate::kubeconfig::render(&format!("http://{local}")),
    )?;
    tracing::info!(address = %local, kubeconfig = %kubeconfig.display(), "API server ready");

    if !args.disable_scheduler {
        let config = crate::client::scheduler_config(args.scheduler_config.as_deref())?;
        let client = crate::client::client_from(Some(&kubeconfig)).await?;
        tokio::spawn(async move {
            if let Err(err) = rudder_scheduler::run(client, config, true).await {
                tracing::error!(error = %err, "the scheduler stopped");
            }
        });
    }

    if !args.disable_controller_manager {
        let client = crate::client::client_from(Some(&kubeconfig)).await?;
        let controllers = rudder_controllers::select(&[])?;
        let options = args.controller_flags.options();
        tokio::spawn(async move {
            if let Err(err) =
                rudder_controllers::run_with_leader_election(client, controllers, options).await
            {
                tracing::error!(error = %err, "the controller manager stopped");
            }
        });
    }

    if !args.disable_agent {
        let client = crate::client::client_from(Some(&kubeconfig)).await?;
        let ranges = crate::agent::ClusterRanges {
            cluster_cidr: args.controller_flags.cluster_cidr().to_owned(),
            service_cidr: args.service_cidr.clone(),
        };
        let config = crate::agent::config(
            &args.data_dir.join("agent"),
            &args.agent_flags,
            &ranges,
            true,
        )?;
        tokio::spawn(async move {
            if let Err(err) = rudder_agent::run(client, config).await {
                tracing::error!(error = %err, "the node agent stopped");
            }
        });
    }

    // Requests in flight get a few seconds to finish after SIGTERM; clients
    // that keep connections busy (a watch re-opened at once) do not hold
    // the process up longer than that.
    let drain = async {
        let _ = stopping_rx.wait_for(|s| *s).await;
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    };
    tokio::select! {
        served = serving => served.context("the API server task failed")??,
        _ = drain => tracing::warn!("connections still open 5 s after the shutdown began; stopping anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}

pub async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_like_kubernetes_flags() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
    }
}
