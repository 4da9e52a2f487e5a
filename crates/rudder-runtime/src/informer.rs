//! Shared informers: one list-and-watch per resource type for the whole
//! process, a local cache of the objects with indexes, and notifications
//! of each change to whoever registered (controllers turn them into work
//! queue keys). Several controllers share one informer, as client-go's
//! `SharedInformerFactory` does, so 5,000 pods are cached once.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// `namespace/name`, or `name` for cluster-scoped objects: the key of an
/// object in caches and work queues, as client-go's `MetaNamespaceKeyFunc`.
pub type ObjectKey = String;

/// The key of an object.
pub fn key_of<K: Resource>(obj: &K) -> ObjectKey {
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or("");
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

/// Splits a key into namespace (empty for cluster-scoped) and name.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// A change the informer saw.
#[derive(Debug)]
pub enum Change<K> {
    Added(Arc<K>),
    Updated { old: Arc<K>, new: Arc<K> },
    Deleted(Arc<K>),
}

impl<K> Change<K> {
    /// The object as it is now (or was, when deleted).
    pub fn object(&self) -> &Arc<K> {
        match self {
            Change::Added(o) | Change::Deleted(o) => o,
            Change::Updated { new, .. } => new,
        }
    }
}

type Handler<K> = Arc<dyn Fn(&Change<K>) + Send + Sync>;
type IndexFn<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

struct Index<K> {
    values_of: IndexFn<K>,
    keys: HashMap<String, HashSet<ObjectKey>>,
}

struct State<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    indexes: HashMap<&'static str, Index<K>>,
}

impl<K> State<K> {
    fn insert(&mut self, key: ObjectKey, obj: Arc<K>) -> Option<Arc<K>> {
        let old = self.objects.insert(key.clone(), obj.clone());
        for index in self.indexes.values_mut() {
            if let Some(old) = &old {
                for value in (index.values_of)(old) {
                    if let Some(set) = index.keys.get_mut(&value) {
                        set.remove(&key);
                        if set.is_empty() {
                            index.keys.remove(&value);
                        }
                    }
                }
            }
            for value in (index.values_of)(&obj) {
                index.keys.entry(value).or_default().insert(key.clone());
            }
        }
        old
    }

    fn remove(&mut self, key: &str) -> Option<Arc<K>> {
        let old = self.objects.remove(key)?;
        for index in self.indexes.values_mut() {
            for value in (index.values_of)(&old) {
                if let Some(set) = index.keys.get_mut(&value) {
                    set.remove(key);
                    if set.is_empty() {
                        index.keys.remove(&value);
                    }
                }
            }
        }
        Some(old)
    }
}

struct Inner<K> {
    api: Api<K>,
    config: watcher::Config,
    state: RwLock<State<K>>,
    handlers: RwLock<Vec<Handler<K>>>,
    synced: tokio::sync::watch::Sender<bool>,
    started: AtomicBool,
}

/// The cache and notifications for one resource type, cluster-wide.
pub struct Informer<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            inner: self.inner.clone(),
        }
    }
}

/// The index every informer has: objects by namespace.
pub const NAMESPACE_INDEX: &str = "namespace";

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new(api: Api<K>) -> Self {
        Self::with_config(api, watcher::Config::default())
    }

    /// An informer over a subset: `config` carries the label and field
    /// selectors (a node agent watches only the pods bound to its node).
    pub fn with_config(api: Api<K>, config: watcher::Config) -> Self {
        let mut indexes = HashMap::new();
        indexes.insert(
            NAMESPACE_INDEX,
            Index {
                values_of: Arc::new(|o: &K| vec![o.namespace().unwrap_or_default()]) as IndexFn<K>,
                keys: HashMap::new(),
            },
        );
        Informer {
            inner: Arc::new(Inner {
                api,
                config,
                state: RwLock::new(State {
                    objects: HashMap::new(),
                    indexes,
                }),
                handlers: RwLock::new(Vec::new()),
                synced: tokio::sync::watch::channel(false).0,
                started: AtomicBool::new(false),
            }),
        }
    }

    /// Adds an index: `values_of` says under which values an object is
    /// found. Objects already cached are indexed at once.
    pub fn add_index(
        &self,
        name: &'static str,
        values_of: impl Fn(&K) -> Vec<String> + Send + Sync + 'static,
    ) {
        let mut state = self.inner.state.write().unwrap();
        if state.indexes.contains_key(name) {
            return;
        }
        let mut index = Index {
            values_of: Arc::new(values_of),
            keys: HashMap::new(),
        };
        for (key, obj) in &state.objects {
            for value in (index.values_of)(obj) {
                index.keys.entry(value).or_default().insert(key.clone());
            }
        }
        state.indexes.insert(name, index);
    }

    /// Registers a handler for every change. Objects already cached are
    /// delivered as `Added` first, so a late handler misses nothing.
    /// Handlers run on the informer's task: they should only enqueue.
    pub fn on_change(&self, handler: impl Fn(&Change<K>) + Send + Sync + 'static) {
        let handler: Handler<K> = Arc::new(handler);
        // Holding the handler list while replaying keeps the replay and
        // new events in order.
        let mut handlers = self.inner.handlers.write().unwrap();
        for obj in self.list() {
            handler(&Change::Added(obj));
        }
        handlers.push(handler);
    }

    /// Wakes `notify` on every change: for loops that recompute a whole
    /// picture (routes, proxy rules, DNS records) rather than work per key.
    /// Bursts collapse into one wake-up (`Notify` keeps one permit).
    pub fn notify_on_change(&self, notify: &Arc<tokio::sync::Notify>) {
        let notify = notify.clone();
        self.on_change(move |_| notify.notify_one());
    }

    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.inner.state.read().unwrap().objects.get(key).cloned()
    }

    pub fn get_namespaced(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        if namespace.is_empty() {
            return self.get(name);
        }
        self.get(&format!("{namespace}/{name}"))
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.inner
            .state
            .read()
            .unwrap()
            .objects
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.state.read().unwrap().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The objects an index files under `value`.
    pub fn by_index(&self, index: &str, value: &str) -> Vec<Arc<K>> {
        let state = self.inner.state.read().unwrap();
        let Some(index) = state.indexes.get(index) else {
            return Vec::new();
        };
        index
            .keys
            .get(value)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| state.objects.get(k).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.by_index(NAMESPACE_INDEX, namespace)
    }

    pub fn has_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Waits until the first complete list is cached.
    pub async fn wait_synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Starts the list-and-watch once; later calls do nothing.
    pub fn start(&self) {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move { this.run().await });
    }

    async fn run(self) {
        let mut stream = watcher::watcher(self.inner.api.clone(), self.inner.config.clone())
            .default_backoff()
            .boxed();
        let mut relist: Option<HashMap<ObjectKey, Arc<K>>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => relist = Some(HashMap::new()),
                Ok(Event::InitApply(obj)) => {
                    relist
                        .get_or_insert_with(HashMap::new)
                        .insert(key_of(&obj), Arc::new(obj));
                }
                Ok(Event::InitDone) => {
                    self.replace(relist.take().unwrap_or_default());
                    self.inner.synced.send_replace(true);
                }
                Ok(Event::Apply(obj)) => self.apply(Arc::new(obj)),
                Ok(Event::Delete(obj)) => self.delete(&key_of(&obj), Some(Arc::new(obj))),
                Err(err) => {
                    tracing::warn!(resource = %K::plural(&()), error = %err, "watch failed; retrying")
                }
            }
        }
    }

    /// Feeds an object into the cache as a watch event would (tests and
    /// writers that want to see their own writes before the watch does).
    pub fn apply(&self, obj: Arc<K>) {
        let key = key_of(&*obj);
        let old = {
            let mut state = self.inner.state.write().unwrap();
            // A writer may have fed in its own newer write before the watch
            // delivers an older event of the same object: keep the newer.
            // (Rudder's resource versions are store revisions; opaque
            // ones that do not parse are never compared.)
            if let Some(current) = state.objects.get(&key) {
                let version = |o: &K| o.resource_version().and_then(|v| v.parse::<u64>().ok());
                if let (Some(have), Some(got)) = (version(current), version(&obj)) {
                    if got < have {
                        return;
                    }
                }
            }
            state.insert(key, obj.clone())
        };
        let change = match old {
            Some(old) => {
                if old.resource_version() == obj.resource_version()
                    && obj.resource_version().is_some()
                {
                    return;
                }
                Change::Updated { old, new: obj }
            }
            None => Change::Added(obj),
        };
        self.notify(&change);
    }

    fn delete(&self, key: &str, last: Option<Arc<K>>) {
        let old = self.inner.state.write().unwrap().remove(key);
        if let Some(obj) = last.or(old) {
            self.notify(&Change::Deleted(obj));
        }
    }

    /// A re-list: objects not listed again were deleted meanwhile.
    fn replace(&self, listed: HashMap<ObjectKey, Arc<K>>) {
        let gone: Vec<ObjectKey> = {
            let state = self.inner.state.read().unwrap();
            state
                .objects
                .keys()
                .filter(|k| !listed.contains_key(*k))
                .cloned()
                .collect()
        };
        for key in gone {
            self.delete(&key, None);
        }
        for obj in listed.into_values() {
            self.apply(obj);
        }
    }

    fn notify(&self, change: &Change<K>) {
        let handlers = self.inner.handlers.read().unwrap().clone();
        for handler in handlers {
            handler(change);
        }
    }
}

/// One informer per resource type for a process, created on first use.
#[derive(Clone)]
pub struct Informers {
    client: Client,
    map: Arc<Mutex<HashMap<TypeId, Entry>>>,
    started: Arc<AtomicBool>,
}

struct Entry {
    informer: Box<dyn Any + Send + Sync>,
    start: Box<dyn Fn() + Send + Sync>,
}

impl Informers {
    pub fn new(client: Client) -> Self {
        Informers {
            client,
            map: Default::default(),
            started: Default::default(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The informer for `K` (cluster-wide). Created on first use; started
    /// at once if [`Informers::start`] already ran.
    pub fn get<K>(&self) -> Informer<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let mut map = self.map.lock().unwrap();
        let entry = map.entry(TypeId::of::<K>()).or_insert_with(|| {
            let informer = Informer::<K>::new(Api::all(self.client.clone()));
            let to_start = informer.clone();
            Entry {
                informer: Box::new(informer),
                start: Box::new(move || to_start.start()),
            }
        });
        let informer = entry
            .informer
            .downcast_ref::<Informer<K>>()
            .expect("one informer type per TypeId")
            .clone();
        drop(map);
        if self.started.load(Ordering::SeqCst) {
            informer.start();
        }
        informer
    }

    /// Starts every informer created so far (and those created later).
    pub fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        for entry in self.map.lock().unwrap().values() {
            (entry.start)();
        }
    }
}
