//! The per-container supervisor (`rudder container-shim STATE_DIR`), like
//! containerd's shims: it starts the container's init stage, copies its
//! output into the CRI log file, waits for it and records how it ended. It
//! runs in its own session, detached from whoever started it, so the agent
//! (or `rudder ctr`) can exit or be upgraded while the container runs on.
//!
//! It tells its starter the outcome on its stdout, one JSON line
//! ([`StartReport`]), then stops writing there.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};
use crate::init::{load_spec, InitFailure, CGROUP_DIRS_ENV, CGROUP_MODE_ENV, SYNC_FD_ENV};
use crate::logs::{CriLogWriter, Stream};
use crate::state::{now_nanos, ExitStatus, ProcessId, State, Status};

/// What the shim tells its starter.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StartReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub exit_code: i32,
}

pub(crate) const STDIN_FIFO: &str = "stdin";

/// Runs the shim; the exit code is the shim's own, not the container's.
pub fn main(state_dir: &Path) -> i32 {
    // A new session: no terminal signal or process-group kill aimed at the
    // starter reaches the shim or the container.
    let _ = nix::unistd::setsid();
    match run(state_dir) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("shim for {}: {e}", state_dir.display());
            report(&StartReport {
                pid: None,
                error: Some(e.to_string()),
                exit_code: 128,
            });
            1
        }
    }
}

fn report(report: &StartReport) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(
        stdout,
        "{}",
        serde_json::to_string(report).expect("serializes")
    );
    let _ = stdout.flush();
}

/// Converts the spec's resources for the cgroups library.
pub(crate) fn cgroup_resources(spec: &Spec) -> rudder_cgroups::Resources {
    let mut out = rudder_cgroups::Resources::default();
    let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return out;
    };
    if let Some(cpu) = resources.cpu() {
        out.cpu_shares = cpu.shares();
        out.cpu_quota = cpu.quota();
        out.cpu_period = cpu.period();
        out.cpuset_cpus = cpu.cpus().clone();
        out.cpuset_mems = cpu.mems().clone();
    }
    if let Some(memory) = resources.memory() {
        out.memory_limit = memory.limit();
        out.memory_swap = memory.swap();
    }
    if let Some(pids) = resources.pids() {
        out.pids_limit = Some(pids.limit());
    }
    out
}

/// The container's cgroup, created and limited, or None when the spec has
/// no cgroups path.
pub(crate) fn container_cgroup(spec: &Spec) -> Result<Option<rudder_cgroups::Cgroup>> {
    let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
        return Ok(None);
    };
    let layout = rudder_cgroups::Layout::detect()?;
    let cgroup = rudder_cgroups::Cgroup::new(layout, &path);
    cgroup.create()?;
    cgroup.apply(&cgroup_resources(spec))?;
    Ok(Some(cgroup))
}

/// The environment telling the init stage which cgroup dirs to join and
/// show at /sys/fs/cgroup.
pub(crate) fn cgroup_env(
    cgroup: Option<&rudder_cgroups::Cgroup>,
    relative: &str,
) -> Vec<(String, String)> {
    let Some(cgroup) = cgroup else {
        return vec![(CGROUP_MODE_ENV.into(), "none".into())];
    };
    let relative = relative.trim_start_matches('/');
    let dirs: Vec<String> = cgroup
        .paths()
        .into_iter()
        .map(|dir| {
            // The hierarchy's name is the mount point's, e.g. `memory` for
            // /sys/fs/cgroup/memory/<relative>.
            let mount = dir
                .to_string_lossy()
                .strip_suffix(relative)
                .map(|m| PathBuf::from(m.trim_end_matches('/')))
                .unwrap_or_else(|| dir.clone());
            let name = mount
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "unified".into());
            format!("{name}={}", dir.display())
        })
        .collect();
    let mode = if matches!(cgroup.layout(), rudder_cgroups::Layout::V2 { .. }) {
        "v2"
    } else {
        "v1"
    };
    vec![
        (CGROUP_MODE_ENV.into(), mode.into()),
        (CGROUP_DIRS_ENV.into(), dirs.join("\n")),
    ]
}

/// Enters or creates the container's PID namespace for the children of
/// the calling (single-threaded) process: the next process it starts is
/// the namespace's first.
pub(crate) fn prepare_pid_namespace(spec: &Spec) -> Result<()> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    if let Some(ns) = namespaces
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Pid)
    {
        match ns.path() {
            Some(path) => {
                let file =
                    fs::File::open(path).context(|| format!("opening {}", path.display()))?;
                setns(&file, CloneFlags::CLONE_NEWPID)
                    .context(|| format!("joining PID namespace {}", path.display()))?;
            }
            None => {
                unshare(CloneFlags::CLONE_NEWPID).context(|| "creating a PID namespace".into())?
            }
        }
    }
    Ok(())
}

fn run(state_dir: &Path) -> Result<()> {
    let mut state = State::load(state_dir)?;
    let spec = load_spec(&state.bundle)?;
    let cgroup = container_cgroup(&spec)?;

    // stdio: stdin from the FIFO the starter may write to, or nothing;
    // stdout/stderr into pipes the shim copies to the log.
    let stdin = if state.stdin {
        let fifo = state_dir.join(STDIN_FIFO);
        // Read-write when stdin stays open: the container is then a writer
        // of its own FIFO, so writers coming and going never end its input.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(state.stdin_keep_open)
            .custom_flags_nonblock()
            .open(&fifo)
            .context(|| format!("opening {}", fifo.display()))?;
        clear_nonblock(&file)?;
        Stdio::from(file)
    } else {
        Stdio::null()
    };
    let mut log = match &state.log_path {
        Some(path) => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
            }
            Some(
                CriLogWriter::open(
                    path,
                    state.log_max_size.max(1 << 20),
                    state.log_max_files.max(1),
                )
                .context(|| format!("opening log {}", path.display()))?,
            )
        }
        None => None,
    };
    let (out_read, out_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context(|| "pipe".into())?;
    let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context(|| "pipe".into())?;
    let (sync_read, sync_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context(|| "pipe".into())?;
    // The init stage inherits the sync pipe's write end (it re-opens it
    // close-on-exec); safe here, the shim is single-threaded.
    fcntl(&sync_write, FcntlArg::F_SETFD(FdFlag::empty())).context(|| "sync pipe".into())?;

    prepare_pid_namespace(&spec)?;

    let relative = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .unwrap_or_default();
    let mut command = Command::new("/proc/self/exe");
    command
        .arg("container-init")
        .arg(&state.bundle)
        .env_clear()
        .env(SYNC_FD_ENV, sync_write.as_raw_fd().to_string())
        .envs(cgroup_env(cgroup.as_ref(), &relative.to_string_lossy()))
        .stdin(stdin)
        .stdout(Stdio::from(out_write))
        .stderr(Stdio::from(err_write));
    let mut child = command
        .spawn()
        .context(|| "starting the container's init".into())?;
    drop(command); // closes the parent's copies of the write ends
    drop(sync_write);

    let mut failure = String::new();
    fs::File::from(sync_read)
        .read_to_string(&mut failure)
        .context(|| "reading the init stage's report".into())?;
    if !failure.trim().is_empty() {
        let failure: InitFailure = serde_json::from_str(failure.trim()).unwrap_or(InitFailure {
            message: failure.trim().to_string(),
            exit_code: 128,
        });
        let _ = child.wait();
        // What the init stage wrote to stdout/stderr before failing.
        if let Some(log) = log.as_mut() {
            copy_available(&out_read, Stream::Stdout, log);
            copy_available(&err_read, Stream::Stderr, log);
            let _ = log.write(Stream::Stderr, format!("{}\n", failure.message).as_bytes());
            let _ = log.flush_partial();
        }
        state.status = Status::Stopped;
        state.exit = Some(ExitStatus {
            exit_code: failure.exit_code,
            signal: None,
            oom_killed: false,
            reason: "StartError".into(),
            message: failure.message.clone(),
            finished_at: now_nanos(),
        });
        state.save(state_dir)?;
        report(&StartReport {
            pid: None,
            error: Some(failure.message),
            exit_code: failure.exit_code,
        });
        return Ok(());
    }

    let pid = child.id() as i32;
    state.status = Status::Running;
    state.started_at = Some(now_nanos());
    state.init = ProcessId::of(pid);
    state.shim = ProcessId::of(std::process::id() as i32);
    state.save(state_dir)?;
    report(&StartReport {
        pid: Some(pid),
        error: None,
        exit_code: 0,
    });

    let status = supervise(&mut child, &out_read, &err_read, log.as_mut())?;

    let oom_kills = cgroup
        .as_ref()
        .and_then(|c| c.oom_kill_count().ok())
        .unwrap_or(0);
    state.status = Status::Stopped;
    state.exit = Some(exit_status(status, oom_kills > 0));
    state.save(state_dir)?;
    Ok(())
}

trait NonBlockingOpen {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlockingOpen for fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO for reading would block until a writer comes.
        self.custom_flags(OFlag::O_NONBLOCK.bits())
    }
}

fn clear_nonblock(fd: &impl AsFd) -> Result<()> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).context(|| "F_GETFL".into())?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).context(|| "F_SETFL".into())?;
    Ok(())
}

fn set_nonblock(fd: &impl AsFd) {
    if let Ok(flags) = fcntl(fd.as_fd(), FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd.as_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        );
    }
}

/// Copies what can be read without blocking.
fn copy_available(fd: &OwnedFd, stream: Stream, log: &mut CriLogWriter) {
    set_nonblock(fd);
    let mut buf = [0u8; 32 * 1024];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = log.write(stream, &buf[..n]);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
}

/// Copies the container's output to the log until its first process exits.
fn supervise(
    child: &mut std::process::Child,
    out: &OwnedFd,
    err: &OwnedFd,
    mut log: Option<&mut CriLogWriter>,
) -> Result<std::process::ExitStatus> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid is positive");
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(io::Error::from)
        .context(|| "pidfd_open on the container's init".into())?;
    let mut out_open = true;
    let mut err_open = true;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        if out_open {
            fds.push(PollFd::new(out.as_fd(), PollFlags::POLLIN));
        }
        if err_open {
            fds.push(PollFd::new(err.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context(|| "poll".into()),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let exited = ready(0);
        let mut index = 1;
        for (open, fd, stream) in [
            (&mut out_open, out, Stream::Stdout),
            (&mut err_open, err, Stream::Stderr),
        ] {
            if !*open {
                continue;
            }
            if ready(index) {
                match nix::unistd::read(fd, &mut buf) {
                    Ok(0) => *open = false,
                    Ok(n) => {
                        if let Some(log) = log.as_deref_mut() {
                            if let Err(e) = log.write(stream, &buf[..n]) {
                                tracing::warn!("writing the container log: {e}");
                            }
                        }
                    }
                    Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                    Err(_) => *open = false,
                }
            }
            index += 1;
        }
        if exited {
            let status = child
                .wait()
                .context(|| "waiting for the container's init".into())?;
            // Its namespace's other processes died with it; what they wrote
            // is still in the pipes. A process that escaped (host PID
            // namespace) keeps its pipe open, so only drain what is there.
            if let Some(log) = log.as_deref_mut() {
                if out_open {
                    copy_available(out, Stream::Stdout, log);
                }
                if err_open {
                    copy_available(err, Stream::Stderr, log);
                }
                let _ = log.flush_partial();
            }
            return Ok(status);
        }
    }
}

pub(crate) fn exit_status(status: std::process::ExitStatus, oom: bool) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    let (exit_code, signal) = match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (255, None),
    };
    let oom_killed = oom && (signal == Some(9) || exit_code == 137);
    let reason = if oom_killed {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ExitStatus {
        exit_code,
        signal,
        oom_killed,
        reason: reason.into(),
        message: String::new(),
        finished_at: now_nanos(),
    }
}
