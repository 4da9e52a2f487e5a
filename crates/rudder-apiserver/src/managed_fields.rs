//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Every write records which manager set which fields, as FieldsV1 sets
//! (`{"f:data": {"f:owner": {}}}`; list items by key `k:{"name":"c"}`, set
//! members by value `v:"x"`). An apply claims the fields of its
//! configuration: a field another manager owns with a different value is a
//! conflict unless forced, and fields the manager applied before but left
//! out now are removed when nobody else owns them.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::error::{ApiError, FieldCause, Target};
use crate::openapi::OpenApi;
use crate::registry::ResourceInfo;

/// A set of fields: path element → the fields below it. A leaf is an
/// empty set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeMap<String, FieldSet>);

impl FieldSet {
    fn from_json(value: &Value) -> FieldSet {
        FieldSet(
            value
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| k.as_str() != ".")
                        .map(|(k, v)| (k.clone(), FieldSet::from_json(v)))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
        )
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every leaf, as a path of elements.
    fn leaves(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect_leaves(&mut Vec::new(), &mut out);
        out
    }

    fn collect_leaves(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        for (k, child) in &self.0 {
            prefix.push(k.clone());
            if child.is_empty() {
                out.push(prefix.clone());
            } else {
                child.collect_leaves(prefix, out);
            }
            prefix.pop();
        }
    }

    fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => true,
            Some((first, rest)) => self.0.get(first).is_some_and(|c| {
                if rest.is_empty() {
                    true
                } else {
                    c.contains(rest)
                }
            }),
        }
    }

    fn insert(&mut self, path: &[String]) {
        if let Some((first, rest)) = path.split_first() {
            self.0.entry(first.clone()).or_default().insert(rest);
        }
    }

    fn remove(&mut self, path: &[String]) {
        if let Some((first, rest)) = path.split_first() {
            if rest.is_empty() {
                self.0.remove(first);
            } else if let Some(child) = self.0.get_mut(first) {
                child.remove(rest);
                if child.is_empty() {
                    self.0.remove(first);
                }
            }
        }
    }
}

/// How a list is merged, from the schema.
enum ListKind {
    Map(Vec<String>),
    Set,
    Atomic,
}

/// Walks values alongside their schemas.
struct Schema<'a> {
    openapi: &'a OpenApi,
}

impl<'a> Schema<'a> {
    fn child(&self, schema: Option<&'a Value>, key: &str) -> Option<&'a Value> {
        let schema = self.openapi.resolve_schema(schema?);
        schema
            .pointer(&format!(
                "/properties/{}",
                key.replace('~', "~0").replace('/', "~1")
            ))
            .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
    }

    fn items(&self, schema: Option<&'a Value>) -> Option<&'a Value> {
        self.openapi.resolve_schema(schema?).get("items")
    }

    fn list_kind(&self, schema: Option<&Value>) -> ListKind {
        let Some(schema) = schema else {
            return ListKind::Atomic;
        };
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => ListKind::Map(
                schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| {
                        k.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Some("set") => ListKind::Set,
            _ => ListKind::Atomic,
        }
    }

    /// The fields of `value` (its leaves), as apply and update own them.
    fn fields(&self, value: &Value, schema: Option<&'a Value>) -> FieldSet {
        let mut set = FieldSet::default();
        let Some(map) = value.as_object() else {
            return set;
        };
        for (key, child) in map {
            let child_schema = self.child(schema, key);
            let element = format!("f:{key}");
            let sub = match child {
                Value::Object(m) if !m.is_empty() => self.fields(child, child_schema),
                Value::Array(items) => self.list_fields(items, child_schema),
                _ => FieldSet::default(),
            };
            set.0.insert(element, sub);
        }
        set
    }

    fn list_fields(&self, items: &[Value], schema: Option<&'a Value>) -> FieldSet {
        let mut set = FieldSet::default();
        match self.list_kind(schema) {
            ListKind::Map(keys) => {
                let item_schema = self.items(schema);
                for item in items {
                    set.0
                        .insert(item_key(item, &keys), self.fields(item, item_schema));
                }
            }
            ListKind::Set => {
                for item in items {
                    set.0.insert(format!("v:{item}"), FieldSet::default());
                }
            }
            ListKind::Atomic => {}
        }
        set
    }
}

fn item_key(item: &Value, keys: &[String]) -> String {
    let mut key = Map::new();
    for k in keys {
        if let Some(v) = item.get(k) {
            key.insert(k.clone(), v.clone());
        }
    }
    format!("k:{}", Value::Object(key))
}

/// The value at a field path, if present.
fn value_at<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(value);
    };
    let next = if let Some(field) = first.strip_prefix("f:") {
        value.get(field)?
    } else if let Some(key) = first.strip_prefix("k:") {
        let key: Value = serde_json::from_str(key).ok()?;
        let key = key.as_object()?;
        value
            .as_array()?
            .iter()
            .find(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)))?
    } else if let Some(member) = first.strip_prefix("v:") {
        let member: Value = serde_json::from_str(member).ok()?;
        value.as_array()?.iter().find(|item| **item == member)?
    } else {
        return None;
    };
    value_at(next, rest)
}

/// Removes the field at `path` from `value`.
fn remove_at(value: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if let Some(field) = first.strip_prefix("f:") {
        let Some(map) = value.as_object_mut() else {
            return;
        };
        if rest.is_empty() {
            map.remove(field);
        } else if let Some(child) = map.get_mut(field) {
            remove_at(child, rest);
        }
    } else if let Some(items) = value.as_array_mut() {
        let matches = |item: &Value| -> bool {
            if let Some(key) = first.strip_prefix("k:") {
                serde_json::from_str::<Value>(key)
                    .ok()
                    .and_then(|k| k.as_object().cloned())
                    .is_some_and(|k| k.iter().all(|(kk, v)| item.get(kk) == Some(v)))
            } else if let Some(member) = first.strip_prefix("v:") {
                serde_json::from_str::<Value>(member).ok().as_ref() == Some(item)
            } else {
                false
            }
        };
        if rest.is_empty() {
            items.retain(|item| !matches(item));
        } else if let Some(item) = items.iter_mut().find(|i| matches(i)) {
            remove_at(item, rest);
        }
    }
}

/// Merges an applied configuration into the live object: maps merge,
/// keyed lists merge by key, sets take the union, everything else is
/// replaced.
fn merge(live: &mut Value, config: &Value, schema: Option<&Value>, s: &Schema) {
    match (live, config) {
        (Value::Object(live_map), Value::Object(config_map)) => {
            for (key, value) in config_map {
                let child_schema = s.child(schema, key);
                match live_map.get_mut(key) {
                    Some(existing) if !value.is_null() => merge(existing, value, child_schema, s),
                    _ => {
                        live_map.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(live_items), Value::Array(config_items)) => match s.list_kind(schema) {
            ListKind::Map(keys) => {
                let item_schema = s.items(schema);
                for item in config_items {
                    let key = item_key(item, &keys);
                    match live_items.iter_mut().find(|l| item_key(l, &keys) == key) {
                        Some(existing) => merge(existing, item, item_schema, s),
                        None => live_items.push(item.clone()),
                    }
                }
            }
            ListKind::Set => {
                for item in config_items {
                    if !live_items.contains(item) {
                        live_items.push(item.clone());
                    }
                }
            }
            ListKind::Atomic => *live_items = config_items.clone(),
        },
        (live, config) => *live = config.clone(),
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: Option<String>,
    /// When the entry last changed; `None` for the entry being written now.
    time: Option<String>,
    fields: FieldSet,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or("").to_owned(),
                    operation: e["operation"].as_str().unwrap_or("Update").to_owned(),
                    api_version: e["apiVersion"].as_str().unwrap_or("").to_owned(),
                    subresource: e["subresource"].as_str().map(str::to_owned),
                    time: e["time"].as_str().map(str::to_owned),
                    fields: FieldSet::from_json(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn store_entries(obj: &mut Value, entries: &[Entry]) {
    let now = crate::object::now_rfc3339();
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut entry = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time.clone().unwrap_or_else(|| now.clone()),
                "fieldsType": "FieldsV1",
                "fieldsV1": e.fields.to_json(),
            });
            if let Some(sub) = &e.subresource {
                entry["subresource"] = json!(sub);
            }
            entry
        })
        .collect();
    let meta = crate::object::meta_mut(obj);
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// The part of an object whose fields are owned: no server-set metadata.
fn owned_view(obj: &Value, subresource: Option<&str>) -> Value {
    let mut view = obj.clone();
    if let Some(map) = view.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        if subresource == Some("status") {
            map.retain(|k, _| k == "status");
        }
    }
    if let Some(meta) = view.get_mut("metadata").and_then(Value::as_object_mut) {
        for server_set in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
            "generateName",
        ] {
            meta.remove(server_set);
        }
        if meta.is_empty() {
            view.as_object_mut().map(|m| m.remove("metadata"));
        }
    }
    view
}

/// The manager of a request: `fieldManager`, else the client's name from
/// its User-Agent (as Kubernetes defaults it).
pub fn manager_name(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    match field_manager {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => user_agent
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_owned(),
    }
}

/// Records an ordinary write (create, update, patch) by `manager`: it
/// owns the fields it changed; fields it removed are no one's any more.
pub fn record_update(
    openapi: &OpenApi,
    info: &ResourceInfo,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
) {
    let s = Schema { openapi };
    let schema = openapi.schema_for(&info.group, &info.version, &info.kind);
    let mut list = entries(old.unwrap_or(&Value::Null));
    let new_view = owned_view(new, subresource);
    let new_fields = s.fields(&new_view, schema);
    let (changed, removed) = match old {
        Some(old) => {
            let old_view = owned_view(old, subresource);
            let old_fields = s.fields(&old_view, schema);
            let changed: Vec<Vec<String>> = new_fields
                .leaves()
                .into_iter()
                .filter(|p| value_at(&new_view, p) != value_at(&old_view, p))
                .collect();
            let removed: Vec<Vec<String>> = old_fields
                .leaves()
                .into_iter()
                .filter(|p| !new_fields.contains(p))
                .collect();
            (changed, removed)
        }
        None => (new_fields.leaves(), Vec::new()),
    };
    if changed.is_empty() && removed.is_empty() && old.is_some() {
        store_entries(new, &list);
        return;
    }
    for entry in &mut list {
        for path in changed.iter().chain(&removed) {
            if entry.manager != manager || entry.operation != "Update" {
                entry.fields.remove(path);
            }
        }
        if entry.manager == manager && entry.operation == "Update" {
            for path in &removed {
                entry.fields.remove(path);
            }
        }
    }
    let sub = subresource.map(str::to_owned);
    let index = match list
        .iter()
        .position(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub)
    {
        Some(i) => i,
        None => {
            list.push(Entry {
                manager: manager.to_owned(),
                operation: "Update".into(),
                api_version: info.api_version(),
                subresource: sub,
                time: None,
                fields: FieldSet::default(),
            });
            list.len() - 1
        }
    };
    list[index].time = None;
    for path in &changed {
        list[index].fields.insert(path);
    }
    store_entries(new, &list);
}

/// Applies `config` for `manager` onto `live` (`None`: the object does not
/// exist yet). Returns the object to store.
pub fn apply(
    openapi: &OpenApi,
    info: &ResourceInfo,
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
) -> Result<Value, ApiError> {
    let s = Schema { openapi };
    let schema = openapi.schema_for(&info.group, &info.version, &info.kind);
    let config_view = owned_view(config, subresource);
    let applied = s.fields(&config_view, schema);
    let Some(live) = live else {
        let mut obj = config.clone();
        store_entries(
            &mut obj,
            &[Entry {
                manager: manager.to_owned(),
                operation: "Apply".into(),
                api_version: info.api_version(),
                subresource: subresource.map(str::to_owned),
                time: None,
                fields: applied,
            }],
        );
        return Ok(obj);
    };
    let mut list = entries(live);
    let live_view = owned_view(live, subresource);

    // Conflicts: fields of the configuration another manager owns with a
    // different value.
    let mut conflicts: Vec<(String, Vec<String>)> = Vec::new();
    for entry in &list {
        if entry.manager == manager && entry.operation == "Apply" {
            continue;
        }
        for path in applied.leaves() {
            if entry.fields.contains(&path)
                && value_at(&live_view, &path) != value_at(&config_view, &path)
            {
                conflicts.push((entry.manager.clone(), path));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(
            info,
            crate::object::name(live),
            &conflicts,
            &list,
        ));
    }
    for (owner, path) in &conflicts {
        for entry in list.iter_mut().filter(|e| &e.manager == owner) {
            entry.fields.remove(path);
        }
    }

    let mut result = live.clone();
    // Fields this manager applied before and leaves out now go, unless
    // someone else owns them too.
    if let Some(previous) = list
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
    {
        for path in previous.fields.leaves() {
            let shared = list.iter().any(|e| {
                !(e.manager == manager && e.operation == "Apply") && e.fields.contains(&path)
            });
            if !applied.contains(&path) && !shared {
                remove_at(&mut result, &path);
            }
        }
    }
    merge(&mut result, &strip_type_meta(config), schema, &s);

    let sub = subresource.map(str::to_owned);
    list.retain(|e| !(e.manager == manager && e.operation == "Apply" && e.subresource == sub));
    list.push(Entry {
        manager: manager.to_owned(),
        operation: "Apply".into(),
        api_version: info.api_version(),
        subresource: sub,
        time: None,
        fields: applied,
    });
    store_entries(&mut result, &list);
    Ok(result)
}

fn strip_type_meta(config: &Value) -> Value {
    let mut c = config.clone();
    if let Some(meta) = c.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
    c
}

/// Renders a field path the way Kubernetes names it in conflicts:
/// `.spec.containers[name="nginx"].image`.
fn path_text(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        if let Some(field) = element.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = element.strip_prefix("k:") {
            let parts: Vec<String> = serde_json::from_str::<Value>(key)
                .ok()
                .and_then(|k| k.as_object().cloned())
                .map(|k| k.iter().map(|(kk, v)| format!("{kk}={v}")).collect())
                .unwrap_or_default();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = element.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

fn conflict_error(
    info: &ResourceInfo,
    name: &str,
    conflicts: &[(String, Vec<String>)],
    list: &[Entry],
) -> ApiError {
    let causes: Vec<FieldCause> = conflicts
        .iter()
        .map(|(manager, path)| {
            let api_version = list
                .iter()
                .find(|e| &e.manager == manager)
                .map(|e| e.api_version.clone())
                .unwrap_or_default();
            FieldCause {
                reason: "FieldManagerConflict",
                field: path_text(path),
                message: format!("conflict with {manager:?} using {api_version}"),
            }
        })
        .collect();
    let summary: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.message, c.field))
        .collect();
    let message = if causes.len() == 1 {
        format!("Apply failed with 1 conflict: {}", summary[0])
    } else {
        format!(
            "Apply failed with {} conflicts: {}",
            causes.len(),
            summary.join("\n")
        )
    };
    ApiError::ApplyConflict(Box::new(crate::error::ApplyConflict {
        target: Target::new(info, name),
        message,
        causes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use std::collections::BTreeMap as Map2;

    fn setup() -> (
        OpenApi,
        std::sync::Arc<ResourceInfo>,
        std::sync::Arc<ResourceInfo>,
    ) {
        let registry = Registry::with_builtins();
        let openapi = OpenApi::build(&registry, &Map2::new());
        let cm = registry.get("", "v1", "configmaps").unwrap();
        let deploy = registry.get("apps", "v1", "deployments").unwrap();
        (openapi, cm, deploy)
    }

    fn cm(owner: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"owner": owner}})
    }

    #[test]
    fn apply_records_the_manager_and_conflicts_name_the_field() {
        let (openapi, info, _) = setup();
        let created = apply(&openapi, &info, None, &cm("first"), "first", false, None).unwrap();
        let managers = created["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(managers[0]["manager"], "first");
        assert_eq!(managers[0]["operation"], "Apply");
        assert_eq!(managers[0]["fieldsV1"], json!({"f:data": {"f:owner": {}}}));

        let err = apply(
            &openapi,
            &info,
            Some(&created),
            &cm("second"),
            "second",
            false,
            None,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("conflict with \"first\""), "{text}");
        assert!(text.contains(".data.owner"), "{text}");
        assert_eq!(err.code(), axum::http::StatusCode::CONFLICT);

        // The same value is shared ownership, not a conflict.
        let shared = apply(
            &openapi,
            &info,
            Some(&created),
            &cm("first"),
            "second",
            false,
            None,
        )
        .unwrap();
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );

        let forced = apply(
            &openapi,
            &info,
            Some(&created),
            &cm("second"),
            "second",
            true,
            None,
        )
        .unwrap();
        assert_eq!(forced["data"]["owner"], "second");
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(
            managers,
            vec!["second"],
            "the forced field left its old owner"
        );
    }

    #[test]
    fn fields_left_out_of_a_new_apply_are_removed() {
        let (openapi, info, _) = setup();
        let mut config = cm("first");
        config["data"]["extra"] = json!("x");
        let live = apply(&openapi, &info, None, &config, "first", false, None).unwrap();
        let next = apply(
            &openapi,
            &info,
            Some(&live),
            &cm("first"),
            "first",
            false,
            None,
        )
        .unwrap();
        assert!(next["data"].get("extra").is_none());
        assert_eq!(next["data"]["owner"], "first");
    }

    #[test]
    fn keyed_lists_merge_by_key() {
        let (openapi, _, info) = setup();
        let config = |image: &str| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                   "spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}})
        };
        let live = apply(&openapi, &info, None, &config("a"), "mgr", false, None).unwrap();
        let fields = &live["metadata"]["managedFields"][0]["fieldsV1"];
        assert!(
            fields
                .pointer("/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"web\"}/f:image")
                .is_some(),
            "{fields}"
        );
        let mut with_sidecar = live.clone();
        with_sidecar["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "s"}));
        record_update(
            &openapi,
            &info,
            Some(&live),
            &mut with_sidecar,
            "kubectl-edit",
            None,
        );
        let next = apply(
            &openapi,
            &info,
            Some(&with_sidecar),
            &config("b"),
            "mgr",
            false,
            None,
        )
        .unwrap();
        let containers = next["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 2, "the other manager's container stays");
        assert_eq!(containers[0]["image"], "b");
    }

    #[test]
    fn updates_take_ownership_of_what_they_change() {
        let (openapi, info, _) = setup();
        let live = apply(&openapi, &info, None, &cm("first"), "first", false, None).unwrap();
        let mut edited = live.clone();
        edited["data"]["owner"] = json!("edited");
        record_update(
            &openapi,
            &info,
            Some(&live),
            &mut edited,
            "kubectl-edit",
            None,
        );
        let entries = edited["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["manager"], "kubectl-edit");
        assert_eq!(
            path_text(&[
                "f:spec".into(),
                "k:{\"name\":\"c\"}".into(),
                "f:image".into()
            ]),
            ".spec[name=\"c\"].image"
        );
    }

    #[test]
    fn managers_default_from_the_user_agent() {
        assert_eq!(
            manager_name(
                None,
                Some("kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07")
            ),
            "kubectl"
        );
        assert_eq!(manager_name(Some("first"), Some("kubectl/v1")), "first");
        assert_eq!(manager_name(None, None), "unknown");
    }
}
