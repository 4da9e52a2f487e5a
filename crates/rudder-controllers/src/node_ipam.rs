//! Node IPAM (`nodeipam`, the range allocator): every node without
//! `spec.podCIDR` gets the next free subnet of the cluster CIDR (a /24 of
//! 10.42.0.0/16 by default), written to `spec.podCIDR` and
//! `spec.podCIDRs`; a deleted node's subnet is free again. The subnets
//! nodes already hold are read back before anything is allocated, so a
//! restart never hands one out twice.
//!
//! IPv4 only: an IPv6 or dual-stack cluster CIDR is refused at start.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use rudder_runtime::events::{EventRecorder, EventType};
use rudder_runtime::{Informer, WorkQueue};
use serde_json::json;

use crate::util::is_not_found;
use crate::Context;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("invalid CIDR {0:?}")]
    InvalidCidr(String),
    #[error("cluster CIDR {0}: only IPv4 cluster CIDRs are supported")]
    NotIpv4(String),
    #[error("node CIDR mask size {node} must be between the cluster CIDR's prefix /{cluster} and /32, and at most 16 bits longer")]
    BadMaskSize { cluster: u8, node: u8 },
    #[error("CIDR {0} is not a node subnet of the cluster CIDR")]
    OutsideCluster(String),
    #[error("no free CIDR left in the cluster CIDR")]
    Full,
}

/// `--cluster-cidr` and `--node-cidr-mask-size`.
#[derive(Clone, Debug)]
pub struct NodeIpamConfig {
    pub cluster_cidr: String,
    pub node_cidr_mask_size: u8,
}

impl Default for NodeIpamConfig {
    fn default() -> Self {
        NodeIpamConfig {
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask_size: 24,
        }
    }
}

fn parse_cidr(text: &str) -> Result<(u32, u8), IpamError> {
    let invalid = || IpamError::InvalidCidr(text.to_owned());
    let (ip, prefix) = text.split_once('/').ok_or_else(invalid)?;
    if ip.contains(':') {
        return Err(IpamError::NotIpv4(text.to_owned()));
    }
    let ip: Ipv4Addr = ip.parse().map_err(|_| invalid())?;
    let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
    if prefix > 32 {
        return Err(invalid());
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Ok((u32::from(ip) & mask, prefix))
}

/// The node subnets of a cluster CIDR and which are taken (`cidrset`).
/// Allocation goes round from the last one handed out, so a freed subnet
/// is not reused at once.
#[derive(Debug)]
pub struct CidrSet {
    base: u32,
    node_prefix: u8,
    used: Vec<bool>,
    next: usize,
}

impl CidrSet {
    pub fn new(cluster_cidr: &str, node_prefix: u8) -> Result<Self, IpamError> {
        let (base, prefix) = parse_cidr(cluster_cidr)?;
        if node_prefix < prefix || node_prefix > 32 || node_prefix - prefix > 16 {
            return Err(IpamError::BadMaskSize {
                cluster: prefix,
                node: node_prefix,
            });
        }
        Ok(CidrSet {
            base,
            node_prefix,
            used: vec![false; 1 << (node_prefix - prefix)],
            next: 0,
        })
    }

    fn cidr_at(&self, index: usize) -> String {
        let ip = self.base + ((index as u64) << (32 - self.node_prefix)) as u32;
        format!("{}/{}", Ipv4Addr::from(ip), self.node_prefix)
    }

    /// The indexes of the node subnets a CIDR covers.
    fn indexes(&self, cidr: &str) -> Result<std::ops::Range<usize>, IpamError> {
        let (ip, prefix) = parse_cidr(cidr)?;
        let outside = || IpamError::OutsideCluster(cidr.to_owned());
        let shift = 32 - self.node_prefix as u32;
        let offset = ip.checked_sub(self.base).ok_or_else(outside)?;
        let first = (offset >> shift) as usize;
        // A CIDR wider than a node subnet covers several.
        let count = if prefix >= self.node_prefix {
            1
        } else {
            1usize << (self.node_prefix - prefix)
        };
        if first + count > self.used.len() {
            return Err(outside());
        }
        Ok(first..first + count)
    }

    pub fn allocate_next(&mut self) -> Result<String, IpamError> {
        let n = self.used.len();
        for i in 0..n {
            let index = (self.next + i) % n;
            if !self.used[index] {
                self.used[index] = true;
                self.next = (index + 1) % n;
                return Ok(self.cidr_at(index));
            }
        }
        Err(IpamError::Full)
    }

    pub fn occupy(&mut self, cidr: &str) -> Result<(), IpamError> {
        for i in self.indexes(cidr)? {
            self.used[i] = true;
        }
        Ok(())
    }

    pub fn release(&mut self, cidr: &str) -> Result<(), IpamError> {
        for i in self.indexes(cidr)? {
            self.used[i] = false;
        }
        Ok(())
    }
}

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    let ctx = ctx.clone();
    async move {
        NodeIpamController::new(
            &ctx,
            NodeIpamConfig {
                cluster_cidr: ctx.options.cluster_cidr.clone(),
                node_cidr_mask_size: ctx.options.node_cidr_mask_size,
            },
        )?
        .run()
        .await
    }
    .boxed()
}

struct State {
    set: CidrSet,
    /// What each node holds, by name: its uid and CIDR.
    by_node: HashMap<String, (String, String)>,
}

pub struct NodeIpamController {
    client: Client,
    recorder: EventRecorder,
    nodes: Informer<Node>,
    queue: WorkQueue<String>,
    state: Arc<Mutex<State>>,
}

fn pod_cidr(node: &Node) -> Option<String> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidr
        .clone()
        .or_else(|| spec.pod_cidrs.as_ref()?.first().cloned())
        .filter(|c| !c.is_empty())
}

impl NodeIpamController {
    pub fn new(ctx: &Context, config: NodeIpamConfig) -> Result<Self, IpamError> {
        let set = CidrSet::new(&config.cluster_cidr, config.node_cidr_mask_size)?;
        let nodes = ctx.informers.get::<Node>();
        let queue = WorkQueue::new();
        let q = queue.clone();
        nodes.on_change(move |change| q.add(change.object().name_any()));
        Ok(NodeIpamController {
            client: ctx.client.clone(),
            recorder: EventRecorder::new(ctx.client.clone(), "node-controller"),
            nodes,
            queue,
            state: Arc::new(Mutex::new(State {
                set,
                by_node: HashMap::new(),
            })),
        })
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.nodes.wait_synced().await;
        // What nodes hold already is taken before anything is handed out.
        {
            let mut state = self.state.lock().unwrap();
            for node in self.nodes.list() {
                if let Some(cidr) = pod_cidr(&node) {
                    state.record(&node, cidr);
                }
            }
        }
        let this = Arc::new(self);
        let queue = this.queue.clone();
        // One worker: allocations are decided one at a time.
        queue
            .run_workers("nodeipam", 1, move |name: String| {
                let this = this.clone();
                async move { this.sync(&name).await.map(|_| None) }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, name: &str) -> anyhow::Result<()> {
        let Some(node) = self.nodes.get(name) else {
            let mut state = self.state.lock().unwrap();
            if let Some((_, cidr)) = state.by_node.remove(name) {
                tracing::info!(node = name, cidr = %cidr, "node deleted; its pod CIDR is free");
                let _ = state.set.release(&cidr);
            }
            return Ok(());
        };
        let uid = node.metadata.uid.clone().unwrap_or_default();
        let cidr = {
            let mut state = self.state.lock().unwrap();
            if let Some(cidr) = pod_cidr(&node) {
                state.record(&node, cidr);
                return Ok(());
            }
            match state.by_node.get(name) {
                // Allocated by us, not yet seen in the cache: write it again.
                Some((held_by, cidr)) if *held_by == uid => cidr.clone(),
                _ => {
                    if let Some((_, old)) = state.by_node.remove(name) {
                        let _ = state.set.release(&old);
                    }
                    match state.set.allocate_next() {
                        Ok(cidr) => {
                            state
                                .by_node
                                .insert(name.to_owned(), (uid.clone(), cidr.clone()));
                            cidr
                        }
                        Err(err) => {
                            drop(state);
                            self.status_event(&node, "CIDRNotAvailable");
                            anyhow::bail!("cannot allocate a pod CIDR for node {name}: {err}");
                        }
                    }
                }
            }
        };
        let api: Api<Node> = Api::all(self.client.clone());
        let patch =
            json!({"metadata": {"uid": uid}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node = name, cidr = %cidr, "pod CIDR allocated");
                Ok(())
            }
            Err(err) if is_not_found(&err) => {
                let mut state = self.state.lock().unwrap();
                state.by_node.remove(name);
                let _ = state.set.release(&cidr);
                Ok(())
            }
            Err(err) => {
                {
                    let mut state = self.state.lock().unwrap();
                    state.by_node.remove(name);
                    let _ = state.set.release(&cidr);
                }
                self.status_event(&node, "CIDRAssignmentFailed");
                Err(anyhow::anyhow!(err)
                    .context(format!("cannot write pod CIDR {cidr} to node {name}")))
            }
        }
    }

    fn status_event(&self, node: &Node, status: &str) {
        let name = node.name_any();
        self.recorder.record(
            node,
            EventType::Normal,
            status,
            &format!("Node {name} status is now: {status}"),
        );
    }
}

impl State {
    /// Takes note of a CIDR a node holds (freeing what an earlier node of
    /// the same name held).
    fn record(&mut self, node: &Node, cidr: String) {
        let name = node.name_any();
        let uid = node.metadata.uid.clone().unwrap_or_default();
        if let Some((held_by, held)) = self.by_node.get(&name) {
            if *held_by == uid && *held == cidr {
                return;
            }
            let held = held.clone();
            let _ = self.set.release(&held);
        }
        if let Err(err) = self.set.occupy(&cidr) {
            tracing::warn!(node = %name, cidr = %cidr, error = %err, "node holds a pod CIDR outside the cluster CIDR");
        }
        self.by_node.insert(name, (uid, cidr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{eventually, TestCluster};
    use k8s_openapi::api::core::v1::Event;
    use kube::api::{DeleteParams, ListParams, PostParams};

    #[test]
    fn subnets_are_handed_out_in_turn_and_freed() {
        let mut set = CidrSet::new("10.42.0.0/16", 24).unwrap();
        assert_eq!(set.allocate_next().unwrap(), "10.42.0.0/24");
        set.occupy("10.42.1.0/24").unwrap();
        assert_eq!(set.allocate_next().unwrap(), "10.42.2.0/24");
        set.release("10.42.0.0/24").unwrap();
        assert_eq!(set.allocate_next().unwrap(), "10.42.3.0/24");
        assert_eq!(
            set.occupy("10.43.0.0/24"),
            Err(IpamError::OutsideCluster("10.43.0.0/24".into()))
        );
        let mut small = CidrSet::new("10.0.0.0/23", 24).unwrap();
        small.allocate_next().unwrap();
        small.allocate_next().unwrap();
        assert_eq!(small.allocate_next(), Err(IpamError::Full));
        small.release("10.0.0.0/24").unwrap();
        assert_eq!(small.allocate_next().unwrap(), "10.0.0.0/24");
        assert!(matches!(
            CidrSet::new("fd00::/48", 64),
            Err(IpamError::NotIpv4(_))
        ));
        assert!(matches!(
            CidrSet::new("10.0.0.0/16", 8),
            Err(IpamError::BadMaskSize { .. })
        ));
    }

    async fn create_node(client: &Client, name: &str, cidr: Option<&str>) {
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr}}))
                .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }

    async fn cidr_of(client: &Client, name: &str) -> Option<(String, Vec<String>)> {
        let nodes: Api<Node> = Api::all(client.clone());
        let spec = nodes.get(name).await.unwrap().spec?;
        Some((spec.pod_cidr?, spec.pod_cidrs?))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_get_distinct_cidrs_and_existing_ones_are_kept() {
        let cluster = TestCluster::start().await;
        let client = cluster.client.clone();
        // Held before the controller starts, as after a restart.
        create_node(&client, "old-0", Some("10.42.0.0/24")).await;
        create_node(&client, "old-1", Some("10.42.1.0/24")).await;
        cluster.run_controllers(&["nodeipam"]);
        create_node(&client, "new", None).await;
        let (cidr, cidrs) = eventually("a CIDR for the new node", || cidr_of(&client, "new")).await;
        assert_eq!(cidr, "10.42.2.0/24");
        assert_eq!(cidrs, vec!["10.42.2.0/24".to_string()]);
        let nodes: Api<Node> = Api::all(client.clone());
        let old = nodes.get("old-0").await.unwrap().spec.unwrap();
        assert_eq!(old.pod_cidr.as_deref(), Some("10.42.0.0/24"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_nodes_cidr_is_reused() {
        let cluster = TestCluster::start().await;
        let client = cluster.client.clone();
        let controller = NodeIpamController::new(
            &cluster.ctx,
            NodeIpamConfig {
                cluster_cidr: "10.50.0.0/23".into(),
                node_cidr_mask_size: 24,
            },
        )
        .unwrap();
        tokio::spawn(controller.run());
        cluster.ctx.informers.start();
        create_node(&client, "a", None).await;
        create_node(&client, "b", None).await;
        let a = eventually("a's CIDR", || cidr_of(&client, "a")).await.0;
        let b = eventually("b's CIDR", || cidr_of(&client, "b")).await.0;
        assert_ne!(a, b);
        create_node(&client, "c", None).await;
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        eventually("the range is full", || async {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("CIDRNotAvailable"))
                .then_some(())
        })
        .await;
        let nodes: Api<Node> = Api::all(client.clone());
        nodes.delete("a", &DeleteParams::default()).await.unwrap();
        let c = eventually("c gets a's CIDR", || cidr_of(&client, "c"))
            .await
            .0;
        assert_eq!(c, a);
    }
}
