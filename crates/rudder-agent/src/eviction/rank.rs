//! Which pod goes first, and what it is told: the kubelet's ranking
//! (usage above requests first, then lower priority, then the largest use
//! above requests) and its eviction messages.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use rudder_apimachinery::resources::{self, Amount};

use super::thresholds::Resource;
use crate::static_pods;

/// Pods at or above this priority (`system-cluster-critical` and up) are
/// never evicted, as with the kubelet.
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// Bytes and inodes a piece of local storage takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub bytes: i64,
    pub inodes: i64,
}

impl std::ops::Add for DiskUsage {
    type Output = DiskUsage;
    fn add(self, other: DiskUsage) -> DiskUsage {
        DiskUsage {
            bytes: self.bytes.saturating_add(other.bytes),
            inodes: self.inodes.saturating_add(other.inodes),
        }
    }
}

/// One container's usage (its newest instance).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerUsage {
    pub name: String,
    pub memory_working_set: Option<i64>,
    /// The writable layer.
    pub rootfs: Option<DiskUsage>,
    pub logs: Option<DiskUsage>,
}

impl ContainerUsage {
    /// What counts against `limits.ephemeral-storage`: writable layer and logs.
    pub fn ephemeral_storage(&self) -> DiskUsage {
        self.rootfs.unwrap_or_default() + self.logs.unwrap_or_default()
    }
}

/// A pod's usage, as the agent measured it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodUsage {
    pub containers: Vec<ContainerUsage>,
    /// The pod's own directory on the node's disk (its disk-backed volumes
    /// and the managed hosts file), memory-backed volumes left out.
    pub local_volumes: DiskUsage,
    /// Disk-backed emptyDir volumes by name.
    pub empty_dirs: BTreeMap<String, DiskUsage>,
}

impl PodUsage {
    pub fn memory_working_set(&self) -> i64 {
        self.containers
            .iter()
            .filter_map(|c| c.memory_working_set)
            .sum()
    }

    /// Everything the pod keeps on the node's disk: writable layers, logs
    /// and local volumes (the pod's ephemeral-storage usage).
    pub fn ephemeral_storage(&self) -> DiskUsage {
        self.containers
            .iter()
            .fold(self.local_volumes, |sum, c| sum + c.ephemeral_storage())
    }

    fn amount(&self, resource: Resource) -> i64 {
        match resource {
            Resource::Memory => self.memory_working_set(),
            Resource::EphemeralStorage => self.ephemeral_storage().bytes,
            Resource::Inodes => self.ephemeral_storage().inodes,
            Resource::Pids => 0,
        }
    }
}

/// Static and mirror pods and those of system-critical priority
/// (`IsCriticalPod`): the kubelet never evicts them.
pub fn is_critical(pod: &Pod) -> bool {
    let annotations = pod.metadata.annotations.as_ref();
    let is_static = annotations
        .and_then(|a| a.get(static_pods::CONFIG_SOURCE))
        .is_some_and(|source| source != "api");
    is_static
        || static_pods::is_mirror(pod)
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.priority)
            .is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

/// A pod to rank, with its usage (None: no stats were found for it).
#[derive(Clone, Debug)]
pub struct Candidate {
    pub pod: Arc<Pod>,
    pub usage: Option<PodUsage>,
}

impl Candidate {
    fn priority(&self) -> i32 {
        self.pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
    }

    /// The pod's request of `resource` (`GetResourceRequestQuantity`).
    fn request(&self, resource: Resource) -> i64 {
        let name = match resource {
            Resource::Memory => "memory",
            Resource::EphemeralStorage => "ephemeral-storage",
            Resource::Inodes | Resource::Pids => return 0,
        };
        let spec =
            serde_json::to_value(self.pod.spec.clone().unwrap_or_default()).unwrap_or_default();
        resources::pod_requests(&spec)
            .get(name)
            .map(|a| i64::try_from(a.value()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// Orders `candidates` for an eviction that frees `resource`, first to go
/// first: pods without stats, then pods using more than they requested,
/// then lower priority, then the largest use above the request (for PIDs:
/// priority alone).
pub fn rank(candidates: &mut [Candidate], resource: Resource) {
    let key = |c: &Candidate| -> (bool, bool, i32, i64) {
        let Some(usage) = &c.usage else {
            return (false, false, c.priority(), 0);
        };
        let used = usage.amount(resource);
        let request = c.request(resource);
        let exceeds = resource != Resource::Pids && used > request;
        (true, !exceeds, c.priority(), request.saturating_sub(used))
    };
    candidates.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        if resource == Resource::Pids {
            return ka.2.cmp(&kb.2);
        }
        ka.cmp(&kb)
    });
}

/// `Threshold quantity` and `available` of a message, as quantities print.
pub struct ThresholdMet {
    pub quantity: Amount,
    pub available: i64,
}

/// The kubelet's message for a node-pressure eviction (`evictionMessage`),
/// naming the containers using more than they requested.
pub fn eviction_message(
    resource: Resource,
    threshold: Option<&ThresholdMet>,
    pod: &Pod,
    usage: Option<&PodUsage>,
) -> String {
    let mut message = format!("The node was low on resource: {}. ", resource.name());
    if let Some(t) = threshold {
        let available = match resource {
            Resource::Memory | Resource::EphemeralStorage => Amount::from_bytes(t.available),
            Resource::Inodes | Resource::Pids => Amount::from_int(t.available),
        };
        message.push_str(&format!(
            "Threshold quantity: {}, available: {}. ",
            t.quantity, available
        ));
    }
    let Some(usage) = usage else {
        return message;
    };
    let spec = pod.spec.clone().unwrap_or_default();
    for container in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let Some(stats) = usage.containers.iter().find(|c| c.name == container.name) else {
            continue;
        };
        let used = match resource {
            Resource::Memory => stats.memory_working_set,
            Resource::EphemeralStorage => match (stats.rootfs, stats.logs) {
                (Some(rootfs), Some(logs)) => Some(rootfs.bytes + logs.bytes),
                _ => None,
            },
            Resource::Inodes | Resource::Pids => None,
        };
        let Some(used) = used else {
            continue;
        };
        let request = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource.name()))
            .and_then(|q| Amount::parse(&q.0))
            .unwrap_or(Amount::ZERO);
        if i128::from(used) * 1000 > request.milli_value() {
            message.push_str(&format!(
                "Container {} was using {}, request is {}, has larger consumption of {}. ",
                container.name,
                Amount::from_bytes(used),
                request,
                resource.name()
            ));
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, priority: Option<i32>, memory_request: Option<&str>) -> Arc<Pod> {
        let resources = memory_request
            .map(|r| serde_json::json!({"requests": {"memory": r}, "limits": {"memory": r}}));
        let mut container = serde_json::json!({"name": "c", "image": "busybox"});
        if let Some(resources) = resources {
            container["resources"] = resources;
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "uid": name},
                "spec": {"priority": priority, "containers": [container]},
            }))
            .unwrap(),
        )
    }

    fn with_memory(pod: Arc<Pod>, working_set: Option<i64>) -> Candidate {
        Candidate {
            pod,
            usage: working_set.map(|ws| PodUsage {
                containers: vec![ContainerUsage {
                    name: "c".into(),
                    memory_working_set: Some(ws),
                    ..ContainerUsage::default()
                }],
                ..PodUsage::default()
            }),
        }
    }

    fn names(candidates: &[Candidate]) -> Vec<String> {
        candidates
            .iter()
            .map(|c| c.pod.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn memory_ranking_follows_the_kubelet() {
        let mi = 1 << 20;
        // (case, pods as (name, priority, request, working set), expected order)
        type Row = (&'static str, Option<i32>, Option<&'static str>, Option<i64>);
        let cases: &[(&str, &[Row], &[&str])] = &[
            (
                "best effort before guaranteed under its request",
                &[
                    ("guaranteed", None, Some("100Mi"), Some(50 * mi)),
                    ("best-effort", None, None, Some(10 * mi)),
                ],
                &["best-effort", "guaranteed"],
            ),
            (
                "above its request goes before a lower priority under it",
                &[
                    ("low-under", Some(-10), Some("100Mi"), Some(10 * mi)),
                    ("high-over", Some(1000), Some("10Mi"), Some(20 * mi)),
                ],
                &["high-over", "low-under"],
            ),
            (
                "both above: lower priority first",
                &[
                    ("high", Some(1000), None, Some(500 * mi)),
                    ("low", Some(0), None, Some(mi)),
                ],
                &["low", "high"],
            ),
            (
                "same priority: largest use above the request first",
                &[
                    ("small", None, Some("10Mi"), Some(20 * mi)),
                    ("large", None, Some("10Mi"), Some(200 * mi)),
                    ("medium", None, None, Some(100 * mi)),
                ],
                &["large", "medium", "small"],
            ),
            (
                "no stats first",
                &[
                    ("measured", None, None, Some(500 * mi)),
                    ("unknown", Some(1000), Some("1Gi"), None),
                ],
                &["unknown", "measured"],
            ),
        ];
        for (case, pods, want) in cases {
            let mut candidates: Vec<Candidate> = pods
                .iter()
                .map(|(name, priority, request, ws)| {
                    with_memory(pod(name, *priority, *request), *ws)
                })
                .collect();
            rank(&mut candidates, Resource::Memory);
            assert_eq!(names(&candidates), *want, "{case}");
        }
    }

    #[test]
    fn disk_ranking_counts_layers_logs_and_volumes() {
        let disk = |name: &str, rootfs: i64, logs: i64, volumes: i64| Candidate {
            pod: pod(name, None, None),
            usage: Some(PodUsage {
                containers: vec![ContainerUsage {
                    name: "c".into(),
                    rootfs: Some(DiskUsage {
                        bytes: rootfs,
                        inodes: 1,
                    }),
                    logs: Some(DiskUsage {
                        bytes: logs,
                        inodes: 1,
                    }),
                    ..ContainerUsage::default()
                }],
                local_volumes: DiskUsage {
                    bytes: volumes,
                    inodes: 1,
                },
                ..PodUsage::default()
            }),
        };
        let mut candidates = vec![
            disk("layer", 30, 0, 0),
            disk("volume", 0, 0, 50),
            disk("logs", 0, 40, 0),
        ];
        rank(&mut candidates, Resource::EphemeralStorage);
        assert_eq!(names(&candidates), ["volume", "logs", "layer"]);
    }

    #[test]
    fn critical_pods_are_static_mirror_or_system_priority() {
        assert!(!is_critical(&pod("p", Some(1_000_000_000), None)));
        assert!(is_critical(&pod("p", Some(2_000_000_000), None)));
        let mut mirror = (*pod("m", None, None)).clone();
        mirror.metadata.annotations =
            Some([(static_pods::CONFIG_MIRROR.to_string(), "hash".to_string())].into());
        assert!(is_critical(&mirror));
        let mut from_file = (*pod("s", None, None)).clone();
        from_file.metadata.annotations =
            Some([(static_pods::CONFIG_SOURCE.to_string(), "file".to_string())].into());
        assert!(is_critical(&from_file));
    }

    #[test]
    fn messages_are_worded_as_the_kubelets() {
        let best_effort = pod("be", None, None);
        let usage = PodUsage {
            containers: vec![ContainerUsage {
                name: "c".into(),
                memory_working_set: Some(123 * 1024),
                rootfs: Some(DiskUsage {
                    bytes: 10 << 20,
                    inodes: 3,
                }),
                logs: Some(DiskUsage {
                    bytes: 4096,
                    inodes: 1,
                }),
            }],
            ..PodUsage::default()
        };
        let threshold = ThresholdMet {
            quantity: Amount::parse("100Mi").unwrap(),
            available: 81920 * 1024,
        };
        assert_eq!(
            eviction_message(
                Resource::Memory,
                Some(&threshold),
                &best_effort,
                Some(&usage)
            ),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. \
             Container c was using 123Ki, request is 0, has larger consumption of memory. "
        );
        assert_eq!(
            eviction_message(Resource::EphemeralStorage, None, &best_effort, Some(&usage)),
            "The node was low on resource: ephemeral-storage. \
             Container c was using 10244Ki, request is 0, has larger consumption of ephemeral-storage. "
        );
        // Under its request: not named.
        let guaranteed = pod("g", None, Some("1Mi"));
        assert_eq!(
            eviction_message(
                Resource::Memory,
                Some(&threshold),
                &guaranteed,
                Some(&usage)
            ),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. "
        );
        let inodes = ThresholdMet {
            quantity: Amount::from_int(5000),
            available: 1200,
        };
        assert_eq!(
            eviction_message(Resource::Inodes, Some(&inodes), &guaranteed, None),
            "The node was low on resource: inodes. Threshold quantity: 5k, available: 1200. "
        );
    }
}
