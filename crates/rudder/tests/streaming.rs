//! `kubectl logs` and `kubectl exec` end to end: the node agent's HTTP
//! server (`rudder_agent::server`) over a real `NodeRuntime` running
//! containers from the images `shared/acceptance/images/build.sh` serves at
//! 127.0.0.1:5000, driven directly (HTTP, WebSocket clients) and through an
//! in-process API server with the real kubectl. Needs root, overlayfs,
//! namespaces and cgroups.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use rudder_cri::cri::*;
use rudder_cri::{ImageService, NodeRuntime, RuntimeService};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const BUSYBOX: &str = "127.0.0.1:5000/busybox:1.35";
const KUBECTL: &str = "/usr/bin/kubectl";

/// A node runtime over a fresh data dir with busybox pulled, and the node
/// agent's server on a free port; what it ran is reset on drop.
struct Node {
    dir: tempfile::TempDir,
    runtime: Arc<NodeRuntime>,
    addr: SocketAddr,
}

impl Node {
    async fn start() -> Node {
        tokio::task::spawn_blocking(support::build_test_images)
            .await
            .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("rudder-stream-")
            .tempdir()
            .unwrap();
        let runtime = Arc::new(
            NodeRuntime::open(dir.path(), PathBuf::from(env!("CARGO_BIN_EXE_rudder"))).unwrap(),
        );
        runtime
            .pull_image(&ImageSpec::new(BUSYBOX), None)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(rudder_agent::server::serve(listener, runtime.clone()));
        Node { dir, runtime, addr }
    }

    /// Starts a pod sandbox.
    async fn pod(&self, namespace: &str, name: &str) -> (String, PodSandboxConfig) {
        let config = PodSandboxConfig {
            metadata: PodSandboxMetadata {
                name: name.into(),
                uid: rudder_cri::sandbox::random_id().unwrap(),
                namespace: namespace.into(),
                attempt: 0,
            },
            hostname: name.into(),
            log_directory: self
                .dir
                .path()
                .join("pods")
                .join(name)
                .to_string_lossy()
                .into_owned(),
            ..Default::default()
        };
        let runtime = self.runtime.clone();
        let c = config.clone();
        let id = tokio::task::spawn_blocking(move || runtime.run_pod_sandbox(&c))
            .await
            .unwrap()
            .unwrap();
        (id, config)
    }

    /// Creates and starts a container of the sandbox; returns its id.
    async fn run(
        &self,
        sandbox: &(String, PodSandboxConfig),
        name: &str,
        attempt: u32,
        command: &[&str],
    ) -> String {
        let config = ContainerConfig {
            metadata: ContainerMetadata {
                name: name.into(),
                attempt,
            },
            image: ImageSpec::new(BUSYBOX),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/{attempt}.log"),
            ..Default::default()
        };
        let runtime = self.runtime.clone();
        let (id, sandbox_config) = sandbox.clone();
        tokio::task::spawn_blocking(move || {
            let container =
                RuntimeService::create_container(&*runtime, &id, &config, &sandbox_config).unwrap();
            runtime.start_container(&container).unwrap();
            container
        })
        .await
        .unwrap()
    }

    async fn wait_exited(&self, id: &str) {
        let runtime = self.runtime.clone();
        let id = id.to_string();
        eventually("the container exits", move || {
            runtime.container_status(&id).unwrap().state == ContainerState::ContainerExited
        })
        .await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.runtime.reset();
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool + Send + 'static) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, back) = tokio::task::spawn_blocking(move || (check(), check))
            .await
            .unwrap();
        if ok {
            return;
        }
        check = back;
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP GET; the status code and the whole body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let code = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (code, String::from_utf8(body.to_vec()).unwrap())
}

/// What a finished exec session delivered.
#[derive(Debug, Default)]
struct Session {
    protocol: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<Value>,
}

/// Runs an exec over a WebSocket offering `protocol`: sends each of `stdin`
/// (then, on v5, closes stdin), and reads until the server closes.
async fn ws_exec(
    node: &Node,
    path: &str,
    protocol: &str,
    stdin: &[&[u8]],
    close_stdin: bool,
) -> Session {
    let mut request = format!("ws://{}{path}", node.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut session = Session {
        protocol: response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
        ..Default::default()
    };
    for data in stdin {
        let mut message = vec![0u8];
        message.extend_from_slice(data);
        socket.send(Message::binary(message)).await.unwrap();
    }
    if close_stdin {
        socket.send(Message::binary(vec![255u8, 0])).await.unwrap();
    }
    while let Some(message) = socket.next().await {
        let data = match message.unwrap() {
            Message::Binary(data) => data,
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            1 => session.stdout.extend_from_slice(payload),
            2 => session.stderr.extend_from_slice(payload),
            3 => session.status = Some(serde_json::from_slice(payload).unwrap()),
            other => panic!("unexpected channel {other}"),
        }
    }
    session
}

fn is_rfc3339_prefixed(line: &str, content: &str) -> bool {
    match line.split_once(' ') {
        Some((time, rest)) => time.ends_with('Z') && time.contains('T') && rest == content,
        None => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_logs_with_the_kubelets_options() {
    let node = Node::start().await;
    let pod = node.pod("default", "logs").await;
    let first = node
        .run(&pod, "c", 0, &["sh", "-c", "echo first-run"])
        .await;
    node.wait_exited(&first).await;
    node.run(
        &pod,
        "c",
        1,
        &["sh", "-c", "echo one; echo two; echo three; sleep 1000"],
    )
    .await;
    let base = "/containerLogs/default/logs/c";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(node.addr, base).await;
        assert_eq!(code, 200, "{body}");
        if body == "one\ntwo\nthree\n" {
            break;
        }
        assert!(Instant::now() < deadline, "logs so far: {body:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(node.addr, &format!("{base}?tailLines=1")).await,
        (200, "three\n".into())
    );
    assert_eq!(
        get(node.addr, &format!("{base}?limitBytes=6")).await,
        (200, "one\ntw".into())
    );
    let (code, stamped) = get(node.addr, &format!("{base}?timestamps=true")).await;
    assert_eq!(code, 200);
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 3, "{stamped}");
    for (line, content) in lines.iter().zip(["one", "two", "three"]) {
        assert!(is_rfc3339_prefixed(line, content), "{line:?}");
    }
    // The instance the current one replaced.
    assert_eq!(
        get(node.addr, &format!("{base}?previous=true")).await,
        (200, "first-run\n".into())
    );
    // A time in the future leaves nothing.
    assert_eq!(
        get(node.addr, &format!("{base}?sinceTime=2999-01-01T00:00:00Z")).await,
        (200, String::new())
    );

    // Follow ends when the container does, with everything it wrote.
    let short = node.pod("default", "short").await;
    node.run(
        &short,
        "f",
        0,
        &["sh", "-c", "echo a; sleep 1; echo b; sleep 1; echo c"],
    )
    .await;
    let (code, followed) = get(node.addr, "/containerLogs/default/short/f?follow=true").await;
    assert_eq!((code, followed.as_str()), (200, "a\nb\nc\n"));

    // Refusals, as the kubelet words them.
    let (code, text) = get(node.addr, "/containerLogs/default/nope/c").await;
    assert_eq!((code, text.as_str()), (404, "pod \"nope\" does not exist"));
    let (code, text) = get(node.addr, "/containerLogs/default/short/f?previous=true").await;
    assert_eq!(
        (code, text.as_str()),
        (
            400,
            "previous terminated container \"f\" in pod \"short\" not found"
        )
    );
    let (code, _) = get(node.addr, &format!("{base}?tailLines=-1")).await;
    assert_eq!(code, 422);
    let (code, _) = get(node.addr, &format!("{base}?tailLines=x")).await;
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_websockets_v5_and_v4() {
    let node = Node::start().await;
    let pod = node.pod("default", "ex").await;
    node.run(&pod, "c", 0, &["sleep", "1000"]).await;
    let base = "/exec/default/ex/c";
    let script = "command=sh&command=-c&command=echo%20out%3B%20echo%20err%20%3E%262%3B%20exit%203";

    // v5: stdout, stderr and the exit code in the Status.
    let session = ws_exec(
        &node,
        &format!("{base}?{script}&stdout=1&stderr=1"),
        "v5.channel.k8s.io",
        &[],
        false,
    )
    .await;
    assert_eq!(session.protocol, "v5.channel.k8s.io");
    assert_eq!(session.stdout, b"out\n");
    assert_eq!(session.stderr, b"err\n");
    let status = session.status.expect("a status on the error channel");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(
        status["details"]["causes"],
        json!([{"reason": "ExitCode", "message": "3"}])
    );

    // v5: stdin, closed with [255, 0], reaches the command, which then ends.
    let session = ws_exec(
        &node,
        &format!("{base}?command=cat&stdin=1&stdout=1&stderr=1"),
        "v5.channel.k8s.io",
        &[b"hello ", b"world"],
        true,
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&session.stdout), "hello world");
    assert_eq!(
        session.status,
        Some(json!({"metadata": {}, "status": "Success"}))
    );

    // v4: the same protocol without the close signal.
    let session = ws_exec(
        &node,
        &format!("{base}?{script}&stdout=1&stderr=1"),
        "v4.channel.k8s.io",
        &[],
        false,
    )
    .await;
    assert_eq!(session.protocol, "v4.channel.k8s.io");
    assert_eq!(
        (session.stdout.as_slice(), session.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(
        session.status.unwrap()["details"]["causes"][0]["message"],
        "3"
    );
    let session = ws_exec(
        &node,
        &format!("{base}?command=head&command=-c&command=5&stdin=1&stdout=1"),
        "v4.channel.k8s.io",
        &[b"abcdefgh"],
        false,
    )
    .await;
    assert_eq!(session.stdout, b"abcde");
    assert_eq!(session.status.unwrap()["status"], "Success");

    // Refused before the upgrade: an unknown pod, a terminal for a
    // container's main process, SPDY.
    for (path, code, text) in [
        (
            "/exec/default/nope/c?command=sh&stdout=1".to_string(),
            404,
            "pod does not exist",
        ),
        (
            "/attach/default/ex/c?stdout=1&tty=1".to_string(),
            400,
            "a TTY is not supported for a container's main process",
        ),
        (
            "/attach/default/ex/c?stdout=1".to_string(),
            400,
            "SPDY is not supported",
        ),
        (
            format!("{base}?command=true&stdout=1"),
            400,
            "SPDY is not supported",
        ),
    ] {
        let (got, body) = get(node.addr, &path).await;
        assert_eq!(got, code, "{path}: {body}");
        assert!(body.contains(text), "{path}: {body}");
    }
}

/// Runs kubectl against `server`; its exit code, stdout and stderr.
async fn kubectl(
    server: SocketAddr,
    home: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(KUBECTL);
    command
        .arg(format!("--server=http://{server}"))
        .args(args)
        .env("HOME", home)
        .env("KUBECONFIG", home.join("none"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("running kubectl");
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl finished")
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An API server in process (its store in the returned directory) with a
/// Node `node-a` pointing at the agent's server; its address and the `default` namespace's pods.
async fn api_server_for(
    node: &Node,
) -> (
    tempfile::TempDir,
    SocketAddr,
    kube::Api<k8s_openapi::api::core::v1::Pod>,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = rudder_store::SqliteStore::open(rudder_store::SqliteConfig::new(
        dir.path().join("state.db"),
    ))
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = listener.local_addr().unwrap();
    let server = rudder_apiserver::ApiServer::new(Arc::new(store), api_addr.to_string());
    server.bootstrap().await.unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    let client = kube::Client::try_from(kube::Config::new(
        format!("http://{api_addr}").parse().unwrap(),
    ))
    .unwrap();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), "default");
    let pp = kube::api::PostParams::default();
    nodes
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "node-a"}})).unwrap(),
        )
        .await
        .unwrap();
    nodes
        .patch_status(
            "node-a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": "node-a"},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": node.addr.port()}},
            }})),
        )
        .await
        .unwrap();
    (dir, api_addr, pods)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_and_exec_through_the_api_server() {
    if !Path::new(KUBECTL).exists() {
        panic!("{KUBECTL} is needed for this test");
    }
    let node = Node::start().await;
    let (_api_dir, api_addr, pods) = api_server_for(&node).await;
    let pp = kube::api::PostParams::default();
    let pod_object = |name: &str,
                      containers: &[&str],
                      node_name: Option<&str>|
     -> k8s_openapi::api::core::v1::Pod {
        let containers: Vec<Value> = containers
            .iter()
            .map(|c| json!({"name": c, "image": BUSYBOX}))
            .collect();
        let mut spec = json!({"containers": containers});
        if let Some(n) = node_name {
            spec["nodeName"] = json!(n);
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    for (name, containers, node_name) in [
        ("web", &["c"][..], Some("node-a")),
        ("short", &["f"][..], Some("node-a")),
        ("two", &["a", "b"][..], Some("node-a")),
        ("pending", &["c"][..], None),
    ] {
        pods.create(&pp, &pod_object(name, containers, node_name))
            .await
            .unwrap();
    }

    // What the node runs for them.
    let web = node.pod("default", "web").await;
    node.run(
        &web,
        "c",
        0,
        &["sh", "-c", "echo hello from web; sleep 1000"],
    )
    .await;
    let short = node.pod("default", "short").await;
    node.run(
        &short,
        "f",
        0,
        &["sh", "-c", "echo a; sleep 1; echo b; sleep 1; echo c"],
    )
    .await;

    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = kubectl(api_addr, home, &["logs", "web"], None).await;
        if code == 0 && out == "hello from web\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl logs web: {code} {out:?} {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // -f streams until the container ends.
    let (code, out, err) = kubectl(api_addr, home, &["logs", "-f", "short"], None).await;
    assert_eq!((code, out.as_str()), (0, "a\nb\nc\n"), "{err}");
    let (code, out, _) = kubectl(api_addr, home, &["logs", "--tail=1", "short"], None).await;
    assert_eq!((code, out.as_str()), (0, "c\n"));

    // kube-apiserver's refusals.
    for (args, message) in [
        (
            // kubectl picks a container itself; the server's answer shows with --raw.
            &["get", "--raw", "/api/v1/namespaces/default/pods/two/log"][..],
            "Error from server (BadRequest): a container name must be specified for pod two, choose one of: [a b]",
        ),
        (
            &[
                "get",
                "--raw",
                "/api/v1/namespaces/default/pods/web/log?container=nope",
            ][..],
            "Error from server (BadRequest): container nope is not valid for pod web",
        ),
        (
            &["logs", "missing"][..],
            "pods \"missing\" not found",
        ),
        (
            &["exec", "pending", "--", "true"][..],
            "pod pending does not have a host assigned",
        ),
    ] {
        let (code, _, err) = kubectl(api_addr, home, args, None).await;
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(message), "{args:?}: {err}");
    }

    // exec: output, exit code, stdin.
    let (code, out, err) = kubectl(
        api_addr,
        home,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    )
    .await;
    assert_eq!((code, out.as_str()), (3, "out\n"), "{err}");
    assert!(err.contains("err\n"), "{err}");
    assert!(err.contains("command terminated with exit code 3"), "{err}");
    let (code, out, err) = kubectl(api_addr, home, &["exec", "web", "--", "hostname"], None).await;
    assert_eq!((code, out.as_str()), (0, "web\n"), "{err}");
    let (code, out, err) = kubectl(
        api_addr,
        home,
        &["exec", "-i", "web", "--", "sh", "-c", "tr a-z A-Z"],
        Some("piped through stdin\n"),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "PIPED THROUGH STDIN\n"), "{err}");
}

/// A busybox httpd serving `index.html` ("hello from the pod") on port 8080
/// of a new pod `name` (its sandbox has only a loopback interface).
async fn httpd_pod(node: &Node, pods: &kube::Api<k8s_openapi::api::core::v1::Pod>, name: &str) {
    pods.create(
        &kube::api::PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "node-a", "containers": [{"name": "web", "image": BUSYBOX}]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    // kubectl port-forward refuses pods that are not Running.
    pods.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    let sandbox = node.pod("default", name).await;
    node.run(
        &sandbox,
        "web",
        0,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello from the pod > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    )
    .await;
}

/// An HTTP/1.0 GET of `path` on `addr`: the whole answer, or what was read
/// before the connection ended.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_over_websocket_tunnel_and_spdy() {
    if !Path::new(KUBECTL).exists() {
        panic!("{KUBECTL} is needed for this test");
    }
    let node = Node::start().await;
    let (_api_dir, api_addr, pods) = api_server_for(&node).await;
    httpd_pod(&node, &pods, "web").await;
    let home = tempfile::tempdir().unwrap();

    // kubectl 1.32 tunnels SPDY in a WebSocket; with the feature off it
    // upgrades to SPDY directly. Both must work.
    for websockets in ["true", "false"] {
        let mut child = tokio::process::Command::new(KUBECTL)
            .arg(format!("--server=http://{api_addr}"))
            .args(["port-forward", "pod/web", ":8080", ":9"])
            .env("HOME", home.path())
            .env("KUBECONFIG", home.path().join("none"))
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // "Forwarding from 127.0.0.1:PORT -> 8080", then the same for 9.
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut local = Vec::new();
        while local.len() < 2 {
            use tokio::io::AsyncBufReadExt;
            let mut line = String::new();
            let read = tokio::time::timeout(Duration::from_secs(30), lines.read_line(&mut line))
                .await
                .expect("kubectl port-forward prints its ports")
                .unwrap();
            if read == 0 {
                use tokio::io::AsyncReadExt;
                let mut stderr = String::new();
                let _ = child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .await;
                panic!("kubectl port-forward ended early: {stderr}");
            }
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                let port: u16 = rest.split_whitespace().next().unwrap().parse().unwrap();
                local.push(port);
            }
        }
        let web = SocketAddr::from(([127, 0, 0, 1], local[0]));
        // Several connections one after another, each its own stream pair.
        for _ in 0..3 {
            let answer = http_get(web, "/index.html").await;
            assert!(
                answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("hello from the pod\n"),
                "websockets={websockets}: {answer:?}"
            );
        }
        // Nothing listens on port 9 in the pod: the connection ends and the
        // error reaches kubectl.
        let refused = http_get(SocketAddr::from(([127, 0, 0, 1], local[1])), "/").await;
        assert_eq!(refused, "", "websockets={websockets}");
        child.kill().await.unwrap();
        let mut stderr = String::new();
        use tokio::io::AsyncReadExt;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        assert!(
            stderr.contains("error forwarding port 9 to pod default/web"),
            "websockets={websockets}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_the_websocket_channel_protocol() {
    let node = Node::start().await;
    let sandbox = node.pod("default", "web").await;
    node.run(
        &sandbox,
        "web",
        0,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello from the pod > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    )
    .await;
    let mut request = format!("ws://{}/portForward/default/web?ports=8080", node.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    // The server may start before httpd listens: retry until it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (mut socket, response) = tokio_tungstenite::connect_async(request.clone())
            .await
            .unwrap();
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            "v4.channel.k8s.io"
        );
        // Each channel starts with its port, little-endian.
        let mut first = Vec::new();
        for _ in 0..2 {
            match socket.next().await.unwrap().unwrap() {
                Message::Binary(data) => first.push(data.to_vec()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(first, vec![vec![0, 0x90, 0x1f], vec![1, 0x90, 0x1f]]);
        let mut get = vec![0u8];
        get.extend_from_slice(b"GET /index.html HTTP/1.0\r\n\r\n");
        socket.send(Message::Binary(get.into())).await.unwrap();
        let (mut data, mut errors) = (Vec::new(), Vec::new());
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Binary(message) = message {
                match message.first() {
                    Some(0) => data.extend_from_slice(&message[1..]),
                    Some(1) => errors.extend_from_slice(&message[1..]),
                    _ => panic!("unexpected channel in {message:?}"),
                }
            }
        }
        let data = String::from_utf8_lossy(&data);
        if data.ends_with("hello from the pod\n") {
            assert!(errors.is_empty());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{data:?} {:?}",
            String::from_utf8_lossy(&errors)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_with_a_terminal() {
    if !Path::new(KUBECTL).exists() {
        panic!("{KUBECTL} is needed for this test");
    }
    let node = Node::start().await;
    let (_api_dir, api_addr, pods) = api_server_for(&node).await;
    pods.create(
        &kube::api::PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "shell"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": BUSYBOX}]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let sandbox = node.pod("default", "shell").await;
    node.run(&sandbox, "c", 0, &["sleep", "1000"]).await;
    let home = tempfile::tempdir().unwrap();

    // kubectl allocates a terminal only when its own stdin is one: `script`
    // runs it on a pseudo-terminal and types our input into it.
    let kubectl = format!("{KUBECTL} --server=http://{api_addr} exec -it shell -- sh",);
    let mut child = tokio::process::Command::new("script")
        .args(["-qec", &kubectl, "/dev/null"])
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("none"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    // Give kubectl time to connect before typing (what is typed earlier
    // waits in the terminal anyway).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stdin
        .write_all(b"[ -t 0 ] && [ -t 1 ] && echo terminals-$((1+1)); echo term:$TERM:; exit 5\n")
        .await
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl exec -it ends")
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    // The terminal echoes what is typed: the checks look for what only the
    // commands' output contains.
    assert!(out.contains("terminals-2"), "{out}");
    assert!(out.contains("term:xterm:"), "{out}");
    assert_eq!(output.status.code(), Some(5), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach_to_a_containers_stdio() {
    if !Path::new(KUBECTL).exists() {
        panic!("{KUBECTL} is needed for this test");
    }
    let node = Node::start().await;
    let (_api_dir, api_addr, pods) = api_server_for(&node).await;
    pods.create(
        &kube::api::PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "reader"},
            "spec": {"nodeName": "node-a", "containers": [
                {"name": "c", "image": BUSYBOX, "stdin": true, "stdinOnce": true}
            ]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    // kubectl attach wants a Running pod.
    pods.patch_status(
        "reader",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    // A stdinOnce container, created as the agent creates it: its input is
    // held open until the first attach is over.
    let (sandbox_id, sandbox_config) = node.pod("default", "reader").await;
    let config = ContainerConfig {
        metadata: ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        },
        image: ImageSpec::new(BUSYBOX),
        command: [
            "sh",
            "-c",
            "read line; echo got-$line; echo err-$line >&2; cat",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        log_path: "c/0.log".into(),
        stdin: true,
        stdin_once: true,
        ..Default::default()
    };
    let runtime = node.runtime.clone();
    let id = tokio::task::spawn_blocking(move || {
        let id = RuntimeService::create_container(&*runtime, &sandbox_id, &config, &sandbox_config)
            .unwrap();
        rudder_agent::server::attach::hold_stdin(
            &id,
            RuntimeService::open_stdin(&*runtime, &id).unwrap(),
        );
        runtime.start_container(&id).unwrap();
        id
    })
    .await
    .unwrap();
    // Nobody attached yet: the container waits for its input.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        node.runtime.container_status(&id).unwrap().state,
        ContainerState::ContainerRunning
    );

    let home = tempfile::tempdir().unwrap();
    // The line, then the end of kubectl's input: `cat` sees the end of a
    // stdinOnce input and the container exits, which ends the attach.
    let (code, out, err) = kubectl(
        api_addr,
        home.path(),
        &["attach", "-i", "reader", "-c", "c"],
        Some("hello\nmore\n"),
    )
    .await;
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("got-hello\n"), "{out:?} {err}");
    assert!(out.contains("more\n"), "{out:?} {err}");
    assert!(err.contains("err-hello"), "{out:?} {err}");
    node.wait_exited(&id).await;
}
