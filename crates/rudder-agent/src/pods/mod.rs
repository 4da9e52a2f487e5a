//! The pods bound to this node: one worker per pod that drives the runtime
//! towards the pod's spec (sandbox, init containers one by one, app
//! containers with their restart policy and back-off, probes, graceful
//! termination) and reports the pod's status, plus a relist loop (the
//! kubelet's PLEG) that notices containers changing state.

pub mod config;
pub mod evict;
pub mod probes;
pub mod resolv;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, Client};
use rudder_cri::cri::{
    ContainerFilter, ContainerState as CriState, ImageService, ImageSpec, Mount as CriMount,
    PodSandboxFilter, PodSandboxState, RuntimeService, LABEL_POD_UID,
};
use rudder_cri::NodeRuntime;
use rudder_runtime::events::{EventRecorder, EventType};
use rudder_runtime::informer::Informer;
use tokio::sync::mpsc;

pub use self::evict::Eviction;
use self::probes::ProbeResults;
use self::status::{ContainerRecord, PodFacts, Waiting};
use crate::static_pods;

/// How often the runtime is relisted for container state changes.
const RELIST_PERIOD: Duration = Duration::from_secs(1);
/// How often the static pod manifests are read (the kubelet: 20 s).
const MANIFEST_CHECK_PERIOD: Duration = Duration::from_secs(2);
/// How often configMap, secret and downward API volumes are refreshed.
const VOLUME_REFRESH_PERIOD: Duration = Duration::from_secs(15);
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long resets its back-off.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct PodManagerConfig {
    pub node_name: String,
    pub host_ip: String,
    /// `<data-dir>/pods`: per-pod volumes and the managed /etc/hosts.
    pub pods_dir: PathBuf,
    /// Where container logs go, `<logs_dir>/<ns>_<name>_<uid>/<container>/<n>.log`.
    pub logs_dir: PathBuf,
    pub node_memory: i64,
    pub node_cpu_millis: i64,
    /// The static pod manifests (`<data-dir>/pod-manifests`); None: none.
    pub manifests_dir: Option<PathBuf>,
    /// Cluster DNS and domain for pods' resolv.conf.
    pub dns: resolv::PodDnsSettings,
}

#[derive(Default)]
struct Backoff {
    delay: Option<Duration>,
}

#[derive(Default)]
struct PodState {
    restart_backoff: HashMap<String, Backoff>,
    pull_backoff: HashMap<String, (Duration, Instant)>,
    waiting: BTreeMap<String, Waiting>,
    last_status: Option<PodStatus>,
    init_failed: bool,
    eviction: Option<evict::EvictionState>,
}

struct Inner {
    client: Client,
    runtime: Arc<NodeRuntime>,
    network: Option<Arc<rudder_network::PodNetwork>>,
    volumes: crate::volumes::VolumeManager,
    recorder: EventRecorder,
    config: PodManagerConfig,
    pods: Informer<Pod>,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<()>>>,
    states: Mutex<HashMap<String, PodState>>,
    probes: ProbeResults,
    /// Static pods by uid, as read from their manifests.
    static_pods: Mutex<HashMap<String, Arc<Pod>>>,
}

#[derive(Clone)]
pub struct PodManager {
    inner: Arc<Inner>,
}

const UID_INDEX: &str = "uid";

/// Where a pod's containers go: its sandbox, address and hosts file.
#[derive(Clone, Copy)]
struct Placement<'a> {
    sandbox_id: &'a str,
    sandbox_config: &'a rudder_cri::cri::PodSandboxConfig,
    pod_ip: Option<&'a str>,
    hosts_file: &'a std::path::Path,
}

/// What a sync asks for next.
enum Next {
    /// Sync again on the next event, or after this long.
    After(Option<Duration>),
    /// The pod is gone and cleaned up: the worker ends.
    Done,
}

/// Runs a runtime call on the blocking pool. At most a few run at once:
/// they are file reads and process starts, and a hundred pods syncing
/// together would otherwise grow a hundred blocking threads (each holding
/// its own allocator pages) for no speed-up on a node's few cores.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    static LIMIT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);
    let _permit = LIMIT
        .acquire()
        .await
        .expect("the semaphore is never closed");
    unlimited_blocking(f).await
}

/// For calls that mostly wait (a stop's grace period): not counted against
/// the limit, so graceful stops of many pods run side by side.
async fn unlimited_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

impl PodManager {
    pub fn new(
        client: Client,
        runtime: Arc<NodeRuntime>,
        network: Option<Arc<rudder_network::PodNetwork>>,
        config: PodManagerConfig,
    ) -> PodManager {
        let api: Api<Pod> = Api::all(client.clone());
        let pods = Informer::with_config(
            api,
            watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name)),
        );
        pods.add_index(UID_INDEX, |p: &Pod| {
            vec![p.metadata.uid.clone().unwrap_or_default()]
        });
        let volumes = crate::volumes::VolumeManager::new(config.pods_dir.clone(), client.clone());
        PodManager {
            inner: Arc::new(Inner {
                recorder: EventRecorder::new(client.clone(), "kubelet"),
                client,
                runtime,
                network,
                volumes,
                config,
                pods,
                workers: Mutex::new(HashMap::new()),
                states: Mutex::new(HashMap::new()),
                probes: Arc::new(Mutex::new(HashMap::new())),
                static_pods: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The pods this node runs, as the kubelet's pod manager lists them
    /// (its `/pods` endpoint): those bound to it in the API, and its static
    /// pods, standing for their mirror pods. Empty until the pods are
    /// listed.
    pub fn pods(&self) -> Vec<Pod> {
        let mut pods: Vec<Pod> = self
            .inner
            .pods
            .list()
            .into_iter()
            .filter(|p| !static_pods::is_mirror(p))
            .map(|p| (*p).clone())
            .collect();
        pods.extend(
            self.inner
                .static_pods
                .lock()
                .unwrap()
                .values()
                .map(|p| (**p).clone()),
        );
        pods.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        pods
    }

    /// Runs until the process ends.
    pub async fn run(self) {
        let this = self.clone();
        self.inner.pods.on_change(move |change| {
            let pod = change.object();
            if let Some(hash) = static_pods::mirror_hash(pod) {
                // A mirror pod changed: its static pod may need a new one.
                let hash = hash.to_string();
                if this.inner.static_pods.lock().unwrap().contains_key(&hash) {
                    this.wake(&hash);
                }
            } else if let Some(uid) = pod.metadata.uid.clone() {
                this.wake(&uid);
            }
        });
        if let Some(dir) = self.inner.config.manifests_dir.clone() {
            tokio::spawn(self.clone().watch_manifests(dir));
        }
        self.inner.pods.start();
        self.inner.pods.wait_synced().await;
        tracing::info!(
            pods = self.inner.pods.len(),
            "node agent: pods bound to this node listed"
        );
        // Pods the runtime still runs (an agent restart) are re-adopted by
        // their workers; those whose pod is gone are cleaned up.
        let mut last: HashMap<String, String> = HashMap::new();
        let mut last_refresh = Instant::now();
        loop {
            let fingerprints = self.relist().await;
            for (uid, print) in &fingerprints {
                if last.get(uid) != Some(print) {
                    self.wake(uid);
                }
            }
            for pod in self.inner.pods.list() {
                if static_pods::is_mirror(&pod) {
                    continue;
                }
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if !self.inner.workers.lock().unwrap().contains_key(&uid) {
                    self.wake(&uid);
                }
            }
            last = fingerprints;
            if last_refresh.elapsed() >= VOLUME_REFRESH_PERIOD {
                last_refresh = Instant::now();
                for pod in self.inner.pods.list() {
                    if pod.metadata.deletion_timestamp.is_none() && !static_pods::is_mirror(&pod) {
                        if let Err(e) = self.inner.volumes.refresh(&pod).await {
                            tracing::debug!(pod = ?pod.metadata.name, error = %e, "refreshing volumes");
                        }
                    }
                }
            }
            tokio::time::sleep(RELIST_PERIOD).await;
        }
    }

    /// Per pod uid, a fingerprint of its sandboxes' and containers' states.
    async fn relist(&self) -> HashMap<String, String> {
        let runtime = self.inner.runtime.clone();
        blocking(move || {
            let mut prints: HashMap<String, String> = HashMap::new();
            if let Ok(sandboxes) =
                RuntimeService::list_pod_sandbox(&*runtime, &PodSandboxFilter::default())
            {
                for s in sandboxes {
                    if let Some(uid) = s.labels.get(LABEL_POD_UID) {
                        prints
                            .entry(uid.clone())
                            .or_default()
                            .push_str(&format!("{}:{:?};", s.id, s.state));
                    }
                }
            }
            if let Ok(containers) =
                RuntimeService::list_containers(&*runtime, &ContainerFilter::default())
            {
                for c in containers {
                    if let Some(uid) = c.labels.get(LABEL_POD_UID) {
                        prints
                            .entry(uid.clone())
                            .or_default()
                            .push_str(&format!("{}:{:?};", c.id, c.state));
                    }
                }
            }
            prints
        })
        .await
    }

    fn wake(&self, uid: &str) {
        let mut workers = self.inner.workers.lock().unwrap();
        if let Some(tx) = workers.get(uid) {
            if tx.send(()).is_ok() {
                return;
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _ = tx.send(());
        workers.insert(uid.to_string(), tx);
        let this = self.clone();
        let uid = uid.to_string();
        tokio::spawn(async move {
            let mut next: Option<Duration> = None;
            loop {
                let woken = match next {
                    Some(after) => tokio::time::timeout(after, rx.recv())
                        .await
                        .map(|m| m.is_some())
                        .unwrap_or(true),
                    None => rx.recv().await.is_some(),
                };
                if !woken {
                    break;
                }
                while rx.try_recv().is_ok() {}
                match this.sync(&uid).await {
                    Ok(Next::After(after)) => next = after,
                    Ok(Next::Done) => break,
                    Err(e) => {
                        tracing::warn!(pod_uid = %uid, error = %e, "syncing pod failed; retrying");
                        next = Some(Duration::from_secs(2));
                    }
                }
            }
            this.inner.workers.lock().unwrap().remove(&uid);
            this.inner.states.lock().unwrap().remove(&uid);
        });
    }

    /// The pod of `uid`: a static pod (with its mirror pod's status), or a
    /// pod from the API (mirror pods are not pods to run).
    fn pod(&self, uid: &str) -> Option<Arc<Pod>> {
        let static_pod = self.inner.static_pods.lock().unwrap().get(uid).cloned();
        if let Some(pod) = static_pod {
            let mut pod = (*pod).clone();
            pod.status = self.mirror_of(&pod).and_then(|m| m.status.clone());
            return Some(Arc::new(pod));
        }
        self.inner
            .pods
            .by_index(UID_INDEX, uid)
            .into_iter()
            .find(|p| !static_pods::is_mirror(p))
    }

    /// The API's mirror pod of a static pod, if there is a current one.
    fn mirror_of(&self, pod: &Pod) -> Option<Arc<Pod>> {
        let uid = pod.metadata.uid.as_deref()?;
        self.inner.pods.list().into_iter().find(|m| {
            m.metadata.name == pod.metadata.name
                && m.metadata.namespace == pod.metadata.namespace
                && static_pods::mirror_hash(m) == Some(uid)
        })
    }

    /// Follows the manifest directory: starts static pods that appear,
    /// restarts changed ones (a new uid), stops removed ones, and keeps one
    /// current mirror pod for each in the API.
    async fn watch_manifests(self, dir: PathBuf) {
        let mut reported: HashMap<PathBuf, String> = HashMap::new();
        loop {
            let node = self.inner.config.node_name.clone();
            let read_dir = dir.clone();
            let manifests =
                unlimited_blocking(move || static_pods::read_manifests(&read_dir, &node)).await;
            let mut current: HashMap<String, Arc<Pod>> = HashMap::new();
            for manifest in manifests {
                match manifest.pod {
                    Ok(pod) => {
                        reported.remove(&manifest.path);
                        current.insert(config::uid(&pod), Arc::new(pod));
                    }
                    Err(message) => {
                        // Said once per distinct problem, not every pass.
                        if reported.get(&manifest.path) != Some(&message) {
                            tracing::warn!(manifest = %manifest.path.display(), %message, "ignoring a static pod manifest");
                            reported.insert(manifest.path.clone(), message);
                        }
                    }
                }
            }
            let (added, removed) = {
                let mut known = self.inner.static_pods.lock().unwrap();
                let added: Vec<String> = current
                    .keys()
                    .filter(|uid| !known.contains_key(*uid))
                    .cloned()
                    .collect();
                let removed: Vec<String> = known
                    .keys()
                    .filter(|uid| !current.contains_key(*uid))
                    .cloned()
                    .collect();
                *known = current.clone();
                (added, removed)
            };
            for uid in added.iter().chain(&removed) {
                self.wake(uid);
            }
            if self.inner.pods.has_synced() {
                self.sync_mirror_pods(&current).await;
            }
            tokio::time::sleep(MANIFEST_CHECK_PERIOD).await;
        }
    }

    /// Creates missing mirror pods and deletes stale ones (of a changed or
    /// removed manifest, or deleted by a user: those come back).
    async fn sync_mirror_pods(&self, static_pods: &HashMap<String, Arc<Pod>>) {
        let node_name = self.inner.config.node_name.clone();
        for mirror in self.inner.pods.list() {
            let Some(hash) = static_pods::mirror_hash(&mirror) else {
                continue;
            };
            let current = static_pods.get(hash).is_some_and(|p| {
                p.metadata.name == mirror.metadata.name
                    && p.metadata.namespace == mirror.metadata.namespace
            });
            if current && mirror.metadata.deletion_timestamp.is_none() {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(
                self.inner.client.clone(),
                mirror.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: mirror.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api
                .delete(mirror.metadata.name.as_deref().unwrap_or_default(), &params)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(pod = ?mirror.metadata.name, error = %e, "deleting a stale mirror pod")
                }
            }
        }
        let mut node_uid = None;
        let api_pods = self.inner.pods.list();
        for (uid, pod) in static_pods {
            let exists = api_pods.iter().any(|p| {
                p.metadata.name == pod.metadata.name
                    && p.metadata.namespace == pod.metadata.namespace
                    && p.metadata.deletion_timestamp.is_none()
            });
            if exists {
                continue;
            }
            if node_uid.is_none() {
                let nodes: Api<k8s_openapi::api::core::v1::Node> =
                    Api::all(self.inner.client.clone());
                match nodes.get(&node_name).await {
                    Ok(node) => node_uid = node.metadata.uid,
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the node for mirror pods");
                        return;
                    }
                }
            }
            let mirror =
                static_pods::mirror_pod(pod, &node_name, node_uid.as_deref().unwrap_or_default());
            let api: Api<Pod> = Api::namespaced(
                self.inner.client.clone(),
                pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            match api.create(&PostParams::default(), &mirror).await {
                Ok(_) => {
                    // The new mirror has no status yet: report it afresh.
                    if let Some(state) = self.inner.states.lock().unwrap().get_mut(uid) {
                        state.last_status = None;
                    }
                    self.wake(uid);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(pod = ?pod.metadata.name, error = %e, "creating a mirror pod")
                }
            }
        }
    }

    /// The runtime's containers of a pod, with their statuses.
    async fn records(
        &self,
        uid: &str,
    ) -> anyhow::Result<(Vec<rudder_cri::cri::PodSandbox>, Vec<ContainerRecord>)> {
        let runtime = self.inner.runtime.clone();
        let uid = uid.to_string();
        blocking(move || {
            let mut selector = BTreeMap::new();
            selector.insert(LABEL_POD_UID.to_string(), uid);
            let sandboxes = RuntimeService::list_pod_sandbox(
                &*runtime,
                &PodSandboxFilter {
                    label_selector: selector.clone(),
                    ..Default::default()
                },
            )?;
            let containers = RuntimeService::list_containers(
                &*runtime,
                &ContainerFilter {
                    label_selector: selector,
                    ..Default::default()
                },
            )?;
            let mut records = Vec::new();
            for c in containers {
                if let Ok(status) = RuntimeService::container_status(&*runtime, &c.id) {
                    records.push(ContainerRecord::from_status(&status));
                }
            }
            Ok((sandboxes, records))
        })
        .await
    }

    async fn sync(&self, uid: &str) -> anyhow::Result<Next> {
        let begin = Instant::now();
        let (sandboxes, records) = self.records(uid).await?;
        tracing::trace!(pod_uid = %uid, ms = begin.elapsed().as_millis() as u64, "runtime state read");
        let Some(pod) = self.pod(uid) else {
            if sandboxes.is_empty() && records.is_empty() {
                return Ok(Next::Done);
            }
            tracing::info!(pod_uid = %uid, "pod is gone from the API; stopping what runs for it");
            self.kill_pod(uid, &sandboxes, &records, Duration::from_secs(2), None)
                .await;
            self.inner.volumes.teardown(uid).await.ok();
            return Ok(Next::Done);
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(&pod, &sandboxes, &records).await;
        }
        if let Some(eviction) = self.eviction_of(uid, &pod) {
            return self
                .sync_evicted(&pod, &sandboxes, &records, eviction)
                .await;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let restart_policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());

        // A pod that completed keeps its containers (for logs) but not its sandbox.
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let last_phase = self
            .inner
            .states
            .lock()
            .unwrap()
            .get(uid)
            .and_then(|s| s.last_status.as_ref().and_then(|st| st.phase.clone()));
        if matches!(phase.as_str(), "Succeeded" | "Failed")
            && last_phase.as_deref() == Some(phase.as_str())
        {
            for s in sandboxes
                .iter()
                .filter(|s| s.state == PodSandboxState::SandboxReady)
            {
                self.stop_sandbox(&s.id).await;
            }
            return Ok(Next::After(None));
        }

        // The sandbox.
        let mut ready = sandboxes
            .iter()
            .filter(|s| s.state == PodSandboxState::SandboxReady)
            .max_by_key(|s| s.created_at)
            .map(|s| s.id.clone());
        let log_dir = self.log_dir(&pod);
        let pod_dns = resolv::pod_dns(
            &pod,
            &self.inner.config.dns,
            &rudder_dns::resolv::host_resolv_conf(),
        );
        let sandbox_config = config::sandbox_config(
            &pod,
            &log_dir.to_string_lossy(),
            sandboxes.len() as u32,
            pod_dns.config,
        );
        if ready.is_none() {
            let finished = !records.is_empty()
                && records.iter().all(|r| r.exited())
                && spec.containers.iter().all(|c| {
                    records.iter().any(|r| {
                        r.name == c.name
                            && r.exited()
                            && (restart_policy == "Never"
                                || (restart_policy == "OnFailure" && r.exit_code == 0))
                    })
                });
            if finished {
                // Nothing will run again: no new sandbox.
                return self
                    .report(&pod, &records, None, false)
                    .await
                    .map(|()| Next::After(None));
            }
            for old in &sandboxes {
                self.stop_sandbox(&old.id).await;
                let runtime = self.inner.runtime.clone();
                let id = old.id.clone();
                let _ = blocking(move || RuntimeService::remove_pod_sandbox(&*runtime, &id)).await;
            }
            let begin = Instant::now();
            let mounted = self.inner.volumes.setup(&pod).await;
            tracing::debug!(pod = ?pod.metadata.name, ms = begin.elapsed().as_millis() as u64, "volumes set up");
            if let Err(e) = mounted {
                self.inner.recorder.record(
                    &*pod,
                    EventType::Warning,
                    "FailedMount",
                    &e.to_string(),
                );
                self.set_waiting_all(uid, &spec, "ContainerCreating", "");
                self.report(&pod, &records, None, false).await?;
                return Ok(Next::After(Some(Duration::from_secs(5))));
            }
            std::fs::create_dir_all(&log_dir).ok();
            for warning in &pod_dns.warnings {
                self.inner
                    .recorder
                    .record(&*pod, EventType::Warning, "DNSConfigForming", warning);
            }
            let runtime = self.inner.runtime.clone();
            let cfg = sandbox_config.clone();
            let begin = Instant::now();
            let id = blocking(move || RuntimeService::run_pod_sandbox(&*runtime, &cfg)).await;
            tracing::debug!(pod = ?pod.metadata.name, ms = begin.elapsed().as_millis() as u64, "sandbox started");
            let id = match id {
                Ok(id) => id,
                Err(e) => {
                    self.inner.recorder.record(
                        &*pod,
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        &format!("Failed to create pod sandbox: {e}"),
                    );
                    self.report(&pod, &records, None, false).await?;
                    return Ok(Next::After(Some(Duration::from_secs(5))));
                }
            };
            if spec.host_network != Some(true) {
                let begin = Instant::now();
                let network = self.setup_network(&id).await;
                tracing::debug!(pod = ?pod.metadata.name, ms = begin.elapsed().as_millis() as u64, "network set up");
                if let Err(e) = network {
                    self.inner.recorder.record(
                        &*pod,
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        &format!("Failed to set up the pod network: {e}"),
                    );
                    let runtime = self.inner.runtime.clone();
                    let sid = id.clone();
                    let _ =
                        blocking(move || RuntimeService::remove_pod_sandbox(&*runtime, &sid)).await;
                    return Ok(Next::After(Some(Duration::from_secs(5))));
                }
            }
            ready = Some(id);
        }
        let sandbox_id = ready.expect("set above");
        let pod_ip = if spec.host_network == Some(true) {
            Some(self.inner.config.host_ip.clone())
        } else {
            self.inner
                .network
                .as_ref()
                .and_then(|n| n.pod_ip(&sandbox_id))
                .map(|ip| ip.to_string())
        };
        let hosts_file = self
            .inner
            .config
            .pods_dir
            .join(config::uid(&pod))
            .join("etc-hosts");
        if spec.host_network != Some(true) {
            if let Some(parent) = hosts_file.parent() {
                std::fs::create_dir_all(parent).ok();
            }
            std::fs::write(&hosts_file, config::etc_hosts(&pod, pod_ip.as_deref())).ok();
        }

        let placement = Placement {
            sandbox_id: &sandbox_id,
            sandbox_config: &sandbox_config,
            pod_ip: pod_ip.as_deref(),
            hosts_file: &hosts_file,
        };
        let mut requeue: Option<Duration> = None;
        let mut merge = |d: Duration| requeue = Some(requeue.map_or(d, |r| r.min(d)));

        // Init containers, one at a time, each to completion.
        let mut init_done = true;
        for container in spec.init_containers.iter().flatten() {
            let latest = latest(&records, &container.name);
            match latest {
                Some(l) if l.exited() && l.exit_code == 0 => continue,
                Some(l) if l.running() || l.state == CriState::ContainerCreated => {
                    init_done = false;
                    break;
                }
                Some(l) if l.exited() => {
                    init_done = false;
                    if restart_policy == "Never" {
                        if let Some(state) = self.state(uid).get_mut(uid) {
                            state.init_failed = true;
                        }
                        break;
                    }
                    if let Some(wait) = self.in_backoff(&pod, container, l) {
                        merge(wait);
                        break;
                    }
                    let attempt = l.attempt + 1;
                    if let Some(d) = self
                        .start_container(&pod, container, attempt, &placement)
                        .await
                    {
                        merge(d);
                    }
                    break;
                }
                _ => {
                    init_done = false;
                    if let Some(d) = self.start_container(&pod, container, 0, &placement).await {
                        merge(d);
                    }
                    break;
                }
            }
        }

        if init_done {
            for container in &spec.containers {
                let latest = latest(&records, &container.name);
                match latest {
                    None => {
                        if let Some(d) = self.start_container(&pod, container, 0, &placement).await
                        {
                            merge(d);
                        }
                    }
                    Some(l) if l.running() => {
                        // A container adopted after an agent restart gets
                        // its probes again.
                        let probed = self.inner.probes.lock().unwrap().contains_key(&l.id);
                        if !probed {
                            let this = self.clone();
                            let uid = uid.to_string();
                            probes::start(
                                self.inner.runtime.clone(),
                                self.inner.probes.clone(),
                                l.id.clone(),
                                container.clone(),
                                pod_ip
                                    .clone()
                                    .unwrap_or_else(|| self.inner.config.host_ip.clone()),
                                Arc::new(move || this.wake(&uid)),
                            );
                        }
                        let unhealthy = self
                            .inner
                            .probes
                            .lock()
                            .unwrap()
                            .get(&l.id)
                            .and_then(|p| p.unhealthy.clone());
                        if let Some(why) = unhealthy {
                            self.inner.recorder.record(
                                &*pod,
                                EventType::Warning,
                                "Unhealthy",
                                &why,
                            );
                            self.inner.recorder.record(
                                &*pod,
                                EventType::Normal,
                                "Killing",
                                &format!(
                                    "Container {} failed liveness probe, will be restarted",
                                    container.name
                                ),
                            );
                            self.inner.probes.lock().unwrap().remove(&l.id);
                            let grace = grace_period(&pod);
                            self.stop_container(&pod, container, &l.id, grace).await;
                            merge(Duration::from_millis(10));
                        }
                    }
                    Some(l) if l.exited() => {
                        self.inner.probes.lock().unwrap().remove(&l.id);
                        let restart = match restart_policy.as_str() {
                            "Always" => true,
                            "OnFailure" => l.exit_code != 0,
                            _ => false,
                        };
                        if !restart {
                            continue;
                        }
                        if let Some(wait) = self.in_backoff(&pod, container, l) {
                            merge(wait);
                            continue;
                        }
                        self.prune(&records, &container.name).await;
                        if let Some(d) = self
                            .start_container(&pod, container, l.attempt + 1, &placement)
                            .await
                        {
                            merge(d);
                        }
                    }
                    Some(_) => {}
                }
            }
        }

        let begin = Instant::now();
        let (_, records) = self.records(uid).await?;
        self.report(&pod, &records, pod_ip, true).await?;
        tracing::debug!(pod = ?pod.metadata.name, ms = begin.elapsed().as_millis() as u64, "status reported");
        Ok(Next::After(requeue))
    }

    fn state(&self, uid: &str) -> std::sync::MutexGuard<'_, HashMap<String, PodState>> {
        let mut states = self.inner.states.lock().unwrap();
        states.entry(uid.to_string()).or_default();
        states
    }

    fn set_waiting_all(
        &self,
        uid: &str,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        reason: &str,
        message: &str,
    ) {
        let mut states = self.state(uid);
        let state = states.get_mut(uid).expect("inserted");
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            state.waiting.insert(
                c.name.clone(),
                Waiting {
                    reason: reason.into(),
                    message: message.into(),
                },
            );
        }
    }

    fn set_waiting(&self, pod: &Pod, container: &str, reason: &str, message: &str) {
        let uid = config::uid(pod);
        let mut states = self.state(&uid);
        let state = states.get_mut(&uid).expect("inserted");
        state.waiting.insert(
            container.into(),
            Waiting {
                reason: reason.into(),
                message: message.into(),
            },
        );
    }

    fn clear_waiting(&self, pod: &Pod, container: &str) {
        let uid = config::uid(pod);
        if let Some(state) = self.state(&uid).get_mut(&uid) {
            state.waiting.remove(container);
        }
    }

    /// Whether an exited container must wait before its restart (the
    /// kubelet's CrashLoopBackOff): Some(remaining) if so.
    fn in_backoff(
        &self,
        pod: &Pod,
        container: &Container,
        last: &ContainerRecord,
    ) -> Option<Duration> {
        let uid = config::uid(pod);
        let mut states = self.state(&uid);
        let state = states.get_mut(&uid).expect("inserted");
        let backoff = state
            .restart_backoff
            .entry(container.name.clone())
            .or_default();
        let ran = Duration::from_nanos((last.finished_at - last.started_at).max(0) as u64);
        if ran >= BACKOFF_RESET_AFTER {
            backoff.delay = None;
        }
        let finished =
            SystemTime::UNIX_EPOCH + Duration::from_nanos(last.finished_at.max(0) as u64);
        let since = SystemTime::now()
            .duration_since(finished)
            .unwrap_or_default();
        match backoff.delay {
            Some(delay) if since < delay => {
                let message = format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    delay.as_secs(),
                    container.name,
                    pod.metadata.name.clone().unwrap_or_default(),
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    uid
                );
                state.waiting.insert(
                    container.name.clone(),
                    Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: message.clone(),
                    },
                );
                drop(states);
                self.inner.recorder.record(
                    pod,
                    EventType::Warning,
                    "BackOff",
                    &format!(
                        "Back-off restarting failed container {} in pod {}",
                        container.name,
                        pod.metadata.name.clone().unwrap_or_default()
                    ),
                );
                Some(delay - since)
            }
            current => {
                backoff.delay = Some(match current {
                    None => BACKOFF_INITIAL,
                    Some(d) => (d * 2).min(BACKOFF_MAX),
                });
                None
            }
        }
    }

    /// Keeps the newest two containers of a name (the current one and the
    /// one `kubectl logs --previous` shows); removes older ones.
    async fn prune(&self, records: &[ContainerRecord], name: &str) {
        let mut of: Vec<&ContainerRecord> = records
            .iter()
            .filter(|r| r.name == name && r.exited())
            .collect();
        of.sort_by_key(|r| std::cmp::Reverse((r.attempt, r.created_at)));
        for old in of.into_iter().skip(1) {
            let runtime = self.inner.runtime.clone();
            let id = old.id.clone();
            let _ = blocking(move || RuntimeService::remove_container(&*runtime, &id)).await;
        }
    }

    fn log_dir(&self, pod: &Pod) -> PathBuf {
        self.inner.config.logs_dir.join(format!(
            "{}_{}_{}",
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
            config::uid(pod)
        ))
    }

    async fn setup_network(&self, sandbox_id: &str) -> anyhow::Result<()> {
        let Some(network) = self.inner.network.clone() else {
            return Ok(());
        };
        let runtime = self.inner.runtime.clone();
        let id = sandbox_id.to_string();
        blocking(move || -> anyhow::Result<()> {
            let state = runtime.containers().state(&id)?;
            let pid = rudder_container::runtime::init_pid(&state)
                .ok_or_else(|| anyhow::anyhow!("the pod sandbox's pause process is not running"))?;
            network.setup_pod(&id, std::path::Path::new(&format!("/proc/{pid}/ns/net")))?;
            Ok(())
        })
        .await
    }

    async fn stop_sandbox(&self, sandbox_id: &str) {
        let runtime = self.inner.runtime.clone();
        let network = self.inner.network.clone();
        let id = sandbox_id.to_string();
        blocking(move || {
            if let Some(network) = network {
                if let Err(e) = network.teardown_pod(&id) {
                    tracing::warn!(sandbox = %id, error = %e, "tearing down the pod network");
                }
            }
            if let Err(e) = RuntimeService::stop_pod_sandbox(&*runtime, &id) {
                tracing::warn!(sandbox = %id, error = %e, "stopping the pod sandbox");
            }
        })
        .await
    }

    /// Pulls the image per the container's imagePullPolicy; on failure the
    /// container waits with ErrImagePull, then ImagePullBackOff.
    async fn ensure_image(&self, pod: &Pod, container: &Container) -> Result<(), Duration> {
        let image = container.image.clone().unwrap_or_default();
        let policy = container.image_pull_policy.clone().unwrap_or_else(|| {
            let tagged = image
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':') && !last.ends_with(":latest"));
            if tagged || image.contains('@') {
                "IfNotPresent".into()
            } else {
                "Always".into()
            }
        });
        let spec = ImageSpec::new(image.clone());
        let present = ImageService::image_status(&*self.inner.runtime, &spec)
            .ok()
            .flatten()
            .is_some();
        if policy == "Never" {
            if present {
                return Ok(());
            }
            self.set_waiting(
                pod,
                &container.name,
                "ErrImageNeverPull",
                &format!("Container image \"{image}\" is not present with pull policy of Never"),
            );
            return Err(Duration::from_secs(10));
        }
        if present && policy == "IfNotPresent" {
            return Ok(());
        }
        let uid = config::uid(pod);
        let backoff = self
            .state(&uid)
            .get(&uid)
            .and_then(|s| s.pull_backoff.get(&container.name).cloned());
        if let Some((delay, until)) = backoff {
            if Instant::now() < until {
                self.set_waiting(
                    pod,
                    &container.name,
                    "ImagePullBackOff",
                    &format!("Back-off pulling image \"{image}\""),
                );
                return Err(until - Instant::now());
            }
            let _ = delay;
        }
        self.inner.recorder.record(
            pod,
            EventType::Normal,
            "Pulling",
            &format!("Pulling image \"{image}\""),
        );
        let started = Instant::now();
        match ImageService::pull_image(&*self.inner.runtime, &spec, None).await {
            Ok(_) => {
                self.inner.recorder.record(
                    pod,
                    EventType::Normal,
                    "Pulled",
                    &format!(
                        "Successfully pulled image \"{image}\" in {:.3}s",
                        started.elapsed().as_secs_f64()
                    ),
                );
                if let Some(state) = self.state(&uid).get_mut(&uid) {
                    state.pull_backoff.remove(&container.name);
                }
                Ok(())
            }
            Err(e) => {
                let message = format!("Failed to pull image \"{image}\": {e}");
                self.inner
                    .recorder
                    .record(pod, EventType::Warning, "Failed", &message);
                self.set_waiting(pod, &container.name, "ErrImagePull", &message);
                let mut states = self.state(&uid);
                let state = states.get_mut(&uid).expect("inserted");
                let delay = state
                    .pull_backoff
                    .get(&container.name)
                    .map(|(d, _)| (*d * 2).min(BACKOFF_MAX))
                    .unwrap_or(BACKOFF_INITIAL);
                state
                    .pull_backoff
                    .insert(container.name.clone(), (delay, Instant::now() + delay));
                Err(delay)
            }
        }
    }

    /// Creates and starts one container; Some(duration) asks to look again.
    async fn start_container(
        &self,
        pod: &Arc<Pod>,
        container: &Container,
        attempt: u32,
        placement: &Placement<'_>,
    ) -> Option<Duration> {
        let Placement {
            sandbox_id,
            sandbox_config,
            pod_ip,
            hosts_file,
        } = *placement;
        if let Err(retry) = self.ensure_image(pod, container).await {
            return Some(retry);
        }
        let ctx = crate::env::EnvContext {
            pod,
            pod_ip: pod_ip.map(String::from),
            host_ip: Some(self.inner.config.host_ip.clone()),
            node_allocatable_cpu_millis: self.inner.config.node_cpu_millis,
            node_allocatable_memory: self.inner.config.node_memory,
        };
        let env = match crate::env::container_env(&self.inner.client, &ctx, container).await {
            Ok(env) => env,
            Err(e) => {
                self.set_waiting(
                    pod,
                    &container.name,
                    "CreateContainerConfigError",
                    &e.to_string(),
                );
                self.inner.recorder.record(
                    &**pod,
                    EventType::Warning,
                    "Failed",
                    &format!("Error: {e}"),
                );
                return Some(Duration::from_secs(10));
            }
        };
        let volumes = match self.inner.volumes.setup(pod).await {
            Ok(v) => v,
            Err(e) => {
                self.inner.recorder.record(
                    &**pod,
                    EventType::Warning,
                    "FailedMount",
                    &e.to_string(),
                );
                return Some(Duration::from_secs(5));
            }
        };
        let mut mounts: Vec<CriMount> = match self
            .inner
            .volumes
            .container_mounts_with_env(pod, container, &volumes, &env)
        {
            Ok(mounts) => mounts
                .into_iter()
                .map(|m| CriMount {
                    container_path: m.destination().to_string_lossy().into_owned(),
                    host_path: m
                        .source()
                        .as_ref()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    readonly: m.options().iter().flatten().any(|o| o == "ro"),
                })
                .collect(),
            Err(e) => {
                self.set_waiting(
                    pod,
                    &container.name,
                    "CreateContainerConfigError",
                    &e.to_string(),
                );
                return Some(Duration::from_secs(10));
            }
        };
        if pod.spec.as_ref().and_then(|s| s.host_network) != Some(true) {
            mounts.push(CriMount {
                container_path: "/etc/hosts".into(),
                host_path: hosts_file.to_string_lossy().into_owned(),
                readonly: false,
            });
        }
        let cfg = config::container_config(
            pod,
            container,
            attempt,
            env,
            mounts,
            self.inner.config.node_memory,
        );
        let runtime = self.inner.runtime.clone();
        let sid = sandbox_id.to_string();
        let scfg = sandbox_config.clone();
        let begin = Instant::now();
        let created = blocking(move || {
            let id = RuntimeService::create_container(&*runtime, &sid, &cfg, &scfg)?;
            if cfg.stdin && cfg.stdin_once {
                // Input that ends after the first attach must not end before
                // it: the agent writes nothing but holds the FIFO open until
                // that attach is over.
                if let Ok(file) = RuntimeService::open_stdin(&*runtime, &id) {
                    crate::server::attach::hold_stdin(&id, file);
                }
            }
            let started = RuntimeService::start_container(&*runtime, &id);
            Ok::<_, rudder_cri::CriError>((id, started))
        })
        .await;
        tracing::debug!(pod = ?pod.metadata.name, container = %container.name, ms = begin.elapsed().as_millis() as u64, "container created and started");
        self.clear_waiting(pod, &container.name);
        let id = match created {
            Ok((id, Ok(()))) => id,
            Ok((id, Err(e))) => {
                self.inner.recorder.record(
                    &**pod,
                    EventType::Warning,
                    "Failed",
                    &format!("Error: {e}"),
                );
                tracing::info!(container = %id, error = %e, "container failed to start");
                return Some(Duration::from_millis(100));
            }
            Err(e) => {
                self.set_waiting(pod, &container.name, "CreateContainerError", &e.to_string());
                self.inner.recorder.record(
                    &**pod,
                    EventType::Warning,
                    "Failed",
                    &format!("Error: {e}"),
                );
                return Some(Duration::from_secs(10));
            }
        };
        self.inner.recorder.record(
            &**pod,
            EventType::Normal,
            "Created",
            &format!("Created container {}", container.name),
        );
        self.inner.recorder.record(
            &**pod,
            EventType::Normal,
            "Started",
            &format!("Started container {}", container.name),
        );

        if let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        {
            if let Some(exec) = &hook.exec {
                let runtime = self.inner.runtime.clone();
                let cid = id.clone();
                let command = exec.command.clone().unwrap_or_default();
                let result = unlimited_blocking(move || {
                    RuntimeService::exec_sync(&*runtime, &cid, &command, Duration::from_secs(30))
                })
                .await;
                let failed = match result {
                    Ok(r) if r.exit_code == 0 => None,
                    Ok(r) => Some(format!(
                        "command exited with {}: {}",
                        r.exit_code,
                        String::from_utf8_lossy(&r.stderr)
                    )),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = failed {
                    self.inner.recorder.record(
                        &**pod,
                        EventType::Warning,
                        "FailedPostStartHook",
                        &why,
                    );
                    self.stop_container(pod, container, &id, Duration::from_secs(2))
                        .await;
                    return Some(Duration::from_millis(100));
                }
            }
        }
        let this = self.clone();
        let uid = config::uid(pod);
        probes::start(
            self.inner.runtime.clone(),
            self.inner.probes.clone(),
            id,
            container.clone(),
            pod_ip.unwrap_or(&self.inner.config.host_ip).to_string(),
            Arc::new(move || this.wake(&uid)),
        );
        None
    }

    /// Stops one container: its preStop hook, then its stop signal, then
    /// SIGKILL once `grace` is over.
    async fn stop_container(&self, pod: &Pod, container: &Container, id: &str, grace: Duration) {
        let started = Instant::now();
        if let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
        {
            if let Some(exec) = &hook.exec {
                let runtime = self.inner.runtime.clone();
                let cid = id.to_string();
                let command = exec.command.clone().unwrap_or_default();
                let result = unlimited_blocking(move || {
                    RuntimeService::exec_sync(&*runtime, &cid, &command, grace)
                })
                .await;
                if let Err(e) = result {
                    self.inner.recorder.record(
                        pod,
                        EventType::Warning,
                        "FailedPreStopHook",
                        &e.to_string(),
                    );
                }
            } else if let Some(sleep) = &hook.sleep {
                tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(grace))
                    .await;
            }
        }
        let remaining = grace.saturating_sub(started.elapsed());
        let runtime = self.inner.runtime.clone();
        let cid = id.to_string();
        let _ =
            unlimited_blocking(move || RuntimeService::stop_container(&*runtime, &cid, remaining))
                .await;
        self.inner.probes.lock().unwrap().remove(id);
    }

    /// Stops every container of a pod (in parallel) and its sandbox.
    async fn kill_pod(
        &self,
        uid: &str,
        sandboxes: &[rudder_cri::cri::PodSandbox],
        records: &[ContainerRecord],
        grace: Duration,
        pod: Option<&Pod>,
    ) {
        let mut stops = Vec::new();
        for record in records.iter().filter(|r| r.running()) {
            let this = self.clone();
            let id = record.id.clone();
            let container = pod.and_then(|p| p.spec.as_ref()).and_then(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .find(|c| c.name == record.name)
                    .cloned()
            });
            let pod = pod.cloned();
            stops.push(tokio::spawn(async move {
                match (pod, container) {
                    (Some(pod), Some(container)) => {
                        this.stop_container(&pod, &container, &id, grace).await
                    }
                    _ => {
                        let runtime = this.inner.runtime.clone();
                        let _ = unlimited_blocking(move || {
                            RuntimeService::stop_container(&*runtime, &id, grace)
                        })
                        .await;
                    }
                }
            }));
        }
        for stop in stops {
            let _ = stop.await;
        }
        for sandbox in sandboxes {
            self.stop_sandbox(&sandbox.id).await;
            let runtime = self.inner.runtime.clone();
            let id = sandbox.id.clone();
            let _ = blocking(move || RuntimeService::remove_pod_sandbox(&*runtime, &id)).await;
        }
        // Containers whose sandbox record is gone.
        for record in records {
            let runtime = self.inner.runtime.clone();
            let id = record.id.clone();
            let _ = blocking(move || RuntimeService::remove_container(&*runtime, &id)).await;
        }
        self.inner.states.lock().unwrap().remove(uid);
    }

    /// A graceful deletion: stop everything within the grace period, clean
    /// up, then delete the pod object for good.
    async fn terminate(
        &self,
        pod: &Arc<Pod>,
        sandboxes: &[rudder_cri::cri::PodSandbox],
        records: &[ContainerRecord],
    ) -> anyhow::Result<Next> {
        let uid = config::uid(pod);
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or_else(|| grace_period(pod));
        if records.iter().any(|r| r.running()) {
            for record in records.iter().filter(|r| r.running()) {
                self.inner.recorder.record(
                    &**pod,
                    EventType::Normal,
                    "Killing",
                    &format!("Stopping container {}", record.name),
                );
            }
        }
        self.kill_pod(&uid, sandboxes, records, grace, Some(pod))
            .await;
        self.inner.volumes.teardown(&uid).await.ok();
        let _ = std::fs::remove_dir_all(self.inner.config.pods_dir.join(&uid));
        let _ = std::fs::remove_dir_all(self.log_dir(pod));
        let api: Api<Pod> = Api::namespaced(
            self.inner.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api
            .delete(pod.metadata.name.as_deref().unwrap_or_default(), &params)
            .await
        {
            Ok(_) => Ok(Next::Done),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(Next::Done),
            Err(e) => Err(e.into()),
        }
    }

    /// Computes the pod's status and writes it when it changed.
    async fn report(
        &self,
        pod: &Pod,
        records: &[ContainerRecord],
        pod_ip: Option<String>,
        sandbox_ready: bool,
    ) -> anyhow::Result<()> {
        let uid = config::uid(pod);
        let (waiting, init_failed) = {
            let states = self.state(&uid);
            let s = states.get(&uid).expect("inserted");
            (s.waiting.clone(), s.init_failed)
        };
        let probes = self.inner.probes.lock().unwrap().clone();
        let mut ready = BTreeMap::new();
        let mut started = BTreeMap::new();
        for r in records.iter().filter(|r| r.running()) {
            let p = probes.get(&r.id);
            ready.insert(r.id.clone(), p.is_some_and(|p| p.ready));
            started.insert(r.id.clone(), p.is_none_or(|p| p.started));
        }
        let facts = PodFacts {
            sandbox_ready,
            pod_ip: pod_ip.or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone())),
            host_ip: self.inner.config.host_ip.clone(),
            waiting,
            ready,
            started,
            init_failed,
        };
        let new = status::pod_status(pod, records, &facts);
        let old = self
            .state(&uid)
            .get(&uid)
            .and_then(|s| s.last_status.clone())
            .or_else(|| pod.status.clone())
            .unwrap_or_default();
        if !status::differs(&old, &new) {
            return Ok(());
        }
        self.write_status(pod, &new).await
    }

    /// Patches the pod's status to `new` and remembers it as the last
    /// written; a pod already gone is not an error.
    async fn write_status(&self, pod: &Pod, new: &PodStatus) -> anyhow::Result<()> {
        let uid = config::uid(pod);
        let api: Api<Pod> = Api::namespaced(
            self.inner.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let patch = serde_json::json!({ "status": new });
        match api
            .patch_status(
                pod.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                if let Some(s) = self.state(&uid).get_mut(&uid) {
                    s.last_status = Some(new.clone());
                }
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn latest<'a>(records: &'a [ContainerRecord], name: &str) -> Option<&'a ContainerRecord> {
    records
        .iter()
        .filter(|r| r.name == name)
        .max_by_key(|r| (r.attempt, r.created_at))
}

fn grace_period(pod: &Pod) -> Duration {
    Duration::from_secs(
        pod.spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64,
    )
}
