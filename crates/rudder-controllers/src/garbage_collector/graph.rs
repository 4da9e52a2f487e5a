//! The dependency graph the garbage collector keeps: every object by uid,
//! who owns it and whom it owns. Owners known only from a reference are
//! "virtual" until seen (or proven absent).

use std::collections::{HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

pub const ORPHAN_FINALIZER: &str = "orphan";
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// How to find an object again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub identity: Identity,
    pub owners: Vec<OwnerReference>,
    pub dependents: HashSet<String>,
    /// Deleted with the Foreground policy: waits for its dependents.
    pub deleting_dependents: bool,
    pub being_deleted: bool,
    /// Known only as somebody's owner.
    pub virtual_node: bool,
}

/// What the graph wants done after a change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Objects whose owners may be gone, or owners whose dependents may be.
    pub attempt_delete: Vec<String>,
    /// Owners deleted with the Orphan policy.
    pub attempt_orphan: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Graph {
    pub nodes: HashMap<String, Node>,
}

fn has_finalizer(meta: &ObjectMeta, name: &str) -> bool {
    meta.finalizers.iter().flatten().any(|f| f == name)
}

impl Graph {
    /// An object was added or changed. `namespaced_kind` says whether an
    /// owner of the given (apiVersion, kind) lives in a namespace.
    pub fn upsert(
        &mut self,
        api_version: &str,
        kind: &str,
        meta: &ObjectMeta,
        namespaced_kind: impl Fn(&str, &str) -> bool,
    ) -> Work {
        let mut work = Work::default();
        let Some(uid) = meta.uid.clone() else {
            return work;
        };
        let owners = meta.owner_references.clone().unwrap_or_default();
        let identity = Identity {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            namespace: meta.namespace.clone().filter(|n| !n.is_empty()),
            name: meta.name.clone().unwrap_or_default(),
            uid: uid.clone(),
        };
        let old_owners = match self.nodes.get(&uid) {
            Some(n) if !n.virtual_node => n.owners.clone(),
            _ => Vec::new(),
        };
        let node = self.nodes.entry(uid.clone()).or_insert_with(|| Node {
            identity: identity.clone(),
            owners: Vec::new(),
            dependents: HashSet::new(),
            deleting_dependents: false,
            being_deleted: false,
            virtual_node: true,
        });
        node.identity = identity;
        node.virtual_node = false;
        node.owners = owners.clone();
        node.being_deleted = meta.deletion_timestamp.is_some();
        let was_deleting_dependents = node.deleting_dependents;
        node.deleting_dependents = node.being_deleted && has_finalizer(meta, FOREGROUND_FINALIZER);
        let dependents: Vec<String> = node.dependents.iter().cloned().collect();
        if node.being_deleted && has_finalizer(meta, ORPHAN_FINALIZER) {
            work.attempt_orphan.push(uid.clone());
        }
        if node.deleting_dependents {
            // Foreground: the dependents go first, then the owner drops
            // its finalizer.
            if !was_deleting_dependents {
                work.attempt_delete.extend(dependents);
            }
            work.attempt_delete.push(uid.clone());
        }

        // Owners no longer referenced forget this dependent.
        for gone in old_owners
            .iter()
            .filter(|o| !owners.iter().any(|n| n.uid == o.uid))
        {
            if let Some(owner) = self.nodes.get_mut(&gone.uid) {
                owner.dependents.remove(&uid);
                if owner.deleting_dependents {
                    work.attempt_delete.push(gone.uid.clone());
                }
            }
        }
        for owner in &owners {
            let namespace = if namespaced_kind(&owner.api_version, &owner.kind) {
                meta.namespace.clone()
            } else {
                None
            };
            let entry = self.nodes.entry(owner.uid.clone()).or_insert_with(|| {
                // Never seen: verify it exists before anything relies on it.
                work.attempt_delete.push(owner.uid.clone());
                Node {
                    identity: Identity {
                        api_version: owner.api_version.clone(),
                        kind: owner.kind.clone(),
                        namespace,
                        name: owner.name.clone(),
                        uid: owner.uid.clone(),
                    },
                    owners: Vec::new(),
                    dependents: HashSet::new(),
                    deleting_dependents: false,
                    being_deleted: false,
                    virtual_node: true,
                }
            });
            entry.dependents.insert(uid.clone());
            if entry.deleting_dependents || entry.being_deleted {
                work.attempt_delete.push(uid.clone());
            }
        }
        work
    }

    /// An object is gone: its dependents may have lost their last owner.
    pub fn remove(&mut self, uid: &str) -> Work {
        let mut work = Work::default();
        let Some(node) = self.nodes.remove(uid) else {
            return work;
        };
        for owner in &node.owners {
            if let Some(o) = self.nodes.get_mut(&owner.uid) {
                o.dependents.remove(uid);
                if o.deleting_dependents {
                    work.attempt_delete.push(owner.uid.clone());
                }
                if o.virtual_node && o.dependents.is_empty() {
                    self.nodes.remove(&owner.uid);
                }
            }
        }
        work.attempt_delete.extend(node.dependents.iter().cloned());
        work
    }

    /// Dependents that block the owner's foreground deletion.
    pub fn blocking_dependents(&self, owner_uid: &str) -> Vec<Node> {
        let Some(owner) = self.nodes.get(owner_uid) else {
            return Vec::new();
        };
        owner
            .dependents
            .iter()
            .filter_map(|d| self.nodes.get(d))
            .filter(|d| {
                d.owners
                    .iter()
                    .any(|o| o.uid == owner_uid && o.block_owner_deletion == Some(true))
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(uid: &str, owners: serde_json::Value, extra: serde_json::Value) -> ObjectMeta {
        let mut m = json!({"name": uid, "namespace": "ns", "uid": uid, "ownerReferences": owners});
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        serde_json::from_value(m).unwrap()
    }

    fn owner(uid: &str, block: bool) -> serde_json::Value {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": uid, "uid": uid, "controller": true, "blockOwnerDeletion": block})
    }

    #[test]
    fn unknown_owners_are_verified_and_deleted_owners_release_their_dependents() {
        let mut g = Graph::default();
        let work = g.upsert(
            "v1",
            "Pod",
            &meta("pod", json!([owner("rs", true)]), json!({})),
            |_, _| true,
        );
        assert_eq!(
            work.attempt_delete,
            vec!["rs".to_string()],
            "a virtual owner is checked"
        );
        assert!(g.nodes["rs"].virtual_node);
        let work = g.upsert(
            "apps/v1",
            "ReplicaSet",
            &meta("rs", json!([]), json!({})),
            |_, _| true,
        );
        assert!(work.attempt_delete.is_empty());
        assert!(!g.nodes["rs"].virtual_node);
        assert!(g.nodes["rs"].dependents.contains("pod"));
        let work = g.remove("rs");
        assert_eq!(work.attempt_delete, vec!["pod".to_string()]);
    }

    #[test]
    fn foreground_and_orphan_deletion_queue_their_work() {
        let mut g = Graph::default();
        g.upsert(
            "apps/v1",
            "ReplicaSet",
            &meta("rs", json!([]), json!({})),
            |_, _| true,
        );
        g.upsert(
            "v1",
            "Pod",
            &meta("pod", json!([owner("rs", true)]), json!({})),
            |_, _| true,
        );
        let deleting = json!({"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["foregroundDeletion"]});
        let work = g.upsert(
            "apps/v1",
            "ReplicaSet",
            &meta("rs", json!([]), deleting),
            |_, _| true,
        );
        assert!(work.attempt_delete.contains(&"pod".to_string()));
        assert!(work.attempt_delete.contains(&"rs".to_string()));
        assert_eq!(g.blocking_dependents("rs").len(), 1);
        let work = g.remove("pod");
        assert_eq!(
            work.attempt_delete,
            vec!["rs".to_string()],
            "the owner checks again"
        );

        let orphaning =
            json!({"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["orphan"]});
        let work = g.upsert(
            "apps/v1",
            "ReplicaSet",
            &meta("rs", json!([]), orphaning),
            |_, _| true,
        );
        assert_eq!(work.attempt_orphan, vec!["rs".to_string()]);
    }
}
