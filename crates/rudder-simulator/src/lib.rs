//! Simulated nodes, like [kwok](https://kwok.sigs.k8s.io/): `rudder
//! simulate` registers N nodes named `PREFIX1..PREFIXN`, keeps their status
//! and Leases fresh, and acts as their kubelet without running anything:
//! pods bound to them become Running and Ready with a fake IP, and their
//! deletions complete at once. It is for scale tests, benchmarks and
//! controller tests, and holds thousands of nodes in one process.
//!
//! Like every component but the API server, the simulator is an API client:
//! it sees the cluster only through the REST API and its watches.
//!
//! - `node`: the Node objects, registration, and which nodes
//!   the simulator maintains (those that exist: a node deleted by a user
//!   stays deleted, as with kwok).
//! - `maintenance`: Lease renewals (10 s) and status heartbeats (60 s),
//!   spread over the interval with bounded concurrency.
//! - `kubelet`: the pod watch and the workers that update pods.
//! - `addressing`: the fake pod CIDRs, node IPs and pod IPs.

mod addressing;
mod kubelet;
mod lease;
mod list_watch;
mod maintenance;
mod node;
mod pod_status;
mod retry;
mod work_queue;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::Client;
use tokio::time::Instant;

use crate::kubelet::{Kubelet, BOUND_PODS, POD_WORKERS};
use crate::list_watch::{list_watch, Change, Selectors};
use crate::node::{Fleet, Registration, SIMULATED_LABEL};

/// How long the API server may stay unreachable at start before
/// [`run`] gives up.
pub const API_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Nodes registered at once at start.
const REGISTRATIONS_IN_FLIGHT: usize = 16;

/// What to simulate: `nodes` nodes named `name_prefix1..name_prefixN`,
/// each with the given capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulateOptions {
    pub nodes: usize,
    /// CPU capacity, a quantity such as `"4"` or `"3500m"`.
    pub cpu: String,
    /// Memory capacity, a quantity such as `"8Gi"`.
    pub memory: String,
    /// The most pods a node takes.
    pub pods: u32,
    pub name_prefix: String,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            nodes: 1,
            cpu: "4".to_owned(),
            memory: "8Gi".to_owned(),
            pods: 110,
            name_prefix: "sim-".to_owned(),
        }
    }
}

/// Why the simulator could not start. Once started it does not fail: it
/// retries, and logs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid simulator options: {0}")]
    InvalidOptions(#[from] OptionsError),
    #[error("the API server did not answer within {}s", waited.as_secs())]
    ApiUnreachable {
        waited: Duration,
        #[source]
        source: kube::Error,
    },
    #[error("cannot register simulated node {node}")]
    Registration {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// Options that cannot be simulated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("{field} {value:?} is not a valid quantity")]
    InvalidQuantity { field: &'static str, value: String },
    #[error("{name:?} is not a valid node name: {reason}")]
    InvalidNodeName { name: String, reason: &'static str },
    #[error(
        "at most {max} nodes with {pods} pods each fit the simulated pod network, not {nodes}"
    )]
    TooManyNodes { nodes: usize, pods: u32, max: usize },
    #[error("at most {max} pods per node can be simulated, not {pods}")]
    TooManyPods { pods: u32, max: u32 },
}

/// Registers the simulated nodes, then maintains them and serves their
/// pods until the returned future is dropped (it is `Send`, so it can be
/// spawned and aborted). Fails only if it cannot start: invalid options, an
/// API server unreachable for [`API_STARTUP_TIMEOUT`], or a node the server
/// refuses to register; the error is then an [`Error`]. Once started, API
/// errors are logged and retried with backoff.
pub async fn run(client: Client, options: SimulateOptions) -> anyhow::Result<()> {
    let simulator = Simulator::start(client, &options).await?;
    simulator.serve().await;
    Ok(())
}

struct Simulator {
    client: Client,
    fleet: Arc<Fleet>,
    kubelet: Kubelet,
}

impl Simulator {
    async fn start(client: Client, options: &SimulateOptions) -> Result<Self, Error> {
        let fleet = Arc::new(Fleet::plan(options)?);
        wait_for_api(&client, API_STARTUP_TIMEOUT).await?;
        let registrations = register_all(&client, &fleet).await?;
        let taken_over = registrations
            .iter()
            .filter(|r| **r == Registration::TakenOver)
            .count();
        tracing::info!(
            nodes = fleet.nodes.len(),
            created = registrations.len() - taken_over,
            taken_over,
            "simulated nodes registered"
        );
        Ok(Simulator {
            kubelet: Kubelet::new(client.clone(), fleet.clone()),
            client,
            fleet,
        })
    }

    /// Runs every loop; never returns.
    async fn serve(&self) {
        let workers = join_all((0..POD_WORKERS).map(|_| self.kubelet.run_worker()));
        let simulated = format!("{SIMULATED_LABEL}=true");
        let mut node_relist = None;
        let nodes = list_watch(
            Api::<Node>::all(self.client.clone()),
            "nodes",
            Selectors {
                labels: Some(&simulated),
                fields: None,
            },
            |change| self.on_node_change(change, &mut node_relist),
        );
        let pods = list_watch(
            Api::<Pod>::all(self.client.clone()),
            "pods",
            Selectors {
                labels: None,
                fields: Some(BOUND_PODS),
            },
            |change| self.kubelet.on_pod_change(change),
        );
        tokio::join!(
            maintenance::maintain_nodes(&self.client, &self.fleet),
            nodes,
            pods,
            self.kubelet.run_retries(),
            workers,
        );
    }

    /// Follows which of our nodes exist, so that deleted ones are left
    /// alone (see [`node`]). `relist` holds the nodes a list under way has
    /// shown, by position, with their uids.
    fn on_node_change(&self, change: Change<Node>, relist: &mut Option<HashMap<usize, String>>) {
        match change {
            Change::ListStarted => *relist = Some(HashMap::new()),
            Change::Listed(nodes) => {
                let seen = relist.get_or_insert_with(HashMap::new);
                seen.extend(nodes.iter().filter_map(|node| self.identify(node)));
            }
            Change::ListDone => {
                let seen = relist.take().unwrap_or_default();
                for position in 0..self.fleet.nodes.len() {
                    match seen.get(&position) {
                        Some(uid) => self.node_present(position, uid),
                        None => self.node_gone(position),
                    }
                }
            }
            Change::Applied(node) => {
                if let Some((position, uid)) = self.identify(&node) {
                    self.node_present(position, &uid);
                }
            }
            Change::Deleted(node) => {
                if let Some((position, _)) = self.identify(&node) {
                    self.node_gone(position);
                }
            }
        }
    }

    /// The position and uid of `node` if it is one of ours.
    fn identify(&self, node: &Node) -> Option<(usize, String)> {
        let position = self.fleet.position(node.metadata.name.as_deref()?)?;
        Some((position, node.metadata.uid.clone()?))
    }

    fn node_present(&self, position: usize, uid: &str) {
        let node = &self.fleet.nodes[position];
        if node.observe_present(uid) {
            tracing::info!(node = %node.name, "node is back; maintaining it again");
            self.kubelet.node_returned(position);
        }
    }

    fn node_gone(&self, position: usize) {
        let node = &self.fleet.nodes[position];
        if node.observe_gone() {
            tracing::info!(node = %node.name, "node was deleted; no longer maintaining it");
        }
    }
}

/// Registers every node, [`REGISTRATIONS_IN_FLIGHT`] at a time.
async fn register_all(client: &Client, fleet: &Fleet) -> Result<Vec<Registration>, Error> {
    // A plain loop rather than a stream of closures: see
    // `maintenance::maintain_nodes`.
    let mut registrations = Vec::with_capacity(fleet.nodes.len());
    let mut in_flight = FuturesUnordered::new();
    let mut next = 0;
    loop {
        while in_flight.len() < REGISTRATIONS_IN_FLIGHT && next < fleet.nodes.len() {
            in_flight.push(node::register(client, fleet, &fleet.nodes[next]));
            next += 1;
        }
        match in_flight.next().await {
            Some(registration) => registrations.push(registration?),
            None => return Ok(registrations),
        }
    }
}

/// Waits until the API server answers `/version`.
async fn wait_for_api(client: &Client, timeout: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let mut backoff = retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match client.apiserver_version().await {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                return Err(Error::ApiUnreachable {
                    waited: timeout,
                    source: err,
                })
            }
            Err(err) => {
                tracing::debug!(error = %err, "API server not reachable yet");
                let delay = backoff.next_delay();
                tokio::time::sleep_until((Instant::now() + delay).min(deadline)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_api_server_fails_the_start_after_the_timeout() {
        // Nothing listens on port 9 (discard) here.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let err = wait_for_api(&client, Duration::from_millis(600))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::ApiUnreachable { waited, .. } if waited == Duration::from_millis(600)),
            "{err:?}"
        );
    }
}
