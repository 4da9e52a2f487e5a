//! Rudder's scheduler, modelled on the Kubernetes scheduling framework:
//! a scheduling queue, a cache of nodes and the pods on them, plugins at
//! the framework's extension points (one folder each under `plugins/`),
//! and asynchronous binding through the `pods/binding` subresource. It is
//! an API client: it never touches the store.

pub mod cache;
pub mod framework;
pub mod plugins;
pub mod profile;
pub mod queue;
pub mod scheduler;

pub use profile::{SchedulerConfiguration, DEFAULT_SCHEDULER_NAME};
pub use scheduler::Scheduler;

/// Runs the scheduler with `config` until the task is dropped.
pub async fn run(client: kube::Client, config: SchedulerConfiguration) -> anyhow::Result<()> {
    let profiles = config.profiles()?;
    tracing::info!(profiles = ?profiles.keys().collect::<Vec<_>>(), "scheduler starting");
    Scheduler::new(client, profiles).run().await
}
