//! Liveness, readiness and startup probes: exec, httpGet, tcpSocket (grpc
//! is reported as unsupported), with the Kubernetes timing fields.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rudder_cri::cri::RuntimeService;
use rudder_cri::NodeRuntime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the probes of one running container say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeState {
    pub ready: bool,
    pub started: bool,
    /// The liveness (or startup) probe failed its threshold: restart it.
    pub unhealthy: Option<String>,
}

pub type ProbeResults = Arc<Mutex<HashMap<String, ProbeState>>>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Liveness,
    Readiness,
    Startup,
}

/// Outcome of one probe run.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Success,
    Failure(String),
}

fn port_of(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port as u16)
            .ok_or_else(|| format!("port {name:?} is not a named port of the container")),
    }
}

/// Runs one probe.
pub async fn run_probe(
    runtime: &Arc<NodeRuntime>,
    container_id: &str,
    container: &Container,
    probe: &Probe,
    pod_ip: &str,
) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        let runtime = runtime.clone();
        let id = container_id.to_string();
        let result = tokio::task::spawn_blocking(move || {
            RuntimeService::exec_sync(&*runtime, &id, &command, timeout)
        })
        .await;
        return match result {
            Ok(Ok(r)) if r.exit_code == 0 => Outcome::Success,
            Ok(Ok(r)) => Outcome::Failure(format!(
                "command exited with {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout).trim()
            )),
            Ok(Err(e)) => Outcome::Failure(e.to_string()),
            Err(e) => Outcome::Failure(e.to_string()),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = match port_of(container, &http.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        if http.scheme.as_deref() == Some("HTTPS") {
            return Outcome::Failure("HTTPS probes are not supported yet".into());
        }
        let host = http.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let headers: String = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| format!("{}: {}\r\n", h.name, h.value))
            .collect();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n"
        );
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut buf = vec![0u8; 512];
            let mut read = 0;
            while read < 12 {
                let n = stream.read(&mut buf[read..]).await?;
                if n == 0 {
                    break;
                }
                read += n;
            }
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..read]).into_owned())
        };
        return match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(response)) => {
                let code: u16 = response
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if (200..400).contains(&code) {
                    Outcome::Success
                } else {
                    Outcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
                }
            }
            Ok(Err(e)) => Outcome::Failure(format!("Get \"http://{host}:{port}{path}\": {e}")),
            Err(_) => Outcome::Failure(format!(
                "Get \"http://{host}:{port}{path}\": context deadline exceeded"
            )),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = match port_of(container, &tcp.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        let host = tcp.host.clone().unwrap_or_else(|| pod_ip.to_string());
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(e)) => Outcome::Failure(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Outcome::Failure(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if probe.grpc.is_some() {
        return Outcome::Failure("gRPC probes are not supported yet".into());
    }
    Outcome::Failure("the probe has no handler".into())
}

/// Starts the probe loops of a running container. They stop by
/// themselves when the container is no longer in `results` (the worker
/// removes it when the container stops). `wake` is called when a result
/// changes so the pod's status is updated.
pub fn start(
    runtime: Arc<NodeRuntime>,
    results: ProbeResults,
    container_id: String,
    container: Container,
    pod_ip: String,
    wake: Arc<dyn Fn() + Send + Sync>,
) {
    let has_startup = container.startup_probe.is_some();
    results.lock().unwrap().insert(
        container_id.clone(),
        ProbeState {
            ready: container.readiness_probe.is_none() && !has_startup,
            started: !has_startup,
            unhealthy: None,
        },
    );
    for (kind, probe) in [
        (Kind::Startup, container.startup_probe.clone()),
        (Kind::Liveness, container.liveness_probe.clone()),
        (Kind::Readiness, container.readiness_probe.clone()),
    ] {
        let Some(probe) = probe else { continue };
        let runtime = runtime.clone();
        let results = results.clone();
        let id = container_id.clone();
        let container = container.clone();
        let pod_ip = pod_ip.clone();
        let wake = wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(
                probe.initial_delay_seconds.unwrap_or(0).max(0) as u64,
            ))
            .await;
            let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
            let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
            let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
            let (mut successes, mut failures) = (0, 0);
            loop {
                let state = results.lock().unwrap().get(&id).cloned();
                let Some(state) = state else { return };
                // Liveness and readiness wait for the startup probe.
                if kind != Kind::Startup && !state.started {
                    tokio::time::sleep(period).await;
                    continue;
                }
                if kind == Kind::Startup && state.started {
                    return;
                }
                let outcome = run_probe(&runtime, &id, &container, &probe, &pod_ip).await;
                match outcome {
                    Outcome::Success => {
                        successes += 1;
                        failures = 0;
                    }
                    Outcome::Failure(ref why) => {
                        failures += 1;
                        successes = 0;
                        tracing::debug!(container = %id, ?kind, %why, "probe failed");
                    }
                }
                let mut changed = false;
                {
                    let mut all = results.lock().unwrap();
                    let Some(entry) = all.get_mut(&id) else {
                        return;
                    };
                    match (kind, &outcome) {
                        (Kind::Readiness, _) => {
                            let ready = if successes >= success_threshold {
                                true
                            } else if failures >= failure_threshold {
                                false
                            } else {
                                entry.ready
                            };
                            changed = ready != entry.ready;
                            entry.ready = ready;
                        }
                        (Kind::Startup, Outcome::Success) if successes >= success_threshold => {
                            entry.started = true;
                            if container.readiness_probe.is_none() {
                                entry.ready = true;
                            }
                            changed = true;
                        }
                        (Kind::Liveness | Kind::Startup, Outcome::Failure(why))
                            if failures >= failure_threshold =>
                        {
                            let what = if kind == Kind::Liveness {
                                "Liveness"
                            } else {
                                "Startup"
                            };
                            entry.unhealthy = Some(format!("{what} probe failed: {why}"));
                            changed = true;
                        }
                        _ => {}
                    }
                }
                if changed {
                    wake();
                }
                tokio::time::sleep(period).await;
            }
        });
    }
}
