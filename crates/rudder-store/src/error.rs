use crate::{KeyValue, Revision};

/// Everything a store call can fail with. Each variant is something a caller
/// acts on differently; the API server maps each to one `metav1.Status`.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0:?} not found")]
    NotFound(String),

    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },

    /// A compare-and-swap lost: the key changed since the caller read it.
    /// `current` is the value now stored, so the caller can retry at once.
    #[error("key {key:?} was modified: expected revision {expected}, found {}", current.mod_revision)]
    Conflict {
        key: String,
        expected: Revision,
        current: Box<KeyValue>,
    },

    /// The requested revision is older than the compacted revision.
    #[error("revision {requested} has been compacted (compacted revision {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },

    /// The requested revision is newer than the store's latest.
    #[error("revision {requested} is in the future (latest revision {latest})")]
    FutureRevision {
        requested: Revision,
        latest: Revision,
    },

    #[error("invalid key: {0}")]
    InvalidKey(String),

    #[error("value of {size} bytes is larger than the limit of {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },

    /// The store cannot be opened: names the file or endpoint and why.
    #[error("cannot open the store at {location}: {reason}")]
    Open { location: String, reason: String },

    /// The backend cannot serve the call now (etcd unreachable, disk error).
    /// The call may succeed when retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),

    /// The watch fell too far behind and was closed; the caller re-lists.
    #[error("watch closed: {0}")]
    WatchClosed(String),

    /// A stored value cannot be decrypted (encryption at rest): the key is
    /// missing from the configuration, wrong, or the value was moved from
    /// another key. Worded as kube-apiserver words it.
    #[error("unable to transform key {key:?}: {reason}")]
    Transform { key: String, reason: String },

    /// Data in the store is not what the store itself wrote.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether a retry of the same call may succeed without other changes.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match err.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => {
                StoreError::Corrupt(err.to_string())
            }
            _ => StoreError::Unavailable(format!("sqlite: {err}")),
        }
    }
}

impl From<etcd_client::Error> for StoreError {
    fn from(err: etcd_client::Error) -> Self {
        StoreError::Unavailable(format!("etcd: {err}"))
    }
}
