//! Resource limits and how they are written to v1 and v2 control files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::files::{read_control, read_optional, write_control};
use crate::CgroupError;

/// Resource limits of a cgroup, in the units of the OCI runtime spec.
///
/// `None` and zero both leave the current value untouched (as runc does: zero is the OCI
/// default of every one of these fields). Negative limits mean "unlimited".
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Resources {
    /// Relative CPU weight in v1 shares (2..=262144; 1024 is one CPU's worth).
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per period; -1 = unlimited.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds.
    pub cpu_period: Option<u64>,
    /// Memory limit in bytes; -1 = unlimited.
    pub memory_limit: Option<i64>,
    /// Memory plus swap limit in bytes, as in OCI (not swap alone); -1 = unlimited swap. Equal to
    /// `memory_limit` means "no swap".
    pub memory_swap: Option<i64>,
    /// Maximum number of tasks; negative = unlimited.
    pub pids_limit: Option<i64>,
    /// CPUs the tasks may run on, in list format ("0-3,6").
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the tasks may allocate from, in list format.
    pub cpuset_mems: Option<String>,
}

/// Kubernetes' conversion of v1 cpu shares (2..=262144) to v2 cpu.weight (1..=10000), so that
/// pods get the same relative weights on both layouts.
pub fn cpu_shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn set<T: Copy + PartialEq + Default>(value: Option<T>) -> Option<T> {
    value.filter(|v| *v != T::default())
}

fn set_str(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Writes the limits into v1 hierarchies. `dir_for` gives the cgroup directory in the hierarchy
/// of a controller, or None when no hierarchy holds that controller.
pub(crate) fn apply_v1(
    dir_for: impl Fn(&str) -> Option<PathBuf>,
    r: &Resources,
) -> Result<(), CgroupError> {
    let need = |controller: &str| {
        dir_for(controller).ok_or_else(|| CgroupError::ControllerNotMounted {
            controller: controller.to_string(),
        })
    };

    let shares = set(r.cpu_shares);
    let period = set(r.cpu_period);
    let quota = set(r.cpu_quota);
    if shares.is_some() || period.is_some() || quota.is_some() {
        let cpu = need("cpu")?;
        if let Some(shares) = shares {
            write_control(&cpu.join("cpu.shares"), &shares.to_string())?;
        }
        // The period first: the kernel checks a new quota against the period in force.
        if let Some(period) = period {
            write_control(&cpu.join("cpu.cfs_period_us"), &period.to_string())?;
        }
        if let Some(quota) = quota {
            let quota = if quota < 0 { -1 } else { quota };
            write_control(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
    }

    let memory = set(r.memory_limit);
    let swap = set(r.memory_swap);
    if memory.is_some() || swap.is_some() {
        apply_v1_memory(&need("memory")?, memory, swap)?;
    }

    if let Some(limit) = set(r.pids_limit) {
        write_control(&need("pids")?.join("pids.max"), &pids_value(limit))?;
    }

    let cpus = set_str(&r.cpuset_cpus);
    let mems = set_str(&r.cpuset_mems);
    if cpus.is_some() || mems.is_some() {
        let cpuset = need("cpuset")?;
        if let Some(cpus) = cpus {
            write_control(&cpuset.join("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = mems {
            write_control(&cpuset.join("cpuset.mems"), mems)?;
        }
    }
    Ok(())
}

fn pids_value(limit: i64) -> String {
    if limit < 0 {
        "max".to_string()
    } else {
        limit.to_string()
    }
}

/// v1 memory: `memory.limit_in_bytes` and, when the kernel does swap accounting,
/// `memory.memsw.limit_in_bytes` (memory plus swap).
///
/// The kernel insists that the memory limit never exceeds the memory+swap limit, so the order of
/// the two writes depends on whether memory+swap grows (write it first) or shrinks (write it
/// last).
///
/// Without swap accounting (no memsw file) a memory+swap value of -1 or equal to the memory limit
/// is accepted and not written: those are what Kubernetes sends for "unlimited swap" and "no
/// swap", and failing them would make every container fail on such hosts; the memory limit is
/// still enforced. Any other value is an error, since the requested swap bound cannot be
/// enforced.
fn apply_v1_memory(dir: &Path, memory: Option<i64>, swap: Option<i64>) -> Result<(), CgroupError> {
    let memory = memory.map(|m| if m < 0 { -1 } else { m });
    let mut swap = swap.map(|s| if s < 0 { -1 } else { s });
    let memsw_path = dir.join("memory.memsw.limit_in_bytes");
    let limit_path = dir.join("memory.limit_in_bytes");
    let has_memsw = memsw_path.exists();

    // Lifting the memory limit while memory+swap stays limited is rejected by the kernel; runc
    // lifts both when only the memory limit is given as unlimited.
    if memory == Some(-1) && swap.is_none() && has_memsw {
        swap = Some(-1);
    }
    if let (Some(m), Some(s)) = (memory, swap) {
        if s != -1 && (m == -1 || s < m) {
            return Err(CgroupError::InvalidResources {
                reason: format!(
                    "memory+swap limit {s} is below the memory limit {}",
                    if m == -1 {
                        "(unlimited)".to_string()
                    } else {
                        m.to_string()
                    }
                ),
            });
        }
    }

    let Some(swap) = swap else {
        if let Some(m) = memory {
            write_control(&limit_path, &m.to_string())?;
        }
        return Ok(());
    };
    if !has_memsw {
        if swap == -1 || Some(swap) == memory {
            tracing::debug!(
                path = %memsw_path.display(),
                "no swap accounting in this kernel; memory+swap limit not written"
            );
            if let Some(m) = memory {
                write_control(&limit_path, &m.to_string())?;
            }
            return Ok(());
        }
        return Err(CgroupError::SwapLimitUnsupported { path: memsw_path });
    }

    let current = read_control(&memsw_path)?;
    let current: i128 = current.trim().parse().map_err(|_| CgroupError::Parse {
        path: memsw_path.clone(),
        detail: format!("expected a number, found {:?}", current.trim()),
    })?;
    let swap_grows = swap == -1 || i128::from(swap) > current;
    if swap_grows {
        write_control(&memsw_path, &swap.to_string())?;
    }
    if let Some(m) = memory {
        write_control(&limit_path, &m.to_string())?;
    }
    if !swap_grows {
        write_control(&memsw_path, &swap.to_string())?;
    }
    Ok(())
}

/// Controllers available to a v2 cgroup: its `cgroup.controllers`, i.e. what the parent
/// delegates through its `cgroup.subtree_control`.
pub(crate) fn v2_controllers(dir: &Path) -> Result<BTreeSet<String>, CgroupError> {
    let text = read_control(&dir.join("cgroup.controllers"))?;
    Ok(text.split_whitespace().map(str::to_string).collect())
}

/// Writes the limits into a v2 cgroup directory.
pub(crate) fn apply_v2(dir: &Path, r: &Resources) -> Result<(), CgroupError> {
    let available = v2_controllers(dir)?;
    let need = |controller: &str| {
        if available.contains(controller) {
            Ok(())
        } else {
            Err(CgroupError::ControllerUnavailable {
                controller: controller.to_string(),
                path: dir.to_path_buf(),
            })
        }
    };

    let shares = set(r.cpu_shares);
    let period = set(r.cpu_period);
    let quota = set(r.cpu_quota);
    if shares.is_some() || period.is_some() || quota.is_some() {
        need("cpu")?;
        if let Some(shares) = shares {
            write_control(
                &dir.join("cpu.weight"),
                &cpu_shares_to_weight(shares).to_string(),
            )?;
        }
        if period.is_some() || quota.is_some() {
            // cpu.max holds both values; the one not given keeps its current setting.
            let path = dir.join("cpu.max");
            let current = read_control(&path)?;
            let mut fields = current.split_whitespace();
            let (Some(current_quota), Some(current_period)) = (fields.next(), fields.next()) else {
                return Err(CgroupError::Parse {
                    path,
                    detail: format!("expected \"quota period\", found {:?}", current.trim()),
                });
            };
            let quota = match quota {
                Some(q) if q < 0 => "max".to_string(),
                Some(q) => q.to_string(),
                None => current_quota.to_string(),
            };
            let period = match period {
                Some(p) => p.to_string(),
                None => current_period.to_string(),
            };
            write_control(&path, &format!("{quota} {period}"))?;
        }
    }

    let memory = set(r.memory_limit);
    let swap = set(r.memory_swap);
    if memory.is_some() || swap.is_some() {
        need("memory")?;
        // v2 limits swap alone (memory.swap.max) where OCI gives memory+swap.
        let swap_only = match (swap, memory) {
            (None, _) => None,
            (Some(s), _) if s < 0 => Some("max".to_string()),
            (Some(s), Some(m)) if m > 0 => {
                if s < m {
                    return Err(CgroupError::InvalidResources {
                        reason: format!("memory+swap limit {s} is below the memory limit {m}"),
                    });
                }
                Some((s - m).to_string())
            }
            (Some(s), _) => {
                return Err(CgroupError::InvalidResources {
                    reason: format!(
                        "a memory+swap limit ({s}) needs a finite memory limit on cgroup v2, \
                         which limits swap on its own"
                    ),
                })
            }
        };
        if let Some(swap_only) = swap_only {
            let path = dir.join("memory.swap.max");
            // memory.swap.max is missing when the kernel does no swap accounting; "no swap" and
            // "unlimited swap" need no enforcement there (see apply_v1_memory).
            if read_optional(&path)?.is_some() {
                write_control(&path, &swap_only)?;
            } else if swap_only != "0" && swap_only != "max" {
                return Err(CgroupError::SwapLimitUnsupported { path });
            }
        }
        if let Some(m) = memory {
            let value = if m < 0 {
                "max".to_string()
            } else {
                m.to_string()
            };
            write_control(&dir.join("memory.max"), &value)?;
        }
    }

    if let Some(limit) = set(r.pids_limit) {
        need("pids")?;
        write_control(&dir.join("pids.max"), &pids_value(limit))?;
    }

    let cpus = set_str(&r.cpuset_cpus);
    let mems = set_str(&r.cpuset_mems);
    if cpus.is_some() || mems.is_some() {
        need("cpuset")?;
        if let Some(cpus) = cpus {
            write_control(&dir.join("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = mems {
            write_control(&dir.join("cpuset.mems"), mems)?;
        }
    }
    Ok(())
}
