//! Node-pressure eviction, as the kubelet's eviction manager does it: every
//! monitoring interval the eviction signals are observed against the hard
//! thresholds; a crossed threshold shows as the Node's MemoryPressure,
//! DiskPressure or PIDPressure condition (kept for the pressure transition
//! period after the last crossing, so the condition does not flap), and
//! one pod is evicted per interval, ranked by `rank`. Pods over their
//! local storage limits (`local_storage`) are evicted whatever the
//! pressure. Critical pods (static, mirror, system priority) never are.
//!
//! The node controller turns the conditions into `NoSchedule` taints
//! (TaintNodesByCondition); the agent only reports them.

pub mod local_storage;
pub mod rank;
pub mod signals;
pub mod thresholds;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use rudder_cri::NodeRuntime;
use tokio::sync::Notify;

use self::local_storage::Layout;
use self::rank::{Candidate, ThresholdMet};
use self::signals::Observations;
pub use self::thresholds::{Pressure, Signal, Threshold};
use crate::pods::{Eviction, PodManager};

/// How long the eviction manager waits for an evicted pod's containers to
/// be gone before it looks at the node again (`podCleanupTimeout`).
const POD_CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the eviction manager runs.
#[derive(Clone, Debug)]
pub struct EvictionConfig {
    /// Hard thresholds (`--eviction-hard`).
    pub thresholds: Vec<Threshold>,
    /// How often signals are observed (the kubelet: 10 s).
    pub monitoring_interval: Duration,
    /// How long a pressure condition stays after its threshold was last
    /// crossed (`--eviction-pressure-transition-period`, 5 min).
    pub pressure_transition_period: Duration,
}

impl Default for EvictionConfig {
    fn default() -> EvictionConfig {
        EvictionConfig {
            thresholds: thresholds::default_hard(),
            monitoring_interval: Duration::from_secs(10),
            pressure_transition_period: Duration::from_secs(300),
        }
    }
}

/// The node's current pressure conditions, shared between the eviction
/// manager (which sets them) and the Node status (which reports them).
#[derive(Clone, Debug, Default)]
pub struct NodePressure {
    inner: Arc<PressureState>,
}

#[derive(Debug, Default)]
struct PressureState {
    current: Mutex<BTreeSet<Pressure>>,
    changed: Notify,
}

impl NodePressure {
    pub fn current(&self) -> BTreeSet<Pressure> {
        self.inner.current.lock().unwrap().clone()
    }

    pub fn has(&self, pressure: Pressure) -> bool {
        self.inner.current.lock().unwrap().contains(&pressure)
    }

    /// Replaces the conditions; wakes [`NodePressure::changed`] waiters if
    /// they differ.
    pub fn set(&self, pressures: BTreeSet<Pressure>) {
        let mut current = self.inner.current.lock().unwrap();
        if *current != pressures {
            *current = pressures;
            // One listener (the Node status loop): a change it is not yet
            // waiting for is kept for its next wait.
            self.inner.changed.notify_one();
        }
    }

    /// Resolves at the next change.
    pub async fn changed(&self) {
        self.inner.changed.notified().await
    }
}

/// Which pressures `observations` put the node under, given when each was
/// last seen: the ones crossed now, and those seen within `period`.
pub fn pressures(
    met: &[Threshold],
    last_seen: &mut BTreeMap<Pressure, Instant>,
    period: Duration,
    now: Instant,
) -> BTreeSet<Pressure> {
    for t in met {
        last_seen.insert(t.signal.pressure(), now);
    }
    last_seen.retain(|_, at| now.duration_since(*at) < period);
    let mut current: BTreeSet<Pressure> = last_seen.keys().copied().collect();
    current.extend(met.iter().map(|t| t.signal.pressure()));
    current
}

/// The thresholds `observations` cross; memory first (the kubelet reclaims
/// memory before anything else), signals without a reading never.
pub fn thresholds_met(thresholds: &[Threshold], observations: &Observations) -> Vec<Threshold> {
    let mut met: Vec<Threshold> = thresholds
        .iter()
        .filter(|t| {
            observations
                .get(&t.signal)
                .is_some_and(|o| t.met(o.available, o.capacity))
        })
        .copied()
        .collect();
    met.sort_by_key(|t| t.signal != Signal::MemoryAvailable);
    met
}

/// The agent's eviction manager.
pub struct EvictionManager {
    config: EvictionConfig,
    pods: PodManager,
    runtime: Arc<NodeRuntime>,
    pressure: NodePressure,
    data_dir: PathBuf,
    layout: Layout,
    last_seen: BTreeMap<Pressure, Instant>,
}

impl EvictionManager {
    pub fn new(
        config: EvictionConfig,
        pods: PodManager,
        runtime: Arc<NodeRuntime>,
        pressure: NodePressure,
        data_dir: PathBuf,
    ) -> EvictionManager {
        let layout = Layout {
            pods_dir: data_dir.join("pods"),
            logs_dir: data_dir.join("logs").join("pods"),
        };
        EvictionManager {
            config,
            pods,
            runtime,
            pressure,
            data_dir,
            layout,
            last_seen: BTreeMap::new(),
        }
    }

    /// Runs until the process ends.
    pub async fn run(mut self) {
        loop {
            let evicted = self.synchronize().await;
            if evicted.is_empty() {
                tokio::time::sleep(self.config.monitoring_interval).await;
            } else {
                self.wait_for_cleanup(&evicted).await;
            }
        }
    }

    /// One pass: observe, report pressure, evict. Returns the uids of the
    /// pods evicted.
    async fn synchronize(&mut self) -> Vec<String> {
        let data_dir = self.data_dir.clone();
        let image_dir = self.runtime.images().root().to_path_buf();
        let observations =
            tokio::task::spawn_blocking(move || signals::observe(&data_dir, &image_dir))
                .await
                .unwrap_or_default();
        let met = thresholds_met(&self.config.thresholds, &observations);
        let pressures = pressures(
            &met,
            &mut self.last_seen,
            self.config.pressure_transition_period,
            Instant::now(),
        );
        if pressures != self.pressure.current() {
            tracing::info!(?pressures, "eviction: node pressure changed");
        }
        self.pressure.set(pressures);

        let active = self.pods.active_pods();
        let runtime = self.runtime.clone();
        let layout = self.layout.clone();
        let measured = active.clone();
        let usage = tokio::task::spawn_blocking(move || {
            local_storage::measure(&*runtime, &layout, &measured)
        })
        .await
        .unwrap_or_default();

        let mut evicted = Vec::new();
        for pod in &active {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let Some(message) = usage
                .get(&uid)
                .and_then(|u| local_storage::limit_violation(pod, u))
            else {
                continue;
            };
            if self.evict(pod, message, false).await {
                evicted.push(uid);
            }
        }
        if !evicted.is_empty() {
            return evicted;
        }

        let Some(threshold) = met.first() else {
            return evicted;
        };
        let resource = threshold.signal.resource();
        tracing::info!(signal = %threshold.signal, resource = resource.name(), "eviction: must evict a pod to reclaim");
        let threshold_met = observations.get(&threshold.signal).map(|o| ThresholdMet {
            quantity: threshold.quantity(o.capacity),
            available: o.available,
        });
        let mut candidates: Vec<Candidate> = active
            .iter()
            .map(|pod| Candidate {
                pod: pod.clone(),
                usage: usage
                    .get(pod.metadata.uid.as_deref().unwrap_or_default())
                    .cloned(),
            })
            .collect();
        rank::rank(&mut candidates, resource);
        for candidate in candidates {
            let message = rank::eviction_message(
                resource,
                threshold_met.as_ref(),
                &candidate.pod,
                candidate.usage.as_ref(),
            );
            if self.evict(&candidate.pod, message, true).await {
                evicted.push(candidate.pod.metadata.uid.clone().unwrap_or_default());
                return evicted;
            }
        }
        tracing::warn!("eviction: unable to evict any pod from the node");
        evicted
    }

    /// Evicts one pod unless it is critical; whether it was.
    async fn evict(&self, pod: &Arc<Pod>, message: String, node_pressure: bool) -> bool {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        if rank::is_critical(pod) {
            tracing::warn!(pod = %name, %namespace, "eviction: cannot evict a critical pod");
            return false;
        }
        tracing::info!(pod = %name, %namespace, %message, "evicting pod");
        self.pods.evict(
            pod,
            Eviction {
                message,
                disruption_condition: node_pressure,
            },
        );
        true
    }

    async fn wait_for_cleanup(&self, uids: &[String]) {
        let deadline = Instant::now() + POD_CLEANUP_TIMEOUT;
        while Instant::now() < deadline {
            if uids.iter().all(|uid| self.pods.eviction_finished(uid)) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tracing::info!(pods = ?uids, "eviction: timed out waiting for evicted pods to be cleaned up");
    }
}

#[cfg(test)]
mod tests {
    use super::signals::Observation;
    use super::*;

    #[test]
    fn crossed_thresholds_put_the_node_under_pressure_for_the_transition_period() {
        let thresholds =
            thresholds::parse_hard("memory.available<100Mi,nodefs.available<10%,pid.available<100")
                .unwrap();
        let mut observations = Observations::new();
        observations.insert(
            Signal::MemoryAvailable,
            Observation {
                available: 50 << 20,
                capacity: 1 << 30,
            },
        );
        observations.insert(
            Signal::NodeFsAvailable,
            Observation {
                available: 5,
                capacity: 100,
            },
        );
        observations.insert(
            Signal::PidAvailable,
            Observation {
                available: 1000,
                capacity: 4096,
            },
        );
        let met = thresholds_met(&thresholds, &observations);
        assert_eq!(
            met.iter().map(|t| t.signal).collect::<Vec<_>>(),
            [Signal::MemoryAvailable, Signal::NodeFsAvailable],
            "memory first; pids have room"
        );

        let period = Duration::from_secs(300);
        let start = Instant::now();
        let mut last_seen = BTreeMap::new();
        assert_eq!(
            pressures(&met, &mut last_seen, period, start),
            BTreeSet::from([Pressure::Memory, Pressure::Disk])
        );
        // Relieved, but within the transition period: still reported.
        let later = start + Duration::from_secs(60);
        assert_eq!(
            pressures(&met[1..], &mut last_seen, period, later),
            BTreeSet::from([Pressure::Memory, Pressure::Disk])
        );
        // Past it: gone, while disk stays crossed.
        let much_later = start + Duration::from_secs(301);
        assert_eq!(
            pressures(&met[1..], &mut last_seen, period, much_later),
            BTreeSet::from([Pressure::Disk])
        );
        assert_eq!(
            pressures(&[], &mut last_seen, period, much_later + period),
            BTreeSet::new()
        );
    }

    #[test]
    fn pressure_changes_wake_waiters() {
        let pressure = NodePressure::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let waiter = {
                let pressure = pressure.clone();
                tokio::spawn(async move { pressure.changed().await })
            };
            tokio::task::yield_now().await;
            pressure.set(BTreeSet::from([Pressure::Memory]));
            waiter.await.unwrap();
        });
        assert!(pressure.has(Pressure::Memory));
        assert!(!pressure.has(Pressure::Disk));
    }
}
