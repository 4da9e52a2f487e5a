//! What a simulated kubelet does with a pod, and the status it reports:
//! every container starts at once and is ready at once.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// What a pod on a simulated node needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PodAction {
    Nothing,
    /// Report it Running and Ready.
    MarkRunning,
    /// Its graceful deletion has begun: finish it, since a simulated node
    /// stops containers instantly.
    Delete,
}

/// The conditions a running pod reports, in the kubelet's order.
const RUNNING_CONDITIONS: [&str; 4] = ["Initialized", "Ready", "ContainersReady", "PodScheduled"];

pub(crate) fn next_action(pod: &Pod) -> PodAction {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodAction::Delete;
    }
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        // Finished pods stay as they are. Pods never finish here: Job pods
        // (restartPolicy Never/OnFailure) simply keep running. Simulating
        // completion would add an action here, decided from the pod's
        // spec or annotations.
        Some("Succeeded" | "Failed") => PodAction::Nothing,
        Some("Running") if is_ready(pod) && has_pod_ip(pod) => PodAction::Nothing,
        _ => PodAction::MarkRunning,
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn has_pod_ip(pod: &Pod) -> bool {
    pod_ip(pod).is_some()
}

/// The pod's reported IP, if it has a valid one.
pub(crate) fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
}

pub(crate) fn uses_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.host_network)
        .unwrap_or(false)
}

/// The status of `pod` running on a node at `host_ip` with `pod_ip`.
/// Keeps what is not the kubelet's to change: the QoS class, the start
/// time once set, conditions of other types, and the transition times of
/// conditions that were already true.
pub(crate) fn running_status(
    pod: &Pod,
    host_ip: Ipv4Addr,
    pod_ip: Ipv4Addr,
    now: Timestamp,
) -> PodStatus {
    let current = pod.status.clone().unwrap_or_default();
    let container_id_prefix: String = pod
        .metadata
        .uid
        .as_deref()
        .unwrap_or_default()
        .chars()
        .take(8)
        .collect();
    let started_at = Time(now);
    let spec = pod.spec.clone().unwrap_or_default();
    let container_statuses = spec
        .containers
        .iter()
        .map(|c| running_container(c, &container_id_prefix, &started_at))
        .collect();
    let init_container_statuses = spec
        .init_containers
        .as_ref()
        .filter(|init| !init.is_empty())
        .map(|init| {
            init.iter()
                .map(|c| {
                    // A restartable init container is a sidecar: it keeps
                    // running beside the main containers.
                    if c.restart_policy.as_deref() == Some("Always") {
                        running_container(c, &container_id_prefix, &started_at)
                    } else {
                        completed_init_container(c, &container_id_prefix, &started_at)
                    }
                })
                .collect()
        });
    PodStatus {
        phase: Some("Running".to_owned()),
        conditions: Some(running_conditions(
            current.conditions.unwrap_or_default(),
            now,
        )),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_string(),
        }]),
        pod_ip: Some(pod_ip.to_string()),
        pod_ips: Some(vec![PodIP {
            ip: pod_ip.to_string(),
        }]),
        start_time: Some(current.start_time.unwrap_or(Time(now))),
        container_statuses: Some(container_statuses),
        init_container_statuses,
        qos_class: current.qos_class,
        ..PodStatus::default()
    }
}

fn running_conditions(current: Vec<PodCondition>, now: Timestamp) -> Vec<PodCondition> {
    let mut conditions: Vec<PodCondition> = RUNNING_CONDITIONS
        .iter()
        .map(|type_| {
            let since = current
                .iter()
                .find(|c| c.type_ == *type_ && c.status == "True")
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            PodCondition {
                type_: (*type_).to_owned(),
                status: "True".to_owned(),
                last_transition_time: Some(since),
                ..PodCondition::default()
            }
        })
        .collect();
    conditions.extend(
        current
            .into_iter()
            .filter(|c| !RUNNING_CONDITIONS.contains(&c.type_.as_str())),
    );
    conditions
}

fn container_id(prefix: &str, container: &Container) -> String {
    format!("rudder-sim://{prefix}-{}", container.name)
}

fn image(container: &Container) -> String {
    container.image.clone().unwrap_or_default()
}

fn running_container(container: &Container, id_prefix: &str, started_at: &Time) -> ContainerStatus {
    ContainerStatus {
        name: container.name.clone(),
        image: image(container),
        image_id: image(container),
        container_id: Some(container_id(id_prefix, container)),
        ready: true,
        started: Some(true),
        restart_count: 0,
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(started_at.clone()),
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }
}

fn completed_init_container(container: &Container, id_prefix: &str, at: &Time) -> ContainerStatus {
    let container_id = container_id(id_prefix, container);
    ContainerStatus {
        name: container.name.clone(),
        image: image(container),
        image_id: image(container),
        container_id: Some(container_id.clone()),
        // As the kubelet reports a completed init container.
        ready: true,
        started: Some(false),
        restart_count: 0,
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 0,
                reason: Some("Completed".to_owned()),
                started_at: Some(at.clone()),
                finished_at: Some(at.clone()),
                container_id: Some(container_id),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn bound_pod() -> Pod {
        pod(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "0123456789abcdef"},
            "spec": {
                "nodeName": "sim-1",
                "initContainers": [
                    {"name": "setup", "image": "busybox:1.35"},
                    {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always"},
                ],
                "containers": [
                    {"name": "app", "image": "web:1.0"},
                    {"name": "log", "image": "busybox:1.35"},
                ],
            },
            "status": {
                "phase": "Pending",
                "qosClass": "BestEffort",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"},
                    {"type": "DisruptionTarget", "status": "False"},
                ],
            },
        }))
    }

    #[test]
    fn actions_follow_the_pod_lifecycle() {
        let mut pending = bound_pod();
        assert_eq!(next_action(&pending), PodAction::MarkRunning);

        let mut running = pending.clone();
        running.status = Some(running_status(
            &pending,
            Ipv4Addr::new(10, 244, 1, 1),
            Ipv4Addr::new(10, 244, 1, 2),
            Timestamp::now(),
        ));
        assert_eq!(next_action(&running), PodAction::Nothing);

        let mut not_ready = running.clone();
        let status = not_ready.status.as_mut().unwrap();
        status.conditions.as_mut().unwrap()[1].status = "False".into();
        assert_eq!(next_action(&not_ready), PodAction::MarkRunning);

        let mut finished = running.clone();
        finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(next_action(&finished), PodAction::Nothing);

        pending.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert_eq!(next_action(&pending), PodAction::Delete);
        running.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert_eq!(next_action(&running), PodAction::Delete);
    }

    #[test]
    fn a_running_status_reports_every_container_started_and_ready() {
        let now: Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
        let status = running_status(
            &bound_pod(),
            Ipv4Addr::new(10, 244, 1, 1),
            Ipv4Addr::new(10, 244, 1, 7),
            now,
        );
        let status = serde_json::to_value(status).unwrap();
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["qosClass"], "BestEffort");
        assert_eq!(status["hostIP"], "10.244.1.1");
        assert_eq!(status["hostIPs"], json!([{"ip": "10.244.1.1"}]));
        assert_eq!(status["podIP"], "10.244.1.7");
        assert_eq!(status["podIPs"], json!([{"ip": "10.244.1.7"}]));
        assert_eq!(status["startTime"], "2025-06-01T12:00:00Z");
        assert_eq!(
            status["conditions"],
            json!([
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2025-06-01T12:00:00Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2025-06-01T12:00:00Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2025-06-01T12:00:00Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"},
                {"type": "DisruptionTarget", "status": "False"},
            ])
        );
        assert_eq!(
            status["containerStatuses"][0],
            json!({
                "name": "app",
                "image": "web:1.0",
                "imageID": "web:1.0",
                "containerID": "rudder-sim://01234567-app",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2025-06-01T12:00:00Z"}},
            })
        );
        assert_eq!(status["containerStatuses"][1]["name"], "log");
        let init = &status["initContainerStatuses"];
        assert_eq!(init[0]["name"], "setup");
        assert_eq!(init[0]["state"]["terminated"]["exitCode"], 0);
        assert_eq!(init[0]["state"]["terminated"]["reason"], "Completed");
        assert_eq!(init[1]["name"], "proxy");
        assert_eq!(
            init[1]["state"]["running"]["startedAt"],
            "2025-06-01T12:00:00Z"
        );
    }

    #[test]
    fn pods_without_init_containers_report_none() {
        let mut pod = bound_pod();
        pod.spec.as_mut().unwrap().init_containers = None;
        let status = running_status(
            &pod,
            Ipv4Addr::new(10, 244, 1, 1),
            Ipv4Addr::new(10, 244, 1, 2),
            Timestamp::now(),
        );
        assert!(status.init_container_statuses.is_none());
    }
}
