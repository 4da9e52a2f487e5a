//! The watch cache: one store watch per resource, fanned out to every
//! client watch, with the current objects and a window of recent events
//! kept decoded in memory. Thousands of watchers (every node agent, every
//! informer) and `resourceVersion=0` lists then cost the store nothing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rudder_store::{DynStore, EventKind, RangeRequest, Revision, WatchMessage};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::rest::decode;

/// Recent events kept for watches that resume from a resourceVersion.
const HISTORY: usize = 10_000;
/// Events buffered per watcher before it is considered too slow.
const FANOUT_BUFFER: usize = 16_384;

/// One change, decoded once for every watcher.
#[derive(Debug)]
pub struct CachedEvent {
    pub revision: Revision,
    pub key: String,
    /// The object after the change (for a delete: the deleted object, with
    /// the delete's resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change, if it existed.
    pub prev: Option<Arc<Value>>,
    pub deleted: bool,
    /// The watch line for each event type, serialized once for every
    /// watcher that sends it.
    lines: [std::sync::OnceLock<bytes::Bytes>; 3],
}

impl CachedEvent {
    pub fn new(
        revision: Revision,
        key: String,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
        deleted: bool,
    ) -> Self {
        CachedEvent {
            revision,
            key,
            object,
            prev,
            deleted,
            lines: Default::default(),
        }
    }

    /// `{"type":KIND,"object":…}` and a newline.
    pub fn line(&self, kind: &str) -> bytes::Bytes {
        let slot = match kind {
            "ADDED" => 0,
            "MODIFIED" => 1,
            _ => 2,
        };
        self.lines[slot]
            .get_or_init(|| {
                let mut line =
                    serde_json::to_vec(&serde_json::json!({"type": kind, "object": &*self.object}))
                        .unwrap_or_default();
                line.push(b'\n');
                line.into()
            })
            .clone()
    }
}

/// What watchers receive.
#[derive(Clone, Debug)]
pub enum CacheMessage {
    Event(Arc<CachedEvent>),
    /// Every change up to this revision has been delivered.
    Progress(Revision),
    /// The cache lost its place in the store (compaction, outage) and
    /// re-listed: watchers must end with 410 so their clients re-list.
    Reset,
}

#[derive(Default)]
struct State {
    ready: bool,
    revision: Revision,
    objects: BTreeMap<String, Arc<Value>>,
    history: VecDeque<Arc<CachedEvent>>,
    /// The history holds every event after this revision.
    oldest: Revision,
}

/// The cache of one resource (all namespaces).
pub struct ResourceCache {
    prefix: String,
    state: RwLock<State>,
    tx: broadcast::Sender<CacheMessage>,
    ready: tokio::sync::Notify,
}

/// A consistent starting point for a watcher.
pub struct Subscription {
    pub rx: broadcast::Receiver<CacheMessage>,
    /// Events the watcher must send first (initial state or replay).
    pub backlog: Vec<Arc<CachedEvent>>,
    /// The revision the backlog brings the watcher to.
    pub revision: Revision,
}

impl ResourceCache {
    fn new(prefix: String) -> Arc<Self> {
        let (tx, _) = broadcast::channel(FANOUT_BUFFER);
        Arc::new(ResourceCache {
            prefix,
            state: RwLock::new(State::default()),
            tx,
            ready: tokio::sync::Notify::new(),
        })
    }

    async fn wait_ready(&self) {
        loop {
            // Register for the wake-up before looking, or a notification
            // sent in between would be missed and this would wait forever.
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.read().unwrap_or_else(|e| e.into_inner()).ready {
                return;
            }
            notified.await;
        }
    }

    /// One object as the cache has it now (it may lag the store a little).
    pub async fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.wait_ready().await;
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .objects
            .get(key)
            .cloned()
    }

    /// The objects under `prefix` now, and the revision they are at.
    pub async fn snapshot(&self, prefix: &str) -> (Vec<Arc<Value>>, Revision) {
        self.wait_ready().await;
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let objects = state
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (objects, state.revision)
    }

    /// Starts a watcher with the current objects under `prefix` as its
    /// backlog (synthetic ADDED events).
    pub async fn subscribe_with_state(&self, prefix: &str) -> Subscription {
        self.wait_ready().await;
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let backlog = state
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(key, object)| {
                Arc::new(CachedEvent::new(
                    state.revision,
                    key.clone(),
                    object.clone(),
                    None,
                    false,
                ))
            })
            .collect();
        Subscription {
            rx: self.tx.subscribe(),
            backlog,
            revision: state.revision,
        }
    }

    /// Starts a watcher at the changes after `revision`, if the cache still
    /// holds them; `None` sends the caller to the store's history.
    pub async fn subscribe_after(&self, revision: Revision) -> Option<Subscription> {
        self.wait_ready().await;
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if revision < state.oldest {
            return None;
        }
        let backlog = state
            .history
            .iter()
            .filter(|e| e.revision > revision)
            .cloned()
            .collect();
        Some(Subscription {
            rx: self.tx.subscribe(),
            backlog,
            revision: state.revision.max(revision),
        })
    }

    /// Keeps the cache in step with the store until the process ends.
    async fn run(self: Arc<Self>, store: DynStore) {
        let mut first = true;
        loop {
            let listed = match store.range(RangeRequest::prefix(self.prefix.clone())).await {
                Ok(listed) => listed,
                Err(err) => {
                    tracing::warn!(prefix = %self.prefix, error = %err, "watch cache cannot list");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                state.objects = listed
                    .kvs
                    .iter()
                    .filter_map(|kv| decode(kv).ok().map(|obj| (kv.key.clone(), Arc::new(obj))))
                    .collect();
                state.revision = listed.revision;
                state.history.clear();
                state.oldest = listed.revision;
                state.ready = true;
                if !first {
                    let _ = self.tx.send(CacheMessage::Reset);
                }
            }
            first = false;
            self.ready.notify_waiters();
            let mut watch = match store.watch(&self.prefix, listed.revision + 1).await {
                Ok(watch) => watch,
                Err(err) => {
                    tracing::warn!(prefix = %self.prefix, error = %err, "watch cache cannot watch");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(message) = watch.recv().await {
                match message {
                    Ok(WatchMessage::Events(events)) => {
                        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                        for event in events {
                            let prev = state.objects.get(&event.kv.key).cloned();
                            let (object, deleted) = match event.kind {
                                EventKind::Put => match decode(&event.kv) {
                                    Ok(obj) => (Arc::new(obj), false),
                                    Err(_) => continue,
                                },
                                EventKind::Delete => {
                                    let Some(prev) = &prev else { continue };
                                    let mut gone = (**prev).clone();
                                    crate::object::meta_mut(&mut gone).insert(
                                        "resourceVersion".into(),
                                        Value::String(event.kv.mod_revision.to_string()),
                                    );
                                    (Arc::new(gone), true)
                                }
                            };
                            if deleted {
                                state.objects.remove(&event.kv.key);
                            } else {
                                state.objects.insert(event.kv.key.clone(), object.clone());
                            }
                            let cached = Arc::new(CachedEvent::new(
                                event.kv.mod_revision,
                                event.kv.key.clone(),
                                object,
                                prev,
                                deleted,
                            ));
                            state.revision = cached.revision;
                            state.history.push_back(cached.clone());
                            if state.history.len() > HISTORY {
                                if let Some(old) = state.history.pop_front() {
                                    state.oldest = old.revision;
                                }
                            }
                            let _ = self.tx.send(CacheMessage::Event(cached));
                        }
                    }
                    Ok(WatchMessage::Progress(revision)) => {
                        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                        state.revision = state.revision.max(revision);
                        let _ = self.tx.send(CacheMessage::Progress(state.revision));
                    }
                    Err(err) => {
                        tracing::info!(prefix = %self.prefix, error = %err, "watch cache re-lists");
                        break;
                    }
                }
            }
        }
    }
}

/// The caches of every resource watched so far, created on first use.
#[derive(Default)]
pub struct WatchCaches {
    caches: Mutex<HashMap<String, Arc<ResourceCache>>>,
}

impl WatchCaches {
    /// The cache of the resource stored under `prefix`.
    pub fn get(&self, store: &DynStore, prefix: &str) -> Arc<ResourceCache> {
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        caches
            .entry(prefix.to_owned())
            .or_insert_with(|| {
                let cache = ResourceCache::new(prefix.to_owned());
                tokio::spawn(cache.clone().run(store.clone()));
                cache
            })
            .clone()
    }
}
