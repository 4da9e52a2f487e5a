//! Rudder's built-in Ingress controller (what Traefik is to k3s): HTTP on
//! port 80 and HTTPS on 443 of every node address, routing requests by
//! host and path to the ready endpoints of Services, as the Ingresses of
//! class `rudder` say.
//!
//! - [`class`]: which Ingresses are ours (class `rudder`, or none while
//!   `rudder` is the default IngressClass);
//! - [`routes`]: the routing table built from Ingresses, Services and
//!   EndpointSlices, and what cannot be served ([`Problem`]s);
//! - [`tls`]: certificates from `kubernetes.io/tls` Secrets, chosen by SNI;
//! - `server`: the listeners and the proxy ([`IngressController`]).
//!
//! The node agent feeds [`routes::build`] from its informers and hands the
//! result to [`IngressController::update`]; listeners keep running across
//! updates. A request no rule matches gets 404 (or the default backend), a
//! backend without a ready endpoint 503, an endpoint that does not answer
//! 502. Requests reach the endpoint with the client's `Host` and with
//! `X-Forwarded-For`, `-Host`, `-Proto` and `-Port` set. Connection
//! upgrades (WebSocket) are not proxied.

pub mod class;
pub mod routes;
mod server;
pub mod tls;

pub use routes::{build, Backend, IngressConfig, Objects, Problem, RouteTable, Snapshot};
pub use server::{IngressController, Listening, Scheme};
pub use tls::{CertStore, TlsSecretError};
