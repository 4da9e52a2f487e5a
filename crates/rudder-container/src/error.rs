use std::io;
use std::path::PathBuf;

/// What can go wrong creating, running or inspecting a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    #[error("invalid container id {0:?}: use 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    InvalidId(String),
    #[error("container {id:?} is {status}, cannot {action}")]
    InvalidState {
        id: String,
        status: String,
        action: &'static str,
    },
    #[error("invalid OCI spec {path}: {reason}")]
    InvalidSpec { path: PathBuf, reason: String },
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The container's process could not be started (its command is missing,
    /// a mount failed, ...). `exit_code` is what a shell would report (127 for
    /// a missing command, 126 for one that cannot be executed).
    #[error("{message}")]
    StartFailed { message: String, exit_code: i32 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] rudder_cgroups::CgroupError),
}

pub type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// Attaches what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ContainerError::Io {
            context: context(),
            source,
        })
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|errno| ContainerError::Io {
            context: context(),
            source: io::Error::from(errno),
        })
    }
}
