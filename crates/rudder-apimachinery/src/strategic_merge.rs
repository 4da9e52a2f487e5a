//! JSON merge patch (RFC 7386) and Kubernetes strategic merge patch.
//!
//! A JSON merge patch merges objects recursively, deletes fields set to
//! `null` and replaces everything else, lists included. Kubernetes' strategic
//! merge patch (`application/strategic-merge-patch+json`) refines that: some
//! lists merge instead of being replaced, either by a *merge key* (containers
//! merge by `name`) or as sets of primitives (`metadata.finalizers`), and the
//! patch may carry directives:
//!
//! | directive | where | effect |
//! |---|---|---|
//! | `$patch: replace` | in a map | the map replaces the original instead of merging |
//! | `{"$patch": "replace"}` | as a list element | the list's other elements replace the original list |
//! | `$patch: delete` | in a map | the field holding the map is deleted |
//! | `{"<key>": v, "$patch": "delete"}` | in a merge-keyed list | deletes the elements whose merge key is `v` |
//! | `$patch: merge` | in a map | the default; merge |
//! | `$retainKeys: [..]` | in a map | after merging, drop the keys of the map not listed |
//! | `$setElementOrder/<field>: [..]` | in a map | orders the merged list `<field>` |
//! | `$deleteFromPrimitiveList/<field>: [..]` | in a map | removes values from the primitive list `<field>` |
//!
//! Which lists merge, and by which key, is not in the JSON: in Kubernetes it
//! comes from the `patchStrategy`/`patchMergeKey` tags of the Go API types.
//! Here a [`PatchSchema`] carries that information, and [`builtin_schema`]
//! provides it for the built-in kinds that matter.
//!
//! References: RFC 7386, the Kubernetes task "Update API Objects in Place
//! Using kubectl patch", and the design doc
//! `contributors/devel/sig-api-machinery/strategic-merge-patch.md` in
//! kubernetes/community.
//!
//! Recursion follows the nesting of the JSON; `serde_json` caps parsing depth
//! at 128 levels, so values parsed from requests cannot exhaust the stack.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The key naming a map- or element-level directive (`replace`, `merge`, `delete`).
const PATCH_DIRECTIVE: &str = "$patch";
/// The key listing the fields a map keeps after merging.
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
/// Prefix of the key giving the order of the list named after the slash.
const SET_ELEMENT_ORDER_PREFIX: &str = "$setElementOrder/";
/// Prefix of the key listing values to remove from the primitive list named after the slash.
const DELETE_FROM_PRIMITIVE_LIST_PREFIX: &str = "$deleteFromPrimitiveList/";

/// Applies an RFC 7386 JSON merge patch to `target` in place.
///
/// Objects in the patch merge recursively into the target (replacing a target
/// that is not an object), `null` members delete the field, and every other
/// value — strings, numbers, booleans and lists — replaces the target's value.
pub fn json_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_fields) = target else {
        return;
    };
    for (field, patch_value) in patch_fields {
        if patch_value.is_null() {
            target_fields.remove(field);
        } else {
            json_merge_patch(
                target_fields.entry(field.clone()).or_insert(Value::Null),
                patch_value,
            );
        }
    }
}

/// How a list field is patched: the `patchStrategy`/`patchMergeKey` tags of a
/// Kubernetes API field, for lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListStrategy {
    /// For lists of objects with [`ListPatchKind::Merge`]: the field whose
    /// value identifies an element (`name` for containers). `None` for lists
    /// of primitives, which merge as ordered sets.
    pub merge_key: Option<String>,
    /// Whether the list merges or is replaced wholesale.
    pub kind: ListPatchKind,
    /// The field's `patchStrategy` includes `retainKeys` (e.g. `volumes`).
    ///
    /// Informational for applying patches: like the Kubernetes API server,
    /// [`strategic_merge_patch`] honours `$retainKeys` wherever it appears.
    /// The flag records where a patch *generator* (`kubectl apply`) should
    /// emit it.
    pub retain_keys: bool,
}

/// Whether a list merges with the original or replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListPatchKind {
    /// Objects merge by [`ListStrategy::merge_key`]; primitives form a set
    /// union that keeps the original order and appends new values.
    Merge,
    /// The patch's list replaces the original (Kubernetes' `atomic` lists,
    /// and the behaviour of every list without a strategy).
    Replace,
}

impl ListStrategy {
    /// A list of objects merged by the value of `merge_key`.
    pub fn merge_by_key(merge_key: &str) -> Self {
        Self {
            merge_key: Some(merge_key.to_owned()),
            kind: ListPatchKind::Merge,
            retain_keys: false,
        }
    }

    /// A list of primitives merged as an ordered set (e.g. finalizers).
    pub fn merge_primitives() -> Self {
        Self {
            merge_key: None,
            kind: ListPatchKind::Merge,
            retain_keys: false,
        }
    }

    /// A list that the patch replaces wholesale.
    pub fn atomic() -> Self {
        Self {
            merge_key: None,
            kind: ListPatchKind::Replace,
            retain_keys: false,
        }
    }

    /// Marks the list's strategy as also including `retainKeys`.
    pub fn with_retain_keys(mut self) -> Self {
        self.retain_keys = true;
        self
    }

    /// The merge key, when this strategy merges a list of objects by key.
    fn merging_key(&self) -> Option<&str> {
        match self.kind {
            ListPatchKind::Merge => self.merge_key.as_deref(),
            ListPatchKind::Replace => None,
        }
    }
}

/// For one kind, the patch strategy of its list fields, keyed by the path of
/// field names leading to the list with list indices left out — e.g.
/// `spec.template.spec.containers` or `spec.template.spec.containers.ports`
/// (the ports of every container).
///
/// Lists without an entry are replaced wholesale; maps always merge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchSchema {
    /// Keyed by path segments rather than a dotted string so that map keys
    /// containing dots (annotation names) can never alias a schema path.
    lists: BTreeMap<Vec<String>, ListStrategy>,
}

impl PatchSchema {
    /// An empty schema: every list is replaced wholesale.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the strategy of the list at the dotted `path`, replacing any
    /// earlier one.
    pub fn insert(&mut self, path: &str, strategy: ListStrategy) {
        self.lists.insert(split_path(path), strategy);
    }

    /// Builder form of [`PatchSchema::insert`].
    pub fn with(mut self, path: &str, strategy: ListStrategy) -> Self {
        self.insert(path, strategy);
        self
    }

    /// The strategy of the list at the dotted `path`, if it has one.
    pub fn strategy(&self, path: &str) -> Option<&ListStrategy> {
        self.lists.get(&split_path(path))
    }

    /// Whether the schema has no list strategies at all.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// The number of list fields with a strategy.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// Iterates over `(dotted path, strategy)` pairs in path order.
    pub fn iter(&self) -> impl Iterator<Item = (String, &ListStrategy)> {
        self.lists
            .iter()
            .map(|(segments, strategy)| (segments.join("."), strategy))
    }

    fn strategy_at(&self, path: &[String]) -> Option<&ListStrategy> {
        self.lists.get(path)
    }
}

fn split_path(path: &str) -> Vec<String> {
    path.split('.')
        .filter(|segment| !segment.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Why a strategic merge patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The target or the patch is not a JSON object.
    #[error("the {which} of a strategic merge patch must be a JSON object")]
    NotAnObject {
        /// `"target"` or `"patch"`.
        which: &'static str,
    },
    /// The patch deletes the object itself (`$patch: delete` at the top).
    #[error("a strategic merge patch cannot delete the whole object with `$patch: delete`")]
    DeletesWholeObject,
    /// A `$`-prefixed key, or a `$patch` value, that is not a known directive.
    #[error("unknown strategic merge patch directive `{directive}` at `{path}`")]
    UnknownDirective {
        /// Dotted path of the map or list holding the directive.
        path: String,
        /// The offending key, or `$patch: <value>`.
        directive: String,
    },
    /// A known directive whose value or placement is invalid.
    #[error("invalid `{directive}` directive at `{path}`: {reason}")]
    MalformedDirective {
        /// Dotted path of the map or list holding the directive.
        path: String,
        /// The directive key.
        directive: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An element of a merge-keyed list in the patch lacks the merge key.
    #[error("an element of the list `{path}` lacks its merge key `{merge_key}`")]
    MissingMergeKey {
        /// Dotted path of the list.
        path: String,
        /// The merge key the element should carry.
        merge_key: String,
    },
    /// An element of a list in the patch has the wrong shape.
    #[error("invalid element in the list `{path}`: {reason}")]
    InvalidListElement {
        /// Dotted path of the list.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Applies a strategic merge patch to `target` and returns the result.
///
/// Maps merge recursively and `null` deletes a field. Lists follow `schema`:
/// merge-keyed lists merge element by element (new elements are appended),
/// primitive merge lists form an order-preserving union, and all other lists
/// are replaced by the patch's. Directives (`$patch`, `$retainKeys`,
/// `$setElementOrder/…`, `$deleteFromPrimitiveList/…`) are applied and never
/// appear in the result; unknown directives are errors.
pub fn strategic_merge_patch(
    target: &Value,
    patch: &Value,
    schema: &PatchSchema,
) -> Result<Value, PatchError> {
    let Value::Object(target_fields) = target else {
        return Err(PatchError::NotAnObject { which: "target" });
    };
    let Value::Object(patch_fields) = patch else {
        return Err(PatchError::NotAnObject { which: "patch" });
    };
    let merger = Merger { schema };
    let mut path = Vec::new();
    match merger.merge_map(Some(target_fields), patch_fields, &mut path)? {
        Some(merged) => Ok(Value::Object(merged)),
        None => Err(PatchError::DeletesWholeObject),
    }
}

/// The value of `$patch` in a map or list element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchDirective {
    Merge,
    Replace,
    Delete,
}

/// The directives found in one map of the patch.
struct MapDirectives<'p> {
    patch: PatchDirective,
    retain_keys: Option<Vec<&'p str>>,
    /// `(list field, order)` from `$setElementOrder/<field>`.
    element_orders: Vec<(&'p str, &'p [Value])>,
    /// `(list field, values)` from `$deleteFromPrimitiveList/<field>`.
    primitive_deletions: Vec<(&'p str, &'p [Value])>,
}

struct Merger<'s> {
    schema: &'s PatchSchema,
}

impl Merger<'_> {
    /// Merges `patch` into `original` (absent when the field is new or was
    /// not a map). `None` means the map is deleted.
    fn merge_map(
        &self,
        original: Option<&Map<String, Value>>,
        patch: &Map<String, Value>,
        path: &mut Vec<String>,
    ) -> Result<Option<Map<String, Value>>, PatchError> {
        let directives = parse_map_directives(patch, path)?;
        let mut merged = match (directives.patch, original) {
            (PatchDirective::Delete, _) => return Ok(None),
            (PatchDirective::Replace, _) | (PatchDirective::Merge, None) => Map::new(),
            (PatchDirective::Merge, Some(original)) => original.clone(),
        };

        // Deletions apply to the original values, so a value the same patch
        // adds back to the list survives.
        for (field, doomed) in &directives.primitive_deletions {
            if let Some(Value::Array(values)) = merged.get_mut(*field) {
                values.retain(|value| !doomed.contains(value));
            }
        }

        for (field, patch_value) in patch {
            if field.starts_with('$') {
                continue;
            }
            if patch_value.is_null() {
                merged.remove(field);
                continue;
            }
            path.push(field.clone());
            let merged_value = self.merge_value(merged.get(field), patch_value, path);
            path.pop();
            match merged_value? {
                Some(value) => merged.insert(field.clone(), value),
                None => merged.remove(field),
            };
        }

        for (field, order) in &directives.element_orders {
            path.push((*field).to_owned());
            let reordered = self.apply_element_order(merged.get_mut(*field), order, path);
            path.pop();
            reordered?;
        }

        if let Some(retained) = &directives.retain_keys {
            merged.retain(|field, _| retained.contains(&field.as_str()));
        }
        Ok(Some(merged))
    }

    /// Merges one patch value into the original value of the same field;
    /// `None` means the field is deleted.
    fn merge_value(
        &self,
        original: Option<&Value>,
        patch: &Value,
        path: &mut Vec<String>,
    ) -> Result<Option<Value>, PatchError> {
        match patch {
            Value::Null => Ok(None),
            Value::Object(patch_fields) => {
                let original_fields = original.and_then(Value::as_object);
                Ok(self
                    .merge_map(original_fields, patch_fields, path)?
                    .map(Value::Object))
            }
            Value::Array(patch_elements) => {
                let original_elements = original.and_then(Value::as_array);
                Ok(Some(Value::Array(self.merge_list(
                    original_elements,
                    patch_elements,
                    path,
                )?)))
            }
            scalar => Ok(Some(scalar.clone())),
        }
    }

    fn merge_list(
        &self,
        original: Option<&Vec<Value>>,
        patch: &[Value],
        path: &mut Vec<String>,
    ) -> Result<Vec<Value>, PatchError> {
        let mut replaces_list = false;
        for element in patch {
            if element_directive(element, path)? == Some(PatchDirective::Replace) {
                replaces_list = true;
            }
        }
        let strategy = self.schema.strategy_at(path);
        let merges = strategy.is_some_and(|strategy| strategy.kind == ListPatchKind::Merge);
        if replaces_list || !merges {
            return self.replacement_list(patch, path);
        }
        match strategy.and_then(ListStrategy::merging_key) {
            Some(merge_key) => self.merge_keyed_list(original, patch, merge_key, path),
            None => merge_primitive_list(original, patch, path),
        }
    }

    /// The list a patch list stands for when it replaces the original:
    /// its elements minus directive elements (which Kubernetes prunes too),
    /// with directives and `null` fields inside object elements resolved.
    fn replacement_list(
        &self,
        patch: &[Value],
        path: &mut Vec<String>,
    ) -> Result<Vec<Value>, PatchError> {
        let mut replacement = Vec::with_capacity(patch.len());
        for element in patch {
            if element_directive(element, path)?.is_some() {
                continue;
            }
            match element {
                Value::Object(fields) => {
                    if let Some(resolved) = self.merge_map(None, fields, path)? {
                        replacement.push(Value::Object(resolved));
                    }
                }
                other => replacement.push(other.clone()),
            }
        }
        Ok(replacement)
    }

    fn merge_keyed_list(
        &self,
        original: Option<&Vec<Value>>,
        patch: &[Value],
        merge_key: &str,
        path: &mut Vec<String>,
    ) -> Result<Vec<Value>, PatchError> {
        let mut merged = original.cloned().unwrap_or_default();
        for element in patch {
            let Value::Object(fields) = element else {
                return Err(PatchError::InvalidListElement {
                    path: display_path(path),
                    reason: format!(
                        "the list merges by `{merge_key}`, so each element must be an object, found {element}"
                    ),
                });
            };
            let key_value = match fields.get(merge_key) {
                Some(value) if !value.is_null() => value,
                _ => {
                    return Err(PatchError::MissingMergeKey {
                        path: display_path(path),
                        merge_key: merge_key.to_owned(),
                    })
                }
            };
            let has_key = |candidate: &Value| candidate.get(merge_key) == Some(key_value);

            if element_directive(element, path)? == Some(PatchDirective::Delete) {
                merged.retain(|candidate| !has_key(candidate));
                continue;
            }
            match merged.iter().position(has_key) {
                Some(position) => {
                    let existing = merged[position].as_object();
                    match self.merge_map(existing, fields, path)? {
                        Some(resolved) => merged[position] = Value::Object(resolved),
                        None => {
                            merged.remove(position);
                        }
                    }
                }
                None => {
                    if let Some(resolved) = self.merge_map(None, fields, path)? {
                        merged.push(Value::Object(resolved));
                    }
                }
            }
        }
        Ok(merged)
    }

    /// Orders the list in `list` (the merged value of the field the
    /// `$setElementOrder/<field>` directive names): the elements the order
    /// mentions come first, in that order, followed by the rest in their
    /// existing relative order.
    fn apply_element_order(
        &self,
        list: Option<&mut Value>,
        order: &[Value],
        path: &[String],
    ) -> Result<(), PatchError> {
        let merge_key = self
            .schema
            .strategy_at(path)
            .and_then(ListStrategy::merging_key);
        let mut identities = Vec::with_capacity(order.len());
        for entry in order {
            let identity = match merge_key {
                Some(merge_key) => entry
                    .get(merge_key)
                    .filter(|value| !value.is_null())
                    .ok_or_else(|| PatchError::MalformedDirective {
                        path: display_path(&path[..path.len().saturating_sub(1)]),
                        directive: format!("{SET_ELEMENT_ORDER_PREFIX}{}", last_segment(path)),
                        reason: format!(
                            "each entry must be an object carrying the merge key `{merge_key}`, found {entry}"
                        ),
                    })?,
                None => entry,
            };
            identities.push(identity);
        }

        let Some(Value::Array(elements)) = list else {
            return Ok(());
        };
        let mut unplaced: Vec<Option<Value>> = elements.drain(..).map(Some).collect();
        for identity in identities {
            for slot in unplaced.iter_mut() {
                let matches = slot
                    .as_ref()
                    .and_then(|element| element_identity(element, merge_key))
                    .is_some_and(|candidate| candidate == identity);
                if matches {
                    if let Some(element) = slot.take() {
                        elements.push(element);
                    }
                }
            }
        }
        elements.extend(unplaced.into_iter().flatten());
        Ok(())
    }
}

/// What `$setElementOrder` matches an element by: its merge key's value, or
/// the element itself in a list of primitives.
fn element_identity<'v>(element: &'v Value, merge_key: Option<&str>) -> Option<&'v Value> {
    match merge_key {
        Some(merge_key) => element.get(merge_key),
        None => Some(element),
    }
}

/// Set union of a primitive merge list: original values first (in their
/// order), then the patch's values not already present.
fn merge_primitive_list(
    original: Option<&Vec<Value>>,
    patch: &[Value],
    path: &[String],
) -> Result<Vec<Value>, PatchError> {
    let mut merged = original.cloned().unwrap_or_default();
    for element in patch {
        if let Some(directive) = element_directive(element, path)? {
            // Replace markers were handled by the caller; anything else has
            // no meaning in a list of primitives.
            return Err(PatchError::MalformedDirective {
                path: display_path(path),
                directive: PATCH_DIRECTIVE.to_owned(),
                reason: format!(
                    "`{}` cannot appear in a list of primitives; use `{DELETE_FROM_PRIMITIVE_LIST_PREFIX}{}` to remove values",
                    directive_name(directive),
                    last_segment(path)
                ),
            });
        }
        if !merged.contains(element) {
            merged.push(element.clone());
        }
    }
    Ok(merged)
}

/// Reads and validates the directives of one patch map.
fn parse_map_directives<'p>(
    patch: &'p Map<String, Value>,
    path: &[String],
) -> Result<MapDirectives<'p>, PatchError> {
    let mut directives = MapDirectives {
        patch: PatchDirective::Merge,
        retain_keys: None,
        element_orders: Vec::new(),
        primitive_deletions: Vec::new(),
    };
    for (key, value) in patch {
        if !key.starts_with('$') {
            continue;
        }
        if key == PATCH_DIRECTIVE {
            directives.patch = parse_patch_directive(value, path)?;
        } else if key == RETAIN_KEYS_DIRECTIVE {
            directives.retain_keys = Some(parse_retain_keys(value, path)?);
        } else if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER_PREFIX) {
            directives
                .element_orders
                .push((field, list_directive_value(key, field, value, path)?));
        } else if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST_PREFIX) {
            directives
                .primitive_deletions
                .push((field, list_directive_value(key, field, value, path)?));
        } else {
            return Err(PatchError::UnknownDirective {
                path: display_path(path),
                directive: key.clone(),
            });
        }
    }

    if let Some(retained) = &directives.retain_keys {
        // Kubernetes rejects a patch that sets a field its own `$retainKeys`
        // would clear: the two contradict each other.
        let unlisted = patch.iter().find(|(field, value)| {
            !field.starts_with('$') && !value.is_null() && !retained.contains(&field.as_str())
        });
        if let Some((field, _)) = unlisted {
            return Err(PatchError::MalformedDirective {
                path: display_path(path),
                directive: RETAIN_KEYS_DIRECTIVE.to_owned(),
                reason: format!("the patch sets `{field}`, which the directive does not list"),
            });
        }
    }
    Ok(directives)
}

fn parse_patch_directive(value: &Value, path: &[String]) -> Result<PatchDirective, PatchError> {
    match value.as_str() {
        Some("merge") => Ok(PatchDirective::Merge),
        Some("replace") => Ok(PatchDirective::Replace),
        Some("delete") => Ok(PatchDirective::Delete),
        Some(other) => Err(PatchError::UnknownDirective {
            path: display_path(path),
            directive: format!("{PATCH_DIRECTIVE}: {other}"),
        }),
        None => Err(PatchError::MalformedDirective {
            path: display_path(path),
            directive: PATCH_DIRECTIVE.to_owned(),
            reason: format!("expected \"replace\", \"merge\" or \"delete\", found {value}"),
        }),
    }
}

fn parse_retain_keys<'p>(value: &'p Value, path: &[String]) -> Result<Vec<&'p str>, PatchError> {
    let malformed = || PatchError::MalformedDirective {
        path: display_path(path),
        directive: RETAIN_KEYS_DIRECTIVE.to_owned(),
        reason: format!("expected a list of field names, found {value}"),
    };
    value
        .as_array()
        .ok_or_else(malformed)?
        .iter()
        .map(|field| field.as_str().ok_or_else(malformed))
        .collect()
}

/// The list value of a `$setElementOrder/<field>` or
/// `$deleteFromPrimitiveList/<field>` directive.
fn list_directive_value<'p>(
    key: &str,
    field: &str,
    value: &'p Value,
    path: &[String],
) -> Result<&'p [Value], PatchError> {
    let malformed = |reason: String| PatchError::MalformedDirective {
        path: display_path(path),
        directive: key.to_owned(),
        reason,
    };
    if field.is_empty() {
        return Err(malformed(
            "the directive must name a list field after the `/`".to_owned(),
        ));
    }
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| malformed(format!("expected a list, found {value}")))
}

/// The `$patch` directive of a list element, if the element carries one.
fn element_directive(
    element: &Value,
    path: &[String],
) -> Result<Option<PatchDirective>, PatchError> {
    match element.get(PATCH_DIRECTIVE) {
        Some(value) => parse_patch_directive(value, path).map(Some),
        None => Ok(None),
    }
}

fn directive_name(directive: PatchDirective) -> &'static str {
    match directive {
        PatchDirective::Merge => "$patch: merge",
        PatchDirective::Replace => "$patch: replace",
        PatchDirective::Delete => "$patch: delete",
    }
}

fn display_path(path: &[String]) -> String {
    if path.is_empty() {
        "<root>".to_owned()
    } else {
        path.join(".")
    }
}

fn last_segment(path: &[String]) -> &str {
    path.last().map(String::as_str).unwrap_or_default()
}

/// API groups served by Kubernetes itself. Every kind in them embeds
/// `ObjectMeta`, so even kinds without list strategies of their own get the
/// `metadata` ones.
const BUILTIN_GROUPS: &[&str] = &[
    "",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "resource.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
];

/// The list strategies of the Kubernetes built-in kind `kind` in API group
/// `group` (`""` or `"core"` for the core group).
///
/// Every entry mirrors the `patchStrategy`/`patchMergeKey` struct tags of the
/// Kubernetes Go API types (`k8s.io/api/core/v1`, `apps/v1`, `batch/v1` and
/// `ObjectMeta` in `k8s.io/apimachinery/pkg/apis/meta/v1`), also published as
/// `x-kubernetes-patch-strategy`/`x-kubernetes-patch-merge-key` in the
/// OpenAPI document:
///
/// - `ObjectMeta` (at `metadata`, and at each pod template's `metadata`):
///   `finalizers` (`merge`, a set of strings), `ownerReferences` (merge key `uid`).
/// - `PodSpec` (Pod `spec`; `spec.template.spec` in Deployment, ReplicaSet,
///   StatefulSet, DaemonSet, Job and ReplicationController; `template.spec` in
///   PodTemplate; `spec.jobTemplate.spec.template.spec` in CronJob):
///   `containers`, `initContainers`, `ephemeralContainers` (`name`), and in
///   each of them `ports` (`containerPort`), `env` (`name`), `volumeMounts`
///   (`mountPath`), `volumeDevices` (`devicePath`); `volumes` (`name`,
///   `merge,retainKeys`), `imagePullSecrets` (`name`), `hostAliases` (`ip`),
///   `topologySpreadConstraints` (`topologyKey`), `schedulingGates` (`name`),
///   `resourceClaims` (`name`, `merge,retainKeys`). `tolerations` has no
///   patch strategy (atomic) and is recorded as such.
/// - PodStatus: `conditions` (`type`), `podIPs` and `hostIPs` (`ip`).
/// - Status `conditions` (`type`) of Deployment, ReplicaSet, StatefulSet,
///   DaemonSet, Job, ReplicationController, Service, Node, Namespace and
///   PersistentVolumeClaim.
/// - Service `spec.ports` (`port`); ServiceAccount `secrets` (`name`).
/// - Node: `spec.taints` has no patch strategy (atomic, recorded as such),
///   `spec.podCIDRs` is a `merge` set, `status.addresses` merges by `type`.
///
/// Kinds outside the built-in API groups (custom resources) get an empty
/// schema: every list is replaced, as in a JSON merge patch. Built-in kinds
/// not listed above get only the `ObjectMeta` strategies.
pub fn builtin_schema(group: &str, kind: &str) -> PatchSchema {
    let group = if group == "core" { "" } else { group };
    let mut schema = PatchSchema::new();
    if !BUILTIN_GROUPS.contains(&group) {
        return schema;
    }
    add_object_meta(&mut schema, "metadata");

    match (group, kind) {
        ("", "Pod") => {
            add_pod_spec(&mut schema, "spec");
            add_pod_status(&mut schema, "status");
        }
        ("", "PodTemplate") => add_pod_template(&mut schema, "template"),
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job") => {
            add_pod_template(&mut schema, "spec.template");
            add_conditions(&mut schema, "status");
        }
        ("batch", "CronJob") => {
            add_object_meta(&mut schema, "spec.jobTemplate.metadata");
            add_pod_template(&mut schema, "spec.jobTemplate.spec.template");
        }
        ("", "Service") => {
            schema.insert("spec.ports", ListStrategy::merge_by_key("port"));
            add_conditions(&mut schema, "status");
        }
        ("", "Node") => {
            schema.insert("spec.taints", ListStrategy::atomic());
            schema.insert("spec.podCIDRs", ListStrategy::merge_primitives());
            schema.insert("status.addresses", ListStrategy::merge_by_key("type"));
            add_conditions(&mut schema, "status");
        }
        ("", "Namespace" | "PersistentVolumeClaim") => add_conditions(&mut schema, "status"),
        ("", "ServiceAccount") => {
            schema.insert("secrets", ListStrategy::merge_by_key("name"));
        }
        _ => {}
    }
    schema
}

/// `ObjectMeta` at `prefix`.
fn add_object_meta(schema: &mut PatchSchema, prefix: &str) {
    schema.insert(
        &format!("{prefix}.finalizers"),
        ListStrategy::merge_primitives(),
    );
    schema.insert(
        &format!("{prefix}.ownerReferences"),
        ListStrategy::merge_by_key("uid"),
    );
}

/// A `PodTemplateSpec` (metadata and pod spec) at `prefix`.
fn add_pod_template(schema: &mut PatchSchema, prefix: &str) {
    add_object_meta(schema, &format!("{prefix}.metadata"));
    add_pod_spec(schema, &format!("{prefix}.spec"));
}

/// A `PodSpec` at `prefix`.
fn add_pod_spec(schema: &mut PatchSchema, prefix: &str) {
    for containers in ["containers", "initContainers", "ephemeralContainers"] {
        let containers = format!("{prefix}.{containers}");
        schema.insert(&containers, ListStrategy::merge_by_key("name"));
        for (field, merge_key) in [
            ("ports", "containerPort"),
            ("env", "name"),
            ("volumeMounts", "mountPath"),
            ("volumeDevices", "devicePath"),
        ] {
            schema.insert(
                &format!("{containers}.{field}"),
                ListStrategy::merge_by_key(merge_key),
            );
        }
    }
    for (field, strategy) in [
        (
            "volumes",
            ListStrategy::merge_by_key("name").with_retain_keys(),
        ),
        ("imagePullSecrets", ListStrategy::merge_by_key("name")),
        ("hostAliases", ListStrategy::merge_by_key("ip")),
        (
            "topologySpreadConstraints",
            ListStrategy::merge_by_key("topologyKey"),
        ),
        ("schedulingGates", ListStrategy::merge_by_key("name")),
        (
            "resourceClaims",
            ListStrategy::merge_by_key("name").with_retain_keys(),
        ),
        ("tolerations", ListStrategy::atomic()),
    ] {
        schema.insert(&format!("{prefix}.{field}"), strategy);
    }
}

/// A `PodStatus` at `prefix`.
fn add_pod_status(schema: &mut PatchSchema, prefix: &str) {
    add_conditions(schema, prefix);
    schema.insert(
        &format!("{prefix}.podIPs"),
        ListStrategy::merge_by_key("ip"),
    );
    schema.insert(
        &format!("{prefix}.hostIPs"),
        ListStrategy::merge_by_key("ip"),
    );
}

/// The `conditions` of the status at `status_prefix`, merged by `type`.
fn add_conditions(schema: &mut PatchSchema, status_prefix: &str) {
    schema.insert(
        &format!("{status_prefix}.conditions"),
        ListStrategy::merge_by_key("type"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_schema() -> PatchSchema {
        builtin_schema("", "Pod")
    }

    fn two_container_pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
            "spec": {
                "containers": [
                    {
                        "name": "nginx",
                        "image": "nginx:1.0",
                        "env": [{"name": "MODE", "value": "prod"}],
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}
                    },
                    {"name": "sidecar", "image": "sidecar:1.0"}
                ],
                "tolerations": [{"key": "a", "operator": "Exists"}]
            }
        })
    }

    fn apply(target: &Value, patch: Value) -> Value {
        match strategic_merge_patch(target, &patch, &pod_schema()) {
            Ok(merged) => merged,
            Err(error) => panic!("patch {patch} failed: {error}"),
        }
    }

    fn apply_err(target: &Value, patch: Value) -> PatchError {
        match strategic_merge_patch(target, &patch, &pod_schema()) {
            Ok(merged) => panic!("patch {patch} unexpectedly succeeded: {merged}"),
            Err(error) => error,
        }
    }

    // RFC 7386, appendix A.
    #[test]
    fn json_merge_patch_follows_rfc_7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut target, patch, expected) in cases {
            json_merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }

    #[test]
    fn changing_one_container_image_keeps_the_other_container() {
        let merged = apply(
            &two_container_pod(),
            json!({"spec": {"containers": [{"name": "nginx", "image": "nginx:2.0"}]}}),
        );
        let containers = &merged["spec"]["containers"];
        assert_eq!(containers.as_array().map(Vec::len), Some(2));
        assert_eq!(containers[0]["name"], "nginx");
        assert_eq!(containers[0]["image"], "nginx:2.0");
        // Untouched fields of the patched container survive the merge.
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "MODE", "value": "prod"}])
        );
        assert_eq!(
            containers[1],
            json!({"name": "sidecar", "image": "sidecar:1.0"})
        );
    }

    #[test]
    fn adding_a_container_appends_it() {
        let merged = apply(
            &two_container_pod(),
            json!({"spec": {"containers": [{"name": "log-tailer", "image": "tail:1"}]}}),
        );
        let names: Vec<&Value> = merged["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|container| &container["name"])
            .collect();
        assert_eq!(
            names,
            [&json!("nginx"), &json!("sidecar"), &json!("log-tailer")]
        );
    }

    #[test]
    fn adding_an_env_var_merges_into_the_container_env() {
        let merged = apply(
            &two_container_pod(),
            json!({"spec": {"containers": [
                {"name": "nginx", "env": [{"name": "DEBUG", "value": "1"}]}
            ]}}),
        );
        assert_eq!(
            merged["spec"]["containers"][0]["env"],
            json!([{"name": "MODE", "value": "prod"}, {"name": "DEBUG", "value": "1"}])
        );
        assert_eq!(merged["spec"]["containers"][0]["image"], "nginx:1.0");
    }

    #[test]
    fn changing_an_env_var_value_merges_by_name() {
        let merged = apply(
            &two_container_pod(),
            json!({"spec": {"containers": [
                {"name": "nginx", "env": [{"name": "MODE", "value": "debug"}]}
            ]}}),
        );
        assert_eq!(
            merged["spec"]["containers"][0]["env"],
            json!([{"name": "MODE", "value": "debug"}])
        );
    }

    #[test]
    fn ports_merge_by_container_port() {
        let merged = apply(
            &two_container_pod(),
            json!({"spec": {"containers": [{"name": "nginx", "ports": [
                {"containerPort": 80, "name": "http"},
                {"containerPort": 443, "name": "https"}
            ]}]}}),
        );
        assert_eq!(
            merged["spec"]["containers"][0]["ports"],
            json!([
                {"containerPort": 80, "protocol": "TCP", "name": "http"},
                {"containerPort": 443, "name": "https"}
            ])
        );
    }

    #[test]
    fn patch_delete_in_a_list_element_removes_the_container() {
        let merged = apply(
            &two_container_pod(),
            json!({"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}),
        );
        assert_eq!(
            merged["spec"]["containers"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(merged["spec"]["containers"][0]["name"], "nginx");
    }

    #[test]
    fn patch_delete_without_merge_key_is_an_error() {
        let error = apply_err(
            &two_container_pod(),
            json!({"spec": {"containers": [{"$patch": "delete"}]}}),
        );
        assert_eq!(
            error,
            PatchError::MissingMergeKey {
                path: "spec.containers".to_owned(),
                merge_key: "name".to_owned(),
            }
        );
    }

    #[test]
    fn patch_replace_element_replaces_the_whole_list() {
        let merged = apply(
            &two_container_pod(),
            json!({"spec": {"containers": [
                {"name": "only", "image": "only:1"},
                {"$patch": "replace"}
            ]}}),
        );
        assert_eq!(
            merged["spec"]["containers"],
            json!([{"name": "only", "image": "only:1"}])
        );
    }

    #[test]
    fn patch_replace_in_a_map_replaces_the_map() {
        let merged = apply(
            &two_container_pod(),
            json!({"metadata": {"labels": {"$patch": "replace", "app": "api"}}}),
        );
        assert_eq!(merged["metadata"]["labels"], json!({"app": "api"}));
        assert_eq!(merged["metadata"]["name"], "web");
    }

    #[test]
    fn patch_delete_in_a_map_deletes_the_field() {
        let merged = apply(
            &two_container_pod(),
            json!({"spec": {"containers": [
                {"name": "nginx", "resources": {"$patch": "delete"}}
            ]}}),
        );
        assert_eq!(merged["spec"]["containers"][0].get("resources"), None);
        assert_eq!(merged["spec"]["containers"][0]["image"], "nginx:1.0");
    }

    #[test]
    fn patch_delete_at_the_top_is_an_error() {
        let error = apply_err(&two_container_pod(), json!({"$patch": "delete"}));
        assert_eq!(error, PatchError::DeletesWholeObject);
    }

    #[test]
    fn retain_keys_drops_unlisted_fields_of_a_union() {
        let pod = json!({"spec": {"volumes": [
            {"name": "data", "emptyDir": {"medium": "Memory"}},
            {"name": "other", "emptyDir": {}}
        ]}});
        let merged = apply(
            &pod,
            json!({"spec": {"volumes": [{
                "name": "data",
                "$retainKeys": ["name", "configMap"],
                "configMap": {"name": "settings"}
            }]}}),
        );
        assert_eq!(
            merged["spec"]["volumes"],
            json!([
                {"name": "data", "configMap": {"name": "settings"}},
                {"name": "other", "emptyDir": {}}
            ])
        );
    }

    #[test]
    fn retain_keys_rejects_a_patch_setting_an_unlisted_field() {
        let error = apply_err(
            &json!({"spec": {"strategy": {"type": "Recreate"}}}),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
        );
        assert!(
            matches!(&error, PatchError::MalformedDirective { directive, .. } if directive == "$retainKeys"),
            "{error}"
        );
    }

    #[test]
    fn retain_keys_must_be_a_list_of_strings() {
        let error = apply_err(
            &two_container_pod(),
            json!({"metadata": {"$retainKeys": "name"}}),
        );
        assert!(
            matches!(error, PatchError::MalformedDirective { .. }),
            "{error}"
        );
    }

    #[test]
    fn set_element_order_reorders_a_keyed_list() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a"},
            {"name": "b", "image": "b"},
            {"name": "c", "image": "c"},
            {"name": "d", "image": "d"}
        ]}});
        let merged = apply(
            &pod,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                "containers": [{"name": "a", "image": "a2"}]
            }}),
        );
        // Mentioned elements first in the given order, the rest after in
        // their existing relative order.
        assert_eq!(
            merged["spec"]["containers"],
            json!([
                {"name": "c", "image": "c"},
                {"name": "a", "image": "a2"},
                {"name": "b", "image": "b"},
                {"name": "d", "image": "d"}
            ])
        );
    }

    #[test]
    fn set_element_order_reorders_a_primitive_list() {
        let pod = json!({"metadata": {"finalizers": ["a", "b", "c"]}});
        let merged = apply(
            &pod,
            json!({"metadata": {"$setElementOrder/finalizers": ["b", "c", "a"]}}),
        );
        assert_eq!(merged["metadata"]["finalizers"], json!(["b", "c", "a"]));
    }

    #[test]
    fn set_element_order_must_be_a_list() {
        let error = apply_err(
            &two_container_pod(),
            json!({"spec": {"$setElementOrder/containers": {"name": "a"}}}),
        );
        assert_eq!(
            error,
            PatchError::MalformedDirective {
                path: "spec".to_owned(),
                directive: "$setElementOrder/containers".to_owned(),
                reason: "expected a list, found {\"name\":\"a\"}".to_owned(),
            }
        );
    }

    #[test]
    fn set_element_order_entries_need_the_merge_key() {
        let error = apply_err(
            &two_container_pod(),
            json!({"spec": {"$setElementOrder/containers": ["sidecar", "nginx"]}}),
        );
        assert!(
            matches!(&error, PatchError::MalformedDirective { directive, .. } if directive == "$setElementOrder/containers"),
            "{error}"
        );
    }

    #[test]
    fn delete_from_primitive_list_removes_values() {
        let pod = json!({"metadata": {"finalizers": ["a", "b", "c", "b"]}});
        let merged = apply(
            &pod,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b", "c"]}}),
        );
        assert_eq!(merged["metadata"]["finalizers"], json!(["a"]));
    }

    #[test]
    fn delete_from_primitive_list_then_add_in_the_same_patch() {
        let pod = json!({"metadata": {"finalizers": ["a", "b"]}});
        let merged = apply(
            &pod,
            json!({"metadata": {
                "$deleteFromPrimitiveList/finalizers": ["a"],
                "finalizers": ["c"]
            }}),
        );
        assert_eq!(merged["metadata"]["finalizers"], json!(["b", "c"]));
    }

    #[test]
    fn delete_from_primitive_list_must_be_a_list() {
        let error = apply_err(
            &two_container_pod(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}}),
        );
        assert!(
            matches!(error, PatchError::MalformedDirective { .. }),
            "{error}"
        );
    }

    #[test]
    fn finalizers_merge_as_an_ordered_union() {
        let pod = json!({"metadata": {"finalizers": ["a", "b"]}});
        let merged = apply(
            &pod,
            json!({"metadata": {"finalizers": ["c", "a", "d", "c"]}}),
        );
        assert_eq!(
            merged["metadata"]["finalizers"],
            json!(["a", "b", "c", "d"])
        );
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let pod = json!({"metadata": {"ownerReferences": [
            {"uid": "1", "kind": "ReplicaSet", "name": "rs"}
        ]}});
        let merged = apply(
            &pod,
            json!({"metadata": {"ownerReferences": [
                {"uid": "1", "controller": true},
                {"uid": "2", "kind": "Job", "name": "job"}
            ]}}),
        );
        assert_eq!(
            merged["metadata"]["ownerReferences"],
            json!([
                {"uid": "1", "kind": "ReplicaSet", "name": "rs", "controller": true},
                {"uid": "2", "kind": "Job", "name": "job"}
            ])
        );
    }

    #[test]
    fn null_deletes_a_field() {
        let merged = apply(
            &two_container_pod(),
            json!({"metadata": {"labels": {"tier": null}}, "spec": {"tolerations": null}}),
        );
        assert_eq!(merged["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(merged["spec"].get("tolerations"), None);
    }

    #[test]
    fn nested_maps_merge_recursively() {
        let merged = apply(
            &two_container_pod(),
            json!({"spec": {"containers": [{
                "name": "nginx",
                "resources": {"limits": {"cpu": "2"}, "requests": {"cpu": "500m"}}
            }]}}),
        );
        assert_eq!(
            merged["spec"]["containers"][0]["resources"],
            json!({"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "500m"}})
        );
    }

    #[test]
    fn lists_without_a_strategy_are_replaced() {
        let merged = apply(
            &two_container_pod(),
            json!({"spec": {"tolerations": [{"key": "b", "operator": "Exists"}]}}),
        );
        assert_eq!(
            merged["spec"]["tolerations"],
            json!([{"key": "b", "operator": "Exists"}])
        );
    }

    #[test]
    fn unknown_kinds_replace_lists_but_merge_maps() {
        let schema = builtin_schema("example.com", "Widget");
        assert!(schema.is_empty());
        let target = json!({"spec": {"items": [{"name": "a"}], "size": 1, "color": "red"}});
        let patch = json!({"spec": {"items": [{"name": "b"}], "size": 2}});
        let merged = strategic_merge_patch(&target, &patch, &schema);
        assert_eq!(
            merged,
            Ok(json!({"spec": {"items": [{"name": "b"}], "size": 2, "color": "red"}}))
        );
    }

    #[test]
    fn unknown_directive_is_an_error() {
        let error = apply_err(
            &two_container_pod(),
            json!({"metadata": {"labels": {"$frobnicate": true}}}),
        );
        assert_eq!(
            error,
            PatchError::UnknownDirective {
                path: "metadata.labels".to_owned(),
                directive: "$frobnicate".to_owned(),
            }
        );
        assert_eq!(
            error.to_string(),
            "unknown strategic merge patch directive `$frobnicate` at `metadata.labels`"
        );
    }

    #[test]
    fn unknown_patch_value_is_an_error() {
        let error = apply_err(
            &two_container_pod(),
            json!({"spec": {"containers": [{"name": "nginx", "$patch": "explode"}]}}),
        );
        assert_eq!(
            error,
            PatchError::UnknownDirective {
                path: "spec.containers".to_owned(),
                directive: "$patch: explode".to_owned(),
            }
        );
    }

    #[test]
    fn keyed_list_elements_must_be_objects_with_the_key() {
        let not_an_object = apply_err(
            &two_container_pod(),
            json!({"spec": {"containers": ["nginx"]}}),
        );
        assert!(
            matches!(not_an_object, PatchError::InvalidListElement { .. }),
            "{not_an_object}"
        );
        let missing_key = apply_err(
            &two_container_pod(),
            json!({"spec": {"containers": [{"image": "x"}]}}),
        );
        assert!(
            matches!(missing_key, PatchError::MissingMergeKey { .. }),
            "{missing_key}"
        );
    }

    #[test]
    fn patch_delete_in_a_primitive_list_is_an_error() {
        let error = apply_err(
            &json!({"metadata": {"finalizers": ["a"]}}),
            json!({"metadata": {"finalizers": [{"$patch": "delete"}]}}),
        );
        assert!(
            matches!(error, PatchError::MalformedDirective { .. }),
            "{error}"
        );
    }

    #[test]
    fn non_object_target_or_patch_is_an_error() {
        let schema = PatchSchema::new();
        assert_eq!(
            strategic_merge_patch(&json!([]), &json!({}), &schema),
            Err(PatchError::NotAnObject { which: "target" })
        );
        assert_eq!(
            strategic_merge_patch(&json!({}), &json!("x"), &schema),
            Err(PatchError::NotAnObject { which: "patch" })
        );
    }

    #[test]
    fn new_elements_are_cleaned_of_nulls_and_directives() {
        let merged = apply(
            &two_container_pod(),
            json!({"spec": {"containers": [{
                "name": "new",
                "image": "new:1",
                "command": null,
                "env": [{"name": "A", "value": "1"}],
                "$setElementOrder/env": [{"name": "A"}]
            }]}}),
        );
        assert_eq!(
            merged["spec"]["containers"][2],
            json!({"name": "new", "image": "new:1", "env": [{"name": "A", "value": "1"}]})
        );
    }

    #[test]
    fn the_target_is_left_untouched() {
        let pod = two_container_pod();
        let before = pod.clone();
        let _ = apply(&pod, json!({"metadata": {"labels": null}}));
        assert_eq!(pod, before);
    }

    #[test]
    fn deployment_merges_containers_under_the_pod_template() {
        let schema = builtin_schema("apps", "Deployment");
        let deployment = json!({"spec": {"replicas": 1, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [
                {"name": "web", "image": "web:1"},
                {"name": "proxy", "image": "proxy:1"}
            ]}
        }}});
        let patch = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
            {"name": "web", "image": "web:2"}
        ]}}}});
        let merged = strategic_merge_patch(&deployment, &patch, &schema);
        assert_eq!(
            merged,
            Ok(json!({"spec": {"replicas": 3, "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "web", "image": "web:2"},
                    {"name": "proxy", "image": "proxy:1"}
                ]}
            }}}))
        );
    }

    #[test]
    fn cron_job_merges_containers_under_the_job_template() {
        let schema = builtin_schema("batch", "CronJob");
        let cron_job = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]
        }}}}}});
        let patch = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "b", "image": "b:2"}]
        }}}}}});
        let merged = strategic_merge_patch(&cron_job, &patch, &schema);
        let Ok(merged) = merged else {
            panic!("patch failed: {merged:?}");
        };
        assert_eq!(
            merged["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}])
        );
    }

    #[test]
    fn builtin_schemas_place_the_pod_spec_per_kind() {
        for (group, kind, pod_spec) in [
            ("", "Pod", "spec"),
            ("core", "Pod", "spec"),
            ("", "PodTemplate", "template.spec"),
            ("", "ReplicationController", "spec.template.spec"),
            ("apps", "Deployment", "spec.template.spec"),
            ("apps", "ReplicaSet", "spec.template.spec"),
            ("apps", "StatefulSet", "spec.template.spec"),
            ("apps", "DaemonSet", "spec.template.spec"),
            ("batch", "Job", "spec.template.spec"),
            ("batch", "CronJob", "spec.jobTemplate.spec.template.spec"),
        ] {
            let schema = builtin_schema(group, kind);
            let containers = format!("{pod_spec}.containers");
            assert_eq!(
                schema.strategy(&containers),
                Some(&ListStrategy::merge_by_key("name")),
                "{group}/{kind}"
            );
            assert_eq!(
                schema.strategy(&format!("{containers}.volumeMounts")),
                Some(&ListStrategy::merge_by_key("mountPath")),
                "{group}/{kind}"
            );
            assert_eq!(
                schema.strategy(&format!("{pod_spec}.volumes")),
                Some(&ListStrategy::merge_by_key("name").with_retain_keys()),
                "{group}/{kind}"
            );
            assert_eq!(
                schema.strategy(&format!("{pod_spec}.tolerations")),
                Some(&ListStrategy::atomic()),
                "{group}/{kind}"
            );
            assert_eq!(
                schema.strategy("metadata.finalizers"),
                Some(&ListStrategy::merge_primitives()),
                "{group}/{kind}"
            );
        }
    }

    #[test]
    fn builtin_schema_covers_services_nodes_and_statuses() {
        let service = builtin_schema("", "Service");
        assert_eq!(
            service.strategy("spec.ports"),
            Some(&ListStrategy::merge_by_key("port"))
        );
        let node = builtin_schema("", "Node");
        assert_eq!(node.strategy("spec.taints"), Some(&ListStrategy::atomic()));
        assert_eq!(
            node.strategy("status.conditions"),
            Some(&ListStrategy::merge_by_key("type"))
        );
        let pod = builtin_schema("", "Pod");
        assert_eq!(
            pod.strategy("status.conditions"),
            Some(&ListStrategy::merge_by_key("type"))
        );
        // A built-in kind without list fields of its own still has ObjectMeta's.
        let config_map = builtin_schema("", "ConfigMap");
        assert_eq!(
            config_map.strategy("metadata.ownerReferences"),
            Some(&ListStrategy::merge_by_key("uid"))
        );
        assert_eq!(config_map.len(), 2);
    }

    #[test]
    fn service_ports_merge_by_port() {
        let schema = builtin_schema("", "Service");
        let service = json!({"spec": {"ports": [
            {"port": 80, "targetPort": 8080},
            {"port": 443, "targetPort": 8443}
        ]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}});
        assert_eq!(
            strategic_merge_patch(&service, &patch, &schema),
            Ok(json!({"spec": {"ports": [
                {"port": 80, "targetPort": 9090},
                {"port": 443, "targetPort": 8443}
            ]}}))
        );
    }

    #[test]
    fn pod_status_conditions_merge_by_type() {
        let pod = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "PodScheduled", "status": "True"}
        ]}});
        let merged = apply(
            &pod,
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        );
        assert_eq!(
            merged["status"]["conditions"],
            json!([
                {"type": "Ready", "status": "True"},
                {"type": "PodScheduled", "status": "True"}
            ])
        );
    }

    #[test]
    fn node_taints_are_replaced() {
        let schema = builtin_schema("", "Node");
        let node = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}});
        let patch = json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}]}});
        assert_eq!(
            strategic_merge_patch(&node, &patch, &schema),
            Ok(json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}]}}))
        );
    }

    #[test]
    fn custom_schema_paths_ignore_list_indices() {
        let schema = PatchSchema::new()
            .with("spec.groups", ListStrategy::merge_by_key("id"))
            .with("spec.groups.members", ListStrategy::merge_primitives());
        assert_eq!(schema.len(), 2);
        assert_eq!(
            schema.iter().map(|(path, _)| path).collect::<Vec<_>>(),
            ["spec.groups", "spec.groups.members"]
        );
        let target = json!({"spec": {"groups": [
            {"id": 1, "members": ["x"]},
            {"id": 2, "members": ["y"]}
        ]}});
        let patch = json!({"spec": {"groups": [{"id": 2, "members": ["z", "y"]}]}});
        assert_eq!(
            strategic_merge_patch(&target, &patch, &schema),
            Ok(json!({"spec": {"groups": [
                {"id": 1, "members": ["x"]},
                {"id": 2, "members": ["y", "z"]}
            ]}}))
        );
    }
}
