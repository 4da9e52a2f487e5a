//! The node's container runtime service: what the kubelet asks of a CRI
//! runtime, built on Rudder's image store (`rudder-image`) and Linux
//! container runtime (`rudder-container`). `rudder ctr` and the node agent
//! use the same [`NodeRuntime`] over the same data directory.

pub mod bundle;
pub mod cri;
pub mod error;
pub mod node;
pub mod sandbox;

pub use bundle::{BundleRequest, Bundles};
pub use cri::{ImageService, RuntimeService};
pub use error::{CriError, Result};
pub use node::NodeRuntime;
