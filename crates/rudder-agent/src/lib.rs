//! The node agent, Rudder's kubelet: it registers the Node, keeps its Lease,
//! gives pods their network, runs the pods bound to it through the node's
//! runtime (`rudder-cri`) and reports their status. An API client like any
//! other; it runs inside `rudder server` or alone as `rudder agent`.

pub mod dns;
pub mod env;
pub mod eviction;
pub mod ingress;
pub mod network_policy;
pub mod node;
pub mod pods;
pub mod proxy;
pub mod routes;
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
    /// The whole cluster's pod network: pod traffic inside it is not
    /// masqueraded.
    pub cluster_cidr: rudder_network::Ipv4Cidr,
    /// The Services' virtual address range.
    pub service_cidr: rudder_network::Ipv4Cidr,
    /// The cluster DNS address pods with dnsPolicy ClusterFirst use; None
    /// makes ClusterFirst behave as Default (the kubelet without
    /// --cluster-dns).
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// How pod traffic crosses nodes.
    pub pod_network: rudder_network::PodNetworkBackend,
    /// Mirrors, credentials, TLS and plain-HTTP registries for pulls.
    pub registries: rudder_image::RegistriesConfig,
    /// How the agent's API (`listen`) is served: HTTPS with the node's
    /// serving certificate, authenticating callers by client certificate
    /// (the API server's) or bearer token and authorizing them by
    /// SubjectAccessReview, as the kubelet's port 10250; or plain HTTP to
    /// anyone ([`server::ServerSecurity::Insecure`]), until the cluster has
    /// a PKI to issue the certificate from.
    pub server_security: server::ServerSecurity,
}

/// Runs the agent until the process ends.
pub async fn run(client: Client, config: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    restore_cgroup_mounts()?;
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
            .context("opening the node's container runtime")?
            .with_registries(config.registries.clone()),
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
    // The pod manager is made once the pod network is up; `/pods` lists
    // nothing until then.
    let server_pods = Arc::new(server::pods::LatePodManager::default());
    {
        let app = server::router(runtime.clone(), Some(server_pods.clone()));
        match &config.server_security {
            server::ServerSecurity::Insecure => {
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!(error = %e, "the agent's API stopped");
                    }
                });
            }
            server::ServerSecurity::Tls(tls) => {
                let tls = server::tls::server_config(tls)
                    .context("the agent's serving certificate or client CA")?;
                let guard = server::Guard::new(
                    Arc::new(server::KubeReviewer::new(client.clone())),
                    name.clone(),
                );
                tokio::spawn(server::serve_secure(listener, tls, guard, app));
            }
        }
    }

    let pressure = eviction::NodePressure::default();
    let thresholds = &config.eviction.thresholds;
    let node_config = node::NodeConfig {
        name: name.clone(),
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

    // One list-and-watch per kind for the agent's network services.
    let informers = rudder_runtime::Informers::new(client.clone());
    let network = pod_network(&client, &name, &config, machine.address).await;
    if let (Some(network), std::net::IpAddr::V4(node_ip)) = (&network, machine.address) {
        tokio::spawn(routes::run(
            informers.clone(),
            rudder_network::NodeRoutes {
                backend: config.pod_network,
                node_ip,
                pod_cidr: network.config().pod_cidr,
            },
        ));
    }
    match &network {
        Some(network) => {
            tokio::spawn(dns::run(
                client.clone(),
                informers.clone(),
                dns::DnsServerConfig {
                    node_name: name.clone(),
                    listen: std::net::SocketAddr::new(network.gateway().into(), 53),
                    cluster_domain: config.cluster_domain.clone(),
                    cluster_dns: config.cluster_dns,
                },
            ));
        }
        None => tracing::warn!("no pod network: this node serves no cluster DNS"),
    }
    if let Some(network) = &network {
        let mut node_ips = vec![network.gateway()];
        if let std::net::IpAddr::V4(ip) = machine.address {
            node_ips.push(ip);
        }
        tokio::spawn(network_policy::run(
            client.clone(),
            informers.clone(),
            network_policy::NetworkPolicyConfig {
                node_name: name.clone(),
                node_ips,
                table: node_table(rudder_network::policy::DEFAULT_TABLE, &config.bridge),
            },
        ));
    }
    // The Service proxy. Traffic from the cluster's pod network is not
    // masqueraded (kube-proxy's ClusterCIDR local detection), so
    // NetworkPolicies on the destination node see the client pod.
    tokio::spawn(proxy::run(
        client.clone(),
        informers.clone(),
        proxy::ProxyOptions {
            node_name: name.clone(),
            local: rudder_network::proxy::LocalDetector::ClusterCidr(config.cluster_cidr),
            table: node_table(rudder_network::proxy::DEFAULT_TABLE, &config.bridge),
        },
    ));
    tokio::spawn(ingress::run(
        client.clone(),
        informers.clone(),
        ingress::IngressListenConfig {
            addresses: vec![machine.address],
            http_port: ingress::HTTP_PORT,
            https_port: ingress::HTTPS_PORT,
        },
    ));
    informers.start();
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
            dns: pods::resolv::PodDnsSettings {
                cluster_dns: config.cluster_dns.into_iter().map(Into::into).collect(),
                cluster_domain: config.cluster_domain.clone(),
            },
        },
    );
    server_pods.set(manager.clone());
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

/// The name of one of the node's nftables tables: `base` for the default
/// bridge, else `base-<bridge>`, so that two nodes sharing a network
/// namespace (tests beside a node) never replace each other's rules.
pub fn node_table(base: &str, bridge: &str) -> String {
    if bridge == rudder_network::DEFAULT_BRIDGE {
        base.to_string()
    } else {
        format!("{base}-{bridge}")
    }
}

/// Under `ip netns exec` (a node in a network namespace) the agent has a
/// private mount namespace whose fresh /sys hides the cgroup filesystems;
/// they are mounted again as the host has them, so the runtime finds its
/// cgroups.
pub fn restore_cgroup_mounts() -> anyhow::Result<()> {
    if !matches!(
        rudder_cgroups::Layout::detect(),
        Err(rudder_cgroups::CgroupError::NoCgroupFs)
    ) {
        return Ok(());
    }
    let host = std::fs::read_to_string("/proc/1/mountinfo")
        .context("no cgroup filesystem is mounted here, and the host's mounts cannot be read")?;
    let mounted = rudder_cgroups::Layout::restore_mounts_from(&host)
        .context("mounting the host's cgroup filesystems in this mount namespace")?;
    tracing::info!(
        filesystems = mounted,
        "cgroup filesystems were hidden in this mount namespace; mounted them as the host has them"
    );
    Ok(())
}

/// The node's pod network on the podCIDR the node IPAM controller gave
/// the Node; None (pods then get no network of their own) if none comes.
async fn pod_network(
    client: &Client,
    name: &str,
    config: &AgentConfig,
    node_ip: std::net::IpAddr,
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
    if config.cluster_cidr.contains_cidr(&pod_cidr) {
        network_config.cluster_cidr = Some(config.cluster_cidr);
    } else {
        tracing::warn!(cluster_cidr = %config.cluster_cidr, pod_cidr = %pod_cidr,
            "the node's podCIDR is outside the cluster CIDR; traffic to other nodes' pods will be masqueraded");
    }
    if let std::net::IpAddr::V4(ip) = node_ip {
        // VXLAN's headers come out of the pods' MTU, as flannel does.
        network_config.mtu = rudder_network::routes::pod_mtu(
            config.pod_network,
            rudder_network::routes::link_mtu_of(ip),
        );
    }
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
