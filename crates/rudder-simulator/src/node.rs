//! The simulated nodes: their names, addresses and resources, the Node
//! objects that register them, and the status writes that keep them Ready.
//!
//! Ownership follows kwok: the simulator registers its nodes once, at
//! start (creating them, or taking over nodes of the same name that already
//! exist), and from then on maintains each node only while it exists. A
//! node that a user deletes, or strips of the `node.rudder.dev/simulated`
//! label, is left alone: its lease is no longer renewed and its pods are no
//! longer served, so the cluster sees it go, as it would see a real node
//! leave. If a node of the same name comes back with the label, the
//! simulator maintains it again. Restarting the simulator registers all of
//! its nodes anew.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::time::Instant;

use crate::addressing::{AddressPlan, NodeAddresses};
use crate::retry::{api_code, is_transient, Backoff};
use crate::{Error, OptionsError, SimulateOptions};

/// The label that marks a node as simulated (kwok uses `type=kwok`).
pub(crate) const SIMULATED_LABEL: &str = "node.rudder.dev/simulated";

/// The field manager of every write, so `managedFields` show who wrote
/// what.
pub(crate) const FIELD_MANAGER: &str = "rudder-simulator";

pub(crate) const KUBELET_VERSION: &str = "v1.33.0-rudder-sim";

/// Every node's `ephemeral-storage` capacity.
const EPHEMERAL_STORAGE: &str = "100Gi";

/// Node names end up in the `kubernetes.io/hostname` label, whose values
/// are at most 63 characters.
const MAX_NODE_NAME_LEN: usize = 63;

/// The capacity (and allocatable: nothing is reserved) of every node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodeResources(BTreeMap<String, Quantity>);

impl NodeResources {
    pub(crate) fn from_options(options: &SimulateOptions) -> Result<Self, OptionsError> {
        let quantity = |field: &'static str, value: &str| {
            let valid = value == value.trim()
                && rudder_apimachinery::quantity::Quantity::parse(value)
                    .is_some_and(|q| q.as_f64() >= 0.0);
            if valid {
                Ok(Quantity(value.to_owned()))
            } else {
                Err(OptionsError::InvalidQuantity {
                    field,
                    value: value.to_owned(),
                })
            }
        };
        Ok(NodeResources(BTreeMap::from([
            ("cpu".to_owned(), quantity("cpu", &options.cpu)?),
            ("memory".to_owned(), quantity("memory", &options.memory)?),
            ("pods".to_owned(), Quantity(options.pods.to_string())),
            (
                "ephemeral-storage".to_owned(),
                Quantity(EPHEMERAL_STORAGE.to_owned()),
            ),
        ])))
    }
}

/// Checks that `PREFIX1..PREFIXn` are valid node names: DNS subdomains
/// short enough to be label values.
fn check_node_names(prefix: &str, nodes: usize) -> Result<(), OptionsError> {
    let longest = format!("{prefix}{nodes}");
    let invalid = |reason: &'static str| OptionsError::InvalidNodeName {
        name: longest.clone(),
        reason,
    };
    if longest.len() > MAX_NODE_NAME_LEN {
        return Err(invalid("longer than 63 characters"));
    }
    if !longest
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err(invalid(
            "only lowercase letters, digits, '-' and '.' are allowed",
        ));
    }
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !longest
        .split('.')
        .all(|part| alphanumeric(part.chars().next()) && alphanumeric(part.chars().last()))
    {
        return Err(invalid(
            "each '.'-separated part must start and end with a letter or digit",
        ));
    }
    Ok(())
}

/// Whether the simulator maintains a node.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Presence {
    /// Not registered yet.
    Unregistered,
    Managed {
        uid: String,
    },
    /// Deleted (or unlabelled) by someone else: left alone.
    Gone,
}

/// What the maintenance loop should write for a node this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusWrite {
    /// The whole status: the node came back and may hold anything.
    Full,
    /// Only the conditions' heartbeat.
    Heartbeat,
    NotDue,
}

/// A node's maintenance for one round, as [`SimulatedNode::plan`] decides.
#[derive(Clone, Debug)]
pub(crate) struct MaintenancePlan {
    /// The node's uid, for the Lease's owner reference.
    pub node_uid: String,
    pub status: StatusWrite,
    pub ready_since: Timestamp,
}

#[derive(Debug)]
struct NodeState {
    presence: Presence,
    /// When the node became Ready: the Ready condition's
    /// lastTransitionTime.
    ready_since: Timestamp,
    /// When the status was last written; `None` when the whole status must
    /// be written again.
    last_status_write: Option<Instant>,
}

pub(crate) struct SimulatedNode {
    pub name: String,
    pub addresses: NodeAddresses,
    state: Mutex<NodeState>,
}

impl SimulatedNode {
    fn new(name: String, addresses: NodeAddresses) -> Self {
        SimulatedNode {
            name,
            addresses,
            state: Mutex::new(NodeState {
                presence: Presence::Unregistered,
                ready_since: Timestamp::now(),
                last_status_write: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_managed(&self) -> bool {
        matches!(self.lock().presence, Presence::Managed { .. })
    }

    fn registered(&self, uid: String, ready_since: Timestamp) {
        let mut state = self.lock();
        state.presence = Presence::Managed { uid };
        state.ready_since = ready_since;
        state.last_status_write = Some(Instant::now());
    }

    /// The node exists (per the node watch). Returns whether it had been
    /// gone, so the caller can serve its pods again.
    pub(crate) fn observe_present(&self, uid: &str) -> bool {
        let mut state = self.lock();
        match &state.presence {
            Presence::Managed { uid: known } if known == uid => false,
            Presence::Managed { .. } => {
                // Deleted and created again between two looks: its status
                // is whatever the new object holds.
                state.presence = Presence::Managed {
                    uid: uid.to_owned(),
                };
                state.last_status_write = None;
                false
            }
            Presence::Unregistered | Presence::Gone => {
                state.presence = Presence::Managed {
                    uid: uid.to_owned(),
                };
                state.ready_since = Timestamp::now();
                state.last_status_write = None;
                true
            }
        }
    }

    /// The node is gone. Returns whether the simulator was maintaining it.
    pub(crate) fn observe_gone(&self) -> bool {
        let mut state = self.lock();
        let was_managed = matches!(state.presence, Presence::Managed { .. });
        if was_managed {
            state.presence = Presence::Gone;
        }
        was_managed
    }

    /// This round's work for the node, or `None` if it is not maintained.
    pub(crate) fn plan(&self, now: Instant, status_interval: Duration) -> Option<MaintenancePlan> {
        let state = self.lock();
        let Presence::Managed { uid } = &state.presence else {
            return None;
        };
        let status = match state.last_status_write {
            None => StatusWrite::Full,
            Some(at) if now.duration_since(at) >= status_interval => StatusWrite::Heartbeat,
            Some(_) => StatusWrite::NotDue,
        };
        Some(MaintenancePlan {
            node_uid: uid.clone(),
            status,
            ready_since: state.ready_since,
        })
    }

    pub(crate) fn status_written(&self, at: Instant) {
        self.lock().last_status_write = Some(at);
    }
}

/// All the nodes of one simulator.
pub(crate) struct Fleet {
    pub nodes: Vec<SimulatedNode>,
    by_name: HashMap<String, usize>,
    pub resources: NodeResources,
}

impl Fleet {
    /// Checks the options and lays the nodes out; talks to nobody.
    pub(crate) fn plan(options: &SimulateOptions) -> Result<Self, OptionsError> {
        let resources = NodeResources::from_options(options)?;
        check_node_names(&options.name_prefix, options.nodes)?;
        let addressing = AddressPlan::for_max_pods(options.pods)?;
        if options.nodes > addressing.max_nodes() {
            return Err(OptionsError::TooManyNodes {
                nodes: options.nodes,
                pods: options.pods,
                max: addressing.max_nodes(),
            });
        }
        let nodes: Vec<SimulatedNode> = (1..=options.nodes)
            .map(|index| {
                SimulatedNode::new(
                    format!("{}{index}", options.name_prefix),
                    addressing.node_addresses(index),
                )
            })
            .collect();
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (node.name.clone(), i))
            .collect();
        Ok(Fleet {
            nodes,
            by_name,
            resources,
        })
    }

    /// The position in [`nodes`](Self::nodes) of the node called `name`,
    /// if it is one of this simulator's.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

pub(crate) fn node_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), name.to_owned()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        (SIMULATED_LABEL.to_owned(), "true".to_owned()),
    ])
}

/// The Node object that registers `node`, status included (the API server
/// keeps a Node's status on create, as nodes register with it).
pub(crate) fn node_object(node: &SimulatedNode, resources: &NodeResources, now: Timestamp) -> Node {
    let pod_cidr = node.addresses.pod_cidr.to_string();
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(node_labels(&node.name)),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(pod_cidr.clone()),
            pod_cidrs: Some(vec![pod_cidr]),
            ..NodeSpec::default()
        }),
        status: Some(node_status(node, resources, now, now)),
    }
}

pub(crate) fn node_status(
    node: &SimulatedNode,
    resources: &NodeResources,
    ready_since: Timestamp,
    now: Timestamp,
) -> NodeStatus {
    NodeStatus {
        capacity: Some(resources.0.clone()),
        allocatable: Some(resources.0.clone()),
        conditions: Some(node_conditions(ready_since, now)),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: node.addresses.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: node.name.clone(),
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".to_owned(),
            operating_system: "linux".to_owned(),
            os_image: "Rudder simulated node".to_owned(),
            kernel_version: "rudder-sim".to_owned(),
            kubelet_version: KUBELET_VERSION.to_owned(),
            container_runtime_version: "rudder-sim://1".to_owned(),
            machine_id: node.name.clone(),
            system_uuid: node.name.clone(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Ready, and free of every pressure, with `now` as the heartbeat.
pub(crate) fn node_conditions(ready_since: Timestamp, now: Timestamp) -> Vec<NodeCondition> {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(ready_since)),
    };
    vec![
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Registers one node: creates it, or takes over the node of that name.
/// Retries for as long as the failure may pass; fails on an answer that
/// will not change (such as 403 Forbidden).
pub(crate) async fn register(
    client: &Client,
    fleet: &Fleet,
    node: &SimulatedNode,
) -> Result<Registration, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
    loop {
        let now = Timestamp::now();
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let attempt = match nodes
            .create(&params, &node_object(node, &fleet.resources, now))
            .await
        {
            Ok(created) => Ok((Registration::Created, created, now)),
            Err(err) if api_code(&err) == Some(409) => take_over(&nodes, fleet, node)
                .await
                .map(|(taken, ready_since)| (Registration::TakenOver, taken, ready_since)),
            Err(err) => Err(err),
        };
        match attempt {
            Ok((registration, object, ready_since)) => {
                node.registered(object.metadata.uid.unwrap_or_default(), ready_since);
                return Ok(registration);
            }
            Err(err) if is_transient(&err) || api_code(&err) == Some(404) => {
                // 404: the node was deleted between the create and the
                // take-over; creating it again settles it.
                tracing::warn!(node = %node.name, error = %err, "registering node failed; retrying");
                backoff.wait().await;
            }
            Err(err) => {
                return Err(Error::Registration {
                    node: node.name.clone(),
                    source: err,
                })
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Registration {
    Created,
    TakenOver,
}

/// Makes an existing node one of ours: our labels and pod CIDR, and our
/// status. Keeps the Ready condition's transition time if it was Ready.
async fn take_over(
    nodes: &Api<Node>,
    fleet: &Fleet,
    node: &SimulatedNode,
) -> kube::Result<(Node, Timestamp)> {
    let existing = nodes.get(&node.name).await?;
    let now = Timestamp::now();
    let ready_since = existing
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")
        })
        .and_then(|ready| ready.last_transition_time.as_ref())
        .map_or(now, |time| time.0);
    let pod_cidr = node.addresses.pod_cidr.to_string();
    let labels = json!({"metadata": {"labels": node_labels(&node.name)}});
    let mut with_cidr = labels.clone();
    with_cidr["spec"] = json!({"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]});
    match nodes
        .patch(&node.name, &patch_params(), &Patch::Merge(&with_cidr))
        .await
    {
        Ok(_) => {}
        Err(err) if api_code(&err) == Some(422) => {
            // A server that keeps podCIDR immutable refuses to change an
            // existing one; the node keeps it, and pod IPs still come from
            // the simulator's own plan.
            tracing::warn!(node = %node.name, error = %err, "cannot set the pod CIDR of an existing node; keeping its own");
            nodes
                .patch(&node.name, &patch_params(), &Patch::Merge(&labels))
                .await?;
        }
        Err(err) => return Err(err),
    }
    let status = json!({"status": node_status(node, &fleet.resources, ready_since, now)});
    let taken = nodes
        .patch_status(&node.name, &patch_params(), &Patch::Merge(&status))
        .await?;
    Ok((taken, ready_since))
}

/// Writes the node's whole status (merge patch: lists are replaced).
pub(crate) async fn write_full_status(
    client: &Client,
    fleet: &Fleet,
    node: &SimulatedNode,
    ready_since: Timestamp,
) -> kube::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let status =
        json!({"status": node_status(node, &fleet.resources, ready_since, Timestamp::now())});
    nodes
        .patch_status(&node.name, &patch_params(), &Patch::Merge(&status))
        .await
        .map(drop)
}

/// Refreshes the conditions' heartbeat. A strategic merge patch merges
/// conditions by type, so conditions other components set (such as
/// NetworkUnavailable) survive.
pub(crate) async fn write_heartbeat(
    client: &Client,
    node: &SimulatedNode,
    ready_since: Timestamp,
) -> kube::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let status = json!({"status": {"conditions": node_conditions(ready_since, Timestamp::now())}});
    nodes
        .patch_status(&node.name, &patch_params(), &Patch::Strategic(&status))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(nodes: usize, prefix: &str) -> SimulateOptions {
        SimulateOptions {
            nodes,
            name_prefix: prefix.to_owned(),
            ..SimulateOptions::default()
        }
    }

    #[test]
    fn nodes_are_named_prefix_1_to_n() {
        let fleet = Fleet::plan(&options(3, "sim-")).unwrap();
        let names: Vec<&str> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["sim-1", "sim-2", "sim-3"]);
        assert_eq!(fleet.position("sim-2"), Some(1));
        assert_eq!(fleet.position("sim-4"), None);
        assert_eq!(fleet.position("other"), None);
    }

    #[test]
    fn options_are_checked_before_anything_is_sent() {
        let invalid_name = |prefix: &str| {
            matches!(
                Fleet::plan(&options(3, prefix)),
                Err(OptionsError::InvalidNodeName { .. })
            )
        };
        assert!(invalid_name("Sim-"));
        assert!(invalid_name("sim_"));
        assert!(invalid_name("-sim"));
        assert!(invalid_name("sim-."));
        assert!(invalid_name(&"x".repeat(63)));
        assert!(!invalid_name(""));
        assert!(!invalid_name("rack-1.sim-"));

        let mut bad_cpu = options(1, "n");
        bad_cpu.cpu = "four".into();
        assert_eq!(
            Fleet::plan(&bad_cpu).err(),
            Some(OptionsError::InvalidQuantity {
                field: "cpu",
                value: "four".into()
            })
        );
        let mut bad_memory = options(1, "n");
        bad_memory.memory = "-1Gi".into();
        assert!(matches!(
            Fleet::plan(&bad_memory),
            Err(OptionsError::InvalidQuantity {
                field: "memory",
                ..
            })
        ));
        assert!(matches!(
            Fleet::plan(&options(100_000, "n")),
            Err(OptionsError::TooManyNodes { max: 61_439, .. })
        ));
    }

    #[test]
    fn the_node_object_registers_a_ready_node() {
        let fleet = Fleet::plan(&SimulateOptions {
            nodes: 2,
            cpu: "8".into(),
            memory: "16Gi".into(),
            pods: 50,
            name_prefix: "kwok-".into(),
        })
        .unwrap();
        let now = Timestamp::now();
        let node =
            serde_json::to_value(node_object(&fleet.nodes[1], &fleet.resources, now)).unwrap();
        assert_eq!(node["metadata"]["name"], "kwok-2");
        assert_eq!(
            node["metadata"]["labels"],
            json!({
                "kubernetes.io/hostname": "kwok-2",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.rudder.dev/simulated": "true",
            })
        );
        assert_eq!(node["spec"]["podCIDR"], "10.244.2.0/24");
        assert_eq!(node["spec"]["podCIDRs"], json!(["10.244.2.0/24"]));
        let resources =
            json!({"cpu": "8", "memory": "16Gi", "pods": "50", "ephemeral-storage": "100Gi"});
        assert_eq!(node["status"]["capacity"], resources);
        assert_eq!(node["status"]["allocatable"], resources);
        assert_eq!(
            node["status"]["addresses"],
            json!([
                {"type": "InternalIP", "address": "10.244.2.1"},
                {"type": "Hostname", "address": "kwok-2"},
            ])
        );
        let info = &node["status"]["nodeInfo"];
        assert_eq!(info["kubeletVersion"], "v1.33.0-rudder-sim");
        assert_eq!(info["osImage"], "Rudder simulated node");
        assert_eq!(info["containerRuntimeVersion"], "rudder-sim://1");
        assert_eq!(info["architecture"], "amd64");
        assert_eq!(info["operatingSystem"], "linux");
        let conditions = node["status"]["conditions"].as_array().unwrap();
        let status_of = |type_: &str| {
            conditions
                .iter()
                .find(|c| c["type"] == type_)
                .map(|c| c["status"].as_str().unwrap().to_owned())
        };
        assert_eq!(status_of("Ready").as_deref(), Some("True"));
        assert_eq!(status_of("MemoryPressure").as_deref(), Some("False"));
        assert_eq!(status_of("DiskPressure").as_deref(), Some("False"));
        assert_eq!(status_of("PIDPressure").as_deref(), Some("False"));
        let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["reason"], "KubeletReady");
        assert!(ready["lastHeartbeatTime"].is_string());
        assert!(ready["lastTransitionTime"].is_string());
    }

    #[test]
    fn maintenance_writes_the_whole_status_after_a_node_comes_back() {
        let fleet = Fleet::plan(&options(1, "n")).unwrap();
        let node = &fleet.nodes[0];
        let interval = Duration::from_secs(60);
        assert!(
            node.plan(Instant::now(), interval).is_none(),
            "not registered yet"
        );
        node.registered("uid-1".into(), Timestamp::now());
        let now = Instant::now();
        let plan = node.plan(now, interval).unwrap();
        assert_eq!(
            (plan.node_uid.as_str(), plan.status),
            ("uid-1", StatusWrite::NotDue)
        );
        assert_eq!(
            node.plan(now + interval, interval).unwrap().status,
            StatusWrite::Heartbeat
        );
        assert!(!node.observe_present("uid-1"));
        assert!(node.observe_gone());
        assert!(node.plan(now, interval).is_none());
        assert!(!node.observe_gone());
        assert!(node.observe_present("uid-2"));
        let plan = node.plan(now, interval).unwrap();
        assert_eq!(
            (plan.node_uid.as_str(), plan.status),
            ("uid-2", StatusWrite::Full)
        );
    }
}
