//! Garbage collector: deletes objects whose owners are all gone
//! (Background cascading), deletes dependents before their owner when it
//! is deleted with the Foreground policy (the `foregroundDeletion`
//! finalizer, honouring `blockOwnerDeletion`), and strips the owner
//! reference from dependents when the owner is deleted with the Orphan
//! policy (the `orphan` finalizer).
//!
//! It watches every listable kind found through discovery (custom
//! resources too, rediscovered every 30 s), keeps only metadata in a
//! [`graph::Graph`], and checks owners with live reads before deleting
//! anything, so a stale cache never deletes a live object's dependents.

pub mod graph;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use rudder_runtime::WorkQueue;
use serde_json::json;
use tokio::sync::mpsc;

use crate::discovery::{Resource, ResourceMap};
use crate::util::{api_code, is_not_found};
use crate::Context;
use graph::{Graph, Identity, Work, FOREGROUND_FINALIZER, ORPHAN_FINALIZER};

/// How often new kinds (CRDs) are looked for.
const REDISCOVERY: Duration = Duration::from_secs(30);

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    GarbageCollector::new(ctx).run().boxed()
}

enum GraphEvent {
    Upsert(Resource, ObjectMeta),
    Delete(ObjectMeta),
}

#[derive(Clone)]
pub struct GarbageCollector {
    ctx: Context,
    graph: Arc<Mutex<Graph>>,
    resources: Arc<RwLock<ResourceMap>>,
    delete_queue: WorkQueue<String>,
    orphan_queue: WorkQueue<String>,
}

impl GarbageCollector {
    pub fn new(ctx: &Context) -> Self {
        GarbageCollector {
            ctx: ctx.clone(),
            graph: Default::default(),
            resources: Default::default(),
            delete_queue: WorkQueue::new(),
            orphan_queue: WorkQueue::new(),
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let builder = tokio::spawn(self.clone().build_graph(rx));
        let discovery = tokio::spawn(self.clone().discover_forever(tx));
        let deleter = {
            let this = self.clone();
            let queue = self.delete_queue.clone();
            tokio::spawn(async move {
                queue
                    .run_workers("garbagecollector", 5, move |uid: String| {
                        let this = this.clone();
                        async move { this.attempt_to_delete(&uid).await }
                    })
                    .await
            })
        };
        let orphaner = {
            let this = self.clone();
            let queue = self.orphan_queue.clone();
            tokio::spawn(async move {
                queue
                    .run_workers("garbagecollector-orphan", 2, move |uid: String| {
                        let this = this.clone();
                        async move { this.attempt_to_orphan(&uid).await }
                    })
                    .await
            })
        };
        let _ = tokio::join!(builder, discovery, deleter, orphaner);
        Ok(())
    }

    /// Watches every deletable kind, starting watches for kinds that
    /// appear later.
    async fn discover_forever(self, tx: mpsc::UnboundedSender<GraphEvent>) {
        let mut watched: HashSet<(String, String)> = HashSet::new();
        loop {
            match ResourceMap::discover(&self.ctx.client).await {
                Ok(map) => {
                    for resource in &map.deletable {
                        let id = (resource.api.group.clone(), resource.api.plural.clone());
                        if watched.insert(id) {
                            tokio::spawn(watch_kind(
                                self.ctx.client.clone(),
                                resource.clone(),
                                tx.clone(),
                            ));
                        }
                    }
                    *self.resources.write().unwrap() = map;
                }
                Err(err) => tracing::warn!(error = %err, "garbage collector: discovery failed"),
            }
            tokio::time::sleep(REDISCOVERY).await;
        }
    }

    async fn build_graph(self, mut rx: mpsc::UnboundedReceiver<GraphEvent>) {
        while let Some(event) = rx.recv().await {
            let work = {
                let mut graph = self.graph.lock().unwrap();
                match &event {
                    GraphEvent::Upsert(resource, meta) => {
                        let resources = self.resources.read().unwrap();
                        graph.upsert(
                            &resource.api.api_version,
                            &resource.api.kind,
                            meta,
                            |v, k| resources.resolve(v, k).is_none_or(|r| r.namespaced),
                        )
                    }
                    GraphEvent::Delete(meta) => graph.remove(meta.uid.as_deref().unwrap_or("")),
                }
            };
            self.schedule(work);
        }
    }

    fn schedule(&self, work: Work) {
        for uid in work.attempt_delete {
            self.delete_queue.add(uid);
        }
        for uid in work.attempt_orphan {
            self.orphan_queue.add(uid);
        }
    }

    fn api_for(&self, identity: &Identity) -> Option<Api<DynamicObject>> {
        let resources = self.resources.read().unwrap();
        let resource = resources.resolve(&identity.api_version, &identity.kind)?;
        Some(match (&identity.namespace, resource.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.ctx.client.clone(), ns, &resource.api),
            _ => Api::all_with(self.ctx.client.clone(), &resource.api),
        })
    }

    /// The object as the API has it now, if it is still the same one.
    async fn live(&self, identity: &Identity) -> Result<Option<DynamicObject>, kube::Error> {
        let Some(api) = self.api_for(identity) else {
            // A kind discovery does not know (yet): treat it as present,
            // deleting nothing on a guess.
            return Ok(Some(DynamicObject {
                types: None,
                metadata: ObjectMeta {
                    uid: Some(identity.uid.clone()),
                    ..Default::default()
                },
                data: json!({}),
            }));
        };
        let found = api.get_opt(&identity.name).await?;
        Ok(found.filter(|o| o.metadata.uid.as_deref() == Some(identity.uid.as_str())))
    }

    async fn attempt_to_delete(&self, uid: &str) -> anyhow::Result<Option<Duration>> {
        let Some(node) = self.graph.lock().unwrap().nodes.get(uid).cloned() else {
            return Ok(None);
        };
        let Some(latest) = self.live(&node.identity).await? else {
            // Gone (or never was, for an owner only referenced): what it
            // owned may go now. The watch reports real deletions too; this
            // covers owners we never watched.
            let work = self.graph.lock().unwrap().remove(uid);
            self.schedule(work);
            return Ok(None);
        };
        if node.virtual_node {
            // It exists; its watch event will make it a real node.
            return Ok(None);
        }
        let meta = &latest.metadata;
        let finalizers: Vec<&str> = meta
            .finalizers
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let deleting = meta.deletion_timestamp.is_some();
        if deleting && finalizers.contains(&FOREGROUND_FINALIZER) {
            return self
                .process_deleting_dependents(&node.identity, &latest)
                .await;
        }
        if deleting {
            return Ok(None);
        }
        let owners = meta.owner_references.clone().unwrap_or_default();
        if owners.is_empty() {
            return Ok(None);
        }
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for owner in &owners {
            let owner_identity = Identity {
                api_version: owner.api_version.clone(),
                kind: owner.kind.clone(),
                namespace: node.identity.namespace.clone().filter(|_| {
                    self.resources
                        .read()
                        .unwrap()
                        .resolve(&owner.api_version, &owner.kind)
                        .is_none_or(|r| r.namespaced)
                }),
                name: owner.name.clone(),
                uid: owner.uid.clone(),
            };
            match self.live(&owner_identity).await? {
                None => dangling.push(owner.clone()),
                Some(o)
                    if o.metadata.deletion_timestamp.is_some()
                        && o.metadata
                            .finalizers
                            .iter()
                            .flatten()
                            .any(|f| f == FOREGROUND_FINALIZER) =>
                {
                    waiting.push(owner.clone())
                }
                Some(_) => solid.push(owner.clone()),
            }
        }
        let api = self
            .api_for(&node.identity)
            .ok_or_else(|| anyhow::anyhow!("no API for {}", node.identity.kind))?;
        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(None);
            }
            // Live owners keep it; references to gone owners are dropped,
            // and owners being deleted in the foreground are not blocked.
            let kept: Vec<_> = owners
                .iter()
                .filter(|o| !dangling.iter().any(|d| d.uid == o.uid))
                .map(|o| {
                    let mut o = o.clone();
                    if waiting.iter().any(|w| w.uid == o.uid) {
                        o.block_owner_deletion = Some(false);
                    }
                    o
                })
                .collect();
            let patch = json!({"metadata": {"ownerReferences": kept, "resourceVersion": meta.resource_version}});
            match api
                .patch(
                    &node.identity.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => return Ok(None),
                Err(err) if is_not_found(&err) => return Ok(None),
                Err(err) => return Err(err.into()),
            }
        }
        let has_dependents = !self
            .graph
            .lock()
            .unwrap()
            .nodes
            .get(uid)
            .is_none_or(|n| n.dependents.is_empty());
        let policy = if finalizers.contains(&ORPHAN_FINALIZER) {
            PropagationPolicy::Orphan
        } else if finalizers.contains(&FOREGROUND_FINALIZER)
            || (!waiting.is_empty() && has_dependents)
        {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        tracing::debug!(kind = %node.identity.kind, name = %node.identity.name, ?policy, "deleting an object whose owners are gone");
        let params = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&node.identity.name, &params).await {
            Ok(_) => Ok(None),
            Err(err) if matches!(api_code(&err), Some(404) | Some(409)) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// An owner deleted in the foreground drops its finalizer once no
    /// blocking dependent is left; until then it deletes them.
    async fn process_deleting_dependents(
        &self,
        identity: &Identity,
        latest: &DynamicObject,
    ) -> anyhow::Result<Option<Duration>> {
        let blocking = self
            .graph
            .lock()
            .unwrap()
            .blocking_dependents(&identity.uid);
        if blocking.is_empty() {
            let finalizers: Vec<String> = latest
                .metadata
                .finalizers
                .iter()
                .flatten()
                .filter(|f| *f != FOREGROUND_FINALIZER)
                .cloned()
                .collect();
            let api = self
                .api_for(identity)
                .ok_or_else(|| anyhow::anyhow!("no API for {}", identity.kind))?;
            let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": latest.metadata.resource_version}});
            match api
                .patch(
                    &identity.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(err.into()),
            }
            return Ok(None);
        }
        for dependent in blocking {
            if !dependent.being_deleted {
                self.delete_queue.add(dependent.identity.uid.clone());
            }
        }
        Ok(None)
    }

    /// An owner deleted with the Orphan policy: its dependents lose the
    /// reference to it, then it loses its `orphan` finalizer.
    async fn attempt_to_orphan(&self, uid: &str) -> anyhow::Result<Option<Duration>> {
        let Some(node) = self.graph.lock().unwrap().nodes.get(uid).cloned() else {
            return Ok(None);
        };
        let dependents: Vec<Identity> = {
            let graph = self.graph.lock().unwrap();
            node.dependents
                .iter()
                .filter_map(|d| graph.nodes.get(d))
                .map(|n| n.identity.clone())
                .collect()
        };
        for dependent in dependents {
            let Some(api) = self.api_for(&dependent) else {
                continue;
            };
            let Some(latest) = self.live(&dependent).await? else {
                continue;
            };
            let refs: Vec<_> = latest
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.uid != uid)
                .cloned()
                .collect();
            let refs = if refs.is_empty() {
                serde_json::Value::Null
            } else {
                json!(refs)
            };
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": latest.metadata.resource_version}});
            match api
                .patch(
                    &dependent.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(err.into()),
            }
        }
        let Some(latest) = self.live(&node.identity).await? else {
            return Ok(None);
        };
        let finalizers: Vec<String> = latest
            .metadata
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != ORPHAN_FINALIZER)
            .cloned()
            .collect();
        let Some(api) = self.api_for(&node.identity) else {
            return Ok(None);
        };
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": latest.metadata.resource_version}});
        match api
            .patch(
                &node.identity.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(None),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
}

/// Feeds one kind's objects (metadata only) into the graph.
async fn watch_kind(
    client: kube::Client,
    resource: Resource,
    tx: mpsc::UnboundedSender<GraphEvent>,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &resource.api);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut known: HashSet<String> = HashSet::new();
    let mut relisted: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        let sent = match event {
            Ok(Event::Init) => {
                relisted.clear();
                Ok(())
            }
            Ok(Event::InitApply(obj)) => {
                relisted.insert(obj.metadata.uid.clone().unwrap_or_default());
                tx.send(GraphEvent::Upsert(resource.clone(), obj.metadata))
            }
            Ok(Event::InitDone) => {
                // Objects gone while we were not watching.
                let mut result = Ok(());
                for uid in known.difference(&relisted) {
                    let meta = ObjectMeta {
                        uid: Some(uid.clone()),
                        ..Default::default()
                    };
                    result = result.and(tx.send(GraphEvent::Delete(meta)));
                }
                known = std::mem::take(&mut relisted);
                result
            }
            Ok(Event::Apply(obj)) => {
                known.insert(obj.metadata.uid.clone().unwrap_or_default());
                tx.send(GraphEvent::Upsert(resource.clone(), obj.metadata))
            }
            Ok(Event::Delete(obj)) => {
                known.remove(obj.metadata.uid.as_deref().unwrap_or(""));
                tx.send(GraphEvent::Delete(obj.metadata))
            }
            Err(err) => {
                tracing::debug!(resource = %resource.api.plural, error = %err, "garbage collector watch failed; retrying");
                Ok(())
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
