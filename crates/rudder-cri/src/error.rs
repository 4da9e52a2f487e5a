/// Errors of the runtime service.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error(transparent)]
    Image(#[from] rudder_image::Error),
    #[error(transparent)]
    Container(#[from] rudder_container::ContainerError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] rudder_cgroups::CgroupError),
    #[error("{0}")]
    Invalid(String),
    /// The pod sandbox, container or image asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Timeout(String),
}

pub type Result<T, E = CriError> = std::result::Result<T, E>;

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CriError {
    let context = context.into();
    move |source| CriError::Io { context, source }
}
