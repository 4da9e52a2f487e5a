//! One conformance suite, run against both backends: the embedded SQLite
//! store and a real etcd. Each case gets a fresh store.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rudder_store::{
    DynStore, Event, EventKind, RangeRequest, Revision, StoreError, WatchMessage, WatchStream,
    MAX_VALUE_BYTES,
};

/// Receives events until `n` have arrived (progress messages are skipped).
async fn next_events(watch: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(30), watch.recv())
            .await
            .expect("watch delivered nothing for 30 s")
            .expect("watch ended");
        match msg.expect("watch failed") {
            WatchMessage::Events(batch) => events.extend(batch),
            WatchMessage::Progress(_) => {}
        }
    }
    assert_eq!(events.len(), n, "more events than expected: {events:?}");
    events
}

/// Asserts that no event arrives within a short time.
async fn assert_quiet(watch: &mut WatchStream) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
    loop {
        match tokio::time::timeout_at(deadline, watch.recv()).await {
            Err(_) => return,
            Ok(Some(Ok(WatchMessage::Progress(_)))) => continue,
            Ok(other) => panic!("unexpected watch message: {other:?}"),
        }
    }
}

pub async fn writes_take_consecutive_revisions(store: DynStore) {
    let (start, _) = store.revisions().await.unwrap();
    let r1 = store
        .create("/registry/pods/default/a", b"v1".to_vec())
        .await
        .unwrap();
    let r2 = store
        .update("/registry/pods/default/a", b"v2".to_vec(), r1)
        .await
        .unwrap();
    let r3 = store
        .create("/registry/pods/default/b", b"b1".to_vec())
        .await
        .unwrap();
    let (r4, deleted) = store
        .delete("/registry/pods/default/a", Some(r2))
        .await
        .unwrap();
    assert_eq!(
        [r1, r2, r3, r4],
        [start + 1, start + 2, start + 3, start + 4]
    );
    assert_eq!(deleted.value, b"v2");
    assert_eq!(deleted.mod_revision, r2);
    assert_eq!(deleted.create_revision, r1);
    assert_eq!(deleted.version, 2);
    assert_eq!(store.revisions().await.unwrap().0, r4);

    let (kv, at) = store.get("/registry/pods/default/b", None).await.unwrap();
    let kv = kv.unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r3, r3, 1)
    );
    assert_eq!(at, r4);
    assert!(store
        .get("/registry/pods/default/a", None)
        .await
        .unwrap()
        .0
        .is_none());
}

pub async fn compare_and_swap_guards_every_write(store: DynStore) {
    let key = "/registry/configmaps/default/cas";
    let r1 = store.create(key, b"one".to_vec()).await.unwrap();
    match store.create(key, b"again".to_vec()).await {
        Err(StoreError::AlreadyExists { key: k }) => assert_eq!(k, key),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let r2 = store.update(key, b"two".to_vec(), r1).await.unwrap();
    match store.update(key, b"stale".to_vec(), r1).await {
        Err(StoreError::Conflict {
            current, expected, ..
        }) => {
            assert_eq!(expected, r1);
            assert_eq!(current.mod_revision, r2);
            assert_eq!(current.value, b"two");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    match store.delete(key, Some(r1)).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current.mod_revision, r2),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(matches!(
        store
            .update("/registry/configmaps/default/none", b"x".to_vec(), 5)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .delete("/registry/configmaps/default/none", None)
            .await,
        Err(StoreError::NotFound(_))
    ));
    // Failed writes took no revision and changed nothing.
    assert_eq!(store.revisions().await.unwrap().0, r2);
    assert_eq!(store.get(key, None).await.unwrap().0.unwrap().value, b"two");
    let (r3, _) = store.delete(key, None).await.unwrap();
    assert_eq!(r3, r2 + 1);
}

/// Many tasks increment one counter with read-modify-CAS; none is lost.
pub async fn concurrent_increments_lose_nothing(store: DynStore) {
    const TASKS: usize = 16;
    const INCREMENTS: usize = 20;
    let key = "/registry/counter";
    store.create(key, b"0".to_vec()).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for _ in 0..INCREMENTS {
                let (mut kv, _) = store.get(key, None).await.unwrap();
                loop {
                    let current = kv.as_ref().unwrap();
                    let n: u64 = std::str::from_utf8(&current.value)
                        .unwrap()
                        .parse()
                        .unwrap();
                    match store
                        .update(key, (n + 1).to_string().into_bytes(), current.mod_revision)
                        .await
                    {
                        Ok(rev) => {
                            revisions.push(rev);
                            break;
                        }
                        Err(StoreError::Conflict { current, .. }) => kv = Some(*current),
                        Err(err) => panic!("unexpected error: {err}"),
                    }
                }
            }
            revisions
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    let (kv, _) = store.get(key, None).await.unwrap();
    let kv = kv.unwrap();
    assert_eq!(kv.value, (TASKS * INCREMENTS).to_string().into_bytes());
    assert_eq!(kv.version as usize, TASKS * INCREMENTS + 1);
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        TASKS * INCREMENTS,
        "two writes shared a revision"
    );
}

pub async fn ranges_page_in_key_order(store: DynStore) {
    for i in 0..25 {
        store
            .create(
                &format!("/registry/pods/ns/p{i:02}"),
                format!("v{i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    store
        .create("/registry/pods/ns0", b"outside".to_vec())
        .await
        .unwrap();
    store
        .create("/registry/pods/nr/p", b"outside".to_vec())
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut start = None;
    let mut pages = 0;
    let mut revision = None;
    loop {
        let resp = store
            .range(RangeRequest {
                prefix: "/registry/pods/ns/".into(),
                start: start.clone(),
                limit: 10,
                revision,
                count_only: false,
            })
            .await
            .unwrap();
        // Every page is read at the revision of the first.
        revision = Some(resp.revision);
        assert_eq!(resp.count as usize, 25 - seen.len());
        pages += 1;
        seen.extend(resp.kvs.iter().map(|kv| kv.key.clone()));
        if !resp.more {
            break;
        }
        start = Some(format!("{}\0", resp.kvs.last().unwrap().key));
        // A write between pages does not show up in the paged list.
        if pages == 1 {
            store
                .create("/registry/pods/ns/p99", b"late".to_vec())
                .await
                .unwrap();
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25)
        .map(|i| format!("/registry/pods/ns/p{i:02}"))
        .collect();
    assert_eq!(seen, expected);

    let count = store
        .range(RangeRequest {
            count_only: true,
            ..RangeRequest::prefix("/registry/pods/ns/")
        })
        .await
        .unwrap();
    assert_eq!(count.count, 26);
    assert!(count.kvs.is_empty());

    let all = store
        .range(RangeRequest::prefix("/registry/pods/"))
        .await
        .unwrap();
    assert_eq!(all.kvs.len(), 28);
    assert!(!all.more);

    assert!(matches!(
        store
            .range(RangeRequest {
                start: Some("/registry/other".into()),
                ..RangeRequest::prefix("/registry/pods/")
            })
            .await,
        Err(StoreError::InvalidKey(_))
    ));
}

pub async fn reads_at_past_revisions(store: DynStore) {
    let a = "/registry/secrets/ns/a";
    let r1 = store.create(a, b"a1".to_vec()).await.unwrap();
    let r2 = store.update(a, b"a2".to_vec(), r1).await.unwrap();
    let r3 = store
        .create("/registry/secrets/ns/b", b"b1".to_vec())
        .await
        .unwrap();
    let (r4, _) = store.delete(a, None).await.unwrap();

    let at = |rev: Revision| {
        let store = store.clone();
        async move {
            let resp = store
                .range(RangeRequest {
                    revision: Some(rev),
                    ..RangeRequest::prefix("/registry/secrets/ns/")
                })
                .await
                .unwrap();
            assert_eq!(resp.revision, rev);
            resp.kvs
                .into_iter()
                .map(|kv| (kv.key, String::from_utf8(kv.value).unwrap()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(at(r1).await, vec![(a.to_string(), "a1".to_string())]);
    assert_eq!(at(r2).await, vec![(a.to_string(), "a2".to_string())]);
    assert_eq!(at(r3).await.len(), 2);
    assert_eq!(
        at(r4).await,
        vec![("/registry/secrets/ns/b".to_string(), "b1".to_string())]
    );

    let (old, _) = store.get(a, Some(r1)).await.unwrap();
    let old = old.unwrap();
    assert_eq!(
        (old.value.as_slice(), old.mod_revision, old.version),
        (&b"a1"[..], r1, 1)
    );
    assert!(store.get(a, Some(r4)).await.unwrap().0.is_none());
    assert!(matches!(
        store.get(a, Some(r4 + 100)).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

pub async fn watch_delivers_every_change_in_order(store: DynStore) {
    let mut watch = store.watch("/registry/deployments/", 0).await.unwrap();
    let mut other = store.watch("/registry/deployments/x/", 0).await.unwrap();
    let key = "/registry/deployments/ns/web";
    let r1 = store.create(key, b"1".to_vec()).await.unwrap();
    store
        .create("/registry/deploymentsX", b"outside".to_vec())
        .await
        .unwrap();
    let r2 = store.update(key, b"2".to_vec(), r1).await.unwrap();
    let (r3, _) = store.delete(key, Some(r2)).await.unwrap();

    let events = next_events(&mut watch, 3).await;
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(events[0].kv.mod_revision, r1);
    assert_eq!(events[0].kv.value, b"1");
    assert_eq!(events[0].prev, None);
    assert_eq!(events[1].kind, EventKind::Put);
    assert_eq!(events[1].kv.mod_revision, r2);
    assert_eq!(events[1].prev.as_ref().unwrap().value, b"1");
    assert_eq!(events[2].kind, EventKind::Delete);
    assert_eq!(events[2].kv.key, key);
    assert_eq!(events[2].kv.mod_revision, r3);
    assert_eq!(events[2].prev.as_ref().unwrap().value, b"2");
    assert_eq!(events[2].prev.as_ref().unwrap().mod_revision, r2);
    assert_quiet(&mut watch).await;
    assert_quiet(&mut other).await;
}

/// A watch from any past revision replays exactly the changes from there.
pub async fn watch_resumes_from_any_revision(store: DynStore) {
    let mut revisions = Vec::new();
    let mut last = BTreeMap::new();
    for i in 0..30 {
        let key = format!("/registry/services/ns/s{}", i % 7);
        let rev = match last.get(&key) {
            None => store.create(&key, vec![i]).await.unwrap(),
            Some(&prev) if i % 5 == 0 => store.delete(&key, Some(prev)).await.unwrap().0,
            Some(&prev) => store.update(&key, vec![i], prev).await.unwrap(),
        };
        if i % 5 == 0 && last.contains_key(&key) {
            last.remove(&key);
        } else {
            last.insert(key, rev);
        }
        revisions.push(rev);
    }
    for (i, &from) in revisions.iter().enumerate().step_by(4) {
        let mut watch = store.watch("/registry/services/", from).await.unwrap();
        let events = next_events(&mut watch, revisions.len() - i).await;
        let got: Vec<Revision> = events.iter().map(Event::revision).collect();
        assert_eq!(got, revisions[i..].to_vec(), "watch from {from}");
        assert_quiet(&mut watch).await;
    }
}

/// Writers race a watcher; it sees every write exactly once, in order,
/// including while it is not reading (it must catch up, not drop events).
pub async fn watch_keeps_up_with_concurrent_writers(store: DynStore) {
    const WRITERS: usize = 8;
    const WRITES: usize = 300;
    let mut watch = store.watch("/registry/events/", 0).await.unwrap();
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..WRITES {
                let key = format!("/registry/events/ns/w{w}-{i}");
                revs.push(store.create(&key, vec![0; 64]).await.unwrap());
            }
            revs
        }));
    }
    let mut written = Vec::new();
    for handle in handles {
        written.extend(handle.await.unwrap());
    }
    written.sort();
    let events = next_events(&mut watch, WRITERS * WRITES).await;
    let seen: Vec<Revision> = events.iter().map(Event::revision).collect();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "events out of order");
    assert_eq!(seen, written);
}

pub async fn compaction_discards_history(store: DynStore) {
    let key = "/registry/leases/ns/l";
    let r1 = store.create(key, b"1".to_vec()).await.unwrap();
    let r2 = store.update(key, b"2".to_vec(), r1).await.unwrap();
    let r3 = store.update(key, b"3".to_vec(), r2).await.unwrap();
    let gone = "/registry/leases/ns/gone";
    let g1 = store.create(gone, b"x".to_vec()).await.unwrap();
    store.delete(gone, Some(g1)).await.unwrap();
    let r4 = store.update(key, b"4".to_vec(), r3).await.unwrap();

    store.compact(r3).await.unwrap();
    // Give physical compaction a moment; the semantics hold either way.
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert!(matches!(
        store.get(key, Some(r2)).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        store
            .range(RangeRequest {
                revision: Some(r1),
                ..RangeRequest::prefix("/registry/leases/")
            })
            .await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        store.watch("/registry/leases/", r2).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        store.compact(r2).await,
        Err(StoreError::Compacted { .. })
    ));

    // The compacted revision itself is still readable and watchable.
    assert_eq!(
        store.get(key, Some(r3)).await.unwrap().0.unwrap().value,
        b"3"
    );
    let at_r3 = store
        .range(RangeRequest {
            revision: Some(r3),
            ..RangeRequest::prefix("/registry/leases/")
        })
        .await
        .unwrap();
    assert_eq!(at_r3.kvs.len(), 1);
    let mut watch = store.watch("/registry/leases/", r3).await.unwrap();
    let events = next_events(&mut watch, 4).await;
    let revs: Vec<Revision> = events.iter().map(Event::revision).collect();
    assert_eq!(revs, vec![r3, g1, g1 + 1, r4]);
    // etcd drops the previous value of the event at the compacted revision
    // itself (it is older than the compaction); when given, it is right.
    if let Some(prev) = &events[0].prev {
        assert_eq!(prev.value, b"2");
    }
    assert_eq!(events[2].kind, EventKind::Delete);
    assert_eq!(store.get(key, None).await.unwrap().0.unwrap().value, b"4");
    assert_eq!(store.get(key, None).await.unwrap().0.unwrap().version, 4);
}

pub async fn bad_input_is_refused_and_changes_nothing(store: DynStore) {
    let (before, _) = store.revisions().await.unwrap();
    assert!(matches!(
        store.create("", b"x".to_vec()).await,
        Err(StoreError::InvalidKey(_))
    ));
    assert!(matches!(
        store.get("", None).await,
        Err(StoreError::InvalidKey(_))
    ));
    match store
        .create("/registry/big", vec![7; MAX_VALUE_BYTES + 1])
        .await
    {
        Err(StoreError::ValueTooLarge { size, limit }) => {
            assert_eq!((size, limit), (MAX_VALUE_BYTES + 1, MAX_VALUE_BYTES));
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert_eq!(store.revisions().await.unwrap().0, before);
    // The limit itself is accepted.
    let rev = store
        .create("/registry/big", vec![7; MAX_VALUE_BYTES])
        .await
        .unwrap();
    let kv = store.get("/registry/big", None).await.unwrap().0.unwrap();
    assert_eq!((kv.value.len(), kv.mod_revision), (MAX_VALUE_BYTES, rev));
}

/// A slow watcher that reads nothing while thousands of writes happen still
/// gets every event once it reads (no silent loss from buffer overflow).
pub async fn slow_watcher_loses_nothing(store: DynStore) {
    let mut watch = store.watch("/registry/slow/", 0).await.unwrap();
    let store2 = store.clone();
    let writes = 3_000;
    let writer = tokio::spawn(async move {
        let mut handles = Vec::new();
        for w in 0..4 {
            let store = store2.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..writes / 4 {
                    store
                        .create(&format!("/registry/slow/{w}/{i}"), vec![1; 16])
                        .await
                        .unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    writer.await.unwrap();
    let events = next_events(&mut watch, writes).await;
    let revs: Vec<Revision> = events.iter().map(Event::revision).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]));
}

/// An idle watch reports progress up to the latest change it delivered.
pub async fn idle_watch_reports_progress(store: DynStore) {
    let mut watch = store.watch("/registry/idle/", 0).await.unwrap();
    let r = store
        .create("/registry/idle/a", b"1".to_vec())
        .await
        .unwrap();
    let other = store
        .create("/registry/elsewhere", b"1".to_vec())
        .await
        .unwrap();
    assert_eq!(next_events(&mut watch, 1).await[0].revision(), r);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline, watch.recv())
            .await
            .expect("no progress report within 20 s")
            .unwrap()
            .unwrap();
        match msg {
            WatchMessage::Progress(rev) if rev >= other => break,
            WatchMessage::Progress(rev) => assert!(rev >= r),
            WatchMessage::Events(events) => panic!("unexpected events {events:?}"),
        }
    }
}

macro_rules! conformance {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let harness = crate::support::$backend().await;
                    super::$case(harness.store.clone()).await;
                }
            )*
        }
    };
}

macro_rules! all_cases {
    ($backend:ident) => {
        conformance!($backend:
            writes_take_consecutive_revisions,
            compare_and_swap_guards_every_write,
            concurrent_increments_lose_nothing,
            ranges_page_in_key_order,
            reads_at_past_revisions,
            watch_delivers_every_change_in_order,
            watch_resumes_from_any_revision,
            watch_keeps_up_with_concurrent_writers,
            compaction_discards_history,
            bad_input_is_refused_and_changes_nothing,
            slow_watcher_loses_nothing,
            idle_watch_reports_progress,
        );
    };
}

all_cases!(sqlite);
// Every case but the size limit, which applies to the stored (encrypted,
// so slightly larger) value.
conformance!(encrypted_sqlite:
    writes_take_consecutive_revisions,
    compare_and_swap_guards_every_write,
    concurrent_increments_lose_nothing,
    ranges_page_in_key_order,
    reads_at_past_revisions,
    watch_delivers_every_change_in_order,
    watch_resumes_from_any_revision,
    watch_keeps_up_with_concurrent_writers,
    compaction_discards_history,
    slow_watcher_loses_nothing,
    idle_watch_reports_progress,
);
all_cases!(etcd);
