//! `GET /stats/summary`: the kubelet's Summary API (`stats/v1alpha1`), the
//! resource usage the API server's `metrics.k8s.io` is built from.
//!
//! Only the fields resource metrics need are filled: the node's and each
//! running container's CPU (`usageNanoCores`, `usageCoreNanoSeconds`) and
//! memory (`workingSetBytes`, `usageBytes`), each pod's sum of its
//! containers, and timestamps. Node figures come from `/proc/stat` and
//! `/proc/meminfo`, containers' from their cgroups (through the runtime's
//! `ListContainerStats`).
//!
//! `usageNanoCores` is a rate, and cgroups only count CPU time. cAdvisor
//! samples every few seconds in the background; this agent samples when
//! asked instead, so an idle node costs nothing: each request takes a
//! snapshot, keeps the last few, and divides by the newest earlier snapshot
//! that is at least [`MIN_WINDOW`] old, no older than [`MAX_WINDOW`] and
//! knows every running container. When there is none (first request, a new
//! container, a long silence), it samples again after [`MIN_WINDOW`], so
//! every answer has a rate for every container, and all of them share one
//! window. That window is reported as `rudder.io/window-seconds` in the
//! summary (a Rudder addition; the kubelet's Summary API has no window),
//! which the API server serves as the metrics' `window`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rudder_cri::cri::{
    ContainerStatsFilter, PodSandboxFilter, PodSandboxState, RuntimeService, LABEL_CONTAINER_NAME,
    LABEL_POD_UID,
};
use serde_json::{json, Value};

use super::text_error;

/// The shortest interval a CPU rate is computed over: shorter ones are
/// dominated by scheduling noise.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// The longest: an older snapshot would average over a stale period.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);
/// Snapshots kept for later requests.
const KEPT_SNAPSHOTS: usize = 4;

/// The summary's extra field carrying the CPU rates' window in seconds.
pub const WINDOW_FIELD: &str = "rudder.io/window-seconds";

/// The route, with its own sampler state; merged into the kubelet router.
pub fn routes<S>(runtime: Arc<dyn RuntimeService>) -> Router<S> {
    Router::new()
        .route("/stats/summary", get(summary))
        .with_state(Arc::new(Sampler {
            runtime,
            snapshots: Mutex::new(VecDeque::new()),
        }))
}

/// The node runtime and the snapshots taken so far (newest last).
pub struct Sampler {
    runtime: Arc<dyn RuntimeService>,
    snapshots: Mutex<VecDeque<Snapshot>>,
}

/// Usage at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub at: SystemTime,
    pub node_cpu_ns: Option<u64>,
    pub node_memory: Option<MemInfo>,
    pub pods: Vec<PodSample>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodSample {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub start_time: Option<SystemTime>,
    pub containers: Vec<ContainerSample>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerSample {
    /// The runtime's container id: a restarted container is a new one.
    pub id: String,
    pub name: String,
    pub start_time: Option<SystemTime>,
    pub cpu_ns: u64,
    pub memory_working_set: Option<u64>,
    pub memory_usage: Option<u64>,
}

/// `/proc/meminfo` figures, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub available: u64,
    pub inactive_file: u64,
}

impl Snapshot {
    fn container_cpu(&self, id: &str) -> Option<u64> {
        self.pods
            .iter()
            .flat_map(|p| &p.containers)
            .find(|c| c.id == id)
            .map(|c| c.cpu_ns)
    }

    /// Whether a rate against `self` can be computed for everything `now`
    /// holds.
    fn can_baseline(&self, now: &Snapshot) -> bool {
        let Ok(age) = now.at.duration_since(self.at) else {
            return false;
        };
        (MIN_WINDOW..=MAX_WINDOW).contains(&age)
            && (now.node_cpu_ns.is_none() || self.node_cpu_ns.is_some())
            && now
                .pods
                .iter()
                .flat_map(|p| &p.containers)
                .all(|c| self.container_cpu(&c.id).is_some())
    }
}

async fn summary(State(sampler): State<Arc<Sampler>>) -> Response {
    match sampler.summary().await {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(e) => text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to get node stats: {e}"),
        ),
    }
}

impl Sampler {
    async fn summary(&self) -> Result<Value, rudder_cri::CriError> {
        let mut now = self.snapshot().await?;
        let baseline = match self.baseline_for(&now) {
            Some(baseline) => baseline,
            None => {
                // Containers that appear in between get no rate this time.
                self.keep(now.clone());
                tokio::time::sleep(MIN_WINDOW).await;
                std::mem::replace(&mut now, self.snapshot().await?)
            }
        };
        self.keep(now.clone());
        Ok(summary_json(&node_name(), &baseline, &now))
    }

    fn baseline_for(&self, now: &Snapshot) -> Option<Snapshot> {
        let snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        snapshots
            .iter()
            .rev()
            .find(|s| s.can_baseline(now))
            .cloned()
    }

    fn keep(&self, snapshot: Snapshot) {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        snapshots.retain(|s| {
            snapshot
                .at
                .duration_since(s.at)
                .is_ok_and(|age| age <= MAX_WINDOW)
        });
        snapshots.push_back(snapshot);
        while snapshots.len() > KEPT_SNAPSHOTS {
            snapshots.pop_front();
        }
    }

    /// Reads the node's and every running container's usage (blocking
    /// reads of /proc and cgroup files, off the async threads).
    async fn snapshot(&self) -> Result<Snapshot, rudder_cri::CriError> {
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || take_snapshot(&*runtime))
            .await
            .map_err(|e| rudder_cri::CriError::Invalid(format!("the stats task failed: {e}")))?
    }
}

fn take_snapshot(runtime: &dyn RuntimeService) -> Result<Snapshot, rudder_cri::CriError> {
    let at = SystemTime::now();
    let node_cpu_ns = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| node_cpu_ns(&text, clock_ticks_per_second()));
    let node_memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo(&text));
    let sandboxes = runtime.list_pod_sandbox(&PodSandboxFilter {
        state: Some(PodSandboxState::SandboxReady),
        ..Default::default()
    })?;
    let stats = runtime.list_container_stats(&ContainerStatsFilter::default())?;
    let containers = runtime.list_containers(&Default::default())?;
    let mut pods: BTreeMap<String, PodSample> = BTreeMap::new();
    for sandbox in sandboxes {
        let pod = pods
            .entry(sandbox.metadata.uid.clone())
            .or_insert_with(|| PodSample {
                name: sandbox.metadata.name.clone(),
                namespace: sandbox.metadata.namespace.clone(),
                uid: sandbox.metadata.uid.clone(),
                start_time: None,
                containers: Vec::new(),
            });
        let started = from_nanos(sandbox.created_at);
        pod.start_time = Some(pod.start_time.map_or(started, |s| s.min(started)));
    }
    for stat in stats {
        // Only running containers have a cgroup to read.
        let Some(cpu_ns) = stat.cpu.usage_core_nano_seconds else {
            continue;
        };
        let labels = &stat.attributes.labels;
        let Some(pod) = labels.get(LABEL_POD_UID).and_then(|uid| pods.get_mut(uid)) else {
            continue;
        };
        let created = containers
            .iter()
            .find(|c| c.id == stat.attributes.id)
            .map(|c| from_nanos(c.created_at));
        pod.containers.push(ContainerSample {
            id: stat.attributes.id.clone(),
            name: labels
                .get(LABEL_CONTAINER_NAME)
                .cloned()
                .unwrap_or_else(|| stat.attributes.metadata.name.clone()),
            start_time: created,
            cpu_ns,
            memory_working_set: stat.memory.working_set_bytes,
            memory_usage: stat.memory.usage_bytes,
        });
    }
    Ok(Snapshot {
        at,
        node_cpu_ns,
        node_memory,
        pods: pods.into_values().collect(),
    })
}

/// The Summary document for `now`, with CPU rates against `baseline`.
pub fn summary_json(node_name: &str, baseline: &Snapshot, now: &Snapshot) -> Value {
    let window = now.at.duration_since(baseline.at).unwrap_or_default();
    let time = rfc3339(now.at);
    let rate = |before: Option<u64>, after: u64| -> Option<u64> {
        let before = before?;
        let nanos = window.as_nanos();
        (nanos > 0).then(|| {
            (u128::from(after.saturating_sub(before)) * 1_000_000_000 / nanos)
                .try_into()
                .unwrap_or(u64::MAX)
        })
    };
    let cpu = |before: Option<u64>, after: u64| {
        let mut cpu = json!({"time": time, "usageCoreNanoSeconds": after});
        if let Some(r) = rate(before, after) {
            cpu["usageNanoCores"] = json!(r);
        }
        cpu
    };
    let memory = |working_set: Option<u64>, usage: Option<u64>| {
        let mut memory = json!({"time": time});
        if let Some(w) = working_set {
            memory["workingSetBytes"] = json!(w);
        }
        if let Some(u) = usage {
            memory["usageBytes"] = json!(u);
        }
        memory
    };

    let mut node = json!({"nodeName": node_name});
    if let Some(after) = now.node_cpu_ns {
        node["cpu"] = cpu(baseline.node_cpu_ns, after);
    }
    if let Some(mem) = now.node_memory {
        // As the kubelet: usage is everything not free, the working set
        // leaves out the inactive page cache the kernel can drop.
        let usage = mem.total.saturating_sub(mem.free);
        node["memory"] = memory(Some(usage.saturating_sub(mem.inactive_file)), Some(usage));
        node["memory"]["availableBytes"] = json!(mem.available);
    }

    let pods: Vec<Value> = now
        .pods
        .iter()
        .map(|pod| {
            let mut containers = Vec::new();
            let (mut pod_cpu, mut pod_rate, mut pod_ws, mut pod_usage) = (0u64, Some(0u64), 0, 0);
            for c in &pod.containers {
                let before = baseline.container_cpu(&c.id);
                let mut entry = json!({
                    "name": c.name,
                    "cpu": cpu(before, c.cpu_ns),
                    "memory": memory(c.memory_working_set, c.memory_usage),
                });
                if let Some(start) = c.start_time {
                    entry["startTime"] = json!(rfc3339(start));
                }
                containers.push(entry);
                pod_cpu = pod_cpu.saturating_add(c.cpu_ns);
                pod_rate = pod_rate.zip(rate(before, c.cpu_ns)).map(|(a, b)| a + b);
                pod_ws += c.memory_working_set.unwrap_or(0);
                pod_usage += c.memory_usage.unwrap_or(0);
            }
            let mut pod_cpu_json = json!({"time": time, "usageCoreNanoSeconds": pod_cpu});
            if let Some(r) = pod_rate {
                pod_cpu_json["usageNanoCores"] = json!(r);
            }
            let mut entry = json!({
                "podRef": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
                "containers": containers,
                "cpu": pod_cpu_json,
                "memory": memory(Some(pod_ws), Some(pod_usage)),
            });
            if let Some(start) = pod.start_time {
                entry["startTime"] = json!(rfc3339(start));
            }
            entry
        })
        .collect();
    json!({
        "node": node,
        "pods": pods,
        WINDOW_FIELD: window.as_secs_f64(),
    })
}

/// CPU time the node spent busy, in nanoseconds: the `cpu` line of
/// `/proc/stat` without idle and iowait (guest time is already in user).
pub fn node_cpu_ns(proc_stat: &str, ticks_per_second: u64) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| fields.get(*i))
        .sum();
    Some(busy.saturating_mul(1_000_000_000 / ticks_per_second.max(1)))
}

/// The `/proc/meminfo` lines the node's memory figures need.
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let value = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kib: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(MemInfo {
        total: value("MemTotal:")?,
        free: value("MemFree:")?,
        available: value("MemAvailable:").unwrap_or(0),
        inactive_file: value("Inactive(file):").unwrap_or(0),
    })
}

fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// The name the summary reports; the API server knows which Node it asked
/// and does not rely on it.
fn node_name() -> String {
    nix::sys::utsname::uname()
        .map(|u| crate::node::node_name_from_hostname(&u.nodename().to_string_lossy()))
        .unwrap_or_default()
}

fn from_nanos(nanos: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

fn rfc3339(time: SystemTime) -> String {
    rudder_apimachinery::time::format_rfc3339(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn snapshot(secs: u64, node_cpu: u64, containers: &[(&str, u64)]) -> Snapshot {
        Snapshot {
            at: at(secs),
            node_cpu_ns: Some(node_cpu),
            node_memory: Some(MemInfo {
                total: 8 << 30,
                free: 2 << 30,
                available: 5 << 30,
                inactive_file: 1 << 30,
            }),
            pods: vec![PodSample {
                name: "web-1".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                start_time: Some(at(0)),
                containers: containers
                    .iter()
                    .map(|(id, cpu)| ContainerSample {
                        id: id.to_string(),
                        name: format!("c-{id}"),
                        start_time: Some(at(1)),
                        cpu_ns: *cpu,
                        memory_working_set: Some(10 << 20),
                        memory_usage: Some(12 << 20),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 50 9000 20 3 2 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        // (100+5+50+3+2+1) ticks of 10 ms.
        assert_eq!(node_cpu_ns(stat, 100), Some(161 * 10_000_000));
        assert_eq!(node_cpu_ns("intr 1 2", 100), None);
        let meminfo = "MemTotal:       16000 kB\nMemFree:         4000 kB\nMemAvailable:    9000 kB\nInactive(file):  2000 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            Some(MemInfo {
                total: 16000 * 1024,
                free: 4000 * 1024,
                available: 9000 * 1024,
                inactive_file: 2000 * 1024,
            })
        );
    }

    #[test]
    fn rates_divide_cpu_time_by_the_window() {
        let before = snapshot(0, 1_000_000_000, &[("a", 0), ("b", 500_000_000)]);
        // Two seconds later: a used 0.5 s (250m), b 1 s (500m), the node 3 s.
        let now = snapshot(
            2,
            4_000_000_000,
            &[("a", 500_000_000), ("b", 1_500_000_000)],
        );
        let summary = summary_json("n1", &before, &now);
        assert_eq!(summary[WINDOW_FIELD], 2.0);
        assert_eq!(summary["node"]["cpu"]["usageNanoCores"], 1_500_000_000u64);
        assert_eq!(summary["node"]["memory"]["workingSetBytes"], 5u64 << 30);
        assert_eq!(summary["node"]["memory"]["availableBytes"], 5u64 << 30);
        let pod = &summary["pods"][0];
        assert_eq!(pod["podRef"]["uid"], "u1");
        assert_eq!(pod["containers"][0]["name"], "c-a");
        assert_eq!(
            pod["containers"][0]["cpu"]["usageNanoCores"],
            250_000_000u64
        );
        assert_eq!(
            pod["containers"][1]["cpu"]["usageNanoCores"],
            500_000_000u64
        );
        assert_eq!(pod["cpu"]["usageNanoCores"], 750_000_000u64);
        assert_eq!(pod["memory"]["workingSetBytes"], 20u64 << 20);
        assert_eq!(pod["containers"][0]["cpu"]["time"], "2023-11-14T22:13:22Z");
    }

    #[test]
    fn a_container_the_baseline_lacks_gets_no_rate() {
        let before = snapshot(0, 0, &[("a", 0)]);
        let now = snapshot(2, 0, &[("a", 10), ("new", 10)]);
        assert!(!before.can_baseline(&now));
        let summary = summary_json("n1", &before, &now);
        let pod = &summary["pods"][0];
        assert!(pod["containers"][1]["cpu"].get("usageNanoCores").is_none());
        assert!(pod["cpu"].get("usageNanoCores").is_none());
    }

    #[test]
    fn baselines_must_be_neither_too_fresh_nor_too_old() {
        let now = snapshot(100, 0, &[("a", 10)]);
        assert!(snapshot(99, 0, &[("a", 0)]).can_baseline(&now));
        assert!(!snapshot(100, 0, &[("a", 0)]).can_baseline(&now));
        assert!(!snapshot(30, 0, &[("a", 0)]).can_baseline(&now));
        assert!(!snapshot(101, 0, &[("a", 0)]).can_baseline(&now));
    }
}
