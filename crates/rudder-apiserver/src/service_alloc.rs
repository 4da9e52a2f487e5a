//! Service cluster IPs and node ports, allocated by the API server as
//! kube-apiserver's service registry does: a Service without
//! `spec.clusterIP` gets a free address of the service CIDR, a NodePort or
//! LoadBalancer port without `nodePort` gets a free port of the node port
//! range, and asking for a taken or out-of-range one is refused with
//! Kubernetes' messages.
//!
//! What is taken is read from the services' watch cache, plus the
//! allocations this server made in the last minute (the cache may not have
//! seen a service created a moment ago). One allocator per process: two
//! API servers on one etcd could hand out the same free address at the same
//! instant, which kube-apiserver avoids with a bitmap in the store; this is
//! the documented limit of running several Rudder API servers.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{ApiError, FieldCause};
use crate::registry::ResourceInfo;
use crate::ApiServer;

/// The service CIDR unless configured (k3s' default).
pub const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";
/// The node port range (kube-apiserver's `--service-node-port-range`).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// How long a fresh allocation is remembered besides the cache (which
/// normally catches up within milliseconds; once it has the service, the
/// cache's copy is what counts).
const PENDING_FOR: Duration = Duration::from_secs(10);

/// An IPv4 CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceCidr {
    base: u32,
    prefix: u8,
}

impl std::str::FromStr for ServiceCidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (ip, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a CIDR (a.b.c.d/n)"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{text:?}: bad address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("{text:?}: the prefix must be 8..=30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(ServiceCidr {
            base: u32::from(ip) & mask,
            prefix,
        })
    }
}

impl std::fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl ServiceCidr {
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// Whether `ip` is an assignable address: inside, neither the network
    /// nor the broadcast address.
    pub fn assignable(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip).wrapping_sub(self.base);
        n > 0 && n < self.size() - 1
    }

    /// The `n`th address (the API server's own service is the first, the
    /// cluster DNS by convention the tenth).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + n)
    }
}

/// Hands out cluster IPs and node ports.
pub struct ServiceAllocator {
    cidr: ServiceCidr,
    cluster_dns: Ipv4Addr,
    /// Serializes allocations, so two creates never pick the same one.
    lock: tokio::sync::Mutex<Pending>,
}

/// Allocations made lately, with the service (`namespace/name`) they were
/// made for.
#[derive(Default)]
struct Pending {
    ips: HashMap<Ipv4Addr, (Instant, String)>,
    ports: HashMap<(u16, String), (Instant, String)>,
}

impl Pending {
    /// Forgets what expired, and what the cache now shows (the service
    /// exists there with its values, or was deleted again).
    fn expire(&mut self, taken: &Taken) {
        let now = Instant::now();
        let keep = |(at, key): &(Instant, String)| {
            now.duration_since(*at) < PENDING_FOR && !taken.services.contains(key)
        };
        self.ips.retain(|_, v| keep(v));
        self.ports.retain(|_, v| keep(v));
    }
}

/// What the other services hold.
#[derive(Default)]
struct Taken {
    ips: HashSet<Ipv4Addr>,
    ports: HashSet<(u16, String)>,
    /// The services the cache has.
    services: HashSet<String>,
}

impl ServiceAllocator {
    pub fn new(cidr: ServiceCidr) -> ServiceAllocator {
        ServiceAllocator {
            cidr,
            cluster_dns: cidr.nth(10),
            lock: Default::default(),
        }
    }

    pub fn with_cluster_dns(mut self, ip: Ipv4Addr) -> ServiceAllocator {
        self.cluster_dns = ip;
        self
    }

    pub fn cidr(&self) -> ServiceCidr {
        self.cidr
    }

    /// The `kube-dns` Service's address (the CIDR's tenth unless set).
    pub fn cluster_dns(&self) -> Ipv4Addr {
        self.cluster_dns
    }

    /// Fills in `spec.clusterIP(s)`, the IP family fields and node ports of
    /// a Service being created (`old` None) or updated, refusing taken and
    /// out-of-range values.
    pub(crate) async fn allocate(
        &self,
        server: &ApiServer,
        info: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let self_key = format!(
            "{}/{}",
            obj.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(""),
            name
        );
        keep_allocated_values(obj, old);
        let mut pending = self.lock.lock().await;
        let taken = taken_by_others(server, info, &self_key).await;
        pending.expire(&taken);
        // This service's own earlier grants (it is being updated, or was
        // deleted and is created again) are not someone else's.
        pending.ips.retain(|_, (_, key)| *key != self_key);
        pending.ports.retain(|_, (_, key)| *key != self_key);
        let mut causes = Vec::new();
        let mut new_ip = None;
        let mut new_ports = Vec::new();
        let spec = obj
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| {
                ApiError::invalid(info, &name, vec![FieldCause::required("spec", "")])
            })?;
        let kind = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_owned();
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty());
        if kind == "ExternalName" {
            // ExternalName services hold no address (kube-apiserver
            // releases it when a service turns into one).
            if let Some(ip) = spec.get("clusterIP").and_then(Value::as_str) {
                if !ip.is_empty() && Some(ip) != old_ip {
                    causes.push(FieldCause::invalid(
                        "spec.clusterIP",
                        ip,
                        "may not be set for ExternalName services",
                    ));
                }
            }
            if old_ip.is_some() {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        } else {
            match spec.get("clusterIP").and_then(Value::as_str) {
                Some("None") => {
                    spec.insert("clusterIPs".into(), json!(["None"]));
                }
                None | Some("") => match self.free_ip(&taken, &pending) {
                    Some(ip) => {
                        new_ip = Some(ip);
                        spec.insert("clusterIP".into(), json!(ip.to_string()));
                        spec.insert("clusterIPs".into(), json!([ip.to_string()]));
                    }
                    None => {
                        return Err(ApiError::Internal(format!(
                            "failed to allocate a serviceIP: range is full ({})",
                            self.cidr
                        )))
                    }
                },
                Some(text) if Some(text) == old_ip => {
                    spec.insert("clusterIPs".into(), json!([text]));
                }
                Some(text) => {
                    let refuse = |detail: String| {
                        FieldCause {
                        reason: "FieldValueInvalid",
                        field: "spec.clusterIPs".into(),
                        message: format!(
                            "Invalid value: []string{{{text:?}}}: failed to allocate IP {text}: {detail}"
                        ),
                    }
                    };
                    match text.parse::<Ipv4Addr>() {
                        Err(_) => causes.push(FieldCause::invalid(
                            "spec.clusterIPs[0]",
                            text,
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        )),
                        Ok(ip) if !self.cidr.assignable(ip) => causes.push(refuse(format!(
                            "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                            self.cidr
                        ))),
                        Ok(ip) if taken.ips.contains(&ip) || pending.ips.contains_key(&ip) => {
                            causes.push(refuse("provided IP is already allocated".into()))
                        }
                        Ok(ip) => {
                            new_ip = Some(ip);
                            spec.insert("clusterIPs".into(), json!([text]));
                        }
                    }
                }
            }
            spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
            spec.entry("ipFamilyPolicy")
                .or_insert_with(|| json!("SingleStack"));
        }

        let wants_node_ports = match kind.as_str() {
            "NodePort" => true,
            "LoadBalancer" => spec
                .get("allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            _ => false,
        };
        if kind == "LoadBalancer" {
            spec.entry("allocateLoadBalancerNodePorts")
                .or_insert(json!(true));
        }
        let old_ports = old_node_ports(old);
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            // Ports this very service asks for twice (TCP and UDP may share one).
            let mut mine = HashSet::new();
            for (i, port) in ports.iter_mut().enumerate() {
                let protocol = port
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .to_owned();
                if !wants_node_ports {
                    if kind == "ClusterIP" || kind == "ExternalName" {
                        // Turning into a ClusterIP service releases the ports.
                        if let Some(p) = port.get("nodePort").and_then(Value::as_u64) {
                            if old_ports.contains(&(p as u16, protocol.clone())) {
                                port.as_object_mut().map(|o| o.remove("nodePort"));
                            }
                        }
                    }
                    continue;
                }
                match port.get("nodePort").and_then(Value::as_u64) {
                    None | Some(0) => {
                        let Some(p) = self.free_port(&taken, &pending, &mine, &protocol) else {
                            return Err(ApiError::Internal(
                                "failed to allocate a nodePort: range is full".into(),
                            ));
                        };
                        port["nodePort"] = json!(p);
                        mine.insert((p, protocol.clone()));
                        new_ports.push((p, protocol));
                    }
                    Some(p) => {
                        let Ok(p) = u16::try_from(p) else { continue };
                        if !NODE_PORTS.contains(&p) {
                            // validation reports the range
                            continue;
                        }
                        let key = (p, protocol.clone());
                        if old_ports.contains(&key) {
                            mine.insert(key);
                            continue;
                        }
                        if taken.ports.contains(&key)
                            || pending.ports.contains_key(&key)
                            || mine.contains(&key)
                        {
                            causes.push(FieldCause {
                                reason: "FieldValueInvalid",
                                field: format!("spec.ports[{i}].nodePort"),
                                message: format!(
                                    "Invalid value: {p}: provided port is already allocated"
                                ),
                            });
                        } else {
                            mine.insert(key.clone());
                            new_ports.push(key);
                        }
                    }
                }
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(info, &name, causes));
        }
        if dry_run {
            return Ok(());
        }
        let now = Instant::now();
        if let Some(ip) = new_ip {
            pending.ips.insert(ip, (now, self_key.clone()));
        }
        for key in new_ports {
            pending.ports.insert(key, (now, self_key.clone()));
        }
        Ok(())
    }

    /// A free address, searched from a random start so that services
    /// created at once spread out as kube-apiserver's do.
    fn free_ip(&self, taken: &Taken, pending: &Pending) -> Option<Ipv4Addr> {
        let size = self.cidr.size();
        // The first address is the API server's own service, and the
        // first tenth of a small range stays free for static choices
        // (like kube-apiserver's reserved lower band).
        let low = (size / 16).clamp(1, 256).min(size - 2);
        let span = size - 1 - low;
        let start = random_u32() % span;
        (0..span)
            .map(|i| self.cidr.nth(low + (start + i) % span))
            .chain((1..low).map(|n| self.cidr.nth(n)))
            .find(|ip| !taken.ips.contains(ip) && !pending.ips.contains_key(ip))
    }

    fn free_port(
        &self,
        taken: &Taken,
        pending: &Pending,
        mine: &HashSet<(u16, String)>,
        protocol: &str,
    ) -> Option<u16> {
        let span = u32::from(NODE_PORTS.end() - NODE_PORTS.start()) + 1;
        let start = random_u32() % span;
        (0..span)
            .map(|i| NODE_PORTS.start() + ((start + i) % span) as u16)
            .find(|p| {
                let key = (*p, protocol.to_owned());
                !taken.ports.contains(&key)
                    && !pending.ports.contains_key(&key)
                    && !mine.contains(&key)
            })
    }
}

/// An update that leaves out the allocated values keeps them, as
/// kube-apiserver's registry does for `kubectl replace` and PUTs built
/// from a manifest.
pub(crate) fn keep_allocated_values(obj: &mut Value, old: Option<&Value>) {
    let Some(old) = old else { return };
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    if kind != "ExternalName" {
        let empty = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if empty {
            for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if let Some(v) = old.pointer(&format!("/spec/{field}")) {
                    spec.insert(field.into(), v.clone());
                }
            }
        }
    }
    if matches!(kind.as_str(), "NodePort" | "LoadBalancer") {
        let old_ports = old
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for port in ports {
                if port.get("nodePort").and_then(Value::as_u64).is_some() {
                    continue;
                }
                let same = old_ports.iter().find(|o| {
                    o.get("port") == port.get("port")
                        && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                            == port
                                .get("protocol")
                                .and_then(Value::as_str)
                                .unwrap_or("TCP")
                });
                if let Some(np) = same.and_then(|o| o.get("nodePort")) {
                    port["nodePort"] = np.clone();
                }
            }
        }
    }
}

fn old_node_ports(old: Option<&Value>) -> HashSet<(u16, String)> {
    old.and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let np = u16::try_from(p.get("nodePort")?.as_u64()?).ok()?;
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            Some((np, proto.to_owned()))
        })
        .collect()
}

async fn taken_by_others(server: &ApiServer, info: &ResourceInfo, self_key: &str) -> Taken {
    let prefix = info.key_prefix();
    let (services, _) = server
        .caches()
        .get(server.store(), &prefix)
        .snapshot(&prefix)
        .await;
    let mut taken = Taken::default();
    for svc in services {
        let key = format!(
            "{}/{}",
            svc.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(""),
            svc.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
        );
        if key == self_key {
            continue;
        }
        taken.services.insert(key);
        let ips = svc
            .pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(svc.pointer("/spec/clusterIP"));
        for ip in ips.filter_map(Value::as_str) {
            if let Ok(ip) = ip.parse() {
                taken.ips.insert(ip);
            }
        }
        taken.ports.extend(old_node_ports(Some(&svc)));
        if let Some(p) = svc
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_u64)
        {
            taken.ports.insert((p as u16, "TCP".into()));
        }
    }
    taken
}

fn random_u32() -> u32 {
    // Uniqueness does not depend on it: only where the search starts.
    let bytes = uuid::Uuid::new_v4();
    let b = bytes.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_bound_their_addresses() {
        let cidr: ServiceCidr = "10.43.7.9/16".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.43.0.0/16");
        assert_eq!(cidr.nth(10), Ipv4Addr::new(10, 43, 0, 10));
        assert!(cidr.assignable(Ipv4Addr::new(10, 43, 0, 1)));
        assert!(!cidr.assignable(Ipv4Addr::new(10, 43, 0, 0)));
        assert!(!cidr.assignable(Ipv4Addr::new(10, 43, 255, 255)));
        assert!(!cidr.assignable(Ipv4Addr::new(10, 44, 0, 1)));
        assert!("10.43.0.0".parse::<ServiceCidr>().is_err());
        assert!("10.43.0.0/31".parse::<ServiceCidr>().is_err());
    }

    #[test]
    fn free_addresses_skip_the_taken_ones_until_the_range_is_full() {
        let alloc = ServiceAllocator::new("10.43.0.0/29".parse().unwrap());
        let mut taken = Taken::default();
        let pending = Pending::default();
        let mut got = HashSet::new();
        while let Some(ip) = alloc.free_ip(&taken, &pending) {
            assert!(alloc.cidr.assignable(ip), "{ip}");
            assert!(got.insert(ip), "{ip} handed out twice");
            taken.ips.insert(ip);
        }
        // .1 to .6
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn node_ports_are_per_protocol() {
        let alloc = ServiceAllocator::new(DEFAULT_SERVICE_CIDR.parse().unwrap());
        let mut taken = Taken::default();
        for p in NODE_PORTS {
            taken.ports.insert((p, "TCP".into()));
        }
        let pending = Pending::default();
        assert_eq!(
            alloc.free_port(&taken, &pending, &HashSet::new(), "TCP"),
            None
        );
        assert!(alloc
            .free_port(&taken, &pending, &HashSet::new(), "UDP")
            .is_some());
    }

    #[test]
    fn updates_keep_what_was_allocated() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.20",
            "clusterIPs": ["10.43.0.20"], "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30123}]}});
        let mut new =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        keep_allocated_values(&mut new, Some(&old));
        assert_eq!(new["spec"]["clusterIP"], "10.43.0.20");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30123);
    }
}
