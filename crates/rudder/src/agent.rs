//! `rudder agent`, and the agent inside `rudder server`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

/// Flags shared by `rudder agent` and the agent in `rudder server`.
#[derive(Args, Debug, Clone)]
pub struct AgentFlags {
    /// The node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The port of the agent's API (logs, exec, port-forward); if it is
    /// taken, a free one is used and advertised in the Node's status.
    #[arg(long, default_value_t = 10250)]
    agent_port: u16,
    /// The Linux bridge pods attach to.
    #[arg(long, default_value = "rudder0")]
    bridge_name: String,
    /// Hard eviction thresholds, as the kubelet's flag:
    /// `signal<quantity|percent` statements separated by commas (signals:
    /// memory.available, nodefs.available, nodefs.inodesFree,
    /// imagefs.available, imagefs.inodesFree, pid.available). Default, as
    /// k3s: memory.available<100Mi,nodefs.available<5%,nodefs.inodesFree<5%,imagefs.available<5%.
    #[arg(long)]
    eviction_hard: Option<String>,
    /// How long a pressure condition stays after its threshold was last
    /// crossed.
    #[arg(long, default_value = "5m", value_parser = crate::server::parse_duration)]
    eviction_pressure_transition_period: Duration,
    /// How often the eviction thresholds are checked.
    #[arg(long, default_value = "10s", value_parser = crate::server::parse_duration, hide = true)]
    eviction_monitoring_interval: Duration,
    /// How pod traffic reaches other nodes: `host-gw` (routes via the
    /// nodes' addresses; one L2 segment) or `vxlan` (encapsulated).
    #[arg(long, default_value = "host-gw")]
    pod_network: rudder_network::PodNetworkBackend,
    /// The cluster DNS Service's address, written into pods'
    /// resolv.conf (the kube-dns Service; default: the service CIDR's
    /// tenth address, 10.43.0.10).
    #[arg(long)]
    cluster_dns: Option<Ipv4Addr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// A registry reached over plain HTTP (`host:port`), as Docker's
    /// `--insecure-registry`; repeat for more.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// Mirrors, credentials and TLS settings per registry (k3s'
    /// registries.yaml format); a missing file means none.
    #[arg(long, default_value = rudder_image::DEFAULT_REGISTRIES_CONFIG)]
    registries_config: PathBuf,
}

/// Address ranges an agent is told, which `rudder server` takes from its
/// own flags.
#[derive(Clone, Debug)]
pub struct ClusterRanges {
    pub cluster_cidr: String,
    pub service_cidr: String,
}

impl AgentFlags {
    /// The `--node-name` given, if any.
    pub fn node_name(&self) -> Option<String> {
        self.node_name.clone()
    }

    /// The `--cluster-dns` given, if any.
    pub fn cluster_dns(&self) -> Option<Ipv4Addr> {
        self.cluster_dns
    }
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The API server's URL.
    #[arg(long)]
    server: Option<String>,
    /// A kubeconfig for the API server (instead of --server).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The join token (the server's DATA_DIR/node-token): the agent trusts
    /// the server only if its CA matches the token's hash, then obtains
    /// its own certificates and keeps them in its data dir.
    #[arg(long, env = "RUDDER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The agent's data directory.
    #[arg(long, env = "RUDDER_DATA_DIR", default_value = "/var/lib/rudder/agent")]
    data_dir: PathBuf,
    /// The address other nodes and the API server reach this node at.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// The whole cluster's pod network (every node's podCIDR is inside it):
    /// traffic within it is not masqueraded.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// The Services' virtual address range.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
    #[command(flatten)]
    flags: AgentFlags,
}

/// Where the agent listens: the wanted port, or a free one when taken.
fn listen_address(port: u16) -> SocketAddr {
    let wanted = SocketAddr::from(([0, 0, 0, 0], port));
    match std::net::TcpListener::bind(wanted) {
        Ok(_) => wanted,
        Err(e) => {
            tracing::warn!(port, error = %e, "the agent's port is taken; using a free one");
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    }
}

pub fn config(
    data_dir: &Path,
    flags: &AgentFlags,
    ranges: &ClusterRanges,
) -> anyhow::Result<rudder_agent::AgentConfig> {
    let mut registries = rudder_image::RegistriesConfig::load(&flags.registries_config)
        .with_context(|| format!("reading {}", flags.registries_config.display()))?;
    for host in &flags.insecure_registries {
        registries.configs.entry(host.clone()).or_default().insecure = true;
    }
    let service_cidr: rudder_network::Ipv4Cidr = ranges
        .service_cidr
        .parse()
        .with_context(|| format!("invalid service CIDR {:?}", ranges.service_cidr))?;
    let tenth = Ipv4Addr::from(u32::from(service_cidr.network()) + 10);
    Ok(rudder_agent::AgentConfig {
        cluster_cidr: ranges
            .cluster_cidr
            .parse()
            .with_context(|| format!("invalid cluster CIDR {:?}", ranges.cluster_cidr))?,
        service_cidr,
        cluster_dns: Some(flags.cluster_dns.unwrap_or(tenth)),
        cluster_domain: flags.cluster_domain.clone(),
        pod_network: flags.pod_network,
        registries,
        data_dir: data_dir.to_path_buf(),
        node_name: flags.node_name.clone(),
        listen: listen_address(flags.agent_port),
        binary: crate::self_exe(),
        bridge: flags.bridge_name.clone(),
        node_ip: None,
        server_security: rudder_agent::server::ServerSecurity::Insecure,
        eviction: rudder_agent::eviction::EvictionConfig {
            thresholds: match &flags.eviction_hard {
                Some(text) => rudder_agent::eviction::thresholds::parse_hard(text)
                    .context("invalid --eviction-hard")?,
                None => rudder_agent::eviction::thresholds::default_hard(),
            },
            monitoring_interval: flags.eviction_monitoring_interval,
            pressure_transition_period: flags.eviction_pressure_transition_period,
        },
    })
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let node_name = args.flags.node_name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        rudder_agent::node::node_name_from_hostname(host.trim())
    });
    let mut ips: Vec<IpAddr> = args.node_ip.into_iter().collect();
    if ips.is_empty() {
        ips.extend(crate::security::default_route_address());
    }
    let mut node_tls = None;
    let mut insecure_why = "no --token or node --kubeconfig";
    let client = match (&args.server, &args.kubeconfig) {
        (_, Some(path)) => {
            let client = crate::client::client_from(Some(path)).await?;
            match crate::security::kubeconfig_serving(&client, &args.data_dir, &node_name, &ips)
                .await
                .context("securing the agent's API")?
            {
                Ok(tls) => node_tls = Some(tls),
                Err(why) => {
                    tracing::warn!("{why}");
                    insecure_why = "--kubeconfig is not this node's";
                }
            }
            client
        }
        (Some(url), None) if args.token.is_some() => {
            let credentials = crate::security::join(
                url,
                args.token.as_deref().unwrap_or_default(),
                &args.data_dir,
                &node_name,
                &ips,
            )
            .await
            .context("joining the cluster")?;
            node_tls = Some((credentials.serving, credentials.client_ca_pem));
            crate::client::client_from(Some(&credentials.kubeconfig)).await?
        }
        (Some(url), None) => {
            let config = kube::Config::new(
                url.parse()
                    .with_context(|| format!("invalid --server {url:?}"))?,
            );
            kube::Client::try_from(config)?
        }
        (None, None) => crate::client::client_from(None).await?,
    };
    let ranges = ClusterRanges {
        cluster_cidr: args.cluster_cidr.clone(),
        service_cidr: args.service_cidr.clone(),
    };
    let mut config = config(&args.data_dir, &args.flags, &ranges)?;
    config.node_ip = args.node_ip;
    match node_tls {
        Some((serving, client_ca_pem)) => {
            config.server_security =
                rudder_agent::server::ServerSecurity::Tls(rudder_agent::server::ServingTls {
                    cert_pem: serving.cert_pem,
                    key_pem: serving.key_pem,
                    client_ca_pem,
                });
        }
        None => tracing::warn!(
            "{insecure_why}: the agent's API (logs, exec, port-forward, stats) is served over plain HTTP without authentication; join with --token (or a kubeconfig of system:node:NAME) to secure it"
        ),
    }
    tokio::select! {
        result = rudder_agent::run(client, config) => result,
        _ = crate::server::shutdown_signal() => Ok(()),
    }
}
