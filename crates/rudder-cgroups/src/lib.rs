//! Linux control groups for containers (see ARCHITECTURE.md): the v1 controller hierarchies and
//! the v2 unified tree behind one [`Cgroup`] type, in the manner of youki's libcgroups.
//!
//! A [`Layout`] says where the cgroup filesystems are mounted; a [`Cgroup`] is one path relative
//! to the hierarchy roots, present in every v1 hierarchy Rudder uses or once in the v2 tree.

mod files;
mod layout;
mod resources;
mod stats;

use std::collections::BTreeSet;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use layout::Layout;
pub use resources::{cpu_shares_to_weight, Resources};
pub use stats::Stats;

use files::{parse_pids, read_control, read_optional, write_control};

/// The v1 hierarchies a container cgroup is created in. cpu/cpuacct/cpuset/memory/pids carry
/// the limits and statistics; devices, freezer and blkio are joined so that device rules,
/// pausing and block-I/O accounting apply to the container rather than to its parent (as runc
/// does). Hierarchies not mounted on the host are skipped.
pub const V1_CONTROLLERS_USED: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio",
];

/// The v2 controllers enabled down to a container cgroup, in the kernel's order, when the parent
/// offers them.
pub const V2_CONTROLLERS_WANTED: &[&str] = &["cpuset", "cpu", "io", "memory", "pids"];

/// How often SIGKILL is repeated at processes that keep appearing (forks racing the kill) before
/// [`Cgroup::kill_all`] gives up, and the pause between rounds.
const KILL_ROUNDS: u32 = 100;
const KILL_ROUND_PAUSE: Duration = Duration::from_millis(10);

/// How often rmdir is retried on EBUSY (tasks still exiting) and the pause between attempts.
const RMDIR_ATTEMPTS: u32 = 50;
const RMDIR_PAUSE: Duration = Duration::from_millis(20);

/// Errors of cgroup operations.
#[derive(thiserror::Error, Debug)]
pub enum CgroupError {
    /// A control file or directory could not be read or written.
    #[error("cgroup file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A control file or cgroup directory is missing.
    #[error(
        "{path} does not exist: the cgroup has not been created, or this kernel does not provide \
         that control file"
    )]
    MissingControlFile { path: PathBuf },
    /// A v2 controller is needed but the cgroup does not have it.
    #[error(
        "the {controller} controller is not available in the cgroup v2 directory {path}: it is \
         not listed in its cgroup.controllers (the parent does not delegate it, or on this host \
         the controller is bound to a cgroup v1 hierarchy)"
    )]
    ControllerUnavailable { controller: String, path: PathBuf },
    /// A v1 controller is needed but no hierarchy holds it.
    #[error("no cgroup v1 hierarchy with the {controller} controller is mounted on this host")]
    ControllerNotMounted { controller: String },
    /// A control file or mountinfo had unexpected content.
    #[error("cannot parse {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    /// Neither cgroup v1 controllers nor cgroup2 are mounted.
    #[error(
        "no cgroup filesystem is mounted: /proc/self/mountinfo lists neither cgroup v1 controller \
         hierarchies nor a cgroup2 filesystem"
    )]
    NoCgroupFs,
    /// The limits contradict each other.
    #[error("invalid resource limits: {reason}")]
    InvalidResources { reason: String },
    /// A swap limit was asked for on a kernel without swap accounting.
    #[error(
        "a swap limit was requested but {path} does not exist: the kernel does no swap \
         accounting (enable it with the swapaccount=1 boot parameter on cgroup v1, or \
         CONFIG_MEMCG_SWAP), or ask for no swap (memory+swap equal to memory) or unlimited swap"
    )]
    SwapLimitUnsupported { path: PathBuf },
    /// The signal number is not a signal of this platform.
    #[error("{signal} is not a valid signal number")]
    InvalidSignal { signal: i32 },
    /// A process of the cgroup could not be signalled.
    #[error("cannot send signal {signal} to process {pid}: {source}")]
    Signal {
        pid: u32,
        signal: i32,
        #[source]
        source: Errno,
    },
    /// Processes survived repeated SIGKILL (e.g. stuck in uninterruptible sleep).
    #[error("processes {pids:?} are still in cgroup {path} after repeated SIGKILL")]
    ProcessesRemain { path: PathBuf, pids: Vec<u32> },
}

/// One cgroup: a path relative to the hierarchy roots, e.g.
/// "rudder/kubepods/burstable/pod<uid>/<container-id>".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    layout: Layout,
    relative: PathBuf,
}

impl Cgroup {
    /// A cgroup at `relative` under the hierarchy roots. A leading '/' is tolerated; `.` and `..`
    /// components are dropped so that the cgroup can never lie outside the hierarchies.
    pub fn new(layout: Layout, relative: impl AsRef<Path>) -> Cgroup {
        let mut clean = PathBuf::new();
        for component in relative.as_ref().components() {
            match component {
                Component::Normal(name) => clean.push(name),
                Component::ParentDir => tracing::warn!(
                    relative = %relative.as_ref().display(),
                    "ignoring '..' in a cgroup path"
                ),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        Cgroup {
            layout,
            relative: clean,
        }
    }

    /// The layout this cgroup lives in.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The path relative to the hierarchy roots, without a leading '/'.
    pub fn relative(&self) -> &Path {
        &self.relative
    }

    /// The v1 hierarchies used, one per mount point (co-mounted controllers share one), each with
    /// the used controllers it carries.
    fn v1_hierarchies(&self) -> Vec<(PathBuf, Vec<&'static str>)> {
        let Layout::V1 { mounts } = &self.layout else {
            return Vec::new();
        };
        let mut hierarchies: Vec<(PathBuf, Vec<&'static str>)> = Vec::new();
        for controller in V1_CONTROLLERS_USED {
            let Some(mount) = mounts.get(*controller) else {
                continue;
            };
            match hierarchies.iter_mut().find(|(m, _)| m == mount) {
                Some((_, controllers)) => controllers.push(controller),
                None => hierarchies.push((mount.clone(), vec![controller])),
            }
        }
        hierarchies
    }

    /// Absolute directories of this cgroup: one per v1 hierarchy used, or the single v2 one.
    pub fn paths(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1 { .. } => self
                .v1_hierarchies()
                .into_iter()
                .map(|(mount, _)| mount.join(&self.relative))
                .collect(),
            Layout::V2 { root } => vec![root.join(&self.relative)],
        }
    }

    /// The directory holding a controller's files: on v1 the cgroup in that controller's
    /// hierarchy (None when not mounted), on v2 the single directory.
    pub fn path_for(&self, controller: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1 { mounts } => mounts.get(controller).map(|m| m.join(&self.relative)),
            Layout::V2 { root } => Some(root.join(&self.relative)),
        }
    }

    /// Creates the cgroup (and missing ancestors).
    ///
    /// v1: the directory in every hierarchy used; in the cpuset hierarchy every new level gets
    /// its parent's cpuset.cpus and cpuset.mems, since a cpuset with empty ones rejects tasks.
    /// v2: each ancestor delegates the wanted controllers it has ([`V2_CONTROLLERS_WANTED`]) to
    /// its children through cgroup.subtree_control. A controller the kernel refuses to delegate
    /// is logged and left out; [`Cgroup::apply`] then reports it as unavailable if it is needed.
    pub fn create(&self) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 { .. } => {
                for (mount, controllers) in self.v1_hierarchies() {
                    if controllers.contains(&"cpuset") {
                        self.create_v1_cpuset(&mount)?;
                    } else {
                        let dir = mount.join(&self.relative);
                        std::fs::create_dir_all(&dir)
                            .map_err(|source| CgroupError::Io { path: dir, source })?;
                    }
                }
                Ok(())
            }
            Layout::V2 { root } => {
                let mut dir = root.clone();
                for component in self.relative.components() {
                    enable_v2_controllers(&dir)?;
                    dir.push(component);
                    make_dir(&dir)?;
                }
                Ok(())
            }
        }
    }

    fn create_v1_cpuset(&self, mount: &Path) -> Result<(), CgroupError> {
        let mut parent = mount.to_path_buf();
        for component in self.relative.components() {
            let dir = parent.join(component);
            make_dir(&dir)?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let path = dir.join(file);
                if read_control(&path)?.trim().is_empty() {
                    let inherited = read_control(&parent.join(file))?;
                    write_control(&path, inherited.trim())?;
                }
            }
            parent = dir;
        }
        Ok(())
    }

    /// Writes resource limits (see [`Resources`] for units and the meaning of None and zero).
    ///
    /// v1: cpu.shares, cpu.cfs_period_us, cpu.cfs_quota_us, memory.limit_in_bytes,
    /// memory.memsw.limit_in_bytes, pids.max, cpuset.cpus, cpuset.mems. Without swap accounting a
    /// memory+swap limit of -1 or equal to the memory limit is skipped (it means "unlimited swap"
    /// or "no swap", what Kubernetes sends by default) and any other value is
    /// [`CgroupError::SwapLimitUnsupported`].
    ///
    /// v2: cpu.weight (Kubernetes' shares conversion, [`cpu_shares_to_weight`]), cpu.max,
    /// memory.max, memory.swap.max (memory+swap minus memory), pids.max, cpuset.cpus/mems. A
    /// controller missing from the cgroup's cgroup.controllers is
    /// [`CgroupError::ControllerUnavailable`].
    pub fn apply(&self, r: &Resources) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 { .. } => resources::apply_v1(|c| self.path_for(c), r),
            Layout::V2 { root } => resources::apply_v2(&root.join(&self.relative), r),
        }
    }

    /// Moves a process (all its threads) into the cgroup, in every hierarchy. Pid 0 means the
    /// calling process.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.paths() {
            write_control(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Moves the calling process into the cgroup (the container init does this before execve).
    pub fn add_self(&self) -> Result<(), CgroupError> {
        self.add_process(0)
    }

    /// The processes in the cgroup, sorted: on v1 the union over the hierarchies, since a process
    /// being added may already be in some and not yet in others. Hierarchies where the cgroup does
    /// not exist contribute nothing.
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        let mut all = BTreeSet::new();
        for dir in self.paths() {
            let path = dir.join("cgroup.procs");
            if let Some(text) = read_optional(&path)? {
                all.extend(parse_pids(&path, &text)?);
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Usage statistics. The cgroup must exist.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        for dir in self.paths() {
            if !dir.is_dir() {
                return Err(CgroupError::MissingControlFile { path: dir });
            }
        }
        match &self.layout {
            Layout::V1 { .. } => stats::v1_stats(
                self.path_for("cpuacct").as_deref(),
                self.path_for("memory").as_deref(),
                self.path_for("pids").as_deref(),
            ),
            Layout::V2 { root } => stats::v2_stats(&root.join(&self.relative)),
        }
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup: v1
    /// memory.oom_control, v2 memory.events, "oom_kill N". 0 when the counter is absent (no
    /// memory controller, kernels before 4.13).
    pub fn oom_kill_count(&self) -> Result<u64, CgroupError> {
        match &self.layout {
            Layout::V1 { .. } => match self.path_for("memory") {
                Some(dir) => stats::oom_kills(&dir.join("memory.oom_control")),
                None => Ok(0),
            },
            Layout::V2 { root } => {
                stats::oom_kills(&root.join(&self.relative).join("memory.events"))
            }
        }
    }

    /// Sends `signal` to every process in the cgroup.
    ///
    /// For SIGKILL, v2's cgroup.kill is used when the kernel has it (5.14+: it kills atomically,
    /// forks included), and then, on every layout, the processes still listed are killed again
    /// until the cgroup is empty, a bounded number of rounds, to catch processes forked while the
    /// list was read. Other signals are sent once to each process listed. The caller is
    /// signalled too if it is in the cgroup.
    pub fn kill_all(&self, signal: i32) -> Result<(), CgroupError> {
        let sig = Signal::try_from(signal).map_err(|_| CgroupError::InvalidSignal { signal })?;
        if sig != Signal::SIGKILL {
            for pid in self.procs()? {
                signal_process(pid, sig)?;
            }
            return Ok(());
        }
        if let Layout::V2 { root } = &self.layout {
            let kill_file = root.join(&self.relative).join("cgroup.kill");
            if kill_file.exists() {
                write_control(&kill_file, "1")?;
            }
        }
        for _ in 0..KILL_ROUNDS {
            let pids = self.procs()?;
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                signal_process(pid, sig)?;
            }
            std::thread::sleep(KILL_ROUND_PAUSE);
        }
        let pids = self.procs()?;
        if pids.is_empty() {
            return Ok(());
        }
        Err(CgroupError::ProcessesRemain {
            path: self.paths().into_iter().next().unwrap_or_default(),
            pids,
        })
    }

    /// Removes the cgroup directory from every hierarchy; one already absent is fine. EBUSY (tasks
    /// still exiting) is retried for about a second; a cgroup that still has child cgroups fails
    /// at once with EBUSY.
    pub fn delete(&self) -> Result<(), CgroupError> {
        for dir in self.paths() {
            remove_cgroup_dir(&dir)?;
        }
        Ok(())
    }
}

/// mkdir that accepts an existing directory.
fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(source) => Err(CgroupError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Delegates the wanted controllers that `dir` has to its children.
fn enable_v2_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = resources::v2_controllers(dir)?;
    let subtree_path = dir.join("cgroup.subtree_control");
    let enabled: BTreeSet<String> = read_control(&subtree_path)?
        .split_whitespace()
        .map(|c| c.trim_start_matches('+').to_string())
        .collect();
    let missing: Vec<&str> = V2_CONTROLLERS_WANTED
        .iter()
        .copied()
        .filter(|c| available.contains(*c) && !enabled.contains(*c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let all: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
    if write_control(&subtree_path, &all.join(" ")).is_ok() {
        return Ok(());
    }
    // One refusal fails the whole write (e.g. cpu while a realtime task is in the cgroup, or any
    // controller when processes sit in a non-root cgroup); enable what the kernel allows.
    for controller in missing {
        if let Err(e) = write_control(&subtree_path, &format!("+{controller}")) {
            tracing::warn!(
                controller,
                path = %subtree_path.display(),
                error = %e,
                "cannot delegate cgroup v2 controller"
            );
        }
    }
    Ok(())
}

fn signal_process(pid: u32, sig: Signal) -> Result<(), CgroupError> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(());
    };
    match kill(Pid::from_raw(raw), sig) {
        // Exited between listing and signalling.
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(CgroupError::Signal {
            pid,
            signal: sig as i32,
            source,
        }),
    }
}

fn has_child_cgroup(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().any(|e| e.path().is_dir()))
        .unwrap_or(false)
}

fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupError> {
    let mut attempt = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // Busy because of child cgroups: waiting cannot help.
            Err(e)
                if e.raw_os_error() == Some(Errno::EBUSY as i32)
                    && attempt < RMDIR_ATTEMPTS
                    && !has_child_cgroup(dir) =>
            {
                attempt += 1;
                std::thread::sleep(RMDIR_PAUSE);
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
