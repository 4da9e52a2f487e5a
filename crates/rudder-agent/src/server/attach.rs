//! `/attach/{namespace}/{pod}/{container}`: `kubectl attach` to a running
//! container's main process, over the same WebSocket channel protocols as
//! exec.
//!
//! The process' output goes to its CRI log through the shim, so attaching
//! follows the log from its current end, stdout and stderr each on its
//! channel. Input goes to the container's stdin FIFO when the container was
//! created with `stdin: true` (a request for stdin on a container without
//! one gets output only, as kubectl warns). A `stdinOnce` container's input
//! ends when the first attached client closes its stdin or goes away: until
//! then the agent holds the FIFO open ([`hold_stdin`]) so the process does not
//! see end-of-file before anyone attached.
//!
//! No terminal: a container whose spec asks for `tty: true` does not run on
//! this node, and `-t` is refused.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use rudder_container::logs::{read_logs, ReadOptions, Stream};
use rudder_cri::cri::{ContainerState, RuntimeService};
use tokio::sync::mpsc;

use super::channel::{self, Inbound, Protocol};
use super::exec::{
    finish, first_channel, parse_stream_options, running_container, websocket, write_messages,
    StreamOptions,
};
use super::{text_error, ServerState};

/// Stdin FIFOs of `stdinOnce` containers nobody attached to yet, by
/// container id.
fn held_stdin() -> &'static Mutex<HashMap<String, std::fs::File>> {
    static HELD: OnceLock<Mutex<HashMap<String, std::fs::File>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// Keeps `file` (a writer of the container's stdin) open until the first
/// attach to it is over.
pub fn hold_stdin(container_id: &str, file: std::fs::File) {
    held_stdin()
        .lock()
        .unwrap()
        .insert(container_id.to_string(), file);
}

/// `GET|POST /attach/{namespace}/{pod}/{container}`.
pub async fn attach(
    State(state): State<ServerState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let options = match parse_stream_options(query.as_deref()) {
        Ok(options) => options,
        Err(message) => return text_error(StatusCode::BAD_REQUEST, message),
    };
    if options.tty {
        return text_error(
            StatusCode::BAD_REQUEST,
            "a TTY is not supported for a container's main process on this node: attach without -t/--tty",
        );
    }
    let current = match running_container(&state, &namespace, &pod, &container).await {
        Ok(current) => current,
        Err(response) => return response,
    };
    let id = current.id.clone();
    let runtime = state.runtime.clone();
    let log_path = {
        let (runtime, id) = (runtime.clone(), id.clone());
        tokio::task::spawn_blocking(move || runtime.container_status(&id)).await
    };
    let log_path = match log_path {
        Ok(Ok(status)) if !status.log_path.is_empty() => PathBuf::from(status.log_path),
        Ok(Ok(_)) => {
            return text_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the container has no log to attach to",
            )
        }
        Ok(Err(e)) => return text_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return text_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let (protocol, upgrade) = match websocket(request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    upgrade.on_upgrade(move |socket| async move {
        run_attach(socket, protocol, runtime, id, log_path, options).await;
    })
}

/// Writes what it is given to a channel of the connection.
struct ChannelWriter {
    channel: u8,
    out: mpsc::Sender<Vec<u8>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.out
            .blocking_send(channel::frame(self.channel, data))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn run_attach(
    socket: WebSocket,
    protocol: Protocol,
    runtime: Arc<dyn RuntimeService>,
    id: String,
    log_path: PathBuf,
    options: StreamOptions,
) {
    let (sink, mut stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(32);
    let writer = tokio::spawn(write_messages(sink, out_rx));
    let first = first_channel(&options);
    let _ = out_tx.send(vec![first]).await;

    let client_gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Output: each requested stream followed from the log's current end,
    // until the container stops or the client goes away.
    let mut followers = Vec::new();
    for (wanted, stream_kind, channel_id) in [
        (options.stdout, Stream::Stdout, channel::STDOUT),
        (options.stderr, Stream::Stderr, channel::STDERR),
    ] {
        if !wanted {
            continue;
        }
        let (runtime, id, path) = (runtime.clone(), id.clone(), log_path.clone());
        let gone = client_gone.clone();
        let mut sink = ChannelWriter {
            channel: channel_id,
            out: out_tx.clone(),
        };
        followers.push(tokio::task::spawn_blocking(move || {
            let read = ReadOptions {
                follow: true,
                tail: Some(0),
                streams: Some(stream_kind),
                ..ReadOptions::default()
            };
            let stop = || {
                gone.load(std::sync::atomic::Ordering::Relaxed)
                    || !matches!(
                        runtime.container_status(&id).map(|s| s.state),
                        Ok(ContainerState::ContainerRunning)
                    )
            };
            if let Err(e) = read_logs(&path, &read, &mut sink, &stop) {
                tracing::debug!(container = %id, error = %e, "attach: following the log");
            }
        }));
    }

    // Input: into the FIFO, when asked for and the container has one.
    let stdin = if options.stdin {
        let (runtime, id) = (runtime.clone(), id.clone());
        match tokio::task::spawn_blocking(move || runtime.open_stdin(&id)).await {
            Ok(Ok(file)) => Some(file),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "attach: no stdin");
                None
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let input_id = id.clone();
    let reader = tokio::spawn(async move {
        let (input_tx, mut input_rx) = mpsc::channel::<Option<Vec<u8>>>(16);
        let had_stdin = stdin.is_some();
        let pump = stdin.map(|mut file| {
            std::thread::spawn(move || {
                while let Some(Some(bytes)) = input_rx.blocking_recv() {
                    if file.write_all(&bytes).is_err() {
                        break;
                    }
                }
            })
        });
        let mut input = Some(input_tx);
        while let Some(Ok(message)) = stream.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            match channel::decode(protocol, &data) {
                Ok(Inbound::Stdin(bytes)) => {
                    if let Some(input) = &input {
                        let _ = input.send(Some(bytes)).await;
                    }
                }
                // v5: the client's input is over; it keeps reading output.
                Ok(Inbound::CloseStdin) => {
                    if let Some(input) = input.take() {
                        close_input(input, &input_id, had_stdin).await;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "ignoring an attach client message"),
            }
        }
        if let Some(input) = input.take() {
            close_input(input, &input_id, had_stdin).await;
        }
        if let Some(pump) = pump {
            let _ = tokio::task::spawn_blocking(move || pump.join()).await;
        }
    });
    let reader_abort = reader.abort_handle();
    let outputs = futures::future::join_all(followers);
    tokio::select! {
        _ = outputs => {}
        _ = reader => {
            client_gone.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
    }
    reader_abort.abort();
    held_stdin().lock().unwrap().remove(&id);
    finish(out_tx, writer, channel::success()).await;
}

/// Ends one client's input; a `stdinOnce` container's input ends with it
/// (the agent's own hold on the FIFO is let go).
async fn close_input(input: mpsc::Sender<Option<Vec<u8>>>, id: &str, had_stdin: bool) {
    let _ = input.send(None).await;
    drop(input);
    if had_stdin {
        held_stdin().lock().unwrap().remove(id);
    }
}
