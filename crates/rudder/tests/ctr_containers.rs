//! Containers through `rudder ctr`, as an operator runs them, on the images
//! `shared/acceptance/images/build.sh` builds and serves from a local
//! registry (127.0.0.1:5000). These run real containers: root, overlayfs,
//! namespaces and cgroups are needed (this suite runs as root in CI).

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "127.0.0.1:5000/busybox:1.35";
const LAYERED: &str = "127.0.0.1:5000/layered:1.0";

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    /// A fresh data dir with `images` pulled into it.
    fn with(images_to_pull: &[&str]) -> Node {
        support::build_test_images();
        let node = Node {
            dir: tempfile::Builder::new()
                .prefix("rudder-ctr-")
                .tempdir()
                .unwrap(),
        };
        for image in images_to_pull {
            node.ok(&["images", "pull", image]);
        }
        node
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rudder"));
        command
            .arg("ctr")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--registries-config")
            .arg(self.data_dir().join("registries.yaml"))
            .args(args)
            .env("RUST_BACKTRACE", "0");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "rudder ctr {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn status_of(&self, id: &str) -> String {
        self.ok(&["ps", "-a"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .map(|l| l.to_string())
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Whatever a failed test left running or mounted goes.
        let _ = Command::new(env!("CARGO_BIN_EXE_rudder"))
            .arg("reset")
            .arg("--data-dir")
            .arg(self.data_dir())
            .output();
    }
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cgroup_dir(controller: &str, id: &str) -> PathBuf {
    let relative = format!("rudder/ctr/{id}");
    let layout = rudder_cgroups::Layout::detect().unwrap();
    rudder_cgroups::Cgroup::new(layout, relative)
        .path_for(controller)
        .unwrap()
}

#[test]
fn exit_codes_and_output_pass_through() {
    let node = Node::with(&[BUSYBOX]);
    let output = node.run(&[
        "run",
        "--rm",
        BUSYBOX,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");

    // A command that does not exist: 127 and a message naming it.
    let output = node.run(&["run", "--rm", BUSYBOX, "no-such-command"]);
    assert_eq!(output.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"no-such-command\": executable file not found in $PATH"),
        "{stderr}"
    );

    // The image's Cmd runs when none is given; --rm left nothing behind.
    assert_eq!(node.ok(&["ps", "-a", "-q"]), "");
    let missing = node.run(&["run", "--rm", "127.0.0.1:5000/never-pulled:1"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("rudder ctr images pull"));
}

#[test]
fn the_container_is_isolated_and_stdin_is_attached() {
    let node = Node::with(&[BUSYBOX]);
    let mut child = node
        .command(&[
            "run", "--rm", "--name", "iso", "--env", "GREETING=hi", BUSYBOX, "sh", "-c",
            "read line; echo \"$GREETING $line\"; echo pid=$$; hostname; id -u; ls /proc/1/root >/dev/null && echo proc-ok; cat /etc/hostname",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"there\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["hi there", "pid=1", "iso", "0", "proc-ok", "iso"],
        "{stdout}"
    );
}

#[test]
fn identity_capabilities_and_a_read_only_root_are_applied() {
    let node = Node::with(&[BUSYBOX]);
    let out = node.ok(&[
        "run", "--rm", "--user", "65534:65534", "--read-only", BUSYBOX, "sh", "-c",
        "id -u; id -g; touch /probe 2>/dev/null || echo read-only; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], ["65534", "65534", "read-only"], "{out}");
    // A non-root user keeps no effective capabilities; the RuntimeDefault
    // seccomp filter is on.
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");

    // Root in the container has the default set minus what is dropped:
    // without CAP_CHOWN, chown fails.
    let out = node.ok(&[
        "run", "--rm", "--cap-drop", "CHOWN", BUSYBOX, "sh", "-c",
        "touch /tmp/f; chown 1:1 /tmp/f 2>/dev/null && echo chowned || echo denied; cat /proc/1/status | grep CapBnd",
    ]);
    assert!(out.starts_with("denied\n"), "{out}");
    // /proc/kcore is masked, /proc/sys read-only.
    let out = node.ok(&[
        "run", "--rm", BUSYBOX, "sh", "-c",
        "test -s /proc/kcore && echo kcore-readable || echo kcore-masked; echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo wrote || echo ro",
    ]);
    assert_eq!(out, "kcore-masked\nro\n");
}

#[test]
fn layered_images_honour_whiteouts() {
    let node = Node::with(&[LAYERED]);
    let out = node.ok(&[
        "run", "--rm", LAYERED, "sh", "-c",
        "cat /data/motd; test -e /data/gone.txt && echo gone-present; test -e /data/old && echo old-present; echo done",
    ]);
    assert_eq!(out, "v2\ndone\n");
}

#[test]
fn limits_land_in_the_container_cgroup_and_exec_joins_it() {
    let node = Node::with(&[BUSYBOX]);
    node.ok(&[
        "run", "-d", "--name", "limited", "--memory", "64m", "--cpus", "0.5", BUSYBOX, "sleep",
        "300",
    ]);
    let v2 = rudder_cgroups::Layout::detect().unwrap().is_v2();
    if v2 {
        let dir = cgroup_dir("memory", "limited");
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap().trim(),
            "67108864"
        );
        assert_eq!(
            fs::read_to_string(dir.join("cpu.max")).unwrap().trim(),
            "50000 100000"
        );
    } else {
        let memory = cgroup_dir("memory", "limited");
        assert_eq!(
            fs::read_to_string(memory.join("memory.limit_in_bytes"))
                .unwrap()
                .trim(),
            "67108864"
        );
        let cpu = cgroup_dir("cpu", "limited");
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
                .unwrap()
                .trim(),
            "50000"
        );
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_period_us"))
                .unwrap()
                .trim(),
            "100000"
        );
        // The container sees its own cgroup at /sys/fs/cgroup.
        let inside = node.ok(&[
            "exec",
            "limited",
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ]);
        assert_eq!(inside.trim(), "67108864");
    }
    // exec runs in the container's namespaces and cgroup, with its exit code.
    let ps = node.ok(&["exec", "limited", "ps"]);
    assert!(ps.lines().any(|l| l.contains("sleep 300")), "{ps}");
    let procs = fs::read_to_string(cgroup_dir("pids", "limited").join("cgroup.procs")).unwrap();
    assert_eq!(
        procs.lines().count(),
        1,
        "only the container's process: {procs}"
    );
    let failed = node.run(&["exec", "limited", "sh", "-c", "exit 7"]);
    assert_eq!(failed.status.code(), Some(7));
    let missing = node.run(&["exec", "limited", "nope"]);
    assert_eq!(missing.status.code(), Some(127));

    let stopped = node.ok(&["stop", "--time", "1", "limited"]);
    assert!(stopped.contains("exited (137)"), "{stopped}");
    node.ok(&["rm", "limited"]);
    assert!(!cgroup_dir("memory", "limited").exists());
}

#[test]
fn out_of_memory_kills_are_reported() {
    let node = Node::with(&[BUSYBOX]);
    let output = node.run(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "16m",
        BUSYBOX,
        "sh",
        "-c",
        "x=$(yes | head -c 200000000); echo survived",
    ]);
    assert_eq!(
        output.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        node.status_of("hog").contains("exited (137, OOMKilled)"),
        "{}",
        node.status_of("hog")
    );
    node.ok(&["rm", "hog"]);
}

#[test]
fn containers_outlive_the_process_that_started_them_and_keep_logging() {
    let node = Node::with(&[BUSYBOX]);
    let mut starter = node
        .command(&[
            "run",
            "--name",
            "durable",
            BUSYBOX,
            "sh",
            "-c",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the container to run", || {
        node.status_of("durable").contains("running")
    });
    starter.kill().unwrap();
    starter.wait().unwrap();

    let ticks = |node: &Node| node.ok(&["logs", "durable"]).lines().count();
    let before = ticks(&node);
    eventually("more log lines after the starter died", || {
        ticks(&node) > before + 3
    });
    assert!(node.status_of("durable").contains("running"));
    assert_eq!(
        node.ok(&["exec", "durable", "echo", "still here"]),
        "still here\n"
    );
    let tail = node.ok(&["logs", "--tail", "2", "durable"]);
    assert_eq!(tail.lines().count(), 2);
    assert!(tail.lines().all(|l| l.starts_with("tick ")), "{tail}");

    node.ok(&["stop", "--time", "1", "durable"]);
    node.ok(&["rm", "durable"]);
    assert_eq!(node.ok(&["ps", "-a", "-q"]), "");
}

#[test]
fn reset_removes_containers_mounts_cgroups_and_data() {
    let node = Node::with(&[BUSYBOX]);
    node.ok(&[
        "run", "-d", "--name", "doomed", "--memory", "32m", BUSYBOX, "sleep", "300",
    ]);
    let pid: i32 = node
        .status_of("doomed")
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    let rootfs = node.data_dir().join("bundles/doomed/rootfs");
    assert!(rootfs.join("bin/busybox").exists());
    let memory = cgroup_dir("memory", "doomed");
    assert!(memory.exists());

    let output = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .arg("reset")
        .arg("--data-dir")
        .arg(node.data_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!node.data_dir().exists());
    assert!(!memory.exists());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&node.data_dir().to_string_lossy().to_string()));
    eventually("the container's process to be gone", || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    });
}
