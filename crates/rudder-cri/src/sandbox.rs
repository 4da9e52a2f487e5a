//! Pod sandboxes and the CRI [`RuntimeService`] of [`NodeRuntime`].
//!
//! A pod sandbox is a pause process (`rudder pause`) holding the pod's
//! network, IPC and UTS namespaces, and its PID namespace when the pod
//! shares one. It runs as a container of [`rudder_container::Runtime`] whose
//! spec has no mount namespace and root `/`, so it needs no image. The pod's
//! containers join its namespaces by `/proc/<pause pid>/ns/<kind>` and get
//! their cgroups under the pod's cgroup
//! (`rudder/kubepods/<qos>/pod<uid>/<container id>`).
//!
//! Everything is recorded on disk, so another [`NodeRuntime`] over the same
//! data directory (a restarted agent) finds it all again:
//! `<data-dir>/sandboxes/<id>/sandbox.json` (the pod's config),
//! `<data-dir>/sandboxes/<id>/config.json` (the pause process' OCI spec),
//! `<data-dir>/sandboxes/<id>/containers/<container id>.json` (each
//! container's CRI config); the runtime's container states carry the pod and
//! container names as labels.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxCapabilitiesBuilder, LinuxNamespace, LinuxNamespaceType, Spec};
use rudder_container::spec::{self, Limits};
use rudder_container::{CreateOptions, State, Status};
use serde::{Deserialize, Serialize};

use crate::bundle::{BundleRequest, Seccomp};
use crate::cri::{self, *};
use crate::error::{io, CriError, Result};
use crate::node::{NodeRuntime, RunOptions, LABEL_IMAGE_ID};

/// What a runtime container is to the CRI layer: `sandbox` (a pause
/// process) or `container`.
pub const LABEL_KIND: &str = "io.rudder.cri.kind";
const KIND_SANDBOX: &str = "sandbox";
const KIND_CONTAINER: &str = "container";

/// How long the pause process gets to exit on SIGTERM before SIGKILL.
const PAUSE_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The pod's Kubernetes QoS class, which names its cgroup's parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "guaranteed",
            QosClass::Burstable => "burstable",
            QosClass::BestEffort => "besteffort",
        }
    }
}

/// The QoS class the kubelet would have given a pod whose containers' summed
/// resources are `resources`. The CRI carries limits (quota, memory limit)
/// and requests only as CPU shares, so: no limit and at most the minimal 2
/// shares the kubelet gives request-less pods is BestEffort; a CPU and a
/// memory limit with shares equal to the CPU limit (requests == limits) is
/// Guaranteed; anything else is Burstable.
pub fn qos_class(resources: Option<&LinuxContainerResources>) -> QosClass {
    let Some(r) = resources else {
        return QosClass::BestEffort;
    };
    let has_limits = r.cpu_quota > 0 || r.memory_limit_in_bytes > 0;
    if !has_limits && r.cpu_shares <= 2 {
        return QosClass::BestEffort;
    }
    if r.cpu_quota > 0 && r.memory_limit_in_bytes > 0 {
        let period = if r.cpu_period > 0 {
            r.cpu_period
        } else {
            100_000
        };
        // The kubelet's milliCPU -> shares and -> quota conversions.
        let limit_millicpu = r.cpu_quota * 1000 / period;
        let limit_shares = (limit_millicpu * 1024 / 1000).max(2);
        if r.cpu_shares == limit_shares {
            return QosClass::Guaranteed;
        }
    }
    QosClass::Burstable
}

/// The pod's cgroup: the agent's `cgroup_parent`, or one derived from the
/// QoS class (`rudder/kubepods/<qos>/pod<uid>`).
pub fn pod_cgroup_parent(config: &PodSandboxConfig) -> Result<String> {
    if !config.linux.cgroup_parent.is_empty() {
        return Ok(config.linux.cgroup_parent.trim_matches('/').to_string());
    }
    if config.metadata.uid.is_empty() {
        return Err(CriError::Invalid(
            "the pod sandbox config has no metadata.uid".into(),
        ));
    }
    check_path_component("metadata.uid", &config.metadata.uid)?;
    Ok(format!(
        "rudder/kubepods/{}/pod{}",
        qos_class(config.linux.resources.as_ref()).as_str(),
        config.metadata.uid
    ))
}

fn check_path_component(what: &str, value: &str) -> Result<()> {
    if value.contains('/') || value == "." || value == ".." {
        return Err(CriError::Invalid(format!(
            "{what} {value:?} cannot name a directory"
        )));
    }
    Ok(())
}

/// The hostname of the pod's containers: the config's, else the pod's name
/// (or the node's with the host network, whose UTS namespace it shares).
pub fn sandbox_hostname(config: &PodSandboxConfig) -> String {
    if !config.hostname.is_empty() {
        return config.hostname.clone();
    }
    if config.linux.security_context.namespace_options.network == NamespaceMode::Node {
        if let Ok(name) = nix::unistd::gethostname() {
            return name.to_string_lossy().into_owned();
        }
    }
    config.metadata.name.clone()
}

/// The CRI allows only pod or node network and IPC namespaces.
fn check_namespace_options(options: &NamespaceOption) -> Result<()> {
    for (what, mode) in [("network", options.network), ("ipc", options.ipc)] {
        if mode == NamespaceMode::Container {
            return Err(CriError::Invalid(format!(
                "a {what} namespace per container is not supported: use POD or NODE"
            )));
        }
    }
    Ok(())
}

/// Sysctls set in a namespace the pod shares with the host would change the
/// host's: refused, as the kubelet does.
fn check_sysctls(config: &PodSandboxConfig) -> Result<()> {
    let options = &config.linux.security_context.namespace_options;
    for key in config.linux.sysctls.keys() {
        let net = key.starts_with("net.");
        let ipc = key.starts_with("kernel.shm")
            || key.starts_with("kernel.msg")
            || key == "kernel.sem"
            || key.starts_with("fs.mqueue.");
        if net && options.network == NamespaceMode::Node {
            return Err(CriError::Invalid(format!(
                "sysctl {key} cannot be set in a pod using the host network"
            )));
        }
        if ipc && options.ipc == NamespaceMode::Node {
            return Err(CriError::Invalid(format!(
                "sysctl {key} cannot be set in a pod using the host IPC namespace"
            )));
        }
        if !net && !ipc && key != "kernel.hostname" {
            return Err(CriError::Invalid(format!(
                "sysctl {key} is not namespaced: it would change the whole node"
            )));
        }
    }
    Ok(())
}

/// The OCI spec of the pause process: the `rudder` binary run as
/// `rudder pause`, in the host's filesystem (no mount namespace, root `/`),
/// in new namespaces of the kinds the pod does not share with the host, with
/// no capabilities.
pub fn pause_spec(binary: &Path, config: &PodSandboxConfig, cgroups_path: &str) -> Result<Spec> {
    let options = &config.linux.security_context.namespace_options;
    check_namespace_options(options)?;
    check_sysctls(config)?;
    let mut kinds = Vec::new();
    if options.network != NamespaceMode::Node {
        // The pod's hostname lives in its UTS namespace; with the host
        // network the pod shares the node's name too (as the kubelet does).
        kinds.push(LinuxNamespaceType::Network);
        kinds.push(LinuxNamespaceType::Uts);
    }
    if options.ipc != NamespaceMode::Node {
        kinds.push(LinuxNamespaceType::Ipc);
    }
    if options.pid != NamespaceMode::Node {
        kinds.push(LinuxNamespaceType::Pid);
    }
    let mut container =
        spec::ContainerConfig::new(vec![binary.to_string_lossy().into_owned(), "pause".into()]);
    container.root = "/".into();
    container.hostname = Some(sandbox_hostname(config));
    let none = oci_spec::runtime::Capabilities::new();
    container.capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(none.clone())
        .effective(none.clone())
        .inheritable(none.clone())
        .permitted(none.clone())
        .ambient(none)
        .build()
        .map_err(|e| CriError::Invalid(format!("pause capabilities: {e}")))?;
    container.no_new_privileges = true;
    container.namespaces = kinds
        .into_iter()
        .map(|k| spec::namespace(k, None))
        .collect();
    container.cgroups_path = Some(cgroups_path.into());
    let mut spec = spec::build(&container)?;
    // No mount namespace: the default mounts, masked and read-only paths
    // would not apply; say so in the spec instead of carrying dead entries.
    spec.set_mounts(Some(Vec::new()));
    if let Some(linux) = spec.linux_mut() {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
        if !config.linux.sysctls.is_empty() {
            linux.set_sysctl(Some(config.linux.sysctls.clone().into_iter().collect()));
        }
    }
    Ok(spec)
}

/// The namespaces of a container of the pod whose pause process is `pause_pid`.
pub fn container_namespaces(options: &NamespaceOption, pause_pid: i32) -> Vec<LinuxNamespace> {
    let pod = |kind: &str| Some(PathBuf::from(format!("/proc/{pause_pid}/ns/{kind}")));
    let mut namespaces = vec![
        spec::namespace(LinuxNamespaceType::Mount, None),
        spec::namespace(LinuxNamespaceType::Cgroup, None),
    ];
    if options.network != NamespaceMode::Node {
        namespaces.push(spec::namespace(LinuxNamespaceType::Network, pod("net")));
        namespaces.push(spec::namespace(LinuxNamespaceType::Uts, pod("uts")));
    }
    if options.ipc != NamespaceMode::Node {
        namespaces.push(spec::namespace(LinuxNamespaceType::Ipc, pod("ipc")));
    }
    match options.pid {
        NamespaceMode::Pod => namespaces.push(spec::namespace(LinuxNamespaceType::Pid, pod("pid"))),
        NamespaceMode::Container => namespaces.push(spec::namespace(LinuxNamespaceType::Pid, None)),
        NamespaceMode::Node => {}
    }
    namespaces
}

/// 32 random hex digits, as containerd's ids (from the kernel's CSPRNG).
pub fn random_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("reading /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A sandbox as recorded in `sandbox.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: PodSandboxConfig,
    pub created_at: i64,
    pub hostname: String,
    /// The pod's cgroup, relative to the hierarchy roots.
    pub cgroup_parent: String,
    /// Whether the runtime made the pod's cgroup (and so removes it).
    pub owns_cgroup_parent: bool,
}

/// A container as recorded in `containers/<id>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    /// The image's id (config digest).
    pub image_ref: String,
    pub log_path: String,
}

/// The sandboxes' directory, `<data-dir>/sandboxes`.
#[derive(Clone, Debug)]
pub struct Sandboxes {
    root: PathBuf,
}

impl Sandboxes {
    pub fn new(root: impl Into<PathBuf>) -> Sandboxes {
        Sandboxes { root: root.into() }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("sandbox.json").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    }

    pub fn load(&self, id: &str) -> Result<SandboxRecord> {
        check_path_component("pod sandbox id", id)?;
        let path = self.dir(id).join("sandbox.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| CriError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CriError::NotFound(format!(
                "pod sandbox {id:?} does not exist"
            ))),
            Err(e) => Err(io(format!("reading {}", path.display()))(e)),
        }
    }

    fn save(&self, record: &SandboxRecord) -> Result<()> {
        write_json(&self.dir(&record.id).join("sandbox.json"), record)
    }

    fn container_path(&self, sandbox_id: &str, id: &str) -> PathBuf {
        self.dir(sandbox_id)
            .join("containers")
            .join(format!("{id}.json"))
    }

    pub fn load_container(&self, sandbox_id: &str, id: &str) -> Result<ContainerRecord> {
        let path = self.container_path(sandbox_id, id);
        let bytes = fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CriError::Invalid(format!("{}: {e}", path.display())))
    }

    fn save_container(&self, record: &ContainerRecord) -> Result<()> {
        let path = self.container_path(&record.sandbox_id, &record.id);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        write_json(&path, record)
    }
}

/// Writes through a temporary file and a rename: a reader never sees half.
fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).expect("records serialize");
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(io(format!("writing {}", path.display())))
}

fn nanos(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn container_state(state: &State) -> ContainerState {
    match state.status {
        Status::Created => ContainerState::ContainerCreated,
        Status::Running => ContainerState::ContainerRunning,
        Status::Stopped => ContainerState::ContainerExited,
    }
}

/// Finds `ip` the way a shell would in the host's usual directories.
fn find_ip() -> Option<PathBuf> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

impl NodeRuntime {
    fn sandbox_state(&self, id: &str) -> Option<State> {
        self.containers().state(id).ok()
    }

    fn sandbox_ready(&self, id: &str) -> bool {
        self.sandbox_state(id)
            .is_some_and(|s| s.status == Status::Running)
    }

    /// Brings the loopback interface of the sandbox's network namespace up
    /// by running `ip link set lo up` in it (with CAP_NET_ADMIN only). A
    /// host without `ip` gets a warning: the pod then has no 127.0.0.1.
    fn bring_up_loopback(&self, id: &str) -> Result<()> {
        let Some(ip) = find_ip() else {
            tracing::warn!(
                "pod sandbox {id}: `ip` (iproute2) is not installed: the pod's loopback interface stays down"
            );
            return Ok(());
        };
        let mut process = self.containers().process(id)?;
        process.set_args(Some(vec![
            ip.to_string_lossy().into_owned(),
            "link".into(),
            "set".into(),
            "lo".into(),
            "up".into(),
        ]));
        process.set_capabilities(Some(
            rudder_container::process::capabilities::container_capabilities(
                &["NET_ADMIN".to_string()],
                &["ALL".to_string()],
                false,
            )
            .map_err(|e| CriError::Invalid(format!("loopback capabilities: {e}")))?,
        ));
        let output = self
            .containers()
            .exec(id, &process)?
            .stdin(Stdio::null())
            .output()
            .map_err(io("running ip link set lo up in the pod"))?;
        if !output.status.success() {
            return Err(CriError::Invalid(format!(
                "pod sandbox {id}: bringing up the loopback interface failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    }

    fn sandbox_containers(&self, sandbox_id: &str) -> Result<Vec<State>> {
        Ok(self
            .containers()
            .list()?
            .into_iter()
            .filter(|s| {
                s.labels.get(LABEL_KIND).map(String::as_str) == Some(KIND_CONTAINER)
                    && s.labels.get(LABEL_SANDBOX_ID).map(String::as_str) == Some(sandbox_id)
            })
            .collect())
    }

    /// The CRI record and runtime state of a container of a sandbox.
    fn cri_container(&self, id: &str) -> Result<(ContainerRecord, State)> {
        let state = match self.containers().state(id) {
            Ok(state) => state,
            Err(rudder_container::ContainerError::NotFound(_)) => {
                return Err(CriError::NotFound(format!(
                    "container {id:?} does not exist"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        self.cri_container_of(state)
    }

    /// The CRI record of a container whose state was just read.
    fn cri_container_of(&self, state: State) -> Result<(ContainerRecord, State)> {
        let id = state.id.clone();
        let Some(sandbox_id) = state
            .labels
            .get(LABEL_SANDBOX_ID)
            .filter(|_| state.labels.get(LABEL_KIND).map(String::as_str) == Some(KIND_CONTAINER))
        else {
            return Err(CriError::NotFound(format!(
                "container {id:?} is not a pod's container (it was not made through the CRI)"
            )));
        };
        let record = self.sandboxes().load_container(sandbox_id, &id)?;
        Ok((record, state))
    }

    fn status_of(&self, record: &ContainerRecord, state: &State) -> ContainerStatus {
        let exit = state.exit.as_ref();
        ContainerStatus {
            id: record.id.clone(),
            metadata: record.config.metadata.clone(),
            state: container_state(state),
            created_at: nanos(state.created_at),
            started_at: state.started_at.map(nanos).unwrap_or(0),
            finished_at: exit.map(|e| nanos(e.finished_at)).unwrap_or(0),
            exit_code: exit.map(|e| e.exit_code).unwrap_or(0),
            image: record.config.image.clone(),
            image_ref: record.image_ref.clone(),
            reason: exit.map(|e| e.reason.clone()).unwrap_or_default(),
            message: exit.map(|e| e.message.clone()).unwrap_or_default(),
            labels: cri_labels(record, state),
            annotations: record.config.annotations.clone(),
            log_path: record.log_path.clone(),
        }
    }

    fn stats_of(&self, record: &ContainerRecord, state: &State) -> Result<ContainerStats> {
        let now = nanos(rudder_container::state::now_nanos());
        let usage = if state.status == Status::Running {
            self.containers().stats(&record.id)?.unwrap_or_default()
        } else {
            Default::default()
        };
        let upper = self.bundles().dir(&record.id).join("upper");
        let (used_bytes, inodes_used) = disk_usage(&upper);
        Ok(ContainerStats {
            attributes: ContainerAttributes {
                id: record.id.clone(),
                metadata: record.config.metadata.clone(),
                labels: cri_labels(record, state),
                annotations: record.config.annotations.clone(),
            },
            cpu: CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: usage.cpu_usage_ns,
            },
            memory: MemoryUsage {
                timestamp: now,
                working_set_bytes: usage.memory_working_set_bytes,
                usage_bytes: usage.memory_usage_bytes,
            },
            writable_layer: FilesystemUsage {
                timestamp: now,
                mountpoint: upper.to_string_lossy().into_owned(),
                used_bytes,
                inodes_used,
            },
        })
    }

    /// Every CRI container with its record, skipping runtime containers made
    /// otherwise (`rudder ctr run`) and records of a sandbox being removed.
    /// The CRI containers whose runtime labels do not already rule them out
    /// of `selector` (the pod's identity is among those labels): the records
    /// of the others are not read at all. Callers still match `selector`.
    fn cri_containers(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<(ContainerRecord, State)>> {
        let mut out = Vec::new();
        for state in self.containers().list()? {
            if state.labels.get(LABEL_KIND).map(String::as_str) != Some(KIND_CONTAINER) {
                continue;
            }
            let ruled_out = selector.iter().any(|(k, v)| {
                [
                    LABEL_POD_UID,
                    LABEL_POD_NAMESPACE,
                    LABEL_POD_NAME,
                    LABEL_CONTAINER_NAME,
                ]
                .contains(&k.as_str())
                    && state.labels.get(k).is_some_and(|have| have != v)
            });
            if ruled_out {
                continue;
            }
            match self.cri_container_of(state.clone()) {
                Ok(found) => out.push(found),
                Err(e) => tracing::debug!("skipping container {}: {e}", state.id),
            }
        }
        Ok(out)
    }

    fn log_path_for(record_log: &str, sandbox: &PodSandboxConfig) -> Option<PathBuf> {
        if record_log.is_empty() {
            return None;
        }
        let log = Path::new(record_log);
        if log.is_absolute() {
            return Some(log.to_path_buf());
        }
        if sandbox.log_directory.is_empty() {
            return None;
        }
        Some(Path::new(&sandbox.log_directory).join(log))
    }
}

/// The labels a container reports: its config's, with the pod's identity.
fn cri_labels(record: &ContainerRecord, state: &State) -> BTreeMap<String, String> {
    let mut labels = record.config.labels.clone();
    for key in [
        LABEL_POD_NAME,
        LABEL_POD_NAMESPACE,
        LABEL_POD_UID,
        LABEL_CONTAINER_NAME,
        LABEL_SANDBOX_ID,
    ] {
        if let Some(value) = state.labels.get(key) {
            labels
                .entry(key.to_string())
                .or_insert_with(|| value.clone());
        }
    }
    labels
}

/// Bytes and inodes used below `dir` (not following symlinks).
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        inodes += 1;
        bytes += meta.len();
        if meta.is_dir() {
            stack.extend(
                fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    (bytes, inodes)
}

fn to_u32(what: &str, value: i64) -> Result<u32> {
    u32::try_from(value).map_err(|_| CriError::Invalid(format!("{what} {value} is out of range")))
}

fn limits(r: &LinuxContainerResources) -> Limits {
    let positive = |v: i64| (v > 0).then_some(v);
    Limits {
        cpu_shares: positive(r.cpu_shares).map(|v| v as u64),
        cpu_quota: positive(r.cpu_quota),
        cpu_period: positive(r.cpu_period).map(|v| v as u64),
        cpuset_cpus: Some(r.cpuset_cpus.clone()).filter(|c| !c.is_empty()),
        memory_limit: positive(r.memory_limit_in_bytes),
        pids_limit: None,
    }
}

fn seccomp(profile: &cri::Seccomp) -> Result<Seccomp> {
    Ok(match profile {
        cri::Seccomp::RuntimeDefault => Seccomp::RuntimeDefault,
        cri::Seccomp::Unconfined => Seccomp::Unconfined,
        cri::Seccomp::Localhost(path) => {
            let text =
                fs::read_to_string(path).map_err(io(format!("reading seccomp profile {path}")))?;
            Seccomp::Profile(serde_json::from_str(&text).map_err(|e| {
                CriError::Invalid(format!(
                    "seccomp profile {path} is not an OCI LinuxSeccomp: {e}"
                ))
            })?)
        }
    })
}

impl RuntimeService for NodeRuntime {
    fn version(&self) -> Result<VersionInfo> {
        Ok(VersionInfo {
            version: "0.1.0".into(),
            runtime_name: "rudder".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        })
    }

    fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String> {
        let id = random_id()?;
        let cgroup_parent = pod_cgroup_parent(config)?;
        let spec = pause_spec(self.binary(), config, &format!("{cgroup_parent}/{id}"))?;
        let dir = self.sandboxes().dir(&id);
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let record = SandboxRecord {
            id: id.clone(),
            config: config.clone(),
            created_at: nanos(rudder_container::state::now_nanos()),
            hostname: sandbox_hostname(config),
            cgroup_parent,
            owns_cgroup_parent: config.linux.cgroup_parent.is_empty(),
        };
        let started = (|| -> Result<()> {
            spec.save(dir.join("config.json"))
                .map_err(|e| CriError::Invalid(format!("writing the pause spec: {e}")))?;
            self.sandboxes().save(&record)?;
            let mut labels = config.labels.clone();
            labels.insert(LABEL_KIND.into(), KIND_SANDBOX.into());
            labels.insert(LABEL_POD_NAME.into(), config.metadata.name.clone());
            labels.insert(
                LABEL_POD_NAMESPACE.into(),
                config.metadata.namespace.clone(),
            );
            labels.insert(LABEL_POD_UID.into(), config.metadata.uid.clone());
            self.containers().create(
                &id,
                CreateOptions {
                    bundle: dir.clone(),
                    labels,
                    ..Default::default()
                },
            )?;
            self.containers().start(&id)?;
            if config.linux.security_context.namespace_options.network != NamespaceMode::Node {
                self.bring_up_loopback(&id)?;
            }
            Ok(())
        })();
        if let Err(e) = started {
            let _ = RuntimeService::remove_pod_sandbox(self, &id);
            return Err(e);
        }
        Ok(id)
    }

    fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        self.sandboxes().load(id)?;
        for state in self.sandbox_containers(id)? {
            self.stop_container(&state.id, Duration::ZERO)?;
        }
        match self
            .containers()
            .stop(id, Signal::SIGTERM, PAUSE_STOP_TIMEOUT)
        {
            Ok(_) | Err(rudder_container::ContainerError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let record = match self.sandboxes().load(id) {
            Ok(record) => Some(record),
            Err(CriError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        for state in self.sandbox_containers(id)? {
            NodeRuntime::remove_container(self, &state.id, true)?;
        }
        match self.containers().delete(id, true) {
            Ok(()) | Err(rudder_container::ContainerError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(record) = record.filter(|r| r.owns_cgroup_parent) {
            let layout = rudder_cgroups::Layout::detect()?;
            rudder_cgroups::Cgroup::new(layout, &record.cgroup_parent).delete()?;
        }
        let dir = self.sandboxes().dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing {}", dir.display()))(e)),
        }
    }

    fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus> {
        let record = self.sandboxes().load(id)?;
        let ready = self.sandbox_ready(id);
        Ok(PodSandboxStatus {
            id: record.id,
            metadata: record.config.metadata,
            state: if ready {
                PodSandboxState::SandboxReady
            } else {
                PodSandboxState::SandboxNotReady
            },
            created_at: record.created_at,
            // Pod networking (an IP per pod) is not there yet.
            network: PodSandboxNetworkStatus::default(),
            linux: LinuxPodSandboxStatus {
                namespaces: record.config.linux.security_context.namespace_options,
            },
            labels: record.config.labels,
            annotations: record.config.annotations,
        })
    }

    fn list_pod_sandbox(&self, filter: &PodSandboxFilter) -> Result<Vec<PodSandbox>> {
        let mut out = Vec::new();
        for id in self.sandboxes().ids() {
            if filter.id.as_ref().is_some_and(|f| f != &id) {
                continue;
            }
            let Ok(status) = self.pod_sandbox_status(&id) else {
                continue;
            };
            if filter.state.is_some_and(|s| s != status.state)
                || !labels_match(&filter.label_selector, &status.labels)
            {
                continue;
            }
            out.push(PodSandbox {
                id: status.id,
                metadata: status.metadata,
                state: status.state,
                created_at: status.created_at,
                labels: status.labels,
                annotations: status.annotations,
            });
        }
        Ok(out)
    }

    fn create_container(
        &self,
        sandbox_id: &str,
        config: &cri::ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String> {
        let sandbox = self.sandboxes().load(sandbox_id)?;
        let pause_pid = self
            .sandbox_state(sandbox_id)
            .as_ref()
            .and_then(rudder_container::runtime::init_pid)
            .ok_or_else(|| {
                CriError::Invalid(format!(
                    "pod sandbox {sandbox_id} is not ready: its pause process is not running"
                ))
            })?;
        if config.metadata.name.is_empty() {
            return Err(CriError::Invalid(
                "the container config has no metadata.name".into(),
            ));
        }
        let image = self.images().image(&config.image.image)?;
        let id = random_id()?;
        let options = &sandbox.config.linux.security_context.namespace_options;
        let security = &config.linux.security_context;
        let resources = &config.linux.resources;

        let mut request = BundleRequest::new(&id, image);
        request.command = config.command.clone();
        request.args = config.args.clone();
        request.env = config
            .envs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        request.working_dir = Some(config.working_dir.clone()).filter(|w| !w.is_empty());
        request.run_as_user = security
            .run_as_user
            .map(|u| to_u32("run_as_user", u))
            .transpose()?;
        request.run_as_group = security
            .run_as_group
            .map(|g| to_u32("run_as_group", g))
            .transpose()?;
        request.supplemental_groups = security
            .supplemental_groups
            .iter()
            .map(|g| to_u32("supplemental group", *g))
            .collect::<Result<_>>()?;
        request.hostname = sandbox.hostname.clone();
        request.resolv_conf = sandbox
            .config
            .dns_config
            .as_ref()
            .filter(|d| !d.is_empty())
            .map(DnsConfig::resolv_conf);
        if options.network == NamespaceMode::Node {
            // The host network's names, as the kubelet gives hostNetwork pods.
            request.hosts = fs::read_to_string("/etc/hosts").ok();
        }
        request.mounts = config
            .mounts
            .iter()
            .map(|m| spec::bind_mount(&m.host_path, &m.container_path, m.readonly))
            .collect();
        request.limits = limits(resources);
        request.privileged = security.privileged;
        request.readonly_rootfs = security.readonly_rootfs;
        request.no_new_privileges = security.no_new_privs;
        request.cap_add = security.capabilities.add_capabilities.clone();
        request.cap_drop = security.capabilities.drop_capabilities.clone();
        request.seccomp = seccomp(&security.seccomp)?;
        request.namespaces = Some(container_namespaces(options, pause_pid));
        request.cgroups_path = Some(PathBuf::from(format!("{}/{id}", sandbox.cgroup_parent)));
        request.oom_score_adj = Some(resources.oom_score_adj)
            .filter(|adj| *adj != 0)
            .map(|adj| adj.clamp(-1000, 1000) as i32);

        // The agent's view of the pod wins for the log directory (it may
        // have been recreated elsewhere); the recorded one otherwise.
        let log_path = Self::log_path_for(&config.log_path, sandbox_config)
            .or_else(|| Self::log_path_for(&config.log_path, &sandbox.config));
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_KIND.to_string(), KIND_CONTAINER.to_string());
        labels.insert(LABEL_SANDBOX_ID.into(), sandbox_id.into());
        labels.insert(LABEL_POD_NAME.into(), sandbox.config.metadata.name.clone());
        labels.insert(
            LABEL_POD_NAMESPACE.into(),
            sandbox.config.metadata.namespace.clone(),
        );
        labels.insert(LABEL_POD_UID.into(), sandbox.config.metadata.uid.clone());
        labels.insert(LABEL_CONTAINER_NAME.into(), config.metadata.name.clone());
        let state = NodeRuntime::create_container(
            self,
            &request,
            RunOptions {
                log_path: log_path.clone(),
                stdin: config.stdin,
                stdin_keep_open: config.stdin && !config.stdin_once,
                labels,
            },
        )?;
        let record = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox_id.to_string(),
            config: config.clone(),
            image_ref: state
                .labels
                .get(LABEL_IMAGE_ID)
                .cloned()
                .unwrap_or_default(),
            log_path: state
                .log_path
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if let Err(e) = self.sandboxes().save_container(&record) {
            let _ = NodeRuntime::remove_container(self, &id, true);
            return Err(e);
        }
        Ok(id)
    }

    fn start_container(&self, id: &str) -> Result<()> {
        self.cri_container(id)?;
        self.containers().start(id)?;
        Ok(())
    }

    fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        self.cri_container(id)?;
        NodeRuntime::stop_container(self, id, timeout)?;
        Ok(())
    }

    fn remove_container(&self, id: &str) -> Result<()> {
        let (record, _) = match self.cri_container(id) {
            Ok(found) => found,
            Err(CriError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        NodeRuntime::remove_container(self, id, true)?;
        let path = self.sandboxes().container_path(&record.sandbox_id, id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing {}", path.display()))(e)),
        }
    }

    fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let (record, state) = self.cri_container(id)?;
        Ok(self.status_of(&record, &state))
    }

    fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<Container>> {
        Ok(self
            .cri_containers(&filter.label_selector)?
            .into_iter()
            .map(|(record, state)| (self.status_of(&record, &state), record))
            .filter(|(status, record)| {
                filter.id.as_ref().is_none_or(|f| f == &status.id)
                    && filter.state.is_none_or(|s| s == status.state)
                    && filter
                        .pod_sandbox_id
                        .as_ref()
                        .is_none_or(|s| s == &record.sandbox_id)
                    && labels_match(&filter.label_selector, &status.labels)
            })
            .map(|(status, record)| Container {
                id: status.id,
                pod_sandbox_id: record.sandbox_id,
                metadata: status.metadata,
                image: status.image,
                image_ref: status.image_ref,
                state: status.state,
                created_at: status.created_at,
                labels: status.labels,
                annotations: status.annotations,
            })
            .collect())
    }

    fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecSyncResult> {
        let mut command = RuntimeService::exec(self, id, cmd, &[], false)?;
        // Its own process group, so a timeout kills the stage inside the
        // container too, not only the stage that joined it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io(format!("running {cmd:?} in container {id}")))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let (done, finished) = mpsc::channel();
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf);
            let status = child.wait();
            let _ = done.send(());
            (buf, status)
        });
        let timed_out = !timeout.is_zero()
            && matches!(
                finished.recv_timeout(timeout),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
        if timed_out {
            let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
        }
        let (stdout, status) = out_reader.join().expect("the exec reader does not panic");
        let stderr = err_reader.join().expect("the exec reader does not panic");
        if timed_out {
            return Err(CriError::Timeout(format!(
                "command {cmd:?} in container {id} timed out after {timeout:?}"
            )));
        }
        let status = status.map_err(io("waiting for the exec"))?;
        use std::os::unix::process::ExitStatusExt;
        Ok(ExecSyncResult {
            stdout,
            stderr,
            exit_code: status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        })
    }

    fn exec(
        &self,
        id: &str,
        cmd: &[String],
        env: &[KeyValue],
        tty: bool,
    ) -> Result<std::process::Command> {
        self.cri_container(id)?;
        if cmd.is_empty() {
            return Err(CriError::Invalid("exec needs a command".into()));
        }
        let mut process = self.containers().process(id)?;
        process.set_args(Some(cmd.to_vec()));
        process.set_terminal(Some(tty));
        let mut vars = process.env().clone().unwrap_or_default();
        let mut extra: Vec<(String, String)> = env
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        // As containerd does for a terminal: programs need a TERM to draw.
        let has_term = vars.iter().any(|v| v.starts_with("TERM="))
            || extra.iter().any(|(name, _)| name == "TERM");
        if tty && !has_term {
            extra.push(("TERM".into(), "xterm".into()));
        }
        vars = spec::merge_env(&vars, &extra);
        process.set_env(Some(vars));
        Ok(self.containers().exec(id, &process)?)
    }

    fn open_stdin(&self, id: &str) -> Result<std::fs::File> {
        let (record, _) = self.cri_container(id)?;
        if !record.config.stdin {
            return Err(CriError::Invalid(format!(
                "container {id} was not created with stdin: its spec has no stdin: true"
            )));
        }
        Ok(self.containers().open_stdin(id)?)
    }

    fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<std::net::TcpStream> {
        let record = self.sandboxes().load(sandbox_id)?;
        if record
            .config
            .linux
            .security_context
            .namespace_options
            .network
            == NamespaceMode::Node
        {
            return connect_loopback(port);
        }
        let state = self
            .sandbox_state(sandbox_id)
            .filter(|s| s.status == Status::Running)
            .ok_or_else(|| CriError::Invalid(format!("pod sandbox {sandbox_id} is not running")))?;
        let pid = rudder_container::runtime::init_pid(&state).ok_or_else(|| {
            CriError::Invalid(format!("pod sandbox {sandbox_id} has no running process"))
        })?;
        let netns =
            std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(crate::error::io(
                format!("opening the network namespace of pod sandbox {sandbox_id}"),
            ))?;
        // A socket belongs to the network namespace of the thread that
        // creates it: a short-lived thread joins the pod's, connects, and
        // exits, so no other work ever runs in that namespace by accident.
        std::thread::Builder::new()
            .name("port-forward".into())
            .spawn(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    CriError::Invalid(format!("entering the pod's network namespace: {e}"))
                })?;
                connect_loopback(port)
            })
            .map_err(crate::error::io("starting a port-forward thread"))?
            .join()
            .map_err(|_| CriError::Invalid("the port-forward thread panicked".into()))?
    }

    fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        let (record, state) = self.cri_container(id)?;
        self.stats_of(&record, &state)
    }

    fn list_container_stats(&self, filter: &ContainerStatsFilter) -> Result<Vec<ContainerStats>> {
        let mut out = Vec::new();
        for (record, state) in self.cri_containers(&filter.label_selector)? {
            if filter.id.as_ref().is_some_and(|f| f != &record.id)
                || filter
                    .pod_sandbox_id
                    .as_ref()
                    .is_some_and(|s| s != &record.sandbox_id)
                || !labels_match(&filter.label_selector, &cri_labels(&record, &state))
            {
                continue;
            }
            out.push(self.stats_of(&record, &state)?);
        }
        Ok(out)
    }
}

/// Connects to `port` on the loopback address, IPv4 first then IPv6, as
/// the CRI runtimes' port forwarding does.
fn connect_loopback(port: u16) -> Result<std::net::TcpStream> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    let timeout = Duration::from_secs(10);
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, timeout) {
        Ok(stream) => Ok(stream),
        Err(first) => {
            TcpStream::connect_timeout(&SocketAddr::from((Ipv6Addr::LOCALHOST, port)), timeout)
                .map_err(|_| CriError::Io {
                    context: format!("dial tcp4 127.0.0.1:{port}"),
                    source: first,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(shares: i64, quota: i64, memory: i64) -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: quota,
            cpu_shares: shares,
            memory_limit_in_bytes: memory,
            ..Default::default()
        }
    }

    #[test]
    fn qos_classes_follow_the_kubelet() {
        assert_eq!(qos_class(None), QosClass::BestEffort);
        assert_eq!(qos_class(Some(&resources(2, 0, 0))), QosClass::BestEffort);
        // 500m requested and limited, 64 MiB: Guaranteed.
        assert_eq!(
            qos_class(Some(&resources(512, 50_000, 64 << 20))),
            QosClass::Guaranteed
        );
        // 100m requested, 500m limit: Burstable.
        assert_eq!(
            qos_class(Some(&resources(102, 50_000, 64 << 20))),
            QosClass::Burstable
        );
        assert_eq!(qos_class(Some(&resources(102, 0, 0))), QosClass::Burstable);
    }

    fn pod(uid: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: PodSandboxMetadata {
                name: "web".into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt: 0,
            },
            ..Default::default()
        }
    }

    #[test]
    fn pod_cgroups_sit_under_their_qos_class_unless_the_agent_says() {
        let mut config = pod("u1");
        assert_eq!(
            pod_cgroup_parent(&config).unwrap(),
            "rudder/kubepods/besteffort/podu1"
        );
        config.linux.resources = Some(resources(102, 0, 0));
        assert_eq!(
            pod_cgroup_parent(&config).unwrap(),
            "rudder/kubepods/burstable/podu1"
        );
        config.linux.cgroup_parent = "/custom/podu1/".into();
        assert_eq!(pod_cgroup_parent(&config).unwrap(), "custom/podu1");
        assert!(pod_cgroup_parent(&pod("../x")).is_err());
        assert!(pod_cgroup_parent(&pod("")).is_err());
    }

    #[test]
    fn the_pause_spec_has_no_mount_namespace_and_the_pods_kinds() {
        let mut config = pod("u1");
        config.hostname = "web-1".into();
        config.linux.security_context.namespace_options = NamespaceOption {
            network: NamespaceMode::Pod,
            pid: NamespaceMode::Pod,
            ipc: NamespaceMode::Node,
        };
        config
            .linux
            .sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        let spec = pause_spec(Path::new("/usr/bin/rudder"), &config, "rudder/p/s").unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let kinds: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert_eq!(
            kinds,
            [
                LinuxNamespaceType::Network,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Pid
            ]
        );
        assert!(linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .all(|n| n.path().is_none()));
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("/"));
        assert_eq!(spec.mounts().as_ref().unwrap().len(), 0);
        assert_eq!(spec.hostname().as_deref(), Some("web-1"));
        assert_eq!(
            spec.process().as_ref().unwrap().args().as_ref().unwrap(),
            &["/usr/bin/rudder".to_string(), "pause".into()]
        );
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("rudder/p/s"))
        );
        assert_eq!(linux.sysctl().as_ref().unwrap().len(), 1);

        config.linux.security_context.namespace_options.network = NamespaceMode::Node;
        assert!(matches!(
            pause_spec(Path::new("/r"), &config, "x"),
            Err(CriError::Invalid(m)) if m.contains("host network")
        ));
        config.linux.sysctls.clear();
        config
            .linux
            .sysctls
            .insert("vm.swappiness".into(), "1".into());
        assert!(pause_spec(Path::new("/r"), &config, "x").is_err());
        config.linux.sysctls.clear();
        config.linux.security_context.namespace_options.network = NamespaceMode::Container;
        assert!(pause_spec(Path::new("/r"), &config, "x").is_err());
    }

    #[test]
    fn containers_join_the_pods_namespaces_by_path() {
        let shared_pid = NamespaceOption {
            network: NamespaceMode::Pod,
            pid: NamespaceMode::Pod,
            ipc: NamespaceMode::Pod,
        };
        let namespaces = container_namespaces(&shared_pid, 42);
        let find = |t| {
            namespaces
                .iter()
                .find(|n| n.typ() == t)
                .unwrap()
                .path()
                .clone()
        };
        assert_eq!(
            find(LinuxNamespaceType::Network),
            Some("/proc/42/ns/net".into())
        );
        assert_eq!(
            find(LinuxNamespaceType::Uts),
            Some("/proc/42/ns/uts".into())
        );
        assert_eq!(
            find(LinuxNamespaceType::Ipc),
            Some("/proc/42/ns/ipc".into())
        );
        assert_eq!(
            find(LinuxNamespaceType::Pid),
            Some("/proc/42/ns/pid".into())
        );
        assert_eq!(find(LinuxNamespaceType::Mount), None);

        let host = NamespaceOption {
            network: NamespaceMode::Node,
            pid: NamespaceMode::Node,
            ipc: NamespaceMode::Node,
        };
        let kinds: Vec<_> = container_namespaces(&host, 42)
            .iter()
            .map(|n| n.typ())
            .collect();
        assert_eq!(
            kinds,
            [LinuxNamespaceType::Mount, LinuxNamespaceType::Cgroup]
        );
        let own_pid = container_namespaces(&NamespaceOption::kubernetes_default(), 42);
        let pid = own_pid
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Pid)
            .unwrap();
        assert_eq!(pid.path(), &None);
    }

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let (a, b) = (random_id().unwrap(), random_id().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
