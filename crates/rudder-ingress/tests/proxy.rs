//! The ingress proxy end to end on loopback: local HTTP backends standing
//! in for pods, a routing table built from Ingress, Service and
//! EndpointSlice objects, and `curl` as the client (plain HTTP, and HTTPS
//! with SNI against certificates from the `openssl` CLI).

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use rudder_ingress::{build, IngressController, Snapshot};
use serde_json::{json, Value};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An HTTP server answering `<name> <method> <path> host=… xff=… proto=…
/// xfh=… body=…`.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let line = format!(
                            "{name} {} {} host={} xff={} proto={} xfh={}",
                            req.method(),
                            req.uri().path(),
                            header("host"),
                            header("x-forwarded-for"),
                            header("x-forwarded-proto"),
                            header("x-forwarded-host"),
                        );
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let text = format!("{line} body={}", String::from_utf8_lossy(&body));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn obj<T: serde::de::DeserializeOwned>(value: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(value).unwrap())
}

/// Service `name` (port 80 named `http`) and one slice per endpoint.
fn service(snapshot: &mut Snapshot, name: &str, endpoints: &[(SocketAddr, bool)]) {
    snapshot
        .services
        .push(obj(json!({"metadata": {"name": name, "namespace": "net"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web"}]}})));
    for (i, (addr, ready)) in endpoints.iter().enumerate() {
        snapshot.slices.push(obj(json!({
            "metadata": {"name": format!("{name}-{i}"), "namespace": "net",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}],
            "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": ready}}]})));
    }
}

fn to(service: &str, path: &str) -> Value {
    json!({"path": path, "pathType": "Prefix",
           "backend": {"service": {"name": service, "port": {"number": 80}}}})
}

fn cafe_ingress() -> Value {
    json!({"metadata": {"name": "cafe", "namespace": "net", "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"ingressClassName": "rudder",
            "tls": [{"hosts": ["cafe.example.com"], "secretName": "cafe-tls"}],
            "rules": [{"host": "cafe.example.com", "http": {"paths": [
                to("tea", "/tea"), to("web", "/"), to("empty", "/empty"), to("down", "/down")]}}]}})
}

/// `curl` with `args`; (HTTP status, body), status 0 if curl failed.
async fn curl(args: &[&str]) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    if !out.status.success() {
        return (0, String::from_utf8_lossy(&out.stderr).into_owned());
    }
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn get(port: u16, host: &str, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    curl(&["-H", &format!("Host: {host}"), &url]).await
}

#[tokio::test]
async fn routes_by_host_and_path_and_answers_404_503_502() {
    let web1 = backend("web1").await;
    let web2 = backend("web2").await;
    let tea = backend("tea").await;
    // nothing listens there once the listener is dropped
    let down = tokio::net::TcpListener::bind((LOOPBACK, 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut snapshot = Snapshot {
        ingresses: vec![obj(cafe_ingress())],
        ..Default::default()
    };
    service(&mut snapshot, "web", &[(web1, true), (web2, true)]);
    service(&mut snapshot, "tea", &[(tea, true)]);
    service(&mut snapshot, "empty", &[(web1, false)]);
    service(&mut snapshot, "down", &[(down, true)]);
    let controller = IngressController::new();
    let (config, _) = build(&snapshot);
    controller.update(config);
    let listening = controller.listen(&[LOOPBACK], 0, 0).await;
    let port = listening.http[0].port();

    let (status, body) = get(port, "cafe.example.com", "/tea/green").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "tea GET /tea/green host=cafe.example.com xff=127.0.0.1 proto=http xfh=cafe.example.com body="
    );

    // the other path goes to web, round-robin over its two endpoints
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, body) = get(port, "cafe.example.com", "/").await;
        assert_eq!(status, 200, "{body}");
        seen.push(body.split(' ').next().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["web1", "web1", "web2", "web2"]);

    // a request body and the client's port in Host pass through
    let url = format!("http://127.0.0.1:{port}/tea");
    let (status, body) = curl(&[
        "-H",
        "Host: cafe.example.com:80",
        "--data-binary",
        "two sugars",
        &url,
    ])
    .await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("tea POST /tea host=cafe.example.com:80"),
        "{body}"
    );
    assert!(body.ends_with("body=two sugars"), "{body}");

    let (status, body) = get(port, "nope.example.com", "/").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nope.example.com"), "{body}");

    let (status, body) = get(port, "cafe.example.com", "/empty").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no ready endpoint for net/empty:80"),
        "{body}"
    );

    let (status, body) = get(port, "cafe.example.com", "/down").await;
    assert_eq!(status, 502, "{body}");

    // Routes change without a restart of the listener.
    snapshot.ingresses.push(obj(
        json!({"metadata": {"name": "late", "namespace": "net"},
        "spec": {"ingressClassName": "rudder",
            "rules": [{"host": "late.example.com", "http": {"paths": [to("tea", "/")]}}]}}),
    ));
    let (config, _) = build(&snapshot);
    controller.update(config);
    let (status, body) = get(port, "late.example.com", "/x").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("tea GET /x host=late.example.com"),
        "{body}"
    );
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_is_skipped() {
    let taken = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let controller = IngressController::new();
    let listening = controller.listen(&[LOOPBACK], port, 0).await;
    assert!(listening.http.is_empty());
    assert_eq!(listening.https.len(), 1, "HTTPS still listens");
}

/// A self-signed certificate for `host` from the `openssl` CLI, written
/// as `<dir>/<host>.crt`; returns the Secret holding it.
fn certificate(dir: &Path, host: &str, secret: &str) -> Arc<Secret> {
    let crt = dir.join(format!("{host}.crt"));
    let key = dir.join(format!("{host}.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName=DNS:{host}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("the openssl CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s: Secret = serde_json::from_value(json!({
        "metadata": {"name": secret, "namespace": "net"}, "type": "kubernetes.io/tls"}))
    .unwrap();
    s.data = Some(
        [
            (
                "tls.crt".to_string(),
                ByteString(std::fs::read(&crt).unwrap()),
            ),
            (
                "tls.key".to_string(),
                ByteString(std::fs::read(&key).unwrap()),
            ),
        ]
        .into(),
    );
    Arc::new(s)
}

#[tokio::test]
async fn terminates_tls_with_the_certificate_the_client_names() {
    let dir = tempfile::tempdir().unwrap();
    let web = backend("web").await;
    let tea = backend("tea").await;
    let mut snapshot = Snapshot {
        ingresses: vec![
            obj(cafe_ingress()),
            obj(
                json!({"metadata": {"name": "shop", "namespace": "net", "creationTimestamp": "2024-02-01T00:00:00Z"},
                "spec": {"ingressClassName": "rudder",
                    "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
                    "rules": [{"host": "shop.example.com", "http": {"paths": [to("web", "/")]}}]}}),
            ),
        ],
        secrets: vec![
            certificate(dir.path(), "cafe.example.com", "cafe-tls"),
            certificate(dir.path(), "shop.example.com", "shop-tls"),
        ],
        ..Default::default()
    };
    service(&mut snapshot, "web", &[(web, true)]);
    service(&mut snapshot, "tea", &[(tea, true)]);
    let controller = IngressController::new();
    let (config, problems) = build(&snapshot);
    assert!(problems.is_empty(), "{problems:?}");
    controller.update(config);
    let listening = controller.listen(&[LOOPBACK], 0, 0).await;
    let port = listening.https[0].port();
    let https = |host: &str, ca: &str, path: &str| {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let ca = dir.path().join(format!("{ca}.crt"));
        let url = format!("https://{host}:{port}{path}");
        async move {
            curl(&[
                "--resolve",
                &resolve,
                "--cacert",
                ca.to_str().unwrap(),
                &url,
            ])
            .await
        }
    };

    // curl checks the served certificate against the one CA it trusts and
    // the name it asked for: each host gets its own certificate.
    let (status, body) = https("cafe.example.com", "cafe.example.com", "/tea").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("tea GET /tea host=cafe.example.com:"),
        "{body}"
    );
    assert!(body.contains("proto=https"), "{body}");
    let (status, body) = https("shop.example.com", "shop.example.com", "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("web GET / host=shop.example.com:"),
        "{body}"
    );
    let (status, _) = https("shop.example.com", "cafe.example.com", "/").await;
    assert_eq!(status, 0, "shop's certificate is not cafe's");

    // No SNI (an IP address): the first certificate, cafe's.
    let url = format!("https://127.0.0.1:{port}/tea");
    let (status, body) = curl(&["-k", "-H", "Host: cafe.example.com", &url]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("tea GET /tea"), "{body}");
}

#[tokio::test]
async fn a_request_no_route_matches_rebuilds_when_the_objects_are_newer() {
    let web = backend("web1").await;
    let mut snapshot = Snapshot {
        ingresses: vec![obj(cafe_ingress())],
        ..Default::default()
    };
    service(&mut snapshot, "web", &[(web, true)]);
    service(&mut snapshot, "tea", &[(web, true)]);
    // The table is empty, as on a node whose debounced rebuild has not
    // run yet; its objects already hold the Ingress.
    let controller = IngressController::new();
    let listening = controller.listen(&[LOOPBACK], 0, 0).await;
    let port = listening.http[0].port();
    let newer = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let snapshot = Arc::new(snapshot);
    let refresh = {
        let (newer, snapshot) = (newer.clone(), snapshot.clone());
        Arc::new(move || {
            newer
                .swap(false, std::sync::atomic::Ordering::SeqCst)
                .then(|| build(&*snapshot).0)
        })
    };
    controller.set_refresh(refresh);

    // Nothing newer: 404 from the table as it is.
    let (status, body) = get(port, "cafe.example.com", "/").await;
    assert_eq!(status, 404, "{body}");
    // Newer objects: the miss rebuilds, and the request is routed.
    newer.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = get(port, "cafe.example.com", "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("web1 GET /"), "{body}");
    // An unknown host stays 404 (and rebuilds nothing more).
    let (status, _) = get(port, "elsewhere.example.com", "/").await;
    assert_eq!(status, 404);
}
