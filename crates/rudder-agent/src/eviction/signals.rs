//! Observing the eviction signals: memory from `/proc/meminfo`, the node's
//! and the image store's filesystems from `statvfs`, process ids from
//! `kernel.pid_max` and `/proc/loadavg`.

use std::collections::BTreeMap;
use std::path::Path;

use super::thresholds::Signal;
use crate::server::stats::parse_meminfo;

/// One signal's reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub available: i64,
    pub capacity: i64,
}

/// What was observed, per signal; a signal that could not be read is
/// absent (and its threshold then never met).
pub type Observations = BTreeMap<Signal, Observation>;

/// A filesystem's size and free space, from `statvfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStats {
    pub capacity_bytes: i64,
    /// Free to unprivileged users (`f_bavail`), as cAdvisor reports.
    pub available_bytes: i64,
    pub inodes: i64,
    pub inodes_free: i64,
}

impl FsStats {
    /// From `statvfs` figures: blocks are in fragment-size units.
    pub fn from_statvfs(
        fragment_size: u64,
        blocks: u64,
        blocks_available: u64,
        files: u64,
        files_free: u64,
    ) -> FsStats {
        let bytes = |n: u64| i64::try_from(n.saturating_mul(fragment_size)).unwrap_or(i64::MAX);
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        FsStats {
            capacity_bytes: bytes(blocks),
            available_bytes: bytes(blocks_available),
            inodes: count(files),
            inodes_free: count(files_free),
        }
    }

    pub fn of(path: &Path) -> Option<FsStats> {
        let s = nix::sys::statvfs::statvfs(path).ok()?;
        Some(FsStats::from_statvfs(
            s.fragment_size(),
            s.blocks(),
            s.blocks_available(),
            s.files(),
            s.files_free(),
        ))
    }
}

/// `memory.available` as the kubelet computes it: capacity minus the
/// working set, the working set being what is in use less the inactive
/// page cache the kernel can drop (`MemTotal - MemFree - Inactive(file)`).
pub fn memory_available(meminfo: &str) -> Option<Observation> {
    let mem = parse_meminfo(meminfo)?;
    let working_set = mem
        .total
        .saturating_sub(mem.free)
        .saturating_sub(mem.inactive_file);
    let capacity = i64::try_from(mem.total).ok()?;
    Some(Observation {
        available: capacity - i64::try_from(working_set).ok()?,
        capacity,
    })
}

/// `pid.available`: `kernel.pid_max` less the scheduling entities that
/// exist (the total after the slash in `/proc/loadavg`'s fourth field).
pub fn pid_available(pid_max: &str, loadavg: &str) -> Option<Observation> {
    let max: i64 = pid_max.trim().parse().ok()?;
    let running: i64 = loadavg
        .split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()?;
    Some(Observation {
        available: max - running,
        capacity: max,
    })
}

/// Adds the filesystem signals of the node's (`nodefs`) or the image
/// store's (`imagefs`) filesystem.
pub fn add_fs(observations: &mut Observations, nodefs: bool, fs: FsStats) {
    let (bytes, inodes) = if nodefs {
        (Signal::NodeFsAvailable, Signal::NodeFsInodesFree)
    } else {
        (Signal::ImageFsAvailable, Signal::ImageFsInodesFree)
    };
    observations.insert(
        bytes,
        Observation {
            available: fs.available_bytes,
            capacity: fs.capacity_bytes,
        },
    );
    // Filesystems without inode accounting (btrfs) report no inodes.
    if fs.inodes > 0 {
        observations.insert(
            inodes,
            Observation {
                available: fs.inodes_free,
                capacity: fs.inodes,
            },
        );
    }
}

/// Reads every signal from this machine: `nodefs` is the filesystem of the
/// agent's data directory, `imagefs` that of the image store (the same
/// filesystem unless the store lives elsewhere).
pub fn observe(data_dir: &Path, image_dir: &Path) -> Observations {
    let mut observations = Observations::new();
    if let Some(memory) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| memory_available(&text))
    {
        observations.insert(Signal::MemoryAvailable, memory);
    }
    if let Some(fs) = FsStats::of(data_dir) {
        add_fs(&mut observations, true, fs);
    }
    if let Some(fs) = FsStats::of(image_dir).or_else(|| FsStats::of(data_dir)) {
        add_fs(&mut observations, false, fs);
    }
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    if let Some(pids) = pid_available(&pid_max, &loadavg) {
        observations.insert(Signal::PidAvailable, pids);
    }
    observations
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:        8000000 kB\n\
                           MemFree:         1000000 kB\n\
                           MemAvailable:    5000000 kB\n\
                           Buffers:          100000 kB\n\
                           Inactive(file):  2000000 kB\n";

    #[test]
    fn memory_available_is_capacity_less_working_set() {
        let m = memory_available(MEMINFO).unwrap();
        assert_eq!(m.capacity, 8_000_000 * 1024);
        // Free plus the inactive file cache.
        assert_eq!(m.available, 3_000_000 * 1024);
        assert_eq!(memory_available("garbage"), None);
    }

    #[test]
    fn pids_available_are_pid_max_less_what_exists() {
        assert_eq!(
            pid_available("4194304\n", "0.52 0.58 0.59 3/1204 99999\n"),
            Some(Observation {
                available: 4_194_304 - 1204,
                capacity: 4_194_304
            })
        );
        assert_eq!(pid_available("", "0.52 0.58 0.59 3/1204 1"), None);
        assert_eq!(pid_available("100", "0.52"), None);
    }

    #[test]
    fn filesystem_signals_come_from_statvfs() {
        let fs = FsStats::from_statvfs(4096, 1000, 250, 500, 20);
        assert_eq!(fs.capacity_bytes, 4_096_000);
        assert_eq!(fs.available_bytes, 1_024_000);
        let mut observations = Observations::new();
        add_fs(&mut observations, true, fs);
        add_fs(
            &mut observations,
            false,
            FsStats::from_statvfs(4096, 10, 5, 0, 0),
        );
        assert_eq!(
            observations[&Signal::NodeFsAvailable],
            Observation {
                available: 1_024_000,
                capacity: 4_096_000
            }
        );
        assert_eq!(
            observations[&Signal::NodeFsInodesFree],
            Observation {
                available: 20,
                capacity: 500
            }
        );
        assert_eq!(observations[&Signal::ImageFsAvailable].available, 20_480);
        // No inode accounting: no inode signal.
        assert!(!observations.contains_key(&Signal::ImageFsInodesFree));
    }
}
