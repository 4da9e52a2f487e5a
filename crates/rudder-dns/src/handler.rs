//! One DNS message in, one out: authoritative answers for the cluster
//! domain from the current [`Records`], everything else forwarded.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use tokio::time::Instant;

use crate::forward::Forwarder;
use crate::records::{Outcome, Records};

/// The UDP payload size we announce in EDNS answers (the DNS flag day
/// 2020 value: no IP fragmentation on common paths).
pub const EDNS_PAYLOAD: u16 = 1232;
/// The largest UDP answer we send, whatever a client announces.
const MAX_UDP_PAYLOAD: usize = 4096;
/// How many CNAMEs an answer follows inside the cluster domain.
const MAX_ALIAS_HOPS: usize = 8;
/// How long following an ExternalName's target upstream may take: the
/// CNAME alone is answered after that, so a slow upstream does not cost
/// the client its whole timeout.
const ALIAS_FORWARD_BUDGET: Duration = Duration::from_millis(1500);

/// How the question came, which bounds the answer's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The cluster DNS: the records it answers from, replaced whole as the
/// cluster changes, and the upstreams it forwards to.
pub struct ClusterDns {
    records: RwLock<Arc<Records>>,
    forwarder: Forwarder,
}

impl ClusterDns {
    pub fn new(records: Records, forwarder: Forwarder) -> ClusterDns {
        ClusterDns {
            records: RwLock::new(Arc::new(records)),
            forwarder,
        }
    }

    /// Swaps in a new record set; questions already being answered finish
    /// with the old one.
    pub fn replace(&self, records: Records) {
        *self.records.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(records);
    }

    pub fn records(&self) -> Arc<Records> {
        self.records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Answers one message (wire format). None: nothing is sent back (too
    /// short to carry an ID, or not a query).
    pub async fn handle(&self, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if request.len() < 12 {
            return None;
        }
        let id = u16::from_be_bytes([request[0], request[1]]);
        if request[2] & 0x80 != 0 {
            // A response sent to us: never answer one (no reflection loops).
            return None;
        }
        let message = match Message::from_vec(request) {
            Ok(message) => message,
            Err(_) => {
                return encode(&Message::error_msg(
                    id,
                    OpCode::Query,
                    ResponseCode::FormErr,
                ))
            }
        };
        let limit = match transport {
            Transport::Udp => (message.max_payload() as usize).clamp(512, MAX_UDP_PAYLOAD),
            Transport::Tcp => u16::MAX as usize,
        };
        let response = self.respond(&message, request).await;
        let response = match response {
            Response::Message(mut response) => return fit(&mut response, limit),
            Response::Forwarded(bytes) => bytes,
        };
        if response.len() <= limit {
            return Some(response);
        }
        // An upstream answer too big for the client's UDP buffer.
        let mut decoded = Message::from_vec(&response).ok()?;
        fit(&mut decoded, limit)
    }

    async fn respond(&self, message: &Message, raw: &[u8]) -> Response {
        let id = message.metadata.id;
        let mut response = Message::response(id, message.metadata.op_code);
        response.metadata.recursion_desired = message.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.queries = message.queries.clone();
        if message.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            response.set_edns(edns);
        }
        if message.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return Response::Message(response);
        }
        let [query] = message.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return Response::Message(response);
        };
        let records = self.records();
        let class_ok = matches!(query.query_class(), DNSClass::IN | DNSClass::ANY);
        let outcome = if class_ok {
            records.resolve(query.name(), query.query_type())
        } else {
            None
        };
        let Some(outcome) = outcome else {
            if !class_ok && records.in_domain(query.name()) {
                // Only the Internet class exists in the cluster domain.
                response.metadata.response_code = ResponseCode::NotImp;
                return Response::Message(response);
            }
            return match self.forwarder.forward(raw).await {
                Ok(bytes) => Response::Forwarded(bytes),
                Err(e) => {
                    tracing::debug!(name = %query.name(), error = %e, "forwarding failed");
                    response.metadata.response_code = ResponseCode::ServFail;
                    Response::Message(response)
                }
            };
        };
        response.metadata.authoritative = true;
        let mut outcome = outcome;
        let mut hops = 0;
        loop {
            match outcome {
                Outcome::Answer {
                    answers,
                    additionals,
                } => {
                    response.answers.extend(answers);
                    response.additionals.extend(additionals);
                }
                Outcome::NoData => response.authorities.push(records.soa()),
                Outcome::NxDomain => {
                    response.metadata.response_code = ResponseCode::NXDomain;
                    response.authorities.push(records.soa());
                }
                Outcome::Alias { cname, target } => {
                    response.answers.push(*cname);
                    hops += 1;
                    if hops > MAX_ALIAS_HOPS {
                        break;
                    }
                    match records.resolve(&target, query.query_type()) {
                        Some(next) => {
                            outcome = next;
                            continue;
                        }
                        None => {
                            // Outside the cluster domain, CoreDNS asks
                            // upstream for the target and adds what it
                            // learns; the answer is NOERROR either way.
                            response
                                .answers
                                .extend(self.follow_upstream(&target, query.query_type()).await);
                        }
                    }
                }
            }
            break;
        }
        Response::Message(response)
    }

    /// The records an upstream gives for a CNAME's target, if it answers
    /// in time.
    async fn follow_upstream(&self, target: &Name, qtype: RecordType) -> Vec<Record> {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(target.clone(), qtype));
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        query.set_edns(edns);
        let Ok(bytes) = query.to_vec() else {
            return Vec::new();
        };
        match self
            .forwarder
            .forward_until(&bytes, Instant::now() + ALIAS_FORWARD_BUDGET)
            .await
        {
            Ok(reply) => Message::from_vec(&reply)
                .map(|m| m.answers)
                .unwrap_or_default(),
            Err(e) => {
                tracing::debug!(%target, error = %e, "following an external CNAME upstream failed");
                Vec::new()
            }
        }
    }
}

enum Response {
    Message(Message),
    Forwarded(Vec<u8>),
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!(error = %e, "encoding a DNS answer failed");
            None
        }
    }
}

/// Encodes a response within `limit` bytes. One that does not fit loses
/// its authority and additional records, then as many answers as needed,
/// and is marked truncated (TC), so that the client asks again over TCP.
pub fn fit(message: &mut Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = encode(message)?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    message.metadata.message_type = MessageType::Response;
    message.metadata.truncation = true;
    message.authorities.clear();
    message.additionals.clear();
    let all = std::mem::take(&mut message.answers);
    // The most answers that fit, by bisection (0 always fits: a header,
    // the question and the OPT record).
    let (mut fits, mut too_many) = (0, all.len() + 1);
    while too_many - fits > 1 {
        let mid = (fits + too_many) / 2;
        message.answers = all[..mid].to_vec();
        if encode(message)?.len() <= limit {
            fits = mid;
        } else {
            too_many = mid;
        }
    }
    message.answers = all[..fits].to_vec();
    encode(message)
}
