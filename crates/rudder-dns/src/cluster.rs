//! The cluster's Services and EndpointSlices as DNS records, following the
//! Kubernetes DNS specification and CoreDNS's kubernetes plugin:
//!
//! - `<svc>.<ns>.svc.<domain>`: A/AAAA of the cluster IPs; for a headless
//!   service, of every ready endpoint (every endpoint with
//!   `publishNotReadyAddresses`);
//! - `<endpoint>.<svc>.<ns>.svc.<domain>`: an endpoint's addresses, named
//!   by its `hostname` (StatefulSet members) or its dashed address;
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV per named port, to
//!   the service name (ClusterIP) or to each endpoint's name (headless);
//! - ExternalName services: a CNAME to `spec.externalName`;
//! - PTR for cluster IPs and endpoint addresses;
//! - `ns.dns.<domain>`: the address of `kube-system/kube-dns`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::records::{dashed, Records, RecordsBuilder};

/// The label an EndpointSlice names its Service by.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The cluster DNS Service, whose address `ns.dns.<domain>` names.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A service's cluster IPs (none for headless or not yet allocated).
fn cluster_ips(service: &Service) -> Vec<IpAddr> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let listed = spec.cluster_ips.clone().unwrap_or_default();
    let ips = if listed.is_empty() {
        spec.cluster_ip.iter().cloned().collect()
    } else {
        listed
    };
    ips.iter().filter_map(|ip| ip.parse().ok()).collect()
}

fn is_headless(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// Builds the records for the cluster domain from every Service and
/// EndpointSlice. Deterministic: services are taken in namespace/name
/// order, so when two names claim an address its PTR is always the same.
pub fn cluster_records<'a>(
    domain: &str,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Records {
    let mut builder = RecordsBuilder::new(domain);
    let domain = builder.domain().to_string();

    let mut slices_by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if slice.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
        else {
            continue;
        };
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        slices_by_service
            .entry((namespace, service.clone()))
            .or_default()
            .push(slice);
    }

    let mut services: Vec<&Service> = services.into_iter().collect();
    services.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });

    // Service addresses first: their PTRs win over endpoints'.
    for service in &services {
        let (Some(namespace), Some(name)) = (&service.metadata.namespace, &service.metadata.name)
        else {
            continue;
        };
        let base = format!("{name}.{namespace}.svc.{domain}");
        for ip in cluster_ips(service) {
            builder.add_ptr(ip, &base);
        }
    }

    for service in &services {
        let (Some(namespace), Some(name)) = (&service.metadata.namespace, &service.metadata.name)
        else {
            continue;
        };
        let Some(spec) = &service.spec else {
            continue;
        };
        let base = format!("{name}.{namespace}.svc.{domain}");
        if spec.type_.as_deref() == Some("ExternalName") {
            match spec.external_name.as_deref().filter(|n| !n.is_empty()) {
                Some(target) => builder.add_cname(&base, target),
                None => builder.add_name(&base),
            }
            continue;
        }
        builder.add_name(&base);
        let headless = is_headless(service);
        if !headless {
            for ip in cluster_ips(service) {
                builder.add_address(&base, ip);
            }
            for port in spec.ports.iter().flatten() {
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let protocol = port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
                if let Some(port_name) = port.name.as_deref().filter(|n| is_dns_label(n)) {
                    builder.add_srv(&format!("_{port_name}._{protocol}.{base}"), number, &base);
                }
                builder.add_srv(&base, number, &base);
            }
        }
        if (namespace.as_str(), name.as_str()) == DNS_SERVICE {
            for ip in cluster_ips(service) {
                builder.add_address(&format!("ns.dns.{domain}"), ip);
            }
        }

        let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
        let key = (namespace.clone(), name.clone());
        for slice in slices_by_service.get(&key).into_iter().flatten() {
            if slice.address_type == "FQDN" {
                continue;
            }
            for endpoint in &slice.endpoints {
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                if !ready && !publish_not_ready {
                    continue;
                }
                let hostname = endpoint
                    .hostname
                    .as_deref()
                    .filter(|h| is_dns_label(h))
                    .map(str::to_ascii_lowercase);
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<IpAddr>() else {
                        continue;
                    };
                    let label = hostname.clone().unwrap_or_else(|| dashed(ip));
                    let endpoint_name = format!("{label}.{base}");
                    builder.add_address(&endpoint_name, ip);
                    builder.add_ptr(ip, &endpoint_name);
                    if !headless {
                        continue;
                    }
                    builder.add_address(&base, ip);
                    // The slice's ports are the endpoints' (target) ports.
                    for port in slice.ports.iter().flatten() {
                        let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                            continue;
                        };
                        let protocol = port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
                        if let Some(port_name) = port.name.as_deref().filter(|n| is_dns_label(n)) {
                            builder.add_srv(
                                &format!("_{port_name}._{protocol}.{base}"),
                                number,
                                &endpoint_name,
                            );
                        }
                        builder.add_srv(&base, number, &endpoint_name);
                    }
                }
            }
        }
    }
    builder.build()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub(crate) fn service(ns: &str, name: &str, spec: ServiceSpec) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(spec),
            ..Default::default()
        }
    }

    pub(crate) fn port(name: &str, port: i32, protocol: &str) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            protocol: Some(protocol.into()),
            ..Default::default()
        }
    }

    pub(crate) fn endpoint(ip: &str, hostname: Option<&str>, ready: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            hostname: hostname.map(String::from),
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(ready),
                terminating: Some(false),
            }),
            ..Default::default()
        }
    }

    pub(crate) fn slice(
        ns: &str,
        service: &str,
        name: &str,
        endpoints: Vec<Endpoint>,
        ports: Vec<(&str, i32)>,
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: Some([(LABEL_SERVICE_NAME.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(
                ports
                    .into_iter()
                    .map(|(n, p)| EndpointPort {
                        name: Some(n.into()),
                        port: Some(p),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn cluster_ip_service_gets_its_address_srv_and_ptr() {
        let svc = service(
            "net",
            "web",
            ServiceSpec {
                cluster_ip: Some("10.43.0.20".into()),
                cluster_ips: Some(vec!["10.43.0.20".into()]),
                ports: Some(vec![port("http", 8080, "TCP"), port("dns", 53, "UDP")]),
                ..Default::default()
            },
        );
        let eps = slice(
            "net",
            "web",
            "web-abc",
            vec![endpoint("10.42.1.5", None, true)],
            vec![("http", 80)],
        );
        let r = cluster_records("cluster.local", [&svc], [&eps]);
        assert_eq!(
            r.addresses("web.net.svc.cluster.local"),
            ips(&["10.43.0.20"])
        );
        // Endpoint names exist for ClusterIP services too (CoreDNS), but
        // the service name is the cluster IP only.
        assert_eq!(
            r.addresses("10-42-1-5.web.net.svc.cluster.local"),
            ips(&["10.42.1.5"])
        );
        assert_eq!(
            r.ptr("10.43.0.20".parse().unwrap()),
            Some("web.net.svc.cluster.local")
        );
        assert_eq!(
            r.ptr("10.42.1.5".parse().unwrap()),
            Some("10-42-1-5.web.net.svc.cluster.local")
        );
    }

    #[test]
    fn headless_service_lists_ready_endpoints_and_hostnames() {
        let svc = service(
            "net",
            "db",
            ServiceSpec {
                cluster_ip: Some("None".into()),
                cluster_ips: Some(vec!["None".into()]),
                ports: Some(vec![port("web", 80, "TCP")]),
                ..Default::default()
            },
        );
        let eps = slice(
            "net",
            "db",
            "db-1",
            vec![
                endpoint("10.42.1.7", Some("db-0"), true),
                endpoint("10.42.2.8", Some("db-1"), true),
                endpoint("10.42.2.9", Some("db-2"), false),
            ],
            vec![("web", 80)],
        );
        let r = cluster_records("cluster.local", [&svc], [&eps]);
        assert_eq!(
            r.addresses("db.net.svc.cluster.local"),
            ips(&["10.42.1.7", "10.42.2.8"])
        );
        assert_eq!(
            r.addresses("db-0.db.net.svc.cluster.local"),
            ips(&["10.42.1.7"])
        );
        assert!(r.addresses("db-2.db.net.svc.cluster.local").is_empty());

        // publishNotReadyAddresses includes every endpoint.
        let mut publish = svc.clone();
        publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let r = cluster_records("cluster.local", [&publish], [&eps]);
        assert_eq!(r.addresses("db.net.svc.cluster.local").len(), 3);
        assert_eq!(
            r.addresses("db-2.db.net.svc.cluster.local"),
            ips(&["10.42.2.9"])
        );
    }

    #[test]
    fn slices_of_other_services_namespaces_and_deleted_slices_are_ignored() {
        let svc = service(
            "net",
            "db",
            ServiceSpec {
                cluster_ip: Some("None".into()),
                ..Default::default()
            },
        );
        let other_ns = slice(
            "other",
            "db",
            "db-x",
            vec![endpoint("10.42.3.1", None, true)],
            vec![],
        );
        let mut deleted = slice(
            "net",
            "db",
            "db-y",
            vec![endpoint("10.42.3.2", None, true)],
            vec![],
        );
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let r = cluster_records("cluster.local", [&svc], [&other_ns, &deleted]);
        assert!(r.addresses("db.net.svc.cluster.local").is_empty());
    }

    #[test]
    fn kube_dns_names_the_zone_s_nameserver() {
        let svc = service(
            "kube-system",
            "kube-dns",
            ServiceSpec {
                cluster_ip: Some("10.43.0.10".into()),
                ..Default::default()
            },
        );
        let r = cluster_records("cluster.local.", [&svc], []);
        assert_eq!(r.addresses("ns.dns.cluster.local"), ips(&["10.43.0.10"]));
        assert_eq!(r.domain(), "cluster.local");
    }
}
