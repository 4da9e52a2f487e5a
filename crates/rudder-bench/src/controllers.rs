//! `rudder-bench controllers`: the controller manager at scale. A fresh
//! `rudder server` (API server and scheduler, no controllers), `rudder
//! controller-manager` as its own process, and `rudder simulate` as the
//! nodes' kubelets. Measured, by wall clock as seen on watches:
//!
//! - `create_to_running_s`: from the first Deployment create until every
//!   Deployment is complete and all their pods are Running;
//! - `rolling_update_s`: from the first image patch until every Deployment
//!   has rolled out the new template (complete, every Running pod on the
//!   new image, no live pod left on the old one).
//!
//! Before the clock starts, a one-replica warm-up Deployment in another
//! namespace must become available: it proves the controller manager holds
//! its lease and has synced caches, the scheduler is up and the simulated
//! nodes run pods, so start-up is not counted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::server::{log_output, Process};

#[derive(Args, Debug)]
pub struct ControllersArgs {
    /// Simulated nodes (`rudder simulate`, 110 pods each).
    #[arg(long, default_value_t = 500)]
    nodes: usize,
    /// Deployments created, then rolled out.
    #[arg(long, default_value_t = 100)]
    deployments: usize,
    /// Replicas of each Deployment.
    #[arg(long, default_value_t = 50)]
    replicas: usize,
    /// Concurrent clients creating and patching Deployments.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Give up a phase (start-up, create, rolling update) after this many
    /// seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_s: u64,
    /// The `rudder` binary (default: beside this one).
    #[arg(long)]
    rudder_bin: Option<PathBuf>,
    /// Keep the logs of the started processes (server, controller
    /// manager, simulator) in this directory; by default they are dropped.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

const NAMESPACE: &str = "controllers-bench";
const WARMUP_NAMESPACE: &str = "controllers-bench-warmup";
const NODE_PREFIX: &str = "bench-node-";
/// Pods a simulated node takes (the simulator's default).
const PODS_PER_NODE: usize = 110;
const IMAGE_V1: &str = "registry.local/bench-app:v1";
const IMAGE_V2: &str = "registry.local/bench-app:v2";
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl ControllersArgs {
    /// Refuses sizes that cannot finish: pods (with the rolling update's
    /// default 25 % surge) must fit on the nodes.
    fn validate(&self) -> anyhow::Result<()> {
        if self.nodes == 0 || self.deployments == 0 || self.replicas == 0 || self.clients == 0 {
            bail!("--nodes, --deployments, --replicas and --clients must be at least 1");
        }
        let surge = self.replicas.div_ceil(4);
        let peak = self.deployments * (self.replicas + surge);
        let capacity = self.nodes * PODS_PER_NODE;
        if peak > capacity {
            bail!(
                "{peak} pods at the rolling update's peak (25% surge) do not fit on {} simulated nodes of {PODS_PER_NODE} pods; raise --nodes",
                self.nodes
            );
        }
        Ok(())
    }
}

fn deployment(name: &str, replicas: usize, image: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image,
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
            }
        }
    })
}

/// What the benchmark needs of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodView {
    image: String,
    running: bool,
    terminating: bool,
}

impl PodView {
    fn of(pod: &Pod) -> Self {
        PodView {
            image: pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            running: pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// What the benchmark needs of a Deployment: its template's image, and
/// whether it is complete as `kubectl rollout status` and the deployment
/// controller judge it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DeploymentView {
    image: String,
    complete: bool,
}

impl DeploymentView {
    fn of(deployment: &Deployment) -> Self {
        let spec = deployment.spec.as_ref();
        let image = spec
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let wanted = spec.and_then(|s| s.replicas).unwrap_or(1);
        let complete = deployment.status.as_ref().is_some_and(|status| {
            let observed = status.observed_generation.unwrap_or(0)
                >= deployment.metadata.generation.unwrap_or(0);
            let progressing = status.conditions.iter().flatten().any(|c| {
                c.type_ == "Progressing"
                    && c.status == "True"
                    && c.reason.as_deref() == Some("NewReplicaSetAvailable")
            });
            observed
                && progressing
                && status.updated_replicas.unwrap_or(0) == wanted
                // No pod of an old ReplicaSet is left.
                && status.replicas.unwrap_or(0) == wanted
                && status.available_replicas.unwrap_or(0) == wanted
        });
        DeploymentView { image, complete }
    }
}

/// Counts over the watched objects, kept up to date change by change.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Running pods that are not being deleted, by image.
    running: BTreeMap<String, usize>,
    /// Pods that are not being deleted.
    live: usize,
    terminating: usize,
    /// Complete Deployments, by template image.
    complete: BTreeMap<String, usize>,
    deployments: usize,
    synced: bool,
    /// When each image's target state (see [`Target`]) was first seen.
    done_at: BTreeMap<String, Instant>,
}

impl Counts {
    fn running(&self, image: &str) -> usize {
        self.running.get(image).copied().unwrap_or(0)
    }

    fn complete(&self, image: &str) -> usize {
        self.complete.get(image).copied().unwrap_or(0)
    }

    fn add_pod(&mut self, pod: &PodView) {
        if pod.terminating {
            self.terminating += 1;
            return;
        }
        self.live += 1;
        if pod.running {
            *self.running.entry(pod.image.clone()).or_default() += 1;
        }
    }

    fn remove_pod(&mut self, pod: &PodView) {
        if pod.terminating {
            self.terminating -= 1;
            return;
        }
        self.live -= 1;
        if pod.running {
            decrement(&mut self.running, &pod.image);
        }
    }

    fn add_deployment(&mut self, deployment: &DeploymentView) {
        self.deployments += 1;
        if deployment.complete {
            *self.complete.entry(deployment.image.clone()).or_default() += 1;
        }
    }

    fn remove_deployment(&mut self, deployment: &DeploymentView) {
        self.deployments -= 1;
        if deployment.complete {
            decrement(&mut self.complete, &deployment.image);
        }
    }

    fn progress(&self, image: &str, target: Target) -> String {
        format!(
            "pods running {}/{} (live {}, terminating {}), deployments complete {}/{}",
            self.running(image),
            target.pods(),
            self.live,
            self.terminating,
            self.complete(image),
            target.deployments,
        )
    }
}

fn decrement(counts: &mut BTreeMap<String, usize>, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// The state each phase waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    deployments: usize,
    replicas: usize,
}

impl Target {
    fn pods(self) -> usize {
        self.deployments * self.replicas
    }

    /// Every Deployment complete on `image`, every pod Running on it, and
    /// no other live pod.
    fn reached(self, counts: &Counts, image: &str) -> bool {
        counts.deployments == self.deployments
            && counts.complete(image) == self.deployments
            && counts.running(image) == self.pods()
            && counts.live == self.pods()
    }
}

/// Objects of one kind from a watcher, replaced wholesale on a re-list.
struct Watched<V> {
    items: HashMap<String, V>,
    relisting: Option<HashMap<String, V>>,
    synced: bool,
}

impl<V> Default for Watched<V> {
    fn default() -> Self {
        Watched {
            items: HashMap::new(),
            relisting: None,
            synced: false,
        }
    }
}

impl<V> Watched<V> {
    /// Applies a watcher event; `add`/`remove` keep `counts` in step.
    fn handle<K: kube::ResourceExt>(
        &mut self,
        event: watcher::Event<K>,
        view: impl Fn(&K) -> V,
        counts: &mut Counts,
        add: impl Fn(&mut Counts, &V),
        remove: impl Fn(&mut Counts, &V),
    ) {
        match event {
            watcher::Event::Apply(object) => {
                let new = view(&object);
                add(counts, &new);
                if let Some(old) = self.items.insert(object.name_any(), new) {
                    remove(counts, &old);
                }
            }
            watcher::Event::Delete(object) => {
                if let Some(old) = self.items.remove(&object.name_any()) {
                    remove(counts, &old);
                }
            }
            watcher::Event::Init => self.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(object) => {
                self.relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(object.name_any(), view(&object));
            }
            watcher::Event::InitDone => {
                for old in self.items.values() {
                    remove(counts, old);
                }
                self.items = self.relisting.take().unwrap_or_default();
                for new in self.items.values() {
                    add(counts, new);
                }
                self.synced = true;
            }
        }
    }
}

/// The benchmark's view of the namespace, fed by a pod and a Deployment
/// watcher.
struct Tracker {
    target: Target,
    pods: Watched<PodView>,
    deployments: Watched<DeploymentView>,
    counts: Counts,
}

/// A change from either watcher (boxed: the objects are large).
enum Observed {
    Pod(Box<watcher::Event<Pod>>),
    Deployment(Box<watcher::Event<Deployment>>),
}

impl Observed {
    fn pod(event: watcher::Event<Pod>) -> Self {
        Observed::Pod(Box::new(event))
    }

    fn deployment(event: watcher::Event<Deployment>) -> Self {
        Observed::Deployment(Box::new(event))
    }
}

impl Tracker {
    fn new(target: Target) -> Self {
        Tracker {
            target,
            pods: Watched::default(),
            deployments: Watched::default(),
            counts: Counts::default(),
        }
    }

    fn handle(&mut self, observed: Observed, now: Instant) {
        match observed {
            Observed::Pod(event) => self.pods.handle(
                *event,
                PodView::of,
                &mut self.counts,
                Counts::add_pod,
                Counts::remove_pod,
            ),
            Observed::Deployment(event) => self.deployments.handle(
                *event,
                DeploymentView::of,
                &mut self.counts,
                Counts::add_deployment,
                Counts::remove_deployment,
            ),
        }
        self.counts.synced = self.pods.synced && self.deployments.synced;
        for image in [IMAGE_V1, IMAGE_V2] {
            if !self.counts.done_at.contains_key(image) && self.target.reached(&self.counts, image)
            {
                self.counts.done_at.insert(image.to_owned(), now);
            }
        }
    }
}

/// Watches the benchmark's namespace and publishes [`Counts`] after every
/// change.
async fn track(client: Client, target: Target, counts: watch::Sender<Counts>) {
    let pods = watcher(
        Api::<Pod>::namespaced(client.clone(), NAMESPACE),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(Observed::pod))
    .boxed();
    let deployments = watcher(
        Api::<Deployment>::namespaced(client, NAMESPACE),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(Observed::deployment))
    .boxed();
    let mut events = futures::stream::select(pods, deployments);
    let mut tracker = Tracker::new(target);
    while let Some(event) = events.next().await {
        match event {
            Ok(observed) => {
                tracker.handle(observed, Instant::now());
                counts.send_replace(tracker.counts.clone());
            }
            // The watcher backs off and resumes by itself.
            Err(err) => eprintln!("controllers: watch error (retrying): {err}"),
        }
    }
}

/// Waits until `image`'s target state has been seen and returns when it
/// first was; prints progress every few seconds.
async fn wait_done(
    counts: &mut watch::Receiver<Counts>,
    phase: &str,
    image: &str,
    target: Target,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    loop {
        if let Some(at) = counts.borrow_and_update().done_at.get(image) {
            return Ok(*at);
        }
        tokio::select! {
            changed = counts.changed() => changed.context("the watch task stopped")?,
            _ = ticker.tick() => eprintln!(
                "controllers: {phase} {:.1}s: {}",
                started.elapsed().as_secs_f64(),
                counts.borrow().progress(image, target),
            ),
            _ = tokio::time::sleep_until(deadline) => bail!(
                "{phase} did not finish within {} s: {}",
                timeout.as_secs(),
                counts.borrow().progress(image, target),
            ),
        }
    }
}

/// Runs `work(i)` for `0..count` with `clients` concurrent tasks.
async fn run_many<F, Fut>(count: usize, clients: usize, work: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let work = Arc::new(work);
    let mut tasks = Vec::new();
    for _ in 0..clients.min(count) {
        let (next, work) = (next.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                work(i).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn deployment_name(i: usize) -> String {
    format!("app-{i:04}")
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await
        .with_context(|| format!("creating the namespace {name}"))?;
    Ok(())
}

/// Polls until `ready` holds, for at most `timeout`.
async fn poll<F, Fut>(what: &str, timeout: Duration, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if ready().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} within {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn spawn(
    bin: &Path,
    args: &[&str],
    log_dir: Option<&Path>,
    log_name: &str,
) -> anyhow::Result<Process> {
    let child = Command::new(bin)
        .args(args)
        .stdout(log_output(log_dir, log_name)?)
        .stderr(log_output(log_dir, log_name)?)
        .spawn()
        .with_context(|| format!("starting {} {}", bin.display(), args[0]))?;
    Ok(Process(child))
}

pub async fn run(args: ControllersArgs) -> anyhow::Result<()> {
    args.validate()?;
    let target = Target {
        deployments: args.deployments,
        replicas: args.replicas,
    };
    let timeout = Duration::from_secs(args.timeout_s);
    let log_dir = args.log_dir.as_deref();
    if let Some(dir) = log_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the log directory {}", dir.display()))?;
    }

    // The API server and the scheduler; the controllers run apart.
    let server = crate::server::start_logged(
        None,
        args.rudder_bin.as_deref(),
        None,
        &["--disable-controller-manager"],
        log_dir.map(|d| d.join("server.log")).as_deref(),
    )?;
    let server_pid = server.pid().context("no server process")?;
    let kubeconfig = server.kubeconfig().context("no kubeconfig")?;
    let kubeconfig = kubeconfig.to_str().context("a non-UTF-8 data directory")?;
    let bin = crate::server::rudder_bin(args.rudder_bin.as_deref())?;
    let client = server.client().await?;

    let nodes_flag = args.nodes.to_string();
    let _simulator = spawn(
        &bin,
        &[
            "simulate",
            "--kubeconfig",
            kubeconfig,
            "--nodes",
            &nodes_flag,
            "--name-prefix",
            NODE_PREFIX,
        ],
        log_dir,
        "simulate.log",
    )?;
    let controller_manager = spawn(
        &bin,
        &["controller-manager", "--kubeconfig", kubeconfig],
        log_dir,
        "controller-manager.log",
    )?;
    let cm_pid = controller_manager.0.id();

    let started = Instant::now();
    let node_api: Api<Node> = Api::all(client.clone());
    poll(
        &format!("{} simulated nodes were not Ready", args.nodes),
        timeout,
        || async {
            let nodes = node_api.list(&ListParams::default()).await?;
            let ready = nodes
                .items
                .iter()
                .filter(|n| {
                    n.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(NODE_PREFIX))
                })
                .filter(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .count();
            Ok(ready >= args.nodes)
        },
    )
    .await?;
    eprintln!(
        "controllers: {} simulated nodes Ready after {:.1}s",
        args.nodes,
        started.elapsed().as_secs_f64()
    );

    // Warm-up: one Deployment through the whole chain before measuring.
    create_namespace(&client, WARMUP_NAMESPACE).await?;
    let warmup: Api<Deployment> = Api::namespaced(client.clone(), WARMUP_NAMESPACE);
    warmup
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment("warmup", 1, IMAGE_V1))?,
        )
        .await?;
    poll(
        "the warm-up Deployment was not available (is the controller manager running?)",
        timeout,
        || async {
            let d = warmup.get("warmup").await?;
            Ok(DeploymentView::of(&d).complete)
        },
    )
    .await?;
    eprintln!(
        "controllers: warm-up Deployment available after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    create_namespace(&client, NAMESPACE).await?;
    let (counts_tx, mut counts) = watch::channel(Counts::default());
    let tracker = tokio::spawn(track(client.clone(), target, counts_tx));
    tokio::time::timeout(timeout, counts.wait_for(|c| c.synced))
        .await
        .context("the benchmark's watches did not sync")??;

    let cm_cpu_before = crate::cpu_s(cm_pid);
    let server_cpu_before = crate::cpu_s(server_pid);

    // Phase 1: create every Deployment; wait for all pods Running.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let create_started = Instant::now();
    let api = deployments.clone();
    let replicas = args.replicas;
    run_many(args.deployments, args.clients, move |i| {
        let api = api.clone();
        async move {
            let body = serde_json::from_value(deployment(&deployment_name(i), replicas, IMAGE_V1))?;
            api.create(&PostParams::default(), &body).await?;
            Ok(())
        }
    })
    .await?;
    eprintln!(
        "controllers: {} Deployments created in {:.1}s",
        args.deployments,
        create_started.elapsed().as_secs_f64()
    );
    let running_at = wait_done(
        &mut counts,
        "create",
        IMAGE_V1,
        target,
        create_started,
        timeout,
    )
    .await?;
    let create_to_running = running_at.duration_since(create_started);
    eprintln!(
        "controllers: all {} pods Running after {:.1}s",
        target.pods(),
        create_to_running.as_secs_f64()
    );

    // Phase 2: a rolling update of every Deployment, as `kubectl set image`.
    let update_started = Instant::now();
    let api = deployments.clone();
    run_many(args.deployments, args.clients, move |i| {
        let api = api.clone();
        async move {
            let patch = json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": IMAGE_V2}]}}}});
            api.patch(
                &deployment_name(i),
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    eprintln!(
        "controllers: {} Deployments patched in {:.1}s",
        args.deployments,
        update_started.elapsed().as_secs_f64()
    );
    let updated_at = wait_done(
        &mut counts,
        "rolling update",
        IMAGE_V2,
        target,
        update_started,
        timeout,
    )
    .await?;
    let rolling_update = updated_at.duration_since(update_started);
    eprintln!(
        "controllers: rolling update complete after {:.1}s",
        rolling_update.as_secs_f64()
    );

    let cm_cpu = crate::cpu_s(cm_pid).zip(cm_cpu_before).map(|(a, b)| a - b);
    let server_cpu = crate::cpu_s(server_pid)
        .zip(server_cpu_before)
        .map(|(a, b)| a - b);
    let cm_rss = crate::rss_mb(cm_pid);
    let cm_peak_rss = crate::peak_rss_mb(cm_pid);
    let server_rss = crate::rss_mb(server_pid);
    tracker.abort();

    // Not timed: the old ReplicaSets must be scaled to zero.
    check_old_replica_sets(&client, args.deployments).await?;

    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "n/a".into());
    println!(
        "controllers nodes={} deployments={} replicas={} pods={} create_to_running_s={:.2} rolling_update_s={:.2} controller_manager_rss_mb={} controller_manager_peak_rss_mb={} controller_manager_cpu_s={} server_rss_mb={} server_cpu_s={}",
        args.nodes,
        args.deployments,
        args.replicas,
        target.pods(),
        create_to_running.as_secs_f64(),
        rolling_update.as_secs_f64(),
        fmt(cm_rss),
        fmt(cm_peak_rss),
        fmt(cm_cpu),
        fmt(server_rss),
        fmt(server_cpu),
    );
    drop(controller_manager);
    Ok(())
}

/// Each Deployment must own exactly one ReplicaSet with replicas, on the
/// new image, and its old one scaled to zero.
async fn check_old_replica_sets(client: &Client, deployments: usize) -> anyhow::Result<()> {
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NAMESPACE);
    let list = replica_sets.list(&ListParams::default()).await?;
    let mut per_owner: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for rs in &list.items {
        let owner = rs
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.name.clone())
            .unwrap_or_default();
        let image = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.as_deref());
        let scaled = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
            + rs.status.as_ref().map_or(0, |s| s.replicas);
        let entry = per_owner.entry(owner.clone()).or_default();
        if image == Some(IMAGE_V2) {
            entry.0 += 1;
        } else if scaled != 0 {
            bail!(
                "the old ReplicaSet {} of {owner} still has replicas",
                rs.metadata.name.as_deref().unwrap_or_default()
            );
        } else {
            entry.1 += 1;
        }
    }
    let rolled = per_owner
        .values()
        .filter(|(new, old)| *new == 1 && *old >= 1)
        .count();
    if rolled != deployments {
        bail!("{rolled} of {deployments} Deployments have one new ReplicaSet and a scaled-down old one");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, image: &str, phase: &str, deleting: bool) -> Pod {
        let mut pod = json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": image}]},
            "status": {"phase": phase},
        });
        if deleting {
            pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(pod).unwrap()
    }

    fn deployment_with(image: &str, status: Value, generation: i64) -> Deployment {
        let mut d = deployment("d", 2, image);
        d["metadata"]["generation"] = json!(generation);
        d["status"] = status;
        serde_json::from_value(d).unwrap()
    }

    fn complete_status(observed: i64) -> Value {
        json!({"observedGeneration": observed, "replicas": 2, "updatedReplicas": 2,
            "availableReplicas": 2, "readyReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]})
    }

    #[test]
    fn a_deployment_is_complete_only_when_its_rollout_is_finished_and_observed() {
        assert!(DeploymentView::of(&deployment_with(IMAGE_V1, complete_status(1), 1)).complete);
        // The controller has not seen the new template yet.
        assert!(!DeploymentView::of(&deployment_with(IMAGE_V2, complete_status(1), 2)).complete);
        // Old pods remain.
        let mut old_pods = complete_status(1);
        old_pods["replicas"] = json!(3);
        assert!(!DeploymentView::of(&deployment_with(IMAGE_V1, old_pods, 1)).complete);
        let mut still_progressing = complete_status(1);
        still_progressing["conditions"][0]["reason"] = json!("ReplicaSetUpdated");
        assert!(!DeploymentView::of(&deployment_with(IMAGE_V1, still_progressing, 1)).complete);
        let mut unavailable = complete_status(1);
        unavailable["availableReplicas"] = json!(1);
        assert!(!DeploymentView::of(&deployment_with(IMAGE_V1, unavailable, 1)).complete);
    }

    #[test]
    fn the_target_is_reached_when_every_pod_runs_the_image_and_every_deployment_is_complete() {
        let target = Target {
            deployments: 1,
            replicas: 2,
        };
        let mut tracker = Tracker::new(target);
        let t0 = Instant::now();
        let pods = Observed::pod;
        tracker.handle(pods(watcher::Event::Init), t0);
        tracker.handle(pods(watcher::Event::InitDone), t0);
        tracker.handle(Observed::deployment(watcher::Event::Init), t0);
        tracker.handle(Observed::deployment(watcher::Event::InitDone), t0);
        assert!(tracker.counts.synced);

        tracker.handle(
            Observed::deployment(watcher::Event::Apply(deployment_with(
                IMAGE_V1,
                complete_status(1),
                1,
            ))),
            t0,
        );
        tracker.handle(
            pods(watcher::Event::Apply(pod("a", IMAGE_V1, "Running", false))),
            t0,
        );
        tracker.handle(
            pods(watcher::Event::Apply(pod("b", IMAGE_V1, "Pending", false))),
            t0,
        );
        assert!(tracker.counts.done_at.is_empty());
        let t1 = t0 + Duration::from_secs(1);
        tracker.handle(
            pods(watcher::Event::Apply(pod("b", IMAGE_V1, "Running", false))),
            t1,
        );
        assert_eq!(tracker.counts.done_at.get(IMAGE_V1), Some(&t1));
        assert_eq!(tracker.counts.running(IMAGE_V1), 2);

        // The rollout: a new pod runs while an old one still lives.
        let t2 = t0 + Duration::from_secs(2);
        tracker.handle(
            Observed::deployment(watcher::Event::Apply(deployment_with(
                IMAGE_V2,
                complete_status(1),
                2,
            ))),
            t2,
        );
        tracker.handle(
            pods(watcher::Event::Apply(pod("c", IMAGE_V2, "Running", false))),
            t2,
        );
        tracker.handle(
            pods(watcher::Event::Apply(pod("d", IMAGE_V2, "Running", false))),
            t2,
        );
        tracker.handle(
            pods(watcher::Event::Delete(pod("a", IMAGE_V1, "Running", false))),
            t2,
        );
        tracker.handle(
            Observed::deployment(watcher::Event::Apply(deployment_with(
                IMAGE_V2,
                complete_status(2),
                2,
            ))),
            t2,
        );
        // "b" still lives on the old image.
        assert!(!tracker.counts.done_at.contains_key(IMAGE_V2));
        let t3 = t0 + Duration::from_secs(3);
        tracker.handle(
            pods(watcher::Event::Apply(pod("b", IMAGE_V1, "Running", true))),
            t3,
        );
        assert_eq!(tracker.counts.done_at.get(IMAGE_V2), Some(&t3));
        assert_eq!(tracker.counts.terminating, 1);
        assert_eq!(tracker.counts.live, 2);
        // The first moment is kept.
        assert_eq!(tracker.counts.done_at.get(IMAGE_V1), Some(&t1));
    }

    #[test]
    fn a_relist_replaces_what_was_watched() {
        let mut tracker = Tracker::new(Target {
            deployments: 1,
            replicas: 1,
        });
        let now = Instant::now();
        for name in ["a", "b"] {
            tracker.handle(
                Observed::pod(watcher::Event::Apply(pod(name, IMAGE_V1, "Running", false))),
                now,
            );
        }
        assert_eq!(tracker.counts.live, 2);
        tracker.handle(Observed::pod(watcher::Event::Init), now);
        tracker.handle(
            Observed::pod(watcher::Event::InitApply(pod(
                "b", IMAGE_V1, "Pending", false,
            ))),
            now,
        );
        // Until the list is done, the counts stay as they were.
        assert_eq!(tracker.counts.running(IMAGE_V1), 2);
        tracker.handle(Observed::pod(watcher::Event::InitDone), now);
        assert_eq!(tracker.counts.live, 1);
        assert_eq!(tracker.counts.running(IMAGE_V1), 0);
        assert!(!tracker.counts.synced, "the Deployments are not listed yet");
    }

    #[test]
    fn sizes_that_cannot_fit_the_nodes_are_refused() {
        let args = |nodes, deployments, replicas| ControllersArgs {
            nodes,
            deployments,
            replicas,
            clients: 16,
            timeout_s: 10,
            rudder_bin: None,
            log_dir: None,
        };
        assert!(args(500, 100, 50).validate().is_ok());
        assert!(args(20, 5, 10).validate().is_ok());
        // 100 pods plus a 25 % surge of 25 need two nodes.
        assert!(args(1, 1, 100).validate().is_err());
        assert!(args(2, 1, 100).validate().is_ok());
        assert!(args(1, 0, 1).validate().is_err());
    }
}
