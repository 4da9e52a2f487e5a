//! The Service proxy every node agent runs: Services' cluster IPs, node
//! ports and load-balancer IPs DNATed to their endpoints by nftables, as
//! kube-proxy's nftables mode does (the layout is described in
//! `render`).
//!
//! [`Proxier::sync`] takes the wanted state (every [`ServiceState`]) and
//! programs it with one `nft -f -` transaction: the first sync (and any
//! sync after a failure it could not pin on a Service) replaces the whole
//! table at once, later ones rewrite only the chains, sets and map
//! elements of the Service ports that changed (kube-proxy's partial
//! sync). A table left by an earlier run keeps serving until the first
//! sync replaces it. A Service port whose rules the kernel refuses is set
//! aside, reported, and retried when it changes; the others are programmed
//! without it.
//!
//! Same-node traffic: a pod reaching a Service whose chosen endpoint is
//! another pod on the same bridge gets its reply straight over the bridge;
//! unless bridged packets pass the host's netfilter hooks, that reply
//! skips the conntrack entry that would un-DNAT it and the client drops
//! it. [`ensure_bridge_netfilter`] turns on `br_netfilter`'s
//! `net.bridge.bridge-nf-call-iptables` (per network namespace since Linux
//! 5.3, so each agent in its own namespace sets its own); where the module
//! is missing, [`ProxyConfig::masquerade_all`] masquerades every
//! cluster-IP connection instead, at the price of the pods' source
//! addresses.

mod model;
mod render;
mod script;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use model::{Endpoint, Protocol, ServicePort, ServicePortName, ServiceState};
pub use render::LocalDetector;
// Shared with NetworkPolicy; re-exported where the proxy's users look.
pub use crate::bridge::{ensure_bridge_netfilter, BridgeNetfilter};

use crate::cmd::{find_tool, Tool};
use crate::NetworkError;
use render::{ElementKey, RenderConfig, Rendered};
use script::{Change, Elements, Script};

/// The proxy's table unless configured (`ip rudder-proxy`).
pub const DEFAULT_TABLE: &str = "rudder-proxy";

/// How many times one sync sets aside Services the kernel refused and
/// tries again before giving up until the next sync.
const BLAME_ROUNDS: usize = 4;

/// How the proxy is set up on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The nftables table (family `ip`).
    pub table: String,
    /// How the node's pods' traffic is recognized.
    pub local: LocalDetector,
    /// Masquerade every connection to a cluster IP (when bridged traffic
    /// does not pass netfilter; see the module docs).
    pub masquerade_all: bool,
}

impl ProxyConfig {
    pub fn new(local: LocalDetector) -> ProxyConfig {
        ProxyConfig {
            table: DEFAULT_TABLE.to_string(),
            local,
            masquerade_all: false,
        }
    }
}

/// What a sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    /// The whole table was replaced (else only changes were written).
    pub full: bool,
    /// Service ports programmed.
    pub services: usize,
    /// Service ports whose rules were (re)written or removed.
    pub changed: usize,
    /// Commands in the transaction (0: nothing to do, nft not run).
    pub commands: usize,
    /// Service ports left out: their rules could not be rendered or the
    /// kernel refused them, with why. Still left out while unchanged.
    pub rejected: Vec<(ServicePortName, String)>,
    /// Service ports that claim an address and port another one already
    /// has (the first by name keeps it), with the contested element.
    pub conflicts: Vec<(ServicePortName, String)>,
    /// Time spent, rendering and `nft` included.
    pub elapsed: Duration,
    /// Of which running `nft` (parsing, the kernel's commit).
    pub nft_elapsed: Duration,
}

/// What the table holds after the last successful sync.
#[derive(Debug, Default)]
struct Applied {
    services: BTreeMap<ServicePortName, (ServiceState, Rendered)>,
    elements: Elements,
    owners: BTreeMap<ElementKey, ServicePortName>,
}

/// Programs the Service rules of one node.
#[derive(Debug)]
pub struct Proxier {
    config: ProxyConfig,
    render: RenderConfig,
    /// `None` until a full sync succeeded, and after a failed one.
    applied: Option<Applied>,
    /// Service ports refused, with the state that was refused and why.
    rejected: BTreeMap<ServicePortName, (ServiceState, String)>,
}

impl Proxier {
    /// Checks the configuration; touches nothing.
    pub fn new(config: ProxyConfig) -> Result<Proxier, NetworkError> {
        validate_table(&config.table)?;
        let render = RenderConfig {
            local: config.local.clone(),
            masquerade_all: config.masquerade_all,
        };
        render.check()?;
        Ok(Proxier {
            config,
            render,
            applied: None,
            rejected: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Makes the next sync a full one (the table was found missing, or
    /// someone else changed it).
    pub fn invalidate(&mut self) {
        self.applied = None;
    }

    /// Whether the next sync will replace the whole table.
    pub fn needs_full_sync(&self) -> bool {
        self.applied.is_none()
    }

    /// The Service ports of `wanted` that are not programmed as wanted
    /// (all of them before the first successful sync), and those
    /// programmed but no longer wanted: what a failing sync leaves undone.
    pub fn pending(
        &self,
        wanted: &BTreeMap<ServicePortName, ServiceState>,
    ) -> Vec<ServicePortName> {
        let Some(applied) = &self.applied else {
            return wanted.keys().cloned().collect();
        };
        let mut pending: Vec<ServicePortName> = wanted
            .iter()
            .filter(|(name, state)| {
                applied.services.get(*name).map(|(s, _)| s) != Some(*state)
                    && !self.rejected.contains_key(*name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        pending.extend(
            applied
                .services
                .keys()
                .filter(|name| !wanted.contains_key(*name))
                .cloned(),
        );
        pending
    }

    /// Whether the table exists (a cheap listing of table names).
    pub fn table_exists(&self) -> Result<bool, NetworkError> {
        table_exists(&self.config.table)
    }

    /// Programs `wanted`: a full sync the first time, then only what
    /// changed. A partial sync the kernel refuses (someone changed the
    /// table behind our back) is retried at once as a full one. An `Err`
    /// means nothing was applied; the next call then replaces the whole
    /// table.
    pub fn sync(
        &mut self,
        wanted: &BTreeMap<ServicePortName, ServiceState>,
    ) -> Result<SyncReport, NetworkError> {
        let start = Instant::now();
        // Until this sync succeeds, the table's content is not known.
        let previous = self.applied.take();
        let mut full = previous.is_none();
        // Render what changed since the last sync; reuse the rest.
        let mut rendered: BTreeMap<&ServicePortName, Rendered> = BTreeMap::new();
        let mut reused: BTreeMap<&ServicePortName, &Rendered> = BTreeMap::new();
        let mut rejected = Vec::new();
        self.rejected
            .retain(|name, (state, _)| wanted.get(name) == Some(state));
        for (name, state) in wanted {
            if let Some((_, why)) = self.rejected.get(name) {
                rejected.push((name.clone(), why.clone()));
                continue;
            }
            if let Some((old_state, old)) = previous.as_ref().and_then(|p| p.services.get(name)) {
                if old_state == state {
                    reused.insert(name, old);
                    continue;
                }
            }
            match render::service(&self.render, state) {
                Ok(r) => {
                    rendered.insert(name, r);
                }
                Err(e) => {
                    self.rejected
                        .insert(name.clone(), (state.clone(), e.to_string()));
                    rejected.push((name.clone(), e.to_string()));
                }
            }
        }
        // Service ports the kernel refused in this sync, with why.
        let mut left_out: BTreeMap<ServicePortName, String> = BTreeMap::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let all: BTreeMap<&ServicePortName, &Rendered> = reused
                .iter()
                .map(|(n, r)| (*n, *r))
                .chain(rendered.iter().map(|(n, r)| (*n, r)))
                .filter(|(n, _)| !left_out.contains_key(*n))
                .collect();
            let (elements, owners, conflicts) = collect_elements(&all);
            let (script, changed) = match previous.as_ref().filter(|_| !full) {
                None => (
                    script::full(
                        &self.config.table,
                        all.iter().map(|(n, r)| (*n, *r)),
                        &elements,
                        &owners,
                    ),
                    all.len(),
                ),
                Some(applied) => {
                    let changes = changes(applied, &all);
                    let changed = changes.len();
                    (
                        script::partial(
                            &self.config.table,
                            &changes,
                            &applied.elements,
                            &elements,
                            &applied.owners,
                            &owners,
                        ),
                        changed,
                    )
                }
            };
            drop(all);
            let nft_start = Instant::now();
            let outcome = if script.is_empty() {
                Ok(())
            } else {
                apply(&script)
            };
            let nft_elapsed = nft_start.elapsed();
            let error = match outcome {
                Ok(()) => {
                    // Unchanged ports move over from the last sync: at
                    // thousands of ports, copying their rules would cost
                    // more than the update itself.
                    let mut old = previous.map(|a| a.services).unwrap_or_default();
                    let mut services = BTreeMap::new();
                    for (name, state) in wanted {
                        if left_out.contains_key(name) || self.rejected.contains_key(name) {
                            continue;
                        }
                        if let Some(r) = rendered.remove(name) {
                            services.insert(name.clone(), (state.clone(), r));
                        } else if let Some(unchanged) = old.remove(name) {
                            services.insert(name.clone(), unchanged);
                        }
                    }
                    for (name, why) in left_out {
                        if let Some(state) = wanted.get(&name) {
                            self.rejected
                                .insert(name.clone(), (state.clone(), why.clone()));
                        }
                        rejected.push((name, why));
                    }
                    let count = services.len();
                    self.applied = Some(Applied {
                        services,
                        elements,
                        owners,
                    });
                    rejected.sort();
                    return Ok(SyncReport {
                        full,
                        services: count,
                        changed,
                        commands: script.len(),
                        rejected,
                        conflicts,
                        elapsed: start.elapsed(),
                        nft_elapsed,
                    });
                }
                Err(e) => e,
            };
            if !full {
                tracing::info!(table = %self.config.table, error = %error, "a partial sync failed; replacing the whole table");
                full = true;
                continue;
            }
            // A full sync starts from an empty table: what the kernel
            // refuses is the content of the lines it names.
            let blamed = match &error {
                NetworkError::Command { stderr, .. } => script::blame(&script, stderr),
                _ => BTreeMap::new(),
            };
            let fresh: Vec<_> = blamed
                .into_iter()
                .filter(|(n, _)| !left_out.contains_key(n))
                .collect();
            if fresh.is_empty() || attempts > BLAME_ROUNDS {
                tracing::debug!(
                    table = %self.config.table,
                    "the failed transaction began with:\n{}",
                    script::preview(&script, 8)
                );
                return Err(error);
            }
            for (name, why) in fresh {
                tracing::warn!(service = %name, error = %why, "the kernel refused the rules of a service; leaving it out");
                left_out.insert(name, why);
            }
        }
    }
}

/// What a partial sync rewrites: the ports whose rules differ from the
/// applied ones, those new, and those gone.
fn changes<'a>(
    applied: &'a Applied,
    all: &BTreeMap<&'a ServicePortName, &'a Rendered>,
) -> Vec<Change<'a>> {
    static EMPTY: std::sync::OnceLock<Rendered> = std::sync::OnceLock::new();
    let empty = EMPTY.get_or_init(Rendered::default);
    let mut changes = Vec::new();
    for (name, new) in all {
        match applied.services.get(*name) {
            Some((_, old)) if std::ptr::eq(old, *new) || old == *new => {}
            Some((_, old)) => changes.push(Change { name, old, new }),
            None => changes.push(Change {
                name,
                old: empty,
                new,
            }),
        }
    }
    for (name, (_, old)) in &applied.services {
        if !all.contains_key(name) {
            changes.push(Change {
                name,
                old,
                new: empty,
            });
        }
    }
    changes
}

/// Every Service port's elements in name order; an element already claimed
/// by an earlier port stays with it, and the later port is reported.
#[allow(clippy::type_complexity)]
fn collect_elements(
    all: &BTreeMap<&ServicePortName, &Rendered>,
) -> (
    Elements,
    BTreeMap<ElementKey, ServicePortName>,
    Vec<(ServicePortName, String)>,
) {
    let mut elements = Elements::new();
    let mut owners: BTreeMap<ElementKey, ServicePortName> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (name, rendered) in all {
        for (key, value) in &rendered.elements {
            if let Some(owner) = owners.get(key) {
                // A cluster IP is shared by all ports of its Service.
                if owner != *name && value.is_some() {
                    conflicts.push((
                        (*name).clone(),
                        format!("{} {} is already used by {owner}", key.collection, key.key),
                    ));
                }
                continue;
            }
            owners.insert(key.clone(), (*name).clone());
            elements.insert(key.clone(), value.clone());
        }
    }
    (elements, owners, conflicts)
}

fn apply(script: &Script) -> Result<(), NetworkError> {
    Tool::new("nft")
        .args(["-f", "-"])
        .stdin(script.text())
        .run()
        .map(drop)
}

/// nftables names: letters, digits, `-`, `_`; at most 64 characters here.
fn validate_table(name: &str) -> Result<(), NetworkError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NetworkError::InvalidConfig(format!(
            "nftables table name {name:?}: expected a letter, then letters, digits, '-' or '_'"
        )))
    }
}

fn table_exists(table: &str) -> Result<bool, NetworkError> {
    let listing = Tool::new("nft").args(["list", "tables"]).run()?;
    Ok(listing
        .lines()
        .any(|l| l.trim() == format!("table ip {table}")))
}

/// `rudder reset`: deletes the proxy's table. Returns whether there was
/// one; no `nft` means nothing to remove.
pub fn remove(table: &str) -> Result<bool, NetworkError> {
    validate_table(table)?;
    if find_tool("nft").is_none() || !table_exists(table)? {
        return Ok(false);
    }
    Tool::new("nft")
        .args(["delete", "table", "ip", table])
        .run()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn state(
        name: &str,
        cluster_ip: [u8; 4],
        node_port: Option<u16>,
    ) -> (ServicePortName, ServiceState) {
        let n = ServicePortName::new("default", name, "", Protocol::Tcp);
        let mut port = ServicePort::cluster_ip(n.clone(), Ipv4Addr::from(cluster_ip), 80);
        port.node_port = node_port;
        (
            n,
            ServiceState {
                port,
                endpoints: vec![Endpoint::ready(Ipv4Addr::new(10, 42, 0, 9), 80, true)],
            },
        )
    }

    #[test]
    fn table_names_are_checked() {
        for good in ["rudder-proxy", "rdtpx_1", "a"] {
            validate_table(good).unwrap();
        }
        for bad in ["", "1abc", "a b", "a;b", &"x".repeat(65)] {
            assert!(validate_table(bad).is_err(), "{bad}");
        }
        assert!(Proxier::new(ProxyConfig {
            table: "bad name".into(),
            ..ProxyConfig::new(LocalDetector::None)
        })
        .is_err());
    }

    #[test]
    fn conflicting_node_ports_stay_with_the_first_service() {
        let (a, sa) = state("a", [10, 43, 0, 1], Some(30080));
        let (b, sb) = state("b", [10, 43, 0, 2], Some(30080));
        let config = RenderConfig {
            local: LocalDetector::None,
            masquerade_all: false,
        };
        let ra = render::service(&config, &sa).unwrap();
        let rb = render::service(&config, &sb).unwrap();
        let all: BTreeMap<&ServicePortName, &Rendered> =
            [(&a, &ra), (&b, &rb)].into_iter().collect();
        let (elements, owners, conflicts) = collect_elements(&all);
        let np = ElementKey {
            collection: render::SERVICE_NODEPORTS,
            key: "tcp . 30080".into(),
        };
        assert_eq!(owners[&np], a);
        assert_eq!(elements[&np].as_deref(), Some("goto ext-default/a/tcp/"));
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].0, b);
        assert!(conflicts[0].1.contains("tcp . 30080"), "{}", conflicts[0].1);
    }

    #[test]
    fn ports_of_one_service_share_its_cluster_ip() {
        let n80 = ServicePortName::new("default", "web", "http", Protocol::Tcp);
        let n443 = ServicePortName::new("default", "web", "https", Protocol::Tcp);
        let ip = Ipv4Addr::new(10, 43, 0, 1);
        let config = RenderConfig {
            local: LocalDetector::None,
            masquerade_all: false,
        };
        let render = |n: &ServicePortName, port| {
            render::service(
                &config,
                &ServiceState {
                    port: ServicePort::cluster_ip(n.clone(), ip, port),
                    endpoints: vec![],
                },
            )
            .unwrap()
        };
        let (r80, r443) = (render(&n80, 80), render(&n443, 443));
        let all: BTreeMap<&ServicePortName, &Rendered> =
            [(&n80, &r80), (&n443, &r443)].into_iter().collect();
        let (elements, _, conflicts) = collect_elements(&all);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        assert_eq!(elements.len(), 3, "{elements:?}");
    }
}
