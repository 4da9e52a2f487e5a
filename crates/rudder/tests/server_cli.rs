//! `rudder server` as users start it: a real process on a free port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
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

/// A plain HTTP/1.1 GET; returns the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
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
        kubeconfig.contains(&format!("server: http://{addr}")),
        "{kubeconfig}"
    );

    for path in ["/healthz", "/livez", "/readyz"] {
        let (code, body) = get(addr, path);
        assert_eq!((code, body.trim()), (200, "ok"), "{path}");
    }
    let (code, body) = get(addr, "/version");
    assert_eq!(code, 200);
    assert!(body.contains("\"major\":\"1\""), "{body}");

    let (code, body) = get(addr, "/api/v1/nowhere");
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
