//! `emptyDir` volumes, and the wrapped emptyDir that configMap, secret,
//! downward API and projected volumes are written into: a 0777 directory
//! under the pod's volumes, or for `medium: Memory` a tmpfs mounted there,
//! sized as the kubelet sizes it (`calculateEmptyDirMemorySize`): the node's
//! allocatable memory, lowered to the pod's memory limit when every container
//! has one, lowered to `sizeLimit` when that is smaller still.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod};
use nix::mount::{mount, MsFlags};
use rudder_apimachinery::quantity::Quantity;

use super::mounts;

/// What the directory is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Medium {
    Disk,
    Memory,
}

impl Medium {
    /// `""` (the node's disk) or `Memory`; hugepages media are not supported.
    pub fn parse(medium: Option<&str>) -> Result<Medium, String> {
        match medium.unwrap_or("") {
            "" => Ok(Medium::Disk),
            "Memory" => Ok(Medium::Memory),
            other => Err(format!("unsupported emptyDir medium {other:?}")),
        }
    }
}

/// Creates `dir` with mode 0777 whatever the umask (`setupDir`).
pub fn setup_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if meta.permissions().mode() & 0o7777 != 0o777 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777))?;
    }
    Ok(())
}

/// Creates `dir` and mounts a tmpfs on it unless one is there already
/// (`setupTmpfs`). `size` in bytes; `None` leaves the kernel's default.
pub fn setup_tmpfs(dir: &Path, size: Option<i64>) -> io::Result<()> {
    setup_dir(dir)?;
    if mounts::fs_type_at(dir)?.as_deref() == Some("tmpfs") {
        return Ok(());
    }
    let options = size.filter(|s| *s > 0).map(|s| format!("size={s}"));
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        options.as_deref(),
    )
    .map_err(io::Error::from)
}

fn memory_limit(container: &Container) -> Option<i64> {
    container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .and_then(|q| Quantity::parse(&q.0))
        .map(Quantity::value)
        .filter(|v| *v > 0)
}

/// The pod's memory limit as its cgroup gets it (`ResourceConfigForPod`):
/// only when every container declares one; the app containers and sidecars
/// summed, or the largest regular init container (plus the sidecars started
/// before it) when that is more, plus the pod overhead.
pub fn pod_memory_limit(pod: &Pod) -> Option<i64> {
    let spec = pod.spec.as_ref()?;
    let mut sum = 0i64;
    for container in &spec.containers {
        sum += memory_limit(container)?;
    }
    let mut sidecars = 0i64;
    let mut init_max = 0i64;
    for init in spec.init_containers.iter().flatten() {
        let limit = memory_limit(init)?;
        if init.restart_policy.as_deref() == Some("Always") {
            sidecars += limit;
        } else {
            init_max = init_max.max(limit + sidecars);
        }
    }
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|o| o.get("memory"))
        .and_then(|q| Quantity::parse(&q.0))
        .map(Quantity::value)
        .unwrap_or(0);
    Some((sum + sidecars).max(init_max) + overhead)
}

/// The tmpfs size for a memory-backed emptyDir of `pod`.
pub fn memory_size(
    node_allocatable_memory: Option<i64>,
    pod: &Pod,
    size_limit: Option<&str>,
) -> Option<i64> {
    let mut size = node_allocatable_memory;
    if let Some(pod_limit) = pod_memory_limit(pod) {
        if pod_limit > 0 && size.is_none_or(|s| pod_limit <= s) {
            size = Some(pod_limit);
        }
    }
    if let Some(limit) = size_limit.and_then(Quantity::parse).map(Quantity::value) {
        if limit > 0 && size.is_none_or(|s| limit <= s) {
            size = Some(limit);
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn tmpfs_size_is_the_smallest_of_node_pod_and_size_limit() {
        let limited = pod(serde_json::json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"memory": "64Mi"}}}]}}));
        let unlimited = pod(serde_json::json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"memory": "64Mi"}}},
            {"name": "b"}]}}));
        let gi = 1i64 << 30;
        assert_eq!(memory_size(Some(gi), &limited, None), Some(128 << 20));
        assert_eq!(memory_size(Some(gi), &unlimited, None), Some(gi));
        assert_eq!(
            memory_size(Some(gi), &limited, Some("10Mi")),
            Some(10 << 20)
        );
        // A sizeLimit above what the pod may use does not raise it.
        assert_eq!(
            memory_size(Some(gi), &limited, Some("2Gi")),
            Some(128 << 20)
        );
        assert_eq!(memory_size(None, &unlimited, Some("1Mi")), Some(1 << 20));
        assert_eq!(memory_size(None, &unlimited, None), None);
    }

    #[test]
    fn init_containers_and_sidecars_count_as_the_kubelet_counts_them() {
        let p = pod(serde_json::json!({"spec": {
            "initContainers": [
                {"name": "big", "resources": {"limits": {"memory": "500Mi"}}},
                {"name": "side", "restartPolicy": "Always", "resources": {"limits": {"memory": "10Mi"}}}],
            "containers": [{"name": "a", "resources": {"limits": {"memory": "100Mi"}}}]}}));
        assert_eq!(pod_memory_limit(&p), Some(500 << 20));
        let p = pod(serde_json::json!({"spec": {
            "initContainers": [{"name": "side", "restartPolicy": "Always", "resources": {"limits": {"memory": "10Mi"}}}],
            "containers": [{"name": "a", "resources": {"limits": {"memory": "100Mi"}}}],
            "overhead": {"memory": "1Mi"}}}));
        assert_eq!(pod_memory_limit(&p), Some(111 << 20));
    }

    #[test]
    fn media() {
        assert_eq!(Medium::parse(None).unwrap(), Medium::Disk);
        assert_eq!(Medium::parse(Some("")).unwrap(), Medium::Disk);
        assert_eq!(Medium::parse(Some("Memory")).unwrap(), Medium::Memory);
        assert!(Medium::parse(Some("HugePages-2Mi")).is_err());
    }
}
