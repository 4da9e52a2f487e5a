//! `rudder server` as users start it: a real process on a free port.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(data_dir: &Path, addr: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args([
            "server",
            "--disable-agent",
            "--listen",
            &addr.to_string(),
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for_kubeconfig(data_dir: &Path) -> String {
    let path = data_dir.join("kubeconfig.yaml");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server wrote no kubeconfig");
}

/// An HTTPS request with `curl`, as the admin (the client certificate the
/// server wrote into its data dir) unless `anonymous`; returns the status
/// code (0 when the server did not answer) and the body.
fn curl(
    data_dir: &Path,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    anonymous: bool,
) -> (u16, String) {
    let tls = data_dir.join("tls");
    let mut command = Command::new("curl");
    command
        .args([
            "-s",
            "--max-time",
            "20",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .arg("--cacert")
        .arg(tls.join("server-ca.crt"));
    if !anonymous {
        command
            .arg("--cert")
            .arg(tls.join("client-admin.crt"))
            .arg("--key")
            .arg(tls.join("client-admin.key"));
    }
    if body.is_some() {
        // The body goes through stdin: it may be larger than an argument.
        command.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    let mut child = command
        .arg(format!("https://{addr}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        if let Some(body) = body {
            let _ = stdin.write_all(body.as_bytes());
        }
    }
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn get(data_dir: &Path, addr: SocketAddr, path: &str) -> (u16, String) {
    curl(data_dir, addr, "GET", path, None, false)
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap()
}

#[test]
fn server_serves_health_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut child = start(dir.path(), addr);
    let kubeconfig = wait_for_kubeconfig(dir.path());
    assert!(
        kubeconfig.contains(&format!("server: https://{addr}")),
        "{kubeconfig}"
    );
    assert!(
        kubeconfig.contains("client-certificate-data: "),
        "{kubeconfig}"
    );

    // Health is open to anyone; everything else needs credentials.
    for path in ["/healthz", "/livez", "/readyz"] {
        let (code, body) = curl(dir.path(), addr, "GET", path, None, true);
        assert_eq!((code, body.trim()), (200, "ok"), "{path}");
    }
    let (code, body) = curl(dir.path(), addr, "GET", "/api/v1/namespaces", None, true);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
    assert!(dir.path().join("node-token").exists());
    let (code, body) = get(dir.path(), addr, "/version");
    assert_eq!(code, 200);
    assert!(body.contains("\"major\":\"1\""), "{body}");

    let (code, body) = get(dir.path(), addr, "/api/v1/nowhere");
    assert_eq!(code, 404);
    assert!(body.contains("\"kind\":\"Status\""), "{body}");
    assert!(body.contains("\"reason\":\"NotFound\""), "{body}");

    assert!(terminate(&mut child).success());
    assert!(dir.path().join("db/state.db").exists());
}

#[test]
fn server_refuses_an_unusable_store_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("db")).unwrap();
    std::fs::write(dir.path().join("db/state.db"), vec![0x5a; 8192]).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args([
            "server",
            "--disable-agent",
            "--listen",
            &free_addr().to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("state.db"), "{stderr}");
}

#[test]
fn kill_9_during_a_burst_of_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut child = start(dir.path(), addr);
    wait_for_kubeconfig(dir.path());

    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            let data = dir.path().to_owned();
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let name = format!("burst-{w}-{i}");
                    let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"i":"{i}"}}}}"#);
                    let (code, _) = curl(&data, addr, "POST", "/api/v1/namespaces/default/configmaps", Some(&body), false);
                    if code == 201 {
                        acknowledged.lock().unwrap().push(name);
                    } else if code == 0 {
                        return; // the server is gone
                    }
                }
            })
        })
        .collect();
    while acknowledged.lock().unwrap().len() < 500 {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL while the writers are still going
    child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }

    std::fs::remove_file(dir.path().join("kubeconfig.yaml")).unwrap();
    let mut child = start(dir.path(), addr);
    wait_for_kubeconfig(dir.path());
    let (code, body) = get(dir.path(), addr, "/api/v1/namespaces/default/configmaps");
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let present: std::collections::HashSet<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| item["metadata"]["name"].as_str())
        .collect();
    let acknowledged = acknowledged.lock().unwrap();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !present.contains(n.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(terminate(&mut child).success());
}

#[test]
fn bad_input_is_refused_with_a_status_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut child = start(dir.path(), addr);
    wait_for_kubeconfig(dir.path());
    let cms = "/api/v1/namespaces/default/configmaps";
    let data = dir.path();
    let send =
        |method: &str, path: &str, body: &str| curl(data, addr, method, path, Some(body), false);
    let (code, body) = send(
        "POST",
        cms,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"broken""#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains(r#""reason":"BadRequest""#), "{body}");
    let huge = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"huge"}},"data":{{"x":"{}"}}}}"#,
        "a".repeat(4 << 20)
    );
    let (code, body) = send("POST", cms, &huge);
    assert_eq!(code, 413, "{body}");
    let (code, body) = send(
        "POST",
        cms,
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#,
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = send(
        "POST",
        cms,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"k":5}}"#,
    );
    assert_eq!(code, 400, "a number where a string belongs: {body}");
    let (code, body) = get(data, addr, "/api/v1/namespaces/default/nosuchthings");
    assert_eq!(code, 404, "{body}");
    let (code, body) = get(data, addr, cms);
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Only what the cluster puts in every namespace (the root CA bundle).
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| item["metadata"]["name"].as_str())
        .filter(|name| *name != "kube-root-ca.crt")
        .collect();
    assert!(names.is_empty(), "nothing was stored: {body}");
    assert!(terminate(&mut child).success());
}
