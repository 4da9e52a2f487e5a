//! The node's share of the built-in Ingress controller: `rudder_ingress`
//! listening on the node's addresses (80 and 443), its routes rebuilt from
//! the shared informers' caches (Ingresses, IngressClasses, Services,
//! EndpointSlices, Secrets) whenever one of them changes, bursts coalesced.
//! What an Ingress asks for that cannot be served (a bad TLS secret, a
//! backend that is no Service port) becomes a Warning Event on it; the
//! rest of it is served.
//!
//! Status (`status.loadBalancer.ingress`) is written by the controller
//! manager, once for the cluster, not by every node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::{Client, ResourceExt};
use rudder_ingress::routes::SERVICE_NAME_LABEL;
use rudder_ingress::{IngressController, Objects, Problem};
use rudder_runtime::events::{EventRecorder, EventType};
use rudder_runtime::{Informer, Informers};

/// The ports the controller serves unless told otherwise.
pub const HTTP_PORT: u16 = 80;
pub const HTTPS_PORT: u16 = 443;

/// How long a burst of changes may last before the routes are rebuilt.
const COALESCE: Duration = Duration::from_millis(200);

/// The index of EndpointSlices by `namespace/service`.
const SLICES_BY_SERVICE: &str = "ingress-service-name";

/// Where the controller listens.
#[derive(Clone, Debug)]
pub struct IngressListenConfig {
    /// The node's addresses.
    pub addresses: Vec<IpAddr>,
    pub http_port: u16,
    pub https_port: u16,
}

/// Listens and keeps the routes current until the process ends. An
/// address or port that cannot be bound is logged and skipped.
pub async fn run(client: Client, informers: Informers, config: IngressListenConfig) {
    let controller = IngressController::new();
    let listening = controller
        .listen(&config.addresses, config.http_port, config.https_port)
        .await;
    if listening.http.is_empty() && listening.https.is_empty() {
        tracing::warn!(addresses = ?config.addresses, "the ingress controller listens nowhere");
    }
    sync(client, informers, controller).await;
    drop(listening);
}

/// The objects the routes are built from, as the informers cache them.
struct Cached {
    ingresses: Informer<Ingress>,
    classes: Informer<IngressClass>,
    services: Informer<Service>,
    slices: Informer<EndpointSlice>,
    secrets: Informer<Secret>,
}

impl Objects for Cached {
    fn ingresses(&self) -> Vec<Arc<Ingress>> {
        self.ingresses.list()
    }

    fn ingress_classes(&self) -> Vec<Arc<IngressClass>> {
        self.classes.list()
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get_namespaced(namespace, name)
    }

    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .by_index(SLICES_BY_SERVICE, &format!("{namespace}/{service}"))
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get_namespaced(namespace, name)
    }
}

/// Keeps `controller`'s routes and certificates current, forever.
pub async fn sync(client: Client, informers: Informers, controller: IngressController) {
    let cached = Cached {
        ingresses: informers.get::<Ingress>(),
        classes: informers.get::<IngressClass>(),
        services: informers.get::<Service>(),
        slices: informers.get::<EndpointSlice>(),
        // Only TLS Secrets, and only through this field selector: the
        // Node authorizer lets a node list no other Secrets.
        secrets: Informer::with_config(
            kube::Api::all(client.clone()),
            kube::runtime::watcher::Config::default().fields("type=kubernetes.io/tls"),
        ),
    };
    cached.secrets.start();
    cached.slices.add_index(SLICES_BY_SERVICE, |slice| {
        let service = slice.labels().get(SERVICE_NAME_LABEL).cloned();
        service
            .map(|s| vec![format!("{}/{s}", slice.namespace().unwrap_or_default())])
            .unwrap_or_default()
    });
    let changed = Arc::new(tokio::sync::Notify::new());
    cached.ingresses.notify_on_change(&changed);
    cached.classes.notify_on_change(&changed);
    cached.services.notify_on_change(&changed);
    cached.slices.notify_on_change(&changed);
    cached.secrets.notify_on_change(&changed);
    cached.ingresses.wait_synced().await;
    cached.classes.wait_synced().await;
    cached.services.wait_synced().await;
    cached.slices.wait_synced().await;
    cached.secrets.wait_synced().await;

    // Set by every change, cleared by every build: a request that matches
    // no route rebuilds at once when the informers are ahead of the table.
    // One build at a time, so an older build never overwrites a newer one.
    let dirty = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let building = Arc::new(std::sync::Mutex::new(()));
    let cached = Arc::new(cached);
    {
        let dirty = dirty.clone();
        cached
            .ingresses
            .on_change(move |_| dirty.store(true, Ordering::SeqCst));
    }
    {
        let dirty = dirty.clone();
        cached
            .classes
            .on_change(move |_| dirty.store(true, Ordering::SeqCst));
    }
    {
        let (cached, dirty, building) = (cached.clone(), dirty.clone(), building.clone());
        controller.set_refresh(Arc::new(move || {
            let _one = building.lock().unwrap_or_else(|e| e.into_inner());
            dirty
                .swap(false, Ordering::SeqCst)
                .then(|| rudder_ingress::build(&*cached).0)
        }));
    }
    let recorder = EventRecorder::new(client, "rudder-ingress");
    let mut reported: HashMap<String, String> = HashMap::new();
    // What the informers held at the last rebuild, logged when it changes:
    // when a node serves an Ingress late, its log says when it saw it.
    let mut seen = (usize::MAX, usize::MAX);
    loop {
        let problems = {
            let _one = building.lock().unwrap_or_else(|e| e.into_inner());
            dirty.store(false, Ordering::SeqCst);
            let (config, problems) = rudder_ingress::build(&*cached);
            controller.update(config);
            problems
        };
        let now = (cached.ingresses.list().len(), cached.classes.list().len());
        if now != seen {
            tracing::info!(
                ingresses = now.0,
                ingress_classes = now.1,
                "ingress routes rebuilt"
            );
            seen = now;
        }
        report(&recorder, &cached.ingresses, &mut reported, &problems);
        changed.notified().await;
        tokio::time::sleep(COALESCE).await;
    }
}

/// A Warning Event per Ingress whose problems changed since last said.
fn report(
    recorder: &EventRecorder,
    ingresses: &Informer<Ingress>,
    reported: &mut HashMap<String, String>,
    problems: &[Problem],
) {
    let mut now: HashMap<String, (Vec<&Problem>, String)> = HashMap::new();
    for p in problems {
        let entry = now
            .entry(format!("{}/{}", p.namespace, p.name))
            .or_default();
        entry.0.push(p);
        if !entry.1.is_empty() {
            entry.1.push_str("; ");
        }
        entry.1.push_str(&p.message);
    }
    reported.retain(|k, _| now.contains_key(k));
    for (key, (list, message)) in now {
        if reported.get(&key) == Some(&message) {
            continue;
        }
        let first = list[0];
        tracing::warn!(ingress = %key, problem = %message, "ingress not fully served");
        if let Some(ingress) = ingresses.get_namespaced(&first.namespace, &first.name) {
            for p in list {
                recorder.record(ingress.as_ref(), EventType::Warning, p.reason, &p.message);
            }
        }
        reported.insert(key, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::testing::TestApi;
    use kube::api::{Api, ListParams};
    use serde_json::json;

    /// A backend answering every request with `body`.
    async fn backend(body: &'static str) -> std::net::SocketAddr {
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    async fn get(port: u16, host: &str) -> (u16, String) {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Host: {host}"))
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.parse().unwrap_or(0), body.to_string())
    }

    /// From API objects to served requests, and a bad TLS secret to an
    /// Event, against a real API server.
    #[tokio::test]
    async fn serves_what_the_api_says() {
        let api = TestApi::start().await;
        api.namespace("net").await;
        let web = backend("hello from web").await;
        let _: IngressClass = api
            .create_cluster(json!({"metadata": {"name": "rudder",
                "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
                "spec": {"controller": "rudder.io/ingress"}}))
            .await;
        let _: Service = api
            .create(
                "net",
                json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 8080, "name": "http"}]}}),
            )
            .await;
        let _: EndpointSlice = api
            .create(
                "net",
                json!({"metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": web.port(), "protocol": "TCP"}],
                    "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
            )
            .await;
        let _: Secret = api
            .create(
                "net",
                json!({"metadata": {"name": "broken"}, "type": "kubernetes.io/tls",
                    "data": {"tls.crt": "bm90IGEgY2VydA==", "tls.key": "bm90IGEga2V5"}}),
            )
            .await;
        // No class named: the default class (ours) applies.
        let _: Ingress = api
            .create(
                "net",
                json!({"metadata": {"name": "cafe"}, "spec": {
                    "tls": [{"hosts": ["cafe.example.com"], "secretName": "broken"}],
                    "rules": [{"host": "cafe.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": "web", "port": {"number": 8080}}}}]}}]}}),
            )
            .await;

        let informers = Informers::new(api.client.clone());
        let controller = IngressController::new();
        let listening = controller
            .listen(&["127.0.0.1".parse().unwrap()], 0, 0)
            .await;
        let port = listening.http[0].port();
        tokio::spawn(sync(api.client.clone(), informers.clone(), controller));
        informers.start();

        let mut answer = (0, String::new());
        for _ in 0..100 {
            answer = get(port, "cafe.example.com").await;
            if answer.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(answer, (200, "hello from web".to_string()));
        assert_eq!(get(port, "nope.example.com").await.0, 404);

        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(api.client.clone(), "net");
        let mut found = None;
        for _ in 0..100 {
            found = events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("InvalidTLSSecret"));
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let event = found.expect("a Warning Event about the TLS secret");
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.involved_object.name.as_deref(), Some("cafe"));
        assert!(
            event
                .message
                .as_deref()
                .unwrap_or("")
                .contains("net/broken"),
            "{event:?}"
        );

        // The endpoint goes away: 503.
        let slices: Api<EndpointSlice> = Api::namespaced(api.client.clone(), "net");
        slices.delete("web-1", &Default::default()).await.unwrap();
        for _ in 0..100 {
            answer = get(port, "cafe.example.com").await;
            if answer.0 == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(answer.0, 503, "{answer:?}");
    }
}
