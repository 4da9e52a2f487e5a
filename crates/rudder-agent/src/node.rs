//! The agent's Node: registration with what the machine has, status, and
//! the Lease heartbeat in `kube-node-lease`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::eviction::Pressure;

/// What the agent says about its node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The port of the agent's API (logs, exec).
    pub kubelet_port: u16,
    /// Reserved for the system, subtracted from capacity (`--system-reserved`).
    pub reserved_cpu_millis: i64,
    pub reserved_memory: i64,
    /// The hard eviction threshold the kubelet keeps free (memory.available<100Mi).
    pub eviction_memory: i64,
    /// Likewise for the node's disk (nodefs.available<10%).
    pub eviction_ephemeral_storage: i64,
    /// The pressure conditions the eviction manager observes.
    pub pressure: crate::eviction::NodePressure,
    pub max_pods: i64,
}

/// What the machine has.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    pub cpus: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
    pub address: IpAddr,
    pub hostname: String,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// MemTotal of /proc/meminfo, in bytes.
pub fn parse_meminfo_total(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// PRETTY_NAME of /etc/os-release.
pub fn parse_os_release(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

/// The address other machines reach this one at: the source address of the
/// default route (found without sending anything), else loopback.
pub fn primary_address() -> IpAddr {
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("10.255.255.255:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

impl Machine {
    pub fn probe(data_dir: &Path) -> Machine {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as i64)
            .unwrap_or(1);
        let memory_bytes =
            parse_meminfo_total(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default())
                .unwrap_or(0);
        let ephemeral_storage_bytes = nix::sys::statvfs::statvfs(data_dir)
            .map(|s| s.blocks() as i64 * s.fragment_size() as i64)
            .unwrap_or(0);
        let uname = nix::sys::utsname::uname().ok();
        Machine {
            cpus,
            memory_bytes,
            ephemeral_storage_bytes,
            address: primary_address(),
            hostname: uname
                .as_ref()
                .map(|u| u.nodename().to_string_lossy().into_owned())
                .unwrap_or_else(|| "localhost".into()),
            kernel: uname
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os_image: parse_os_release(
                &std::fs::read_to_string("/etc/os-release").unwrap_or_default(),
            )
            .unwrap_or_else(|| "Linux".into()),
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// Node names are lowercase DNS subdomains.
pub fn node_name_from_hostname(hostname: &str) -> String {
    let name: String = hostname
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(|c| c == '-' || c == '.').to_string();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

fn quantity(v: impl ToString) -> Quantity {
    Quantity(v.to_string())
}

fn ki(bytes: i64) -> Quantity {
    Quantity(format!("{}Ki", bytes.max(0) / 1024))
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, now: &Time) -> NodeCondition {
    NodeCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// The Node object the agent registers.
pub fn node_object(config: &NodeConfig, machine: &Machine) -> Node {
    let mut labels = config.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), config.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "kubernetes.io/arch".into(),
        std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64"),
    );
    labels.insert("beta.kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "beta.kubernetes.io/arch".into(),
        labels["kubernetes.io/arch"].clone(),
    );
    Node {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(node_status(config, machine, &[])),
    }
}

/// The Node's status: capacity, allocatable, addresses, conditions.
pub fn node_status(config: &NodeConfig, machine: &Machine, old: &[NodeCondition]) -> NodeStatus {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), quantity(machine.cpus));
    capacity.insert("memory".to_string(), ki(machine.memory_bytes));
    capacity.insert(
        "ephemeral-storage".to_string(),
        ki(machine.ephemeral_storage_bytes),
    );
    capacity.insert("pods".to_string(), quantity(config.max_pods));
    let mut allocatable = BTreeMap::new();
    allocatable.insert(
        "cpu".to_string(),
        Quantity(format!(
            "{}m",
            (machine.cpus * 1000 - config.reserved_cpu_millis).max(0)
        )),
    );
    allocatable.insert(
        "memory".to_string(),
        ki(machine.memory_bytes - config.reserved_memory - config.eviction_memory),
    );
    allocatable.insert(
        "ephemeral-storage".to_string(),
        ki(machine.ephemeral_storage_bytes - config.eviction_ephemeral_storage),
    );
    allocatable.insert("pods".to_string(), quantity(config.max_pods));
    let keep = |c: NodeCondition| -> NodeCondition {
        match old
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            Some(o) => NodeCondition {
                last_transition_time: o.last_transition_time.clone(),
                ..c
            },
            None => c,
        }
    };
    let pressure = |kind: Pressure, under: [&str; 2], free: [&str; 2]| {
        let (status, [reason, message]) = if config.pressure.has(kind) {
            ("True", under)
        } else {
            ("False", free)
        };
        keep(condition(
            kind.condition_type(),
            status,
            reason,
            message,
            &now,
        ))
    };
    let conditions = vec![
        pressure(
            Pressure::Memory,
            [
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ],
            [
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ],
        ),
        pressure(
            Pressure::Disk,
            ["KubeletHasDiskPressure", "kubelet has disk pressure"],
            ["KubeletHasNoDiskPressure", "kubelet has no disk pressure"],
        ),
        pressure(
            Pressure::Pid,
            [
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ],
            [
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ],
        ),
        keep(condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
            &now,
        )),
    ];
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: machine.address.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: machine.hostname.clone(),
            },
        ]),
        conditions: Some(conditions),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: config.kubelet_port as i32,
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.replace("x86_64", "amd64"),
            boot_id: machine.boot_id.clone(),
            container_runtime_version: format!("rudder://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: machine.kernel.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: format!("v1.32.0-rudder.{}", env!("CARGO_PKG_VERSION")),
            machine_id: machine.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: machine.os_image.clone(),
            system_uuid: machine.machine_id.clone(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Creates the Node, or takes over an existing one (a restarted agent),
/// refreshing its status.
pub async fn register(
    client: &Client,
    config: &NodeConfig,
    machine: &Machine,
) -> kube::Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = node_object(config, machine);
    match nodes.create(&PostParams::default(), &node).await {
        Ok(created) => {
            // Status is not taken on create: set it through the subresource.
            update_status(client, config, machine, &created).await
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = nodes.get(&config.name).await?;
            let labels = node.metadata.labels.clone().unwrap_or_default();
            let patch = serde_json::json!({"metadata": {"labels": labels}});
            let existing = nodes
                .patch(&config.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap_or(existing);
            update_status(client, config, machine, &existing).await
        }
        Err(e) => Err(e),
    }
}

pub async fn update_status(
    client: &Client,
    config: &NodeConfig,
    machine: &Machine,
    node: &Node,
) -> kube::Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let old = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let status = node_status(config, machine, &old);
    let patch = serde_json::json!({ "status": status });
    nodes
        .patch_status(&config.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

/// Renews the node's Lease every `interval` (creating it, owned by the
/// Node, when missing), as the kubelet does every 10 s.
pub async fn heartbeat(client: Client, node: Node, interval: Duration) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    loop {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let result = match leases.get_opt(&name).await {
            Ok(Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.holder_identity = Some(name.clone());
                spec.lease_duration_seconds = Some(40);
                spec.renew_time = Some(now);
                leases
                    .replace(&name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            Ok(None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some("kube-node-lease".into()),
                        owner_references: Some(vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: name.clone(),
                            uid: node.metadata.uid.clone().unwrap_or_default(),
                            ..OwnerReference::default()
                        }]),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(name.clone()),
                        lease_duration_seconds: Some(40),
                        renew_time: Some(now),
                        ..LeaseSpec::default()
                    }),
                };
                leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(node = %name, error = %e, "renewing the node lease failed");
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_facts_parse() {
        assert_eq!(
            parse_meminfo_total("MemTotal:       24684096 kB\nMemFree: 1 kB\n"),
            Some(24684096 * 1024)
        );
        assert_eq!(
            parse_os_release("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
                .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            node_name_from_hostname("My_Host.Example"),
            "my-host.example"
        );
    }

    #[test]
    fn allocatable_subtracts_reservations_and_thresholds() {
        let config = NodeConfig {
            name: "n".into(),
            labels: BTreeMap::new(),
            kubelet_port: 10250,
            reserved_cpu_millis: 100,
            reserved_memory: 0,
            eviction_memory: 100 << 20,
            eviction_ephemeral_storage: 1 << 30,
            pressure: Default::default(),
            max_pods: 110,
        };
        let machine = Machine {
            cpus: 2,
            memory_bytes: 1 << 30,
            ephemeral_storage_bytes: 10 << 30,
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            hostname: "n".into(),
            kernel: "6".into(),
            os_image: "Debian".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
        };
        let node = node_object(&config, &machine);
        let status = node.status.unwrap();
        assert_eq!(status.capacity.as_ref().unwrap()["cpu"].0, "2");
        assert_eq!(status.allocatable.as_ref().unwrap()["cpu"].0, "1900m");
        assert_eq!(
            status.allocatable.as_ref().unwrap()["memory"].0,
            format!("{}Ki", (924 << 20) / 1024)
        );
        assert_eq!(status.allocatable.as_ref().unwrap()["pods"].0, "110");
        let labels = node.metadata.labels.unwrap();
        // Role labels are the control plane's to set (NodeRestriction).
        assert!(!labels.contains_key("node-role.kubernetes.io/control-plane"));
        assert_eq!(labels["kubernetes.io/hostname"], "n");
        let conditions = status.conditions.unwrap();
        assert!(conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"));
        assert!(conditions
            .iter()
            .any(|c| c.type_ == "MemoryPressure" && c.status == "False"));
        assert_eq!(
            status.allocatable.as_ref().unwrap()["ephemeral-storage"].0,
            format!("{}Ki", (9i64 << 30) / 1024)
        );

        // Under pressure, the conditions say so as the kubelet words it.
        config
            .pressure
            .set([Pressure::Memory, Pressure::Pid].into());
        let conditions = node_status(&config, &machine, &conditions)
            .conditions
            .unwrap();
        let of = |kind: &str| conditions.iter().find(|c| c.type_ == kind).unwrap();
        assert_eq!(of("MemoryPressure").status, "True");
        assert_eq!(
            of("MemoryPressure").reason.as_deref(),
            Some("KubeletHasInsufficientMemory")
        );
        assert_eq!(
            of("MemoryPressure").message.as_deref(),
            Some("kubelet has insufficient memory available")
        );
        assert_eq!(of("DiskPressure").status, "False");
        assert_eq!(
            of("PIDPressure").reason.as_deref(),
            Some("KubeletHasInsufficientPID")
        );
    }
}
