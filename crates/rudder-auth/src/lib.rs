//! Rudder's security library, shared by the API server, the node agent and
//! the `rudder` binary. Everything here is pure policy and cryptography:
//! no I/O against the API, so each piece is tested by tables.
//!
//! - [`user`]: who is asking ([`UserInfo`]), as authentication found it.
//! - [`authorizer`]: what they ask for ([`Attributes`]) and the answer
//!   ([`Decision`]), the contract every authorizer follows.
//! - [`pki`]: certificate authorities, certificates, CSRs, join tokens and
//!   rustls configurations.
//! - [`token`]: ServiceAccount JWTs.
//! - [`rbac`], [`node`]: the RBAC and Node authorizers, NodeRestriction.
//! - [`pod_security`]: the Pod Security Standards.
//! - `audit`: audit policies and the JSON-lines log.

pub mod audit;
pub mod authorizer;
pub mod node;
pub mod pki;
pub mod pod_security;
pub mod rbac;
pub mod token;
pub mod user;

pub use authorizer::{Attributes, Decision};
pub use user::UserInfo;
