//! Rudder's controller manager: the control loops that turn declared
//! state into running state (ReplicaSets into pods, Deployments into
//! ReplicaSets, deleted owners into deleted dependents, …).
//!
//! Every controller is an API client built on the informer-and-work-queue
//! pattern from [`rudder_runtime`]: shared informers cache the objects and
//! turn changes into keys, workers reconcile one key at a time from the
//! cache, and write only through the API. One module per controller, each
//! with its tests against a real in-process API server.

pub mod certificates;
pub mod clusterrole_aggregation;
pub mod context;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod discovery;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod garbage_collector;
pub mod history;
pub mod horizontal_pod_autoscaler;
pub mod ingress;
pub mod job;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod replicaset;
pub mod resourcequota;
pub mod root_ca_publisher;
pub mod service_lb;
pub mod serviceaccount;
pub mod statefulset;
pub mod util;
pub mod volume;

#[cfg(test)]
pub(crate) mod testing;

use std::collections::BTreeSet;

use anyhow::Context as _;
use futures::future::BoxFuture;
use kube::Client;

pub use context::{Context, ControllerOptions};

/// A controller: builds itself on the shared informers (registering its
/// handlers), then runs until the process stops.
type Starter = fn(&Context) -> BoxFuture<'static, anyhow::Result<()>>;

/// Every controller by the name `--controllers` uses (kube-controller-
/// manager's names where there is one).
pub const CONTROLLERS: &[(&str, Starter)] = &[
    ("replicaset", replicaset::start),
    ("deployment", deployment::start),
    ("garbagecollector", garbage_collector::start),
    ("namespace", namespace::start),
    ("serviceaccount", serviceaccount::start),
    ("daemonset", daemonset::start),
    ("statefulset", statefulset::start),
    ("cronjob", cronjob::start),
    ("job", job::start),
    ("ttl-after-finished", job::ttl::start),
    ("nodelifecycle", node_lifecycle::start),
    ("taint-eviction-controller", node_lifecycle::eviction::start),
    ("podgc", node_lifecycle::podgc::start),
    ("nodeipam", node_ipam::start),
    ("endpoints", endpoints::start),
    ("endpointslice", endpointslice::start),
    ("persistentvolume-binder", volume::binder::start),
    ("local-path-provisioner", volume::local_path::start),
    ("pvc-protection", volume::protection::start_pvc_protection),
    ("pv-protection", volume::protection::start_pv_protection),
    ("resourcequota", resourcequota::start),
    ("disruption", disruption::start),
    ("horizontalpodautoscaling", horizontal_pod_autoscaler::start),
    ("servicelb", service_lb::start),
    ("ingress", ingress::start),
    ("clusterrole-aggregation", clusterrole_aggregation::start),
    ("csrapproving", certificates::start_approving),
    ("csrsigning", certificates::start_signing),
    ("root-ca-cert-publisher", root_ca_publisher::start),
];

/// Which controllers run: `*` for all, `name` to add one, `-name` to
/// leave one out (kube-controller-manager's `--controllers`).
pub fn select(spec: &[String]) -> anyhow::Result<BTreeSet<&'static str>> {
    let known: BTreeSet<&'static str> = CONTROLLERS.iter().map(|(n, _)| *n).collect();
    let mut chosen = BTreeSet::new();
    let spec: Vec<&str> = if spec.is_empty() {
        vec!["*"]
    } else {
        spec.iter().map(String::as_str).collect()
    };
    for item in &spec {
        if *item == "*" {
            chosen.extend(known.iter().copied());
        }
    }
    for item in spec {
        if item == "*" {
            continue;
        }
        let (remove, name) = match item.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, item),
        };
        let Some(name) = known.get(name).copied() else {
            anyhow::bail!(
                "unknown controller {name:?}; known: {}",
                known.iter().copied().collect::<Vec<_>>().join(", ")
            );
        };
        if remove {
            chosen.remove(name);
        } else {
            chosen.insert(name);
        }
    }
    Ok(chosen)
}

/// Runs the chosen controllers until one fails (they do not, normally:
/// each retries its own errors).
pub async fn run(
    client: Client,
    controllers: &BTreeSet<&'static str>,
    options: ControllerOptions,
) -> anyhow::Result<()> {
    let ctx = Context::with_options(client, options);
    let mut running = futures::stream::FuturesUnordered::new();
    for (name, start) in CONTROLLERS {
        if controllers.contains(name) {
            let task = start(&ctx);
            running.push(async move { task.await.with_context(|| format!("controller {name}")) });
        }
    }
    ctx.informers.start();
    tracing::info!(controllers = ?controllers, "controller manager started");
    use futures::StreamExt;
    while let Some(result) = running.next().await {
        result?;
    }
    Ok(())
}

/// Runs the controllers while holding the Lease
/// `kube-system/kube-controller-manager`, so several instances can run
/// and one acts.
pub async fn run_with_leader_election(
    client: Client,
    controllers: BTreeSet<&'static str>,
    options: ControllerOptions,
) -> anyhow::Result<()> {
    let config = rudder_runtime::leader::LeaderElectionConfig::new("kube-controller-manager");
    rudder_runtime::leader::run_as_leader(client.clone(), config, async move {
        run(client, &controllers, options).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_are_chosen_like_kube_controller_manager() {
        let all = select(&[]).unwrap();
        assert_eq!(all.len(), CONTROLLERS.len());
        let some = select(&["*".into(), "-serviceaccount".into()]).unwrap();
        assert!(!some.contains("serviceaccount"));
        assert_eq!(some.len(), CONTROLLERS.len() - 1);
        let one = select(&["serviceaccount".into()]).unwrap();
        assert_eq!(one.into_iter().collect::<Vec<_>>(), vec!["serviceaccount"]);
        assert!(select(&["nope".into()]).is_err());
    }
}
