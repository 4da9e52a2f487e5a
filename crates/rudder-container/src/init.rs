//! The init stage: the first process of a container, started by the shim
//! (already inside the new PID namespace). It joins the cgroup, enters or
//! creates the other namespaces, builds the root filesystem, takes on the
//! process' identity and confinement, and finally `execve`s the container's
//! program. It is a fresh single-threaded process (the `rudder` binary run as
//! `rudder container-init BUNDLE`), which namespace and credential changes
//! require.
//!
//! It reports a failure to the shim as one JSON line on a pipe inherited as
//! `_RUDDER_SYNC_FD`; that pipe is close-on-exec, so end-of-file without a
//! report means the program was executed.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use crate::error::{ContainerError, IoContext, Result};
use crate::rootfs::{self, CgroupView};

pub(crate) const SYNC_FD_ENV: &str = "_RUDDER_SYNC_FD";
pub(crate) const CGROUP_MODE_ENV: &str = "_RUDDER_CGROUP";
pub(crate) const CGROUP_DIRS_ENV: &str = "_RUDDER_CGROUP_DIRS";

/// What the init stage tells the shim when it cannot start the program.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InitFailure {
    pub message: String,
    pub exit_code: i32,
}

pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs the init stage; returns only on failure (after reporting it).
pub fn main(bundle: &Path) -> i32 {
    let mut sync = match take_sync_pipe() {
        Ok(sync) => sync,
        Err(e) => {
            eprintln!("rudder container-init: {e}");
            return 1;
        }
    };
    let err = match run(bundle) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let (message, exit_code) = match err {
        ContainerError::StartFailed { message, exit_code } => (message, exit_code),
        other => (other.to_string(), 128),
    };
    let report = serde_json::to_string(&InitFailure {
        message: message.clone(),
        exit_code,
    })
    .expect("serializes");
    if writeln!(sync, "{report}").is_err() {
        eprintln!("rudder container-init: {message}");
    }
    exit_code
}

/// Reopens the inherited sync pipe close-on-exec and closes the inherited
/// descriptor, so that only a failed exec leaves the pipe open.
fn take_sync_pipe() -> Result<fs::File> {
    let raw: i32 = std::env::var(SYNC_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ContainerError::Unsupported(format!("{SYNC_FD_ENV} is not set")))?;
    // Opening /proc/self/fd/N of a pipe yields a new (close-on-exec) handle
    // on the same pipe.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{raw}"))
        .context(|| "reopening the sync pipe".into())?;
    nix::unistd::close(raw).context(|| "closing the inherited sync pipe".into())?;
    Ok(file)
}

fn cgroup_view() -> CgroupView {
    let v2 = std::env::var(CGROUP_MODE_ENV).as_deref() == Ok("v2");
    let dirs = std::env::var(CGROUP_DIRS_ENV)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, dir)| (name.to_string(), PathBuf::from(dir)))
        .collect();
    CgroupView { v2, dirs }
}

fn namespace_flag(kind: LinuxNamespaceType) -> Result<CloneFlags> {
    Ok(match kind {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::User => {
            return Err(ContainerError::Unsupported(
                "user namespaces (Kubernetes hostUsers: false) are not supported yet".into(),
            ))
        }
        LinuxNamespaceType::Time => {
            return Err(ContainerError::Unsupported(
                "time namespaces are not supported".into(),
            ))
        }
    })
}

fn run(bundle: &Path) -> Result<std::convert::Infallible> {
    let spec = load_spec(bundle)?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| ContainerError::InvalidSpec {
            path: bundle.join("config.json"),
            reason: "no process".into(),
        })?;
    if process.terminal() == Some(true) {
        return Err(ContainerError::Unsupported(
            "terminal: true (a pseudo-terminal for the container) is not supported yet".into(),
        ));
    }
    let cgroups = cgroup_view();

    // Join the cgroup first: everything from here on is accounted to it.
    let mut seen = Vec::new();
    for (_, dir) in &cgroups.dirs {
        if seen.contains(dir) {
            continue;
        }
        seen.push(dir.clone());
        fs::write(dir.join("cgroup.procs"), "0")
            .context(|| format!("joining cgroup {}", dir.display()))?;
    }

    // Enter existing namespaces first (the pod sandbox's), then create the
    // others in one unshare. The PID namespace was handled by the shim.
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut new_namespaces = CloneFlags::empty();
    let mut new_mount_ns = false;
    let mut new_uts_ns = false;
    for ns in &namespaces {
        if ns.typ() == LinuxNamespaceType::Pid {
            continue;
        }
        let flag = namespace_flag(ns.typ())?;
        match ns.path() {
            Some(path) => {
                let file = fs::File::open(path)
                    .context(|| format!("opening namespace {}", path.display()))?;
                setns(&file, flag).context(|| format!("joining namespace {}", path.display()))?;
            }
            None => {
                new_namespaces |= flag;
                new_mount_ns |= flag == CloneFlags::CLONE_NEWNS;
                new_uts_ns |= flag == CloneFlags::CLONE_NEWUTS;
            }
        }
    }
    if !new_namespaces.is_empty() {
        unshare(new_namespaces).context(|| format!("creating namespaces {new_namespaces:?}"))?;
    }
    let joined_mount_ns = namespaces
        .iter()
        .any(|ns| ns.typ() == LinuxNamespaceType::Mount && ns.path().is_some());

    if new_uts_ns {
        if let Some(hostname) = spec.hostname() {
            nix::unistd::sethostname(hostname)
                .context(|| format!("setting hostname {hostname:?}"))?;
        }
    }

    if new_mount_ns {
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| "rootfs".into());
        let rootfs = if root.is_absolute() {
            root
        } else {
            bundle.join(root)
        };
        rootfs::prepare(&spec, &rootfs, &cgroups)?;
    } else if !joined_mount_ns {
        // No mount namespace: the process runs in the host's filesystem (the
        // pod sandbox's pause process does).
    }

    if let Some(linux) = spec.linux() {
        for (key, value) in linux.sysctl().iter().flatten() {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            fs::write(&path, value).context(|| format!("setting sysctl {key}={value}"))?;
        }
    }
    for rlimit in process.rlimits().iter().flatten() {
        set_rlimit(rlimit)?;
    }
    if let Some(adj) = process.oom_score_adj() {
        match fs::write("/proc/self/oom_score_adj", adj.to_string()) {
            Ok(()) => {}
            // Lowering the score needs CAP_SYS_RESOURCE, which some hosts
            // (nested containers, sandboxed VMs) withhold even from root:
            // the container then keeps the score it inherited, as it
            // would under a kubelet that could not protect it either.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(e).context(|| format!("setting oom_score_adj {adj}")),
        }
    }

    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let cwd = process.cwd();
    if !cwd.as_os_str().is_empty() {
        if !cwd.exists() {
            // Docker and containerd create a missing working directory.
            fs::create_dir_all(cwd)
                .context(|| format!("creating working directory {}", cwd.display()))?;
        }
        nix::unistd::chdir(cwd.as_path())
            .context(|| format!("entering working directory {}", cwd.display()))?;
    }
    let args = process.args().clone().unwrap_or_default();
    let program = args.first().ok_or_else(|| ContainerError::StartFailed {
        message:
            "the container has no command: the image has no Entrypoint or Cmd and none was given"
                .into(),
        exit_code: 127,
    })?;
    let path = find_executable(program, &env)?;

    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    crate::process::identity::apply(&crate::process::identity::ProcessSecurity {
        user: process.user(),
        capabilities: process.capabilities().as_ref(),
        no_new_privileges: process.no_new_privileges() == Some(true),
        seccomp,
    })
    .map_err(|e| ContainerError::StartFailed {
        message: format!("applying the process' identity and confinement: {e}"),
        exit_code: 128,
    })?;

    exec(&path, &args, &env)
}

pub(crate) fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|e| ContainerError::InvalidSpec {
        path,
        reason: e.to_string(),
    })
}

fn set_rlimit(rlimit: &oci_spec::runtime::PosixRlimit) -> Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    use oci_spec::runtime::PosixRlimitType as T;
    let resource = match rlimit.typ() {
        T::RlimitCpu => Resource::RLIMIT_CPU,
        T::RlimitFsize => Resource::RLIMIT_FSIZE,
        T::RlimitData => Resource::RLIMIT_DATA,
        T::RlimitStack => Resource::RLIMIT_STACK,
        T::RlimitCore => Resource::RLIMIT_CORE,
        T::RlimitRss => Resource::RLIMIT_RSS,
        T::RlimitNproc => Resource::RLIMIT_NPROC,
        T::RlimitNofile => Resource::RLIMIT_NOFILE,
        T::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        T::RlimitAs => Resource::RLIMIT_AS,
        T::RlimitLocks => Resource::RLIMIT_LOCKS,
        T::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        T::RlimitNice => Resource::RLIMIT_NICE,
        T::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        T::RlimitRttime => Resource::RLIMIT_RTTIME,
    };
    setrlimit(resource, rlimit.soft(), rlimit.hard())
        .context(|| format!("setting rlimit {:?}", rlimit.typ()))
}

/// Finds the program as `execvp` would, in the container's PATH, with the
/// messages and exit codes other runtimes give (127 missing, 126 not
/// executable).
pub(crate) fn find_executable(program: &str, env: &[String]) -> Result<PathBuf> {
    let not_found = || ContainerError::StartFailed {
        message: format!("exec: {program:?}: executable file not found in $PATH"),
        exit_code: 127,
    };
    let check = |path: &Path| -> Result<Option<PathBuf>> {
        match fs::metadata(path) {
            Ok(meta) if meta.is_file() => {
                if meta.permissions().mode() & 0o111 == 0 {
                    Err(ContainerError::StartFailed {
                        message: format!(
                            "exec: {:?}: permission denied",
                            path.display().to_string()
                        ),
                        exit_code: 126,
                    })
                } else {
                    Ok(Some(path.to_path_buf()))
                }
            }
            Ok(_) => Err(ContainerError::StartFailed {
                message: format!("exec: {:?}: is a directory", path.display().to_string()),
                exit_code: 126,
            }),
            Err(_) => Ok(None),
        }
    };
    if program.contains('/') {
        return check(Path::new(program))?.ok_or_else(|| ContainerError::StartFailed {
            message: format!("exec: {program:?}: no such file or directory"),
            exit_code: 127,
        });
    }
    let path_var = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        if let Some(found) = check(&Path::new(dir).join(program))? {
            return Ok(found);
        }
    }
    Err(not_found())
}

pub(crate) fn exec(
    path: &Path,
    args: &[String],
    env: &[String],
) -> Result<std::convert::Infallible> {
    let to_c = |s: &str| {
        CString::new(s).map_err(|_| ContainerError::StartFailed {
            message: format!("{s:?} contains a NUL byte"),
            exit_code: 128,
        })
    };
    let c_path = to_c(&path.to_string_lossy())?;
    let c_args = args.iter().map(|a| to_c(a)).collect::<Result<Vec<_>>>()?;
    let c_env = env.iter().map(|e| to_c(e)).collect::<Result<Vec<_>>>()?;
    let errno = nix::unistd::execve(&c_path, &c_args, &c_env).unwrap_err();
    Err(ContainerError::StartFailed {
        message: format!("exec {:?}: {}", path.display().to_string(), errno.desc()),
        exit_code: if errno == nix::errno::Errno::ENOENT {
            127
        } else {
            126
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_found_in_the_path_with_shell_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        fs::write(bin.join("tool"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(bin.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(bin.join("data"), "").unwrap();
        let env = vec![format!("PATH=/nonexistent:{}", bin.display())];
        assert_eq!(find_executable("tool", &env).unwrap(), bin.join("tool"));
        match find_executable("nope", &env) {
            Err(ContainerError::StartFailed { message, exit_code }) => {
                assert_eq!(exit_code, 127);
                assert_eq!(
                    message,
                    "exec: \"nope\": executable file not found in $PATH"
                );
            }
            other => panic!("{other:?}"),
        }
        match find_executable(&bin.join("data").to_string_lossy(), &env) {
            Err(ContainerError::StartFailed { exit_code, .. }) => assert_eq!(exit_code, 126),
            other => panic!("{other:?}"),
        }
        match find_executable("/no/such/file", &env) {
            Err(ContainerError::StartFailed { exit_code, .. }) => assert_eq!(exit_code, 127),
            other => panic!("{other:?}"),
        }
    }
}
