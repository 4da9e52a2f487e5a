//! Evicting a pod: the eviction manager marks it, and the pod's own worker
//! (so nothing restarts behind it) stops its containers within a second,
//! stops the sandbox, and reports the pod Failed with reason `Evicted`,
//! as the kubelet's `TerminatePodAbnormallyAndWait` does. An evicted pod
//! stays stopped for the rest of its life, agent restarts included (its
//! status says so).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rudder_cri::cri::{PodSandbox, PodSandboxState, RuntimeService};
use rudder_runtime::events::EventType;

use super::status::{self, ContainerRecord, PodFacts};
use super::{config, unlimited_blocking, Next, PodManager};

/// The status reason of an evicted pod.
pub const REASON: &str = "Evicted";
/// The grace period evicted pods get (`immediateEvictionGracePeriodSeconds`).
const EVICTION_GRACE: Duration = Duration::from_secs(1);

/// Why the agent ends a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Eviction {
    pub message: String,
    /// Node-pressure evictions add the `DisruptionTarget` condition
    /// (reason `TerminationByKubelet`); local storage limit ones do not.
    pub disruption_condition: bool,
}

/// An eviction in progress or done, in the pod's worker state.
#[derive(Clone, Debug)]
pub(super) struct EvictionState {
    eviction: Eviction,
    finished: bool,
}

/// Whether an API status is that of an evicted pod (`PodIsEvicted`).
pub fn is_evicted(status: Option<&PodStatus>) -> bool {
    status.is_some_and(|s| {
        s.phase.as_deref() == Some("Failed") && s.reason.as_deref() == Some(REASON)
    })
}

/// Turns the status computed from the stopped containers into an evicted
/// pod's: phase Failed, reason and message, not ready, and the
/// `DisruptionTarget` condition when asked for.
pub fn evicted_status(mut status: PodStatus, eviction: &Eviction, now: &Time) -> PodStatus {
    status.phase = Some("Failed".into());
    status.reason = Some(REASON.into());
    status.message = Some(eviction.message.clone());
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    for c in conditions
        .iter_mut()
        .filter(|c| c.type_ == "Ready" || c.type_ == "ContainersReady")
    {
        if c.status != "False" {
            c.last_transition_time = Some(now.clone());
        }
        c.status = "False".into();
        c.reason = Some("PodCompleted".into());
    }
    if eviction.disruption_condition && !conditions.iter().any(|c| c.type_ == "DisruptionTarget") {
        conditions.push(PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("TerminationByKubelet".into()),
            message: Some(eviction.message.clone()),
            last_transition_time: Some(now.clone()),
            ..PodCondition::default()
        });
    }
    status
}

impl PodManager {
    /// The pods the eviction manager may pick from: running or about to,
    /// not being deleted, not evicted already.
    pub fn active_pods(&self) -> Vec<Arc<Pod>> {
        let uids: Vec<String> = self.inner.workers.lock().unwrap().keys().cloned().collect();
        uids.iter()
            .filter(|uid| self.eviction_state(uid).is_none())
            .filter_map(|uid| self.pod(uid))
            .filter(|pod| {
                pod.metadata.deletion_timestamp.is_none()
                    && !matches!(
                        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
            })
            .collect()
    }

    /// Evicts `pod`: records the `Evicted` event and hands the pod to its
    /// worker to stop. [`PodManager::eviction_finished`] says when it is done.
    pub fn evict(&self, pod: &Pod, eviction: Eviction) {
        let uid = config::uid(pod);
        self.inner
            .recorder
            .record(pod, EventType::Warning, REASON, &eviction.message);
        if let Some(state) = self.state(&uid).get_mut(&uid) {
            state.eviction = Some(EvictionState {
                eviction,
                finished: false,
            });
        }
        self.wake(&uid);
    }

    /// Whether an evicted pod's containers are stopped and its status
    /// written (or the pod is gone altogether).
    pub fn eviction_finished(&self, uid: &str) -> bool {
        let states = self.inner.states.lock().unwrap();
        states
            .get(uid)
            .is_none_or(|s| s.eviction.as_ref().is_none_or(|e| e.finished))
    }

    fn eviction_state(&self, uid: &str) -> Option<EvictionState> {
        self.inner
            .states
            .lock()
            .unwrap()
            .get(uid)
            .and_then(|s| s.eviction.clone())
    }

    /// The eviction a pod is under: marked by the eviction manager, or
    /// (after an agent restart) recorded in its status.
    pub(super) fn eviction_of(&self, uid: &str, pod: &Pod) -> Option<Eviction> {
        if let Some(state) = self.eviction_state(uid) {
            return Some(state.eviction);
        }
        let status = pod.status.as_ref();
        is_evicted(status).then(|| Eviction {
            message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
            disruption_condition: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "DisruptionTarget")),
        })
    }

    /// The worker's sync of an evicted pod: stop whatever runs, report.
    pub(super) async fn sync_evicted(
        &self,
        pod: &Arc<Pod>,
        sandboxes: &[PodSandbox],
        records: &[ContainerRecord],
        eviction: Eviction,
    ) -> anyhow::Result<Next> {
        let uid = config::uid(pod);
        let mut stops = Vec::new();
        for record in records.iter().filter(|r| r.running()) {
            let this = self.clone();
            let pod = pod.clone();
            let record = record.clone();
            stops.push(tokio::spawn(async move {
                let container = pod.spec.as_ref().and_then(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                        .find(|c| c.name == record.name)
                        .cloned()
                });
                match container {
                    Some(container) => {
                        this.stop_container(&pod, &container, &record.id, EVICTION_GRACE)
                            .await
                    }
                    None => {
                        let runtime = this.inner.runtime.clone();
                        let _ = unlimited_blocking(move || {
                            RuntimeService::stop_container(&*runtime, &record.id, EVICTION_GRACE)
                        })
                        .await;
                    }
                }
            }));
        }
        for stop in stops {
            let _ = stop.await;
        }
        for sandbox in sandboxes
            .iter()
            .filter(|s| s.state == PodSandboxState::SandboxReady)
        {
            self.stop_sandbox(&sandbox.id).await;
        }

        let (_, records) = self.records(&uid).await?;
        let facts = PodFacts {
            sandbox_ready: false,
            pod_ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
            host_ip: self.inner.config.host_ip.clone(),
            ..PodFacts::default()
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let new = evicted_status(status::pod_status(pod, &records, &facts), &eviction, &now);
        let old = self
            .state(&uid)
            .get(&uid)
            .and_then(|s| s.last_status.clone())
            .or_else(|| pod.status.clone())
            .unwrap_or_default();
        if status::differs(&old, &new) {
            self.write_status(pod, &new).await?;
        }
        if let Some(state) = self.state(&uid).get_mut(&uid) {
            state.last_status = Some(new);
            state.eviction = Some(EvictionState {
                eviction,
                finished: true,
            });
        }
        Ok(Next::After(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicted_status_is_failed_with_reason_message_and_condition() {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let running: PodStatus = serde_json::from_value(serde_json::json!({
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
            ],
        }))
        .unwrap();
        let pressure = Eviction {
            message: "The node was low on resource: memory. ".into(),
            disruption_condition: true,
        };
        let status = evicted_status(running.clone(), &pressure, &now);
        assert!(is_evicted(Some(&status)));
        assert_eq!(status.message.as_deref(), Some(pressure.message.as_str()));
        let conditions = status.conditions.unwrap();
        let of = |kind: &str| conditions.iter().find(|c| c.type_ == kind).unwrap();
        assert_eq!(of("Ready").status, "False");
        assert_eq!(
            of("ContainersReady").reason.as_deref(),
            Some("PodCompleted")
        );
        assert_eq!(of("PodScheduled").status, "True");
        let disruption = of("DisruptionTarget");
        assert_eq!(disruption.status, "True");
        assert_eq!(disruption.reason.as_deref(), Some("TerminationByKubelet"));
        assert_eq!(
            disruption.message.as_deref(),
            Some(pressure.message.as_str())
        );

        let limit = Eviction {
            message: "Container c exceeded its local ephemeral storage limit \"1Mi\". ".into(),
            disruption_condition: false,
        };
        let status = evicted_status(running, &limit, &now);
        assert!(!status
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "DisruptionTarget"));
        assert!(!is_evicted(None));
    }
}
