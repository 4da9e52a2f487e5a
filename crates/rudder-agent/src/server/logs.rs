//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log as
//! `kubectl logs` shows it.
//!
//! The container is found through the runtime by its labels; the current one
//! is the newest, `previous=true` picks the one before it (the instance the
//! current one replaced). The log is decoded by
//! [`rudder_container::logs::read_logs`] on a blocking thread and streamed as
//! a chunked `text/plain` body; with `follow=true` the stream ends when the
//! container stops running or the client goes away.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rudder_container::logs::{read_logs, ReadOptions, Stream};
use rudder_cri::cri::{ContainerState, RuntimeService};
use tokio::sync::mpsc;

use super::{pod_containers, query_bool, query_get, query_pairs, text_error, Lookup, ServerState};

/// How many chunks may wait for a slow client before the reader blocks.
const CHANNEL_DEPTH: usize = 16;
/// The buffer of a log read without `follow` (with it, every line goes out at once).
const BUFFER: usize = 32 * 1024;

/// The `PodLogOptions` the kubelet honours, from the query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRequest {
    pub previous: bool,
    pub read: ReadOptions,
}

/// Why a query is refused: the kubelet's two answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// 400: a value does not parse.
    Decode,
    /// 422: the options fail `ValidatePodLogOptions`.
    Invalid,
}

/// Parses and validates the query as the kubelet does (`tail` is the old
/// name of `tailLines`, `tail=all` meaning no limit).
pub fn parse_log_query(raw: Option<&str>) -> Result<LogRequest, QueryError> {
    let pairs = query_pairs(raw);
    let int = |key: &str| -> Result<Option<i64>, QueryError> {
        query_get(&pairs, key)
            .map(|v| v.parse::<i64>().map_err(|_| QueryError::Decode))
            .transpose()
    };
    let tail = match query_get(&pairs, "tail") {
        Some("all") => None,
        Some(v) => Some(v.parse::<i64>().map_err(|_| QueryError::Decode)?),
        None => int("tailLines")?,
    };
    let since_seconds = int("sinceSeconds")?;
    let limit_bytes = int("limitBytes")?;
    let since_time = query_get(&pairs, "sinceTime")
        .map(|t| t.parse::<jiff::Timestamp>().map_err(|_| QueryError::Decode))
        .transpose()?;
    let streams = match query_get(&pairs, "stream") {
        None | Some("All") => None,
        Some("Stdout") => Some(Stream::Stdout),
        Some("Stderr") => Some(Stream::Stderr),
        Some(_) => return Err(QueryError::Invalid),
    };
    if tail.is_some_and(|t| t < 0)
        || limit_bytes.is_some_and(|l| l < 1)
        || since_seconds.is_some_and(|s| s < 1)
        || (since_seconds.is_some() && since_time.is_some())
        || (streams.is_some() && tail.is_some())
    {
        return Err(QueryError::Invalid);
    }
    let since = match (since_seconds, since_time) {
        (Some(seconds), _) => Some(
            jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(seconds))
                .map_err(|_| QueryError::Invalid)?,
        ),
        (None, time) => time,
    };
    Ok(LogRequest {
        previous: query_bool(&pairs, "previous"),
        read: ReadOptions {
            follow: query_bool(&pairs, "follow"),
            tail: tail.map(|t| usize::try_from(t).unwrap_or(usize::MAX)),
            timestamps: query_bool(&pairs, "timestamps"),
            since_rfc3339: since.map(|t| format!("{t:.9}")),
            limit_bytes: limit_bytes.map(|l| l as u64),
            streams,
        },
    })
}

/// The handler.
pub async fn container_logs(
    State(state): State<ServerState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let request = match parse_log_query(query.as_deref()) {
        Ok(request) => request,
        Err(QueryError::Decode) => {
            return text_error(
                StatusCode::BAD_REQUEST,
                r#"{"message": "Unable to decode query."}"#,
            )
        }
        Err(QueryError::Invalid) => {
            return text_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"message": "Invalid request."}"#,
            )
        }
    };
    let containers = match pod_containers(&state.runtime, &namespace, &pod, &container).await {
        Ok(containers) => containers,
        Err(Lookup::NoPod) => {
            return text_error(StatusCode::NOT_FOUND, format!("pod {pod:?} does not exist"))
        }
        Err(Lookup::Runtime(e)) => {
            return text_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    };
    let chosen = if request.previous {
        containers.get(1)
    } else {
        containers.first()
    };
    let Some(chosen) = chosen else {
        let message = if request.previous {
            format!("previous terminated container {container:?} in pod {pod:?} not found")
        } else {
            format!("container {container:?} in pod {pod:?} is waiting to start: ContainerCreating")
        };
        return text_error(StatusCode::BAD_REQUEST, message);
    };
    let id = chosen.id.clone();
    let runtime = state.runtime.clone();
    let status = {
        let (runtime, id) = (runtime.clone(), id.clone());
        tokio::task::spawn_blocking(move || runtime.container_status(&id)).await
    };
    let status = match status {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return text_error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return text_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let path = PathBuf::from(&status.log_path);
    if status.log_path.is_empty() || !path.exists() {
        return text_error(
            StatusCode::BAD_REQUEST,
            format!(
                "failed to read the log of container {container:?} in pod {pod:?}: no log file at {:?}",
                status.log_path
            ),
        );
    }

    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
    let follow = request.read.follow;
    tokio::task::spawn_blocking(move || {
        let closed = tx.clone();
        let sink = ChannelWriter { tx };
        // With follow: stop once the container is not running any more (what
        // it wrote until then is still drained) or the client has gone.
        let stop = || closed.is_closed() || !still_running(&runtime, &id);
        let result = if follow {
            let mut sink = sink;
            read_logs(&path, &request.read, &mut sink, &stop)
        } else {
            let mut sink = io::BufWriter::with_capacity(BUFFER, sink);
            read_logs(&path, &request.read, &mut sink, &stop)
        };
        if let Err(e) = result {
            if !closed.is_closed() {
                tracing::warn!(container = %id, error = %e, "reading a container log failed");
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

/// Whether the container can still write to its log.
fn still_running(runtime: &Arc<dyn RuntimeService>, id: &str) -> bool {
    matches!(
        runtime.container_status(id).map(|s| s.state),
        Ok(ContainerState::ContainerRunning | ContainerState::ContainerCreated)
    )
}

/// Sends each write as one body chunk; fails once the client is gone.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_pod_log_options() {
        let request = parse_log_query(Some(
            "follow=true&previous=1&tailLines=5&timestamps=true&limitBytes=100&sinceTime=2024-01-01T00:00:03Z",
        ))
        .unwrap();
        assert!(request.previous);
        assert_eq!(
            request.read,
            ReadOptions {
                follow: true,
                tail: Some(5),
                timestamps: true,
                since_rfc3339: Some("2024-01-01T00:00:03.000000000Z".into()),
                limit_bytes: Some(100),
                streams: None,
            }
        );
        assert_eq!(parse_log_query(None).unwrap(), LogRequest::default());
        assert_eq!(parse_log_query(Some("tail=all")).unwrap().read.tail, None);
        assert_eq!(parse_log_query(Some("tail=3")).unwrap().read.tail, Some(3));
        assert_eq!(
            parse_log_query(Some("stream=Stderr")).unwrap().read.streams,
            Some(Stream::Stderr)
        );
    }

    #[test]
    fn since_seconds_is_relative_to_now() {
        let request = parse_log_query(Some("sinceSeconds=60")).unwrap();
        let since: jiff::Timestamp = request.read.since_rfc3339.unwrap().parse().unwrap();
        let age = jiff::Timestamp::now().duration_since(since);
        assert!(age >= jiff::SignedDuration::from_secs(60), "{age:?}");
        assert!(age < jiff::SignedDuration::from_secs(3600), "{age:?}");
    }

    #[test]
    fn refuses_what_the_kubelet_refuses() {
        for bad in ["tailLines=x", "sinceTime=yesterday", "limitBytes=1k"] {
            assert_eq!(parse_log_query(Some(bad)), Err(QueryError::Decode), "{bad}");
        }
        for invalid in [
            "tailLines=-1",
            "limitBytes=0",
            "sinceSeconds=0",
            "sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z",
            "stream=Both",
            "stream=Stdout&tailLines=3",
        ] {
            assert_eq!(
                parse_log_query(Some(invalid)),
                Err(QueryError::Invalid),
                "{invalid}"
            );
        }
    }
}
