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
pub mod volume_cache;

pub use profile::{SchedulerConfiguration, DEFAULT_SCHEDULER_NAME};
pub use scheduler::Scheduler;

/// Runs the scheduler with `config` until the task is dropped. With
/// `leader_elect`, only the holder of the Lease `kube-system/<name>`
/// schedules (`kube-scheduler` for a default-scheduler profile, else the
/// first profile's name), so several instances can run side by side.
pub async fn run(
    client: kube::Client,
    config: SchedulerConfiguration,
    leader_elect: bool,
) -> anyhow::Result<()> {
    let profiles = config.profiles()?;
    let mut names: Vec<&String> = profiles.keys().collect();
    names.sort();
    tracing::info!(profiles = ?names, "scheduler starting");
    let lease = if profiles.contains_key(DEFAULT_SCHEDULER_NAME) {
        "kube-scheduler".to_owned()
    } else {
        names
            .first()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "kube-scheduler".into())
    };
    let scheduler = Scheduler::new(client.clone(), profiles);
    if leader_elect {
        rudder_runtime::leader::run_as_leader(
            client,
            rudder_runtime::leader::LeaderElectionConfig::new(&lease),
            scheduler.run(),
        )
        .await
    } else {
        scheduler.run().await
    }
}
