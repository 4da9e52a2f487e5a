//! Linux containers from OCI runtime bundles, in the manner of youki's
//! `libcontainer`: a per-container shim supervises an init stage that
//! enters namespaces, pivots into an overlayfs rootfs, joins its cgroup
//! (`rudder-cgroups`), drops privileges and `execve`s the program. See
//! ARCHITECTURE.md for where it sits.
//!
//! The shim, init and exec stages are the `rudder` binary itself, run with
//! the hidden subcommands of [`entry`]; they must be dispatched before any
//! thread is started (namespaces and credentials are per thread).

pub mod entry;
pub mod error;
pub mod exec;
pub mod init;
pub mod logs;
pub mod process;
pub mod rootfs;
pub mod runtime;
pub mod shim;
pub mod spec;
pub mod state;

pub use error::{ContainerError, Result};
pub use runtime::{CreateOptions, Runtime};
pub use state::{ExitStatus, ProcessId, State, Status};
