//! Subcommands that run a component as an API client: `rudder scheduler`
//! and `rudder simulate`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

/// A kube client from a kubeconfig file (or `KUBECONFIG`, or the default
/// locations when none is given).
pub async fn client_from(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig (set KUBECONFIG or pass --kubeconfig)")?,
    };
    kube::Client::try_from(config).context("creating the API client")
}

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// The API server's kubeconfig (default: KUBECONFIG).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// A KubeSchedulerConfiguration file: profiles, plugins, weights.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Elect a leader on a Lease, so several instances can run and one
    /// schedules (`--leader-elect=false` to turn it off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
}

/// Reads `--config`, or the default single profile.
pub fn scheduler_config(
    path: Option<&Path>,
) -> anyhow::Result<rudder_scheduler::SchedulerConfiguration> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            rudder_scheduler::SchedulerConfiguration::from_yaml(&text)
                .with_context(|| format!("in {}", path.display()))
        }
        None => Ok(Default::default()),
    }
}

pub async fn run_scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let config = scheduler_config(args.config.as_deref())?;
    let client = client_from(args.kubeconfig.as_deref()).await?;
    tokio::select! {
        result = rudder_scheduler::run(client, config, args.leader_elect) => result,
        _ = crate::server::shutdown_signal() => Ok(()),
    }
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The API server's kubeconfig (default: KUBECONFIG).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Simulated nodes to run.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// CPU of each node.
    #[arg(long, default_value = "4")]
    cpu: String,
    /// Memory of each node.
    #[arg(long, default_value = "8Gi")]
    memory: String,
    /// Pods each node takes.
    #[arg(long, default_value_t = 110)]
    pods: u32,
    /// Nodes are named PREFIX1..PREFIXN.
    #[arg(long, default_value = "sim-")]
    name_prefix: String,
}

pub async fn run_simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let client = client_from(args.kubeconfig.as_deref()).await?;
    let options = rudder_simulator::SimulateOptions {
        nodes: args.nodes,
        cpu: args.cpu,
        memory: args.memory,
        pods: args.pods,
        name_prefix: args.name_prefix,
    };
    tokio::select! {
        result = rudder_simulator::run(client, options) => result,
        _ = crate::server::shutdown_signal() => Ok(()),
    }
}

#[derive(Args, Debug)]
pub struct ControllerManagerArgs {
    /// The API server's kubeconfig (default: KUBECONFIG).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Controllers to run: `*` for all, `name` to add one, `-name` to
    /// leave one out (comma-separated, as kube-controller-manager's flag).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// Elect a leader on a Lease, so several instances can run and one
    /// acts (`--leader-elect=false` to turn it off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    #[command(flatten)]
    options: ControllerFlags,
}

/// The controller settings both `rudder server` and `rudder
/// controller-manager` take (kube-controller-manager's flag names).
#[derive(Args, Debug, Clone)]
pub struct ControllerFlags {
    /// Pod IPs come from this range; each node gets a slice of it.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// The prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// A node silent this long is marked Unknown and tainted unreachable.
    #[arg(long, default_value = "50s", value_parser = crate::server::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// Finished pods beyond this count are garbage-collected (0: never).
    #[arg(long, default_value_t = 12500)]
    terminated_pod_gc_threshold: usize,
    /// How often each HorizontalPodAutoscaler is evaluated.
    #[arg(long, default_value = "15s", value_parser = crate::server::parse_duration)]
    horizontal_pod_autoscaler_sync_period: std::time::Duration,
    /// How long an HPA without its own scale-down window looks back
    /// before scaling down.
    #[arg(long, default_value = "5m", value_parser = crate::server::parse_duration)]
    horizontal_pod_autoscaler_downscale_stabilization: std::time::Duration,
    /// Usage ratios within this distance of 1 do not rescale.
    #[arg(long, default_value_t = 0.1)]
    horizontal_pod_autoscaler_tolerance: f64,
}

impl ControllerFlags {
    pub fn cluster_cidr(&self) -> &str {
        &self.cluster_cidr
    }

    pub fn options(&self) -> rudder_controllers::ControllerOptions {
        rudder_controllers::ControllerOptions {
            cluster_cidr: self.cluster_cidr.clone(),
            node_cidr_mask_size: self.node_cidr_mask_size,
            node_monitor_grace_period: self.node_monitor_grace_period,
            terminated_pod_gc_threshold: self.terminated_pod_gc_threshold,
            hpa_sync_period: self.horizontal_pod_autoscaler_sync_period,
            hpa_downscale_stabilization: self.horizontal_pod_autoscaler_downscale_stabilization,
            hpa_tolerance: self.horizontal_pod_autoscaler_tolerance,
            ..Default::default()
        }
    }
}

pub async fn run_controller_manager(args: ControllerManagerArgs) -> anyhow::Result<()> {
    let controllers = rudder_controllers::select(&args.controllers)?;
    let client = client_from(args.kubeconfig.as_deref()).await?;
    let run = async {
        if args.leader_elect {
            rudder_controllers::run_with_leader_election(
                client,
                controllers,
                args.options.options(),
            )
            .await
        } else {
            rudder_controllers::run(client, &controllers, args.options.options()).await
        }
    };
    tokio::select! {
        result = run => result,
        _ = crate::server::shutdown_signal() => Ok(()),
    }
}
