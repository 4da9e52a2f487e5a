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
    /// Another name or address the API server's certificate must be valid
    /// for (k3s' --tls-san); repeat for more.
    #[arg(long = "tls-san", value_name = "NAME|IP")]
    tls_sans: Vec<String>,
    /// Write an audit log here (JSON lines, audit.k8s.io/v1 Events).
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// What to record, as kube-apiserver's audit Policy file (None,
    /// Metadata, Request, RequestResponse). Without it: Metadata for every
    /// request but health checks and events.
    #[arg(long)]
    audit_policy_file: Option<PathBuf>,
    /// Rotate the audit log when it reaches this many megabytes.
    #[arg(long, default_value_t = rudder_auth::audit::DEFAULT_MAX_SIZE_MB)]
    audit_log_maxsize: u64,
    /// Rotated audit logs to keep.
    #[arg(long, default_value_t = rudder_auth::audit::DEFAULT_MAX_BACKUPS)]
    audit_log_maxbackup: usize,
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
    let credentials = crate::security::server_credentials(
        &args.data_dir,
        local,
        service_cidr.nth(1),
        &args.tls_sans,
    )?;
    let pki = credentials.pki.clone();
    let mut api_security = credentials.api;
    if let Some(path) = &args.audit_log_path {
        let policy = match &args.audit_policy_file {
            Some(file) => rudder_auth::audit::Policy::load(file)
                .with_context(|| format!("reading the audit policy {}", file.display()))?,
            None => rudder_auth::audit::Policy::default_policy(),
        };
        let log = rudder_auth::audit::AuditLog::open(
            path,
            args.audit_log_maxsize,
            args.audit_log_maxbackup,
        )
        .with_context(|| format!("opening the audit log {}", path.display()))?;
        api_security.audit = Some(rudder_apiserver::AuditConfig { policy, log });
    } else if args.audit_policy_file.is_some() {
        anyhow::bail!("--audit-policy-file needs --audit-log-path");
    }
    let server = ApiServer::new(store, local.to_string())
        .with_service_cidr(service_cidr, args.agent_flags.cluster_dns())
        .with_security(api_security);
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

    // Components reach the API at the listen address (loopback when it
    // listens on all addresses).
    let reach = if local.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port())
    } else {
        local
    };
    let url = format!("https://{reach}");
    let kubeconfig = args.data_dir.join("kubeconfig.yaml");
    let admin_kubeconfig = kubeconfig.clone();
    let admin = pki
        .ensure_client(
            rudder_auth::pki::CLIENT_ADMIN,
            "system:admin",
            &["system:masters"],
        )
        .context("issuing the admin certificate")?;
    crate::security::write_kubeconfig(
        &kubeconfig,
        &url,
        pki.server_ca_pem(),
        "system:admin",
        &admin,
    )?;
    tracing::info!(address = %local, kubeconfig = %kubeconfig.display(), join_token = %args.data_dir.join("node-token").display(), "API server ready");

    if !args.disable_scheduler {
        let config = crate::client::scheduler_config(args.scheduler_config.as_deref())?;
        let kubeconfig = crate::security::component_kubeconfig(
            &args.data_dir,
            &pki,
            &url,
            rudder_auth::pki::CLIENT_KUBE_SCHEDULER,
            "system:kube-scheduler",
            &[],
        )?;
        let client = crate::client::client_from(Some(&kubeconfig)).await?;
        tokio::spawn(async move {
            if let Err(err) = rudder_scheduler::run(client, config, true).await {
                tracing::error!(error = %err, "the scheduler stopped");
            }
        });
    }

    if !args.disable_controller_manager {
        let kubeconfig = crate::security::component_kubeconfig(
            &args.data_dir,
            &pki,
            &url,
            rudder_auth::pki::CLIENT_KUBE_CONTROLLER_MANAGER,
            "system:kube-controller-manager",
            &[],
        )?;
        let client = crate::client::client_from(Some(&kubeconfig)).await?;
        let controllers = rudder_controllers::select(&[])?;
        let mut options = args.controller_flags.options();
        options.root_ca_pem = Some(pki.server_ca_pem().to_owned());
        options.cluster_signing = Some(rudder_controllers::certificates::ClusterSigning(
            pki.clone(),
        ));
        tokio::spawn(async move {
            if let Err(err) =
                rudder_controllers::run_with_leader_election(client, controllers, options).await
            {
                tracing::error!(error = %err, "the controller manager stopped");
            }
        });
    }

    if !args.disable_agent {
        // The node on this machine gets its certificates straight from
        // the CAs, as k3s' server does for its own agent.
        let node_name = args.agent_flags.node_name().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            rudder_agent::node::node_name_from_hostname(host.trim())
        });
        let user = format!("system:node:{node_name}");
        let node_credentials = pki
            .issue_client(&user, &["system:nodes"], rudder_auth::pki::LEAF_VALIDITY)
            .context("issuing the node's client certificate")?;
        let agent_dir = args.data_dir.join("agent");
        let kubeconfig = crate::security::agent_kubeconfig_path(&agent_dir);
        crate::security::write_kubeconfig(
            &kubeconfig,
            &url,
            pki.server_ca_pem(),
            &user,
            &node_credentials,
        )?;
        let mut node_ips: Vec<std::net::IpAddr> = vec![std::net::Ipv4Addr::LOCALHOST.into()];
        node_ips.extend(crate::security::default_route_address());
        if !local.ip().is_unspecified() {
            node_ips.push(local.ip());
        }
        let serving = pki
            .ensure_serving(
                "serving-kubelet",
                std::slice::from_ref(&node_name),
                &node_ips,
            )
            .context("issuing the node's serving certificate")?;
        let client = crate::client::client_from(Some(&kubeconfig)).await?;
        // The node's role is the control plane's to state: NodeRestriction
        // keeps nodes from labelling themselves with node-role labels.
        let admin_client = crate::client::client_from(Some(&admin_kubeconfig)).await?;
        tokio::spawn(label_control_plane(admin_client, node_name.clone()));
        let ranges = crate::agent::ClusterRanges {
            cluster_cidr: args.controller_flags.cluster_cidr().to_owned(),
            service_cidr: args.service_cidr.clone(),
        };
        let mut config =
            crate::agent::config(&args.data_dir.join("agent"), &args.agent_flags, &ranges)?;
        config.server_security =
            rudder_agent::server::ServerSecurity::Tls(rudder_agent::server::ServingTls {
                cert_pem: serving.cert_pem,
                key_pem: serving.key_pem,
                client_ca_pem: pki.client_ca_pem().to_owned(),
            });
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

/// Labels this machine's node `node-role.kubernetes.io/control-plane`
/// once its agent has registered it (as k3s' server does).
async fn label_control_plane(client: kube::Client, node: String) {
    use k8s_openapi::api::core::v1::Node;
    let nodes: kube::Api<Node> = kube::Api::all(client);
    let patch = serde_json::json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": "true"}}});
    loop {
        match nodes
            .patch(
                &node,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => tracing::debug!(error = %err, "labelling the control-plane node; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
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
