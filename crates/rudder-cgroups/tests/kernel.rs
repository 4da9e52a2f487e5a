//! Tests against the real kernel, as root: cgroups are created at the top of the host's
//! hierarchies under unique "rudder-test-…" names and removed afterwards (also when a test
//! fails, by the guards' Drop).

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rudder_cgroups::{Cgroup, CgroupError, Layout, Resources};

const MIB: i64 = 1024 * 1024;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// Set in a child copy of this test binary: the relative cgroup the child must join with
/// add_self.
const ADD_SELF_ENV: &str = "RUDDER_CGROUPS_TEST_ADD_SELF";

fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "rudder-test-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// None (with the reason printed) when these tests cannot run here.
fn real_layout() -> Option<Layout> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: cgroup tests against the kernel need root");
        return None;
    }
    match Layout::detect() {
        Ok(layout) => Some(layout),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// Kills what is left and removes the cgroup, even when an assertion failed.
struct CgroupGuard(Cgroup);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = self.0.kill_all(SIGKILL);
        let _ = self.0.delete();
    }
}

/// A child that waits for a line on stdin before exec'ing its command, so that it can be moved
/// into a cgroup before it does any work (its memory is then charged to that cgroup).
struct GatedChild {
    child: Child,
}

impl GatedChild {
    fn spawn(command: &str) -> GatedChild {
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("read go; exec {command}"))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        GatedChild { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the shell exec its command and waits until it has.
    fn release(&mut self, program: &str) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        let comm = format!("/proc/{}/comm", self.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&comm).unwrap_or_default().trim() != program {
            assert!(Instant::now() < deadline, "{program} never started");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the child to exit, killing it after a generous bound so that a broken limit
    /// cannot hang the test suite.
    fn wait_bounded(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("child {} did not exit", self.pid());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for GatedChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cgroup path of `pid` as /proc/<pid>/cgroup shows it for the memory hierarchy (v1) or the
/// unified one (v2).
fn proc_cgroup_path(pid: u32, layout: &Layout) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = if layout.is_v2() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "memory")
        };
        wanted.then(|| path.to_string())
    })
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn lifecycle_on_the_host_layout() {
    let Some(layout) = real_layout() else { return };
    let name = unique_name();
    let cgroup = CgroupGuard(Cgroup::new(layout.clone(), format!("/{name}/pod/c1")));
    let parent = CgroupGuard(Cgroup::new(layout.clone(), format!("{name}/pod")));
    let top = CgroupGuard(Cgroup::new(layout.clone(), &name));
    cgroup.0.create().unwrap();
    for dir in cgroup.0.paths() {
        assert!(dir.is_dir(), "{} not created", dir.display());
    }

    cgroup
        .0
        .apply(&Resources {
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(64 * MIB),
            pids_limit: Some(64),
            ..Resources::default()
        })
        .unwrap();
    match &layout {
        Layout::V1 { .. } => {
            let cpu = cgroup.0.path_for("cpu").unwrap();
            assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
            assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
            let memory = cgroup.0.path_for("memory").unwrap();
            assert_eq!(read(memory.join("memory.limit_in_bytes")), "67108864");
            let pids = cgroup.0.path_for("pids").unwrap();
            assert_eq!(read(pids.join("pids.max")), "64");
            // The new cpuset levels got their parents' CPUs, or tasks could not join.
            if let Some(cpuset) = cgroup.0.path_for("cpuset") {
                assert!(!read(cpuset.join("cpuset.cpus")).is_empty());
                assert!(!read(cpuset.join("cpuset.mems")).is_empty());
            }
        }
        Layout::V2 { .. } => {
            let dir = cgroup.0.path_for("memory").unwrap();
            assert_eq!(read(dir.join("cpu.max")), "50000 100000");
            assert_eq!(read(dir.join("memory.max")), "67108864");
            assert_eq!(read(dir.join("pids.max")), "64");
        }
    }

    let mut child = GatedChild::spawn("sleep 30");
    let pid = child.pid();
    cgroup.0.add_process(pid).unwrap();
    child.release("sleep");
    assert!(cgroup.0.procs().unwrap().contains(&pid));
    assert_eq!(
        proc_cgroup_path(pid, &layout).as_deref(),
        Some(format!("/{name}/pod/c1").as_str())
    );

    let stats = cgroup.0.stats().unwrap();
    assert!(
        stats.memory_usage_bytes.unwrap() > 0,
        "the exec'd sleep charges memory: {stats:?}"
    );
    assert!(stats.memory_working_set_bytes.unwrap() <= stats.memory_usage_bytes.unwrap());
    assert_eq!(stats.memory_limit_bytes, Some(64 * 1024 * 1024));
    assert!(stats.cpu_usage_ns.is_some(), "{stats:?}");
    assert!(stats.pids_current.unwrap() >= 1, "{stats:?}");
    assert_eq!(cgroup.0.oom_kill_count().unwrap(), 0);

    // A parent with a child cgroup cannot be removed.
    match parent.0.delete() {
        Err(CgroupError::Io { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(nix::libc::EBUSY))
        }
        other => panic!("deleting a cgroup with a child cgroup: {other:?}"),
    }

    cgroup.0.kill_all(SIGKILL).unwrap();
    let status = child.wait_bounded();
    assert_eq!(status.signal(), Some(SIGKILL));
    assert!(cgroup.0.procs().unwrap().is_empty());

    cgroup.0.delete().unwrap();
    parent.0.delete().unwrap();
    top.0.delete().unwrap();
    for dir in top.0.paths() {
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
    // Deleting again is fine.
    cgroup.0.delete().unwrap();
}

#[test]
fn kill_all_with_a_catchable_signal() {
    let Some(layout) = real_layout() else { return };
    let cgroup = CgroupGuard(Cgroup::new(layout, unique_name()));
    cgroup.0.create().unwrap();
    let mut child = GatedChild::spawn("sleep 30");
    cgroup.0.add_process(child.pid()).unwrap();
    child.release("sleep");
    cgroup.0.kill_all(SIGTERM).unwrap();
    assert_eq!(child.wait_bounded().signal(), Some(SIGTERM));
    cgroup.0.delete().unwrap();
}

#[test]
fn oom_kill_is_counted() {
    let Some(layout) = real_layout() else { return };
    let cgroup = CgroupGuard(Cgroup::new(layout, unique_name()));
    cgroup.0.create().unwrap();
    // memory+swap equal to memory: no swap, so the allocation cannot escape to swap.
    cgroup
        .0
        .apply(&Resources {
            memory_limit: Some(16 * MIB),
            memory_swap: Some(16 * MIB),
            ..Resources::default()
        })
        .unwrap();
    assert_eq!(cgroup.0.oom_kill_count().unwrap(), 0);
    // tail keeps the last lines of its input; /dev/zero has no newline, so it buffers forever.
    let mut child = GatedChild::spawn("tail /dev/zero");
    cgroup.0.add_process(child.pid()).unwrap();
    child.release("tail");
    let status = child.wait_bounded();
    assert_eq!(status.signal(), Some(SIGKILL), "{status:?}");
    assert!(cgroup.0.oom_kill_count().unwrap() > 0);
    cgroup.0.delete().unwrap();
}

/// Runs only inside the child spawned by `add_self_moves_the_calling_process`.
#[test]
fn add_self_child() {
    let Ok(relative) = std::env::var(ADD_SELF_ENV) else {
        return;
    };
    let cgroup = Cgroup::new(Layout::detect().unwrap(), relative);
    cgroup.add_self().unwrap();
    let me = std::process::id();
    assert!(cgroup.procs().unwrap().contains(&me));
    println!("joined as {me}");
}

#[test]
fn add_self_moves_the_calling_process() {
    let Some(layout) = real_layout() else { return };
    let name = unique_name();
    let cgroup = CgroupGuard(Cgroup::new(layout, &name));
    cgroup.0.create().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "add_self_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ADD_SELF_ENV, &name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("joined as"), "{stdout}");
    // The child has exited, leaving the cgroup empty and removable.
    cgroup.0.delete().unwrap();
}

/// Unmounts on drop.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cannot unmount {}: {e}", self.0.display());
        }
    }
}

fn kernel_has_cgroup2() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|text| {
            text.lines()
                .any(|l| l.split_whitespace().last() == Some("cgroup2"))
        })
        .unwrap_or(false)
}

#[test]
fn v2_on_a_private_cgroup2_mount() {
    if real_layout().is_none() {
        return;
    }
    if !kernel_has_cgroup2() {
        eprintln!("skipped: the kernel has no cgroup2 filesystem");
        return;
    }
    let mount_dir = tempfile::tempdir().unwrap();
    nix::mount::mount(
        Some("none"),
        mount_dir.path(),
        Some("cgroup2"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let _mount = MountGuard(mount_dir.path().to_path_buf());
    let root = mount_dir.path().to_path_buf();
    let name = unique_name();
    let cgroup = CgroupGuard(Cgroup::new(Layout::V2 { root: root.clone() }, &name));
    cgroup.0.create().unwrap();
    let dir = root.join(&name);
    assert_eq!(cgroup.0.paths(), vec![dir.clone()]);
    assert!(dir.join("cgroup.procs").exists());

    let controllers = read(dir.join("cgroup.controllers"));
    let memory = Resources {
        memory_limit: Some(64 * MIB),
        ..Resources::default()
    };
    if controllers.split_whitespace().any(|c| c == "memory") {
        cgroup.0.apply(&memory).unwrap();
        assert_eq!(read(dir.join("memory.max")), "67108864");
    } else {
        // A hybrid host: memory belongs to the v1 hierarchy.
        let err = cgroup.0.apply(&memory).unwrap_err();
        assert!(
            matches!(&err, CgroupError::ControllerUnavailable { controller, path }
                if controller == "memory" && *path == dir),
            "{err}"
        );
    }

    let mut child = GatedChild::spawn("sleep 30");
    let pid = child.pid();
    cgroup.0.add_process(pid).unwrap();
    child.release("sleep");
    assert_eq!(cgroup.0.procs().unwrap(), vec![pid]);
    assert_eq!(
        proc_cgroup_path(pid, &Layout::V2 { root: root.clone() }),
        Some(format!("/{name}"))
    );
    assert!(cgroup.0.stats().unwrap().cpu_usage_ns.is_some());

    cgroup.0.kill_all(SIGKILL).unwrap();
    assert_eq!(child.wait_bounded().signal(), Some(SIGKILL));
    assert!(cgroup.0.procs().unwrap().is_empty());
    cgroup.0.delete().unwrap();
    assert!(!dir.exists());
}

/// The process running the tests stays where it was: the tests above move only children.
#[test]
fn procs_of_a_path_that_does_not_exist_is_empty() {
    let Some(layout) = real_layout() else { return };
    let cgroup = Cgroup::new(layout, unique_name());
    assert!(cgroup.procs().unwrap().is_empty());
    assert!(cgroup.paths().iter().all(|p: &PathBuf| !Path::exists(p)));
    cgroup.delete().unwrap();
}
