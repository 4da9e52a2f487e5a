//! networking.k8s.io/v1: NetworkPolicy, Ingress and IngressClass, with the
//! field paths kube-apiserver reports.

use std::net::IpAddr;

use rudder_apimachinery::selector::LabelSelector;
use serde_json::Value;

use super::Validator;
use crate::error::FieldCause;
use crate::object::{is_dns_label, is_dns_subdomain};

const PORT_NAME_MSG: &str = "must contain only lowercase alphanumeric characters or '-', at most 15 of them, at least one letter, and neither begin nor end with '-' nor hold '--'";

/// An IANA service name, which named ports are (`http`, `dns-tcp`).
pub(crate) fn is_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// An address range: the address as a number, its width (32 or 128) and
/// the prefix length. Host bits set are refused, as Kubernetes refuses
/// `10.0.0.1/8` in an ipBlock.
fn parse_cidr(text: &str) -> Result<(u128, u8, u8), &'static str> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or("must be a valid CIDR (e.g. 10.0.0.0/8 or 2001:db8::/32)")?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| "must be a valid CIDR (e.g. 10.0.0.0/8 or 2001:db8::/32)")?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| "must be a valid CIDR (e.g. 10.0.0.0/8 or 2001:db8::/32)")?;
    let (value, width) = match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    if prefix > width {
        return Err("must be a valid CIDR (e.g. 10.0.0.0/8 or 2001:db8::/32)");
    }
    let host_bits = u32::from(width - prefix);
    let host_mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    if value & host_mask != 0 {
        return Err("must be a network address: the bits after the prefix must be zero");
    }
    Ok((value, width, prefix))
}

impl Validator {
    /// A `metav1.LabelSelector` that may be absent.
    fn optional_selector(&mut self, field: &str, selector: Option<&Value>) {
        if let Some(selector) = selector.filter(|s| !s.is_null()) {
            if let Err(err) = LabelSelector::from_json(selector) {
                self.push(FieldCause::invalid(
                    field,
                    &selector.to_string(),
                    &err.to_string(),
                ));
            }
        }
    }

    pub(super) fn network_policy(&mut self, obj: &Value) {
        let spec = &obj["spec"];
        self.optional_selector("spec.podSelector", spec.get("podSelector"));
        for (direction, peers_field) in [("ingress", "from"), ("egress", "to")] {
            let rules = spec.get(direction).and_then(Value::as_array);
            for (i, rule) in rules.into_iter().flatten().enumerate() {
                let path = format!("spec.{direction}[{i}]");
                let ports = rule.get("ports").and_then(Value::as_array);
                for (j, port) in ports.into_iter().flatten().enumerate() {
                    self.network_policy_port(&format!("{path}.ports[{j}]"), port);
                }
                let peers = rule.get(peers_field).and_then(Value::as_array);
                for (j, peer) in peers.into_iter().flatten().enumerate() {
                    self.network_policy_peer(&format!("{path}.{peers_field}[{j}]"), peer);
                }
            }
        }
        let types = spec.get("policyTypes").and_then(Value::as_array);
        let types = types.map(Vec::as_slice).unwrap_or_default();
        if types.len() > 2 {
            self.push(FieldCause::invalid(
                "spec.policyTypes",
                &Value::Array(types.to_vec()).to_string(),
                "may not specify more than two policyTypes",
            ));
        }
        for (i, kind) in types.iter().enumerate() {
            self.enum_value(
                &format!("spec.policyTypes[{i}]"),
                Some(kind),
                &["Ingress", "Egress"],
            );
        }
    }

    fn network_policy_port(&mut self, path: &str, port: &Value) {
        self.enum_value(
            &format!("{path}.protocol"),
            port.get("protocol"),
            &["TCP", "UDP", "SCTP"],
        );
        let end_port = port.get("endPort").filter(|v| !v.is_null());
        match port.get("port").filter(|v| !v.is_null()) {
            None => {
                if end_port.is_some() {
                    self.push(FieldCause::required(
                        format!("{path}.port"),
                        "must be specified when endPort is specified",
                    ));
                }
            }
            Some(Value::String(name)) => {
                if !is_port_name(name) {
                    self.push(FieldCause::invalid(
                        format!("{path}.port"),
                        name,
                        PORT_NAME_MSG,
                    ));
                }
                if end_port.is_some() {
                    self.push(FieldCause::forbidden(
                        format!("{path}.endPort"),
                        "may not be specified when port is non-numeric",
                    ));
                }
            }
            Some(number) => {
                self.port(&format!("{path}.port"), Some(number), true);
                if let (Some(start), Some(end)) = (number.as_i64(), end_port) {
                    self.port(&format!("{path}.endPort"), Some(end), true);
                    if end.as_i64().is_some_and(|e| e < start) {
                        self.push(FieldCause::invalid(
                            format!("{path}.endPort"),
                            &end.to_string(),
                            "must be greater than or equal to `port`",
                        ));
                    }
                }
            }
        }
    }

    fn network_policy_peer(&mut self, path: &str, peer: &Value) {
        let set = |field: &str| peer.get(field).is_some_and(|v| !v.is_null());
        let selectors = set("podSelector") || set("namespaceSelector");
        let block = set("ipBlock");
        if !selectors && !block {
            self.push(FieldCause::required(path, "must specify a peer"));
            return;
        }
        if selectors && block {
            self.push(FieldCause::forbidden(
                path,
                "may not specify more than 1 peer type",
            ));
            return;
        }
        self.optional_selector(&format!("{path}.podSelector"), peer.get("podSelector"));
        self.optional_selector(
            &format!("{path}.namespaceSelector"),
            peer.get("namespaceSelector"),
        );
        if !block {
            return;
        }
        let cidr_path = format!("{path}.ipBlock.cidr");
        let cidr = match peer.pointer("/ipBlock/cidr").and_then(Value::as_str) {
            None | Some("") => {
                self.push(FieldCause::required(cidr_path, ""));
                return;
            }
            Some(text) => match parse_cidr(text) {
                Ok(parsed) => Some(parsed),
                Err(why) => {
                    self.push(FieldCause::invalid(cidr_path, text, why));
                    None
                }
            },
        };
        let except = peer.pointer("/ipBlock/except").and_then(Value::as_array);
        for (i, e) in except.into_iter().flatten().enumerate() {
            let field = format!("{path}.ipBlock.except[{i}]");
            let text = e.as_str().unwrap_or_default();
            match parse_cidr(text) {
                Err(why) => self.push(FieldCause::invalid(field, text, why)),
                Ok((value, width, prefix)) => {
                    let Some((base, base_width, base_prefix)) = cidr else {
                        continue;
                    };
                    let shift = u32::from(width - base_prefix.min(width));
                    let inside = width == base_width
                        && prefix > base_prefix
                        && (shift >= 128 || value >> shift == base >> shift);
                    if !inside {
                        self.push(FieldCause::invalid(
                            field,
                            text,
                            "must be a strict subset of `cidr`",
                        ));
                    }
                }
            }
        }
    }

    pub(super) fn ingress(&mut self, obj: &Value) {
        let spec = &obj["spec"];
        if let Some(class) = spec.get("ingressClassName").and_then(Value::as_str) {
            if !is_dns_subdomain(class) {
                self.push(FieldCause::invalid(
                    "spec.ingressClassName",
                    class,
                    "must be a lowercase RFC 1123 subdomain",
                ));
            }
        }
        let rules = spec
            .get("rules")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let default_backend = spec.get("defaultBackend").filter(|b| !b.is_null());
        if rules.is_empty() && default_backend.is_none() {
            self.push(FieldCause::invalid(
                "spec",
                "null",
                "either `defaultBackend` or `rules` must be specified",
            ));
        }
        if let Some(backend) = default_backend {
            self.ingress_backend("spec.defaultBackend", backend);
        }
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("spec.rules[{i}]");
            if let Some(host) = rule.get("host").and_then(Value::as_str) {
                if !host.is_empty() {
                    self.ingress_host(&format!("{path}.host"), host);
                }
            }
            let Some(http) = rule.get("http").filter(|h| !h.is_null()) else {
                continue;
            };
            let paths = http
                .get("paths")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if paths.is_empty() {
                self.push(FieldCause::required(format!("{path}.http.paths"), ""));
            }
            for (j, p) in paths.iter().enumerate() {
                self.ingress_path(&format!("{path}.http.paths[{j}]"), p);
            }
        }
        let tls = spec.get("tls").and_then(Value::as_array);
        for (i, entry) in tls.into_iter().flatten().enumerate() {
            let hosts = entry.get("hosts").and_then(Value::as_array);
            for (j, host) in hosts.into_iter().flatten().enumerate() {
                self.ingress_host(
                    &format!("spec.tls[{i}].hosts[{j}]"),
                    host.as_str().unwrap_or_default(),
                );
            }
            if let Some(secret) = entry.get("secretName").and_then(Value::as_str) {
                if !secret.is_empty() && !is_dns_subdomain(secret) {
                    self.push(FieldCause::invalid(
                        format!("spec.tls[{i}].secretName"),
                        secret,
                        "must be a lowercase RFC 1123 subdomain",
                    ));
                }
            }
        }
    }

    /// A DNS name, or a wildcard `*.` before one; never an IP address.
    fn ingress_host(&mut self, field: &str, host: &str) {
        if host.parse::<IpAddr>().is_ok() {
            self.push(FieldCause::invalid(
                field,
                host,
                "must be a DNS name, not an IP address",
            ));
            return;
        }
        let name = host.strip_prefix("*.").unwrap_or(host);
        if !is_dns_subdomain(name) {
            let detail = if host.contains('*') {
                "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain"
            } else {
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            };
            self.push(FieldCause::invalid(field, host, detail));
        }
    }

    fn ingress_path(&mut self, field: &str, path: &Value) {
        let kind = path.get("pathType").and_then(Value::as_str);
        match kind {
            None | Some("") => self.push(FieldCause::required(
                format!("{field}.pathType"),
                "pathType must be specified",
            )),
            Some(_) => self.enum_value(
                &format!("{field}.pathType"),
                path.get("pathType"),
                &["Exact", "Prefix", "ImplementationSpecific"],
            ),
        }
        let text = path.get("path").and_then(Value::as_str).unwrap_or_default();
        if matches!(kind, Some("Exact" | "Prefix")) {
            if !text.starts_with('/') {
                self.push(FieldCause::invalid(
                    format!("{field}.path"),
                    text,
                    "must be an absolute path",
                ));
            } else {
                let bad = ["//", "/./", "/../", "%2f", "%2F"]
                    .into_iter()
                    .find(|s| text.contains(s))
                    .or_else(|| ["/..", "/."].into_iter().find(|s| text.ends_with(s)));
                if let Some(bad) = bad {
                    self.push(FieldCause::invalid(
                        format!("{field}.path"),
                        text,
                        &format!("must not contain '{bad}'"),
                    ));
                }
            }
        } else if !text.is_empty() && !text.starts_with('/') {
            self.push(FieldCause::invalid(
                format!("{field}.path"),
                text,
                "must be an absolute path",
            ));
        }
        match path.get("backend").filter(|b| !b.is_null()) {
            Some(backend) => self.ingress_backend(&format!("{field}.backend"), backend),
            None => self.push(FieldCause::required(format!("{field}.backend"), "")),
        }
    }

    fn ingress_backend(&mut self, field: &str, backend: &Value) {
        let service = backend.get("service").filter(|s| !s.is_null());
        let resource = backend.get("resource").filter(|r| !r.is_null());
        match (service, resource) {
            (Some(_), Some(_)) => self.push(FieldCause::invalid(
                field,
                &backend.to_string(),
                "cannot set both resource and service backends",
            )),
            (None, None) => self.push(FieldCause::invalid(
                field,
                &backend.to_string(),
                "resource or service backend is required",
            )),
            (None, Some(resource)) => {
                if resource
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    self.push(FieldCause::required(format!("{field}.resource.kind"), ""));
                }
                if resource
                    .get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    self.push(FieldCause::required(format!("{field}.resource.name"), ""));
                }
            }
            (Some(service), None) => {
                let name = service.get("name").and_then(Value::as_str).unwrap_or("");
                if name.is_empty() {
                    self.push(FieldCause::required(format!("{field}.service.name"), ""));
                } else if !is_dns_label(name) {
                    self.push(FieldCause::invalid(
                        format!("{field}.service.name"),
                        name,
                        "must be a lowercase RFC 1123 label",
                    ));
                }
                let port = service.get("port").filter(|p| !p.is_null());
                let number = port.and_then(|p| p.get("number")).filter(|n| !n.is_null());
                let port_name = port
                    .and_then(|p| p.get("name"))
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty());
                let port_field = format!("{field}.service.port");
                match (number, port_name) {
                    (Some(_), Some(_)) => self.push(FieldCause::invalid(
                        port_field,
                        &port.map(Value::to_string).unwrap_or_default(),
                        "cannot set both port name & port number",
                    )),
                    (None, None) => self.push(FieldCause::invalid(
                        port_field,
                        &port.map(Value::to_string).unwrap_or_default(),
                        "port name or number is required",
                    )),
                    (Some(number), None) => {
                        self.port(&format!("{port_field}.number"), Some(number), true)
                    }
                    (None, Some(name)) => {
                        if !is_port_name(name) {
                            self.push(FieldCause::invalid(
                                format!("{port_field}.name"),
                                name,
                                PORT_NAME_MSG,
                            ));
                        }
                    }
                }
            }
        }
    }

    pub(super) fn ingress_class(&mut self, obj: &Value, old: Option<&Value>) {
        let controller = obj
            .pointer("/spec/controller")
            .and_then(Value::as_str)
            .unwrap_or("");
        if controller.is_empty() {
            self.push(FieldCause::required("spec.controller", ""));
        } else {
            let domain_prefixed = controller
                .split_once('/')
                .is_some_and(|(domain, path)| is_dns_subdomain(domain) && !path.is_empty());
            if !domain_prefixed || controller.len() > 250 {
                self.push(FieldCause::invalid(
                    "spec.controller",
                    controller,
                    "must be a domain-prefixed path (such as \"acme.io/foo\") of at most 250 characters",
                ));
            }
        }
        if let Some(old) = old {
            if old.pointer("/spec/controller") != obj.pointer("/spec/controller") {
                self.push(FieldCause::immutable("spec.controller"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::Registry;

    fn check(plural: &str, obj: Value, old: Option<Value>) -> Vec<String> {
        let registry = Registry::with_builtins();
        let info = registry.get("networking.k8s.io", "v1", plural).unwrap();
        super::super::validate(&info, &obj, old.as_ref())
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    fn fields(plural: &str, obj: Value) -> Vec<String> {
        check(plural, obj, None)
            .into_iter()
            .map(|c| c.split(':').next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn network_policies() {
        let ok = json!({"spec": {"podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {}}, {"namespaceSelector": {}, "podSelector": {}},
                                  {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                         "ports": [{"port": 80, "endPort": 90, "protocol": "TCP"}, {"port": "http"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::/32"}}]}]}});
        assert_eq!(check("networkpolicies", ok, None), Vec::<String>::new());

        let bad = json!({"spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Nope"}]},
            "policyTypes": ["Ingress", "Sideways"],
            "ingress": [{"from": [{}, {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}},
                                  {"ipBlock": {"cidr": "10.0.0.1/8", "except": ["11.0.0.0/16"]}},
                                  {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8", "192.168.0.0/16"]}}],
                         "ports": [{"port": "http", "endPort": 90}, {"port": 90, "endPort": 80},
                                   {"endPort": 80}, {"port": 0}, {"port": "Not_A_Name"}, {"protocol": "ICMP"}]}]}});
        assert_eq!(
            fields("networkpolicies", bad),
            vec![
                "spec.podSelector",
                "spec.ingress[0].ports[0].endPort",
                "spec.ingress[0].ports[1].endPort",
                "spec.ingress[0].ports[2].port",
                "spec.ingress[0].ports[3].port",
                "spec.ingress[0].ports[4].port",
                "spec.ingress[0].ports[5].protocol",
                "spec.ingress[0].from[0]",
                "spec.ingress[0].from[1]",
                "spec.ingress[0].from[2].ipBlock.cidr",
                "spec.ingress[0].from[3].ipBlock.except[0]",
                "spec.ingress[0].from[3].ipBlock.except[1]",
                "spec.policyTypes[1]",
            ]
        );
    }

    #[test]
    fn ingresses() {
        let ok = json!({"spec": {"ingressClassName": "rudder",
            "tls": [{"hosts": ["*.example.com"], "secretName": "tls"}],
            "rules": [{"host": "cafe.example.com", "http": {"paths": [
                {"path": "/tea", "pathType": "Prefix", "backend": {"service": {"name": "tea", "port": {"number": 80}}}},
                {"path": "/", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
                {"pathType": "ImplementationSpecific", "backend": {"resource": {"kind": "Bucket", "name": "b"}}}]}}]}});
        assert_eq!(check("ingresses", ok, None), Vec::<String>::new());
        let only_default = json!({"spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}});
        assert_eq!(check("ingresses", only_default, None), Vec::<String>::new());

        assert_eq!(
            check("ingresses", json!({"spec": {}}), None),
            vec!["spec: Invalid value: \"null\": either `defaultBackend` or `rules` must be specified"]
        );
        let bad = json!({"spec": {"rules": [
            {"host": "10.0.0.1", "http": {"paths": []}},
            {"host": "a.*.com", "http": {"paths": [
                {"path": "tea", "pathType": "Prefix", "backend": {"service": {"name": "tea", "port": {"number": 80}}}},
                {"path": "/a//b", "pathType": "Exact", "backend": {"service": {"name": "Tea", "port": {"number": 80, "name": "http"}}}},
                {"path": "/", "backend": {"service": {"name": "tea", "port": {}}}},
                {"path": "/", "pathType": "Regex", "backend": {}}]}}]}});
        assert_eq!(
            fields("ingresses", bad),
            vec![
                "spec.rules[0].host",
                "spec.rules[0].http.paths",
                "spec.rules[1].host",
                "spec.rules[1].http.paths[0].path",
                "spec.rules[1].http.paths[1].path",
                "spec.rules[1].http.paths[1].backend.service.name",
                "spec.rules[1].http.paths[1].backend.service.port",
                "spec.rules[1].http.paths[2].pathType",
                "spec.rules[1].http.paths[2].backend.service.port",
                "spec.rules[1].http.paths[3].pathType",
                "spec.rules[1].http.paths[3].backend",
            ]
        );
    }

    #[test]
    fn ingress_classes() {
        let class = |c: &str| json!({"spec": {"controller": c}});
        assert!(check("ingressclasses", class("rudder.io/ingress"), None).is_empty());
        assert_eq!(
            fields("ingressclasses", class("rudder")),
            vec!["spec.controller"]
        );
        assert_eq!(
            fields("ingressclasses", json!({"spec": {}})),
            vec!["spec.controller"]
        );
        assert_eq!(
            check(
                "ingressclasses",
                class("rudder.io/ingress"),
                Some(class("example.com/other"))
            ),
            vec!["spec.controller: field is immutable"]
        );
    }

    #[test]
    fn port_names() {
        for good in ["http", "dns-tcp", "h2c", "a1"] {
            assert!(is_port_name(good), "{good}");
        }
        for bad in [
            "",
            "HTTP",
            "-http",
            "http-",
            "ht--tp",
            "123",
            "a-very-long-port-name",
        ] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }
}
