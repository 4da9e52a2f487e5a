use std::path::PathBuf;

/// Every failure of the image store, one variant for each a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {source}")]
    InvalidReference {
        reference: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("image {reference} not found in registry {registry}")]
    NotFound { reference: String, registry: String },
    #[error("registry {registry} is unreachable: {source}")]
    Unreachable {
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("registry {registry} refused access to {reference}: {source}")]
    Unauthorized {
        reference: String,
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("pulling {reference} from registry {registry} failed: {source}")]
    Registry {
        reference: String,
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("pulling {reference} failed on every endpoint: {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    AllEndpointsFailed {
        reference: String,
        errors: Vec<Error>,
    },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },
    #[error("corrupt image archive {}: {reason}", .path.display())]
    CorruptArchive { path: PathBuf, reason: String },
    #[error("invalid image {reference}: {reason}")]
    InvalidImage { reference: String, reason: String },
    #[error("image {reference} has no linux/amd64 variant (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        available: String,
    },
    #[error("unsupported media type {media_type} in {reference}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },
    #[error("unpacking layer {diff_id} failed: {reason}")]
    Unpack { diff_id: String, reason: String },
    #[error("image {reference} is not in the store")]
    ImageNotPresent { reference: String },
    #[error("registries config {}: {reason}", .path.display())]
    RegistriesConfig { path: PathBuf, reason: String },
    #[error("{context} {}: {source}", .path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the failed operation and its path to an I/O error.
pub(crate) trait IoContext<T> {
    fn io_context(self, context: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context(self, context: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            context,
            path: path.to_path_buf(),
            source,
        })
    }
}
