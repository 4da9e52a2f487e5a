//! The resource metrics API, `metrics.k8s.io/v1beta1`, served in process
//! (what metrics-server serves through aggregation in Kubernetes):
//! `NodeMetrics` (`nodes`) and `PodMetrics` (`pods`, per namespace or
//! across all), get and list, with label and field selectors. Read-only:
//! every other verb is 405.
//!
//! There is no scraping loop and no metrics storage: each request asks the
//! node agents concerned for their Summary (`GET /stats/summary`, the
//! agent's `server::stats`) and converts it as metrics-server does: CPU is
//! the `usageNanoCores` rate, memory the working set; a pod is left out
//! when one of its containers has no figure, and a node whose agent does
//! not answer is skipped. The agent computes the rates and reports their
//! window (`rudder.io/window-seconds`), which becomes `window`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rudder_apimachinery::resources::Amount;
use serde_json::{json, Value};

use crate::error::{ApiError, Target};
use crate::object::meta;
use crate::registry::ResourceInfo;
use crate::request::{Query, ResourcePath};
use crate::selection::Selection;
use crate::ApiServer;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
const API_VERSION: &str = "metrics.k8s.io/v1beta1";

/// How long a node agent may take to answer (it may sample for a second
/// when it has no recent sample), as metrics-server's scrape timeout.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest Summary read from a node agent.
const MAX_SUMMARY_BYTES: usize = 32 << 20;
/// The summary field carrying the rates' window (see `rudder-agent`).
const WINDOW_FIELD: &str = "rudder.io/window-seconds";

/// Whether the path is a metrics resource.
pub(crate) fn handles(path: &ResourcePath) -> bool {
    path.info.group == GROUP
}

pub(crate) async fn serve(
    server: &ApiServer,
    path: ResourcePath,
    method: &Method,
    raw_query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    match answer(server, path, method, raw_query, headers).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn answer(
    server: &ApiServer,
    path: ResourcePath,
    method: &Method,
    raw_query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw_query)?;
    if method != Method::GET || path.subresource.is_some() || query.flag("watch") {
        return Err(ApiError::MethodNotAllowed(
            "the server does not allow this method on the requested resource".into(),
        ));
    }
    let selection = Selection::from_query(&path.info, &query)?;
    let items = match path.info.plural.as_str() {
        "nodes" => node_metrics(server, path.name.as_deref(), &selection).await?,
        "pods" => {
            pod_metrics(
                server,
                path.namespace.as_deref(),
                path.name.as_deref(),
                &selection,
            )
            .await?
        }
        _ => return Err(ApiError::NotFoundPath),
    };
    let kind = path.info.kind.as_str();
    let body = match &path.name {
        Some(name) => {
            let Some(mut item) = items.into_iter().next() else {
                // metrics-server names pods "namespace/name" here.
                let shown = match &path.namespace {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.clone(),
                };
                let resource = kind.to_lowercase();
                return Err(ApiError::NotFound(Target {
                    qualified: format!("{resource}.{GROUP}"),
                    group: GROUP.into(),
                    resource,
                    name: shown,
                }));
            };
            item["kind"] = json!(kind);
            item["apiVersion"] = json!(API_VERSION);
            item
        }
        None if crate::table::wants_table(headers) => {
            crate::table::table(&path.info, &items, "", None)
        }
        None => json!({
            "kind": format!("{kind}List"),
            "apiVersion": API_VERSION,
            "metadata": {},
            "items": items,
        }),
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response())
}

/// Objects of a built-in resource, from the watch cache.
async fn objects(
    server: &ApiServer,
    plural: &str,
    namespace: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let info = server
        .registry()
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::Internal(format!("{plural} are not served")))?;
    let cache = server.caches().get(server.store(), &info.key_prefix());
    let (objects, _) = cache.snapshot(&info.list_prefix(namespace)).await;
    Ok(objects.iter().map(|o| (**o).clone()).collect())
}

/// The metrics object's `metadata`: its subject's name, namespace and
/// labels, created now (as metrics-server writes it).
fn metadata_of(subject: &Value) -> Value {
    let m = meta(subject);
    let mut metadata = json!({
        "name": m.get("name").cloned().unwrap_or(Value::Null),
        "creationTimestamp": rudder_apimachinery::time::now_rfc3339(),
    });
    if let Some(ns) = m.get("namespace") {
        metadata["namespace"] = ns.clone();
    }
    if let Some(labels) = m
        .get("labels")
        .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
    {
        metadata["labels"] = labels.clone();
    }
    metadata
}

async fn node_metrics(
    server: &ApiServer,
    name: Option<&str>,
    selection: &Selection,
) -> Result<Vec<Value>, ApiError> {
    let nodes: Vec<Value> = objects(server, "nodes", None)
        .await?
        .into_iter()
        .filter(|n| {
            name.is_none_or(|name| meta(n).get("name").and_then(Value::as_str) == Some(name))
        })
        .filter(|n| selection.matches(&json!({"metadata": metadata_of(n)})))
        .collect();
    let dialer = crate::node_proxy::NodeDialer::of(server);
    let summaries =
        futures::future::join_all(nodes.iter().map(|node| fetch_summary(&dialer, node))).await;
    let mut items = Vec::new();
    for (node, summary) in nodes.iter().zip(summaries) {
        let Some(summary) = summary else { continue };
        if let Some(item) = node_item(node, &summary) {
            items.push(item);
        }
    }
    Ok(items)
}

/// A node's `NodeMetrics` from its agent's Summary; None without both
/// figures.
fn node_item(node: &Value, summary: &Value) -> Option<Value> {
    let stats = summary.get("node")?;
    let usage = usage_of(stats)?;
    Some(json!({
        "metadata": metadata_of(node),
        "timestamp": stats.pointer("/cpu/time").cloned().unwrap_or(Value::Null),
        "window": window_of(summary),
        "usage": usage,
    }))
}

async fn pod_metrics(
    server: &ApiServer,
    namespace: Option<&str>,
    name: Option<&str>,
    selection: &Selection,
) -> Result<Vec<Value>, ApiError> {
    // Pods by node, selected by what their metrics object shows.
    let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for pod in objects(server, "pods", namespace).await? {
        let m = meta(&pod);
        if name.is_some_and(|name| m.get("name").and_then(Value::as_str) != Some(name)) {
            continue;
        }
        if !selection.matches(&json!({"metadata": metadata_of(&pod)})) {
            continue;
        }
        let Some(node) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        by_node.entry(node.to_owned()).or_default().push(pod);
    }
    if by_node.is_empty() {
        return Ok(Vec::new());
    }
    let nodes: BTreeMap<String, Value> = objects(server, "nodes", None)
        .await?
        .into_iter()
        .filter_map(|n| Some((meta(&n).get("name")?.as_str()?.to_owned(), n)))
        .filter(|(name, _)| by_node.contains_key(name))
        .collect();
    let dialer = crate::node_proxy::NodeDialer::of(server);
    let dialer = &dialer;
    let summaries = futures::future::join_all(
        nodes
            .iter()
            .map(|(name, node)| async move { (name.clone(), fetch_summary(dialer, node).await) }),
    )
    .await;
    let mut items = Vec::new();
    for (node, summary) in summaries {
        let Some(summary) = summary else { continue };
        for pod in by_node.get(&node).into_iter().flatten() {
            if let Some(item) = pod_item(pod, &summary) {
                items.push(item);
            }
        }
    }
    items.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                v.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                v.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(items)
}

/// A pod's `PodMetrics` from its node's Summary: None when the summary
/// does not have the pod, or lacks a figure for one of its containers.
fn pod_item(pod: &Value, summary: &Value) -> Option<Value> {
    let m = meta(pod);
    let (name, namespace) = (m.get("name")?.as_str()?, m.get("namespace")?.as_str()?);
    let uid = m.get("uid").and_then(Value::as_str);
    let stats = summary.get("pods")?.as_array()?.iter().find(|p| {
        let r = &p["podRef"];
        r["name"] == name
            && r["namespace"] == namespace
            && (uid.is_none()
                || r.get("uid")
                    .and_then(Value::as_str)
                    .is_none_or(|u| Some(u) == uid))
    })?;
    let mut containers = Vec::new();
    let mut timestamp = Value::Null;
    for c in stats.get("containers")?.as_array()? {
        containers.push(json!({"name": c.get("name")?, "usage": usage_of(c)?}));
        if timestamp.is_null() {
            timestamp = c.pointer("/cpu/time").cloned().unwrap_or(Value::Null);
        }
    }
    if containers.is_empty() {
        return None;
    }
    Some(json!({
        "metadata": metadata_of(pod),
        "timestamp": timestamp,
        "window": window_of(summary),
        "containers": containers,
    }))
}

/// `usage` from a Summary entry's cpu and memory: CPU in cores (`n`/`m`
/// quantities), the memory working set in bytes (binary quantities).
fn usage_of(stats: &Value) -> Option<Value> {
    let nano_cores = stats.pointer("/cpu/usageNanoCores")?.as_u64()?;
    let working_set = stats.pointer("/memory/workingSetBytes")?.as_u64()?;
    Some(json!({
        "cpu": cpu_quantity(nano_cores),
        "memory": memory_quantity(working_set),
    }))
}

/// CPU as metrics-server writes it: a decimal quantity of nanocores in
/// canonical form (`250m`, `1234567n`, `2`).
pub fn cpu_quantity(nano_cores: u64) -> String {
    Amount::parse(&format!("{nano_cores}n"))
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// Memory as metrics-server writes it: a binary quantity (`10Mi`,
/// `123456Ki`; plain bytes when not a multiple of 1024).
pub fn memory_quantity(bytes: u64) -> String {
    let text = if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    };
    Amount::parse(&text)
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// The rates' window as a Go duration string (`metav1.Duration`).
fn window_of(summary: &Value) -> Value {
    let seconds = summary
        .get(WINDOW_FIELD)
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    json!(go_duration(Duration::from_secs_f64(seconds.max(0.0))))
}

/// `time.Duration.String()`: `1.5s`, `1m0.25s`, `1h2m3s`, `0s`.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        // Below a second Go switches units; the windows served are never
        // that short, so milliseconds with a fraction suffice.
        return format!("{}ms", trim_fraction(nanos as f64 / 1e6));
    }
    let total_secs = d.as_secs();
    let (hours, minutes) = (total_secs / 3600, (total_secs / 60) % 60);
    let seconds = (total_secs % 60) as f64 + f64::from(d.subsec_nanos()) / 1e9;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{}s", trim_fraction(seconds)));
    out
}

fn trim_fraction(value: f64) -> String {
    let text = format!("{value:.9}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The node agent's Summary; None (logged) when it cannot be had.
async fn fetch_summary(dialer: &crate::node_proxy::NodeDialer, node: &Value) -> Option<Value> {
    let name = meta(node).get("name").and_then(Value::as_str).unwrap_or("");
    let address = match crate::node_proxy::node_address(node) {
        Ok(address) => address,
        Err(e) => {
            tracing::debug!(node = name, error = %e, "node has no address for metrics");
            return None;
        }
    };
    match tokio::time::timeout(SUMMARY_TIMEOUT, get_summary(dialer, &address)).await {
        Ok(Ok(summary)) => Some(summary),
        Ok(Err(e)) => {
            tracing::info!(node = name, address, error = %e, "cannot read the node's stats summary");
            None
        }
        Err(_) => {
            tracing::info!(node = name, address, "the node's stats summary timed out");
            None
        }
    }
}

async fn get_summary(
    dialer: &crate::node_proxy::NodeDialer,
    address: &str,
) -> Result<Value, ApiError> {
    let target = "/stats/summary";
    let url = dialer.url(address, target);
    let mut sender = dialer.connect(address, &url).await?;
    let request = hyper::Request::get(target)
        .header(header::HOST, address)
        .header(header::ACCEPT, "application/json")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ApiError::Internal(format!("Get {url:?}: {e}")))?;
    let code = response.status();
    let body = axum::body::to_bytes(
        axum::body::Body::new(response.into_body()),
        MAX_SUMMARY_BYTES,
    )
    .await
    .map_err(|e| ApiError::Internal(format!("Get {url:?}: {e}")))?;
    if !code.is_success() {
        return Err(ApiError::Internal(format!(
            "Get {url:?}: {code}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::Internal(format!("Get {url:?}: invalid summary: {e}")))
}

/// The resources this module serves, as the registry lists them.
pub(crate) fn resources() -> Vec<ResourceInfo> {
    [
        ("NodeMetrics", "nodes", false),
        ("PodMetrics", "pods", true),
    ]
    .into_iter()
    .map(|(kind, plural, namespaced)| ResourceInfo {
        group: GROUP.into(),
        version: VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: String::new(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        subresources: Vec::new(),
        verbs: vec!["get".into(), "list".into()],
        printer_columns: Vec::new(),
        custom: false,
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_written_as_metrics_server_writes_them() {
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(cpu_quantity(250_000_000), "250m");
        assert_eq!(cpu_quantity(1_500_000_000), "1500m");
        assert_eq!(cpu_quantity(2_000_000_000), "2");
        assert_eq!(cpu_quantity(123_456_789), "123456789n");
        assert_eq!(cpu_quantity(1_000), "1u");
        assert_eq!(memory_quantity(10 << 20), "10Mi");
        assert_eq!(memory_quantity(4096 * 3), "12Ki");
        assert_eq!(memory_quantity(12_345_678), "12345678");
        assert_eq!(memory_quantity(0), "0");
    }

    #[test]
    fn windows_print_as_go_durations() {
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(Duration::from_millis(61_250)), "1m1.25s");
        assert_eq!(go_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    fn summary() -> Value {
        json!({
            "node": {"nodeName": "n1",
                "cpu": {"time": "2024-01-01T00:00:10Z", "usageNanoCores": 1_500_000_000u64, "usageCoreNanoSeconds": 9},
                "memory": {"time": "2024-01-01T00:00:10Z", "workingSetBytes": 2u64 << 30}},
            "pods": [
                {"podRef": {"name": "web", "namespace": "default", "uid": "u1"},
                 "containers": [
                    {"name": "app", "cpu": {"time": "2024-01-01T00:00:10Z", "usageNanoCores": 250_000_000u64},
                     "memory": {"workingSetBytes": 10u64 << 20}},
                    {"name": "sidecar", "cpu": {"time": "2024-01-01T00:00:10Z", "usageNanoCores": 1_000_000u64},
                     "memory": {"workingSetBytes": 4096u64}}]},
                {"podRef": {"name": "partial", "namespace": "default", "uid": "u2"},
                 "containers": [{"name": "app", "cpu": {"usageCoreNanoSeconds": 5},
                     "memory": {"workingSetBytes": 4096u64}}]}
            ],
            WINDOW_FIELD: 15.0,
        })
    }

    #[test]
    fn node_metrics_come_from_the_summary_node() {
        let node = json!({"metadata": {"name": "n1", "labels": {"zone": "a"}}});
        let item = node_item(&node, &summary()).unwrap();
        assert_eq!(item["metadata"]["name"], "n1");
        assert_eq!(item["metadata"]["labels"]["zone"], "a");
        assert_eq!(item["timestamp"], "2024-01-01T00:00:10Z");
        assert_eq!(item["window"], "15s");
        assert_eq!(item["usage"], json!({"cpu": "1500m", "memory": "2Gi"}));
    }

    #[test]
    fn pod_metrics_need_every_container_and_the_same_uid() {
        let pod = |name: &str, uid: &str| json!({"metadata": {"name": name, "namespace": "default", "uid": uid, "labels": {"app": "web"}}});
        let item = pod_item(&pod("web", "u1"), &summary()).unwrap();
        assert_eq!(item["metadata"]["namespace"], "default");
        assert_eq!(item["metadata"]["labels"]["app"], "web");
        assert_eq!(item["window"], "15s");
        assert_eq!(
            item["containers"],
            json!([
                {"name": "app", "usage": {"cpu": "250m", "memory": "10Mi"}},
                {"name": "sidecar", "usage": {"cpu": "1m", "memory": "4Ki"}},
            ])
        );
        // A container without a rate drops its pod, as in metrics-server.
        assert!(pod_item(&pod("partial", "u2"), &summary()).is_none());
        // A pod recreated under the same name is not the one measured.
        assert!(pod_item(&pod("web", "other"), &summary()).is_none());
    }
}
