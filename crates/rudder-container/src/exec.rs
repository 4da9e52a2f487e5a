//! Running another process in a running container (`kubectl exec`,
//! `rudder ctr exec`): it joins the container's cgroup and namespaces with
//! `setns`, in two single-threaded stages because a PID namespace is
//! entered only by the children of whoever calls `setns`:
//!
//! 1. `rudder container-exec STATE_DIR PROCESS_FILE` joins the cgroup and the
//!    PID namespace, starts stage 2 and passes its exit status on.
//! 2. `rudder container-exec-stage2 ...` (inside the PID namespace) joins the
//!    mount, network, IPC, UTS and cgroup namespaces, takes on the process'
//!    identity and confinement, and `execve`s.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::Process;

use crate::error::{ContainerError, IoContext, Result};
use crate::init::{exec, find_executable};
use crate::state::{State, Status};

fn running_init(state_dir: &Path) -> Result<(State, i32)> {
    let state = State::load(state_dir)?;
    match (state.status, state.init) {
        (Status::Running, Some(init)) if init.is_alive() => Ok((state, init.pid)),
        _ => Err(ContainerError::InvalidState {
            id: state.id.clone(),
            status: state.status.to_string(),
            action: "exec in it",
        }),
    }
}

fn report(e: ContainerError) -> i32 {
    let code = match &e {
        ContainerError::StartFailed { exit_code, .. } => *exit_code,
        _ => 126,
    };
    eprintln!("rudder exec: {e}");
    code
}

/// Stage 1; returns the exec'd process' exit code (128 + signal if killed).
pub fn stage1(state_dir: &Path, process_file: &Path) -> i32 {
    match run_stage1(state_dir, process_file) {
        Ok(code) => code,
        Err(e) => {
            let _ = fs::remove_file(process_file);
            report(e)
        }
    }
}

fn run_stage1(state_dir: &Path, process_file: &Path) -> Result<i32> {
    let (state, pid) = running_init(state_dir)?;
    if let Some(relative) = &state.cgroup {
        let layout = rudder_cgroups::Layout::detect()?;
        rudder_cgroups::Cgroup::new(layout, relative).add_self()?;
    }
    join(pid, "pid", CloneFlags::CLONE_NEWPID)?;
    let status = Command::new("/proc/self/exe")
        .arg("container-exec-stage2")
        .arg(state_dir)
        .arg(process_file)
        .env_clear()
        .status()
        .context(|| "starting the exec stage inside the container".into())?;
    let _ = fs::remove_file(process_file);
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Joins the namespace `kind` of `pid` unless the caller is already in it.
fn join(pid: i32, kind: &str, flag: CloneFlags) -> Result<()> {
    let target = format!("/proc/{pid}/ns/{kind}");
    let ours = fs::metadata(format!("/proc/self/ns/{kind}"))
        .context(|| format!("/proc/self/ns/{kind}"))?;
    let theirs = fs::metadata(&target).context(|| target.clone())?;
    if ours.ino() == theirs.ino() && ours.dev() == theirs.dev() {
        return Ok(());
    }
    let file = fs::File::open(&target).context(|| format!("opening {target}"))?;
    setns(&file, flag).context(|| format!("joining {target}"))
}

/// Stage 2; returns only on failure.
pub fn stage2(state_dir: &Path, process_file: &Path) -> i32 {
    match run_stage2(state_dir, process_file) {
        Ok(never) => match never {},
        Err(e) => report(e),
    }
}

fn run_stage2(state_dir: &Path, process_file: &Path) -> Result<std::convert::Infallible> {
    let (state, pid) = running_init(state_dir)?;
    let process: Process = serde_json::from_slice(
        &fs::read(process_file).context(|| format!("reading {}", process_file.display()))?,
    )
    .map_err(|e| ContainerError::InvalidSpec {
        path: process_file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let _ = fs::remove_file(process_file);
    let spec = crate::init::load_spec(&state.bundle)?;

    // The mount namespace last: after it, the host's /proc is out of reach.
    for (kind, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        join(pid, kind, flag)?;
    }
    if process.terminal() == Some(true) {
        // The caller gave a pseudo-terminal's slave as stdio: a new session
        // with it as the controlling terminal, so the shell gets job
        // control and ^C reaches the foreground process group.
        nix::unistd::setsid().context(|| "starting a session for the terminal".into())?;
        rustix::process::ioctl_tiocsctty(std::io::stdin())
            .map_err(std::io::Error::from)
            .context(|| "making stdin the controlling terminal".into())?;
    }
    let cwd = process.cwd();
    let cwd = if cwd.as_os_str().is_empty() {
        Path::new("/")
    } else {
        cwd.as_path()
    };
    nix::unistd::chdir(cwd).context(|| format!("entering working directory {}", cwd.display()))?;

    let env = process.env().clone().unwrap_or_default();
    let args = process.args().clone().unwrap_or_default();
    let program = args.first().ok_or_else(|| ContainerError::StartFailed {
        message: "no command to execute".into(),
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
        exit_code: 126,
    })?;
    exec(&path, &args, &env)
}
