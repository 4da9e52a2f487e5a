//! Cluster DNS, as CoreDNS's kubernetes plugin serves it in k3s: an
//! authoritative server for the cluster domain (default `cluster.local`)
//! answering from an in-memory record set built from Services and
//! EndpointSlices ([`cluster_records`]), which the caller replaces as the
//! cluster changes ([`ClusterDns::replace`]), and a forwarder for every
//! other name to the node's resolvers ([`Forwarder`], [`resolv`]).
//!
//! The wire format is `hickory-proto`'s; the server ([`DnsServer`]) speaks
//! UDP (answers bounded by 512 bytes or the client's EDNS size, truncated
//! with TC beyond) and TCP.

pub mod cluster;
pub mod forward;
pub mod handler;
pub mod records;
pub mod resolv;
pub mod server;

/// The DNS wire format the crate speaks (for callers' own queries).
pub use hickory_proto as proto;

pub use cluster::cluster_records;
pub use forward::{ForwardError, Forwarder};
pub use handler::{ClusterDns, Transport};
pub use records::{Records, RecordsBuilder, TTL};
pub use resolv::ResolvConf;
pub use server::DnsServer;

/// The cluster domain when none is configured.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

#[cfg(test)]
mod tests;
