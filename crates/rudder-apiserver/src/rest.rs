//! The generic REST handlers: create, get, list, watch, update, patch,
//! delete and deletecollection for every resource, on JSON objects.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rudder_store::{KeyValue, RangeRequest, Revision, StoreError};
use serde_json::{json, Value};

use crate::error::{ApiError, FieldCause};
use crate::object::{self, meta, meta_mut, meta_str};
use crate::registry::ResourceInfo;
use crate::request::{Query, ResourcePath};
use crate::selection::Selection;
use crate::ApiServer;

/// Largest request body the server reads, as kube-apiserver's limit.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub type ApiResult<T = Response> = Result<T, ApiError>;

/// Decodes a stored value into an object carrying its resourceVersion.
pub fn decode(kv: &KeyValue) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    meta_mut(&mut obj).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    Ok(obj)
}

/// Encodes an object for the store: without resourceVersion, which the
/// store's revision stands for.
fn encode(obj: &Value) -> ApiResult<Vec<u8>> {
    let mut obj = obj.clone();
    meta_mut(&mut obj).remove("resourceVersion");
    serde_json::to_vec(&obj).map_err(|e| ApiError::Internal(e.to_string()))
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    json_response_warning(code, body, &[])
}

/// A JSON answer with `Warning` headers, which kubectl prints to the user.
fn json_response_warning(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (code, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
    for warning in warnings {
        let text = format!(
            "299 - {}",
            serde_json::to_string(warning).unwrap_or_default()
        );
        if let Ok(value) = axum::http::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// Subresources that write the status and nothing else: `status`, and a
/// CertificateSigningRequest's `approval` (its conditions).
fn is_status_subresource(subresource: Option<&str>) -> bool {
    matches!(subresource, Some("status") | Some("approval"))
}

/// Parses a request body as one JSON object.
pub fn parse_object(body: &[u8]) -> ApiResult<Value> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("the request body is not a valid JSON object: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body is not a JSON object".into(),
        ));
    }
    Ok(value)
}

fn parse_revision(rv: &str) -> ApiResult<Revision> {
    rv.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::BadRequest(format!("invalid resource version {rv:?}")))
}

impl ApiServer {
    /// Serves one request on a resource path.
    pub(crate) async fn handle_resource(
        &self,
        method: Method,
        path: ResourcePath,
        query: Query,
        headers: HeaderMap,
        body: bytes::Bytes,
    ) -> ApiResult {
        let is_crd = path.info.group == "apiextensions.k8s.io"
            && path.info.plural == "customresourcedefinitions";
        let mutating = method != Method::GET;
        let response = self.route(method, path, query, headers, body).await;
        if is_crd && mutating && response.is_ok() {
            // Serve (or stop serving) the custom resources at once; the CRD
            // watch would get there too, a moment later.
            if let Err(err) = self.sync_custom_resources().await {
                tracing::warn!(error = %err, "cannot sync custom resources");
            }
        }
        response
    }

    async fn route(
        &self,
        method: Method,
        path: ResourcePath,
        query: Query,
        headers: HeaderMap,
        body: bytes::Bytes,
    ) -> ApiResult {
        let sub = path.subresource.clone();
        let manager = crate::managed_fields::manager_name(
            query.get("fieldManager"),
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        );
        let manager = manager.as_str();
        match (&method, path.name.is_some(), sub.as_deref()) {
            (&Method::GET, false, None) if query.flag("watch") => {
                self.watch(path, query, &headers).await
            }
            (&Method::GET, false, None) => self.list(path, query, &headers).await,
            (&Method::GET, true, None | Some("status") | Some("approval")) => {
                self.get(path, query, &headers).await
            }
            (&Method::GET, true, Some("scale")) => self.get_scale(path).await,
            (&Method::POST, false, None) => self.create(path, query, &body, manager).await,
            (&Method::POST, true, Some("binding")) => self.bind(path, query, &body).await,
            (&Method::PUT, true, None | Some("status") | Some("approval")) => {
                self.update(path, query, &body, manager).await
            }
            (&Method::PUT, true, Some("finalize")) => {
                self.finalize_namespace(path, query, &body, manager).await
            }
            (&Method::PUT, true, Some("scale")) => {
                self.update_scale(path, query, &body, manager).await
            }
            (&Method::PATCH, true, None | Some("status") | Some("approval")) => {
                self.patch(path, query, &headers, &body, manager).await
            }
            (&Method::PATCH, true, Some("scale")) => {
                self.patch_scale(path, query, &headers, &body, manager)
                    .await
            }
            (&Method::DELETE, true, None) => self.delete(path, query, &body).await,
            (&Method::DELETE, false, None) => self.delete_collection(path, query, &body).await,
            (_, _, Some(sub)) => Err(ApiError::MethodNotAllowed(format!(
                "the server does not allow this method on the {sub} subresource of {} yet",
                path.info.qualified_name()
            ))),
            _ => Err(ApiError::MethodNotAllowed(
                "the server does not allow this method on the requested resource".into(),
            )),
        }
    }

    /// Reads one object; 404 when absent.
    pub(crate) async fn read_object(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<(Value, Revision)> {
        let key = info.key(ns, name);
        match self.store().get(&key, None).await? {
            (Some(kv), _) => Ok((decode(&kv)?, kv.mod_revision)),
            (None, _) => Err(ApiError::NotFound(crate::error::Target::new(info, name))),
        }
    }

    async fn get(&self, path: ResourcePath, query: Query, headers: &HeaderMap) -> ApiResult {
        let name = path.name.as_deref().unwrap_or_default();
        let revision = match query.get("resourceVersion") {
            None | Some("0") => None,
            Some(rv) => Some(parse_revision(rv)?),
        };
        let key = path.info.key(path.namespace.as_deref(), name);
        let kv = match self.store().get(&key, None).await? {
            (Some(kv), _) => kv,
            (None, _) => {
                return Err(ApiError::NotFound(crate::error::Target::new(
                    &path.info, name,
                )))
            }
        };
        // `resourceVersion=N` on a get means "not older than N".
        if let Some(rev) = revision {
            let (latest, _) = self.store().revisions().await?;
            if rev > latest {
                return Err(ApiError::Gone(format!(
                    "Too large resource version: {rev}, current: {latest}"
                )));
            }
        }
        let obj = decode(&kv)?;
        Ok(self.render_one(&path.info, obj, headers))
    }

    /// Answers with the object, or a one-row Table when the client asks.
    fn render_one(&self, info: &ResourceInfo, obj: Value, headers: &HeaderMap) -> Response {
        if crate::table::wants_table(headers) {
            let rv = meta_str(&obj, "resourceVersion").unwrap_or("").to_owned();
            return json_response(
                StatusCode::OK,
                &crate::table::table(info, &[obj], &rv, None),
            );
        }
        json_response(StatusCode::OK, &obj)
    }

    async fn list(&self, path: ResourcePath, query: Query, headers: &HeaderMap) -> ApiResult {
        let selection = Selection::from_query(&path.info, &query)?;
        let limit: usize = match query.get("limit") {
            None => 0,
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?,
        };
        let prefix = path.info.list_prefix(path.namespace.as_deref());
        let (mut start, mut revision) = (None, None);
        if let Some(token) = query.get("continue") {
            let (rev, key) = decode_continue(token, &prefix)?;
            start = Some(key);
            revision = Some(rev);
        } else {
            match (query.get("resourceVersion"), query.get("resourceVersionMatch")) {
                (None, Some(_)) => {
                    return Err(ApiError::BadRequest(
                        "resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
                    ))
                }
                (None | Some("0"), None) => {}
                (Some(rv), Some("Exact")) => revision = Some(parse_revision(rv)?),
                (Some(rv), None | Some("NotOlderThan")) => {
                    let rv = parse_revision(rv)?;
                    let (latest, _) = self.store().revisions().await?;
                    if rv > latest {
                        return Err(ApiError::Gone(format!(
                            "Too large resource version: {rv}, current: {latest}"
                        )));
                    }
                }
                (Some(_), Some(other)) => {
                    return Err(ApiError::BadRequest(format!(
                        "invalid resourceVersionMatch {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                    )))
                }
            }
        }

        // `resourceVersion=0` means "any version": informers list that way,
        // and the watch cache answers without touching the store (as
        // kube-apiserver, it ignores `limit` then).
        if query.get("resourceVersion") == Some("0") && query.get("continue").is_none() {
            let cache = self.caches().get(self.store(), &path.info.key_prefix());
            let (objects, revision) = cache.snapshot(&prefix).await;
            let items: Vec<Value> = objects
                .iter()
                .filter(|o| selection.matches(o))
                .map(|o| (**o).clone())
                .collect();
            return Ok(self.render_list(&path.info, items, revision, None, None, headers));
        }

        // Page through the store until `limit` objects match the selectors.
        // Most lists need only metadata to select objects and no table:
        // those are encoded straight from the stored bytes, with only
        // `metadata` parsed, which keeps big lists fast and small in memory.
        let raw = !crate::table::wants_table(headers) && selection.needs_only_metadata();
        let mut items = ListItems::default();
        let mut next_start = None;
        let mut remaining = None;
        loop {
            let want = if limit == 0 {
                0
            } else {
                (limit - items.len()).max(1)
            };
            let page = self
                .store()
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    start: start.clone(),
                    limit: if limit == 0 { 0 } else { want.max(100) },
                    revision,
                    count_only: false,
                })
                .await
                .map_err(|err| match err {
                    StoreError::Compacted { .. } => ApiError::Gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".into(),
                    ),
                    other => other.into(),
                })?;
            revision = Some(page.revision);
            let total = page.kvs.len();
            for (i, kv) in page.kvs.iter().enumerate() {
                if raw {
                    let (bytes, metadata) = encode_list_item(kv)?;
                    if selection.matches_metadata(metadata) {
                        items.raw.push(bytes);
                    }
                } else {
                    let obj = decode(kv)?;
                    if selection.matches(&obj) {
                        items.decoded.push(obj);
                    }
                }
                if limit > 0 && items.len() == limit {
                    let more_in_page = i + 1 < total;
                    if more_in_page || page.more {
                        next_start = Some(format!("{}\0", kv.key));
                        if selection.is_empty() {
                            remaining = Some(page.count - (i as i64 + 1));
                        }
                    }
                    break;
                }
            }
            if (limit > 0 && items.len() == limit) || !page.more {
                break;
            }
            start = page.kvs.last().map(|kv| format!("{}\0", kv.key));
        }
        let revision = revision.unwrap_or_default();
        let continue_token = next_start.map(|key| encode_continue(revision, &key));
        if raw {
            return Ok(render_raw_list(
                &path.info,
                &items.raw,
                revision,
                continue_token,
                remaining,
            ));
        }
        Ok(self.render_list(
            &path.info,
            items.decoded,
            revision,
            continue_token,
            remaining,
            headers,
        ))
    }

    /// A list answer: the kind's List, or a Table when the client asks.
    fn render_list(
        &self,
        info: &ResourceInfo,
        items: Vec<Value>,
        revision: Revision,
        continue_token: Option<String>,
        remaining: Option<i64>,
        headers: &HeaderMap,
    ) -> Response {
        if crate::table::wants_table(headers) {
            return json_response(
                StatusCode::OK,
                &crate::table::table(
                    info,
                    &items,
                    &revision.to_string(),
                    continue_token.as_deref(),
                ),
            );
        }
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if let Some(token) = continue_token {
            metadata["continue"] = json!(token);
            if let Some(remaining) = remaining.filter(|r| *r > 0) {
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
        json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", info.kind),
                "apiVersion": info.api_version(),
                "metadata": metadata,
                "items": items,
            }),
        )
    }

    async fn create(
        &self,
        path: ResourcePath,
        query: Query,
        body: &[u8],
        manager: &str,
    ) -> ApiResult {
        let mut obj = parse_object(body)?;
        check_type_meta(&path.info, &mut obj)?;
        let warnings = self.check_schema(&path.info, &mut obj, &query)?;
        let obj = self
            .create_object(&path, &query, obj, Some(manager))
            .await?;
        Ok(json_response_warning(StatusCode::CREATED, &obj, &warnings))
    }

    /// Creates a checked object: namespace, name, defaults, validation,
    /// server-set metadata, field ownership (unless `manager` is `None`,
    /// when the caller set it), then the store.
    async fn create_object(
        &self,
        path: &ResourcePath,
        query: &Query,
        mut obj: Value,
        manager: Option<&str>,
    ) -> ApiResult<Value> {
        let info = &path.info;
        if info.namespaced {
            let Some(ns) = path.namespace.as_deref() else {
                return Err(ApiError::MethodNotAllowed(format!(
                    "{} are namespaced: create them under /namespaces/NAMESPACE/",
                    info.plural
                )));
            };
            match meta_str(&obj, "namespace") {
                Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ))
                }
                _ => {
                    meta_mut(&mut obj).insert("namespace".into(), json!(ns));
                }
            }
            self.check_namespace_accepts(ns).await?;
        } else {
            meta_mut(&mut obj).remove("namespace");
        }
        if object::name(&obj).is_empty() {
            if let Some(prefix) = meta_str(&obj, "generateName").map(str::to_owned) {
                let name = format!("{prefix}{}", object::random_suffix());
                meta_mut(&mut obj).insert("name".into(), json!(name));
            }
        }
        let name = object::name(&obj).to_owned();
        let causes = object::validate_meta(info, &obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(info, &name, causes));
        }
        let admission = crate::auth::admission::Request {
            operation: crate::auth::admission::Operation::Create,
            info,
            subresource: None,
            namespace: path.namespace.as_deref(),
            name: &name,
            dry_run: query.dry_run()?,
        };
        self.admit_secure_mutating(&admission, &mut obj, None)
            .await?;
        self.admit_create(info, &mut obj).await?;
        // Defaults may need the uid (a Job's selector is its uid).
        meta_mut(&mut obj).insert("uid".into(), json!(object::new_uid()));
        crate::defaults::prepare_for_create(info, &mut obj);
        let causes = crate::validation::validate(info, &obj, None);
        if !causes.is_empty() {
            return Err(ApiError::invalid(info, &name, causes));
        }
        self.admit_secure_validating(&admission, Some(&obj), None)
            .await?;
        if is_service(info) {
            self.services()
                .allocate(self, info, &mut obj, None, query.dry_run()?)
                .await?;
        }
        let meta = meta_mut(&mut obj);
        meta.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        for server_set in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(server_set);
        }
        if let Some(manager) = manager {
            crate::managed_fields::record_update(
                &self.openapi(),
                info,
                None,
                &mut obj,
                manager,
                None,
            );
        }
        if query.dry_run()? {
            if self
                .store()
                .get(&info.key(path.namespace.as_deref(), &name), None)
                .await?
                .0
                .is_some()
            {
                return Err(ApiError::AlreadyExists(crate::error::Target::new(
                    info, &name,
                )));
            }
            return Ok(obj);
        }
        let key = info.key(path.namespace.as_deref(), &name);
        let rev = self
            .store()
            .create(&key, encode(&obj)?)
            .await
            .map_err(|e| ApiError::from_store(e, info, &name))?;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
        Ok(obj)
    }

    /// New objects may go only into namespaces that exist and are not
    /// being deleted.
    async fn check_namespace_accepts(&self, ns: &str) -> ApiResult<()> {
        let namespaces = self
            .registry()
            .get("", "v1", "namespaces")
            .ok_or_else(|| ApiError::Internal("namespaces are not registered".into()))?;
        // The watch cache answers most checks; one it has not seen yet
        // (created a moment ago) is read from the store.
        let cached = self
            .caches()
            .get(self.store(), &namespaces.key_prefix())
            .get(&namespaces.key(None, ns))
            .await;
        let obj = match cached {
            Some(obj) => (*obj).clone(),
            None => self.read_object(&namespaces, None, ns).await?.0,
        };
        if meta(&obj).contains_key("deletionTimestamp")
            || obj.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
        {
            return Err(ApiError::Forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    async fn update(
        &self,
        path: ResourcePath,
        query: Query,
        body: &[u8],
        manager: &str,
    ) -> ApiResult {
        let info = path.info.clone();
        let name = path.name.clone().unwrap_or_default();
        let mut new = parse_object(body)?;
        check_type_meta(&info, &mut new)?;
        let warnings = self.check_schema(&info, &mut new, &query)?;
        if object::name(&new) != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                object::name(&new)
            )));
        }
        if let (Some(ns), Some(body_ns)) = (path.namespace.as_deref(), meta_str(&new, "namespace"))
        {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
        }
        let expected = match meta_str(&new, "resourceVersion") {
            Some(rv) if !rv.is_empty() => Some(parse_revision(rv)?),
            _ => None,
        };
        let (current, rev) = self
            .read_object(&info, path.namespace.as_deref(), &name)
            .await?;
        if expected.is_some_and(|e| e != rev) {
            return Err(ApiError::modified(&info, &name));
        }
        let status_only = is_status_subresource(path.subresource.as_deref());
        let updated = self
            .write_update(
                &info,
                &path,
                current,
                rev,
                new,
                status_only,
                query.dry_run()?,
                Some(manager),
            )
            .await?;
        Ok(json_response_warning(StatusCode::OK, &updated, &warnings))
    }

    /// `namespaces/NAME/finalize`: replaces the namespace's
    /// `spec.finalizers` and nothing else. The namespace controller calls
    /// it once the namespace is empty; with no finalizer left, a
    /// terminating namespace is gone.
    async fn finalize_namespace(
        &self,
        path: ResourcePath,
        query: Query,
        body: &[u8],
        manager: &str,
    ) -> ApiResult {
        let info = path.info.clone();
        let name = path.name.clone().unwrap_or_default();
        let body = parse_object(body)?;
        let finalizers = body
            .pointer("/spec/finalizers")
            .cloned()
            .unwrap_or_else(|| json!([]));
        if !finalizers.is_array() {
            return Err(ApiError::BadRequest(
                "spec.finalizers must be a list of strings".into(),
            ));
        }
        for _ in 0..16 {
            let (current, rev) = self.read_object(&info, None, &name).await?;
            let mut new = current.clone();
            new["spec"]["finalizers"] = finalizers.clone();
            match self
                .write_update(
                    &info,
                    &path,
                    current,
                    rev,
                    new,
                    false,
                    query.dry_run()?,
                    Some(manager),
                )
                .await
            {
                Ok(updated) => return Ok(json_response(StatusCode::OK, &updated)),
                Err(ApiError::Conflict(..)) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(ApiError::modified(&info, &name))
    }

    /// Merges `new` onto `current` per the update's kind (main resource or
    /// status), validates and writes it with compare-and-swap on `rev`.
    /// Returns the object as stored.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn write_update(
        &self,
        info: &ResourceInfo,
        path: &ResourcePath,
        current: Value,
        rev: Revision,
        new: Value,
        status_only: bool,
        dry_run: bool,
        manager: Option<&str>,
    ) -> ApiResult<Value> {
        let name = object::name(&current).to_owned();
        let mut new = new;
        if status_only {
            // A status update changes the status and nothing else.
            let mut merged = current.clone();
            merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            if merged["status"].is_null() {
                merged.as_object_mut().map(|o| o.remove("status"));
            }
            new = merged;
        } else if info.has_subresource("status") {
            // The main resource ignores status changes when status has its
            // own subresource.
            match current.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => {
                    new.as_object_mut().map(|o| o.remove("status"));
                }
            }
        }
        if !status_only {
            crate::defaults::prepare_for_update(info, &mut new);
        }
        // Metadata the server owns.
        let old_meta = meta(&current).clone();
        let new_meta = meta_mut(&mut new);
        for owned in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "generation",
        ] {
            match old_meta.get(owned) {
                Some(v) => new_meta.insert(owned.into(), v.clone()),
                None => new_meta.remove(owned),
            };
        }
        new_meta.remove("resourceVersion");
        if old_meta.contains_key("deletionTimestamp") {
            // Once deletion has started, finalizers may only be removed.
            let old: Vec<String> = object::finalizers(&current);
            let added: Vec<String> = object::finalizers(&new)
                .into_iter()
                .filter(|f| !old.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    info,
                    &name,
                    vec![FieldCause::forbidden(
                        "metadata.finalizers",
                        &format!("no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"),
                    )],
                ));
            }
        }
        if is_service(info) && path.subresource.is_none() {
            crate::service_alloc::keep_allocated_values(&mut new, Some(&current));
        }
        let admission = crate::auth::admission::Request {
            operation: crate::auth::admission::Operation::Update,
            info,
            subresource: path.subresource.as_deref(),
            namespace: path.namespace.as_deref(),
            name: &name,
            dry_run,
        };
        self.admit_secure_mutating(&admission, &mut new, Some(&current))
            .await?;
        let causes = object::validate_meta(info, &new);
        if !causes.is_empty() {
            return Err(ApiError::invalid(info, &name, causes));
        }
        let causes = if path.subresource.as_deref() == Some("finalize") {
            // The finalize subresource is the one way to change a
            // namespace's spec.finalizers.
            let mut before = current.clone();
            before["spec"]["finalizers"] = new["spec"]["finalizers"].clone();
            crate::validation::validate(info, &new, Some(&before))
        } else {
            crate::validation::validate(info, &new, Some(&current))
        };
        if !causes.is_empty() {
            return Err(ApiError::invalid(info, &name, causes));
        }
        self.admit_secure_validating(&admission, Some(&new), Some(&current))
            .await?;
        if is_service(info) && path.subresource.is_none() {
            self.services()
                .allocate(self, info, &mut new, Some(&current), dry_run)
                .await?;
        }
        if object::spec_part(&new) != object::spec_part(&current) {
            let generation = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut new).insert("generation".into(), json!(generation));
        }
        if let Some(manager) = manager {
            crate::managed_fields::record_update(
                &self.openapi(),
                info,
                Some(&current),
                &mut new,
                manager,
                path.subresource.as_deref(),
            );
        }
        let mut current_cmp = current.clone();
        meta_mut(&mut current_cmp).remove("resourceVersion");
        if new == current_cmp {
            // Nothing changed: no write, no new resourceVersion.
            return Ok(current);
        }
        if path.subresource.is_none() {
            self.admit_update(info, &current, &mut new).await?;
        }
        let key = info.key(path.namespace.as_deref(), &name);
        let is_namespace = info.group.is_empty() && info.plural == "namespaces";
        let released = if is_namespace {
            !namespace_held(&new)
        } else {
            object::finalizers(&new).is_empty()
        };
        if old_meta.contains_key("deletionTimestamp") && released {
            // The last finalizer is gone: the deletion completes.
            if !dry_run {
                self.store()
                    .delete(&key, Some(rev))
                    .await
                    .map_err(|e| ApiError::from_store(e, info, &name))?;
            }
            return Ok(new);
        }
        if dry_run {
            meta_mut(&mut new).insert("resourceVersion".into(), json!(rev.to_string()));
            return Ok(new);
        }
        let new_rev = self
            .store()
            .update(&key, encode(&new)?, rev)
            .await
            .map_err(|e| ApiError::from_store(e, info, &name))?;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(new_rev.to_string()));
        Ok(new)
    }

    async fn patch(
        &self,
        path: ResourcePath,
        query: Query,
        headers: &HeaderMap,
        body: &[u8],
        manager: &str,
    ) -> ApiResult {
        let info = path.info.clone();
        let name = path.name.clone().unwrap_or_default();
        let kind = crate::patch::PatchKind::from_headers(headers)?;
        if kind == crate::patch::PatchKind::Apply {
            return self.apply_patch(path, query, body).await;
        }
        let dry_run = query.dry_run()?;
        let status_only = is_status_subresource(path.subresource.as_deref());
        // Retry on a lost compare-and-swap unless the patch itself names
        // the resourceVersion it applies to.
        for _ in 0..16 {
            let (current, rev) = self
                .read_object(&info, path.namespace.as_deref(), &name)
                .await?;
            let mut patched = crate::patch::apply(kind, &info, &current, body)?;
            let warnings = self.check_schema(&info, &mut patched, &query)?;
            if object::name(&patched) != name {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    object::name(&patched)
                )));
            }
            let precondition = meta_str(&patched, "resourceVersion")
                .filter(|rv| Some(*rv) != meta_str(&current, "resourceVersion"))
                .map(str::to_owned);
            if precondition.is_some() {
                return Err(ApiError::modified(&info, &name));
            }
            match self
                .write_update(
                    &info,
                    &path,
                    current,
                    rev,
                    patched,
                    status_only,
                    dry_run,
                    Some(manager),
                )
                .await
            {
                Err(ApiError::Conflict(..)) => continue,
                Ok(obj) => return Ok(json_response_warning(StatusCode::OK, &obj, &warnings)),
                Err(err) => return Err(err),
            }
        }
        Err(ApiError::modified(&info, &name))
    }

    /// Server-side apply: `PATCH` with `application/apply-patch+yaml`.
    async fn apply_patch(&self, path: ResourcePath, query: Query, body: &[u8]) -> ApiResult {
        let info = path.info.clone();
        let name = path.name.clone().unwrap_or_default();
        let Some(manager) = query.get("fieldManager").map(str::to_owned) else {
            return Err(ApiError::invalid(
                &info,
                &name,
                vec![FieldCause::required(
                    "fieldManager",
                    "is required for apply requests",
                )],
            ));
        };
        let force = query.flag("force");
        let mut config = crate::patch::parse_apply_body(body)?;
        check_type_meta(&info, &mut config)?;
        match meta_str(&config, "name") {
            Some(n) if n != name => {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => {
                meta_mut(&mut config).insert("name".into(), json!(name));
            }
        }
        let warnings = self.check_schema(&info, &mut config, &query)?;
        let dry_run = query.dry_run()?;
        let subresource = path.subresource.as_deref();
        for _ in 0..16 {
            let live = match self
                .read_object(&info, path.namespace.as_deref(), &name)
                .await
            {
                Ok(found) => Some(found),
                Err(ApiError::NotFound(_)) if subresource.is_none() => None,
                Err(err) => return Err(err),
            };
            let openapi = self.openapi();
            match live {
                None => {
                    let obj = crate::managed_fields::apply(
                        &openapi, &info, None, &config, &manager, force, None,
                    )?;
                    match self.create_object(&path, &query, obj, None).await {
                        Ok(obj) => {
                            return Ok(json_response_warning(StatusCode::CREATED, &obj, &warnings))
                        }
                        // Created meanwhile: apply onto it.
                        Err(ApiError::AlreadyExists(_)) => continue,
                        Err(err) => return Err(err),
                    }
                }
                Some((current, rev)) => {
                    let new = crate::managed_fields::apply(
                        &openapi,
                        &info,
                        Some(&current),
                        &config,
                        &manager,
                        force,
                        subresource,
                    )?;
                    let status_only = is_status_subresource(subresource);
                    match self
                        .write_update(&info, &path, current, rev, new, status_only, dry_run, None)
                        .await
                    {
                        Err(ApiError::Conflict(..)) => continue,
                        Ok(obj) => {
                            return Ok(json_response_warning(StatusCode::OK, &obj, &warnings))
                        }
                        Err(err) => return Err(err),
                    }
                }
            }
        }
        Err(ApiError::modified(&info, &name))
    }

    async fn delete(&self, path: ResourcePath, query: Query, body: &[u8]) -> ApiResult {
        let info = path.info.clone();
        let name = path.name.clone().unwrap_or_default();
        let options = DeleteOptions::parse(&query, body)?;
        let (obj, code) = self
            .delete_one(&info, path.namespace.as_deref(), &name, &options)
            .await?;
        Ok(json_response(code, &obj))
    }

    /// Deletes one object, or starts its deletion when finalizers hold it.
    /// Returns the object and 200 (gone) or 202 (deletion in progress).
    pub(crate) async fn delete_one(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> ApiResult<(Value, StatusCode)> {
        let key = info.key(ns, name);
        for _ in 0..16 {
            let (mut obj, rev) = self.read_object(info, ns, name).await?;
            if let Some(uid) = &options.precondition_uid {
                if meta_str(&obj, "uid") != Some(uid.as_str()) {
                    return Err(ApiError::Conflict(
                        crate::error::Target::new(info, name),
                        format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", meta_str(&obj, "uid").unwrap_or("")),
                    ));
                }
            }
            if let Some(want) = &options.precondition_rv {
                if meta_str(&obj, "resourceVersion") != Some(want.as_str()) {
                    return Err(ApiError::Conflict(
                        crate::error::Target::new(info, name),
                        format!("Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}", meta_str(&obj, "resourceVersion").unwrap_or("")),
                    ));
                }
            }
            let admission = crate::auth::admission::Request {
                operation: crate::auth::admission::Operation::Delete,
                info,
                subresource: None,
                namespace: ns,
                name,
                dry_run: options.dry_run,
            };
            self.admit_secure_validating(&admission, None, Some(&obj))
                .await?;
            // Objects that go in steps are only marked for deletion here:
            // (deletionTimestamp, deletionGracePeriodSeconds, answer).
            let is_namespace = info.group.is_empty() && info.plural == "namespaces";
            if !is_namespace && !meta(&obj).contains_key("deletionTimestamp") {
                // Orphan and Foreground deletion hold the object with a
                // finalizer that the garbage collector removes once it has
                // released or deleted the dependents.
                set_gc_finalizer(&mut obj, options.propagation_policy.as_deref());
            }
            let marking = if is_namespace {
                // A namespace is emptied before it goes: deletion marks it
                // Terminating, and the namespace controller removes its
                // contents and then the namespace (kube's two-step delete).
                if meta(&obj).contains_key("deletionTimestamp") {
                    return Ok((obj, StatusCode::OK));
                }
                if !namespace_held(&obj) {
                    // No finalizer holds it: it goes at once.
                    if options.dry_run {
                        return Ok((obj, StatusCode::OK));
                    }
                    match self.store().delete(&key, Some(rev)).await {
                        Ok(_) => return Ok((obj, StatusCode::OK)),
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(ApiError::from_store(e, info, name)),
                    }
                }
                obj["status"]["phase"] = json!("Terminating");
                Some((object::now_rfc3339(), 0, StatusCode::OK))
            } else if let Some(grace) = graceful_pod_deletion(info, &obj, options) {
                // A pod on a node stops gracefully: its node agent kills the
                // containers within the grace period and then deletes it
                // for good (with a grace period of 0).
                let current = meta(&obj)
                    .get("deletionGracePeriodSeconds")
                    .and_then(Value::as_i64);
                if current.is_some_and(|c| c <= grace) {
                    return Ok((obj, StatusCode::OK));
                }
                let deadline =
                    std::time::SystemTime::now() + std::time::Duration::from_secs(grace as u64);
                Some((object::format_rfc3339(deadline), grace, StatusCode::OK))
            } else if !object::finalizers(&obj).is_empty() {
                if meta(&obj).contains_key("deletionTimestamp") {
                    return Ok((obj, StatusCode::ACCEPTED));
                }
                Some((object::now_rfc3339(), 0, StatusCode::ACCEPTED))
            } else {
                None
            };
            if let Some((timestamp, grace, code)) = marking {
                meta_mut(&mut obj).insert("deletionTimestamp".into(), json!(timestamp));
                meta_mut(&mut obj).insert("deletionGracePeriodSeconds".into(), json!(grace));
                if options.dry_run {
                    return Ok((obj, code));
                }
                match self.store().update(&key, encode(&obj)?, rev).await {
                    Ok(new_rev) => {
                        meta_mut(&mut obj)
                            .insert("resourceVersion".into(), json!(new_rev.to_string()));
                        return Ok((obj, code));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(ApiError::from_store(e, info, name)),
                }
            }
            if options.dry_run {
                return Ok((obj, StatusCode::OK));
            }
            match self.store().delete(&key, Some(rev)).await {
                Ok(_) => return Ok((obj, StatusCode::OK)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, info, name)),
            }
        }
        Err(ApiError::modified(info, name))
    }

    async fn delete_collection(&self, path: ResourcePath, query: Query, body: &[u8]) -> ApiResult {
        let info = path.info.clone();
        let selection = Selection::from_query(&info, &query)?;
        let options = DeleteOptions::parse(&query, body)?;
        let prefix = info.list_prefix(path.namespace.as_deref());
        let page = self.store().range(RangeRequest::prefix(prefix)).await?;
        let mut deleted = Vec::new();
        for kv in &page.kvs {
            let obj = decode(kv)?;
            if !selection.matches(&obj) {
                continue;
            }
            let ns = meta_str(&obj, "namespace").map(str::to_owned);
            match self
                .delete_one(&info, ns.as_deref(), object::name(&obj), &options)
                .await
            {
                Ok((obj, _)) => deleted.push(obj),
                Err(ApiError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", info.kind),
                "apiVersion": info.api_version(),
                "metadata": {"resourceVersion": page.revision.to_string()},
                "items": deleted,
            }),
        ))
    }

    /// `pods/NAME/binding`: assigns a pod to a node, once.
    async fn bind(&self, path: ResourcePath, query: Query, body: &[u8]) -> ApiResult {
        let info = path.info.clone();
        let name = path.name.clone().unwrap_or_default();
        let binding = parse_object(body)?;
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(&info, &name, vec![FieldCause::required("target.name", "")])
            })?
            .to_owned();
        let dry_run = query.dry_run()?;
        for _ in 0..16 {
            let (mut pod, rev) = self
                .read_object(&info, path.namespace.as_deref(), &name)
                .await?;
            if meta(&pod).contains_key("deletionTimestamp") {
                return Err(ApiError::Conflict(
                    crate::error::Target::new(&info, &name),
                    "pod is being deleted, cannot be assigned to a host".into(),
                ));
            }
            if let Some(current) = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                return Err(ApiError::Conflict(
                    crate::error::Target::new(&info, &name),
                    format!("pod {name} is already assigned to node {current:?}"),
                ));
            }
            pod["spec"]["nodeName"] = json!(node);
            crate::defaults::set_condition(&mut pod, "PodScheduled", "True", None, None);
            if dry_run {
                break;
            }
            let key = info.key(path.namespace.as_deref(), &name);
            match self.store().update(&key, encode(&pod)?, rev).await {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, &info, &name)),
            }
        }
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    async fn get_scale(&self, path: ResourcePath) -> ApiResult {
        let name = path.name.clone().unwrap_or_default();
        let (obj, _) = self
            .read_object(&path.info, path.namespace.as_deref(), &name)
            .await?;
        Ok(json_response(
            StatusCode::OK,
            &crate::scale::to_scale(&path.info, &obj)?,
        ))
    }

    async fn update_scale(
        &self,
        path: ResourcePath,
        query: Query,
        body: &[u8],
        manager: &str,
    ) -> ApiResult {
        let scale = parse_object(body)?;
        self.write_scale(path, query, manager, move |_| Ok(scale.clone()))
            .await
    }

    async fn patch_scale(
        &self,
        path: ResourcePath,
        query: Query,
        headers: &HeaderMap,
        body: &[u8],
        manager: &str,
    ) -> ApiResult {
        let kind = crate::patch::PatchKind::from_headers(headers)?;
        if kind == crate::patch::PatchKind::Apply {
            return Err(ApiError::UnsupportedMediaType(
                "server-side apply to the scale subresource is not supported; use kubectl scale"
                    .into(),
            ));
        }
        let info = path.info.clone();
        let body = body.to_vec();
        self.write_scale(path, query, manager, move |current_scale| {
            crate::patch::apply(kind, &info, current_scale, &body)
        })
        .await
    }

    /// Applies a new Scale (computed from the current one) to the object.
    async fn write_scale(
        &self,
        path: ResourcePath,
        query: Query,
        manager: &str,
        new_scale: impl Fn(&Value) -> ApiResult<Value>,
    ) -> ApiResult {
        let info = path.info.clone();
        let name = path.name.clone().unwrap_or_default();
        for _ in 0..16 {
            let (current, rev) = self
                .read_object(&info, path.namespace.as_deref(), &name)
                .await?;
            let scale = new_scale(&crate::scale::to_scale(&info, &current)?)?;
            if let Some(rv) = meta_str(&scale, "resourceVersion").filter(|rv| !rv.is_empty()) {
                if parse_revision(rv)? != rev {
                    return Err(ApiError::modified(&info, &name));
                }
            }
            let replicas = crate::scale::replicas_of(&info, &name, &scale)?;
            let mut new = current.clone();
            new["spec"]["replicas"] = json!(replicas);
            match self
                .write_update(
                    &info,
                    &path,
                    current,
                    rev,
                    new,
                    false,
                    query.dry_run()?,
                    Some(manager),
                )
                .await
            {
                Ok(obj) => {
                    return Ok(json_response(
                        StatusCode::OK,
                        &crate::scale::to_scale(&info, &obj)?,
                    ))
                }
                Err(ApiError::Conflict(..)) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(ApiError::modified(&info, &name))
    }
}

impl ApiServer {
    /// Checks an incoming object against its kind's schema: wrong JSON
    /// types are a 400; undeclared fields are dropped, and refused or
    /// warned about per `fieldValidation` (default Warn, as Kubernetes).
    fn check_schema(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
        query: &Query,
    ) -> ApiResult<Vec<String>> {
        let mode = query.get("fieldValidation").unwrap_or("Warn");
        if !matches!(mode, "Ignore" | "Warn" | "Strict") {
            return Err(ApiError::BadRequest(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {mode:?}"
            )));
        }
        let report = self
            .openapi()
            .check(&info.group, &info.version, &info.kind, obj);
        let kind = &info.kind;
        if !report.type_errors.is_empty() {
            if info.custom {
                // Custom resources are validated against their schema: 422.
                let causes = report
                    .type_errors
                    .iter()
                    .map(|e| {
                        FieldCause::invalid(
                            e.path.clone(),
                            e.found,
                            &format!(
                                "{} in body must be of type {}: {:?}",
                                e.path, e.expected, e.found
                            ),
                        )
                    })
                    .collect();
                return Err(ApiError::invalid(info, object::name(obj), causes));
            }
            let errors: Vec<String> = report.type_errors.iter().map(ToString::to_string).collect();
            return Err(ApiError::BadRequest(format!(
                "{kind} in version \"{}\" cannot be handled as a {kind}: {}",
                info.version,
                errors.join(", ")
            )));
        }
        let unknown: Vec<String> = report
            .unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        match mode {
            "Strict" if !unknown.is_empty() => Err(ApiError::BadRequest(format!(
                "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
                info.version,
                unknown.join(", ")
            ))),
            "Warn" => Ok(unknown),
            _ => Ok(Vec::new()),
        }
    }
}

/// `kind` and `apiVersion` must be the endpoint's (or absent).
fn check_type_meta(info: &ResourceInfo, obj: &mut Value) -> ApiResult<()> {
    let api_version = info.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != api_version => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
        _ => obj["apiVersion"] = json!(api_version),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != info.kind => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                info.kind
            )))
        }
        _ => obj["kind"] = json!(info.kind),
    }
    Ok(())
}

/// The grace period a delete gives a pod, when it is graceful: the pod is
/// bound to a node, not finished, and the request does not force it.
fn graceful_pod_deletion(info: &ResourceInfo, pod: &Value, options: &DeleteOptions) -> Option<i64> {
    if !(info.group.is_empty() && info.plural == "pods") {
        return None;
    }
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !bound || finished {
        return None;
    }
    let grace = options
        .grace_period_seconds
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30);
    // A negative grace period means "the minimum": one second.
    let grace = if grace < 0 { 1 } else { grace };
    (grace > 0).then_some(grace)
}

/// Adds the finalizer that makes the garbage collector orphan
/// (`orphan`) or first delete (`foregroundDeletion`) the object's
/// dependents; Background deletion needs none.
fn set_gc_finalizer(obj: &mut Value, policy: Option<&str>) {
    let (add, remove) = match policy {
        Some("Orphan") => ("orphan", "foregroundDeletion"),
        Some("Foreground") => ("foregroundDeletion", "orphan"),
        _ => return,
    };
    let finalizers = meta_mut(obj)
        .entry("finalizers")
        .or_insert_with(|| json!([]));
    if let Some(list) = finalizers.as_array_mut() {
        list.retain(|f| f != remove);
        if !list.iter().any(|f| f == add) {
            list.push(json!(add));
        }
    }
}

/// Whether a namespace still has finalizers (`spec.finalizers`, such as
/// `kubernetes`, or metadata finalizers) that keep it while it empties.
pub(crate) fn namespace_held(ns: &Value) -> bool {
    let spec_held = ns
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    spec_held || !object::finalizers(ns).is_empty()
}

/// `metav1.DeleteOptions`, from the body or the query.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub propagation_policy: Option<String>,
}

impl DeleteOptions {
    fn parse(query: &Query, body: &[u8]) -> ApiResult<Self> {
        let grace =
            match query.get("gracePeriodSeconds") {
                Some(g) => Some(g.parse::<i64>().map_err(|_| {
                    ApiError::BadRequest(format!("invalid gracePeriodSeconds {g:?}"))
                })?),
                None => None,
            };
        let mut options = DeleteOptions {
            dry_run: query.dry_run()?,
            grace_period_seconds: grace,
            propagation_policy: query.get("propagationPolicy").map(str::to_owned),
            ..Default::default()
        };
        if !body.iter().all(u8::is_ascii_whitespace) {
            let body = parse_object(body)?;
            if body
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|v| v == "All"))
            {
                options.dry_run = true;
            }
            options.precondition_uid = body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned);
            options.precondition_rv = body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some(grace) = body.get("gracePeriodSeconds").and_then(Value::as_i64) {
                options.grace_period_seconds = Some(grace);
            }
            if let Some(orphan) = body.get("orphanDependents").and_then(Value::as_bool) {
                // The deprecated form of propagationPolicy.
                options.propagation_policy =
                    Some(if orphan { "Orphan" } else { "Background" }.to_owned());
            }
            if let Some(policy) = body.get("propagationPolicy").and_then(Value::as_str) {
                options.propagation_policy = Some(policy.to_owned());
            }
        }
        if let Some(policy) = &options.propagation_policy {
            if !matches!(policy.as_str(), "Orphan" | "Background" | "Foreground") {
                return Err(ApiError::BadRequest(format!(
                    "invalid propagationPolicy {policy:?}: supported values: \"Orphan\", \"Background\", \"Foreground\""
                )));
            }
        }
        Ok(options)
    }
}

/// A continue token: the list's revision and the next key, opaque to
/// clients.
fn encode_continue(revision: Revision, start: &str) -> String {
    let raw = json!({"rv": revision, "start": start}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<(Revision, String)> {
    let invalid = || ApiError::BadRequest(format!("invalid continue token {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let value: Value = serde_json::from_slice(&raw).map_err(|_| invalid())?;
    let rev = value
        .get("rv")
        .and_then(Value::as_i64)
        .ok_or_else(invalid)?;
    let start = value
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(invalid)?;
    if !start.starts_with(prefix) {
        return Err(invalid());
    }
    Ok((rev, start.to_owned()))
}

/// The objects a list has gathered: as stored bytes (the fast path) or
/// decoded (when selection or a table needs the whole object).
#[derive(Default)]
struct ListItems {
    raw: Vec<Vec<u8>>,
    decoded: Vec<Value>,
}

impl ListItems {
    fn len(&self) -> usize {
        self.raw.len() + self.decoded.len()
    }
}

/// A stored object as a list item: its top-level fields copied verbatim,
/// only `metadata` parsed to add `resourceVersion`. Returns the bytes and
/// the metadata.
fn encode_list_item(kv: &KeyValue) -> ApiResult<(Vec<u8>, Value)> {
    let corrupt = |e: serde_json::Error| {
        ApiError::Internal(format!("stored object {} is not JSON: {e}", kv.key))
    };
    let fields: std::collections::BTreeMap<String, &serde_json::value::RawValue> =
        serde_json::from_slice(&kv.value).map_err(corrupt)?;
    let mut metadata: Value = match fields.get("metadata") {
        Some(raw) => serde_json::from_str(raw.get()).map_err(corrupt)?,
        None => json!({}),
    };
    if let Some(m) = metadata.as_object_mut() {
        m.insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    }
    let mut out = Vec::with_capacity(kv.value.len() + 32);
    out.push(b'{');
    let mut first = true;
    let mut wrote_metadata = false;
    for (key, value) in &fields {
        if !wrote_metadata && key.as_str() > "metadata" {
            // Keep the fields in order when the object had no metadata.
            write_field(&mut out, &mut first, "metadata", &metadata)?;
            wrote_metadata = true;
        }
        if key == "metadata" {
            write_field(&mut out, &mut first, "metadata", &metadata)?;
            wrote_metadata = true;
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut out, key).map_err(|e| ApiError::Internal(e.to_string()))?;
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    if !wrote_metadata {
        write_field(&mut out, &mut first, "metadata", &metadata)?;
    }
    out.push(b'}');
    Ok((out, metadata))
}

fn write_field(out: &mut Vec<u8>, first: &mut bool, key: &str, value: &Value) -> ApiResult<()> {
    if !*first {
        out.push(b',');
    }
    *first = false;
    serde_json::to_writer(&mut *out, key).map_err(|e| ApiError::Internal(e.to_string()))?;
    out.push(b':');
    serde_json::to_writer(&mut *out, value).map_err(|e| ApiError::Internal(e.to_string()))
}

/// A List answer assembled from already-encoded items.
fn render_raw_list(
    info: &ResourceInfo,
    items: &[Vec<u8>],
    revision: Revision,
    continue_token: Option<String>,
    remaining: Option<i64>,
) -> Response {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
        if let Some(remaining) = remaining.filter(|r| *r > 0) {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    let head = json!({
        "kind": format!("{}List", info.kind),
        "apiVersion": info.api_version(),
        "metadata": metadata,
    });
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    body.pop(); // reopen the object for "items"
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// How much of an oversized body is read and discarded before the 413 is
/// sent: a client still writing its body when the server closes gets a
/// broken pipe instead of the answer (Go's server likewise drains a
/// little before closing).
const MAX_DRAIN_BYTES: usize = 64 * 1024 * 1024;

/// Reads a request body up to the limit; 413 beyond it.
pub async fn read_body(body: Body) -> ApiResult<bytes::Bytes> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut data = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::BadRequest(format!("reading the request body failed: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        total += chunk.len();
        if total <= MAX_BODY_BYTES {
            data.extend_from_slice(&chunk);
        } else if total > MAX_BODY_BYTES + MAX_DRAIN_BYTES {
            break;
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(ApiError::RequestEntityTooLarge(format!(
            "the request body is too large: the limit is {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(data.freeze())
}

fn is_service(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.plural == "services"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_items_are_the_stored_object_with_its_resource_version() {
        let stored = json!({"apiVersion": "v1", "data": {"metadata": "x"}, "kind": "ConfigMap",
                            "metadata": {"name": "c", "labels": {"a": "b"}}, "zzz": [1, 2]});
        let kv = KeyValue {
            key: "/configmaps/ns/c".into(),
            value: serde_json::to_vec(&stored).unwrap(),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
        };
        let (bytes, metadata) = encode_list_item(&kv).unwrap();
        let item: Value = serde_json::from_slice(&bytes).unwrap();
        let mut expected = stored.clone();
        expected["metadata"]["resourceVersion"] = json!("7");
        assert_eq!(item, expected);
        assert_eq!(metadata["labels"]["a"], "b");
        assert_eq!(item, decode(&kv).unwrap(), "the same as the decoded form");

        let bare = KeyValue {
            value: br#"{"kind":"X","spec":{}}"#.to_vec(),
            ..kv
        };
        let (bytes, _) = encode_list_item(&bare).unwrap();
        let item: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(item["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn continue_tokens_round_trip_and_stay_in_their_prefix() {
        let token = encode_continue(42, "/pods/ns/b\0");
        assert_eq!(
            decode_continue(&token, "/pods/ns/").unwrap(),
            (42, "/pods/ns/b\0".to_string())
        );
        assert!(decode_continue(&token, "/secrets/").is_err());
        assert!(decode_continue("garbage!", "/pods/").is_err());
    }
}
