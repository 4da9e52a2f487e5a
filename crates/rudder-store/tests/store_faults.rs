//! Faults: crashes of the process, unusable files, etcd going away.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rudder_store::{
    EtcdConfig, EtcdStore, RangeRequest, SqliteConfig, SqliteStore, Store, StoreError,
};

const CRASH_DIR_ENV: &str = "RUDDER_STORE_CRASH_DIR";

/// The child half of `acknowledged_writes_survive_kill_9`: writes from many
/// tasks and prints every acknowledged key, until it is killed. Does nothing
/// when run as an ordinary test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_writer_child() {
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
        return;
    };
    let store = Arc::new(
        SqliteStore::open(SqliteConfig::new(
            std::path::Path::new(&dir).join("state.db"),
        ))
        .await
        .unwrap(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for w in 0..16 {
        let store = store.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/registry/crash/w{w}/{i}");
                store
                    .create(&key, format!("value-{w}-{i}").into_bytes())
                    .await
                    .unwrap();
                if tx.send(key).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    while let Some(key) = rx.recv().await {
        println!("ack {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acknowledged = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(key) = line.strip_prefix("ack ") {
            acknowledged.push(key.to_owned());
            if acknowledged.len() == 3_000 {
                // SIGKILL in the middle of the burst: no chance to flush.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(acknowledged.len(), 3_000, "the writer child stopped early");

    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("state.db")))
        .await
        .unwrap();
    let all = store
        .range(RangeRequest::prefix("/registry/crash/"))
        .await
        .unwrap();
    let present: std::collections::HashSet<_> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|k| !present.contains(k.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    for kv in &all.kvs {
        let (w, i) = kv
            .key
            .trim_start_matches("/registry/crash/w")
            .split_once('/')
            .unwrap();
        assert_eq!(kv.value, format!("value-{w}-{i}").into_bytes());
    }
    // The revision counter continues after the recovered history.
    let (latest, _) = store.revisions().await.unwrap();
    let rev = store
        .create("/registry/after-crash", b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(rev, latest + 1);
}

#[tokio::test]
async fn reopening_keeps_data_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let rev = {
        let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
        let r1 = store.create("/registry/a", b"1".to_vec()).await.unwrap();
        store
            .update("/registry/a", b"2".to_vec(), r1)
            .await
            .unwrap()
    };
    let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
    let kv = store.get("/registry/a", None).await.unwrap().0.unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision, kv.version),
        (&b"2"[..], rev, 2)
    );
    assert_eq!(store.revisions().await.unwrap().0, rev);
}

#[tokio::test]
async fn a_corrupt_database_fails_to_open_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    match SqliteStore::open(SqliteConfig::new(&path)).await {
        Err(err @ StoreError::Open { .. }) => {
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        Err(other) => panic!("expected an Open error, got {other}"),
        Ok(_) => panic!("a corrupt database opened"),
    }
    // The unusable file was left as it was, for the operator to inspect.
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 64 * 1024]);
}

#[tokio::test]
async fn an_unusable_directory_fails_to_open_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"file").unwrap();
    let path = blocker.join("state.db");
    match SqliteStore::open(SqliteConfig::new(&path)).await {
        Err(err @ StoreError::Open { .. }) => {
            assert!(
                err.to_string().contains(&blocker.display().to_string()),
                "{err}"
            );
        }
        Err(other) => panic!("expected an Open error, got {other}"),
        Ok(_) => panic!("opened a store under a file"),
    }
}

#[tokio::test]
async fn an_unreachable_etcd_fails_to_open_naming_the_endpoint() {
    let endpoint = format!("http://127.0.0.1:{}", support::free_port());
    let connect = EtcdStore::connect(EtcdConfig::from_endpoints(&endpoint));
    match tokio::time::timeout(Duration::from_secs(120), connect)
        .await
        .expect("connect hung")
    {
        Err(err @ StoreError::Open { .. }) => assert!(err.to_string().contains(&endpoint), "{err}"),
        Err(other) => panic!("expected an Open error, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_going_away_gives_errors_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = support::start_etcd(dir.path());
    let store = support::connect(&etcd).await;
    let r1 = store.create("/registry/x", b"1".to_vec()).await.unwrap();

    etcd.kill();
    match store.get("/registry/x", None).await {
        Err(err) => assert!(err.is_transient(), "expected a transient error, got {err}"),
        Ok(_) => panic!("read from a stopped etcd"),
    }

    etcd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let kv = loop {
        match store.get("/registry/x", None).await {
            Ok((kv, _)) => break kv.unwrap(),
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(err) => panic!("etcd did not recover: {err}"),
        }
    };
    assert_eq!(kv.mod_revision, r1);
    store
        .update("/registry/x", b"2".to_vec(), r1)
        .await
        .unwrap();
}

#[tokio::test]
async fn etcd_keys_live_under_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = support::start_etcd(dir.path());
    let store = support::connect(&etcd).await;
    store.create("/pods/a", b"1".to_vec()).await.unwrap();
    let mut config = support::test_config(&etcd);
    config.prefix = "/other".into();
    let other = EtcdStore::connect(config).await.unwrap();
    assert!(other.get("/pods/a", None).await.unwrap().0.is_none());
    other.create("/pods/a", b"2".to_vec()).await.unwrap();
    assert_eq!(
        store.get("/pods/a", None).await.unwrap().0.unwrap().value,
        b"1"
    );
}
