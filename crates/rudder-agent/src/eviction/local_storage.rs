//! Pods' local storage: measuring it (writable layers, logs, the pod's
//! directory and its disk-backed emptyDirs) and the kubelet's
//! LocalStorageCapacityIsolation limits (`limits.ephemeral-storage` per
//! container and per pod, emptyDir `sizeLimit`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use rudder_apimachinery::resources::{self, Amount};
use rudder_cri::cri::{ContainerStatsFilter, RuntimeService, LABEL_POD_UID};

use super::rank::{ContainerUsage, DiskUsage, PodUsage};
use crate::volumes::EMPTY_DIR_PLUGIN;

/// What a directory tree takes on its filesystem, as `du` counts it:
/// allocated blocks, each inode once (hard links), symlinks not followed,
/// and nothing below a mount point (a memory-backed emptyDir is a tmpfs
/// and counts as memory, not disk). None if `dir` is missing.
pub fn disk_usage(dir: &Path) -> Option<DiskUsage> {
    let root = fs::symlink_metadata(dir).ok()?;
    let device = root.dev();
    let mut usage = DiskUsage::default();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut stack = vec![(dir.to_path_buf(), root)];
    while let Some((path, meta)) = stack.pop() {
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
            continue;
        }
        usage.inodes += 1;
        usage.bytes += i64::try_from(meta.blocks() * 512).unwrap_or(i64::MAX);
        if !meta.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&path).into_iter().flatten().flatten() {
            let Ok(child) = entry.metadata() else {
                continue;
            };
            if child.dev() != device {
                continue;
            }
            stack.push((entry.path(), child));
        }
    }
    Some(usage)
}

/// Whether `dir` is the root of a filesystem of its own (a tmpfs mounted
/// for a memory-backed emptyDir).
fn is_mount_point(dir: &Path) -> bool {
    match (
        fs::symlink_metadata(dir),
        dir.parent().map(fs::symlink_metadata),
    ) {
        (Ok(own), Some(Ok(parent))) => own.dev() != parent.dev(),
        _ => false,
    }
}

/// Where the agent keeps pods' files.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `<data-dir>/pods`.
    pub pods_dir: PathBuf,
    /// `<data-dir>/logs/pods`.
    pub logs_dir: PathBuf,
}

impl Layout {
    fn log_dir(&self, pod: &Pod) -> PathBuf {
        self.logs_dir.join(format!(
            "{}_{}_{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.uid.as_deref().unwrap_or_default()
        ))
    }
}

/// Measures `pods`' usage, by pod uid: memory working sets and writable
/// layers of their newest containers (from the runtime), logs and volumes
/// from the node's disk. Blocking: directory walks.
pub fn measure(
    runtime: &dyn RuntimeService,
    layout: &Layout,
    pods: &[Arc<Pod>],
) -> HashMap<String, PodUsage> {
    let mut newest: HashMap<(String, String), rudder_cri::cri::ContainerStats> = HashMap::new();
    match runtime.list_container_stats(&ContainerStatsFilter::default()) {
        Ok(stats) => {
            for s in stats {
                let Some(uid) = s.attributes.labels.get(LABEL_POD_UID).cloned() else {
                    continue;
                };
                let key = (uid, s.attributes.metadata.name.clone());
                let newer = newest.get(&key).is_none_or(|old| {
                    old.attributes.metadata.attempt < s.attributes.metadata.attempt
                });
                if newer {
                    newest.insert(key, s);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "eviction: listing container stats"),
    }
    let mut out = HashMap::new();
    for pod in pods {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let log_dir = layout.log_dir(pod);
        let mut usage = PodUsage::default();
        for container in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let Some(stats) = newest.get(&(uid.clone(), container.name.clone())) else {
                continue;
            };
            let layer = &stats.writable_layer;
            let rootfs = if layer.mountpoint.is_empty() {
                None
            } else {
                disk_usage(Path::new(&layer.mountpoint))
            }
            .or(Some(DiskUsage {
                bytes: i64::try_from(layer.used_bytes).unwrap_or(i64::MAX),
                inodes: i64::try_from(layer.inodes_used).unwrap_or(i64::MAX),
            }));
            usage.containers.push(ContainerUsage {
                name: container.name.clone(),
                memory_working_set: stats
                    .memory
                    .working_set_bytes
                    .and_then(|b| i64::try_from(b).ok()),
                rootfs,
                logs: Some(disk_usage(&log_dir.join(&container.name)).unwrap_or_default()),
            });
        }
        let pod_dir = layout.pods_dir.join(&uid);
        usage.local_volumes = disk_usage(&pod_dir).unwrap_or_default();
        for volume in spec.volumes.iter().flatten() {
            let Some(empty_dir) = &volume.empty_dir else {
                continue;
            };
            if empty_dir.medium.as_deref() == Some("Memory") {
                continue;
            }
            let dir = pod_dir
                .join("volumes")
                .join(EMPTY_DIR_PLUGIN)
                .join(&volume.name);
            if is_mount_point(&dir) {
                continue;
            }
            if let Some(used) = disk_usage(&dir) {
                usage.empty_dirs.insert(volume.name.clone(), used);
            }
        }
        out.insert(uid, usage);
    }
    out
}

fn ephemeral_limit(container: &k8s_openapi::api::core::v1::Container) -> Option<Amount> {
    container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("ephemeral-storage"))
        .and_then(|q| Amount::parse(&q.0))
        .filter(|a| !a.is_zero())
}

/// The message of the first local storage limit `pod` breaks, checked in
/// the kubelet's order (emptyDir sizeLimit, the pod's total, each
/// container), or None.
pub fn limit_violation(pod: &Pod, usage: &PodUsage) -> Option<String> {
    let spec = pod.spec.clone().unwrap_or_default();
    for volume in spec.volumes.iter().flatten() {
        let Some(limit) = volume
            .empty_dir
            .as_ref()
            .and_then(|e| e.size_limit.as_ref())
            .and_then(|q| Amount::parse(&q.0))
            .filter(|a| !a.is_zero() && !a.is_negative())
        else {
            continue;
        };
        if let Some(used) = usage.empty_dirs.get(&volume.name) {
            if i128::from(used.bytes) > limit.value() {
                return Some(format!(
                    "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                    volume.name,
                    limit.to_string()
                ));
            }
        }
    }
    let spec_json = serde_json::to_value(&spec).unwrap_or_default();
    if let Some(limit) = resources::pod_limits(&spec_json).get("ephemeral-storage") {
        if i128::from(usage.ephemeral_storage().bytes) > limit.value() {
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {limit}. "
            ));
        }
    }
    for container in &spec.containers {
        let Some(limit) = ephemeral_limit(container) else {
            continue;
        };
        let Some(used) = usage.containers.iter().find(|c| c.name == container.name) else {
            continue;
        };
        if i128::from(used.ephemeral_storage().bytes) > limit.value() {
            return Some(format!(
                "Container {} exceeded its local ephemeral storage limit {:?}. ",
                container.name,
                limit.to_string()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn container(name: &str, rootfs: i64, logs: i64) -> ContainerUsage {
        ContainerUsage {
            name: name.into(),
            memory_working_set: None,
            rootfs: Some(DiskUsage {
                bytes: rootfs,
                inodes: 1,
            }),
            logs: Some(DiskUsage {
                bytes: logs,
                inodes: 1,
            }),
        }
    }

    #[test]
    fn limits_are_checked_in_the_kubelets_order_with_its_messages() {
        let mi = 1 << 20;
        let two_containers = pod(serde_json::json!({
            "containers": [
                {"name": "a", "resources": {"limits": {"ephemeral-storage": "1Mi"}}},
                {"name": "b", "resources": {"limits": {"ephemeral-storage": "2Mi"}}},
            ],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}],
        }));
        let usage = |a: i64, b: i64, volume: i64| PodUsage {
            containers: vec![container("a", a, 0), container("b", b, 0)],
            local_volumes: DiskUsage {
                bytes: volume,
                inodes: 1,
            },
            empty_dirs: [(
                "scratch".to_string(),
                DiskUsage {
                    bytes: volume,
                    inodes: 1,
                },
            )]
            .into(),
        };
        let cases: &[(&str, PodUsage, Option<&str>)] = &[
            ("within every limit", usage(mi / 2, mi, mi / 4), None),
            (
                "emptyDir over its sizeLimit",
                usage(0, 0, 2 * mi),
                Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". "),
            ),
            (
                "the pod over the sum of its containers' limits",
                usage(mi, 2 * mi, mi / 2),
                Some(
                    "Pod ephemeral local storage usage exceeds the total limit of containers 3Mi. ",
                ),
            ),
            (
                "one container over its own limit",
                usage(mi + 1, 0, 0),
                Some("Container a exceeded its local ephemeral storage limit \"1Mi\". "),
            ),
        ];
        for (case, usage, want) in cases {
            assert_eq!(
                limit_violation(&two_containers, usage).as_deref(),
                *want,
                "{case}"
            );
        }
        // Logs count against a container's limit too.
        let one = pod(serde_json::json!({
            "containers": [{"name": "c", "resources": {"limits": {"ephemeral-storage": "2Mi"}}}],
        }));
        let logs_heavy = PodUsage {
            containers: vec![container("c", mi, 2 * mi)],
            ..PodUsage::default()
        };
        assert_eq!(
            limit_violation(&one, &logs_heavy).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. ")
        );
        // No limits at all: nothing to enforce.
        let unlimited = pod(serde_json::json!({"containers": [{"name": "c"}]}));
        assert_eq!(limit_violation(&unlimited, &logs_heavy), None);
    }

    #[test]
    fn disk_usage_counts_blocks_once_and_skips_symlink_targets() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("big"), vec![1u8; 1 << 20]).unwrap();
        fs::hard_link(data.join("big"), data.join("link")).unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, vec![1u8; 4 << 20]).unwrap();
        std::os::unix::fs::symlink(&outside, data.join("symlink")).unwrap();
        let usage = disk_usage(&data).unwrap();
        // The directory, the file (hard-linked twice, counted once), the symlink.
        assert_eq!(usage.inodes, 3);
        assert!(usage.bytes >= 1 << 20, "{usage:?}");
        assert!(usage.bytes < 2 << 20, "{usage:?}");
        assert_eq!(disk_usage(&dir.path().join("missing")), None);
        assert!(!is_mount_point(&data));
    }
}
