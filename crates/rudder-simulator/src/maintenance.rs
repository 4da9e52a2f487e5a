//! The heartbeat loop: every node's Lease every 10 s, and its status
//! conditions every 60 s. Renewals are spread evenly over the interval and
//! at most [`MAX_IN_FLIGHT`] are sent at once, so thousands of nodes cost a
//! steady trickle of requests rather than a burst every 10 s.

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use kube::Client;
use tokio::time::Instant;

use crate::lease;
use crate::node::{self, Fleet, SimulatedNode, StatusWrite};
use crate::retry::api_code;

/// As the kubelet's `nodeLeaseRenewInterval`: a quarter of the lease.
pub(crate) const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// How often the Ready condition's heartbeat is refreshed.
pub(crate) const NODE_STATUS_INTERVAL: Duration = Duration::from_secs(60);

/// Requests in flight at once.
pub(crate) const MAX_IN_FLIGHT: usize = 16;

/// Keeps every maintained node's Lease and status fresh. Runs for ever.
pub(crate) async fn maintain_nodes(client: &Client, fleet: &Fleet) {
    let spacing =
        LEASE_RENEW_INTERVAL / u32::try_from(fleet.nodes.len().max(1)).unwrap_or(u32::MAX);
    let mut round_start = Instant::now();
    loop {
        let mut report = RoundReport::default();
        // A plain loop over a FuturesUnordered rather than a stream of
        // closures, whose borrowed arguments would keep this future from
        // being `Send` (rust-lang/rust#102211).
        let mut in_flight = FuturesUnordered::new();
        let mut next = 0;
        loop {
            while in_flight.len() < MAX_IN_FLIGHT && next < fleet.nodes.len() {
                let slot = round_start + spacing * u32::try_from(next).unwrap_or(u32::MAX);
                in_flight.push(maintain_node_at(slot, client, fleet, &fleet.nodes[next]));
                next += 1;
            }
            match in_flight.next().await {
                Some(outcome) => report.record(outcome),
                None => break,
            }
        }
        report.log();
        // A round that overran (a slow server) starts the next at once
        // rather than trying to catch up.
        round_start = (round_start + LEASE_RENEW_INTERVAL).max(Instant::now());
        tokio::time::sleep_until(round_start).await;
    }
}

#[derive(Debug)]
enum NodeOutcome {
    /// Not maintained (deleted, or not registered).
    Skipped,
    Maintained {
        lease: kube::Result<()>,
        status: Option<kube::Result<()>>,
    },
}

async fn maintain_node_at(
    slot: Instant,
    client: &Client,
    fleet: &Fleet,
    node: &SimulatedNode,
) -> NodeOutcome {
    tokio::time::sleep_until(slot).await;
    maintain_node(client, fleet, node).await
}

async fn maintain_node(client: &Client, fleet: &Fleet, node: &SimulatedNode) -> NodeOutcome {
    let Some(plan) = node.plan(Instant::now(), NODE_STATUS_INTERVAL) else {
        return NodeOutcome::Skipped;
    };
    let lease = lease::renew(client, &node.name, &plan.node_uid).await;
    let started = Instant::now();
    let status = match plan.status {
        StatusWrite::NotDue => None,
        StatusWrite::Full => {
            Some(node::write_full_status(client, fleet, node, plan.ready_since).await)
        }
        StatusWrite::Heartbeat => Some(node::write_heartbeat(client, node, plan.ready_since).await),
    };
    match &status {
        Some(Ok(())) => node.status_written(started),
        // Deleted by someone else: the node watch will say so too, but
        // there is no reason to keep writing until it does.
        Some(Err(err)) if api_code(err) == Some(404) && node.observe_gone() => {
            tracing::info!(node = %node.name, "node was deleted; no longer maintaining it");
        }
        _ => {}
    }
    NodeOutcome::Maintained { lease, status }
}

/// One round's results, logged once rather than once per node.
#[derive(Debug, Default)]
struct RoundReport {
    nodes: usize,
    lease_failures: usize,
    status_writes: usize,
    status_failures: usize,
    first_error: Option<String>,
}

impl RoundReport {
    fn record(&mut self, outcome: NodeOutcome) {
        let NodeOutcome::Maintained { lease, status } = outcome else {
            return;
        };
        self.nodes += 1;
        if let Err(err) = lease {
            self.lease_failures += 1;
            self.first_error.get_or_insert_with(|| err.to_string());
        }
        if let Some(status) = status {
            self.status_writes += 1;
            if let Err(err) = status {
                self.status_failures += 1;
                self.first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }

    fn log(&self) {
        match &self.first_error {
            Some(first_error) => tracing::warn!(
                nodes = self.nodes,
                lease_failures = self.lease_failures,
                status_writes = self.status_writes,
                status_failures = self.status_failures,
                %first_error,
                "some node heartbeats failed; retrying next round"
            ),
            None => tracing::debug!(
                nodes = self.nodes,
                status_writes = self.status_writes,
                "node heartbeats sent"
            ),
        }
    }
}
