//! Rudder's storage layer: a key-value store with the etcd v3 semantics the
//! Kubernetes API server relies on.
//!
//! * one global, strictly increasing revision; every successful write takes
//!   the next one, and it becomes the object's `resourceVersion`;
//! * point and paged range reads by key prefix, at the latest or a past
//!   revision, with a count of the whole range;
//! * writes guarded by the expected mod revision (compare-and-swap);
//! * watches of a prefix from any retained revision, in revision order, with
//!   the previous value attached;
//! * compaction of history, after which old revisions answer
//!   [`StoreError::Compacted`].
//!
//! Two backends implement [`Store`]: [`SqliteStore`] (embedded, the default)
//! and [`EtcdStore`] (a real etcd v3 cluster). Only the API server may depend
//! on this crate.

mod compactor;
pub mod encryption;
mod error;
mod etcd;
pub mod local_etcd;
mod sqlite;
mod watch;

use std::sync::Arc;

use async_trait::async_trait;

pub use compactor::Compactor;
pub use encryption::{EncryptedStore, EncryptionConfig};
pub use error::StoreError;
pub use etcd::{EtcdConfig, EtcdStore};
pub use sqlite::{SqliteConfig, SqliteStore};
pub use watch::WatchStream;

/// A revision of the store. Revisions start at 1 for an empty store (as in
/// etcd) and every write moves them forward by one.
pub type Revision = i64;

/// Largest value the store accepts, the same as etcd's default request limit.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;
/// Largest key the store accepts. etcd has no separate key limit, but keys
/// that long are always a bug in the caller.
pub const MAX_KEY_BYTES: usize = 8 * 1024;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One stored key with its metadata, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to this key.
    pub mod_revision: Revision,
    /// Number of writes since the key was created, starting at 1.
    pub version: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For a delete, `kv.mod_revision` is the
/// revision of the delete and `kv.value` is empty; `prev` carries the value
/// that was deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// What a watch stream yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes, in revision order. One write produces one event; events of
    /// consecutive writes may come together.
    Events(Vec<Event>),
    /// Nothing under the prefix changed up to this revision. Sent when the
    /// store is idle for the watch so that callers can emit bookmarks.
    Progress(Revision),
}

/// A paged range read by key prefix.
#[derive(Clone, Debug, Default)]
pub struct RangeRequest {
    /// Every key that starts with this prefix is in the range.
    pub prefix: String,
    /// First key to return (inclusive); a continue token is the last key
    /// of the previous page followed by `"\0"`. Must start with `prefix`.
    pub start: Option<String>,
    /// At most this many keys; 0 means no limit.
    pub limit: usize,
    /// Read at this past revision; `None` reads the latest.
    pub revision: Option<Revision>,
    /// Only count, return no keys.
    pub count_only: bool,
}

impl RangeRequest {
    pub fn prefix(prefix: impl Into<String>) -> Self {
        RangeRequest {
            prefix: prefix.into(),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys follow the returned page.
    pub more: bool,
    /// Number of keys in the range from `start` to the prefix's end, page
    /// limit aside (etcd's `count`).
    pub count: i64,
    /// The revision the read was served at.
    pub revision: Revision,
}

/// The storage contract every backend fulfils. All methods are safe to call
/// concurrently; writes to the same key are serialized by the store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key, at the latest revision or at `revision`. Returns the
    /// key (if present) and the revision the read was served at.
    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Option<KeyValue>, Revision)>;

    /// Reads a page of keys under a prefix, in key order.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;

    /// Creates `key` if it does not exist. Returns the new revision.
    /// Fails with [`StoreError::AlreadyExists`] otherwise.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision>;

    /// Replaces `key` if its mod revision is still `expected`. Fails with
    /// [`StoreError::Conflict`] carrying the current value otherwise (or
    /// [`StoreError::NotFound`] if the key is gone).
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision>;

    /// Deletes `key`, only if its mod revision is `expected` when given.
    /// Returns the revision of the delete and the deleted value.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)>;

    /// Watches every key under `prefix`, starting with the change at
    /// `start_revision` (inclusive, as in etcd); 0 means "changes after
    /// now". Fails with [`StoreError::Compacted`] if that revision has been
    /// compacted away, at once or later on the stream.
    async fn watch(&self, prefix: &str, start_revision: Revision) -> Result<WatchStream>;

    /// Discards history before `revision`: reads at older revisions and
    /// watches starting before it answer [`StoreError::Compacted`].
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The latest revision and the compacted revision. The compacted
    /// revision is 0 when nothing was compacted, and always 0 on etcd, which
    /// does not report it (a read below it still fails with `Compacted`).
    async fn revisions(&self) -> Result<(Revision, Revision)>;

    /// A short name for logs and metrics: "sqlite" or "etcd".
    fn backend(&self) -> &'static str;
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store a server was configured with: etcd when endpoints are
/// given (comma-separated `http://host:port`), the embedded SQLite store in
/// `data_dir` otherwise.
pub async fn open(
    data_dir: &std::path::Path,
    datastore_endpoint: Option<&str>,
) -> Result<DynStore> {
    match datastore_endpoint {
        Some(endpoints) if !endpoints.trim().is_empty() => {
            let config = EtcdConfig::from_endpoints(endpoints);
            Ok(Arc::new(EtcdStore::connect(config).await?))
        }
        _ => {
            let config = SqliteConfig::new(data_dir.join("db").join("state.db"));
            Ok(Arc::new(SqliteStore::open(config).await?))
        }
    }
}

/// The smallest key greater than every key that starts with `prefix`
/// (etcd's `range_end` for a prefix). `None` means "to the end".
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::InvalidKey(format!(
            "the key is {} bytes long, more than the limit of {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

pub(crate) fn check_range(req: &RangeRequest) -> Result<()> {
    if let Some(start) = &req.start {
        if !start.starts_with(&req.prefix) {
            return Err(StoreError::InvalidKey(format!(
                "the range start {start:?} is outside the prefix {:?}",
                req.prefix
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(
            prefix_end(b"/registry/pods/"),
            Some(b"/registry/pods0".to_vec())
        );
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn keys_and_values_are_checked() {
        assert!(matches!(check_key(""), Err(StoreError::InvalidKey(_))));
        assert!(check_key("/a").is_ok());
        assert!(matches!(
            check_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(StoreError::InvalidKey(_))
        ));
        assert!(check_value(&vec![0; MAX_VALUE_BYTES]).is_ok());
        assert!(matches!(
            check_value(&vec![0; MAX_VALUE_BYTES + 1]),
            Err(StoreError::ValueTooLarge { .. })
        ));
    }
}
