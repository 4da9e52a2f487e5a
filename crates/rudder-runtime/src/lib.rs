//! The client side of the control loop, shared by every Rudder component
//! that acts through the API (controllers, scheduler, node agent):
//!
//! - [`informer`]: one watch per resource type, a local cache with
//!   indexes, and change notifications (client-go's shared informers);
//! - [`workqueue`]: a de-duplicating, rate-limited queue of keys that
//!   never hands one key to two workers at once;
//! - [`expectations`]: the creations and deletions a controller has asked
//!   for but not yet seen in its cache, so it does not act twice;
//! - [`events`]: core/v1 Events for `kubectl describe`;
//! - [`leader`]: leader election on a Lease.
//!
//! It builds on the `kube` crate's watcher; nothing here touches storage.

pub mod events;
pub mod expectations;
pub mod informer;
pub mod leader;
pub mod workqueue;

pub use informer::{Change, Informer, Informers, ObjectKey};
pub use workqueue::WorkQueue;
