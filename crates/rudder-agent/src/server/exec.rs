//! `/exec/{namespace}/{pod}/{container}`: a command in a running container,
//! its stdio carried over a WebSocket in the [`channel`] protocol.
//!
//! Like the kubelet, the request is checked before the upgrade, and refusals
//! are plain text with an HTTP code (client-go shows them as
//! `unable to upgrade connection: <text>`). Once upgraded, the server sends
//! an empty message on the lowest output channel, copies stdin, stdout and
//! stderr, and ends with the command's Status on the error channel before
//! closing the connection. If the client goes away while the command runs,
//! the command is killed.

use std::process::Stdio;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use rudder_cri::cri::{ContainerState, RuntimeService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::channel::{self, Inbound, Protocol};
use super::{pod_containers, query_get, query_pairs, text_error, Lookup, ServerState};

/// The stream options of an exec or attach request (`remotecommand` options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    pub command: Vec<String>,
}

/// Reads the options as the kubelet does: each flag is on only when `1`
/// (the API server sends `stdin=1`); a tty swallows stderr.
pub fn parse_stream_options(raw: Option<&str>) -> Result<StreamOptions, String> {
    let pairs = query_pairs(raw);
    let flag = |key: &str| query_get(&pairs, key) == Some("1");
    let mut options = StreamOptions {
        stdin: flag("input") || flag("stdin"),
        stdout: flag("output") || flag("stdout"),
        stderr: flag("error") || flag("stderr"),
        tty: flag("tty"),
        command: pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect(),
    };
    if options.tty && options.stderr {
        options.stderr = false;
    }
    if !options.stdin && !options.stdout && !options.stderr {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    Ok(options)
}

/// `GET|POST /exec/{namespace}/{pod}/{container}`.
pub async fn exec(
    State(state): State<ServerState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let options = match parse_stream_options(query.as_deref()) {
        Ok(options) => options,
        Err(message) => return text_error(StatusCode::BAD_REQUEST, message),
    };
    if options.command.is_empty() {
        return text_error(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container",
        );
    }
    let current = match running_container(&state, &namespace, &pod, &container).await {
        Ok(current) => current,
        Err(response) => return response,
    };
    let (protocol, upgrade) = match websocket(request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let runtime = state.runtime.clone();
    let id = current.id.clone();
    upgrade.on_upgrade(move |socket| async move {
        if options.tty {
            run_exec_tty(socket, protocol, runtime, id, options).await;
        } else {
            run_exec(socket, protocol, runtime, id, options).await;
        }
    })
}

/// The current (newest) container named `container` of the pod, which must
/// be running; else the kubelet's plain-text refusal.
#[allow(clippy::result_large_err)]
pub(crate) async fn running_container(
    state: &ServerState,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<rudder_cri::cri::Container, Response> {
    let containers = match pod_containers(&state.runtime, namespace, pod, container).await {
        Ok(containers) => containers,
        Err(Lookup::NoPod) => return Err(text_error(StatusCode::NOT_FOUND, "pod does not exist")),
        Err(Lookup::Runtime(e)) => {
            return Err(text_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
    };
    let Some(current) = containers.into_iter().next() else {
        return Err(text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("container not found ({container:?})"),
        ));
    };
    if current.state != ContainerState::ContainerRunning {
        let state = serde_json::to_value(current.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        return Err(text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("container is in {state} state"),
        ));
    }
    Ok(current)
}

/// The channel that gets the empty message telling the client the streams
/// are set up: the lowest output channel asked for.
pub(crate) fn first_channel(options: &StreamOptions) -> u8 {
    if options.stdout {
        channel::STDOUT
    } else if options.stderr {
        channel::STDERR
    } else {
        channel::ERROR
    }
}

/// The Status a finished command reports (128 + the signal when killed).
fn exit_result(command: &[String], status: std::process::ExitStatus) -> serde_json::Value {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if code == 0 {
        channel::success()
    } else {
        channel::non_zero_exit(command, code)
    }
}

/// The WebSocket upgrade of `request`, with a channel protocol negotiated;
/// a plain-text refusal for anything else (SPDY upgrades included).
#[allow(clippy::result_large_err)]
pub(crate) async fn websocket(request: Request) -> Result<(Protocol, WebSocketUpgrade), Response> {
    let (mut parts, _body): (_, Body) = request.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|_| {
            text_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "this node streams over WebSocket only, with the subprotocols {}; SPDY is not supported",
                    channel::PROTOCOLS.join(", ")
                ),
            )
        })?;
    let upgrade = upgrade.protocols(channel::PROTOCOLS);
    let protocol = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .and_then(Protocol::from_name)
        .ok_or_else(|| {
            text_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "none of the requested WebSocket subprotocols is supported: use one of {}",
                    channel::PROTOCOLS.join(", ")
                ),
            )
        })?;
    Ok((protocol, upgrade))
}

/// Runs the command over an upgraded connection, until it exits (or the
/// client goes away).
async fn run_exec(
    socket: WebSocket,
    protocol: Protocol,
    runtime: Arc<dyn RuntimeService>,
    id: String,
    options: StreamOptions,
) {
    let (sink, mut stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(32);
    let writer = tokio::spawn(write_messages(sink, out_rx));

    // The lowest output channel gets an empty message first: the client
    // knows the streams are set up.
    let first = first_channel(&options);
    let _ = out_tx.send(vec![first]).await;

    let command = {
        let (runtime, id, argv) = (runtime.clone(), id.clone(), options.command.clone());
        tokio::task::spawn_blocking(move || runtime.exec(&id, &argv, &[], false)).await
    };
    let command = match command {
        Ok(Ok(command)) => command,
        Ok(Err(e)) => return finish(out_tx, writer, channel::internal_error(&e.to_string())).await,
        Err(e) => return finish(out_tx, writer, channel::internal_error(&e.to_string())).await,
    };
    let mut command = tokio::process::Command::from(command);
    // Its own process group: killing the group reaches the stage inside the
    // container too.
    command.process_group(0);
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    command
        .stdin(piped(options.stdin))
        .stdout(piped(options.stdout))
        .stderr(piped(options.stderr))
        .kill_on_drop(false);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return finish(out_tx, writer, channel::internal_error(&e.to_string())).await,
    };
    let group = child.id();

    let mut outputs = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        outputs.push(tokio::spawn(copy_output(
            stdout,
            channel::STDOUT,
            out_tx.clone(),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        outputs.push(tokio::spawn(copy_output(
            stderr,
            channel::STDERR,
            out_tx.clone(),
        )));
    }
    let mut stdin = child.stdin.take();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                // Text messages belong to the base64 protocols, not served.
                _ => continue,
            };
            match channel::decode(protocol, &data) {
                Ok(Inbound::Stdin(bytes)) => {
                    if let Some(pipe) = stdin.as_mut() {
                        if pipe.write_all(&bytes).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Ok(Inbound::CloseStdin) => stdin = None,
                // No terminal: nothing to resize.
                Ok(Inbound::Resize(_) | Inbound::Nothing) => {}
                Err(e) => tracing::debug!(error = %e, "ignoring an exec client message"),
            }
        }
        // The connection is closed: so is stdin.
    });
    let reader_abort = reader.abort_handle();

    let finished = async {
        for output in outputs {
            let _ = output.await;
        }
        child.wait().await
    };
    tokio::pin!(finished);
    let status = tokio::select! {
        status = &mut finished => status,
        _ = reader => {
            // The client is gone before the command finished: stop it.
            if let Some(pid) = group {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = finished.await;
            return;
        }
    };
    reader_abort.abort();
    let status = match status {
        Ok(status) => status,
        Err(e) => return finish(out_tx, writer, channel::internal_error(&e.to_string())).await,
    };
    finish(out_tx, writer, exit_result(&options.command, status)).await;
}

/// The master side of a pseudo-terminal. Reads happen on a thread of its
/// own (a terminal is a blocking file, and tokio registers raw descriptors
/// only through `unsafe`); that thread polls so it can stop, and the
/// terminal hangs up (SIGHUP to its session) once every handle is dropped.
#[derive(Clone)]
struct PtyMaster(Arc<std::os::fd::OwnedFd>);

impl PtyMaster {
    /// Copies what the terminal prints to `out` until every slave
    /// descriptor is closed (EIO) or `stop` is set.
    fn spawn_reader(
        &self,
        out: mpsc::Sender<Vec<u8>>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        use std::os::fd::AsFd;
        let fd = self.0.clone();
        std::thread::Builder::new()
            .name("exec-tty".into())
            .spawn(move || {
                let mut buffer = vec![0u8; 32 * 1024];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut poll = [nix::poll::PollFd::new(
                        fd.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    match nix::poll::poll(&mut poll, nix::poll::PollTimeout::from(200u16)) {
                        Ok(0) => continue,
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => return,
                        Ok(_) => {}
                    }
                    match nix::unistd::read(&*fd, &mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if out
                                .blocking_send(channel::frame(channel::STDOUT, &buffer[..n]))
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            })
    }

    /// Types `data` into the terminal.
    async fn write_all(&self, data: Vec<u8>) -> std::io::Result<()> {
        let fd = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut data = &data[..];
            while !data.is_empty() {
                match nix::unistd::write(&*fd, data) {
                    Ok(n) => data = &data[n..],
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(std::io::Error::from(e)),
                }
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    fn resize(&self, size: channel::TerminalSize) -> std::io::Result<()> {
        rustix::termios::tcsetwinsize(
            &*self.0,
            rustix::termios::Winsize {
                ws_row: size.height,
                ws_col: size.width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .map_err(std::io::Error::from)
    }
}

/// Runs the command on a pseudo-terminal (`kubectl exec -t`): its output
/// (stdout and stderr alike, as a terminal shows them) goes on the stdout
/// channel, stdin is typed into the terminal, resize messages size it.
async fn run_exec_tty(
    socket: WebSocket,
    protocol: Protocol,
    runtime: Arc<dyn RuntimeService>,
    id: String,
    options: StreamOptions,
) {
    let (sink, mut stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(32);
    let writer = tokio::spawn(write_messages(sink, out_rx));
    let _ = out_tx.send(vec![channel::STDOUT]).await;

    let fail = |e: &dyn std::fmt::Display| channel::internal_error(&e.to_string());
    let pty = match nix::pty::openpty(None, None) {
        Ok(pty) => pty,
        Err(e) => {
            return finish(out_tx, writer, fail(&format!("allocating a terminal: {e}"))).await
        }
    };
    let command = {
        let (runtime, id, argv) = (runtime.clone(), id.clone(), options.command.clone());
        tokio::task::spawn_blocking(move || runtime.exec(&id, &argv, &[], true)).await
    };
    let command = match command {
        Ok(Ok(command)) => command,
        Ok(Err(e)) => return finish(out_tx, writer, fail(&e)).await,
        Err(e) => return finish(out_tx, writer, fail(&e)).await,
    };
    let stdio = |fd: &std::os::fd::OwnedFd| fd.try_clone().map(Stdio::from);
    let (stdin, stdout, stderr) = match (stdio(&pty.slave), stdio(&pty.slave)) {
        (Ok(a), Ok(b)) => (a, b, Stdio::from(pty.slave)),
        (Err(e), _) | (_, Err(e)) => return finish(out_tx, writer, fail(&e)).await,
    };
    let mut command = tokio::process::Command::from(command);
    command.process_group(0);
    command.stdin(stdin).stdout(stdout).stderr(stderr);
    let spawned = command.spawn();
    // The command holds the only slave descriptors now: once it and its
    // children are gone, reading the master ends.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return finish(out_tx, writer, fail(&e)).await,
    };
    let master = PtyMaster(Arc::new(pty.master));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let output = match master.spawn_reader(out_tx.clone(), stop.clone()) {
        Ok(thread) => thread,
        Err(e) => {
            let _ = child.kill().await;
            return finish(out_tx, writer, fail(&e)).await;
        }
    };

    let input = master.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            match channel::decode(protocol, &data) {
                Ok(Inbound::Stdin(bytes)) if options.stdin => {
                    if input.write_all(bytes).await.is_err() {
                        break;
                    }
                }
                // The end of input on a terminal is ^D.
                Ok(Inbound::CloseStdin) if options.stdin => {
                    let _ = input.write_all(vec![4]).await;
                }
                Ok(Inbound::Resize(size)) => {
                    if let Err(e) = input.resize(size) {
                        tracing::debug!(error = %e, "resizing an exec terminal");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "ignoring an exec client message"),
            }
        }
    });
    let reader_abort = reader.abort_handle();
    drop(master);
    let group = child.id();
    let finished = async {
        let status = child.wait().await;
        // What the command printed last is still in the terminal; a
        // background process keeping the terminal open is not waited for.
        let drained = tokio::task::spawn_blocking(move || {
            let _ = output.join();
        });
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), drained).await;
        status
    };
    tokio::pin!(finished);
    let status = tokio::select! {
        status = &mut finished => status,
        _ = reader => {
            // The client is gone: the reader thread stops, the last master
            // handle closes and the terminal hangs up (SIGHUP to the
            // command's session); the stage that started it is killed.
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(pid) = group {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return;
        }
    };
    reader_abort.abort();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let status = match status {
        Ok(status) => status,
        Err(e) => return finish(out_tx, writer, fail(&e)).await,
    };
    finish(out_tx, writer, exit_result(&options.command, status)).await;
}

/// Sends the final Status on the error channel, then closes the connection.
pub(crate) async fn finish(
    out_tx: mpsc::Sender<Vec<u8>>,
    writer: tokio::task::JoinHandle<()>,
    status: serde_json::Value,
) {
    let _ = out_tx
        .send(channel::frame(
            channel::ERROR,
            status.to_string().as_bytes(),
        ))
        .await;
    drop(out_tx);
    let _ = writer.await;
}

/// Copies one output pipe to its channel.
async fn copy_output(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    channel_id: u8,
    out: mpsc::Sender<Vec<u8>>,
) {
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out
                    .send(channel::frame(channel_id, &buffer[..n]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Writes the queued messages, then closes normally once every sender is done.
pub(crate) async fn write_messages(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut out: mpsc::Receiver<Vec<u8>>,
) {
    while let Some(message) = out.recv().await {
        if sink.send(Message::Binary(message.into())).await.is_err() {
            return;
        }
    }
    close_normally(&mut sink).await;
}

/// Ends a WebSocket with a normal closure and its code: client-go takes a
/// close without a status (1005) for a broken connection.
pub(crate) async fn close_normally(sink: &mut (impl futures::Sink<Message> + Unpin)) {
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_options_follow_the_kubelet() {
        let options = parse_stream_options(Some(
            "command=sh&command=-c&command=echo%20hi&stdout=1&stderr=1",
        ))
        .unwrap();
        assert_eq!(
            options,
            StreamOptions {
                stdin: false,
                stdout: true,
                stderr: true,
                tty: false,
                command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            }
        );
        // Only "1" turns a stream on (the API server translates true to 1).
        assert_eq!(
            parse_stream_options(Some("command=ls&stdout=true")),
            Err("you must specify at least 1 of stdin, stdout, stderr".to_string())
        );
        let tty = parse_stream_options(Some("command=sh&stdin=1&stdout=1&stderr=1&tty=1")).unwrap();
        assert!(tty.tty && tty.stdin && tty.stdout && !tty.stderr);
    }
}
