//! The Container Runtime Interface, in plain Rust: the messages of the CRI
//! v1 protobuf API (`k8s.io/cri-api/pkg/apis/runtime/v1/api.proto`) that the
//! node agent needs, as serde structs, and the two services as traits.
//!
//! [`crate::NodeRuntime`] implements both over Rudder's own image store and
//! container runtime; a client of containerd or CRI-O speaking the gRPC API
//! could implement them too, and the agent would not know the difference.
//!
//! Field names follow the protobuf ones (snake_case), so the JSON forms look
//! like what `crictl inspect` prints. Times are nanoseconds since the Unix
//! epoch, as in the CRI; 0 means "not yet".

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Labels every pod sandbox and container carries, as the kubelet sets them;
/// list filters and a restarted agent use them to find what belongs to whom.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const LABEL_SANDBOX_ID: &str = "io.kubernetes.sandbox.id";

/// The runtime's name and versions (`VersionResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionInfo {
    /// The CRI version the runtime speaks (`v1`).
    pub version: String,
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodSandboxMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl DnsConfig {
    /// Whether nothing is configured (then the host's resolv.conf is used).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }

    /// The `/etc/resolv.conf` the kubelet writes for this config.
    pub fn resolv_conf(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for server in &self.servers {
            out.push_str(&format!("nameserver {server}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// Whose namespace a pod's containers are in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NamespaceMode {
    /// The pod's: every container of the pod shares the sandbox's.
    #[default]
    Pod,
    /// The container's own (only meaningful for PID).
    Container,
    /// The host's (`hostNetwork`, `hostPID`, `hostIPC`).
    Node,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamespaceOption {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
}

/// Kubernetes' default: one PID namespace per container.
impl Default for NamespaceOption {
    fn default() -> NamespaceOption {
        NamespaceOption::kubernetes_default()
    }
}

impl NamespaceOption {
    /// The kubelet's default: pod network and IPC, a PID namespace per container.
    pub fn kubernetes_default() -> NamespaceOption {
        NamespaceOption {
            network: NamespaceMode::Pod,
            pid: NamespaceMode::Container,
            ipc: NamespaceMode::Pod,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinuxSandboxSecurityContext {
    pub namespace_options: NamespaceOption,
    pub privileged: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinuxPodSandboxConfig {
    /// The pod's cgroup, relative to the hierarchy roots
    /// (`rudder/kubepods/burstable/pod<uid>`); empty: derived from the
    /// QoS class of `resources`.
    pub cgroup_parent: String,
    pub security_context: LinuxSandboxSecurityContext,
    pub sysctls: BTreeMap<String, String>,
    /// The sum of the containers' resources (CRI's optional
    /// `LinuxPodSandboxConfig.resources`), used to pick the QoS class.
    pub resources: Option<LinuxContainerResources>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodSandboxConfig {
    pub metadata: PodSandboxMetadata,
    pub hostname: String,
    /// Where the containers' logs go (`/var/log/pods/<ns>_<name>_<uid>`);
    /// empty: under the runtime's data directory.
    pub log_directory: String,
    pub dns_config: Option<DnsConfig>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub linux: LinuxPodSandboxConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PodSandboxState {
    SandboxReady,
    #[default]
    SandboxNotReady,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodSandboxNetworkStatus {
    /// The pod's IP; empty until pod networking exists.
    pub ip: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinuxPodSandboxStatus {
    pub namespaces: NamespaceOption,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodSandboxStatus {
    pub id: String,
    pub metadata: PodSandboxMetadata,
    pub state: PodSandboxState,
    pub created_at: i64,
    pub network: PodSandboxNetworkStatus,
    pub linux: LinuxPodSandboxStatus,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A sandbox as `ListPodSandbox` returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodSandbox {
    pub id: String,
    pub metadata: PodSandboxMetadata,
    pub state: PodSandboxState,
    pub created_at: i64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodSandboxFilter {
    pub id: Option<String>,
    pub state: Option<PodSandboxState>,
    /// Every pair must be among the sandbox's labels.
    pub label_selector: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerMetadata {
    pub name: String,
    pub attempt: u32,
}

/// An image reference (`ImageSpec`): a name, a name with digest, or an id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageSpec {
    pub image: String,
    pub annotations: BTreeMap<String, String>,
}

impl ImageSpec {
    pub fn new(image: impl Into<String>) -> ImageSpec {
        ImageSpec {
            image: image.into(),
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinuxContainerResources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capability {
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
}

/// How a container is confined by seccomp (CRI's `SecurityProfile`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Seccomp {
    #[default]
    RuntimeDefault,
    Unconfined,
    /// A profile in the OCI `LinuxSeccomp` JSON form, read from this host path.
    Localhost(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinuxContainerSecurityContext {
    pub capabilities: Capability,
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    pub readonly_rootfs: bool,
    pub no_new_privs: bool,
    pub seccomp: Seccomp,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinuxContainerConfig {
    pub resources: LinuxContainerResources,
    pub security_context: LinuxContainerSecurityContext,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConfig {
    pub metadata: ContainerMetadata,
    pub image: ImageSpec,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<KeyValue>,
    pub mounts: Vec<Mount>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Relative to the sandbox's `log_directory`.
    pub log_path: String,
    pub stdin: bool,
    /// The container's stdin ends when the first attached client closes it
    /// (else it never ends while the container runs).
    pub stdin_once: bool,
    pub linux: LinuxContainerConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContainerState {
    ContainerCreated,
    ContainerRunning,
    ContainerExited,
    #[default]
    ContainerUnknown,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerStatus {
    pub id: String,
    pub metadata: ContainerMetadata,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub image: ImageSpec,
    /// The image's id (its config digest).
    pub image_ref: String,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`, ... once exited.
    pub reason: String,
    pub message: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub log_path: String,
}

/// A container as `ListContainers` returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Container {
    pub id: String,
    pub pod_sandbox_id: String,
    pub metadata: ContainerMetadata,
    pub image: ImageSpec,
    pub image_ref: String,
    pub state: ContainerState,
    pub created_at: i64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerFilter {
    pub id: Option<String>,
    pub state: Option<ContainerState>,
    pub pod_sandbox_id: Option<String>,
    /// Every pair must be among the container's labels.
    pub label_selector: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerAttributes {
    pub id: String,
    pub metadata: ContainerMetadata,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuUsage {
    pub timestamp: i64,
    pub usage_core_nano_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryUsage {
    pub timestamp: i64,
    pub working_set_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesystemUsage {
    pub timestamp: i64,
    /// The filesystem's mount point (CRI's `fs_id.mountpoint`).
    pub mountpoint: String,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerStats {
    pub attributes: ContainerAttributes,
    pub cpu: CpuUsage,
    pub memory: MemoryUsage,
    /// The container's writable layer.
    pub writable_layer: FilesystemUsage,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerStatsFilter {
    pub id: Option<String>,
    pub pod_sandbox_id: Option<String>,
    pub label_selector: BTreeMap<String, String>,
}

/// What `ExecSync` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecSyncResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Image {
    /// The config digest (`sha256:...`).
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageFilter {
    pub image: Option<ImageSpec>,
}

/// Registry credentials for one pull (CRI's `AuthConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    pub server_address: String,
    pub identity_token: String,
    pub registry_token: String,
}

/// Whether every pair of `selector` is in `labels` (CRI label selectors).
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pod and container lifecycle half of the CRI (`RuntimeService`).
///
/// Calls block (they start processes and read files); async callers use
/// `spawn_blocking`.
pub trait RuntimeService: Send + Sync {
    fn version(&self) -> Result<VersionInfo>;

    /// Starts the pod's sandbox (the holder of its namespaces); returns its id.
    fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String>;
    /// Stops the sandbox's containers, then the sandbox. Idempotent.
    fn stop_pod_sandbox(&self, id: &str) -> Result<()>;
    /// Removes the sandbox and its containers (stopping them if needed).
    /// Idempotent: an unknown id is not an error.
    fn remove_pod_sandbox(&self, id: &str) -> Result<()>;
    fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus>;
    fn list_pod_sandbox(&self, filter: &PodSandboxFilter) -> Result<Vec<PodSandbox>>;

    /// Creates (does not start) a container in the sandbox; returns its id.
    fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String>;
    fn start_container(&self, id: &str) -> Result<()>;
    /// The stop signal, then SIGKILL after `timeout` (zero: at once).
    fn stop_container(&self, id: &str, timeout: Duration) -> Result<()>;
    /// Idempotent: an unknown id is not an error.
    fn remove_container(&self, id: &str) -> Result<()>;
    fn container_status(&self, id: &str) -> Result<ContainerStatus>;
    fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<Container>>;

    /// Runs `cmd` in the container and collects its output; `timeout` zero:
    /// no limit, else the command is killed and an error returned.
    fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecSyncResult>;
    /// A command that runs `cmd` in the container with `env` added; the
    /// caller wires its stdio (streaming exec) and spawns it. Its exit status
    /// is the command's. With `tty`, the command's stdin must be the slave
    /// side of a pseudo-terminal: the command becomes a session leader with
    /// it as its controlling terminal (and gets `TERM=xterm` unless set).
    fn exec(
        &self,
        id: &str,
        cmd: &[String],
        env: &[KeyValue],
        tty: bool,
    ) -> Result<std::process::Command>;

    /// Connects to `port` on the loopback address of the sandbox's network
    /// namespace (the host's for a host-network pod): CRI's `PortForward`,
    /// done in-process instead of through a streaming URL.
    fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<std::net::TcpStream>;

    /// The container's stdin for writing (`attach`); an error when it was
    /// not created with `stdin`. A `stdin_once` container's input ends once
    /// every writer closed it.
    fn open_stdin(&self, id: &str) -> Result<std::fs::File>;

    fn container_stats(&self, id: &str) -> Result<ContainerStats>;
    fn list_container_stats(&self, filter: &ContainerStatsFilter) -> Result<Vec<ContainerStats>>;
}

/// A boxed future, so that [`ImageService`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The image half of the CRI (`ImageService`).
///
/// Pulling is network I/O done with tokio (`rudder_image::Puller`), so
/// [`ImageService::pull_image`] is async (a boxed future, run on the
/// caller's tokio runtime); the other calls read the local store and block.
pub trait ImageService: Send + Sync {
    fn list_images(&self, filter: &ImageFilter) -> Result<Vec<Image>>;
    /// None when the image is not present.
    fn image_status(&self, image: &ImageSpec) -> Result<Option<Image>>;
    /// Pulls the image; returns its id (the image ref containers report).
    fn pull_image<'a>(
        &'a self,
        image: &'a ImageSpec,
        auth: Option<&'a AuthConfig>,
    ) -> BoxFuture<'a, Result<String>>;
    /// Idempotent: an absent image is not an error.
    fn remove_image(&self, image: &ImageSpec) -> Result<()>;
    fn image_fs_info(&self) -> Result<Vec<FilesystemUsage>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_written_as_the_kubelet_does() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            dns.resolv_conf(),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert!(DnsConfig::default().is_empty());
    }

    #[test]
    fn label_selectors_need_every_pair() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".into(), "front".into()),
        ]
        .into();
        assert!(labels_match(&BTreeMap::new(), &labels));
        assert!(labels_match(
            &[("app".into(), "web".into())].into(),
            &labels
        ));
        assert!(!labels_match(
            &[("app".into(), "web".into()), ("x".into(), "y".into())].into(),
            &labels
        ));
    }

    #[test]
    fn configs_round_trip_through_json_with_defaults() {
        let config: PodSandboxConfig = serde_json::from_str(
            r#"{"metadata":{"name":"p","uid":"u","namespace":"default","attempt":0}}"#,
        )
        .unwrap();
        assert_eq!(config.metadata.name, "p");
        assert_eq!(
            config.linux.security_context.namespace_options.pid,
            NamespaceMode::Container
        );
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<PodSandboxConfig>(&json).unwrap(),
            config
        );
        let state: ContainerState = serde_json::from_str("\"CONTAINER_EXITED\"").unwrap();
        assert_eq!(state, ContainerState::ContainerExited);
    }
}
