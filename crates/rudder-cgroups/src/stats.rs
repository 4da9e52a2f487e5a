//! Usage statistics of a cgroup, read the way cAdvisor reads them.

use std::path::Path;

use crate::files::{keyed_value, parse_u64, read_optional};
use crate::CgroupError;

/// A snapshot of a cgroup's usage. A field is None when its control file is absent (controller
/// not mounted or not enabled); `memory_limit_bytes` is also None when there is no limit.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Total CPU time consumed by the tasks, in nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Memory charged to the cgroup, page cache included.
    pub memory_usage_bytes: Option<u64>,
    /// Usage minus inactive file pages: what the kubelet compares against limits for eviction
    /// (cAdvisor's working set).
    pub memory_working_set_bytes: Option<u64>,
    /// The memory limit; None when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// Number of tasks in the cgroup.
    pub pids_current: Option<u64>,
}

/// v1 reports "no limit" as the page counter maximum rounded to pages (9223372036854771712 with
/// 4 KiB pages); anything this large is not a real limit.
const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

fn optional_number(path: &Path) -> Result<Option<u64>, CgroupError> {
    match read_optional(path)? {
        Some(text) => parse_u64(path, &text).map(Some),
        None => Ok(None),
    }
}

fn working_set(
    usage: Option<u64>,
    stat_path: &Path,
    inactive_key: &str,
) -> Result<Option<u64>, CgroupError> {
    let Some(usage) = usage else { return Ok(None) };
    let inactive = match read_optional(stat_path)? {
        Some(text) => keyed_value(stat_path, &text, inactive_key)?.unwrap_or(0),
        None => 0,
    };
    Ok(Some(usage.saturating_sub(inactive)))
}

/// Statistics from v1 hierarchy directories (each None when its hierarchy is not mounted).
pub(crate) fn v1_stats(
    cpuacct: Option<&Path>,
    memory: Option<&Path>,
    pids: Option<&Path>,
) -> Result<Stats, CgroupError> {
    let mut stats = Stats::default();
    if let Some(dir) = cpuacct {
        stats.cpu_usage_ns = optional_number(&dir.join("cpuacct.usage"))?;
    }
    if let Some(dir) = memory {
        stats.memory_usage_bytes = optional_number(&dir.join("memory.usage_in_bytes"))?;
        // total_inactive_file includes descendants, as usage_in_bytes does.
        stats.memory_working_set_bytes = working_set(
            stats.memory_usage_bytes,
            &dir.join("memory.stat"),
            "total_inactive_file",
        )?;
        stats.memory_limit_bytes = optional_number(&dir.join("memory.limit_in_bytes"))?
            .filter(|limit| *limit < V1_UNLIMITED_THRESHOLD);
    }
    if let Some(dir) = pids {
        stats.pids_current = optional_number(&dir.join("pids.current"))?;
    }
    Ok(stats)
}

/// Statistics from a v2 cgroup directory.
pub(crate) fn v2_stats(dir: &Path) -> Result<Stats, CgroupError> {
    let mut stats = Stats::default();
    let cpu_stat = dir.join("cpu.stat");
    if let Some(text) = read_optional(&cpu_stat)? {
        stats.cpu_usage_ns =
            keyed_value(&cpu_stat, &text, "usage_usec")?.map(|usec| usec.saturating_mul(1000));
    }
    stats.memory_usage_bytes = optional_number(&dir.join("memory.current"))?;
    stats.memory_working_set_bytes = working_set(
        stats.memory_usage_bytes,
        &dir.join("memory.stat"),
        "inactive_file",
    )?;
    let max_path = dir.join("memory.max");
    stats.memory_limit_bytes = match read_optional(&max_path)? {
        Some(text) if text.trim() == "max" => None,
        Some(text) => Some(parse_u64(&max_path, &text)?),
        None => None,
    };
    stats.pids_current = optional_number(&dir.join("pids.current"))?;
    Ok(stats)
}

/// The `oom_kill` counter of a flat keyed file (v1 memory.oom_control, v2 memory.events); 0 when
/// the file or the line is absent (old kernels, memory controller not enabled).
pub(crate) fn oom_kills(path: &Path) -> Result<u64, CgroupError> {
    match read_optional(path)? {
        Some(text) => Ok(keyed_value(path, &text, "oom_kill")?.unwrap_or(0)),
        None => Ok(0),
    }
}
