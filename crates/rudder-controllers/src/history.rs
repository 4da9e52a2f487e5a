//! ControllerRevisions as the StatefulSet and DaemonSet controllers keep
//! them (client-go's `controller/history` and the two controllers' own
//! helpers), plus the ownership claims both controllers make on their pods
//! and revisions.
//!
//! A revision stores a strategic merge patch that puts a pod template
//! back: `{"spec":{"template":{…,"$patch":"replace"}}}`. `kubectl rollout
//! undo` applies exactly that patch to the owner, so its shape matters.
//! Revisions are named `<owner>-<hash>` and numbered by `revision`; the
//! owner's newest template is the highest number, and rolling back to an
//! old template renumbers its revision instead of copying it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::util::{api_code, controller_of, fnv32a, safe_encode, selector_matches};

/// The label every revision carries with its hash (client-go's
/// `ControllerRevisionHashLabel`).
pub const REVISION_HASH_LABEL: &str = "controller.kubernetes.io/hash";
/// The label on pods naming the revision they were made from
/// (`apps/v1` `ControllerRevisionHashLabelKey`).
pub const POD_REVISION_LABEL: &str = "controller-revision-hash";

/// Names longer than this are cut so `<prefix>-<hash>` stays a valid name
/// (253 characters, as client-go's `ControllerRevisionName`).
const MAX_NAME_PREFIX: usize = 223;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("controller revision {0} does not hold a pod template patch")]
    NotATemplatePatch(String),
    #[error("controller revision {name} holds an invalid pod template: {source}")]
    InvalidTemplate {
        name: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// The patch a revision stores for `template`.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(map) = template.as_object_mut() {
        map.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The pod template a revision puts back (the controllers' `ApplyRevision`:
/// the patch replaces the whole template, so applying it is reading it).
pub fn template_of(revision: &ControllerRevision) -> Result<PodTemplateSpec, HistoryError> {
    let name = revision.name_any();
    let mut template = revision
        .data
        .as_ref()
        .and_then(|d| d.0.pointer("/spec/template"))
        .filter(|t| t.is_object())
        .cloned()
        .ok_or_else(|| HistoryError::NotATemplatePatch(name.clone()))?;
    if let Some(map) = template.as_object_mut() {
        map.remove("$patch");
    }
    serde_json::from_value(template)
        .map_err(|source| HistoryError::InvalidTemplate { name, source })
}

/// client-go's `HashControllerRevision`: FNV-1a over the stored data, then
/// the collision count, in the safe alphabet.
pub fn hash_revision_data(data: &Value, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(data).unwrap_or_default();
    if let Some(count) = collision_count {
        bytes.extend_from_slice(count.to_string().as_bytes());
    }
    safe_encode(fnv32a(&bytes))
}

/// `<owner>-<hash>`, the owner's name cut so the result is a valid name.
pub fn revision_name(owner: &str, hash: &str) -> String {
    let prefix = match owner.char_indices().nth(MAX_NAME_PREFIX) {
        Some((at, _)) => &owner[..at],
        None => owner,
    };
    format!("{prefix}-{hash}")
}

/// Oldest first: by `revision`, then creation time, then name (client-go's
/// `SortControllerRevisions`).
pub fn sort_by_revision<R: std::ops::Deref<Target = ControllerRevision>>(revisions: &mut [R]) {
    revisions.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then_with(|| {
                let at = |r: &ControllerRevision| {
                    r.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.as_second())
                };
                at(a).cmp(&at(b))
            })
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// The number the next revision gets: one more than the highest.
pub fn next_revision<R: std::ops::Deref<Target = ControllerRevision>>(revisions: &[R]) -> i64 {
    revisions.iter().map(|r| r.revision).max().unwrap_or(0) + 1
}

/// Whether the revision stores exactly this data. Compared as JSON values,
/// not bytes: the API server may re-encode what we stored.
pub fn holds(revision: &ControllerRevision, data: &Value) -> bool {
    revision.data.as_ref().is_some_and(|d| &d.0 == data)
}

/// client-go's `EqualRevision`: different hash labels mean different
/// revisions; otherwise the data decides.
pub fn equal_revisions(a: &ControllerRevision, b: &ControllerRevision) -> bool {
    let hash = |r: &ControllerRevision| {
        r.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_HASH_LABEL))
            .cloned()
    };
    if let (Some(ha), Some(hb)) = (hash(a), hash(b)) {
        if ha != hb {
            return false;
        }
    }
    match (&a.data, &b.data) {
        (Some(da), Some(db)) => da.0 == db.0,
        (None, None) => true,
        _ => false,
    }
}

/// A revision not yet stored: owned by `owner`, labelled with the
/// template's labels (so the owner's selector finds it, as kubectl's
/// `rollout history` and `undo` do).
pub fn new_revision(
    owner: OwnerReference,
    namespace: &str,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
    data: Value,
    revision: i64,
) -> ControllerRevision {
    ControllerRevision {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: annotations.filter(|a| !a.is_empty()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision,
    }
}

/// Stores `revision` under `<owner>-<hash>` (hash of its data and the
/// collision count), as client-go's `CreateControllerRevision`: when the
/// name is taken by a revision with other data, the collision count goes
/// up and the hash changes. Returns the stored revision; `collision_count`
/// is what the owner's status should record.
pub async fn create_revision(
    api: &Api<ControllerRevision>,
    owner_name: &str,
    mut revision: ControllerRevision,
    collision_count: &mut i32,
) -> Result<ControllerRevision, kube::Error> {
    let data = revision
        .data
        .as_ref()
        .map(|d| d.0.clone())
        .unwrap_or_default();
    loop {
        let hash = hash_revision_data(&data, Some(*collision_count));
        let name = revision_name(owner_name, &hash);
        revision.metadata.name = Some(name.clone());
        revision
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(REVISION_HASH_LABEL.into(), hash);
        match api.create(&PostParams::default(), &revision).await {
            Ok(created) => return Ok(created),
            Err(err) if api_code(&err) == Some(409) => {
                let existing = api.get(&name).await?;
                if holds(&existing, &data) {
                    return Ok(existing);
                }
                *collision_count += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Renumbers a revision (a rollback to its template makes it the newest).
pub async fn set_revision_number(
    api: &Api<ControllerRevision>,
    revision: &ControllerRevision,
    number: i64,
) -> Result<ControllerRevision, kube::Error> {
    if revision.revision == number {
        return Ok(revision.clone());
    }
    api.patch(
        &revision.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"revision": number})),
    )
    .await
}

/// Which old revisions to delete to keep `limit` of them, oldest first.
/// `sorted` must be oldest first; live revisions (in use by a pod, or the
/// owner's current/update revision) are never deleted. The StatefulSet
/// controller keeps `limit` revisions besides the live ones
/// (`live_counts = false`); the DaemonSet controller counts live old
/// revisions toward the limit (`live_counts = true`).
pub fn revisions_to_prune(
    sorted: &[Arc<ControllerRevision>],
    is_live: impl Fn(&ControllerRevision) -> bool,
    limit: i32,
    live_counts: bool,
) -> Vec<&Arc<ControllerRevision>> {
    let limit = limit.max(0) as usize;
    let candidates: Vec<_> = sorted.iter().filter(|r| !is_live(r)).collect();
    let considered = if live_counts {
        sorted.len()
    } else {
        candidates.len()
    };
    let excess = considered.saturating_sub(limit);
    candidates.into_iter().take(excess).collect()
}

// ---------------------------------------------------------------------
// Ownership claims (client-go's `ControllerRefManager`): the pods and
// revisions a controller manages are those with its controller reference
// that its selector still matches; orphans it matches are adopted, and
// those it owns but no longer matches are released.
// ---------------------------------------------------------------------

/// Claims `candidates` for `owner`: returns those it owns after adopting
/// matching orphans and releasing owned objects its selector no longer
/// matches. `member` further restricts what may be adopted or kept (a
/// StatefulSet only owns pods named after it). Before the first adoption
/// the owner is read again from the API, so a deleted or replaced owner
/// adopts nothing (client-go's `RecheckDeletionTimestamp`).
pub async fn claim<K, O>(
    api: &Api<K>,
    owner_api: &Api<O>,
    owner: &O,
    owner_ref: &OwnerReference,
    selector: &LabelSelector,
    candidates: Vec<Arc<K>>,
    member: impl Fn(&K) -> bool,
) -> Result<Vec<Arc<K>>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
    O: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let owner_uid = owner.uid().unwrap_or_default();
    let owner_deleting = owner.meta().deletion_timestamp.is_some();
    let mut may_adopt: Option<bool> = None;
    let mut claimed = Vec::new();
    for obj in candidates {
        let matches =
            selector_matches(selector, crate::util::labels_of(obj.meta())) && member(&obj);
        match controller_of(obj.meta()) {
            Some(r) if r.uid == owner_uid => {
                if matches || owner_deleting {
                    claimed.push(obj);
                    continue;
                }
                let refs: Vec<&OwnerReference> = obj
                    .meta()
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|r| r.uid != owner_uid)
                    .collect();
                match set_owner_references(api, &obj, json!(refs)).await {
                    Ok(_) => {}
                    // Gone, or no longer ours: nothing to release.
                    Err(err) if matches!(api_code(&err), Some(404) | Some(422)) => {}
                    Err(err) => return Err(err),
                }
            }
            Some(_) => {}
            None => {
                if !matches || owner_deleting || obj.meta().deletion_timestamp.is_some() {
                    continue;
                }
                if may_adopt.is_none() {
                    let fresh = owner_api.get(&owner.name_any()).await?;
                    may_adopt = Some(
                        fresh.uid().as_deref() == Some(owner_uid.as_str())
                            && fresh.meta().deletion_timestamp.is_none(),
                    );
                }
                if may_adopt != Some(true) {
                    continue;
                }
                let mut refs: Vec<OwnerReference> =
                    obj.meta().owner_references.clone().unwrap_or_default();
                refs.push(owner_ref.clone());
                match set_owner_references(api, &obj, json!(refs)).await {
                    Ok(adopted) => claimed.push(Arc::new(adopted)),
                    Err(err) if matches!(api_code(&err), Some(404) | Some(422)) => {}
                    Err(err) => return Err(err),
                }
            }
        }
    }
    Ok(claimed)
}

/// Replaces an object's owner references, if it is still the object we
/// saw (same uid and resourceVersion; a conflict is retried by the caller).
async fn set_owner_references<K>(api: &Api<K>, obj: &K, refs: Value) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "uid": obj.uid(),
        "resourceVersion": obj.resource_version(),
    }});
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
}

/// How long unmet expectations hold a controller back (a watch event may
/// have been lost), as client-go's `ExpectationsTimeout`.
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Pending {
    adds: i64,
    deleting: HashSet<String>,
    set_at: Instant,
}

/// Expectations for pods (client-go's `UIDTrackingControllerExpectations`):
/// how many creations are pending, and which pods were asked to go, so a
/// pod seen going twice (marked for deletion, then removed) counts once.
/// Controllers that decide one pod at a time raise them as they go.
#[derive(Debug, Default)]
pub struct PodExpectations {
    map: Mutex<HashMap<String, Pending>>,
}

impl PodExpectations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `adds` pending creations and the pods with `delete_uids` as
    /// pending deletions to what the controller for `key` waits for.
    pub fn raise(&self, key: &str, adds: usize, delete_uids: impl IntoIterator<Item = String>) {
        let mut map = self.map.lock().unwrap();
        let pending = map.entry(key.to_owned()).or_insert_with(|| Pending {
            adds: 0,
            deleting: HashSet::new(),
            set_at: Instant::now(),
        });
        if pending.adds <= 0 && pending.deleting.is_empty() {
            pending.adds = 0;
            pending.set_at = Instant::now();
        }
        pending.adds += adds as i64;
        pending.deleting.extend(delete_uids);
    }

    /// A pod was created (or its creation failed and will not happen).
    pub fn creation_observed(&self, key: &str) {
        if let Some(p) = self.map.lock().unwrap().get_mut(key) {
            p.adds -= 1;
        }
    }

    /// The pod with `uid` was seen going (or its deletion failed).
    pub fn deletion_observed(&self, key: &str, uid: &str) {
        if let Some(p) = self.map.lock().unwrap().get_mut(key) {
            p.deleting.remove(uid);
        }
    }

    /// Whether the cache has seen every change asked for (or waited too
    /// long to trust).
    pub fn satisfied(&self, key: &str) -> bool {
        match self.map.lock().unwrap().get(key) {
            None => true,
            Some(p) => {
                (p.adds <= 0 && p.deleting.is_empty()) || p.set_at.elapsed() > EXPECTATIONS_TIMEOUT
            }
        }
    }

    /// Forgets the key (its owner is gone).
    pub fn delete(&self, key: &str) {
        self.map.lock().unwrap().remove(key);
    }
}

/// Routes a pod event to the set that owns the pod (`owner_key`), or, for
/// an orphan, to every set whose selector matches it (`enqueue_matching`),
/// counting creations and deletions against the owner's expectations.
/// The StatefulSet and DaemonSet controllers share it.
pub fn route_pod_change(
    change: &rudder_runtime::Change<k8s_openapi::api::core::v1::Pod>,
    owner_key: impl Fn(&k8s_openapi::api::core::v1::Pod) -> Option<String>,
    enqueue_matching: impl Fn(&rudder_runtime::WorkQueue<String>, &k8s_openapi::api::core::v1::Pod),
    q: &rudder_runtime::WorkQueue<String>,
    expectations: &PodExpectations,
) {
    use kube::ResourceExt;
    use rudder_runtime::Change;
    match change {
        Change::Added(pod) => match owner_key(pod) {
            Some(key) => {
                expectations.creation_observed(&key);
                q.add(key);
            }
            None => enqueue_matching(q, pod),
        },
        Change::Updated { old, new } => {
            let new_owner = owner_key(new);
            if let Some(key) = &new_owner {
                if new.metadata.deletion_timestamp.is_some() {
                    expectations.deletion_observed(key, &new.uid().unwrap_or_default());
                }
                q.add(key.clone());
            }
            if let Some(key) = owner_key(old).filter(|k| Some(k) != new_owner.as_ref()) {
                q.add(key);
            }
            if new_owner.is_none() {
                enqueue_matching(q, new);
            }
        }
        Change::Deleted(pod) => {
            if let Some(key) = owner_key(pod) {
                expectations.deletion_observed(&key, &pod.uid().unwrap_or_default());
                q.add(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(name: &str, number: i64, image: &str) -> Arc<ControllerRevision> {
        let template: PodTemplateSpec = serde_json::from_value(
            json!({"spec": {"containers": [{"name": "c", "image": image}]}}),
        )
        .unwrap();
        let mut r = new_revision(
            OwnerReference::default(),
            "ns",
            BTreeMap::new(),
            None,
            template_patch(&template),
            number,
        );
        r.metadata.name = Some(name.into());
        Arc::new(r)
    }

    #[test]
    fn the_patch_replaces_the_template_and_reads_back() {
        let r = revision("web-1", 1, "nginx:1");
        let data = &r.data.as_ref().unwrap().0;
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        assert_eq!(data.as_object().unwrap().len(), 1);
        let template = template_of(&r).unwrap();
        assert_eq!(
            template.spec.unwrap().containers[0].image.as_deref(),
            Some("nginx:1")
        );
        let mut broken = (*r).clone();
        broken.data = Some(RawExtension(json!({"spec": {}})));
        assert!(matches!(
            template_of(&broken),
            Err(HistoryError::NotATemplatePatch(_))
        ));
    }

    #[test]
    fn names_hashes_and_numbers() {
        let data = json!({"spec": {"template": {"$patch": "replace"}}});
        let a = hash_revision_data(&data, Some(0));
        assert_eq!(a, hash_revision_data(&data, Some(0)));
        assert_ne!(a, hash_revision_data(&data, Some(1)));
        assert_eq!(revision_name("web", &a), format!("web-{a}"));
        let long = "x".repeat(300);
        assert_eq!(revision_name(&long, "h").len(), MAX_NAME_PREFIX + 2);

        let mut revisions = vec![
            revision("c", 3, "c"),
            revision("a", 1, "a"),
            revision("b", 2, "b"),
        ];
        sort_by_revision(&mut revisions);
        let names: Vec<_> = revisions.iter().map(|r| r.name_any()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(next_revision(&revisions), 4);
        assert_eq!(next_revision::<Arc<ControllerRevision>>(&[]), 1);
        assert!(equal_revisions(
            &revision("x", 1, "a"),
            &revision("y", 5, "a")
        ));
        assert!(!equal_revisions(
            &revision("x", 1, "a"),
            &revision("y", 1, "b")
        ));
    }

    #[test]
    fn pruning_keeps_the_limit_and_every_live_revision() {
        let sorted: Vec<_> = (1..=5)
            .map(|n| revision(&format!("r{n}"), n, &n.to_string()))
            .collect();
        let live = |r: &ControllerRevision| r.name_any() == "r1" || r.name_any() == "r5";
        let names = |v: Vec<&Arc<ControllerRevision>>| {
            v.into_iter().map(|r| r.name_any()).collect::<Vec<_>>()
        };
        // Three non-live revisions, keep two besides the live ones.
        assert_eq!(names(revisions_to_prune(&sorted, live, 2, false)), ["r2"]);
        // Five revisions counted, keep two: three go, live ones skipped.
        assert_eq!(
            names(revisions_to_prune(&sorted, live, 2, true)),
            ["r2", "r3", "r4"]
        );
        assert!(revisions_to_prune(&sorted, live, 10, true).is_empty());
    }

    #[test]
    fn a_pod_seen_going_twice_counts_once() {
        let e = PodExpectations::new();
        e.raise("ns/ds", 1, ["u1".to_string(), "u2".to_string()]);
        e.creation_observed("ns/ds");
        e.deletion_observed("ns/ds", "u1");
        e.deletion_observed("ns/ds", "u1");
        assert!(!e.satisfied("ns/ds"));
        e.deletion_observed("ns/ds", "u2");
        assert!(e.satisfied("ns/ds"));
    }
}
