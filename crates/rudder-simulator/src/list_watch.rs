//! List, then watch from the list's resourceVersion, for ever: resumes a
//! watch the server ended, and lists again on 410 Gone or any error, so
//! the consumer always converges on the server's state.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::Resource;
use tokio::time::Instant;

use crate::retry::{api_code, Backoff};

/// How long the server keeps one watch open. kube-rs refuses more than
/// 295 s; the server ends the watch and this module resumes it.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// How long past its timeout a watch may stay silent before it is taken
/// for a dead connection and replaced.
const WATCH_GRACE: Duration = Duration::from_secs(30);

/// Objects per list page: big lists arrive in pieces, so a re-list of a
/// large cluster never holds all of it in memory at once.
const LIST_PAGE_SIZE: u32 = 500;

/// What the consumer is told.
#[derive(Debug)]
pub(crate) enum Change<K> {
    /// A (re-)list begins: forget which objects were seen.
    ListStarted,
    /// A page of the list.
    Listed(Vec<K>),
    /// The list is complete: objects not seen since `ListStarted` are gone.
    ListDone,
    Applied(K),
    Deleted(K),
}

/// Which objects to list and watch.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Selectors<'a> {
    pub labels: Option<&'a str>,
    pub fields: Option<&'a str>,
}

/// Runs for ever, handing every change to `apply`. `what` names the
/// resource in logs.
pub(crate) async fn list_watch<K, F>(
    api: Api<K>,
    what: &str,
    selectors: Selectors<'_>,
    mut apply: F,
) where
    K: Resource + Clone + DeserializeOwned + Debug,
    F: FnMut(Change<K>),
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let resource_version = match list(&api, selectors, &mut apply).await {
            Ok(resource_version) => resource_version,
            Err(err) => {
                tracing::warn!(resource = what, error = %err, "list failed; retrying");
                backoff.wait().await;
                continue;
            }
        };
        match watch(&api, selectors, resource_version, &mut apply, &mut backoff).await {
            WatchEnd::Expired => {
                tracing::debug!(resource = what, "watch expired (410 Gone); listing again");
            }
            WatchEnd::Failed(reason) => {
                tracing::warn!(resource = what, error = %reason, "watch failed; listing again");
            }
        }
        backoff.wait().await;
    }
}

/// Lists every page; returns the resourceVersion to watch from.
async fn list<K, F>(api: &Api<K>, selectors: Selectors<'_>, apply: &mut F) -> kube::Result<String>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    F: FnMut(Change<K>),
{
    apply(Change::ListStarted);
    let mut continue_token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(LIST_PAGE_SIZE);
        if let Some(labels) = selectors.labels {
            params = params.labels(labels);
        }
        if let Some(fields) = selectors.fields {
            params = params.fields(fields);
        }
        if let Some(token) = &continue_token {
            params = params.continue_token(token);
        }
        let page = api.list(&params).await?;
        apply(Change::Listed(page.items));
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => continue_token = Some(token),
            None => {
                apply(Change::ListDone);
                return Ok(page.metadata.resource_version.unwrap_or_default());
            }
        }
    }
}

enum WatchEnd {
    /// The resourceVersion is too old: list again.
    Expired,
    Failed(String),
}

/// Watches from `resource_version`, resuming whenever the server ends the
/// watch, until it expires or fails.
async fn watch<K, F>(
    api: &Api<K>,
    selectors: Selectors<'_>,
    mut resource_version: String,
    apply: &mut F,
    backoff: &mut Backoff,
) -> WatchEnd
where
    K: Resource + Clone + DeserializeOwned + Debug,
    F: FnMut(Change<K>),
{
    loop {
        let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        if let Some(labels) = selectors.labels {
            params = params.labels(labels);
        }
        if let Some(fields) = selectors.fields {
            params = params.fields(fields);
        }
        let started = Instant::now();
        let events = match api.watch(&params, &resource_version).await {
            Ok(events) => events,
            Err(err) if api_code(&err) == Some(410) => return WatchEnd::Expired,
            Err(err) => return WatchEnd::Failed(err.to_string()),
        };
        let mut events = std::pin::pin!(events);
        let deadline = started + Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)) + WATCH_GRACE;
        let mut received_any = false;
        loop {
            let event = match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(_) => return WatchEnd::Failed("the watch went silent past its timeout".into()),
            };
            received_any = true;
            match event {
                Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                    remember_version(&mut resource_version, &object);
                    apply(Change::Applied(object));
                    backoff.reset();
                }
                Ok(WatchEvent::Deleted(object)) => {
                    remember_version(&mut resource_version, &object);
                    apply(Change::Deleted(object));
                    backoff.reset();
                }
                Ok(WatchEvent::Bookmark(bookmark)) => {
                    resource_version = bookmark.metadata.resource_version;
                }
                Ok(WatchEvent::Error(status)) if status.code == 410 => return WatchEnd::Expired,
                Ok(WatchEvent::Error(status)) => return WatchEnd::Failed(status.message),
                Err(err) => return WatchEnd::Failed(err.to_string()),
            }
        }
        // The server ended the watch. One that ends at once and empty,
        // again and again, would spin: back off before resuming it.
        if !received_any && started.elapsed() < Duration::from_secs(1) {
            backoff.wait().await;
        }
    }
}

fn remember_version<K: Resource>(resource_version: &mut String, object: &K) {
    if let Some(version) = object.meta().resource_version.as_ref() {
        resource_version.clone_from(version);
    }
}
