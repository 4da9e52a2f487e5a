//! The identity and privileges of a container's process, applied by the init stage just before
//! `execve`: user and groups (resolved against the container's own `/etc/passwd` and
//! `/etc/group`), Linux capabilities, `no_new_privs` and a seccomp filter.
//!
//! Everything here that changes the calling process ([`apply`], [`seccomp::install`]) is meant
//! for the single-threaded init process inside the container's namespaces; it must never run in
//! a shared, multi-threaded process such as the node agent or a test runner.

pub mod capabilities;
pub mod identity;
pub mod seccomp;
pub mod user;

use std::io;
use std::path::PathBuf;

pub use capabilities::{container_capabilities, DEFAULT_CAPABILITIES};
pub use identity::{apply, ProcessSecurity};
pub use user::resolve_user;

/// Why a container's process identity or privileges could not be resolved or applied.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unable to find user {0}: no matching entries in the container's /etc/passwd")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in the container's /etc/group")]
    UnknownGroup(String),
    #[error("invalid user {spec:?}: {reason}")]
    InvalidUser { spec: String, reason: String },
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    /// A feature of the request (seccomp argument conditions, notify actions, other
    /// architectures…) that Rudder's runtime does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{operation} failed: {source}")]
    System {
        operation: String,
        #[source]
        source: io::Error,
    },
    #[error("{operation} failed: {message}")]
    Capabilities { operation: String, message: String },
    #[error("cannot install the seccomp filter: {0}")]
    Seccomp(#[source] seccompiler::Error),
}

impl ProcessError {
    pub(crate) fn system(operation: impl Into<String>, errno: nix::errno::Errno) -> Self {
        ProcessError::System {
            operation: operation.into(),
            source: io::Error::from(errno),
        }
    }
}
