//! Routing checks: a cluster in a [`Snapshot`], the backend each request
//! gets.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;

fn obj<T: serde::de::DeserializeOwned>(value: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(value).unwrap())
}

fn rudder_class() -> Arc<IngressClass> {
    obj(json!({"metadata": {"name": "rudder",
        "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "rudder.io/ingress"}}))
}

/// A ClusterIP service `name` with ports `http` 80 and `admin` 9000, and
/// one slice with endpoints on target ports 8080 and 9090.
fn service(ns: &str, name: &str, endpoints: &[(&str, bool)]) -> (Arc<Service>, Arc<EndpointSlice>) {
    let svc = obj(json!({"metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web"},
                           {"name": "admin", "port": 9000, "targetPort": 9090}]}}));
    let slice = obj(
        json!({"metadata": {"name": format!("{name}-abc"), "namespace": ns,
            "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "admin", "port": 9090, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect::<Vec<_>>()}),
    );
    (svc, slice)
}

fn backend(service: &str, port: Value) -> Value {
    json!({"service": {"name": service, "port": port}})
}

fn path(p: &str, kind: &str, service: &str) -> Value {
    json!({"path": p, "pathType": kind, "backend": backend(service, json!({"number": 80}))})
}

fn ingress(name: &str, created: &str, spec: Value) -> Arc<Ingress> {
    obj(
        json!({"metadata": {"name": name, "namespace": "net", "creationTimestamp": created},
        "spec": spec}),
    )
}

/// Services a..f in `net`, each with one ready endpoint 10.0.0.<n>.
fn snapshot(ingresses: Vec<Arc<Ingress>>) -> Snapshot {
    let mut s = Snapshot {
        ingresses,
        classes: vec![rudder_class()],
        ..Default::default()
    };
    for (i, name) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
        let ip = format!("10.0.0.{}", i + 1);
        let (svc, slice) = service("net", name, &[(&ip, true)]);
        s.services.push(svc);
        s.slices.push(slice);
    }
    s
}

/// Which service (by its endpoint's last octet → letter) a request gets.
fn served_by(table: &RouteTable, host: &str, p: &str) -> Option<char> {
    let backend = table.route(host, p)?;
    let SocketAddr::V4(addr) = backend.pick().ok()? else {
        return None;
    };
    Some((b'a' + addr.ip().octets()[3] - 1) as char)
}

fn routes(ingresses: Vec<Arc<Ingress>>) -> RouteTable {
    let (config, problems) = build(&snapshot(ingresses));
    assert!(problems.is_empty(), "{problems:?}");
    config.routes
}

const T0: &str = "2024-01-01T00:00:00Z";
const T1: &str = "2024-02-01T00:00:00Z";

#[test]
fn hosts_and_paths() {
    let t = routes(vec![ingress(
        "cafe",
        T0,
        json!({"rules": [{"host": "cafe.example.com", "http": {"paths": [
            path("/tea", "Prefix", "a"),
            path("/", "Prefix", "b"),
            path("/coffee/", "Prefix", "c"),
            path("/menu", "Exact", "d"),
        ]}}]}),
    )]);
    let at = |h: &str, p: &str| served_by(&t, h, p);
    assert_eq!(at("cafe.example.com", "/tea"), Some('a'));
    assert_eq!(at("cafe.example.com", "/tea/"), Some('a'));
    assert_eq!(at("cafe.example.com", "/tea/green"), Some('a'));
    assert_eq!(at("cafe.example.com", "/teapot"), Some('b'), "element-wise");
    assert_eq!(
        at("cafe.example.com", "/coffee"),
        Some('c'),
        "trailing / ignored"
    );
    assert_eq!(at("cafe.example.com", "/menu"), Some('d'));
    assert_eq!(
        at("cafe.example.com", "/menu/x"),
        Some('b'),
        "Exact is exact"
    );
    assert_eq!(
        at("CAFE.example.com:8080", "/tea"),
        Some('a'),
        "case and port"
    );
    assert_eq!(at("nope.example.com", "/"), None, "unknown host: 404");
}

#[test]
fn longest_match_then_exact_then_oldest() {
    let t = routes(vec![
        ingress(
            "new",
            T1,
            json!({"rules": [{"host": "h", "http": {"paths": [
                path("/a", "Prefix", "c"),
                path("/a/b", "ImplementationSpecific", "d"),
            ]}}]}),
        ),
        ingress(
            "old",
            T0,
            json!({"rules": [{"host": "h", "http": {"paths": [
                path("/a", "Prefix", "a"),
                path("/a", "Exact", "b"),
            ]}}]}),
        ),
    ]);
    assert_eq!(served_by(&t, "h", "/a"), Some('b'), "Exact before Prefix");
    assert_eq!(served_by(&t, "h", "/a/x"), Some('a'), "the oldest Ingress");
    assert_eq!(served_by(&t, "h", "/a/b/c"), Some('d'), "the longest path");
}

#[test]
fn wildcards_and_catch_alls() {
    let t = routes(vec![ingress(
        "w",
        T0,
        json!({"rules": [
            {"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "a")]}},
            {"host": "api.example.com", "http": {"paths": [path("/v1", "Prefix", "b")]}},
            {"http": {"paths": [path("/", "Prefix", "c")]}},
        ]}),
    )]);
    assert_eq!(served_by(&t, "www.example.com", "/"), Some('a'));
    assert_eq!(
        served_by(&t, "api.example.com", "/v1/x"),
        Some('b'),
        "exact host first"
    );
    assert_eq!(
        served_by(&t, "api.example.com", "/other"),
        Some('a'),
        "a host's unmatched path falls to the wildcard"
    );
    assert_eq!(
        served_by(&t, "a.b.example.com", "/"),
        Some('c'),
        "one label only"
    );
    assert_eq!(served_by(&t, "example.com", "/"), Some('c'));
    assert_eq!(served_by(&t, "", "/x"), Some('c'));
}

#[test]
fn the_default_backend_takes_what_no_rule_matches() {
    let t = routes(vec![
        ingress(
            "second",
            T1,
            json!({"defaultBackend": backend("f", json!({"number": 80}))}),
        ),
        ingress(
            "first",
            T0,
            json!({"defaultBackend": backend("e", json!({"name": "http"})),
                   "rules": [{"host": "h", "http": {"paths": [path("/x", "Exact", "a")]}}]}),
        ),
    ]);
    assert_eq!(served_by(&t, "h", "/x"), Some('a'));
    assert_eq!(served_by(&t, "h", "/y"), Some('e'));
    assert_eq!(
        served_by(&t, "other", "/"),
        Some('e'),
        "the oldest Ingress's"
    );
}

#[test]
fn only_our_class_is_served() {
    let mut s = snapshot(vec![
        ingress(
            "theirs",
            T0,
            json!({"ingressClassName": "nginx", "rules": [{"host": "h", "http": {"paths": [path("/", "Prefix", "a")]}}]}),
        ),
        ingress(
            "unnamed",
            T0,
            json!({"rules": [{"host": "u", "http": {"paths": [path("/", "Prefix", "b")]}}]}),
        ),
    ]);
    let (config, _) = build(&s);
    assert_eq!(served_by(&config.routes, "h", "/"), None);
    assert_eq!(
        served_by(&config.routes, "u", "/"),
        Some('b'),
        "rudder is the default"
    );
    // Without a default class, an Ingress naming none is nobody's.
    s.classes = vec![obj(
        json!({"metadata": {"name": "rudder"}, "spec": {"controller": "rudder.io/ingress"}}),
    )];
    let (config, _) = build(&s);
    assert!(config.routes.is_empty());
}

#[test]
fn endpoints_by_service_port_number_or_name_round_robin() {
    let mut s = snapshot(vec![ingress(
        "i",
        T0,
        json!({"rules": [{"host": "h", "http": {"paths": [
            {"path": "/web", "pathType": "Prefix", "backend": backend("web", json!({"number": 80}))},
            {"path": "/admin", "pathType": "Prefix", "backend": backend("web", json!({"name": "admin"}))},
        ]}}]}),
    )]);
    let (svc, slice) = service(
        "net",
        "web",
        &[("10.1.0.1", true), ("10.1.0.2", false), ("10.1.0.3", true)],
    );
    s.services.push(svc);
    s.slices.push(slice);
    let (config, problems) = build(&s);
    assert!(problems.is_empty(), "{problems:?}");
    let web = config.routes.route("h", "/web").unwrap();
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    // port 80 is `http`, whose target port the slice resolves to 8080;
    // the endpoint that is not ready is left out
    assert_eq!(
        web.endpoints(),
        &[addr("10.1.0.1:8080"), addr("10.1.0.3:8080")]
    );
    let picks: Vec<SocketAddr> = (0..4).map(|_| web.pick().unwrap()).collect();
    assert_eq!(picks[0], picks[2]);
    assert_eq!(picks[1], picks[3]);
    assert_ne!(picks[0], picks[1]);
    let admin = config.routes.route("h", "/admin").unwrap();
    assert_eq!(
        admin.endpoints(),
        &[addr("10.1.0.1:9090"), addr("10.1.0.3:9090")]
    );
}

#[test]
fn backends_that_cannot_be_served_answer_503_and_say_why() {
    let mut s = snapshot(vec![ingress(
        "i",
        T0,
        json!({"rules": [{"host": "h", "http": {"paths": [
            {"path": "/missing", "pathType": "Prefix", "backend": backend("nosuch", json!({"number": 80}))},
            {"path": "/port", "pathType": "Prefix", "backend": backend("a", json!({"number": 81}))},
            {"path": "/ext", "pathType": "Prefix", "backend": backend("ext", json!({"number": 80}))},
            {"path": "/bucket", "pathType": "Prefix", "backend": {"resource": {"kind": "Bucket", "name": "b"}}},
            {"path": "/empty", "pathType": "Prefix", "backend": backend("empty", json!({"number": 80}))},
        ]}}]}),
    )]);
    s.services.push(obj(json!({"metadata": {"name": "ext", "namespace": "net"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com", "ports": [{"port": 80}]}})));
    let (svc, slice) = service("net", "empty", &[("10.2.0.1", false)]);
    s.services.push(svc);
    s.slices.push(slice);
    let (config, problems) = build(&s);
    let why = |p: &str| config.routes.route("h", p).unwrap().pick().unwrap_err();
    assert_eq!(why("/missing"), "service net/nosuch not found");
    assert_eq!(why("/port"), "service net/a has no port 81");
    assert!(why("/ext").contains("ExternalName"));
    assert!(why("/bucket").contains("resource backends"));
    assert_eq!(why("/empty"), "no ready endpoint for net/empty:80");
    // A Service not created yet is no Event; the rest are.
    let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(problems.len(), 3, "{messages:?}");
    assert!(problems
        .iter()
        .all(|p| p.name == "i" && p.reason == "InvalidBackend"));
}

/// A self-signed certificate for `names` from the `openssl` CLI: (PEM
/// certificate, PEM key).
pub(crate) fn openssl_cert(names: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", &format!("/CN={}", names[0])])
        .args(["-addext", &format!("subjectAltName={san}")])
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
    (std::fs::read(crt).unwrap(), std::fs::read(key).unwrap())
}

pub(crate) fn tls_secret(name: &str, crt: &[u8], key: &[u8]) -> Arc<Secret> {
    use k8s_openapi::ByteString;
    let mut secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "net"}, "type": "kubernetes.io/tls"}),
    )
    .unwrap();
    secret.data = Some(
        [
            ("tls.crt".to_string(), ByteString(crt.to_vec())),
            ("tls.key".to_string(), ByteString(key.to_vec())),
        ]
        .into(),
    );
    Arc::new(secret)
}

#[test]
fn certificates_by_server_name_and_bad_secrets_reported() {
    let (cafe_crt, cafe_key) = openssl_cert(&["cafe.example.com"]);
    let (wild_crt, wild_key) = openssl_cert(&["*.shop.example.com"]);
    let (other_crt, _) = openssl_cert(&["other.example.com"]);
    let mut s = snapshot(vec![
        ingress(
            "cafe",
            T0,
            json!({"tls": [{"hosts": ["cafe.example.com"], "secretName": "cafe"}],
                   "rules": [{"host": "cafe.example.com", "http": {"paths": [path("/", "Prefix", "a")]}}]}),
        ),
        ingress(
            "shop",
            T1,
            json!({"tls": [{"hosts": ["*.shop.example.com"], "secretName": "wild"},
                           {"hosts": ["broken.example.com"], "secretName": "mismatch"},
                           {"hosts": ["x.example.com"], "secretName": "garbage"},
                           {"hosts": ["y.example.com"], "secretName": "absent"},
                           {"hosts": ["z.example.com"], "secretName": "opaque"}],
                   "rules": [{"host": "a.shop.example.com", "http": {"paths": [path("/", "Prefix", "b")]}}]}),
        ),
    ]);
    s.secrets = vec![
        tls_secret("cafe", &cafe_crt, &cafe_key),
        tls_secret("wild", &wild_crt, &wild_key),
        tls_secret("mismatch", &other_crt, &cafe_key),
        tls_secret("garbage", b"not pem", b"not pem"),
        obj(
            json!({"metadata": {"name": "opaque", "namespace": "net"}, "data": {"password": "aHVudGVyMg=="}}),
        ),
    ];
    let (config, problems) = build(&s);
    let problem = |secret: &str| {
        problems
            .iter()
            .find(|p| p.message.contains(&format!("net/{secret}")))
            .unwrap_or_else(|| panic!("no problem for {secret}: {problems:?}"))
            .message
            .clone()
    };
    assert!(
        problem("mismatch").contains("tls.crt and tls.key"),
        "{}",
        problem("mismatch")
    );
    assert!(
        problem("garbage").contains("no PEM certificate"),
        "{}",
        problem("garbage")
    );
    assert_eq!(problem("absent"), "TLS secret net/absent not found");
    assert!(
        problem("opaque").contains("no tls.crt"),
        "{}",
        problem("opaque")
    );
    assert_eq!(problems.len(), 4);
    assert!(problems
        .iter()
        .all(|p| p.name == "shop" && p.reason == "InvalidTLSSecret"));

    let cert_of = |sni: Option<&str>| config.certs.resolve(sni).unwrap().cert[0].clone();
    let cafe = cert_of(Some("cafe.example.com"));
    let wild = cert_of(Some("a.shop.example.com"));
    assert_ne!(cafe, wild);
    assert_eq!(cert_of(Some("CAFE.example.com.")), cafe);
    assert_eq!(
        cert_of(Some("a.b.shop.example.com")),
        cafe,
        "one label: fallback"
    );
    assert_eq!(cert_of(None), cafe, "the first certificate is the fallback");
}

#[test]
fn host_normalization() {
    assert_eq!(normalize_host("Cafe.Example.com:8080"), "cafe.example.com");
    assert_eq!(normalize_host("cafe.example.com."), "cafe.example.com");
    assert_eq!(normalize_host("[::1]:80"), "::1");
    assert_eq!(normalize_host("10.0.0.1"), "10.0.0.1");
    assert_eq!(normalize_host(""), "");
}
