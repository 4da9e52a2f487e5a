//! A container's persistent record: `<root>/<id>/state.json`, written
//! atomically by the runtime (create) and the shim (running, stopped), so any
//! process (a restarted agent, `rudder ctr`) can find and adopt the container.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{ContainerError, IoContext, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The bundle is recorded; no process runs yet.
    Created,
    /// The shim started the process and waits for it.
    Running,
    /// The process exited (see [`ExitStatus`]), or never started.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// A process identified so that a recycled pid is never mistaken for it: the
/// pid with its start time in clock ticks since boot (`/proc/PID/stat` field 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    /// Identifies a live process by its pid.
    pub fn of(pid: i32) -> Option<ProcessId> {
        start_time(pid).map(|start_time| ProcessId { pid, start_time })
    }

    /// Whether this very process is still alive (zombies count as dead).
    pub fn is_alive(&self) -> bool {
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => {
                let Some(fields) = stat_fields(&stat) else {
                    return false;
                };
                fields.first() != Some(&"Z")
                    && fields.get(19).and_then(|v| v.parse().ok()) == Some(self.start_time)
            }
            Err(_) => false,
        }
    }
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces and parentheses, hence the search for the last ')').
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.get(19)?.parse().ok()
}

/// How the container's process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitStatus {
    /// The exit code, or 128 + the signal that killed it (as a shell reports).
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it (the cgroup counted an oom_kill).
    #[serde(default)]
    pub oom_killed: bool,
    /// Kubernetes' termination reason: `Completed`, `Error`, `OOMKilled`,
    /// `StartError`, `ContainerCannotRun`.
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Nanoseconds since the Unix epoch.
    pub finished_at: u128,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// Everything the runtime records about a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub id: String,
    pub bundle: PathBuf,
    pub status: Status,
    /// Nanoseconds since the Unix epoch.
    pub created_at: u128,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u128>,
    /// The supervising shim, alive as long as the container's process is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim: Option<ProcessId>,
    /// The container's first process, as the host sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<ProcessId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
    /// The cgroup (relative to the hierarchy roots) holding the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Where the shim writes stdout/stderr in the CRI log format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Largest log file before rotation, and how many files to keep.
    #[serde(default)]
    pub log_max_size: u64,
    #[serde(default)]
    pub log_max_files: usize,
    /// The container reads its stdin from the FIFO `stdin` in its state dir.
    #[serde(default)]
    pub stdin: bool,
    /// The container holds its stdin FIFO open for writing too, so it never
    /// sees end-of-file (`stdinOnce: false`).
    #[serde(default)]
    pub stdin_keep_open: bool,
    /// Caller-defined labels (the CRI layer keeps pod and container names here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

pub(crate) const STATE_FILE: &str = "state.json";

impl State {
    pub fn load(dir: &Path) -> Result<State> {
        let path = dir.join(STATE_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(ContainerError::NotFound(id));
            }
            Err(e) => return Err(e).context(|| format!("reading {}", path.display())),
        };
        serde_json::from_slice(&bytes).map_err(|e| ContainerError::Io {
            context: format!("parsing {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Writes the state atomically (temporary file, rename), so a reader
    /// never sees half a record even if the writer dies. No fsync, as runc:
    /// the state describes processes, which a power loss ends anyway (a
    /// stale record is then reported as a dead shim), and fsync on a busy
    /// disk costs a container start up to seconds.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!(".{STATE_FILE}.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self).expect("state serializes");
        (|| {
            use std::io::Write;
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            fs::rename(&tmp, &path)
        })()
        .context(|| format!("writing {}", path.display()))
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        let fields = stat_fields(stat).unwrap();
        assert_eq!(fields[0], "S");
        assert_eq!(fields[19], "12345");
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let impostor = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.is_alive());
    }

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = State {
            id: "c1".into(),
            bundle: "/b".into(),
            status: Status::Stopped,
            created_at: 1,
            started_at: Some(2),
            shim: None,
            init: Some(ProcessId {
                pid: 7,
                start_time: 9,
            }),
            exit: Some(ExitStatus {
                exit_code: 137,
                signal: Some(9),
                oom_killed: true,
                reason: "OOMKilled".into(),
                message: String::new(),
                finished_at: 3,
            }),
            cgroup: Some("rudder/c1".into()),
            log_path: None,
            log_max_size: 0,
            log_max_files: 0,
            stdin: false,
            stdin_keep_open: false,
            labels: BTreeMap::new(),
        };
        state.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), state);
        assert!(matches!(
            State::load(&dir.path().join("missing")),
            Err(ContainerError::NotFound(id)) if id == "missing"
        ));
    }
}
