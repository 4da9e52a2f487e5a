//! The routing table: built from the Ingresses we serve and the Services
//! and EndpointSlices they point at, then asked for a backend per request.
//!
//! Matching, as the Ingress API describes it:
//! - hosts: an exact host beats a wildcard (`*.example.com` covers exactly
//!   one more label: `a.example.com`, not `example.com` nor
//!   `a.b.example.com`), which beats rules without a host; the first of
//!   those groups with a matching path wins (so a catch-all rule still
//!   serves paths a host's rules leave out);
//! - paths: `Exact` is the whole path; `Prefix` matches element by element
//!   (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`; a trailing `/`
//!   is ignored); `ImplementationSpecific` is `Prefix` here; the longest
//!   path wins, `Exact` before `Prefix` at equal length, then the oldest
//!   Ingress;
//! - nothing matches: the `spec.defaultBackend` of the oldest Ingress that
//!   has one, else 404.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rustls::sign::CertifiedKey;

use crate::class;
use crate::tls::{certified_key, CertStore};

/// The objects the table is built from. The agent answers from its
/// informers' caches; tests from plain vectors ([`Snapshot`]).
pub trait Objects {
    fn ingresses(&self) -> Vec<Arc<Ingress>>;
    fn ingress_classes(&self) -> Vec<Arc<IngressClass>>;
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;
    /// The slices of a Service (label `kubernetes.io/service-name`).
    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>>;
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
}

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// [`Objects`] held in vectors.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub ingresses: Vec<Arc<Ingress>>,
    pub classes: Vec<Arc<IngressClass>>,
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub secrets: Vec<Arc<Secret>>,
}

fn is(meta: &ObjectMeta, namespace: &str, name: &str) -> bool {
    meta.namespace.as_deref() == Some(namespace) && meta.name.as_deref() == Some(name)
}

impl Objects for Snapshot {
    fn ingresses(&self) -> Vec<Arc<Ingress>> {
        self.ingresses.clone()
    }

    fn ingress_classes(&self) -> Vec<Arc<IngressClass>> {
        self.classes.clone()
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services
            .iter()
            .find(|s| is(&s.metadata, namespace, name))
            .cloned()
    }

    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .map(String::as_str)
                        == Some(service)
            })
            .cloned()
            .collect()
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets
            .iter()
            .find(|s| is(&s.metadata, namespace, name))
            .cloned()
    }
}

/// Something wrong with one Ingress that the controller cannot serve as
/// asked (reported as a Warning Event on it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub namespace: String,
    pub name: String,
    /// A short CamelCase reason (`InvalidTLSSecret`, `InvalidBackend`).
    pub reason: &'static str,
    pub message: String,
}

/// Where requests of one backend go.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/service:port`, for logs and error pages.
    pub name: String,
    target: Target,
    next: AtomicUsize,
}

#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The ready endpoints (possibly none: 503).
    Endpoints(Vec<SocketAddr>),
    /// A backend that cannot be served, and why (503).
    Unavailable(String),
}

impl Backend {
    fn new(name: String, target: Target) -> Backend {
        Backend {
            name,
            target,
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint, round-robin; or why there is none.
    pub fn pick(&self) -> Result<SocketAddr, String> {
        match &self.target {
            Target::Endpoints(list) if !list.is_empty() => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                Ok(list[i % list.len()])
            }
            Target::Endpoints(_) => Err(format!("no ready endpoint for {}", self.name)),
            Target::Unavailable(why) => Err(why.clone()),
        }
    }

    /// The ready endpoints (tests, logs).
    pub fn endpoints(&self) -> &[SocketAddr] {
        match &self.target {
            Target::Endpoints(list) => list,
            Target::Unavailable(_) => &[],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Exact,
    Prefix,
}

#[derive(Debug)]
struct PathRoute {
    /// As written, minus a trailing `/` for prefixes (`/` becomes ``).
    path: String,
    kind: PathKind,
    backend: Arc<Backend>,
}

impl PathRoute {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathKind::Exact => path == self.path,
            PathKind::Prefix => {
                self.path.is_empty()
                    || path
                        .strip_prefix(self.path.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }
}

/// The routes of every Ingress we serve.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<PathRoute>>,
    /// By the domain after `*.`.
    wildcard: HashMap<String, Vec<PathRoute>>,
    any_host: Vec<PathRoute>,
    default_backend: Option<Arc<Backend>>,
}

impl RouteTable {
    /// The backend for a request's host (as sent: case and a `:port` do
    /// not matter) and path; `None` means 404.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Backend>> {
        let host = normalize_host(host);
        let path = if path.is_empty() { "/" } else { path };
        let wildcard = host
            .split_once('.')
            .filter(|(label, _)| !label.is_empty())
            .and_then(|(_, domain)| self.wildcard.get(domain));
        [self.exact.get(&host), wildcard, Some(&self.any_host)]
            .into_iter()
            .flatten()
            .find_map(|routes| routes.iter().find(|r| r.matches(path)))
            .map(|r| &r.backend)
            .or(self.default_backend.as_ref())
    }

    /// Whether nothing is routed at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.wildcard.is_empty()
            && self.any_host.is_empty()
            && self.default_backend.is_none()
    }
}

/// `Cafe.Example.com:8080.` → `cafe.example.com`; `[::1]:80` → `::1`.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// What the controller serves: routes and certificates.
#[derive(Debug, Default)]
pub struct IngressConfig {
    pub routes: RouteTable,
    pub certs: CertStore,
}

/// Builds routes and certificates from the cluster's objects, with the
/// problems of the Ingresses served.
pub fn build(objects: &dyn Objects) -> (IngressConfig, Vec<Problem>) {
    let classes = objects.ingress_classes();
    let mut ingresses: Vec<Arc<Ingress>> = objects
        .ingresses()
        .into_iter()
        .filter(|i| i.metadata.deletion_timestamp.is_none() && class::served(i, &classes))
        .collect();
    // Oldest first: on equal paths (and for the default backend and
    // certificates) the oldest Ingress wins, as with other controllers.
    ingresses.sort_by(|a, b| {
        let key = |i: &Ingress| {
            (
                i.metadata.creation_timestamp.clone().map(|t| t.0),
                i.metadata.namespace.clone(),
                i.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });

    let mut builder = Builder {
        objects,
        backends: HashMap::new(),
        problems: Vec::new(),
    };
    let mut table = RouteTable::default();
    let mut certs = CertStore::default();
    for ingress in &ingresses {
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        let name = ingress.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &ingress.spec else { continue };
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.as_deref().unwrap_or("").to_ascii_lowercase();
            let group = if host.is_empty() {
                &mut table.any_host
            } else if let Some(domain) = host.strip_prefix("*.") {
                table.wildcard.entry(domain.to_string()).or_default()
            } else {
                table.exact.entry(host.clone()).or_default()
            };
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let kind = match path.path_type.as_str() {
                    "Exact" => PathKind::Exact,
                    // ImplementationSpecific is our choice: Prefix.
                    _ => PathKind::Prefix,
                };
                let text = path.path.as_deref().unwrap_or("/");
                let text = match kind {
                    PathKind::Exact => text.to_string(),
                    PathKind::Prefix => text.trim_end_matches('/').to_string(),
                };
                let backend = builder.backend(&namespace, &name, &path.backend);
                group.push(PathRoute {
                    path: text,
                    kind,
                    backend,
                });
            }
        }
        if let Some(default) = &spec.default_backend {
            let backend = builder.backend(&namespace, &name, default);
            table.default_backend.get_or_insert(backend);
        }
        for tls in spec.tls.iter().flatten() {
            let Some(secret_name) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let key = match objects.secret(&namespace, secret_name) {
                None => Err(format!("TLS secret {namespace}/{secret_name} not found")),
                Some(secret) => certified_key(&secret)
                    .map(Arc::new)
                    .map_err(|e| format!("TLS secret {namespace}/{secret_name}: {e}")),
            };
            match key {
                Ok(key) => add_cert(&mut certs, tls.hosts.as_deref().unwrap_or(&[]), key),
                Err(message) => builder.problems.push(Problem {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    reason: "InvalidTLSSecret",
                    message,
                }),
            }
        }
    }
    for routes in table
        .exact
        .values_mut()
        .chain(table.wildcard.values_mut())
        .chain(std::iter::once(&mut table.any_host))
    {
        // Stable: among equals, the oldest Ingress's route stays first.
        routes.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then_with(|| (a.kind == PathKind::Prefix).cmp(&(b.kind == PathKind::Prefix)))
        });
    }
    (
        IngressConfig {
            routes: table,
            certs,
        },
        builder.problems,
    )
}

fn add_cert(certs: &mut CertStore, hosts: &[String], key: Arc<CertifiedKey>) {
    if certs.fallback.is_none() {
        certs.fallback = Some(key.clone());
    }
    for host in hosts {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(domain) => {
                certs
                    .wildcard
                    .entry(domain.to_string())
                    .or_insert(key.clone());
            }
            None => {
                certs.exact.entry(host).or_insert(key.clone());
            }
        }
    }
}

struct Builder<'a> {
    objects: &'a dyn Objects,
    /// One backend per namespace/service/port, shared by the routes that
    /// name it, so round-robin spreads over all of their requests.
    backends: HashMap<String, Arc<Backend>>,
    problems: Vec<Problem>,
}

impl Builder<'_> {
    fn backend(
        &mut self,
        namespace: &str,
        ingress: &str,
        backend: &IngressBackend,
    ) -> Arc<Backend> {
        let Some(service) = &backend.service else {
            let message = "resource backends are not supported by the rudder ingress controller";
            self.problems.push(Problem {
                namespace: namespace.into(),
                name: ingress.into(),
                reason: "InvalidBackend",
                message: message.into(),
            });
            return Arc::new(Backend::new(
                format!("{namespace}/resource"),
                Target::Unavailable(message.into()),
            ));
        };
        let port = service.port.as_ref();
        let port_text = match (
            port.and_then(|p| p.number),
            port.and_then(|p| p.name.as_deref()),
        ) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) => name.to_string(),
            (None, None) => String::new(),
        };
        let name = format!("{namespace}/{}:{port_text}", service.name);
        if let Some(existing) = self.backends.get(&name) {
            return existing.clone();
        }
        let target = match self.resolve(namespace, &service.name, port) {
            Ok(endpoints) => Target::Endpoints(endpoints),
            Err((why, report)) => {
                if report {
                    self.problems.push(Problem {
                        namespace: namespace.into(),
                        name: ingress.into(),
                        reason: "InvalidBackend",
                        message: why.clone(),
                    });
                }
                Target::Unavailable(why)
            }
        };
        let backend = Arc::new(Backend::new(name.clone(), target));
        self.backends.insert(name, backend.clone());
        backend
    }

    /// The ready endpoints of a service port; or why not and whether that
    /// is worth an Event (a Service not created yet is not).
    fn resolve(
        &self,
        namespace: &str,
        service_name: &str,
        port: Option<&k8s_openapi::api::networking::v1::ServiceBackendPort>,
    ) -> Result<Vec<SocketAddr>, (String, bool)> {
        let Some(service) = self.objects.service(namespace, service_name) else {
            return Err((
                format!("service {namespace}/{service_name} not found"),
                false,
            ));
        };
        let spec = service.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            return Err((
                format!("service {namespace}/{service_name} is an ExternalName service, which the rudder ingress controller does not proxy to"),
                true,
            ));
        }
        let wanted = |p: &k8s_openapi::api::core::v1::ServicePort| match port {
            Some(port) => match (port.number, port.name.as_deref()) {
                (Some(n), _) => p.port == n,
                (None, Some(name)) => p.name.as_deref() == Some(name),
                (None, None) => false,
            },
            None => false,
        };
        let Some(service_port) = spec.ports.iter().flatten().find(|p| wanted(p)) else {
            return Err((
                format!(
                    "service {namespace}/{service_name} has no port {}",
                    port.map(|p| p
                        .number
                        .map(|n| n.to_string())
                        .or_else(|| p.name.clone())
                        .unwrap_or_default())
                        .unwrap_or_default()
                ),
                true,
            ));
        };
        let port_name = service_port.name.clone().unwrap_or_default();
        let mut endpoints = Vec::new();
        for slice in self.objects.endpoint_slices(namespace, service_name) {
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue;
            }
            // The slice's port of the same name carries the target port,
            // resolved per pod by the EndpointSlice controller.
            let Some(number) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| {
                    p.name.clone().unwrap_or_default() == port_name
                        && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                })
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                // Unset readiness means ready.
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                if !ready {
                    continue;
                }
                // Consumers use an endpoint's first address.
                if let Some(ip) = endpoint
                    .addresses
                    .first()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                {
                    endpoints.push(SocketAddr::new(ip, number));
                }
            }
        }
        endpoints.sort();
        endpoints.dedup();
        Ok(endpoints)
    }
}

#[cfg(test)]
mod tests;
