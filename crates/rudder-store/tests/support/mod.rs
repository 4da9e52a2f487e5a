//! Test harnesses: a fresh embedded store in a temporary directory, or a
//! real etcd (Debian's `etcd-server`) started on free ports.

#![allow(dead_code, unused_imports)]

use std::sync::Arc;
use std::time::Duration;

use rudder_store::local_etcd::LocalEtcd;
use rudder_store::{DynStore, EtcdConfig, EtcdStore, SqliteConfig, SqliteStore};

pub use rudder_store::local_etcd::free_port;

pub struct Harness {
    pub store: DynStore,
    pub etcd: Option<LocalEtcd>,
    pub dir: tempfile::TempDir,
}

pub async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("state.db"));
    config.progress_interval = Duration::from_millis(200);
    let store = SqliteStore::open(config).await.unwrap();
    Harness {
        store: Arc::new(store),
        etcd: None,
        dir,
    }
}

/// The embedded store behind the encryption wrapper, encrypting every key
/// (`*.*`): the wrapper must keep every store semantic.
pub async fn encrypted_sqlite() -> Harness {
    let mut harness = sqlite().await;
    let config = rudder_store::EncryptionConfig::generate(&["*.*"]).unwrap();
    harness.store = rudder_store::encryption::encrypted(harness.store, &config);
    harness
}

pub async fn etcd() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let etcd = start_etcd(dir.path());
    let store = connect(&etcd).await;
    Harness {
        store: Arc::new(store),
        etcd: Some(etcd),
        dir,
    }
}

pub fn start_etcd(dir: &std::path::Path) -> LocalEtcd {
    LocalEtcd::start(dir).expect("start etcd (the README's test command installs etcd-server)")
}

/// Quick timeouts and progress reports, so fault tests run fast.
pub fn test_config(etcd: &LocalEtcd) -> EtcdConfig {
    let mut config = etcd.config();
    config.progress_interval = Duration::from_millis(200);
    config.request_timeout = Duration::from_secs(3);
    config
}

pub async fn connect(etcd: &LocalEtcd) -> EtcdStore {
    etcd.connect_with(test_config(etcd))
        .await
        .expect("etcd did not come up")
}
