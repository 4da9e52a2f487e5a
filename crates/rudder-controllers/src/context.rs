//! What every controller gets: the API client, the process's shared
//! informers and an event recorder.

use std::time::Duration;

use kube::Client;
use rudder_runtime::events::EventRecorder;
use rudder_runtime::Informers;

#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub informers: Informers,
    pub recorder: EventRecorder,
    pub options: ControllerOptions,
}

/// The settings operators choose (kube-controller-manager's flags of the
/// same names); each controller reads the ones it needs.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// `--cluster-cidr`: node pod CIDRs are cut from it.
    pub cluster_cidr: String,
    /// `--node-cidr-mask-size`.
    pub node_cidr_mask_size: u8,
    /// `--node-monitor-grace-period`: silence after which a node is
    /// Unknown and tainted unreachable.
    pub node_monitor_grace_period: Duration,
    /// `--terminated-pod-gc-threshold`.
    pub terminated_pod_gc_threshold: usize,
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub hpa_sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`: the scale-down
    /// window of HPAs that set none.
    pub hpa_downscale_stabilization: Duration,
    /// `--horizontal-pod-autoscaler-tolerance`: usage ratios this close to
    /// 1 change nothing.
    pub hpa_tolerance: f64,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period`.
    pub hpa_cpu_initialization_period: Duration,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay`.
    pub hpa_initial_readiness_delay: Duration,
    /// The CA bundle published as `kube-root-ca.crt` in every namespace
    /// (kube-controller-manager's `--root-ca-file`); none publishes nothing.
    pub root_ca_pem: Option<String>,
    /// The CAs that sign approved CertificateSigningRequests
    /// (`--cluster-signing-cert-file`/`-key-file`); none signs nothing.
    pub cluster_signing: Option<crate::certificates::ClusterSigning>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask_size: 24,
            node_monitor_grace_period: Duration::from_secs(50),
            terminated_pod_gc_threshold: 12500,
            hpa_sync_period: Duration::from_secs(15),
            hpa_downscale_stabilization: Duration::from_secs(300),
            hpa_tolerance: 0.1,
            hpa_cpu_initialization_period: Duration::from_secs(300),
            hpa_initial_readiness_delay: Duration::from_secs(30),
            root_ca_pem: None,
            cluster_signing: None,
        }
    }
}

impl Context {
    pub fn new(client: Client) -> Self {
        Self::with_options(client, ControllerOptions::default())
    }

    pub fn with_options(client: Client, options: ControllerOptions) -> Self {
        Context {
            informers: Informers::new(client.clone()),
            recorder: EventRecorder::new(client.clone(), "controller-manager"),
            client,
            options,
        }
    }
}
