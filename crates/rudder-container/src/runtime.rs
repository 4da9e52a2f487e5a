//! The container runtime's API: create, start, inspect, signal, wait for,
//! exec into and delete containers, each a directory `<root>/<id>/` holding
//! its [`State`] and the shim's log. Any process using the same root (the
//! agent, `rudder ctr`, a restarted agent) sees the same containers.
//!
//! Calls block (they read files and start processes); async callers run them
//! with `spawn_blocking`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use oci_spec::runtime::Process;

use crate::error::{ContainerError, IoContext, Result};
use crate::shim::{StartReport, STDIN_FIFO};
use crate::state::{now_nanos, ExitStatus, ProcessId, State, Status};

/// Where the runtime keeps its containers and how it starts shims.
#[derive(Clone, Debug)]
pub struct Runtime {
    root: PathBuf,
    /// The `rudder` executable, run as `rudder container-shim` etc.
    binary: PathBuf,
}

/// How to create a container from an OCI bundle.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// The bundle directory: `config.json` and the rootfs it names.
    pub bundle: PathBuf,
    /// stdout/stderr go there in the CRI log format (none: discarded).
    pub log_path: Option<PathBuf>,
    /// Rotate the log above this size (default 10 MiB, the kubelet's
    /// containerLogMaxSize), keeping this many files (default 5).
    pub log_max_size: Option<u64>,
    pub log_max_files: Option<usize>,
    /// Give the container a stdin FIFO (`<root>/<id>/stdin`) a client can
    /// write to ([`Runtime::open_stdin`]); else its stdin is /dev/null.
    pub stdin: bool,
    /// With `stdin`: the container's stdin never reaches end-of-file while it
    /// runs, whoever writes or stops writing (Kubernetes' `stdinOnce: false`);
    /// else it ends once every writer closed the FIFO.
    pub stdin_keep_open: bool,
    pub labels: BTreeMap<String, String>,
}

fn validate_id(id: &str) -> Result<()> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with(['.', '-'])
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ContainerError::InvalidId(id.to_string()))
    }
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>, binary: impl Into<PathBuf>) -> Runtime {
        Runtime {
            root: root.into(),
            binary: binary.into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Records a container; no process runs until [`Runtime::start`].
    pub fn create(&self, id: &str, options: CreateOptions) -> Result<State> {
        validate_id(id)?;
        let spec = crate::init::load_spec(&options.bundle)?;
        if spec.process().is_none() {
            return Err(ContainerError::InvalidSpec {
                path: options.bundle.join("config.json"),
                reason: "no process".into(),
            });
        }
        fs::create_dir_all(&self.root).context(|| format!("creating {}", self.root.display()))?;
        let dir = self.state_dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::AlreadyExists(id.to_string()))
            }
            Err(e) => return Err(e).context(|| format!("creating {}", dir.display())),
        }
        if options.stdin {
            nix::unistd::mkfifo(
                &dir.join(STDIN_FIFO),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .context(|| "creating the stdin FIFO".into())?;
        }
        let cgroup = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned());
        let state = State {
            id: id.to_string(),
            bundle: fs::canonicalize(&options.bundle)
                .context(|| format!("resolving {}", options.bundle.display()))?,
            status: Status::Created,
            created_at: now_nanos(),
            started_at: None,
            shim: None,
            init: None,
            exit: None,
            cgroup,
            log_path: options.log_path,
            log_max_size: options.log_max_size.unwrap_or(10 << 20),
            log_max_files: options.log_max_files.unwrap_or(5),
            stdin: options.stdin,
            stdin_keep_open: options.stdin && options.stdin_keep_open,
            labels: options.labels,
        };
        state.save(&dir)?;
        Ok(state)
    }

    /// Opens the container's stdin FIFO for writing (before or after start);
    /// the container sees end-of-file once every writer closed it.
    pub fn open_stdin(&self, id: &str) -> Result<fs::File> {
        let fifo = self.state_dir(id).join(STDIN_FIFO);
        // Read-write, so opening does not wait for the reader.
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(0)
            .open(&fifo)
            .context(|| format!("opening {}", fifo.display()))
    }

    /// Starts the container's process under a new shim. Returns once the
    /// program was executed (or failed to be: the error says why, with the
    /// exit code a shell would give).
    pub fn start(&self, id: &str) -> Result<State> {
        let dir = self.state_dir(id);
        let state = State::load(&dir)?;
        if state.status != Status::Created {
            return Err(ContainerError::InvalidState {
                id: id.to_string(),
                status: state.status.to_string(),
                action: "start it",
            });
        }
        let shim_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("shim.log"))
            .context(|| "opening shim.log".into())?;
        let mut shim = Command::new(&self.binary)
            .arg("container-shim")
            .arg(&dir)
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| k == "RUDDER_LOG"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(shim_log))
            .spawn()
            .context(|| format!("starting the shim {}", self.binary.display()))?;
        let stdout = shim.stdout.take().expect("piped");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        // The shim lives as long as the container; reap it when it exits so
        // it does not linger as a zombie of this process.
        reap(shim);
        read.context(|| "reading the shim's report".into())?;
        let report: StartReport =
            serde_json::from_str(line.trim()).map_err(|_| ContainerError::StartFailed {
                message: format!(
                    "the shim ended without reporting (see {}): {}",
                    dir.join("shim.log").display(),
                    line.trim()
                ),
                exit_code: 128,
            })?;
        if let Some(message) = report.error {
            return Err(ContainerError::StartFailed {
                message,
                exit_code: report.exit_code,
            });
        }
        State::load(&dir)
    }

    /// The container's state; a container whose shim died without recording
    /// an exit is reported stopped with reason `Unknown`.
    pub fn state(&self, id: &str) -> Result<State> {
        validate_id(id)?;
        let mut state = State::load(&self.state_dir(id))?;
        if state.status == Status::Running {
            let shim_alive = state.shim.is_some_and(|s| s.is_alive());
            if !shim_alive {
                // Re-read: the shim may have recorded the exit just now.
                state = State::load(&self.state_dir(id))?;
                if state.status == Status::Running {
                    let init_alive = state.init.is_some_and(|p| p.is_alive());
                    if !init_alive {
                        state.status = Status::Stopped;
                        state.exit = Some(ExitStatus {
                            exit_code: 255,
                            signal: None,
                            oom_killed: false,
                            reason: "Unknown".into(),
                            message: "the container's shim died before recording how it ended"
                                .into(),
                            finished_at: now_nanos(),
                        });
                    }
                }
            }
        }
        Ok(state)
    }

    /// Every container under the root, by id.
    pub fn list(&self) -> Result<Vec<State>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context(|| format!("listing {}", self.root.display())),
        };
        let mut states = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            match self.state(&id) {
                Ok(state) => states.push(state),
                // Half-created or foreign directories are not containers.
                Err(ContainerError::NotFound(_)) | Err(ContainerError::InvalidId(_)) => {}
                Err(e) => return Err(e),
            }
        }
        states.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(states)
    }

    /// Sends `signal` to the container's first process.
    pub fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        let state = self.state(id)?;
        match (state.status, state.init) {
            (Status::Running, Some(init)) if init.is_alive() => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(init.pid), signal)
                    .context(|| format!("signalling container {id}"))
            }
            _ => Err(ContainerError::InvalidState {
                id: id.to_string(),
                status: state.status.to_string(),
                action: "signal it",
            }),
        }
    }

    /// Stops the container: `signal` (SIGTERM unless the image says
    /// otherwise), then SIGKILL to every process of its cgroup after
    /// `timeout`. Returns the final state.
    pub fn stop(&self, id: &str, signal: Signal, timeout: Duration) -> Result<State> {
        let state = self.state(id)?;
        if state.status != Status::Running {
            return Ok(state);
        }
        if !timeout.is_zero() {
            match self.kill(id, signal) {
                Ok(()) | Err(ContainerError::InvalidState { .. }) => {}
                Err(e) => return Err(e),
            }
            if let Some(state) = self.wait_timeout(id, timeout)? {
                return Ok(state);
            }
        }
        self.kill_all(&state)?;
        self.wait(id)?;
        self.state(id)
    }

    fn kill_all(&self, state: &State) -> Result<()> {
        if let Some(relative) = &state.cgroup {
            let layout = rudder_cgroups::Layout::detect()?;
            rudder_cgroups::Cgroup::new(layout, relative).kill_all(Signal::SIGKILL as i32)?;
        }
        if let Some(init) = state.init.filter(|p| p.is_alive()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(init.pid), Signal::SIGKILL);
        }
        Ok(())
    }

    /// Waits until the container's process exited and the shim recorded it.
    pub fn wait(&self, id: &str) -> Result<State> {
        loop {
            if let Some(state) = self.wait_timeout(id, Duration::from_secs(3600))? {
                return Ok(state);
            }
        }
    }

    /// Like [`Runtime::wait`], giving up (None) after `timeout`.
    pub fn wait_timeout(&self, id: &str, timeout: Duration) -> Result<Option<State>> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state(id)?;
            match state.status {
                Status::Stopped => return Ok(Some(state)),
                Status::Created => {
                    return Err(ContainerError::InvalidState {
                        id: id.to_string(),
                        status: state.status.to_string(),
                        action: "wait for it",
                    })
                }
                Status::Running => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let Some(shim) = state.shim else {
                return Ok(None);
            };
            // The shim exits right after recording the exit: wait on it with
            // a pidfd (no polling), bounded by the deadline.
            let Some(pid) = rustix::process::Pid::from_raw(shim.pid) else {
                return Ok(None);
            };
            match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
                Ok(pidfd) => {
                    if !shim.is_alive() {
                        continue;
                    }
                    let mut fds = [nix::poll::PollFd::new(
                        pidfd.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    let millis = (deadline - now).as_millis().min(i32::MAX as u128) as i32;
                    let _ = nix::poll::poll(
                        &mut fds,
                        nix::poll::PollTimeout::try_from(millis)
                            .unwrap_or(nix::poll::PollTimeout::MAX),
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// A command that runs `process` inside the running container; the
    /// caller sets its stdio and spawns it. Its exit status is the
    /// process' (126/127 when it cannot be executed).
    pub fn exec(&self, id: &str, process: &Process) -> Result<Command> {
        let state = self.state(id)?;
        if state.status != Status::Running {
            return Err(ContainerError::InvalidState {
                id: id.to_string(),
                status: state.status.to_string(),
                action: "exec in it",
            });
        }
        let dir = self.state_dir(id);
        let file = dir.join(format!("exec-{}.json", uniq()));
        let bytes = serde_json::to_vec(process).expect("serializes");
        // The process carries the container's environment: owner-only.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
            .context(|| format!("writing {}", file.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("container-exec")
            .arg(&dir)
            .arg(&file)
            .env_clear();
        Ok(command)
    }

    /// The process of a container's spec, to base an exec on (same user,
    /// environment, capabilities).
    pub fn process(&self, id: &str) -> Result<Process> {
        let state = self.state(id)?;
        let spec = crate::init::load_spec(&state.bundle)?;
        spec.process()
            .clone()
            .ok_or_else(|| ContainerError::InvalidSpec {
                path: state.bundle.join("config.json"),
                reason: "no process".into(),
            })
    }

    /// Resource usage of a container's cgroup.
    pub fn stats(&self, id: &str) -> Result<Option<rudder_cgroups::Stats>> {
        let state = self.state(id)?;
        match &state.cgroup {
            Some(relative) => {
                let layout = rudder_cgroups::Layout::detect()?;
                Ok(Some(rudder_cgroups::Cgroup::new(layout, relative).stats()?))
            }
            None => Ok(None),
        }
    }

    /// Removes a stopped (or, with `force`, a running: it is killed first)
    /// container: its cgroup and state. The bundle is the caller's.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let state = self.state(id)?;
        if state.status == Status::Running {
            if !force {
                return Err(ContainerError::InvalidState {
                    id: id.to_string(),
                    status: state.status.to_string(),
                    action: "delete it (stop it first)",
                });
            }
            self.kill_all(&state)?;
            let _ = self.wait_timeout(id, Duration::from_secs(10))?;
        }
        if let Some(relative) = &state.cgroup {
            let layout = rudder_cgroups::Layout::detect()?;
            rudder_cgroups::Cgroup::new(layout, relative).delete()?;
        }
        let dir = self.state_dir(id);
        fs::remove_dir_all(&dir).context(|| format!("removing {}", dir.display()))
    }
}

/// Hands a started shim to the process' one reaper thread, which waits
/// for every shim this process started (one thread for all of them: a
/// node with a hundred containers must not keep a hundred threads).
fn reap(shim: std::process::Child) {
    use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
    use std::sync::{Mutex, OnceLock};
    static REAPER: OnceLock<Mutex<Sender<std::process::Child>>> = OnceLock::new();
    let sender = REAPER.get_or_init(|| {
        let (tx, rx) = channel::<std::process::Child>();
        let spawned = std::thread::Builder::new()
            .name("reap-shims".into())
            .spawn(move || {
                let mut children: Vec<std::process::Child> = Vec::new();
                loop {
                    match rx.recv_timeout(Duration::from_millis(500)) {
                        Ok(child) => children.push(child),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    while let Ok(child) = rx.try_recv() {
                        children.push(child);
                    }
                    children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the shim reaper thread: {e}; exited shims stay zombies");
        }
        Mutex::new(tx)
    });
    let _ = sender.lock().unwrap_or_else(|e| e.into_inner()).send(shim);
}

/// A name unique within this host for the runtime's temporary files.
fn uniq() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        now_nanos(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The pid of a live process recorded for the container, for callers that
/// want to inspect `/proc/PID` (e.g. its namespaces).
pub fn init_pid(state: &State) -> Option<i32> {
    state.init.filter(ProcessId::is_alive).map(|p| p.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        for ok in ["a", "abc-1.2_3", &"x".repeat(128)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".hidden", "-flag", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
