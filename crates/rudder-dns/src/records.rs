//! The records of the cluster domain, held in memory and replaced whole
//! as the cluster changes, and how a question is answered from them.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The TTL of every answer, the CoreDNS kubernetes plugin's default: short,
/// so that clients see endpoint changes within seconds.
pub const TTL: u32 = 5;

/// The schema version of the Kubernetes DNS specification this implements,
/// served as `dns-version.<domain>` TXT.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// One SRV record before weights are assigned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SrvEntry {
    port: u16,
    target: String,
}

#[derive(Clone, Debug, Default)]
struct Node {
    a: Vec<Ipv4Addr>,
    aaaa: Vec<Ipv6Addr>,
    cname: Option<String>,
    srv: Vec<SrvEntry>,
    txt: Vec<String>,
}

impl Node {
    fn push_address(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) if !self.a.contains(&v4) => self.a.push(v4),
            IpAddr::V6(v6) if !self.aaaa.contains(&v6) => self.aaaa.push(v6),
            _ => {}
        }
    }
}

/// Lower-cases a name and drops its trailing dot: the form names are kept in.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The name an endpoint without a hostname gets: its address with dashes
/// (`10-42-1-5`, `fd00--1`), as CoreDNS names them.
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// Builds a [`Records`]: names are absolute (`web.net.svc.cluster.local`),
/// any case, with or without the trailing dot.
#[derive(Debug)]
pub struct RecordsBuilder {
    domain: String,
    nodes: HashMap<String, Node>,
    reverse: HashMap<IpAddr, String>,
}

impl RecordsBuilder {
    pub fn new(domain: &str) -> RecordsBuilder {
        let domain = normalize(domain);
        let mut builder = RecordsBuilder {
            nodes: HashMap::new(),
            reverse: HashMap::new(),
            domain,
        };
        let version = format!("dns-version.{}", builder.domain);
        builder.node(&version).txt.push(SCHEMA_VERSION.to_string());
        builder
    }

    /// The cluster domain, normalized.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn node(&mut self, name: &str) -> &mut Node {
        self.nodes.entry(normalize(name)).or_default()
    }

    /// Makes a name exist with no records of its own (it answers NODATA,
    /// not NXDOMAIN): a headless service with no ready endpoints yet.
    pub fn add_name(&mut self, name: &str) {
        self.node(name);
    }

    /// An A or AAAA record.
    pub fn add_address(&mut self, name: &str, ip: IpAddr) {
        self.node(name).push_address(ip);
    }

    /// A CNAME (an ExternalName service).
    pub fn add_cname(&mut self, name: &str, target: &str) {
        self.node(name).cname = Some(normalize(target));
    }

    /// An SRV record; weights are shared out when the set is built.
    pub fn add_srv(&mut self, name: &str, port: u16, target: &str) {
        let entry = SrvEntry {
            port,
            target: normalize(target),
        };
        let node = self.node(name);
        if !node.srv.contains(&entry) {
            node.srv.push(entry);
        }
    }

    /// The PTR for an address; the first name given for an address wins
    /// (callers add service addresses before endpoint addresses).
    pub fn add_ptr(&mut self, ip: IpAddr, target: &str) {
        self.reverse.entry(ip).or_insert_with(|| normalize(target));
    }

    pub fn build(self) -> Records {
        let mut empty = HashSet::new();
        let suffix = format!(".{}", self.domain);
        for name in self.nodes.keys() {
            // Every name between a record and the apex exists (an empty
            // non-terminal): it answers NODATA, not NXDOMAIN.
            let mut rest = name.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if !parent.ends_with(&suffix) {
                    break;
                }
                if !self.nodes.contains_key(parent) {
                    empty.insert(parent.to_string());
                }
                rest = parent;
            }
        }
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Records {
            domain: self.domain,
            nodes: self.nodes,
            empty,
            reverse: self.reverse,
            serial,
        }
    }
}

/// The answer to one question, before it becomes a message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Records of the asked type (and helpful extras, such as the
    /// addresses of SRV targets).
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name is an alias: its CNAME, and the target to follow.
    Alias { cname: Box<Record>, target: Name },
    /// The name exists, with no records of the type.
    NoData,
    /// The name does not exist.
    NxDomain,
}

/// The cluster domain's records at one moment.
#[derive(Debug)]
pub struct Records {
    domain: String,
    nodes: HashMap<String, Node>,
    empty: HashSet<String>,
    reverse: HashMap<IpAddr, String>,
    serial: u32,
}

fn name_of(text: &str) -> Option<Name> {
    Name::from_ascii(format!("{text}.")).ok()
}

fn record(owner: &Name, data: RData) -> Record {
    Record::from_rdata(owner.clone(), TTL, data)
}

/// An address from a pod name's first label (`10-42-1-5`, `fd00--1`).
fn undashed(label: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() == 4 {
        let mut octets = [0u8; 4];
        for (octet, part) in octets.iter_mut().zip(&parts) {
            // Strict decimal: no signs, no empty parts.
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *octet = part.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

impl Records {
    /// An empty set for a domain (answers only the apex and dns-version).
    pub fn empty(domain: &str) -> Records {
        RecordsBuilder::new(domain).build()
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// How many names have records.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The addresses of a name (tests and diagnostics).
    pub fn addresses(&self, name: &str) -> Vec<IpAddr> {
        self.nodes
            .get(&normalize(name))
            .map(|n| {
                n.a.iter()
                    .map(|a| IpAddr::V4(*a))
                    .chain(n.aaaa.iter().map(|a| IpAddr::V6(*a)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The name an address points back to, if any.
    pub fn ptr(&self, ip: IpAddr) -> Option<&str> {
        self.reverse.get(&ip).map(String::as_str)
    }

    /// The zone's SOA, which negative answers carry in their authority
    /// section (its minimum, the negative-caching TTL, is the TTL too).
    pub(crate) fn soa(&self) -> Record {
        let apex = name_of(&self.domain).unwrap_or_else(Name::root);
        let mname = name_of(&format!("ns.dns.{}", self.domain)).unwrap_or_else(Name::root);
        let rname = name_of(&format!("hostmaster.{}", self.domain)).unwrap_or_else(Name::root);
        record(
            &apex,
            RData::SOA(SOA::new(mname, rname, self.serial, 7200, 1800, 86400, TTL)),
        )
    }

    /// The answer for a question, or None when the name is not ours (it is
    /// then forwarded): outside the cluster domain, or a reverse name for
    /// an address the cluster does not know.
    pub(crate) fn resolve(&self, qname: &Name, qtype: RecordType) -> Option<Outcome> {
        let text = normalize(&qname.to_ascii());
        if text.ends_with(".in-addr.arpa") || text.ends_with(".ip6.arpa") {
            return self.resolve_reverse(qname, qtype);
        }
        let relative = if text == self.domain {
            ""
        } else {
            text.strip_suffix(&self.domain)?.strip_suffix('.')?
        };
        if relative.is_empty() {
            return Some(self.resolve_apex(qname, qtype));
        }
        if let Some(node) = self.nodes.get(&text) {
            return Some(self.resolve_node(qname, qtype, node));
        }
        if self.empty.contains(&text) {
            return Some(Outcome::NoData);
        }
        let labels: Vec<&str> = relative.split('.').collect();
        match labels.as_slice() {
            // Pod names, as CoreDNS `pods insecure` (k3s's default): any
            // dashed address in any namespace answers with that address.
            [address, _namespace, "pod"] => Some(match undashed(address) {
                Some(ip) => self.address_outcome(qname, qtype, &[ip]),
                None => Outcome::NxDomain,
            }),
            [_, "pod"] | ["pod"] => Some(Outcome::NoData),
            _ => Some(Outcome::NxDomain),
        }
    }

    fn resolve_apex(&self, qname: &Name, qtype: RecordType) -> Outcome {
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        if matches!(qtype, RecordType::SOA | RecordType::ANY) {
            let mut soa = self.soa();
            soa.name = qname.clone();
            answers.push(soa);
        }
        if matches!(qtype, RecordType::NS | RecordType::ANY) {
            let ns_name = format!("ns.dns.{}", self.domain);
            if let Some(target) = name_of(&ns_name) {
                answers.push(record(qname, RData::NS(NS(target.clone()))));
                if let Some(node) = self.nodes.get(&ns_name) {
                    additionals.extend(address_records(&target, node));
                }
            }
        }
        if answers.is_empty() {
            Outcome::NoData
        } else {
            Outcome::Answer {
                answers,
                additionals,
            }
        }
    }

    fn resolve_node(&self, qname: &Name, qtype: RecordType, node: &Node) -> Outcome {
        if let Some(target) = &node.cname {
            let target_name = name_of(target);
            if let Some(target_name) = target_name {
                let cname = record(qname, RData::CNAME(CNAME(target_name.clone())));
                return if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
                    Outcome::Answer {
                        answers: vec![cname],
                        additionals: Vec::new(),
                    }
                } else {
                    Outcome::Alias {
                        cname: Box::new(cname),
                        target: target_name,
                    }
                };
            }
        }
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let any = qtype == RecordType::ANY;
        if qtype == RecordType::A || any {
            answers.extend(node.a.iter().map(|a| record(qname, RData::A(A(*a)))));
        }
        if qtype == RecordType::AAAA || any {
            answers.extend(
                node.aaaa
                    .iter()
                    .map(|a| record(qname, RData::AAAA(AAAA(*a)))),
            );
        }
        if qtype == RecordType::TXT || any {
            answers.extend(
                node.txt
                    .iter()
                    .map(|t| record(qname, RData::TXT(TXT::new(vec![t.clone()])))),
            );
        }
        if qtype == RecordType::SRV || any {
            // The weight is shared out evenly, as CoreDNS does: one target
            // gets 100, four get 25 each.
            let weight = (100 / node.srv.len().max(1)).max(1) as u16;
            let mut seen = HashSet::new();
            for srv in &node.srv {
                let Some(target) = name_of(&srv.target) else {
                    continue;
                };
                answers.push(record(
                    qname,
                    RData::SRV(SRV::new(0, weight, srv.port, target.clone())),
                ));
                if seen.insert(srv.target.as_str()) {
                    if let Some(target_node) = self.nodes.get(&srv.target) {
                        additionals.extend(address_records(&target, target_node));
                    }
                }
            }
        }
        if answers.is_empty() {
            Outcome::NoData
        } else {
            Outcome::Answer {
                answers,
                additionals,
            }
        }
    }

    fn address_outcome(&self, qname: &Name, qtype: RecordType, ips: &[IpAddr]) -> Outcome {
        let answers: Vec<Record> = ips
            .iter()
            .filter_map(|ip| match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                    Some(record(qname, RData::A(A(*v4))))
                }
                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                    Some(record(qname, RData::AAAA(AAAA(*v6))))
                }
                _ => None,
            })
            .collect();
        if answers.is_empty() {
            Outcome::NoData
        } else {
            Outcome::Answer {
                answers,
                additionals: Vec::new(),
            }
        }
    }

    fn resolve_reverse(&self, qname: &Name, qtype: RecordType) -> Option<Outcome> {
        let net = qname.parse_arpa_name().ok()?;
        if net.prefix_len() != net.max_prefix_len() {
            return None;
        }
        let target = self.reverse.get(&net.addr())?;
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return Some(Outcome::NoData);
        }
        let target = name_of(target)?;
        Some(Outcome::Answer {
            answers: vec![record(qname, RData::PTR(PTR(target)))],
            additionals: Vec::new(),
        })
    }

    /// Whether a name is inside the cluster domain.
    pub fn in_domain(&self, name: &Name) -> bool {
        let text = normalize(&name.to_ascii());
        text == self.domain || text.ends_with(&format!(".{}", self.domain))
    }
}

fn address_records(owner: &Name, node: &Node) -> Vec<Record> {
    node.a
        .iter()
        .map(|a| record(owner, RData::A(A(*a))))
        .chain(
            node.aaaa
                .iter()
                .map(|a| record(owner, RData::AAAA(AAAA(*a)))),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn sample() -> Records {
        let mut b = RecordsBuilder::new("cluster.local");
        b.add_address("web.net.svc.cluster.local", "10.43.0.20".parse().unwrap());
        b.add_srv(
            "_http._tcp.web.net.svc.cluster.local",
            8080,
            "web.net.svc.cluster.local",
        );
        b.add_ptr("10.43.0.20".parse().unwrap(), "web.net.svc.cluster.local");
        b.build()
    }

    #[test]
    fn names_between_records_and_the_apex_exist_without_data() {
        let r = sample();
        for n in [
            "net.svc.cluster.local.",
            "svc.cluster.local.",
            "_tcp.web.net.svc.cluster.local.",
        ] {
            assert!(
                matches!(r.resolve(&name(n), RecordType::A), Some(Outcome::NoData)),
                "{n}"
            );
        }
        assert!(matches!(
            r.resolve(&name("nope.net.svc.cluster.local."), RecordType::A),
            Some(Outcome::NxDomain)
        ));
        assert!(r.resolve(&name("example.com."), RecordType::A).is_none());
        // A name that merely ends in the domain's text is not inside it.
        assert!(r
            .resolve(&name("notcluster.local."), RecordType::A)
            .is_none());
    }

    #[test]
    fn names_match_in_any_case_and_answer_with_the_asked_owner() {
        let r = sample();
        let q = name("WEB.Net.svc.Cluster.Local.");
        let Some(Outcome::Answer { answers, .. }) = r.resolve(&q, RecordType::A) else {
            panic!("expected an answer");
        };
        assert_eq!(answers.len(), 1);
        assert!(answers[0].name.eq_case(&q));
    }

    #[test]
    fn pod_names_decode_dashed_addresses() {
        assert_eq!(undashed("10-42-1-5"), Some("10.42.1.5".parse().unwrap()));
        assert_eq!(undashed("fd00--1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(undashed("10-42-1-256"), None);
        assert_eq!(undashed("10-42-1-+5"), None);
        assert_eq!(undashed("web"), None);
        assert_eq!(dashed("fd00::1".parse().unwrap()), "fd00--1");
        assert_eq!(dashed("10.42.1.5".parse().unwrap()), "10-42-1-5");
    }

    #[test]
    fn reverse_names_for_unknown_addresses_are_not_ours() {
        let r = sample();
        assert!(matches!(
            r.resolve(&name("20.0.43.10.in-addr.arpa."), RecordType::PTR),
            Some(Outcome::Answer { .. })
        ));
        assert!(r
            .resolve(&name("21.0.43.10.in-addr.arpa."), RecordType::PTR)
            .is_none());
        assert!(r
            .resolve(&name("0.43.10.in-addr.arpa."), RecordType::PTR)
            .is_none());
    }
}
