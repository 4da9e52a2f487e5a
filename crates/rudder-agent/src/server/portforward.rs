//! `/portForward/{namespace}/{pod}`: TCP connections to ports of a pod,
//! opened on the loopback address of the pod's network namespace (see
//! [`RuntimeService::port_forward`]).
//!
//! Three transports, as the kubelet (behind kube-apiserver) serves them:
//! - **SPDY/3.1** after an HTTP upgrade (`Upgrade: SPDY/3.1`,
//!   `X-Stream-Protocol-Version: portforward.k8s.io`): client-go before 1.31,
//!   and kubectl's fallback.
//! - **SPDY tunnelled in a WebSocket** (subprotocol
//!   `SPDY/3.1+portforward.k8s.io`): kubectl 1.31 and later. The binary
//!   messages carry the SPDY byte stream unchanged.
//!
//!   On SPDY, each forwarded connection is a pair of client streams sharing a
//!   `requestid` header, one with `streamtype: error` and one with
//!   `streamtype: data`, and a `port` header. Bytes flow on the data stream;
//!   a failure is written as text on the error stream. When the pod closes
//!   the connection, the server finishes the data stream, then the error
//!   stream (the client waits for that end before it forgets the
//!   connection).
//! - **The channel protocol** over a WebSocket (`v4.channel.k8s.io`, the
//!   Python client): the ports come from the `ports` query parameter, and
//!   port *i* uses channel `2i` for data and `2i+1` for errors; the first
//!   message on each channel is the port, 2 bytes little-endian.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use rudder_cri::cri::{PodSandboxFilter, PodSandboxState, RuntimeService, LABEL_POD_UID};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::exec::close_normally;
use super::spdy::{self, IncomingStream};
use super::{query_pairs, text_error, ServerState};

/// The port-forward protocol name (`X-Stream-Protocol-Version`).
pub const PORT_FORWARD_V1: &str = "portforward.k8s.io";
/// The WebSocket subprotocol of SPDY tunnelled in a WebSocket.
pub const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The WebSocket channel protocol of port forwarding.
pub const CHANNEL_V4: &str = "v4.channel.k8s.io";
/// The header naming the stream protocol of an upgrade.
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// The pod a request forwards to.
#[derive(Clone)]
struct Target {
    runtime: Arc<dyn RuntimeService>,
    sandbox: String,
    /// `namespace/name`, for error messages.
    pod: String,
    uid: String,
}

impl Target {
    async fn connect(&self, port: u16) -> Result<TcpStream, String> {
        let (runtime, sandbox) = (self.runtime.clone(), self.sandbox.clone());
        let connected =
            tokio::task::spawn_blocking(move || runtime.port_forward(&sandbox, port)).await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(self.error(port, &e.to_string())),
            Err(e) => return Err(self.error(port, &e.to_string())),
        };
        stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream))
            .map_err(|e| self.error(port, &e.to_string()))
    }

    /// The kubelet's wording of a failed forward.
    fn error(&self, port: u16, cause: &str) -> String {
        format!(
            "error forwarding port {port} to pod {}, uid {}: {cause}",
            self.pod, self.uid
        )
    }
}

/// `GET|POST /portForward/{namespace}/{pod}`.
pub async fn port_forward(
    State(state): State<ServerState>,
    Path((namespace, pod)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let target = match find_pod(&state.runtime, &namespace, &pod).await {
        Ok(Some(target)) => target,
        Ok(None) => return text_error(StatusCode::NOT_FOUND, "pod does not exist"),
        Err(message) => return text_error(StatusCode::INTERNAL_SERVER_ERROR, message),
    };
    if is_websocket(request.headers()) {
        let (mut parts, _body) = request.into_parts();
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade.protocols([SPDY_TUNNEL, CHANNEL_V4]),
            Err(rejection) => return rejection.into_response(),
        };
        let protocol = upgrade
            .selected_protocol()
            .and_then(|p| p.to_str().ok())
            .map(str::to_owned);
        return match protocol.as_deref() {
            Some(SPDY_TUNNEL) => upgrade.on_upgrade(move |socket| async move {
                let (io, pump) = websocket_byte_stream(socket);
                let served = serve_spdy(io, target).await;
                pump.abort();
                if let Err(e) = served {
                    tracing::debug!(error = %e, "a tunnelled port-forward connection failed");
                }
            }),
            Some(CHANNEL_V4) => {
                let ports = match parse_ports(query.as_deref()) {
                    Ok(ports) => ports,
                    Err(message) => return text_error(StatusCode::BAD_REQUEST, message),
                };
                upgrade.on_upgrade(move |socket| serve_channels(socket, target, ports))
            }
            _ => text_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "none of the requested WebSocket subprotocols is supported for port forwarding: use {SPDY_TUNNEL} or {CHANNEL_V4}"
                ),
            ),
        };
    }
    if is_spdy_upgrade(request.headers()) {
        let offered: Vec<String> = request
            .headers()
            .get_all(PROTOCOL_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
            .collect();
        if !offered.is_empty() && !offered.iter().any(|p| p == PORT_FORWARD_V1) {
            return text_error(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [\"{PORT_FORWARD_V1}\"]"
                ),
            );
        }
        let mut request = request;
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    if let Err(e) = serve_spdy(TokioIo::new(upgraded), target).await {
                        tracing::debug!(error = %e, "a port-forward connection failed");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "a port-forward upgrade failed"),
            }
        });
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        headers.insert(PROTOCOL_HEADER, HeaderValue::from_static(PORT_FORWARD_V1));
        return response;
    }
    text_error(StatusCode::BAD_REQUEST, "Upgrade request required")
}

/// The newest sandbox of the pod, ready ones first.
async fn find_pod(
    runtime: &Arc<dyn RuntimeService>,
    namespace: &str,
    pod: &str,
) -> Result<Option<Target>, String> {
    let runtime = runtime.clone();
    let (namespace, pod) = (namespace.to_string(), pod.to_string());
    tokio::task::spawn_blocking(move || {
        let mut sandboxes: Vec<_> = runtime
            .list_pod_sandbox(&PodSandboxFilter::default())
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|s| s.metadata.namespace == namespace && s.metadata.name == pod)
            .collect();
        sandboxes.sort_by_key(|s| (s.state == PodSandboxState::SandboxReady, s.created_at));
        Ok(sandboxes.pop().map(|sandbox| Target {
            runtime: runtime.clone(),
            uid: sandbox
                .labels
                .get(LABEL_POD_UID)
                .cloned()
                .unwrap_or_else(|| sandbox.metadata.uid.clone()),
            sandbox: sandbox.id,
            pod: format!("{namespace}/{pod}"),
        }))
    })
    .await
    .map_err(|e| e.to_string())?
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn is_websocket(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::UPGRADE, "websocket")
}

fn is_spdy_upgrade(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "SPDY/3.1")
}

/// The `ports` query parameter of a WebSocket request: repeated or
/// comma-separated, each a port in 1-65535.
pub fn parse_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (key, value) in query_pairs(query) {
        if key != "ports" && key != "port" {
            continue;
        }
        for port in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match port.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("invalid port {port:?}")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"ports\" is required".into());
    }
    Ok(ports)
}

/// A byte stream over the binary messages of a WebSocket: what one side
/// writes becomes a message, every binary message received is read in
/// order. The returned task pumps between the two; abort it when done.
fn websocket_byte_stream(
    socket: WebSocket,
) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
    let (local, remote) = tokio::io::duplex(256 * 1024);
    let pump = tokio::spawn(async move {
        let (mut sink, mut stream) = socket.split();
        let (mut from_local, mut to_local) = tokio::io::split(remote);
        let inbound = async {
            while let Some(Ok(message)) = stream.next().await {
                match message {
                    Message::Binary(data) if to_local.write_all(&data).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = to_local.shutdown().await;
        };
        let outbound = async {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match from_local.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let message = Message::Binary(Bytes::copy_from_slice(&buffer[..n]));
                        if sink.send(message).await.is_err() {
                            return;
                        }
                    }
                }
            }
            close_normally(&mut sink).await;
        };
        // The connection is over when the SPDY side stops writing (it has
        // seen the client's end or finished every stream).
        tokio::select! {
            _ = outbound => {}
            _ = async { inbound.await; std::future::pending::<()>().await } => {}
        }
    });
    (local, pump)
}

/// The streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    data: Option<IncomingStream>,
    error: Option<IncomingStream>,
}

/// Serves port forwarding on one SPDY connection.
async fn serve_spdy<IO>(io: IO, target: Target) -> Result<(), spdy::SpdyError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (streams_tx, mut streams_rx) = mpsc::unbounded_channel::<IncomingStream>();
    let pairing = tokio::spawn(async move {
        let mut pending: HashMap<String, Pair> = HashMap::new();
        while let Some(stream) = streams_rx.recv().await {
            let kind = stream.header("streamtype").unwrap_or_default().to_string();
            // Clients before requestid numbered the pair by stream ids: the
            // error stream first, then the data stream.
            let request = match stream.header("requestid") {
                Some(id) => id.to_string(),
                None if kind == "data" => stream.id.saturating_sub(2).to_string(),
                None => stream.id.to_string(),
            };
            let pair = pending.entry(request.clone()).or_default();
            match kind.as_str() {
                "data" if pair.data.is_none() => pair.data = Some(stream),
                "error" if pair.error.is_none() => pair.error = Some(stream),
                other => {
                    tracing::debug!(streamtype = other, "refusing a port-forward stream");
                    stream.writer.reset(spdy::RST_CANCEL).await;
                    continue;
                }
            }
            if pair.data.is_some() && pair.error.is_some() {
                let pair = pending.remove(&request).unwrap_or_default();
                if let (Some(data), Some(error)) = (pair.data, pair.error) {
                    tokio::spawn(forward_stream_pair(target.clone(), data, error));
                }
            }
        }
    });
    let served = spdy::serve(io, move |stream| {
        let _ = streams_tx.send(stream);
    })
    .await;
    pairing.abort();
    served
}

/// Forwards one connection of a SPDY client.
async fn forward_stream_pair(target: Target, mut data: IncomingStream, error: IncomingStream) {
    let port = data
        .header("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0);
    let Some(port) = port else {
        let raw = data.header("port").unwrap_or_default().to_string();
        error
            .writer
            .send(format!("invalid port header {raw:?}").as_bytes())
            .await;
        error.writer.finish().await;
        data.writer.finish().await;
        return;
    };
    let socket = match target.connect(port).await {
        Ok(socket) => socket,
        Err(message) => {
            tracing::debug!(%message, "port forward");
            error.writer.send(message.as_bytes()).await;
            error.writer.finish().await;
            data.writer.finish().await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = socket.into_split();
    // Client to pod: until the client finishes its data stream; then the
    // pod sees the end of its input.
    let upstream = tokio::spawn(async move {
        while let Some(bytes) = data.data.recv().await {
            if to_pod.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to_pod.shutdown().await;
    });
    // Pod to client: until the pod closes the connection.
    let mut buffer = vec![0u8; spdy::MAX_DATA];
    let mut failure = None;
    loop {
        match from_pod.read(&mut buffer).await {
            Ok(0) => break,
            Ok(n) => {
                if !data.writer.send(&buffer[..n]).await {
                    break;
                }
            }
            Err(e) => {
                failure = Some(target.error(port, &e.to_string()));
                break;
            }
        }
    }
    data.writer.finish().await;
    if let Some(message) = failure {
        error.writer.send(message.as_bytes()).await;
    }
    error.writer.finish().await;
    // The client finishes its side once it saw ours; a client that never
    // does is cut off with the connection.
    let _ = upstream.await;
}

/// Serves the channel protocol: one connection per requested port.
async fn serve_channels(socket: WebSocket, target: Target, ports: Vec<u16>) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(32);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sink.send(Message::Binary(message.into())).await.is_err() {
                return;
            }
        }
        close_normally(&mut sink).await;
    });
    let frame = |channel: usize, data: &[u8]| {
        let mut message = Vec::with_capacity(data.len() + 1);
        message.push(channel as u8);
        message.extend_from_slice(data);
        message
    };
    if ports.len() > 127 {
        let _ = out_tx
            .send(frame(1, b"too many ports: at most 127 per connection"))
            .await;
        drop(out_tx);
        let _ = writer.await;
        return;
    }
    // Every channel first carries its port.
    for (i, port) in ports.iter().enumerate() {
        for channel in [2 * i, 2 * i + 1] {
            let _ = out_tx.send(frame(channel, &port.to_le_bytes())).await;
        }
    }
    let mut inputs: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut forwards = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(16);
        inputs.push(Some(in_tx));
        let (target, out_tx) = (target.clone(), out_tx.clone());
        forwards.push(tokio::spawn(async move {
            let socket = match target.connect(port).await {
                Ok(socket) => socket,
                Err(message) => {
                    let _ = out_tx.send(frame(2 * i + 1, message.as_bytes())).await;
                    return;
                }
            };
            let (mut from_pod, mut to_pod) = socket.into_split();
            let upstream = tokio::spawn(async move {
                while let Some(bytes) = in_rx.recv().await {
                    if to_pod.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                let _ = to_pod.shutdown().await;
            });
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                match from_pod.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if out_tx.send(frame(2 * i, &buffer[..n])).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let message = target.error(port, &e.to_string());
                        let _ = out_tx.send(frame(2 * i + 1, message.as_bytes())).await;
                        break;
                    }
                }
            }
            upstream.abort();
        }));
    }
    drop(out_tx);
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            let channel = channel as usize;
            // Only data channels take input; what arrives on error channels
            // is dropped, as the kubelet does.
            if !channel.is_multiple_of(2) {
                continue;
            }
            if let Some(Some(input)) = inputs.get(channel / 2) {
                if !payload.is_empty() && input.send(Bytes::copy_from_slice(payload)).await.is_err()
                {
                    inputs[channel / 2] = None;
                }
            }
        }
    });
    let reader_abort = reader.abort_handle();
    let all = futures::future::join_all(forwards);
    tokio::select! {
        _ = all => {}
        _ = reader => {}
    }
    reader_abort.abort();
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_parsed_as_the_kubelet_does() {
        assert_eq!(parse_ports(Some("ports=8080")), Ok(vec![8080]));
        assert_eq!(
            parse_ports(Some("ports=80,443&ports=8080")),
            Ok(vec![80, 443, 8080])
        );
        assert!(parse_ports(Some("ports=0")).is_err());
        assert!(parse_ports(Some("ports=http")).is_err());
        assert_eq!(
            parse_ports(None),
            Err("query parameter \"ports\" is required".to_string())
        );
    }

    #[test]
    fn upgrades_are_told_apart() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        headers.insert(header::UPGRADE, "SPDY/3.1".parse().unwrap());
        assert!(is_spdy_upgrade(&headers));
        assert!(!is_websocket(&headers));
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(is_websocket(&headers));
        assert!(!is_spdy_upgrade(&headers));
    }
}
