//! Watches: a chunked stream of newline-separated JSON events, resumable
//! from any retained resourceVersion, with bookmarks and the initial state.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use rudder_store::{EventKind, Revision, StoreError, WatchMessage};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::cache::{CacheMessage, CachedEvent};

use crate::error::ApiError;
use crate::registry::ResourceInfo;
use crate::request::{Query, ResourcePath};
use crate::rest::{decode, ApiResult};
use crate::selection::Selection;
use crate::ApiServer;

/// How a watch starts.
enum Start {
    /// Send the current state as ADDED events, then changes after it.
    InitialState { bookmark_at_end: bool },
    /// Only changes after this revision.
    After(Revision),
}

struct WatchRequest {
    info: std::sync::Arc<ResourceInfo>,
    prefix: String,
    selection: Selection,
    bookmarks: bool,
    table: bool,
    timeout: Duration,
    start: Start,
}

impl ApiServer {
    pub(crate) async fn watch(
        &self,
        path: ResourcePath,
        query: Query,
        headers: &HeaderMap,
    ) -> ApiResult {
        let selection = Selection::from_query(&path.info, &query)?;
        let bookmarks = query.flag("allowWatchBookmarks");
        let timeout = match query.get("timeoutSeconds") {
            Some(t) => Duration::from_secs(
                t.parse()
                    .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {t:?}")))?,
            ),
            // kube-apiserver spreads watch lifetimes over 30–60 minutes so
            // that clients do not all reconnect at once.
            None => Duration::from_secs(1800 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 7),
        };
        let send_initial = match query.get("sendInitialEvents") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid sendInitialEvents {other:?}"
                )))
            }
        };
        let rv = query.get("resourceVersion");
        if send_initial.is_some() {
            if query.get("resourceVersionMatch") != Some("NotOlderThan") {
                return Err(ApiError::invalid(
                    &path.info,
                    "",
                    vec![crate::error::FieldCause::forbidden(
                        "resourceVersionMatch",
                        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                    )],
                ));
            }
            if send_initial == Some(true) && !bookmarks {
                return Err(ApiError::invalid(
                    &path.info,
                    "",
                    vec![crate::error::FieldCause::forbidden(
                        "allowWatchBookmarks",
                        "sendInitialEvents requires setting allowWatchBookmarks to true",
                    )],
                ));
            }
        }
        let start = match (send_initial, rv) {
            (Some(true), _) => Start::InitialState {
                bookmark_at_end: true,
            },
            (Some(false), None | Some("0")) => Start::After(self.store().revisions().await?.0),
            (Some(false), Some(rv)) | (None, Some(rv)) if rv != "0" => {
                Start::After(rv.parse().map_err(|_| {
                    ApiError::BadRequest(format!("invalid resource version {rv:?}"))
                })?)
            }
            _ => Start::InitialState {
                bookmark_at_end: false,
            },
        };
        let request = WatchRequest {
            prefix: path.info.list_prefix(path.namespace.as_deref()),
            info: path.info.clone(),
            selection,
            bookmarks,
            table: crate::table::wants_table(headers),
            timeout,
            start,
        };
        let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(64);
        let server = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(request.timeout);
            tokio::pin!(deadline);
            tokio::select! {
                _ = server.run_watch(&request, &tx) => {}
                _ = &mut deadline => {}
                _ = tx.closed() => {}
                _ = server.closing() => {}
            }
        });
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-cache, private"),
            ],
            body,
        )
            .into_response())
    }

    async fn run_watch(
        &self,
        req: &WatchRequest,
        tx: &mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    ) {
        let send = |event: Value| async move {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            tx.send(Ok(bytes::Bytes::from(line))).await.is_ok()
        };
        let cache = self.caches().get(self.store(), &req.info.key_prefix());
        let (subscription, mut last, bookmark_at_end) = match req.start {
            Start::InitialState { bookmark_at_end } => {
                let sub = cache.subscribe_with_state(&req.prefix).await;
                let revision = sub.revision;
                (sub, revision, bookmark_at_end)
            }
            Start::After(rev) => match cache.subscribe_after(rev).await {
                Some(sub) => (sub, rev, false),
                // Older than the cache's window: replay from the store's
                // history, which answers 410 once that is compacted too.
                None => return self.run_store_watch(req, tx, rev).await,
            },
        };
        let mut rx = subscription.rx;
        for event in &subscription.backlog {
            if !event.key.starts_with(&req.prefix) {
                continue;
            }
            let initial = matches!(req.start, Start::InitialState { .. });
            let kind = if initial {
                req.selection.matches(&event.object).then_some("ADDED")
            } else {
                if event.revision <= last {
                    continue;
                }
                req.kind_of_cached(event)
            };
            if let Some(kind) = kind {
                if tx.send(Ok(req.cached_line(kind, event))).await.is_err() {
                    return;
                }
            }
        }
        last = last.max(subscription.revision);
        if bookmark_at_end {
            let mut bookmark = req.bookmark(last);
            bookmark["object"]["metadata"]["annotations"] =
                json!({"k8s.io/initial-events-end": "true"});
            if !send(bookmark).await {
                return;
            }
        }
        loop {
            match rx.recv().await {
                Ok(CacheMessage::Event(event)) => {
                    if event.revision <= last {
                        continue;
                    }
                    last = event.revision;
                    if !event.key.starts_with(&req.prefix) {
                        continue;
                    }
                    if let Some(kind) = req.kind_of_cached(&event) {
                        if tx.send(Ok(req.cached_line(kind, &event))).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(CacheMessage::Progress(revision)) => {
                    last = last.max(revision);
                    if req.bookmarks && !send(req.bookmark(last)).await {
                        return;
                    }
                }
                Ok(CacheMessage::Reset) => {
                    send(error_event(ApiError::Gone(format!(
                        "too old resource version: {last}"
                    ))))
                    .await;
                    return;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Kubernetes closes watchers that cannot keep up; the
                    // client resumes or re-lists.
                    send(error_event(ApiError::Gone(format!(
                        "the watch fell behind and was closed; resume from resource version {last}"
                    ))))
                    .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// A watch served from the store's history (revisions older than the
    /// cache holds).
    async fn run_store_watch(
        &self,
        req: &WatchRequest,
        tx: &mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
        after: Revision,
    ) {
        let send = |event: Value| async move {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            tx.send(Ok(bytes::Bytes::from(line))).await.is_ok()
        };
        let mut stream = match self.store().watch(&req.prefix, after + 1).await {
            Ok(stream) => stream,
            Err(err) => {
                send(error_event(watch_error(err, after))).await;
                return;
            }
        };
        while let Some(message) = stream.recv().await {
            match message {
                Ok(WatchMessage::Events(events)) => {
                    for event in events {
                        for (kind, obj) in req.translate(&event) {
                            if !send(req.event(kind, obj)).await {
                                return;
                            }
                        }
                    }
                }
                Ok(WatchMessage::Progress(rev)) => {
                    if req.bookmarks && !send(req.bookmark(rev)).await {
                        return;
                    }
                }
                Err(err) => {
                    send(error_event(watch_error(err, after))).await;
                    return;
                }
            }
        }
    }
}

impl WatchRequest {
    /// The event type a cached change is to this watcher, if any (as
    /// [`translate`](Self::translate) does for store events).
    fn kind_of_cached(&self, event: &CachedEvent) -> Option<&'static str> {
        let prev_matches = event
            .prev
            .as_ref()
            .is_some_and(|p| self.selection.matches(p));
        if event.deleted {
            return prev_matches.then_some("DELETED");
        }
        let matches = self.selection.matches(&event.object);
        match (event.prev.is_some(), prev_matches, matches) {
            (true, true, true) => Some("MODIFIED"),
            (_, false, true) => Some("ADDED"),
            (true, true, false) => Some("DELETED"),
            _ => None,
        }
    }

    /// The bytes to send for a cached change, shared by every plain watcher.
    fn cached_line(&self, kind: &str, event: &CachedEvent) -> bytes::Bytes {
        if self.table {
            let mut line =
                serde_json::to_vec(&self.event(kind, (*event.object).clone())).unwrap_or_default();
            line.push(b'\n');
            return line.into();
        }
        event.line(kind)
    }

    /// A store event as the watch events the client sees (none, one, or
    /// an ADDED/DELETED when a change moves the object into or out of the
    /// selection).
    fn translate(&self, event: &rudder_store::Event) -> Vec<(&'static str, Value)> {
        let prev = event.prev.as_ref().and_then(|kv| decode(kv).ok());
        let prev_matches = prev.as_ref().is_some_and(|p| self.selection.matches(p));
        match event.kind {
            EventKind::Delete => match prev {
                Some(mut obj) if prev_matches => {
                    crate::object::meta_mut(&mut obj).insert(
                        "resourceVersion".into(),
                        json!(event.kv.mod_revision.to_string()),
                    );
                    vec![("DELETED", obj)]
                }
                _ => vec![],
            },
            EventKind::Put => {
                let Ok(obj) = decode(&event.kv) else {
                    return vec![];
                };
                let matches = self.selection.matches(&obj);
                match (prev.is_some(), prev_matches, matches) {
                    (true, true, true) => vec![("MODIFIED", obj)],
                    (_, false, true) => vec![("ADDED", obj)],
                    (true, true, false) => vec![("DELETED", obj)],
                    _ => vec![],
                }
            }
        }
    }

    fn event(&self, kind: &str, obj: Value) -> Value {
        if self.table {
            let rv = crate::object::meta_str(&obj, "resourceVersion")
                .unwrap_or("")
                .to_owned();
            return json!({"type": kind, "object": crate::table::table(&self.info, &[obj], &rv, None)});
        }
        json!({"type": kind, "object": obj})
    }

    fn bookmark(&self, rev: Revision) -> Value {
        json!({
            "type": "BOOKMARK",
            "object": {
                "kind": self.info.kind,
                "apiVersion": self.info.api_version(),
                "metadata": {"resourceVersion": rev.to_string()},
            },
        })
    }
}

fn watch_error(err: StoreError, after: Revision) -> ApiError {
    match err {
        StoreError::Compacted { compacted, .. } => ApiError::Gone(if compacted > 0 {
            format!("too old resource version: {after} ({compacted})")
        } else {
            format!("too old resource version: {after}")
        }),
        other => other.into(),
    }
}

fn error_event(err: ApiError) -> Value {
    json!({"type": "ERROR", "object": err.status()})
}
