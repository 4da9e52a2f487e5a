//! The PersistentVolume controller (`persistentvolume-binder`), after
//! kube-controller-manager's: binds Pending claims to Available volumes,
//! keeps the phases of both sides true (volumes Available / Bound /
//! Released / Failed, claims Pending / Bound / Lost), hands claims that
//! no volume fits to their class's provisioner, and applies a released
//! volume's reclaim policy.
//!
//! Binding writes the volume first (`spec.claimRef`), then the claim
//! (`spec.volumeName`, `pv.kubernetes.io/bind-completed`); if a write
//! fails halfway, the next sync finishes it from whichever side is done.
//! Every write carries the cached `resourceVersion`, so two syncs that
//! race for one volume cannot both win.
//!
//! Claims of `WaitForFirstConsumer` classes are left to the scheduler: it
//! pre-binds a volume (sets its `claimRef`) or sets the claim's
//! `volume.kubernetes.io/selected-node` annotation, and only then does
//! this controller bind or ask for provisioning.
//!
//! Not supported: the `Recycle` reclaim policy (deprecated upstream; such
//! volumes go Failed, as a cluster without a recycler plugin does), in-tree
//! provisioners and deleters (Rudder has none: a released `Delete` volume
//! is deleted by its external provisioner, a static one goes Failed with
//! Kubernetes' message), volume expansion and `volumeAttributesClassName`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use rudder_runtime::events::EventType;
use rudder_runtime::{Change, Informer, WorkQueue};

use super::*;
use crate::Context;

/// How often an unbound claim is looked at again even when nothing
/// changed (kube-controller-manager's `--pvclaimbinder-sync-period`).
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);

/// Pods by the claims they use (`namespace/claim`).
const PODS_BY_CLAIM: &str = "storage-claims";
/// Volumes by the claim they point to (`namespace/claim`).
const VOLUMES_BY_CLAIM: &str = "storage-claim-ref";

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    PersistentVolumeController::new(ctx).run().boxed()
}

/// A unit of work: a claim (`namespace/name`) or a volume (`name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    Claim(String),
    Volume(String),
}

impl std::fmt::Display for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::Claim(k) => write!(f, "persistentvolumeclaim {k}"),
            Work::Volume(k) => write!(f, "persistentvolume {k}"),
        }
    }
}

/// The UID, reason and message of the last event about an object.
type Reported = (String, String, String);

#[derive(Clone)]
pub struct PersistentVolumeController {
    ctx: Context,
    queue: WorkQueue<Work>,
    claims: Informer<PersistentVolumeClaim>,
    volumes: Informer<PersistentVolume>,
    classes: Informer<StorageClass>,
    pods: Informer<Pod>,
    /// The last event reported per object (`Kind/key` to UID, reason,
    /// message), so a claim that waits is told why once, not on every
    /// sync.
    reported: Arc<Mutex<HashMap<String, Reported>>>,
    sync_period: Duration,
}

/// The claims a pod's volumes use, as `namespace/name`.
pub(crate) fn pod_claim_keys(pod: &Pod) -> Vec<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(claim) = &v.persistent_volume_claim {
                Some(format!("{ns}/{}", claim.claim_name))
            } else {
                v.ephemeral
                    .as_ref()
                    .map(|_| format!("{ns}/{pod_name}-{}", v.name))
            }
        })
        .collect()
}

impl PersistentVolumeController {
    pub fn new(ctx: &Context) -> Self {
        Self::with_sync_period(ctx, SYNC_PERIOD)
    }

    pub fn with_sync_period(ctx: &Context, sync_period: Duration) -> Self {
        let queue = WorkQueue::new();
        let claims = ctx.informers.get::<PersistentVolumeClaim>();
        let volumes = ctx.informers.get::<PersistentVolume>();
        let classes = ctx.informers.get::<StorageClass>();
        let pods = ctx.informers.get::<Pod>();
        pods.add_index(PODS_BY_CLAIM, pod_claim_keys);
        volumes.add_index(VOLUMES_BY_CLAIM, |pv| {
            claim_ref_key(pv).into_iter().collect()
        });

        let q = queue.clone();
        let by_claim = volumes.clone();
        claims.on_change(move |change| {
            let pvc = change.object();
            q.add(Work::Claim(claim_key(pvc)));
            if let Change::Deleted(pvc) = change {
                // Its volume is released now.
                if let Some(volume) = claim_volume_name(pvc) {
                    q.add(Work::Volume(volume.to_owned()));
                }
                for pv in by_claim.by_index(VOLUMES_BY_CLAIM, &claim_key(pvc)) {
                    q.add(Work::Volume(pv.name_any()));
                }
            }
        });
        let q = queue.clone();
        let waiting = claims.clone();
        volumes.on_change(move |change| {
            let pv = change.object();
            q.add(Work::Volume(pv.name_any()));
            if let Some(key) = claim_ref_key(pv) {
                q.add(Work::Claim(key));
            }
            // A volume that becomes free may fit a waiting claim.
            let free = !matches!(change, Change::Deleted(_))
                && claim_ref(pv).is_none()
                && volume_phase(pv) == "Available";
            if free {
                for pvc in waiting.list() {
                    if claim_volume_name(&pvc).is_none() {
                        q.add(Work::Claim(claim_key(&pvc)));
                    }
                }
            }
        });
        let q = queue.clone();
        let waiting = claims.clone();
        classes.on_change(move |change| {
            if matches!(change, Change::Deleted(_)) {
                return;
            }
            // A new (default) class may be what a claim waits for.
            for pvc in waiting.list() {
                if claim_volume_name(&pvc).is_none() {
                    q.add(Work::Claim(claim_key(&pvc)));
                }
            }
        });
        PersistentVolumeController {
            ctx: ctx.clone(),
            queue,
            claims,
            volumes,
            classes,
            pods,
            reported: Default::default(),
            sync_period,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.claims.wait_synced().await;
        self.volumes.wait_synced().await;
        self.classes.wait_synced().await;
        self.pods.wait_synced().await;
        let queue = self.queue.clone();
        queue
            .run_workers("persistentvolume-binder", 2, move |work: Work| {
                let this = self.clone();
                async move {
                    match &work {
                        Work::Claim(key) => this.sync_claim(key).await,
                        Work::Volume(name) => this.sync_volume(name).await,
                    }
                }
            })
            .await;
        Ok(())
    }

    /// Records an event unless the same one was the last for the object.
    fn report<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let key = format!("{}/{}", K::kind(&()), rudder_runtime::informer::key_of(obj));
        let entry = (
            obj.meta().uid.clone().unwrap_or_default(),
            reason.to_owned(),
            message.to_owned(),
        );
        {
            let mut reported = self.reported.lock().unwrap();
            if reported.get(&key) == Some(&entry) {
                return;
            }
            reported.insert(key, entry);
        }
        self.ctx.recorder.record(obj, kind, reason, message);
    }

    fn claims_api(&self, pvc: &PersistentVolumeClaim) -> Api<PersistentVolumeClaim> {
        Api::namespaced(
            self.ctx.client.clone(),
            pvc.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    fn volumes_api(&self) -> Api<PersistentVolume> {
        Api::all(self.ctx.client.clone())
    }

    // ---- claims ----

    async fn sync_claim(&self, key: &str) -> anyhow::Result<Option<Duration>> {
        let Some(pvc) = self.claims.get(key) else {
            self.reported
                .lock()
                .unwrap()
                .remove(&format!("PersistentVolumeClaim/{key}"));
            return Ok(None);
        };
        if has_annotation(&pvc.metadata, ANN_BIND_COMPLETED) {
            self.sync_bound_claim(&pvc).await
        } else {
            self.sync_unbound_claim(&pvc).await
        }
    }

    async fn sync_unbound_claim(
        &self,
        pvc: &PersistentVolumeClaim,
    ) -> anyhow::Result<Option<Duration>> {
        let Some(volume_name) = claim_volume_name(pvc) else {
            let delay = self.is_delay_binding(pvc);
            if let Some(pv) = self.find_best_match(pvc, delay) {
                self.bind(&pv, pvc).await?;
                return Ok(None);
            }
            if self.assign_default_class(pvc).await? {
                return Ok(None);
            }
            let class = claim_class(pvc);
            if delay && !has_annotation(&pvc.metadata, ANN_SELECTED_NODE) {
                self.report_waiting_for_consumer(pvc);
            } else if !class.is_empty() {
                // The provisioner's volume arrives as a volume change,
                // which brings the claim back here.
                self.provision(pvc).await?;
                return Ok(Some(self.sync_period));
            } else {
                self.report(
                    pvc,
                    EventType::Normal,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                );
            }
            self.update_claim_status(pvc, "Pending", None).await?;
            return Ok(Some(self.sync_period));
        };
        // The user asked for a particular volume.
        let Some(pv) = self.volumes.get(volume_name) else {
            self.update_claim_status(pvc, "Pending", None).await?;
            return Ok(Some(self.sync_period));
        };
        if claim_ref(&pv).is_none() {
            if let Err(mismatch) = volume_satisfies_claim(&pv, pvc) {
                self.report(
                    pvc,
                    EventType::Warning,
                    "VolumeMismatch",
                    &format!("Cannot bind to requested volume {volume_name:?}: {mismatch}"),
                );
                self.update_claim_status(pvc, "Pending", None).await?;
                return Ok(Some(self.sync_period));
            }
            self.bind(&pv, pvc).await?;
            return Ok(None);
        }
        if is_volume_bound_to_claim(&pv, pvc) {
            self.bind(&pv, pvc).await?;
            return Ok(None);
        }
        let message = format!("volume {volume_name:?} already bound to a different claim.");
        self.report(pvc, EventType::Warning, "FailedBinding", &message);
        if has_annotation(&pvc.metadata, ANN_BOUND_BY_CONTROLLER) {
            anyhow::bail!(
                "invalid binding of claim {:?} to volume {volume_name:?}: volume already claimed by {:?}",
                claim_key(pvc),
                claim_ref_key(&pv).unwrap_or_default()
            );
        }
        self.update_claim_status(pvc, "Pending", None).await?;
        Ok(Some(self.sync_period))
    }

    async fn sync_bound_claim(
        &self,
        pvc: &PersistentVolumeClaim,
    ) -> anyhow::Result<Option<Duration>> {
        let Some(volume_name) = claim_volume_name(pvc) else {
            self.claim_lost(
                pvc,
                "ClaimLost",
                "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
            )
            .await?;
            return Ok(None);
        };
        let Some(pv) = self.volumes.get(volume_name) else {
            self.claim_lost(
                pvc,
                "ClaimLost",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
            )
            .await?;
            return Ok(None);
        };
        match claim_ref(&pv) {
            // Unbound on the volume side (or our cache lags): bind again.
            None => self.bind(&pv, pvc).await?,
            Some(r) if r.uid == pvc.metadata.uid => self.bind(&pv, pvc).await?,
            Some(_) => {
                self.claim_lost(
                    pvc,
                    "ClaimMisbound",
                    "Two claims are bound to the same volume, this one is bound incorrectly",
                )
                .await?
            }
        }
        Ok(None)
    }

    async fn claim_lost(
        &self,
        pvc: &PersistentVolumeClaim,
        reason: &str,
        message: &str,
    ) -> kube::Result<()> {
        if claim_phase(pvc) == "Lost" {
            return Ok(());
        }
        self.update_claim_status(pvc, "Lost", None).await?;
        self.ctx
            .recorder
            .record(pvc, EventType::Warning, reason, message);
        Ok(())
    }

    /// Whether the claim's class waits for the first consumer (a missing
    /// class does not).
    fn is_delay_binding(&self, pvc: &PersistentVolumeClaim) -> bool {
        let class = claim_class(pvc);
        !class.is_empty()
            && self
                .classes
                .get(class)
                .is_some_and(|c| waits_for_first_consumer(&c))
    }

    /// The volume to bind the claim to: one pre-bound to it, else (unless
    /// the scheduler decides, for delayed binding) the smallest Available
    /// volume of its class that fits, preferring volumes offering the
    /// fewest access modes.
    fn find_best_match(
        &self,
        pvc: &PersistentVolumeClaim,
        delay: bool,
    ) -> Option<Arc<PersistentVolume>> {
        find_best_match(&self.volumes.list(), pvc, delay)
    }

    async fn assign_default_class(&self, pvc: &PersistentVolumeClaim) -> kube::Result<bool> {
        if claim_has_class(pvc) {
            return Ok(false);
        }
        let classes = self.classes.list();
        let Some(class) = default_class(classes.iter().map(|c| &**c)) else {
            return Ok(false);
        };
        let mut updated = pvc.clone();
        updated
            .spec
            .get_or_insert_with(Default::default)
            .storage_class_name = class.metadata.name.clone();
        tracing::info!(claim = %claim_key(pvc), class = %class.name_any(), "assigning the default StorageClass");
        let saved = self
            .claims_api(pvc)
            .replace(&pvc.name_any(), &PostParams::default(), &updated)
            .await?;
        self.claims.apply(Arc::new(saved));
        Ok(true)
    }

    /// Asks the class's provisioner for a volume: the annotations external
    /// provisioners watch for, and an event saying who is expected.
    async fn provision(&self, pvc: &PersistentVolumeClaim) -> kube::Result<()> {
        let class_name = claim_class(pvc);
        let Some(class) = self.classes.get(class_name) else {
            self.report(
                pvc,
                EventType::Warning,
                "ProvisioningFailed",
                &format!("storageclass.storage.k8s.io {class_name:?} not found"),
            );
            return Ok(());
        };
        let provisioner = class.provisioner.as_str();
        let mut pvc = pvc.clone();
        let set = |key: &str| annotation(&pvc.metadata, key) == Some(provisioner);
        if !set(ANN_STORAGE_PROVISIONER) || !set(ANN_BETA_STORAGE_PROVISIONER) {
            let mut updated = pvc.clone();
            set_annotation(&mut updated.metadata, ANN_STORAGE_PROVISIONER, provisioner);
            set_annotation(
                &mut updated.metadata,
                ANN_BETA_STORAGE_PROVISIONER,
                provisioner,
            );
            match self
                .claims_api(&pvc)
                .replace(&pvc.name_any(), &PostParams::default(), &updated)
                .await
            {
                Ok(saved) => {
                    self.claims.apply(Arc::new(saved.clone()));
                    pvc = saved;
                }
                Err(err) => {
                    self.report(
                        &pvc,
                        EventType::Warning,
                        "ProvisioningFailed",
                        &format!("Error saving claim: {err}"),
                    );
                    return Err(err);
                }
            }
        }
        self.report(
            &pvc,
            EventType::Normal,
            "ExternalProvisioning",
            &format!(
                "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
            ),
        );
        Ok(())
    }

    fn report_waiting_for_consumer(&self, pvc: &PersistentVolumeClaim) {
        let mut pods: Vec<String> = self
            .pods
            .by_index(PODS_BY_CLAIM, &claim_key(pvc))
            .iter()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_none_or(str::is_empty)
            })
            .map(|p| p.name_any())
            .collect();
        pods.sort();
        let (reason, message) = match pods.len() {
            0 => (
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding".to_owned(),
            ),
            1 => (
                "WaitForPodScheduled",
                format!("waiting for pod {} to be scheduled", pods[0]),
            ),
            _ => (
                "WaitForPodScheduled",
                format!("waiting for pods {} to be scheduled", pods.join(",")),
            ),
        };
        self.report(pvc, EventType::Normal, reason, &message);
    }

    /// Binds both sides, volume first; each step is skipped when done.
    async fn bind(&self, pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> kube::Result<()> {
        let pv = self.bind_volume_to_claim(pv, pvc).await?;
        let pv = self.update_volume_phase(&pv, "Bound", None).await?;
        let pvc = self.bind_claim_to_volume(pvc, &pv).await?;
        self.update_claim_status(&pvc, "Bound", Some(&pv)).await?;
        Ok(())
    }

    async fn bind_volume_to_claim(
        &self,
        pv: &PersistentVolume,
        pvc: &PersistentVolumeClaim,
    ) -> kube::Result<PersistentVolume> {
        let mut updated = pv.clone();
        let mut dirty = false;
        let by_user = is_volume_bound_to_claim(pv, pvc);
        let current = claim_ref(pv);
        if current.is_none_or(|r| {
            r.name != pvc.metadata.name
                || r.namespace != pvc.metadata.namespace
                || r.uid != pvc.metadata.uid
        }) {
            updated.spec.get_or_insert_with(Default::default).claim_ref = Some(reference_to(pvc));
            dirty = true;
        }
        if !by_user && !has_annotation(&updated.metadata, ANN_BOUND_BY_CONTROLLER) {
            set_annotation(&mut updated.metadata, ANN_BOUND_BY_CONTROLLER, "yes");
            dirty = true;
        }
        if !dirty {
            return Ok(pv.clone());
        }
        tracing::info!(claim = %claim_key(pvc), volume = %pv.name_any(), "claim bound to volume");
        let saved = self
            .volumes_api()
            .replace(&pv.name_any(), &PostParams::default(), &updated)
            .await?;
        self.volumes.apply(Arc::new(saved.clone()));
        Ok(saved)
    }

    async fn bind_claim_to_volume(
        &self,
        pvc: &PersistentVolumeClaim,
        pv: &PersistentVolume,
    ) -> kube::Result<PersistentVolumeClaim> {
        let mut updated = pvc.clone();
        let mut dirty = false;
        let name = pv.name_any();
        let by_controller = claim_volume_name(pvc) != Some(name.as_str());
        if by_controller {
            updated
                .spec
                .get_or_insert_with(Default::default)
                .volume_name = Some(name.clone());
            dirty = true;
        }
        if by_controller && !has_annotation(&updated.metadata, ANN_BOUND_BY_CONTROLLER) {
            set_annotation(&mut updated.metadata, ANN_BOUND_BY_CONTROLLER, "yes");
            dirty = true;
        }
        if !has_annotation(&updated.metadata, ANN_BIND_COMPLETED) {
            set_annotation(&mut updated.metadata, ANN_BIND_COMPLETED, "yes");
            dirty = true;
        }
        if !dirty {
            return Ok(pvc.clone());
        }
        let saved = self
            .claims_api(pvc)
            .replace(&pvc.name_any(), &PostParams::default(), &updated)
            .await?;
        self.claims.apply(Arc::new(saved.clone()));
        Ok(saved)
    }

    /// Sets the claim's phase, and its capacity and access modes from the
    /// volume (cleared without one).
    async fn update_claim_status(
        &self,
        pvc: &PersistentVolumeClaim,
        phase: &str,
        pv: Option<&PersistentVolume>,
    ) -> kube::Result<PersistentVolumeClaim> {
        let mut updated = pvc.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        status.phase = Some(phase.to_owned());
        match pv {
            None => {
                status.access_modes = None;
                status.capacity = None;
            }
            Some(pv) => {
                let spec = pv.spec.clone().unwrap_or_default();
                status.access_modes = spec.access_modes;
                status.capacity = spec.capacity;
            }
        }
        if updated.status == pvc.status {
            return Ok(pvc.clone());
        }
        let saved = self
            .claims_api(pvc)
            .replace_status(&pvc.name_any(), &PostParams::default(), &updated)
            .await?;
        tracing::debug!(claim = %claim_key(pvc), phase, "claim entered phase");
        self.claims.apply(Arc::new(saved.clone()));
        Ok(saved)
    }

    // ---- volumes ----

    async fn sync_volume(&self, name: &str) -> anyhow::Result<Option<Duration>> {
        let Some(pv) = self.volumes.get(name) else {
            self.reported
                .lock()
                .unwrap()
                .remove(&format!("PersistentVolume/{name}"));
            return Ok(None);
        };
        let Some(reference) = claim_ref(&pv) else {
            self.update_volume_phase(&pv, "Available", None).await?;
            return Ok(None);
        };
        if reference.uid.as_deref().is_none_or(str::is_empty) {
            // Pre-bound by a user or the scheduler; the claim's sync binds.
            self.update_volume_phase(&pv, "Available", None).await?;
            return Ok(None);
        }
        let namespace = reference.namespace.clone().unwrap_or_default();
        let claim_name = reference.name.clone().unwrap_or_default();
        let mut claim = self.claims.get_namespaced(&namespace, &claim_name);
        if claim.is_none() && !matches!(volume_phase(&pv), "Released" | "Failed") {
            // The claim may be too new for our cache (a volume made by a
            // provisioner right after it): ask the API before releasing.
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(self.ctx.client.clone(), &namespace);
            claim = api.get_opt(&claim_name).await?.map(Arc::new);
        }
        let claim = claim.filter(|c| c.metadata.uid == reference.uid);
        let Some(pvc) = claim else {
            let pv = if matches!(volume_phase(&pv), "Released" | "Failed") {
                (*pv).clone()
            } else {
                tracing::info!(
                    volume = name,
                    policy = reclaim_policy(&pv),
                    "volume is released and its reclaim policy will be executed"
                );
                self.update_volume_phase(&pv, "Released", None).await?
            };
            self.reclaim(&pv).await?;
            return Ok(None);
        };
        match claim_volume_name(&pvc) {
            None => {
                if volume_mode_mismatch(&pvc, &pv) {
                    self.report(
                        &*pv,
                        EventType::Warning,
                        "VolumeMismatch",
                        &format!("Cannot bind PersistentVolume to requested PersistentVolumeClaim {claim_name:?} due to incompatible volumeMode."),
                    );
                    self.report(
                        &*pvc,
                        EventType::Warning,
                        "VolumeMismatch",
                        &format!("Cannot bind PersistentVolume {name:?} to requested PersistentVolumeClaim due to incompatible volumeMode."),
                    );
                    return Ok(None);
                }
                // Binding is not complete: the claim's sync finishes it.
                self.queue.add(Work::Claim(claim_key(&pvc)));
            }
            Some(bound) if bound == name => {
                self.update_volume_phase(&pv, "Bound", None).await?;
            }
            Some(_) => {
                if has_annotation(&pv.metadata, ANN_DYNAMICALLY_PROVISIONED)
                    && reclaim_policy(&pv) == "Delete"
                {
                    // Provisioned for this claim, which took another
                    // volume: not needed any more.
                    let pv = if matches!(volume_phase(&pv), "Released" | "Failed") {
                        (*pv).clone()
                    } else {
                        self.update_volume_phase(&pv, "Released", None).await?
                    };
                    self.reclaim(&pv).await?;
                } else {
                    self.unbind_volume(&pv).await?;
                }
            }
        }
        Ok(None)
    }

    async fn unbind_volume(&self, pv: &PersistentVolume) -> kube::Result<()> {
        let mut updated = pv.clone();
        if has_annotation(&pv.metadata, ANN_BOUND_BY_CONTROLLER) {
            updated.spec.get_or_insert_with(Default::default).claim_ref = None;
            remove_annotation(&mut updated.metadata, ANN_BOUND_BY_CONTROLLER);
        } else if let Some(r) = updated.spec.as_mut().and_then(|s| s.claim_ref.as_mut()) {
            // Pre-bound by the user: keep the name, forget the UID.
            r.uid = None;
        }
        let saved = self
            .volumes_api()
            .replace(&pv.name_any(), &PostParams::default(), &updated)
            .await?;
        self.volumes.apply(Arc::new(saved.clone()));
        self.update_volume_phase(&saved, "Available", None).await?;
        Ok(())
    }

    /// Applies the reclaim policy of a released volume.
    async fn reclaim(&self, pv: &PersistentVolume) -> kube::Result<()> {
        match reclaim_policy(pv) {
            "Retain" => Ok(()),
            "Delete" => {
                if has_annotation(&pv.metadata, ANN_DYNAMICALLY_PROVISIONED) {
                    // Its external provisioner deletes it.
                    return Ok(());
                }
                let message = format!(
                    "error getting deleter volume plugin for volume {:?}: no deletable volume plugin matched",
                    pv.name_any()
                );
                self.fail_volume(pv, "VolumeFailedDelete", &message).await
            }
            "Recycle" => {
                self.fail_volume(
                    pv,
                    "VolumeFailedRecycle",
                    "No recycler plugin found for the volume!",
                )
                .await
            }
            _ => {
                self.fail_volume(
                    pv,
                    "VolumeUnknownReclaimPolicy",
                    "Volume has unrecognized PersistentVolumeReclaimPolicy",
                )
                .await
            }
        }
    }

    async fn fail_volume(
        &self,
        pv: &PersistentVolume,
        reason: &str,
        message: &str,
    ) -> kube::Result<()> {
        if volume_phase(pv) == "Failed" {
            return Ok(());
        }
        let saved = self
            .update_volume_phase(pv, "Failed", Some(message))
            .await?;
        self.ctx
            .recorder
            .record(&saved, EventType::Warning, reason, message);
        Ok(())
    }

    async fn update_volume_phase(
        &self,
        pv: &PersistentVolume,
        phase: &str,
        message: Option<&str>,
    ) -> kube::Result<PersistentVolume> {
        if volume_phase(pv) == phase && pv.status.as_ref().is_some_and(|s| s.phase.is_some()) {
            return Ok(pv.clone());
        }
        let mut updated = pv.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        status.phase = Some(phase.to_owned());
        status.message = message.map(str::to_owned);
        status.last_phase_transition_time = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        let saved = self
            .volumes_api()
            .replace_status(&pv.name_any(), &PostParams::default(), &updated)
            .await?;
        tracing::debug!(volume = %pv.name_any(), phase, "volume entered phase");
        self.volumes.apply(Arc::new(saved.clone()));
        Ok(saved)
    }
}

/// Why a volume the claim asks for by name does not fit it.
pub fn volume_satisfies_claim(
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
) -> Result<(), &'static str> {
    if volume_capacity(pv).unwrap_or(0) < claim_request(pvc) {
        return Err("requested PV is too small");
    }
    if volume_class(pv) != claim_class(pvc) {
        return Err("storageClassName does not match");
    }
    if volume_mode_mismatch(pvc, pv) {
        return Err("incompatible volumeMode");
    }
    if !access_modes_fit(pvc, pv) {
        return Err("incompatible accessMode");
    }
    Ok(())
}

/// Kubernetes' `findMatchingVolume` without a node: a volume pre-bound to
/// the claim wins; otherwise (not for delayed binding, where the
/// scheduler chooses) the smallest Available volume of the claim's class
/// that has its access modes, volume mode, size and selected labels,
/// preferring volumes with fewer access modes.
pub fn find_best_match(
    volumes: &[Arc<PersistentVolume>],
    pvc: &PersistentVolumeClaim,
    delay: bool,
) -> Option<Arc<PersistentVolume>> {
    let request = claim_request(pvc);
    let class = claim_class(pvc);
    let selector = pvc.spec.as_ref().and_then(|s| s.selector.as_ref());
    let mut best: Option<(usize, i64, &Arc<PersistentVolume>)> = None;
    for pv in volumes {
        let Some(capacity) = volume_capacity(pv) else {
            continue;
        };
        if capacity < request
            || volume_mode_mismatch(pvc, pv)
            || pv.metadata.deletion_timestamp.is_some()
            || !access_modes_fit(pvc, pv)
        {
            continue;
        }
        if is_volume_bound_to_claim(pv, pvc) {
            return Some(pv.clone());
        }
        if delay
            || volume_phase(pv) != "Available"
            || claim_ref(pv).is_some()
            || volume_class(pv) != class
        {
            continue;
        }
        if let Some(selector) = selector {
            if !crate::util::selector_matches(selector, crate::util::labels_of(&pv.metadata)) {
                continue;
            }
        }
        let rank = (volume_access_modes(pv).len(), capacity, pv);
        if best.as_ref().is_none_or(|(modes, size, b)| {
            (rank.0, rank.1, &rank.2.metadata.name) < (*modes, *size, &b.metadata.name)
        }) {
            best = Some(rank);
        }
    }
    best.map(|(_, _, pv)| pv.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::fixtures::{pv, pvc};
    use serde_json::json;

    fn names(found: Option<Arc<PersistentVolume>>) -> Option<String> {
        found.and_then(|pv| pv.metadata.name.clone())
    }

    #[test]
    fn the_smallest_fitting_volume_wins() {
        let available = json!({"status": {"phase": "Available"}});
        let volumes: Vec<Arc<PersistentVolume>> = vec![
            pv("big", "10Gi", available.clone()),
            pv("small", "2Gi", available.clone()),
            pv("tiny", "500Mi", available.clone()),
            pv("rwx", "1Gi", json!({"spec": {"accessModes": ["ReadWriteOnce", "ReadWriteMany"]}, "status": {"phase": "Available"}})),
            pv("block", "1Gi", json!({"spec": {"volumeMode": "Block"}, "status": {"phase": "Available"}})),
            pv("fast", "1Gi", json!({"spec": {"storageClassName": "fast"}, "status": {"phase": "Available"}})),
            pv("labelled", "3Gi", json!({"metadata": {"labels": {"tier": "gold"}}, "status": {"phase": "Available"}})),
            pv("taken", "1Gi", json!({"spec": {"claimRef": {"namespace": "default", "name": "other"}}, "status": {"phase": "Available"}})),
            pv("released", "1Gi", json!({"status": {"phase": "Released"}})),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        let claim = pvc(
            "c",
            json!({"metadata": {"uid": "u"}, "spec": {"storageClassName": ""}}),
        );
        // Of the class-less RWO volumes: "rwx" offers more modes than
        // needed, so "small" wins though it is bigger.
        assert_eq!(
            names(find_best_match(&volumes, &claim, false)),
            Some("small".into())
        );
        let fast = pvc("c", json!({"spec": {"storageClassName": "fast"}}));
        assert_eq!(
            names(find_best_match(&volumes, &fast, false)),
            Some("fast".into())
        );
        let gold = pvc(
            "c",
            json!({"spec": {"storageClassName": "", "selector": {"matchLabels": {"tier": "gold"}}}}),
        );
        assert_eq!(
            names(find_best_match(&volumes, &gold, false)),
            Some("labelled".into())
        );
        let huge = pvc(
            "c",
            json!({"spec": {"storageClassName": "", "resources": {"requests": {"storage": "20Gi"}}}}),
        );
        assert_eq!(names(find_best_match(&volumes, &huge, false)), None);
        let block = pvc(
            "c",
            json!({"spec": {"storageClassName": "", "volumeMode": "Block"}}),
        );
        assert_eq!(
            names(find_best_match(&volumes, &block, false)),
            Some("block".into())
        );
        // Delayed binding: only a volume pre-bound to the claim.
        assert_eq!(names(find_best_match(&volumes, &claim, true)), None);
        let other = pvc("other", json!({"spec": {"storageClassName": "fast"}}));
        assert_eq!(
            names(find_best_match(&volumes, &other, true)),
            Some("taken".into()),
            "pre-bound by name wins, class aside"
        );
    }

    #[test]
    fn a_named_volume_must_fit() {
        let claim = pvc("c", json!({"spec": {"storageClassName": ""}}));
        assert_eq!(
            volume_satisfies_claim(&pv("v", "1Gi", json!({})), &claim),
            Ok(())
        );
        assert_eq!(
            volume_satisfies_claim(&pv("v", "1Mi", json!({})), &claim),
            Err("requested PV is too small")
        );
        assert_eq!(
            volume_satisfies_claim(
                &pv("v", "1Gi", json!({"spec": {"storageClassName": "x"}})),
                &claim
            ),
            Err("storageClassName does not match")
        );
        assert_eq!(
            volume_satisfies_claim(
                &pv(
                    "v",
                    "1Gi",
                    json!({"spec": {"accessModes": ["ReadOnlyMany"]}})
                ),
                &claim
            ),
            Err("incompatible accessMode")
        );
    }
}
