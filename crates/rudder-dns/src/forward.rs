//! Forwarding of questions outside the cluster domain to the node's
//! resolvers: UDP first, TCP when the answer comes back truncated, the
//! next server when one times out, fails or refuses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::resolv::ResolvConf;

/// How long one server gets to answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a whole forward may take, over every server: below the 5 s
/// a stub resolver waits for the first answer before giving up on us.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(4);

const RCODE_SERVFAIL: u8 = 2;
const RCODE_REFUSED: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream DNS server is configured")]
    NoUpstream,
    #[error("the query is too short to be a DNS message")]
    Malformed,
    #[error("no upstream DNS server answered: {0}")]
    NoAnswer(String),
}

/// The node's resolvers, as the cluster DNS's upstreams.
#[derive(Clone, Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    budget: Duration,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            upstreams,
            timeout: DEFAULT_TIMEOUT,
            budget: DEFAULT_BUDGET,
        }
    }

    /// The nameservers of a resolv.conf, port 53, less the addresses in
    /// `exclude` (the cluster DNS's own, which would make a loop).
    pub fn from_resolv_conf(conf: &ResolvConf, exclude: &[IpAddr]) -> Forwarder {
        let upstreams = conf
            .nameserver_ips()
            .into_iter()
            .filter(|ip| !exclude.contains(ip))
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        Forwarder::new(upstreams)
    }

    /// Sets the time one server gets and the time a whole forward gets.
    pub fn with_timeouts(mut self, per_server: Duration, budget: Duration) -> Forwarder {
        self.timeout = per_server;
        self.budget = budget;
        self
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Sends a query (wire format) upstream and returns the answer, its ID
    /// that of the query. A SERVFAIL or REFUSED answer is only returned
    /// when no other server gives a better one.
    pub async fn forward(&self, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        self.forward_until(query, Instant::now() + self.budget)
            .await
    }

    /// [`Forwarder::forward`] with a deadline of the caller's.
    pub async fn forward_until(
        &self,
        query: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, ForwardError> {
        if query.len() < 12 {
            return Err(ForwardError::Malformed);
        }
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let original_id = [query[0], query[1]];
        let questions = Message::from_vec(query)
            .map(|m| m.queries)
            .map_err(|_| ForwardError::Malformed)?;
        let mut fallback = None;
        let mut errors = Vec::new();
        for upstream in &self.upstreams {
            let now = Instant::now();
            if now >= deadline {
                errors.push(format!("{upstream}: no time left"));
                break;
            }
            let attempt_deadline = deadline.min(now + self.timeout);
            // A fresh random ID per upstream exchange (with the fresh
            // random port of a new socket) so that an off-path guess is
            // unlikely to be taken for the answer.
            let id: u16 = rand::random();
            let mut outgoing = query.to_vec();
            outgoing[..2].copy_from_slice(&id.to_be_bytes());
            let answer = match exchange_udp(*upstream, &outgoing, id, &questions, attempt_deadline)
                .await
            {
                Ok(answer) if answer[2] & 0x02 != 0 => {
                    // Truncated: the whole answer over TCP, or the
                    // truncated one if TCP fails (the client then asks
                    // us again over TCP).
                    let tcp_deadline = deadline.min(Instant::now() + self.timeout);
                    match exchange_tcp(*upstream, &outgoing, id, &questions, tcp_deadline).await {
                        Ok(full) => full,
                        Err(e) => {
                            tracing::debug!(%upstream, error = %e, "TCP retry of a truncated answer failed");
                            answer
                        }
                    }
                }
                Ok(answer) => answer,
                Err(e) => {
                    errors.push(format!("{upstream}: {e}"));
                    continue;
                }
            };
            let mut answer = answer;
            answer[..2].copy_from_slice(&original_id);
            let rcode = answer[3] & 0x0f;
            if rcode == RCODE_SERVFAIL || rcode == RCODE_REFUSED {
                errors.push(format!("{upstream}: rcode {rcode}"));
                fallback.get_or_insert(answer);
                continue;
            }
            return Ok(answer);
        }
        fallback.ok_or_else(|| ForwardError::NoAnswer(errors.join("; ")))
    }
}

/// Whether a reply answers our query: a response, with our ID and the
/// same questions (names compared without case: servers may change it).
fn matches(reply: &[u8], id: u16, questions: &[hickory_proto::op::Query]) -> bool {
    if reply.len() < 12 || u16::from_be_bytes([reply[0], reply[1]]) != id {
        return false;
    }
    let Ok(message) = Message::from_vec(reply) else {
        return false;
    };
    message.metadata.message_type == MessageType::Response
        && message.queries.len() == questions.len()
        && message.queries.iter().zip(questions).all(|(a, b)| {
            a.query_type() == b.query_type()
                && a.query_class() == b.query_class()
                && a.name().eq_ignore_root(b.name())
        })
}

async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    questions: &[hickory_proto::op::Query],
    deadline: Instant,
) -> std::io::Result<Vec<u8>> {
    let local = match upstream {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from anyone else, and an ICMP
    // "port unreachable" ends the wait at once.
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let len = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out",
                ))
            }
        };
        if matches(&buf[..len], id, questions) {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    questions: &[hickory_proto::op::Query],
    deadline: Instant,
) -> std::io::Result<Vec<u8>> {
    let work = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut reply).await?;
        if !matches(&reply, id, questions) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the TCP answer does not match the query",
            ));
        }
        Ok(reply)
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        )),
    }
}
