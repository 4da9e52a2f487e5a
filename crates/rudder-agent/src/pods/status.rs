//! A pod's status as the kubelet reports it, from what the runtime says of
//! its containers and what the agent knows (back-offs, probes, pull errors).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rudder_cri::cri::{self, ContainerState as CriState};

/// One container the runtime knows of, for one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub attempt: u32,
    pub state: CriState,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub image: String,
    pub image_ref: String,
}

impl ContainerRecord {
    pub fn from_status(status: &cri::ContainerStatus) -> ContainerRecord {
        ContainerRecord {
            id: status.id.clone(),
            name: status.metadata.name.clone(),
            attempt: status.metadata.attempt,
            state: status.state,
            exit_code: status.exit_code,
            reason: status.reason.clone(),
            message: status.message.clone(),
            created_at: status.created_at,
            started_at: status.started_at,
            finished_at: status.finished_at,
            image: status.image.image.clone(),
            image_ref: status.image_ref.clone(),
        }
    }

    pub fn running(&self) -> bool {
        self.state == CriState::ContainerRunning
    }

    pub fn exited(&self) -> bool {
        self.state == CriState::ContainerExited
    }
}

/// Why a container is not running, when the agent knows better than the
/// runtime (it has not been created yet, or waits for a back-off).
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// What the agent knows beyond the runtime, per container name.
#[derive(Clone, Debug, Default)]
pub struct PodFacts {
    pub sandbox_ready: bool,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub waiting: BTreeMap<String, Waiting>,
    /// Readiness by container id (true when the container has no readiness
    /// probe and runs; started with startup probes likewise).
    pub ready: BTreeMap<String, bool>,
    pub started: BTreeMap<String, bool>,
    /// The init containers failed for good (restartPolicy Never).
    pub init_failed: bool,
}

pub fn time(nanos: i64) -> Option<Time> {
    if nanos <= 0 {
        return None;
    }
    k8s_openapi::jiff::Timestamp::from_nanosecond(nanos as i128)
        .ok()
        .map(Time)
}

fn container_id(id: &str) -> String {
    format!("rudder://{id}")
}

fn terminated(record: &ContainerRecord) -> ContainerStateTerminated {
    let reason = if record.reason.is_empty() {
        if record.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .to_string()
    } else {
        record.reason.clone()
    };
    ContainerStateTerminated {
        exit_code: record.exit_code,
        reason: Some(reason),
        message: (!record.message.is_empty()).then(|| record.message.clone()),
        started_at: time(record.started_at),
        finished_at: time(record.finished_at),
        container_id: Some(container_id(&record.id)),
        signal: None,
    }
}

/// The status of one container: the newest record is its state, the one
/// before its lastState.
pub fn container_status(
    name: &str,
    image: &str,
    records: &[&ContainerRecord],
    facts: &PodFacts,
) -> ContainerStatus {
    let latest = records
        .iter()
        .max_by_key(|r| (r.attempt, r.created_at))
        .copied();
    let previous = records
        .iter()
        .filter(|r| Some(r.id.as_str()) != latest.map(|l| l.id.as_str()))
        .max_by_key(|r| (r.attempt, r.created_at))
        .copied();
    let waiting = facts.waiting.get(name);
    let state = match (latest, waiting) {
        (_, Some(w)) if latest.is_none_or(|l| !l.running()) => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(w.reason.clone()),
                message: (!w.message.is_empty()).then(|| w.message.clone()),
            }),
            ..ContainerState::default()
        },
        (Some(l), _) if l.running() => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: time(l.started_at),
            }),
            ..ContainerState::default()
        },
        (Some(l), _) if l.exited() => ContainerState {
            terminated: Some(terminated(l)),
            ..ContainerState::default()
        },
        _ => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..ContainerState::default()
        },
    };
    // A container restarting after an exit shows that exit as lastState.
    let last_state = match (latest, previous) {
        (Some(l), _) if l.exited() && state.waiting.is_some() => Some(ContainerState {
            terminated: Some(terminated(l)),
            ..ContainerState::default()
        }),
        (_, Some(p)) if p.exited() => Some(ContainerState {
            terminated: Some(terminated(p)),
            ..ContainerState::default()
        }),
        _ => None,
    };
    let running_id = latest.filter(|l| l.running()).map(|l| l.id.clone());
    let ready = running_id
        .as_ref()
        .is_some_and(|id| facts.ready.get(id).copied().unwrap_or(false));
    let started = running_id
        .as_ref()
        .map(|id| facts.started.get(id).copied().unwrap_or(true));
    ContainerStatus {
        name: name.to_string(),
        image: image.to_string(),
        image_id: latest.map(|l| l.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|l| container_id(&l.id)),
        ready,
        started: Some(started.unwrap_or(false)),
        restart_count: latest.map(|l| l.attempt as i32).unwrap_or(0),
        state: Some(state),
        last_state: Some(last_state.unwrap_or_default()),
        ..ContainerStatus::default()
    }
}

fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    old: &[PodCondition],
    now: &Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let transition = old
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: kind.into(),
        status: status.into(),
        reason: if ok { None } else { reason.map(String::from) },
        last_transition_time: Some(transition),
        last_probe_time: None,
        message: None,
        observed_generation: None,
    }
}

/// The whole status; the phase per Kubernetes' rules.
pub fn pod_status(pod: &Pod, records: &[ContainerRecord], facts: &PodFacts) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.clone().unwrap_or_default();
    let old_conditions = old.conditions.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let of = |name: &str| -> Vec<&ContainerRecord> {
        records.iter().filter(|r| r.name == name).collect()
    };

    let init_statuses: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            container_status(
                &c.name,
                c.image.as_deref().unwrap_or_default(),
                &of(&c.name),
                facts,
            )
        })
        .collect();
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| {
            container_status(
                &c.name,
                c.image.as_deref().unwrap_or_default(),
                &of(&c.name),
                facts,
            )
        })
        .collect();

    let init_done = init_statuses.iter().all(|s| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    });
    let terminated: Vec<&ContainerStateTerminated> = statuses
        .iter()
        .filter_map(|s| s.state.as_ref().and_then(|st| st.terminated.as_ref()))
        .collect();
    let running = statuses
        .iter()
        .filter(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()))
        .count();
    let all_terminated = !statuses.is_empty() && terminated.len() == statuses.len();
    let any_failed = terminated.iter().any(|t| t.exit_code != 0);
    let phase = if facts.init_failed {
        "Failed"
    } else if !init_done {
        "Pending"
    } else if all_terminated && restart_policy != "Always" {
        if any_failed && restart_policy == "Never" {
            "Failed"
        } else if !any_failed {
            "Succeeded"
        } else {
            "Running"
        }
    } else if running > 0 || statuses.iter().any(|s| s.restart_count > 0) {
        "Running"
    } else {
        "Pending"
    };
    let containers_ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            facts.sandbox_ready || terminal && facts.pod_ip.is_some(),
            None,
            &old_conditions,
            &now,
        ),
        condition(
            "Initialized",
            init_done,
            Some("ContainersNotInitialized"),
            &old_conditions,
            &now,
        ),
        condition(
            "Ready",
            containers_ready && !terminal,
            Some(if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            &old_conditions,
            &now,
        ),
        condition(
            "ContainersReady",
            containers_ready && !terminal,
            Some(if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            &old_conditions,
            &now,
        ),
    ];
    for kept in old_conditions
        .iter()
        .filter(|c| c.type_ == "PodScheduled" || c.type_ == "DisruptionTarget")
    {
        conditions.push(kept.clone());
    }
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(facts.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: facts.host_ip.clone(),
        }]),
        pod_ip: facts.pod_ip.clone(),
        pod_ips: facts.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: old.start_time.clone().or(Some(now)),
        qos_class: old.qos_class.clone(),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        ..PodStatus::default()
    }
}

/// Whether two statuses differ in what the agent reports (ignoring
/// timestamps that are recomputed each time).
pub fn differs(a: &PodStatus, b: &PodStatus) -> bool {
    let strip = |s: &PodStatus| {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        if let Some(conditions) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
            for c in conditions {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                    o.remove("lastProbeTime");
                }
            }
        }
        v
    };
    strip(a) != strip(b)
}
