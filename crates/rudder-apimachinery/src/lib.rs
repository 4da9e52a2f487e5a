//! API machinery shared by Rudder's components, like Go's apimachinery or
//! `kube-core`: pure functions over JSON objects, with no I/O.
//!
//! - [`defaults`]: the API's Pod defaults.
//! - [`selector`]: label and field selectors (parsing and matching).
//! - [`strategic_merge`]: JSON merge patch and strategic merge patch.
//! - [`quantity`]: resource quantities.
//! - [`resources`]: exact resource arithmetic and quota usage.
//! - [`time`]: RFC 3339 timestamps.

pub mod defaults;
pub mod protobuf;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod strategic_merge;
pub mod time;
