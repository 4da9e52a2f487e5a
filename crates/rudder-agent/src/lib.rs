//! The node agent, Rudder's kubelet: it registers the Node, keeps its Lease,
//! gives pods their network, runs the pods bound to it through the node's
//! runtime (`rudder-cri`) and reports their status. An API client like any
//! other; it runs inside `rudder server` or alone as `rudder agent`.

pub mod env;
pub mod eviction;
pub mod node;
pub mod pods;
pub mod proxy;
pub mod server;
pub mod static_pods;
pub mod volumes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The agent's data directory (`/var/lib/rudder/agent`): images,
    /// containers, pod volumes, logs.
    pub data_dir: PathBuf,
    /// The node's name (default: the host name).
    pub node_name: Option<String>,
    /// Label the node as a control-plane node (inside `rudder server`).
    pub control_plane: bool,
    /// Where the agent's API (logs, exec) listens; port 0 picks a free one.
    pub listen: std::net::SocketAddr,
    /// The `rudder` executable the container runtime runs its shims as.
    pub binary: PathBuf,
    /// The pod network's bridge.
    pub bridge: String,
    /// The address the node is reached at (default: the source address of
    /// the default route).
    pub node_ip: Option<std::net::IpAddr>,
    /// Node-pressure eviction: hard thresholds (`--eviction-hard`), how
    /// often they are checked, how long pressure is reported after.
    pub eviction: eviction::EvictionConfig,
}

/// Runs the agent until the process ends.
pub async fn run(client: Client, config: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let mut machine = node::Machine::probe(&config.data_dir);
    if let Some(ip) = config.node_ip {
        machine.address = ip;
    }
    let name = config
        .node_name
        .clone()
        .unwrap_or_else(|| node::node_name_from_hostname(&machine.hostname));

    let runtime = Arc::new(
        rudder_cri::NodeRuntime::open(&config.data_dir, config.binary.clone())
            .context("opening the node's container runtime")?,
    );
    // Air-gapped installs: tarballs dropped in <data-dir>/images.
    let import_dir = rudder_image::import_dir(&config.data_dir);
    if import_dir.is_dir() {
        let store = runtime.images().clone();
        let dir = import_dir.clone();
        for (path, result) in
            tokio::task::spawn_blocking(move || store.import_directory(&dir)).await?
        {
            match result {
                Ok(records) => {
                    tracing::info!(images = records.len(), archive = %path.display(), "imported image archive")
                }
                Err(e) => {
                    tracing::warn!(archive = %path.display(), error = %e, "importing an image archive failed")
                }
            }
        }
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the agent's API on {}", config.listen))?;
    let kubelet_port = listener.local_addr()?.port();
    {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            if let Err(e) = server::serve(listener, runtime).await {
                tracing::error!(error = %e, "the agent's API stopped");
            }
        });
    }

    let pressure = eviction::NodePressure::default();
    let thresholds = &config.eviction.thresholds;
    let node_config = node::NodeConfig {
        name: name.clone(),
        control_plane: config.control_plane,
        labels: Default::default(),
        kubelet_port,
        reserved_cpu_millis: 0,
        reserved_memory: 0,
        eviction_memory: eviction::thresholds::reserved(
            thresholds,
            eviction::Signal::MemoryAvailable,
            machine.memory_bytes,
        ),
        eviction_ephemeral_storage: eviction::thresholds::reserved(
            thresholds,
            eviction::Signal::NodeFsAvailable,
            machine.ephemeral_storage_bytes,
        ),
        pressure: pressure.clone(),
        max_pods: 110,
    };
    let registered = loop {
        match node::register(&client, &node_config, &machine).await {
            Ok(node) => break node,
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "registering the node failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    tracing::info!(node = %name, address = %machine.address, port = kubelet_port, "node registered");
    tokio::spawn(node::heartbeat(
        client.clone(),
        registered.clone(),
        Duration::from_secs(10),
    ));
    {
        let client = client.clone();
        let node_config = node_config.clone();
        let machine = machine.clone();
        tokio::spawn(async move {
            let nodes: Api<Node> = Api::all(client.clone());
            loop {
                // A pressure change is reported at once, as the kubelet
                // reports a changed status on its next 10 s update.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(60)) => {}
                    () = node_config.pressure.changed() => {}
                }
                if let Ok(node) = nodes.get(&node_config.name).await {
                    if let Err(e) =
                        node::update_status(&client, &node_config, &machine, &node).await
                    {
                        tracing::warn!(error = %e, "updating the node status");
                    }
                }
            }
        });
    }

    let network = pod_network(&client, &name, &config).await;
    {
        // The Service proxy. Pods are recognized by the bridge they come
        // from (kube-proxy's BridgeInterface mode) until the agent is told
        // the cluster CIDR.
        let local = match &network {
            Some(network) => {
                rudder_network::proxy::LocalDetector::Bridge(network.config().bridge.clone())
            }
            None => rudder_network::proxy::LocalDetector::None,
        };
        let informers = rudder_runtime::Informers::new(client.clone());
        tokio::spawn(proxy::run(
            client.clone(),
            informers,
            proxy::ProxyOptions {
                node_name: name.clone(),
                local,
                table: rudder_network::proxy::DEFAULT_TABLE.to_string(),
            },
        ));
    }
    let node_runtime = runtime.clone();
    let host_ip = machine.address.to_string();
    let manager = pods::PodManager::new(
        client,
        runtime,
        network,
        pods::PodManagerConfig {
            node_name: name,
            host_ip,
            pods_dir: config.data_dir.join("pods"),
            logs_dir: config.data_dir.join("logs").join("pods"),
            node_memory: machine.memory_bytes,
            node_cpu_millis: machine.cpus * 1000,
            manifests_dir: Some(config.data_dir.join("pod-manifests")),
        },
    );
    tokio::spawn(
        eviction::EvictionManager::new(
            config.eviction.clone(),
            manager.clone(),
            node_runtime,
            pressure,
            config.data_dir.clone(),
        )
        .run(),
    );
    manager.run().await;
    Ok(())
}

/// The node's pod network on the podCIDR the node IPAM controller gave
/// the Node; None (pods then get no network of their own) if none comes.
async fn pod_network(
    client: &Client,
    name: &str,
    config: &AgentConfig,
) -> Option<Arc<rudder_network::PodNetwork>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut warned = false;
    let cidr = loop {
        if let Ok(node) = nodes.get(name).await {
            if let Some(cidr) = node.spec.and_then(|s| s.pod_cidr) {
                break cidr;
            }
        }
        if !warned {
            tracing::info!(node = %name, "waiting for the node's podCIDR (the controller manager's node IPAM assigns it)");
            warned = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let pod_cidr: rudder_network::Ipv4Cidr = match cidr.parse() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(cidr = %cidr, error = %e, "invalid podCIDR; pods get no network");
            return None;
        }
    };
    let mut network_config =
        rudder_network::NetworkConfig::new(pod_cidr, config.data_dir.join("network"));
    network_config.bridge = config.bridge.clone();
    // `rudder reset` finds the bridge and rules to remove from this record.
    let _ = std::fs::create_dir_all(config.data_dir.join("network"));
    let _ = std::fs::write(
        config.data_dir.join("network").join("config.json"),
        serde_json::json!({"bridge": config.bridge, "podCIDR": cidr}).to_string(),
    );
    match rudder_network::PodNetwork::new(network_config).and_then(|n| n.ensure_node().map(|()| n))
    {
        Ok(network) => {
            tracing::info!(cidr = %cidr, bridge = %config.bridge, "pod network ready");
            Some(Arc::new(network))
        }
        Err(e) => {
            tracing::error!(error = %e, "setting up the pod network failed; pods get no network");
            None
        }
    }
}
