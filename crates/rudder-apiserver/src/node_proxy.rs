//! The pod subresources the node agent serves: `pods/{name}/log`, `exec`,
//! `attach` and `portforward`. As kube-apiserver does, the server checks the
//! pod (and its container), finds the node agent of `spec.nodeName` (the
//! Node's address and `status.daemonEndpoints.kubeletEndpoint.Port`) and
//! proxies the request there: the log body is streamed back as it comes;
//! upgrade requests (WebSocket, SPDY) are forwarded and, once the node agent
//! switches protocols, the bytes are spliced both ways.
//!
//! Plain HTTP to the node agent for now: the kubelet's TLS and the API
//! server's client certificate arrive with the security work.

use std::collections::HashSet;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::error::{ApiError, FieldCause, Invalid, Target};
use crate::request::ResourcePath;
use crate::ApiServer;

/// The port a Node that reports none is reached at (the kubelet's default).
const DEFAULT_KUBELET_PORT: i64 = 10250;
/// How much of a failed node agent answer is kept for the error.
const MAX_ERROR_BODY: usize = 50_000;

/// Whether the request is for a pod subresource served by the node agent.
pub(crate) fn handles(path: &ResourcePath) -> bool {
    path.info.group.is_empty()
        && path.info.plural == "pods"
        && path.name.is_some()
        && matches!(
            path.subresource.as_deref(),
            Some("log" | "exec" | "attach" | "portforward")
        )
}

/// Serves one request [`handles`] accepted.
pub(crate) async fn serve(server: &ApiServer, path: ResourcePath, request: Request) -> Response {
    match proxy(server, path, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn proxy(
    server: &ApiServer,
    path: ResourcePath,
    request: Request,
) -> Result<Response, ApiError> {
    let sub = path.subresource.clone().unwrap_or_default();
    let name = path.name.clone().unwrap_or_default();
    let namespace = path.namespace.clone().unwrap_or_default();
    let method = request.method().clone();
    let allowed = match sub.as_str() {
        "log" => method == Method::GET,
        _ => method == Method::GET || method == Method::POST,
    };
    if !allowed {
        return Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the {sub} subresource of pods"
        )));
    }
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if sub == "log" {
        let options = LogOptions::parse(&pairs)?;
        options.validate(&path, &name)?;
        let (pod, _) = server
            .read_object(&path.info, Some(&namespace), &name)
            .await?;
        let container = validate_container(&pod, &name, options.container.as_deref())?;
        let Some(node) = node_name(&pod) else {
            // kube-apiserver streams nothing for a pod not yet scheduled.
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        let address = kubelet_address(server, &node).await?;
        let target = format!(
            "/containerLogs/{}/{}/{}{}",
            segment(&namespace),
            segment(&name),
            segment(&container),
            options.kubelet_query()
        );
        return proxy_log(&NodeDialer::of(server), &address, &target, &name).await;
    }

    let (pod, _) = server
        .read_object(&path.info, Some(&namespace), &name)
        .await?;
    let flag = |key: &str| query_bool(&pairs, key);
    let mut params: Vec<(&str, String)> = Vec::new();
    let target = if sub == "portforward" {
        let ports: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == "ports")
            .flat_map(|(_, v)| v.split(','))
            .filter(|p| !p.is_empty())
            .collect();
        for port in &ports {
            port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                ApiError::BadRequest(format!("invalid port {port:?}: must be 1-65535"))
            })?;
        }
        let node = node_name(&pod).ok_or_else(|| no_host(&name))?;
        if !ports.is_empty() {
            params.push(("port", ports.join(",")));
        }
        let address = kubelet_address(server, &node).await?;
        (
            address,
            format!("/portForward/{}/{}", segment(&namespace), segment(&name)),
        )
    } else {
        let container = query_get(&pairs, "container");
        let container = validate_container(&pod, &name, container)?;
        let node = node_name(&pod).ok_or_else(|| no_host(&name))?;
        for (key, on) in [
            ("stdin", flag("stdin")),
            ("stdout", flag("stdout")),
            ("stderr", flag("stderr")),
            ("tty", flag("tty")),
        ] {
            if on {
                params.push((key, "1".into()));
            }
        }
        if sub == "exec" {
            for (_, command) in pairs.iter().filter(|(k, _)| k == "command") {
                params.push(("command", command.clone()));
            }
        }
        let address = kubelet_address(server, &node).await?;
        (
            address,
            format!(
                "/{sub}/{}/{}/{}",
                segment(&namespace),
                segment(&name),
                segment(&container)
            ),
        )
    };
    if !is_upgrade(request.headers()) {
        return Err(ApiError::BadRequest("Upgrade request required".into()));
    }
    let params = encode(&params);
    let (address, mut target_path) = target;
    if !params.is_empty() {
        target_path = format!("{target_path}?{params}");
    }
    proxy_upgrade(&NodeDialer::of(server), &address, &target_path, request).await
}

/// `PodLogOptions` from the query.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct LogOptions {
    container: Option<String>,
    follow: bool,
    previous: bool,
    timestamps: bool,
    since_seconds: Option<i64>,
    since_time: Option<String>,
    tail_lines: Option<i64>,
    limit_bytes: Option<i64>,
}

impl LogOptions {
    fn parse(pairs: &[(String, String)]) -> Result<LogOptions, ApiError> {
        let int = |key: &str| -> Result<Option<i64>, ApiError> {
            query_get(pairs, key)
                .map(|v| {
                    v.parse::<i64>().map_err(|_| {
                        ApiError::BadRequest(format!(
                            "strconv.ParseInt: parsing {v:?}: invalid syntax"
                        ))
                    })
                })
                .transpose()
        };
        let since_time = query_get(pairs, "sinceTime")
            .map(|t| {
                let at = t.parse::<jiff::Timestamp>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "parsing time {t:?} as \"2006-01-02T15:04:05Z07:00\": cannot parse"
                    ))
                })?;
                // Sent on as RFC 3339 in seconds, as kube-apiserver does.
                Ok::<_, ApiError>(format!("{:.0}", at))
            })
            .transpose()?;
        Ok(LogOptions {
            container: query_get(pairs, "container").map(str::to_owned),
            follow: query_bool(pairs, "follow"),
            previous: query_bool(pairs, "previous"),
            timestamps: query_bool(pairs, "timestamps"),
            since_seconds: int("sinceSeconds")?,
            since_time,
            tail_lines: int("tailLines")?,
            limit_bytes: int("limitBytes")?,
        })
    }

    /// `ValidatePodLogOptions`.
    fn validate(&self, path: &ResourcePath, name: &str) -> Result<(), ApiError> {
        let mut causes = Vec::new();
        let invalid = |field: &str, value: i64, detail: &str| FieldCause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value}: {detail}"),
        };
        if let Some(n) = self.tail_lines.filter(|n| *n < 0) {
            causes.push(invalid(
                "tailLines",
                n,
                "must be greater than or equal to 0",
            ));
        }
        if let Some(n) = self.limit_bytes.filter(|n| *n < 1) {
            causes.push(invalid("limitBytes", n, "must be greater than 0"));
        }
        if self.since_seconds.is_some() && self.since_time.is_some() {
            causes.push(FieldCause::forbidden(
                "",
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            ));
        }
        if let Some(n) = self.since_seconds.filter(|n| *n < 1) {
            causes.push(invalid("sinceSeconds", n, "must be greater than 0"));
        }
        if causes.is_empty() {
            return Ok(());
        }
        Err(ApiError::Invalid(Box::new(Invalid {
            kind: "PodLogOptions".into(),
            target: Target::new(&path.info, name),
            causes,
        })))
    }

    /// The node agent's query, as kube-apiserver builds it.
    fn kubelet_query(&self) -> String {
        let mut params = form_urlencoded::Serializer::new(String::new());
        if self.follow {
            params.append_pair("follow", "true");
        }
        if self.previous {
            params.append_pair("previous", "true");
        }
        if self.timestamps {
            params.append_pair("timestamps", "true");
        }
        if let Some(n) = self.since_seconds {
            params.append_pair("sinceSeconds", &n.to_string());
        }
        if let Some(t) = &self.since_time {
            params.append_pair("sinceTime", t);
        }
        if let Some(n) = self.tail_lines {
            params.append_pair("tailLines", &n.to_string());
        }
        if let Some(n) = self.limit_bytes {
            params.append_pair("limitBytes", &n.to_string());
        }
        let query = params.finish();
        if query.is_empty() {
            query
        } else {
            format!("?{query}")
        }
    }
}

fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// A boolean option as Kubernetes converts query strings: absent is false;
/// `0`, `f`, `false` (any case) are false; anything else is true.
fn query_bool(pairs: &[(String, String)], key: &str) -> bool {
    match pairs.iter().find(|(k, _)| k == key) {
        None => false,
        Some((_, v)) => {
            !(v == "0" || v.eq_ignore_ascii_case("f") || v.eq_ignore_ascii_case("false"))
        }
    }
}

/// A query string of `pairs`.
fn encode(pairs: &[(&str, String)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        query.append_pair(key, value);
    }
    query.finish()
}

/// A path segment, percent-encoded.
fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn no_host(name: &str) -> ApiError {
    ApiError::BadRequest(format!("pod {name} does not have a host assigned"))
}

fn node_name(pod: &Value) -> Option<String> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// The container a request is for: the one named, which must exist; or the
/// only one. The message lists every container as kube-apiserver does
/// (init containers first, then containers, then ephemeral ones).
fn validate_container(
    pod: &Value,
    name: &str,
    container: Option<&str>,
) -> Result<String, ApiError> {
    let list = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = list("containers");
    let all: Vec<String> = list("initContainers")
        .into_iter()
        .chain(containers.iter().cloned())
        .chain(list("ephemeralContainers"))
        .collect();
    match container {
        Some(wanted) => {
            if all.iter().any(|c| c == wanted) {
                Ok(wanted.to_owned())
            } else {
                Err(ApiError::BadRequest(format!(
                    "container {wanted} is not valid for pod {name}"
                )))
            }
        }
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}"
            ))),
            _ => Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                all.join(" ")
            ))),
        },
    }
}

/// `host:port` of the node agent of `node`.
async fn kubelet_address(server: &ApiServer, node: &str) -> Result<String, ApiError> {
    let info = server
        .registry()
        .get("", "v1", "nodes")
        .ok_or_else(|| ApiError::Internal("nodes are not served".into()))?;
    let (node_object, _) = server.read_object(&info, None, node).await?;
    node_address(&node_object)
}

/// The address to reach a Node's agent at: its InternalIP, else its
/// ExternalIP, else its Hostname; the port it reports, else 10250.
pub(crate) fn node_address(node: &Value) -> Result<String, ApiError> {
    let addresses: Vec<(&str, &str)> = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|a| {
                    Some((
                        a.get("type")?.as_str()?,
                        a.get("address")?.as_str().filter(|s| !s.is_empty())?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let host = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|kind| addresses.iter().find(|(t, _)| t == kind).map(|(_, a)| *a))
        .ok_or_else(|| {
            let known: Vec<String> = addresses
                .iter()
                .map(|(t, a)| format!("{{{t} {a}}}"))
                .collect();
            ApiError::Internal(format!(
                "no preferred addresses found; known addresses: [{}]",
                known.join(" ")
            ))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .filter(|p| *p > 0 && *p < 65536)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// How the API server reaches node agents: plain HTTP on an unsecured
/// server, else HTTPS with its own client certificate, verifying the
/// agent's serving certificate against the cluster CA.
#[derive(Clone)]
pub(crate) struct NodeDialer {
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl NodeDialer {
    pub(crate) fn of(server: &ApiServer) -> Self {
        NodeDialer {
            tls: server
                .security()
                .and_then(|s| s.config.kubelet_client.clone()),
        }
    }

    /// `scheme://address/target`, for messages.
    pub(crate) fn url(&self, address: &str, target: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{address}{target}")
    }

    /// Opens an HTTP/1.1 connection to the node agent (upgrades allowed).
    pub(crate) async fn connect(
        &self,
        address: &str,
        url: &str,
    ) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>, ApiError>
    {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| ApiError::Internal(format!("Get {url:?}: dial tcp {address}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return handshake(TokioIo::new(stream), url).await;
        };
        let host = address
            .rsplit_once(':')
            .map_or(address, |(host, _)| host)
            .trim_matches(|c| c == '[' || c == ']');
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
            Err(_) => rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| ApiError::Internal(format!("Get {url:?}: {e}")))?,
        };
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, stream)
            .await
            .map_err(|e| ApiError::Internal(format!("Get {url:?}: tls: {e}")))?;
        handshake(TokioIo::new(stream), url).await
    }
}

async fn handshake<IO>(
    io: IO,
    url: &str,
) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>, ApiError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ApiError::Internal(format!("Get {url:?}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "node agent connection ended");
        }
    });
    Ok(sender)
}

async fn proxy_log(
    dialer: &NodeDialer,
    address: &str,
    target: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let url = dialer.url(address, target);
    let mut sender = dialer.connect(address, &url).await?;
    let request = hyper::Request::get(target)
        .header(header::HOST, address)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ApiError::Internal(format!("Get {url:?}: {e}")))?;
    let code = response.status();
    if code.is_success() {
        return Ok((
            code,
            [(header::CONTENT_TYPE, "text/plain")],
            Body::new(response.into_body()),
        )
            .into_response());
    }
    let body = axum::body::to_bytes(Body::new(response.into_body()), MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    Ok(node_error(code, &text, name))
}

/// A failed node agent answer, as kube-apiserver's response checker reports
/// it: 500 as an internal error, 400 as a bad request carrying its text,
/// anything else as a generic server response.
fn node_error(code: StatusCode, text: &str, name: &str) -> Response {
    match code {
        StatusCode::INTERNAL_SERVER_ERROR => {
            ApiError::Internal(format!("Internal error occurred: {text}")).into_response()
        }
        StatusCode::BAD_REQUEST => ApiError::BadRequest(text.to_owned()).into_response(),
        _ => {
            let (reason, message) = match code {
                StatusCode::NOT_FOUND => (
                    "NotFound",
                    "the server could not find the requested resource",
                ),
                StatusCode::UNPROCESSABLE_ENTITY => (
                    "Invalid",
                    "the server rejected our request due to an error in our request",
                ),
                StatusCode::FORBIDDEN => ("Forbidden", text),
                StatusCode::UNAUTHORIZED => (
                    "Unauthorized",
                    "the server has asked for the client to provide credentials",
                ),
                _ => ("", "the server responded with an unexpected status"),
            };
            let status = json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": format!("{message} ( pods/log {name})"),
                "reason": reason,
                "details": {
                    "name": name,
                    "kind": "pods/log",
                    "causes": [{"reason": "UnexpectedServerResponse", "message": text}],
                },
                "code": code.as_u16(),
            });
            (code, axum::Json(status)).into_response()
        }
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Headers that describe the hop, not the request.
fn hop_by_hop() -> HashSet<HeaderName> {
    [
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
    ]
    .into_iter()
    .collect()
}

/// Forwards an upgrade request; once the node agent switches protocols,
/// splices the two upgraded connections.
async fn proxy_upgrade(
    dialer: &NodeDialer,
    address: &str,
    target: &str,
    mut request: Request,
) -> Result<Response, ApiError> {
    let url = dialer.url(address, target);
    let mut sender = dialer.connect(address, &url).await?;
    let skip = hop_by_hop();
    let mut forward = hyper::Request::builder()
        .method(request.method().clone())
        .uri(target)
        .header(header::HOST, address);
    for (key, value) in request.headers() {
        if !skip.contains(key) {
            forward = forward.header(key, value);
        }
    }
    let forward = forward
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = sender
        .send_request(forward)
        .await
        .map_err(|e| ApiError::Internal(format!("error dialing backend: {e}")))?;
    let code = response.status();
    if code != StatusCode::SWITCHING_PROTOCOLS {
        // Refused: the node agent's answer goes back as it is.
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(Body::new(response.into_body()), MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let mut out = (code, body).into_response();
        if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
            out.headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
        }
        return Ok(out);
    }
    let backend = hyper::upgrade::on(&mut response);
    let client = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let (backend, client) = match tokio::try_join!(backend, client) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "a streaming upgrade failed");
                return;
            }
        };
        let (mut backend, mut client) = (TokioIo::new(backend), TokioIo::new(client));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(error = %e, "a streaming connection ended");
        }
    });
    let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (key, value) in response.headers() {
        if !skip.contains(key) {
            out = out.header(key, value);
        }
    }
    out.body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn containers_are_validated_as_kube_apiserver_does() {
        let one = pod(json!({"containers": [{"name": "c"}]}));
        assert_eq!(validate_container(&one, "p", None).unwrap(), "c");
        assert_eq!(validate_container(&one, "p", Some("c")).unwrap(), "c");
        assert_eq!(
            validate_container(&one, "p", Some("x"))
                .unwrap_err()
                .to_string(),
            "container x is not valid for pod p"
        );
        let many = pod(json!({
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "a"}, {"name": "b"}],
        }));
        let err = validate_container(&many, "p", None).unwrap_err();
        assert_eq!(err.code(), StatusCode::BAD_REQUEST);
        assert_eq!(
            err.to_string(),
            "a container name must be specified for pod p, choose one of: [init a b]"
        );
        assert_eq!(
            validate_container(&many, "p", Some("init")).unwrap(),
            "init"
        );
        assert_eq!(
            validate_container(&pod(json!({})), "p", None)
                .unwrap_err()
                .to_string(),
            "a container name must be specified for pod p"
        );
    }

    #[test]
    fn node_addresses_prefer_the_internal_ip() {
        let node = json!({"status": {
            "addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "10.0.0.5"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10350}},
        }});
        assert_eq!(node_address(&node).unwrap(), "10.0.0.5:10350");
        let bare = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        assert_eq!(node_address(&bare).unwrap(), "n1:10250");
        let v6 = json!({"status": {"addresses": [{"type": "InternalIP", "address": "fd00::1"}]}});
        assert_eq!(node_address(&v6).unwrap(), "[fd00::1]:10250");
        assert!(node_address(&json!({"status": {}}))
            .unwrap_err()
            .to_string()
            .starts_with("no preferred addresses found"));
    }

    #[test]
    fn log_options_parse_validate_and_forward() {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(
            b"container=c&follow=true&tailLines=10&timestamps=1&sinceTime=2024-01-02T03:04:05.678Z",
        )
        .into_owned()
        .collect();
        let options = LogOptions::parse(&pairs).unwrap();
        assert_eq!(options.container.as_deref(), Some("c"));
        assert_eq!(
            options.kubelet_query(),
            "?follow=true&timestamps=true&sinceTime=2024-01-02T03%3A04%3A05Z&tailLines=10"
        );
        assert_eq!(LogOptions::default().kubelet_query(), "");
        let registry = crate::registry::Registry::with_builtins();
        let info = registry.get("", "v1", "pods").unwrap();
        let path = ResourcePath {
            info,
            namespace: Some("default".into()),
            name: Some("p".into()),
            subresource: Some("log".into()),
        };
        let bad = LogOptions {
            tail_lines: Some(-1),
            limit_bytes: Some(0),
            ..Default::default()
        };
        let err = bad.validate(&path, "p").unwrap_err();
        assert_eq!(err.code(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            err.to_string(),
            "PodLogOptions \"p\" is invalid: [tailLines: Invalid value: -1: must be greater than or equal to 0, limitBytes: Invalid value: 0: must be greater than 0]"
        );
        let parse_err = LogOptions::parse(&[("tailLines".into(), "x".into())]).unwrap_err();
        assert_eq!(parse_err.code(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn upgrades_are_recognized() {
        let mut headers = HeaderMap::new();
        assert!(!is_upgrade(&headers));
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        headers.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(is_upgrade(&headers));
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
