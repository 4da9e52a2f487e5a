//! Answers end to end: real queries encoded, handled (directly, or by a
//! server on 127.0.0.1 over UDP and TCP), the answers decoded.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::cluster::tests::{endpoint, port, service, slice};
use crate::{cluster_records, ClusterDns, DnsServer, Forwarder, Records, Transport};

fn services() -> Vec<Service> {
    vec![
        service(
            "net",
            "web",
            ServiceSpec {
                cluster_ip: Some("10.43.0.20".into()),
                cluster_ips: Some(vec!["10.43.0.20".into()]),
                ports: Some(vec![port("http", 8080, "TCP")]),
                ..Default::default()
            },
        ),
        service(
            "net",
            "db",
            ServiceSpec {
                cluster_ip: Some("None".into()),
                cluster_ips: Some(vec!["None".into()]),
                ports: Some(vec![port("web", 80, "TCP")]),
                ..Default::default()
            },
        ),
        service(
            "net",
            "outside",
            ServiceSpec {
                type_: Some("ExternalName".into()),
                external_name: Some("db.example.internal".into()),
                ..Default::default()
            },
        ),
        service(
            "net",
            "alias",
            ServiceSpec {
                type_: Some("ExternalName".into()),
                external_name: Some("web.net.svc.cluster.local.".into()),
                ..Default::default()
            },
        ),
    ]
}

fn slices() -> Vec<EndpointSlice> {
    vec![
        slice(
            "net",
            "db",
            "db-a",
            vec![
                endpoint("10.42.1.7", Some("db-0"), true),
                endpoint("10.42.2.8", Some("db-1"), true),
            ],
            vec![("web", 80)],
        ),
        slice(
            "net",
            "web",
            "web-a",
            vec![endpoint("10.42.1.5", None, true)],
            vec![("http", 80)],
        ),
    ]
}

fn records() -> Records {
    let services = services();
    let slices = slices();
    cluster_records("cluster.local", &services, &slices)
}

/// A cluster DNS with no upstream (forwarding fails at once).
fn dns() -> ClusterDns {
    ClusterDns::new(records(), Forwarder::new(Vec::new()))
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        message.set_edns(e);
    }
    message.to_vec().unwrap()
}

async fn ask(dns: &ClusterDns, name: &str, qtype: RecordType) -> Message {
    let q = query(name, qtype, None);
    let answer = dns.handle(&q, Transport::Udp).await.expect("an answer");
    let message = Message::from_vec(&answer).unwrap();
    assert_eq!(message.metadata.id, u16::from_be_bytes([q[0], q[1]]));
    assert_eq!(message.metadata.message_type, MessageType::Response);
    message
}

fn a_records(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn assert_negative_soa(message: &Message) {
    assert!(message.answers.is_empty(), "{message:?}");
    assert_eq!(message.authorities.len(), 1);
    let soa = &message.authorities[0];
    assert_eq!(soa.name.to_ascii(), "cluster.local.");
    let RData::SOA(soa_data) = &soa.data else {
        panic!("not a SOA: {soa:?}");
    };
    assert_eq!(soa_data.mname.to_ascii(), "ns.dns.cluster.local.");
    assert_eq!(soa_data.rname.to_ascii(), "hostmaster.cluster.local.");
    assert_eq!(soa_data.minimum, 5);
    assert_eq!(soa.ttl, 5);
}

#[tokio::test]
async fn a_record_of_a_cluster_ip_service() {
    let m = ask(&dns(), "web.net.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_available);
    assert_eq!(a_records(&m), ips(&["10.43.0.20"]));
    assert_eq!(m.answers[0].ttl, 5);
    assert_eq!(m.answers[0].name.to_ascii(), "web.net.svc.cluster.local.");
}

#[tokio::test]
async fn aaaa_of_a_v4_service_is_nodata_and_unknown_names_nxdomain() {
    let dns = dns();
    let m = ask(&dns, "web.net.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_negative_soa(&m);

    let m = ask(&dns, "nope.net.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert_negative_soa(&m);

    // What a search path with ndots:5 asks first for "web.net.svc.cluster.local".
    let m = ask(
        &dns,
        "web.net.svc.cluster.local.net.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn headless_service_answers_every_ready_endpoint() {
    let dns = dns();
    let m = ask(&dns, "db.net.svc.cluster.local.", RecordType::A).await;
    let mut got = a_records(&m);
    got.sort();
    assert_eq!(got, ips(&["10.42.1.7", "10.42.2.8"]));
    let m = ask(&dns, "db.net.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_negative_soa(&m);
}

#[tokio::test]
async fn statefulset_pod_records_from_endpoint_hostnames() {
    let dns = dns();
    let m = ask(&dns, "db-0.db.net.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&m), ips(&["10.42.1.7"]));
    let m = ask(&dns, "db-1.db.net.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&m), ips(&["10.42.2.8"]));
    let m = ask(&dns, "db-9.db.net.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

fn srv_of(message: &Message) -> Vec<(u16, u16, u16, String)> {
    let mut out: Vec<_> = message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn srv_records_for_named_ports() {
    let dns = dns();
    let m = ask(&dns, "_web._tcp.db.net.svc.cluster.local.", RecordType::SRV).await;
    assert_eq!(
        srv_of(&m),
        vec![
            (0, 50, 80, "db-0.db.net.svc.cluster.local.".to_string()),
            (0, 50, 80, "db-1.db.net.svc.cluster.local.".to_string()),
        ]
    );
    // The targets' addresses come along.
    let mut extra: Vec<_> = m
        .additionals
        .iter()
        .map(|r| (r.name.to_ascii(), r.data.clone()))
        .collect();
    extra.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(extra.len(), 2);
    assert_eq!(extra[0].0, "db-0.db.net.svc.cluster.local.");

    let m = ask(
        &dns,
        "_http._tcp.web.net.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        srv_of(&m),
        vec![(0, 100, 8080, "web.net.svc.cluster.local.".to_string())]
    );
    // Wrong protocol: the name does not exist.
    let m = ask(
        &dns,
        "_http._udp.web.net.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // An SRV name asked for A: it exists, without addresses.
    let m = ask(&dns, "_http._tcp.web.net.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[tokio::test]
async fn external_name_is_a_cname_followed_inside_the_domain() {
    let dns = dns();
    // Inside the cluster domain: the CNAME and the target's address.
    let m = ask(&dns, "alias.net.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "web.net.svc.cluster.local.")
    );
    assert_eq!(a_records(&m), ips(&["10.43.0.20"]));
    // Outside, with no upstream answering: the CNAME alone, NOERROR.
    let m = ask(&dns, "outside.net.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    assert!(
        matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "db.example.internal.")
    );
    // Asked for the CNAME itself.
    let m = ask(&dns, "outside.net.svc.cluster.local.", RecordType::CNAME).await;
    assert_eq!(m.answers.len(), 1);
}

#[tokio::test]
async fn ptr_for_service_and_endpoint_addresses() {
    let dns = dns();
    let ptr = |m: &Message| match &m.answers[..] {
        [Record {
            data: RData::PTR(p),
            ..
        }] => p.0.to_ascii(),
        other => panic!("not one PTR: {other:?}"),
    };
    let m = ask(&dns, "20.0.43.10.in-addr.arpa.", RecordType::PTR).await;
    assert!(m.metadata.authoritative);
    assert_eq!(ptr(&m), "web.net.svc.cluster.local.");
    let m = ask(&dns, "7.1.42.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(ptr(&m), "db-0.db.net.svc.cluster.local.");
    let m = ask(&dns, "5.1.42.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(ptr(&m), "10-42-1-5.web.net.svc.cluster.local.");
    // An address the cluster does not know is forwarded (none here).
    let m = ask(&dns, "9.9.42.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn pod_a_records_from_dashed_addresses() {
    let dns = dns();
    let m = ask(&dns, "10-42-1-5.net.pod.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&m), ips(&["10.42.1.5"]));
    let m = ask(&dns, "10-42-1-5.net.pod.cluster.local.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_negative_soa(&m);
    let m = ask(&dns, "not-an-ip.net.pod.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn apex_soa_ns_and_dns_version() {
    let mut all = services();
    all.push(service(
        "kube-system",
        "kube-dns",
        ServiceSpec {
            cluster_ip: Some("10.43.0.10".into()),
            ..Default::default()
        },
    ));
    let dns = ClusterDns::new(
        cluster_records("cluster.local", &all, &slices()),
        Forwarder::new(Vec::new()),
    );
    let m = ask(&dns, "cluster.local.", RecordType::SOA).await;
    assert!(matches!(
        &m.answers[..],
        [Record {
            data: RData::SOA(_),
            ..
        }]
    ));
    let m = ask(&dns, "cluster.local.", RecordType::NS).await;
    assert!(
        matches!(&m.answers[..], [Record { data: RData::NS(n), .. }] if n.0.to_ascii() == "ns.dns.cluster.local.")
    );
    assert!(
        matches!(&m.additionals[..], [Record { data: RData::A(a), .. }] if a.0.to_string() == "10.43.0.10")
    );
    let m = ask(&dns, "dns-version.cluster.local.", RecordType::TXT).await;
    assert!(
        matches!(&m.answers[..], [Record { data: RData::TXT(t), .. }] if t.to_string() == "1.1.0")
    );
}

#[tokio::test]
async fn replaced_records_are_answered_at_once() {
    let dns = dns();
    let mut moved = services();
    moved[0].spec.as_mut().unwrap().cluster_ips = Some(vec!["10.43.0.99".into()]);
    dns.replace(cluster_records("cluster.local", &moved, &slices()));
    let m = ask(&dns, "web.net.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&m), ips(&["10.43.0.99"]));
}

#[tokio::test]
async fn malformed_queries_get_formerr_and_responses_no_answer() {
    let dns = dns();
    assert!(dns.handle(&[1, 2, 3], Transport::Udp).await.is_none());
    let garbage = [
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0, 0, 0, 0, 0x3f,
    ];
    let answer = dns.handle(&garbage, Transport::Udp).await.unwrap();
    let m = Message::from_vec(&answer).unwrap();
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    let mut response = query("web.net.svc.cluster.local.", RecordType::A, None);
    response[2] |= 0x80;
    assert!(dns.handle(&response, Transport::Udp).await.is_none());
}

fn big_headless(count: usize) -> ClusterDns {
    let svc = service(
        "net",
        "many",
        ServiceSpec {
            cluster_ip: Some("None".into()),
            ..Default::default()
        },
    );
    let endpoints = (0..count)
        .map(|i| endpoint(&format!("10.42.{}.{}", i / 200, i % 200 + 1), None, true))
        .collect();
    let eps = slice("net", "many", "many-a", endpoints, vec![]);
    ClusterDns::new(
        cluster_records("cluster.local", [&svc], [&eps]),
        Forwarder::new(Vec::new()),
    )
}

#[tokio::test]
async fn big_answers_are_truncated_on_udp_and_whole_on_tcp() {
    let dns = big_headless(100);
    let name = "many.net.svc.cluster.local.";
    // No EDNS: 512 bytes at most, TC set, whatever fits.
    let answer = dns
        .handle(&query(name, RecordType::A, None), Transport::Udp)
        .await
        .unwrap();
    assert!(answer.len() <= 512, "{}", answer.len());
    let m = Message::from_vec(&answer).unwrap();
    assert!(m.metadata.truncation);
    assert!(!m.answers.is_empty() && m.answers.len() < 100);
    // EDNS raises the bound to what the client announces.
    let answer = dns
        .handle(&query(name, RecordType::A, Some(1232)), Transport::Udp)
        .await
        .unwrap();
    assert!(
        answer.len() <= 1232 && answer.len() > 512,
        "{}",
        answer.len()
    );
    let m = Message::from_vec(&answer).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.edns.is_some());
    // TCP: everything.
    let answer = dns
        .handle(&query(name, RecordType::A, None), Transport::Tcp)
        .await
        .unwrap();
    let m = Message::from_vec(&answer).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
    // A small answer is never marked truncated.
    let answer = dns
        .handle(
            &query("dns-version.cluster.local.", RecordType::TXT, None),
            Transport::Udp,
        )
        .await
        .unwrap();
    assert!(!Message::from_vec(&answer).unwrap().metadata.truncation);
}

async fn start_server(dns: ClusterDns) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = server.serve(Arc::new(dns)).await;
    });
    (addr, task)
}

async fn udp_exchange(server: SocketAddr, q: &[u8]) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(q, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .expect("a UDP answer")
        .unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

async fn tcp_exchange(server: SocketAddr, queries: &[Vec<u8>]) -> Vec<Message> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    // Pipelined: every question first, then every answer, in order.
    for q in queries {
        stream
            .write_all(&(q.len() as u16).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(q).await.unwrap();
    }
    let mut out = Vec::new();
    for _ in queries {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).await.unwrap();
        out.push(Message::from_vec(&body).unwrap());
    }
    out
}

#[tokio::test]
async fn serves_udp_and_tcp_on_one_port() {
    let (addr, task) = start_server(big_headless(100)).await;
    let m = udp_exchange(
        addr,
        &query("many.net.svc.cluster.local.", RecordType::A, None),
    )
    .await;
    assert!(m.metadata.truncation);
    let answers = tcp_exchange(
        addr,
        &[
            query("many.net.svc.cluster.local.", RecordType::A, None),
            query("nope.net.svc.cluster.local.", RecordType::A, None),
        ],
    )
    .await;
    assert_eq!(answers[0].answers.len(), 100);
    assert!(!answers[0].metadata.truncation);
    assert_eq!(answers[1].metadata.response_code, ResponseCode::NXDomain);
    task.abort();
}

/// A stand-in upstream resolver on 127.0.0.1: answers `*.example.org` A
/// with 192.0.2.x; `big.example.org` is truncated over UDP and whole (40
/// addresses) over TCP; `fail.example.org` is SERVFAIL.
struct FakeUpstream {
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn upstream_answer(request: &[u8], tcp: bool) -> Vec<u8> {
    let request = Message::from_vec(request).unwrap();
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.queries = request.queries.clone();
    let q = &request.queries[0];
    let name = q.name().to_ascii().to_lowercase();
    match name.as_str() {
        "fail.example.org." => response.metadata.response_code = ResponseCode::ServFail,
        "big.example.org." if !tcp => response.metadata.truncation = true,
        "big.example.org." => {
            for i in 1..=40u8 {
                response.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A::new(192, 0, 2, i)),
                ));
            }
        }
        "db.example.internal." | "www.example.org." if q.query_type() == RecordType::A => {
            response.add_answer(Record::from_rdata(
                q.name().clone(),
                60,
                RData::A(A::new(192, 0, 2, 1)),
            ));
        }
        _ if name.ends_with(".example.org.") || name.ends_with(".example.internal.") => {}
        _ => response.metadata.response_code = ResponseCode::NXDomain,
    }
    response.to_vec().unwrap()
}

async fn fake_upstream() -> FakeUpstream {
    let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((len, peer)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            let answer = upstream_answer(&buf[..len], false);
            let _ = udp.send_to(&answer, peer).await;
        }
    });
    let tcp_task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = tcp.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
                if stream.read_exact(&mut body).await.is_err() {
                    return;
                }
                let answer = upstream_answer(&body, true);
                let _ = stream.write_all(&(answer.len() as u16).to_be_bytes()).await;
                let _ = stream.write_all(&answer).await;
            });
        }
    });
    FakeUpstream {
        addr,
        tasks: vec![udp_task, tcp_task],
    }
}

/// A UDP socket that never answers, as an unreachable resolver.
async fn silent_upstream() -> (SocketAddr, UdpSocket) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    (socket.local_addr().unwrap(), socket)
}

#[tokio::test]
async fn forwards_names_outside_the_domain() {
    let upstream = fake_upstream().await;
    let dns = ClusterDns::new(records(), Forwarder::new(vec![upstream.addr]));
    let q = query("www.example.org.", RecordType::A, None);
    let m = Message::from_vec(&dns.handle(&q, Transport::Udp).await.unwrap()).unwrap();
    assert_eq!(m.metadata.id, u16::from_be_bytes([q[0], q[1]]));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(!m.metadata.authoritative);
    assert_eq!(a_records(&m), ips(&["192.0.2.1"]));
    let m = ask(&dns, "missing.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn truncated_upstream_answers_are_retried_over_tcp() {
    let upstream = fake_upstream().await;
    let dns = ClusterDns::new(records(), Forwarder::new(vec![upstream.addr]));
    // Over TCP the client gets all 40; over UDP without EDNS, what fits.
    let q = query("big.example.org.", RecordType::A, None);
    let m = Message::from_vec(&dns.handle(&q, Transport::Tcp).await.unwrap()).unwrap();
    assert_eq!(a_records(&m).len(), 40);
    assert!(!m.metadata.truncation);
    let answer = dns.handle(&q, Transport::Udp).await.unwrap();
    assert!(answer.len() <= 512);
    let m = Message::from_vec(&answer).unwrap();
    assert!(m.metadata.truncation);
    assert_eq!(m.metadata.id, u16::from_be_bytes([q[0], q[1]]));
}

#[tokio::test]
async fn servfail_when_no_upstream_answers_and_the_next_server_is_tried() {
    let (silent, _keep) = silent_upstream().await;
    let upstream = fake_upstream().await;
    let quick = |list| {
        Forwarder::new(list).with_timeouts(Duration::from_millis(200), Duration::from_secs(2))
    };
    let dns = ClusterDns::new(records(), quick(vec![silent]));
    let m = ask(&dns, "www.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    // A silent first server, then a working one.
    let dns = ClusterDns::new(records(), quick(vec![silent, upstream.addr]));
    let m = ask(&dns, "www.example.org.", RecordType::A).await;
    assert_eq!(a_records(&m), ips(&["192.0.2.1"]));
    // A SERVFAIL from one server is passed on only when no other helps.
    let dns = ClusterDns::new(records(), quick(vec![upstream.addr]));
    let m = ask(&dns, "fail.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn external_name_targets_are_followed_upstream() {
    let upstream = fake_upstream().await;
    let dns = ClusterDns::new(records(), Forwarder::new(vec![upstream.addr]));
    let m = ask(&dns, "outside.net.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "db.example.internal.")
    );
    assert_eq!(a_records(&m), ips(&["192.0.2.1"]));
    // NODATA upstream for AAAA: the CNAME alone.
    let m = ask(&dns, "outside.net.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(m.answers.len(), 1);
}

/// busybox's nslookup (the acceptance scenario's client) against a server
/// on 127.0.0.1, when busybox is installed.
#[tokio::test]
async fn busybox_nslookup_prints_what_the_scenario_greps() {
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("busybox is not installed; skipping");
        return;
    };
    let upstream = fake_upstream().await;
    let dns = ClusterDns::new(records(), Forwarder::new(vec![upstream.addr]));
    let (addr, task) = start_server(dns).await;
    let server = addr.to_string();
    let nslookup = |args: Vec<&str>| {
        let mut cmd = tokio::process::Command::new(busybox);
        cmd.arg("nslookup").args(args).arg(&server);
        async move {
            let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
                .await
                .expect("nslookup finishes")
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        }
    };
    let out = nslookup(vec!["web.net.svc.cluster.local"]).await;
    assert!(out.contains("Address: 10.43.0.20"), "{out}");

    let out = nslookup(vec!["db.net.svc.cluster.local"]).await;
    // The scenario: grep -A9 'Name:' | grep -c 'Address' == 2.
    let after_name: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .collect();
    assert_eq!(
        after_name.iter().filter(|l| l.contains("Address")).count(),
        2,
        "{out}"
    );

    let out = nslookup(vec!["db-0.db.net.svc.cluster.local"]).await;
    assert!(out.contains("10.42.1.7"), "{out}");

    let out = nslookup(vec!["-type=srv", "_web._tcp.db.net.svc.cluster.local"]).await;
    assert!(out.contains("db-0.db.net.svc.cluster.local"), "{out}");
    assert!(out.contains("db-1.db.net.svc.cluster.local"), "{out}");

    let out = nslookup(vec!["outside.net.svc.cluster.local"]).await;
    assert!(
        out.contains("canonical name = db.example.internal"),
        "{out}"
    );
    task.abort();

    // The acceptance nodes may reach no upstream at all: the CNAME is
    // still printed, from the NOERROR answer that carries it alone.
    let (silent, _keep) = silent_upstream().await;
    let dns = ClusterDns::new(records(), Forwarder::new(vec![silent]));
    let (addr, task) = start_server(dns).await;
    let out = tokio::process::Command::new(busybox)
        .args([
            "nslookup",
            "outside.net.svc.cluster.local",
            &addr.to_string(),
        ])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("canonical name = db.example.internal"),
        "{out}"
    );
    task.abort();
}
