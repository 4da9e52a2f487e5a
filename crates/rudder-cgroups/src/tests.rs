//! Unit tests on fake cgroup trees in temporary directories: the files the kernel would offer are
//! created beforehand, and what the code writes is checked byte for byte.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::*;

const MIB: i64 = 1024 * 1024;
const V1_UNLIMITED: &str = "9223372036854771712";

fn write_files(dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        fs::write(dir.join(name), content).unwrap();
    }
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap()
}

/// A v1 layout with one hierarchy per controller under `base` (cpu and cpuacct co-mounted when
/// `comount_cpu`), and the given controllers only.
fn v1_layout(base: &Path, controllers: &[&str], comount_cpu: bool) -> Layout {
    let mut mounts = BTreeMap::new();
    for controller in controllers {
        let dir = if comount_cpu && (*controller == "cpu" || *controller == "cpuacct") {
            base.join("cpu,cpuacct")
        } else {
            base.join(controller)
        };
        fs::create_dir_all(&dir).unwrap();
        mounts.insert(controller.to_string(), dir);
    }
    Layout::V1 { mounts }
}

/// A v1 cgroup directory with the files the kernel creates and their defaults.
fn fake_v1_cgroup(cgroup: &Cgroup, with_memsw: bool) {
    let dir = |c: &str| cgroup.path_for(c).unwrap();
    write_files(
        &dir("cpu"),
        &[
            ("cpu.shares", "1024\n"),
            ("cpu.cfs_period_us", "100000\n"),
            ("cpu.cfs_quota_us", "-1\n"),
            ("cgroup.procs", ""),
        ],
    );
    write_files(
        &dir("memory"),
        &[
            ("memory.limit_in_bytes", V1_UNLIMITED),
            ("cgroup.procs", ""),
        ],
    );
    if with_memsw {
        write_files(
            &dir("memory"),
            &[("memory.memsw.limit_in_bytes", V1_UNLIMITED)],
        );
    }
    write_files(&dir("pids"), &[("pids.max", "max\n"), ("cgroup.procs", "")]);
    write_files(
        &dir("cpuset"),
        &[
            ("cpuset.cpus", "\n"),
            ("cpuset.mems", "\n"),
            ("cgroup.procs", ""),
        ],
    );
}

fn full_resources() -> Resources {
    Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        memory_limit: Some(64 * MIB),
        memory_swap: Some(64 * MIB),
        pids_limit: Some(64),
        cpuset_cpus: Some("0".to_string()),
        cpuset_mems: Some("0".to_string()),
    }
}

#[test]
fn relative_paths_are_normalised() {
    let layout = Layout::V2 {
        root: PathBuf::from("/sys/fs/cgroup"),
    };
    let cgroup = Cgroup::new(layout.clone(), "/rudder/kubepods/pod1/c1");
    assert_eq!(cgroup.relative(), Path::new("rudder/kubepods/pod1/c1"));
    assert_eq!(
        cgroup.paths(),
        vec![PathBuf::from("/sys/fs/cgroup/rudder/kubepods/pod1/c1")]
    );
    let escaping = Cgroup::new(layout, "../../etc/./x");
    assert_eq!(escaping.relative(), Path::new("etc/x"));
    assert_eq!(
        escaping.path_for("memory"),
        Some(PathBuf::from("/sys/fs/cgroup/etc/x"))
    );
}

#[test]
fn v1_paths_have_one_dir_per_hierarchy() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = v1_layout(
        tmp.path(),
        &["cpu", "cpuacct", "memory", "pids", "net_cls"],
        true,
    );
    let cgroup = Cgroup::new(layout, "rudder/c1");
    assert_eq!(
        cgroup.paths(),
        vec![
            tmp.path().join("cpu,cpuacct/rudder/c1"),
            tmp.path().join("memory/rudder/c1"),
            tmp.path().join("pids/rudder/c1"),
        ]
    );
    assert_eq!(
        cgroup.path_for("cpuacct"),
        Some(tmp.path().join("cpu,cpuacct/rudder/c1"))
    );
    assert_eq!(cgroup.path_for("freezer"), None);
}

#[test]
fn v1_apply_writes_every_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = v1_layout(tmp.path(), &["cpu", "memory", "pids", "cpuset"], false);
    let cgroup = Cgroup::new(layout, "pod/c1");
    fake_v1_cgroup(&cgroup, true);
    cgroup.apply(&full_resources()).unwrap();

    let cpu = cgroup.path_for("cpu").unwrap();
    assert_eq!(read(cpu.join("cpu.shares")), "512");
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
    let memory = cgroup.path_for("memory").unwrap();
    assert_eq!(read(memory.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(memory.join("memory.memsw.limit_in_bytes")), "67108864");
    assert_eq!(
        read(cgroup.path_for("pids").unwrap().join("pids.max")),
        "64"
    );
    let cpuset = cgroup.path_for("cpuset").unwrap();
    assert_eq!(read(cpuset.join("cpuset.cpus")), "0");
    assert_eq!(read(cpuset.join("cpuset.mems")), "0");
}

#[test]
fn v1_unlimited_values() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = v1_layout(tmp.path(), &["cpu", "memory", "pids", "cpuset"], false);
    let cgroup = Cgroup::new(layout, "c1");
    fake_v1_cgroup(&cgroup, true);
    cgroup.apply(&full_resources()).unwrap();
    cgroup
        .apply(&Resources {
            cpu_quota: Some(-1),
            memory_limit: Some(-1),
            pids_limit: Some(-1),
            ..Resources::default()
        })
        .unwrap();
    let memory = cgroup.path_for("memory").unwrap();
    assert_eq!(
        read(cgroup.path_for("cpu").unwrap().join("cpu.cfs_quota_us")),
        "-1"
    );
    // Lifting memory alone lifts memory+swap too, else the kernel would refuse.
    assert_eq!(read(memory.join("memory.limit_in_bytes")), "-1");
    assert_eq!(read(memory.join("memory.memsw.limit_in_bytes")), "-1");
    assert_eq!(
        read(cgroup.path_for("pids").unwrap().join("pids.max")),
        "max"
    );
    // Untouched: shares, period, cpusets.
    assert_eq!(
        read(cgroup.path_for("cpu").unwrap().join("cpu.shares")),
        "512"
    );
}

#[test]
fn v1_zero_and_none_leave_files_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = v1_layout(tmp.path(), &["cpu", "memory", "pids", "cpuset"], false);
    let cgroup = Cgroup::new(layout, "c1");
    fake_v1_cgroup(&cgroup, true);
    cgroup
        .apply(&Resources {
            cpu_shares: Some(0),
            cpu_quota: Some(0),
            pids_limit: Some(0),
            cpuset_cpus: Some(String::new()),
            ..Resources::default()
        })
        .unwrap();
    let cpu = cgroup.path_for("cpu").unwrap();
    assert_eq!(read(cpu.join("cpu.shares")), "1024\n");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "-1\n");
    assert_eq!(
        read(cgroup.path_for("pids").unwrap().join("pids.max")),
        "max\n"
    );
}

#[test]
fn v1_without_swap_accounting() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = v1_layout(tmp.path(), &["cpu", "memory", "pids", "cpuset"], false);
    let cgroup = Cgroup::new(layout, "c1");
    fake_v1_cgroup(&cgroup, false);
    let memory = cgroup.path_for("memory").unwrap();

    // "No swap" (memory+swap == memory) is accepted; the memory limit is written.
    cgroup
        .apply(&Resources {
            memory_limit: Some(64 * MIB),
            memory_swap: Some(64 * MIB),
            ..Resources::default()
        })
        .unwrap();
    assert_eq!(read(memory.join("memory.limit_in_bytes")), "67108864");
    assert!(!memory.join("memory.memsw.limit_in_bytes").exists());

    // A real swap bound cannot be enforced.
    let err = cgroup
        .apply(&Resources {
            memory_limit: Some(64 * MIB),
            memory_swap: Some(128 * MIB),
            ..Resources::default()
        })
        .unwrap_err();
    assert!(
        matches!(err, CgroupError::SwapLimitUnsupported { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("swap accounting"), "{err}");
}

#[test]
fn v1_contradicting_limits_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = v1_layout(tmp.path(), &["cpu", "memory", "pids", "cpuset"], false);
    let cgroup = Cgroup::new(layout, "c1");
    fake_v1_cgroup(&cgroup, true);
    let err = cgroup
        .apply(&Resources {
            memory_limit: Some(64 * MIB),
            memory_swap: Some(32 * MIB),
            ..Resources::default()
        })
        .unwrap_err();
    assert!(matches!(err, CgroupError::InvalidResources { .. }), "{err}");
    let memory = cgroup.path_for("memory").unwrap();
    assert_eq!(read(memory.join("memory.limit_in_bytes")), V1_UNLIMITED);
}

#[test]
fn v1_missing_hierarchy_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = v1_layout(tmp.path(), &["cpu", "memory", "cpuset"], false);
    let cgroup = Cgroup::new(layout, "c1");
    let err = cgroup
        .apply(&Resources {
            pids_limit: Some(10),
            ..Resources::default()
        })
        .unwrap_err();
    assert!(
        matches!(&err, CgroupError::ControllerNotMounted { controller } if controller == "pids"),
        "{err}"
    );
}

#[test]
fn v1_create_copies_cpusets_into_new_levels() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = v1_layout(tmp.path(), &["cpu", "cpuacct", "memory", "cpuset"], true);
    let cpuset_root = tmp.path().join("cpuset");
    write_files(
        &cpuset_root,
        &[("cpuset.cpus", "0-1\n"), ("cpuset.mems", "0\n")],
    );
    // The fake kernel: the level below the root exists with the empty cpusets the kernel gives a
    // new cgroup.
    write_files(
        &cpuset_root.join("pod"),
        &[("cpuset.cpus", "\n"), ("cpuset.mems", "\n")],
    );
    let cgroup = Cgroup::new(layout, "pod");
    cgroup.create().unwrap();
    assert_eq!(read(cpuset_root.join("pod/cpuset.cpus")), "0-1");
    assert_eq!(read(cpuset_root.join("pod/cpuset.mems")), "0");
    for dir in cgroup.paths() {
        assert!(dir.is_dir(), "{} not created", dir.display());
    }
    assert!(tmp.path().join("cpu,cpuacct/pod").is_dir());
    assert!(tmp.path().join("memory/pod").is_dir());
}

fn fake_v2_dir(dir: &Path, controllers: &str) {
    write_files(
        dir,
        &[
            ("cgroup.controllers", controllers),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
            ("cpu.weight", "100\n"),
            ("cpu.max", "max 100000\n"),
            ("memory.max", "max\n"),
            ("memory.swap.max", "max\n"),
            ("pids.max", "max\n"),
            ("cpuset.cpus", "\n"),
            ("cpuset.mems", "\n"),
        ],
    );
}

#[test]
fn v2_apply_writes_every_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let cgroup = Cgroup::new(
        Layout::V2 {
            root: tmp.path().to_path_buf(),
        },
        "pod/c1",
    );
    let dir = tmp.path().join("pod/c1");
    fake_v2_dir(&dir, "cpuset cpu memory pids\n");
    cgroup
        .apply(&Resources {
            cpu_shares: Some(1024),
            ..full_resources()
        })
        .unwrap();
    // 1 + ((1024 - 2) * 9999) / 262142 = 39
    assert_eq!(read(dir.join("cpu.weight")), "39");
    assert_eq!(read(dir.join("cpu.max")), "50000 100000");
    assert_eq!(read(dir.join("memory.max")), "67108864");
    assert_eq!(read(dir.join("memory.swap.max")), "0");
    assert_eq!(read(dir.join("pids.max")), "64");
    assert_eq!(read(dir.join("cpuset.cpus")), "0");
    assert_eq!(read(dir.join("cpuset.mems")), "0");

    cgroup
        .apply(&Resources {
            cpu_quota: Some(-1),
            memory_limit: Some(-1),
            memory_swap: Some(-1),
            pids_limit: Some(-1),
            ..Resources::default()
        })
        .unwrap();
    assert_eq!(read(dir.join("cpu.max")), "max 100000");
    assert_eq!(read(dir.join("memory.max")), "max");
    assert_eq!(read(dir.join("memory.swap.max")), "max");
    assert_eq!(read(dir.join("pids.max")), "max");

    // A period alone keeps the quota in force.
    fs::write(dir.join("cpu.max"), "20000 100000\n").unwrap();
    cgroup
        .apply(&Resources {
            cpu_period: Some(50_000),
            memory_limit: Some(64 * MIB),
            memory_swap: Some(96 * MIB),
            ..Resources::default()
        })
        .unwrap();
    assert_eq!(read(dir.join("cpu.max")), "20000 50000");
    assert_eq!(read(dir.join("memory.swap.max")), (32 * MIB).to_string());
}

#[test]
fn shares_to_weight_matches_kubernetes() {
    assert_eq!(cpu_shares_to_weight(2), 1);
    assert_eq!(cpu_shares_to_weight(1), 1);
    assert_eq!(cpu_shares_to_weight(102), 4);
    assert_eq!(cpu_shares_to_weight(1024), 39);
    assert_eq!(cpu_shares_to_weight(262_144), 10_000);
    assert_eq!(cpu_shares_to_weight(1_000_000), 10_000);
}

#[test]
fn v2_missing_controller_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let cgroup = Cgroup::new(
        Layout::V2 {
            root: tmp.path().to_path_buf(),
        },
        "c1",
    );
    let dir = tmp.path().join("c1");
    fake_v2_dir(&dir, "cpu pids\n");
    let err = cgroup
        .apply(&Resources {
            memory_limit: Some(64 * MIB),
            ..Resources::default()
        })
        .unwrap_err();
    assert!(
        matches!(&err, CgroupError::ControllerUnavailable { controller, path }
            if controller == "memory" && *path == dir),
        "{err}"
    );
    assert!(err.to_string().contains("cgroup.controllers"), "{err}");
    assert_eq!(read(dir.join("memory.max")), "max\n");
}

#[test]
fn v2_swap_without_memory_limit_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let cgroup = Cgroup::new(
        Layout::V2 {
            root: tmp.path().to_path_buf(),
        },
        "c1",
    );
    fake_v2_dir(&tmp.path().join("c1"), "memory\n");
    let err = cgroup
        .apply(&Resources {
            memory_swap: Some(64 * MIB),
            ..Resources::default()
        })
        .unwrap_err();
    assert!(matches!(err, CgroupError::InvalidResources { .. }), "{err}");
}

#[test]
fn v2_create_delegates_available_controllers_to_every_ancestor() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fake_v2_dir(root, "cpuset cpu io memory hugetlb pids rdma misc\n");
    // An intermediate level that already delegates memory.
    fake_v2_dir(&root.join("rudder"), "cpuset cpu io memory hugetlb pids\n");
    fs::write(root.join("rudder/cgroup.subtree_control"), "memory\n").unwrap();
    fake_v2_dir(&root.join("rudder/pod"), "cpu memory pids\n");
    let cgroup = Cgroup::new(
        Layout::V2 {
            root: root.to_path_buf(),
        },
        "rudder/pod/c1",
    );
    cgroup.create().unwrap();
    assert_eq!(
        read(root.join("cgroup.subtree_control")),
        "+cpuset +cpu +io +memory +pids"
    );
    assert_eq!(
        read(root.join("rudder/cgroup.subtree_control")),
        "+cpuset +cpu +io +pids"
    );
    assert_eq!(
        read(root.join("rudder/pod/cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    assert!(root.join("rudder/pod/c1").is_dir());
    // The leaf holds processes and delegates nothing.
    assert!(!root.join("rudder/pod/c1/cgroup.subtree_control").exists());
}

#[test]
fn v2_create_with_no_wanted_controller_writes_nothing() {
    // The unified mount of a hybrid host offers hugetlb only.
    let tmp = tempfile::tempdir().unwrap();
    fake_v2_dir(tmp.path(), "hugetlb\n");
    let cgroup = Cgroup::new(
        Layout::V2 {
            root: tmp.path().to_path_buf(),
        },
        "c1",
    );
    cgroup.create().unwrap();
    assert_eq!(read(tmp.path().join("cgroup.subtree_control")), "");
    assert!(tmp.path().join("c1").is_dir());
}

#[test]
fn v1_stats_from_control_files() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = v1_layout(tmp.path(), &["cpu", "cpuacct", "memory", "pids"], true);
    let cgroup = Cgroup::new(layout, "c1");
    write_files(
        &cgroup.path_for("cpuacct").unwrap(),
        &[("cpuacct.usage", "123456789\n")],
    );
    write_files(
        &cgroup.path_for("memory").unwrap(),
        &[
            ("memory.usage_in_bytes", "10485760\n"),
            (
                "memory.stat",
                "cache 0\ninactive_file 1\ntotal_inactive_file 4194304\n",
            ),
            ("memory.limit_in_bytes", "67108864\n"),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
            ),
        ],
    );
    write_files(
        &cgroup.path_for("pids").unwrap(),
        &[("pids.current", "2\n")],
    );
    assert_eq!(
        cgroup.stats().unwrap(),
        Stats {
            cpu_usage_ns: Some(123_456_789),
            memory_usage_bytes: Some(10_485_760),
            memory_working_set_bytes: Some(6_291_456),
            memory_limit_bytes: Some(67_108_864),
            pids_current: Some(2),
        }
    );
    assert_eq!(cgroup.oom_kill_count().unwrap(), 3);

    fs::write(
        cgroup
            .path_for("memory")
            .unwrap()
            .join("memory.limit_in_bytes"),
        V1_UNLIMITED,
    )
    .unwrap();
    fs::remove_file(cgroup.path_for("pids").unwrap().join("pids.current")).unwrap();
    let stats = cgroup.stats().unwrap();
    assert_eq!(stats.memory_limit_bytes, None);
    assert_eq!(stats.pids_current, None);
}

#[test]
fn v2_stats_from_control_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cgroup = Cgroup::new(
        Layout::V2 {
            root: tmp.path().to_path_buf(),
        },
        "c1",
    );
    let dir = tmp.path().join("c1");
    write_files(
        &dir,
        &[
            (
                "cpu.stat",
                "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
            ),
            ("memory.current", "8192\n"),
            ("memory.stat", "anon 4096\ninactive_file 12288\n"),
            ("memory.max", "max\n"),
            ("memory.events", "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n"),
        ],
    );
    assert_eq!(
        cgroup.stats().unwrap(),
        Stats {
            cpu_usage_ns: Some(2_500_000),
            memory_usage_bytes: Some(8192),
            // Never below zero, even when inactive_file exceeds usage momentarily.
            memory_working_set_bytes: Some(0),
            memory_limit_bytes: None,
            pids_current: None,
        }
    );
    assert_eq!(cgroup.oom_kill_count().unwrap(), 1);
    fs::remove_file(dir.join("memory.events")).unwrap();
    assert_eq!(cgroup.oom_kill_count().unwrap(), 0);
}

#[test]
fn stats_of_a_cgroup_never_created_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cgroup = Cgroup::new(
        Layout::V2 {
            root: tmp.path().to_path_buf(),
        },
        "absent",
    );
    assert!(matches!(
        cgroup.stats(),
        Err(CgroupError::MissingControlFile { .. })
    ));
    assert_eq!(cgroup.procs().unwrap(), Vec::<u32>::new());
    cgroup.delete().unwrap();
}

#[test]
fn invalid_signal_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let cgroup = Cgroup::new(
        Layout::V2 {
            root: tmp.path().to_path_buf(),
        },
        "c1",
    );
    assert!(matches!(
        cgroup.kill_all(12345),
        Err(CgroupError::InvalidSignal { signal: 12345 })
    ));
}
