//! The hidden subcommands the runtime runs the `rudder` binary as.

use std::ffi::OsString;
use std::path::Path;

/// Runs a hidden runtime subcommand if `args` (the process' arguments,
/// program first) name one, returning the process' exit code. The caller
/// must not have started any thread.
pub fn dispatch(args: &[OsString]) -> Option<i32> {
    let command = args.get(1)?.to_str()?;
    let arg = |i: usize| args.get(i).map(Path::new).unwrap_or(Path::new(""));
    Some(match command {
        "container-shim" => crate::shim::main(arg(2)),
        "container-init" => crate::init::main(arg(2)),
        "container-exec" => crate::exec::stage1(arg(2), arg(3)),
        "container-exec-stage2" => crate::exec::stage2(arg(2), arg(3)),
        "pause" => pause(),
        _ => return None,
    })
}

/// Whether `args` name a hidden subcommand whose stderr belongs to a
/// container (so nothing else may log there).
pub fn is_container_process(args: &[OsString]) -> bool {
    matches!(
        args.get(1).and_then(|a| a.to_str()),
        Some("container-init" | "container-exec" | "container-exec-stage2")
    )
}

/// The pod sandbox's process (`rudder pause`): it holds the pod's
/// namespaces open, reaps the orphans of a shared PID namespace (it is its
/// PID 1) and exits 0 on SIGTERM or SIGINT.
///
/// The signals are blocked and taken with `sigwait`: a blocked signal is
/// delivered even to a PID namespace's init, which ignores signals it has
/// no handler for.
pub fn pause() -> i32 {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(signal);
    }
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None) {
        eprintln!("rudder pause: blocking signals: {e}");
        return 1;
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT) => return 0,
            Ok(_) => loop {
                // Every child that ended, until none is left to reap.
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
            Err(e) => {
                eprintln!("rudder pause: waiting for signals: {e}");
                return 1;
            }
        }
    }
}
