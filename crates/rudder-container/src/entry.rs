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
