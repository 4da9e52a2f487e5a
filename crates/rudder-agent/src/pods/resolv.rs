//! A pod's /etc/resolv.conf by its dnsPolicy, as the kubelet forms it:
//!
//! - `ClusterFirst` (the default): the cluster DNS, the search path
//!   `<ns>.svc.<domain> svc.<domain> <domain>` followed by the node's
//!   search domains, `options ndots:5`. A hostNetwork pod with
//!   ClusterFirst is treated as `Default`; with no cluster DNS configured
//!   ClusterFirst falls back to `Default` too;
//! - `ClusterFirstWithHostNet`: ClusterFirst, hostNetwork or not;
//! - `Default`: the node's resolver configuration;
//! - `None`: only the pod's `dnsConfig`.
//!
//! `dnsConfig` nameservers, searches and options are merged into every
//! policy's result, then the kubelet's limits apply: 3 nameservers, 32
//! search domains, none longer than 253 characters, and a search line of at
//! most 2048 characters.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Pod;
use rudder_cri::cri::DnsConfig;
use rudder_dns::resolv::{merge_option, ResolvConf};

/// At most this many nameservers reach a resolv.conf (glibc reads 3).
pub const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains.
pub const MAX_SEARCHES: usize = 32;
/// The longest search line, in characters.
pub const MAX_SEARCH_LINE: usize = 2048;
/// The longest single search domain (a DNS subdomain); longer ones crash
/// some resolvers, so they are dropped.
pub const MAX_SEARCH_DOMAIN: usize = 253;

/// The agent's cluster DNS settings (kubelet's `--cluster-dns` and
/// `--cluster-domain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDnsSettings {
    /// The cluster DNS servers; empty: none configured.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain (`cluster.local`); empty: no cluster search path.
    pub cluster_domain: String,
}

impl Default for PodDnsSettings {
    fn default() -> Self {
        PodDnsSettings {
            cluster_dns: Vec::new(),
            cluster_domain: rudder_dns::DEFAULT_DOMAIN.to_string(),
        }
    }
}

/// A pod's resolver configuration and what the limits cut from it (the
/// kubelet reports those as `DNSConfigForming` warnings).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodDns {
    pub config: DnsConfig,
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cluster,
    Host,
    None,
}

fn kind(pod: &Pod) -> Kind {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    match spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst")
    {
        "None" => Kind::None,
        "ClusterFirstWithHostNet" => Kind::Cluster,
        "ClusterFirst" if !host_network => Kind::Cluster,
        // ClusterFirst on the host network, Default, and anything the API
        // server would not have admitted: the node's resolvers.
        _ => Kind::Host,
    }
}

static NO_CLUSTER_DNS_LOGGED: AtomicBool = AtomicBool::new(false);

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// The resolver configuration of a pod, given the node's own (`host`).
pub fn pod_dns(pod: &Pod, settings: &PodDnsSettings, host: &ResolvConf) -> PodDns {
    let mut kind = kind(pod);
    if kind == Kind::Cluster && settings.cluster_dns.is_empty() {
        if !NO_CLUSTER_DNS_LOGGED.swap(true, Ordering::Relaxed) {
            tracing::warn!("no cluster DNS is configured: pods with dnsPolicy ClusterFirst get the node's resolvers (dnsPolicy Default)");
        }
        kind = Kind::Host;
    }
    let mut config = DnsConfig::default();
    match kind {
        Kind::None => {}
        Kind::Host => {
            config.servers = host.nameservers.clone();
            config.searches = host.searches.clone();
            config.options = host.options.clone();
        }
        Kind::Cluster => {
            config.servers = settings.cluster_dns.iter().map(IpAddr::to_string).collect();
            let domain = settings.cluster_domain.trim_end_matches('.');
            if !domain.is_empty() {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
                config.searches = vec![
                    format!("{namespace}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.to_string(),
                ];
            }
            push_unique(&mut config.searches, host.searches.iter().cloned());
            config.options = vec!["ndots:5".to_string()];
        }
    }
    if let Some(extra) = pod.spec.as_ref().and_then(|s| s.dns_config.as_ref()) {
        push_unique(
            &mut config.servers,
            extra.nameservers.iter().flatten().cloned(),
        );
        push_unique(
            &mut config.searches,
            extra.searches.iter().flatten().cloned(),
        );
        for option in extra.options.iter().flatten() {
            let name = option.name.clone().unwrap_or_default();
            let text = match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name,
            };
            merge_option(&mut config.options, text);
        }
    }
    let warnings = fit_limits(&mut config);
    PodDns { config, warnings }
}

/// Cuts a config to the kubelet's limits; says what was cut.
fn fit_limits(config: &mut DnsConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.servers.len() > MAX_NAMESERVERS {
        config.servers.truncate(MAX_NAMESERVERS);
        warnings.push(format!(
            "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}",
            config.servers.join(" ")
        ));
    }
    let mut cut = false;
    if config.searches.len() > MAX_SEARCHES {
        config.searches.truncate(MAX_SEARCHES);
        cut = true;
    }
    let before = config.searches.len();
    config.searches.retain(|s| s.len() <= MAX_SEARCH_DOMAIN);
    cut |= config.searches.len() != before;
    // Domains are dropped from the end until the line fits.
    while config.searches.join(" ").len() > MAX_SEARCH_LINE {
        config.searches.pop();
        cut = true;
    }
    if cut {
        warnings.push(format!(
            "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
            config.searches.join(" ")
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "net"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn settings() -> PodDnsSettings {
        PodDnsSettings {
            cluster_dns: vec!["10.43.0.10".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
        }
    }

    fn host() -> ResolvConf {
        ResolvConf::parse("nameserver 192.0.2.53\nsearch corp.example\noptions edns0 timeout:1\n")
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_search_path() {
        let dns = pod_dns(&pod(json!({"containers": []})), &settings(), &host());
        assert_eq!(dns.config.servers, ["10.43.0.10"]);
        assert_eq!(
            dns.config.searches,
            [
                "net.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        assert_eq!(dns.config.options, ["ndots:5"]);
        assert!(dns.warnings.is_empty());
        assert_eq!(
            dns.config.resolv_conf(),
            "search net.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             nameserver 10.43.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn default_and_host_network_cluster_first_use_the_node_s_resolvers() {
        let expected = ["192.0.2.53"];
        for spec in [
            json!({"containers": [], "dnsPolicy": "Default"}),
            json!({"containers": [], "hostNetwork": true}),
            json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirst"}),
        ] {
            let dns = pod_dns(&pod(spec.clone()), &settings(), &host());
            assert_eq!(dns.config.servers, expected, "{spec}");
            assert_eq!(dns.config.searches, ["corp.example"]);
            assert_eq!(dns.config.options, ["edns0", "timeout:1"]);
        }
        let dns = pod_dns(
            &pod(
                json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
            ),
            &settings(),
            &host(),
        );
        assert_eq!(dns.config.servers, ["10.43.0.10"]);
    }

    #[test]
    fn no_cluster_dns_falls_back_to_the_node_s_resolvers() {
        let none = PodDnsSettings::default();
        let dns = pod_dns(&pod(json!({"containers": []})), &none, &host());
        assert_eq!(dns.config.servers, ["192.0.2.53"]);
        assert_eq!(dns.config.searches, ["corp.example"]);
    }

    #[test]
    fn none_is_only_the_dns_config_and_dns_config_merges_into_every_policy() {
        let extra = json!({"nameservers": ["1.1.1.1"], "searches": ["my.dns.search.suffix"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]});
        let dns = pod_dns(
            &pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": extra})),
            &settings(),
            &host(),
        );
        assert_eq!(dns.config.servers, ["1.1.1.1"]);
        assert_eq!(dns.config.searches, ["my.dns.search.suffix"]);
        assert_eq!(dns.config.options, ["ndots:2", "edns0"]);

        let dns = pod_dns(
            &pod(json!({"containers": [], "dnsConfig": extra})),
            &settings(),
            &host(),
        );
        assert_eq!(dns.config.servers, ["10.43.0.10", "1.1.1.1"]);
        assert_eq!(dns.config.searches.last().unwrap(), "my.dns.search.suffix");
        // ndots from dnsConfig replaces the cluster's ndots:5.
        assert_eq!(dns.config.options, ["ndots:2", "edns0"]);

        let dns = pod_dns(
            &pod(json!({"containers": [], "dnsPolicy": "Default", "dnsConfig": extra})),
            &settings(),
            &host(),
        );
        assert_eq!(dns.config.servers, ["192.0.2.53", "1.1.1.1"]);
        assert_eq!(dns.config.options, ["edns0", "timeout:1", "ndots:2"]);
    }

    #[test]
    fn limits_cut_nameservers_and_searches_with_a_warning() {
        let many_servers: Vec<String> = (1..=5).map(|i| format!("192.0.2.{i}")).collect();
        let many_searches: Vec<String> = (0..40).map(|i| format!("s{i}.example")).collect();
        let dns = pod_dns(
            &pod(json!({"containers": [], "dnsConfig": {
                "nameservers": many_servers, "searches": many_searches}})),
            &settings(),
            &host(),
        );
        assert_eq!(dns.config.servers, ["10.43.0.10", "192.0.2.1", "192.0.2.2"]);
        assert_eq!(dns.config.searches.len(), MAX_SEARCHES);
        assert_eq!(dns.warnings.len(), 2, "{:?}", dns.warnings);
        assert!(dns.warnings[0].starts_with("Nameserver limits were exceeded"));
        assert!(dns.warnings[1].starts_with("Search Line limits were exceeded"));

        // Over-long domains go; then domains go from the end until the
        // line is at most 2048 characters.
        let long: Vec<String> = (0..10)
            .map(|i| format!("{i}{}", "a".repeat(250)))
            .chain(["x".repeat(300)])
            .collect();
        let dns = pod_dns(
            &pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.1.1.1"], "searches": long}})),
            &settings(),
            &host(),
        );
        assert!(dns.config.searches.iter().all(|s| s.len() <= 253));
        assert!(dns.config.searches.join(" ").len() <= MAX_SEARCH_LINE);
        assert_eq!(dns.config.searches.len(), 8);
        assert_eq!(dns.warnings.len(), 1);
    }
}
