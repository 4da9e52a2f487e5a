//! The local-path provisioner (`local-path-provisioner`), as k3s ships
//! it: a default StorageClass `local-path` whose volumes are directories
//! on the node the scheduler picked for the claim's first pod.
//!
//! At start it makes sure the class exists (provisioner
//! `rancher.io/local-path`, `WaitForFirstConsumer`, reclaim `Delete`,
//! annotated default); an existing class of that name is left as the
//! administrator set it. For each claim that the PV controller hands to
//! this provisioner (annotation `volume.kubernetes.io/storage-provisioner`)
//! and that the scheduler placed (`volume.kubernetes.io/selected-node`),
//! it creates the volume `pvc-<claim uid>`: a `hostPath` directory
//! (`DirectoryOrCreate`) `<storage dir>/pvc-<uid>_<namespace>_<name>` on
//! that node, reachable only there (required node affinity on
//! `kubernetes.io/hostname`), pre-bound to the claim. A released volume
//! with reclaim policy `Delete` is deleted.
//!
//! The storage directory is the node agent's: the controller cannot see
//! a remote node's disk, so it reads the node annotation
//! `rudder.dev/storage-dir` and falls back to
//! `/var/lib/rudder/agent/storage` (the agent's default data dir plus
//! `storage`). Removing the directory of a deleted volume is the node
//! agent's job: this controller deletes only the PersistentVolume object.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};
use rudder_runtime::events::EventType;
use rudder_runtime::{Change, Informer, WorkQueue};
use serde_json::json;

use super::*;
use crate::util::{api_code, is_not_found};
use crate::Context;

/// The provisioner name k3s's local-path-provisioner registers.
pub const PROVISIONER: &str = "rancher.io/local-path";
/// The class it serves.
pub const CLASS_NAME: &str = "local-path";
/// The node annotation naming the node agent's storage directory.
pub const ANN_STORAGE_DIR: &str = "rudder.dev/storage-dir";
/// Where the node agent keeps volumes when its node does not say.
pub const DEFAULT_STORAGE_DIR: &str = "/var/lib/rudder/agent/storage";
/// The node a volume was made on (local-path-provisioner's annotation).
pub const ANN_PROVISIONER_SELECTED_NODE: &str = "local.path.provisioner/selected-node";

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    LocalPathProvisioner::new(ctx).run().boxed()
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Work {
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

#[derive(Clone)]
pub struct LocalPathProvisioner {
    ctx: Context,
    queue: WorkQueue<Work>,
    claims: Informer<PersistentVolumeClaim>,
    volumes: Informer<PersistentVolume>,
    classes: Informer<StorageClass>,
    nodes: Informer<Node>,
}

/// The class this provisioner serves, as k3s installs it.
pub fn default_class() -> StorageClass {
    serde_json::from_value(json!({
        "metadata": {"name": CLASS_NAME, "annotations": {ANN_DEFAULT_CLASS: "true"}},
        "provisioner": PROVISIONER,
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }))
    .expect("a valid StorageClass")
}

fn provisioner_of(pvc: &PersistentVolumeClaim) -> Option<&str> {
    annotation(&pvc.metadata, ANN_STORAGE_PROVISIONER)
        .or_else(|| annotation(&pvc.metadata, ANN_BETA_STORAGE_PROVISIONER))
}

/// Ours to delete: made by us, released, reclaim policy Delete.
fn deletable(pv: &PersistentVolume) -> bool {
    annotation(&pv.metadata, ANN_DYNAMICALLY_PROVISIONED) == Some(PROVISIONER)
        && volume_phase(pv) == "Released"
        && reclaim_policy(pv) == "Delete"
        && pv.metadata.deletion_timestamp.is_none()
}

/// The volume name for a claim (external-provisioner's `pvc-<uid>`).
pub fn volume_name(pvc: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", pvc.metadata.uid.as_deref().unwrap_or_default())
}

/// The directory of a claim's volume under the node's storage dir.
pub fn volume_path(storage_dir: &str, pvc: &PersistentVolumeClaim) -> String {
    format!(
        "{}/pvc-{}_{}_{}",
        storage_dir.trim_end_matches('/'),
        pvc.metadata.uid.as_deref().unwrap_or_default(),
        pvc.metadata.namespace.as_deref().unwrap_or_default(),
        pvc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Why the claim cannot have a local-path volume, if it cannot.
fn unsupported(pvc: &PersistentVolumeClaim) -> Option<String> {
    let spec = pvc.spec.as_ref()?;
    if spec.selector.is_some() {
        return Some("claim.Spec.Selector is not supported".into());
    }
    if claim_access_modes(pvc)
        .iter()
        .any(|m| m != "ReadWriteOnce" && m != "ReadWriteOncePod")
    {
        return Some(
            "NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes".into(),
        );
    }
    None
}

/// The volume for a claim on a node.
pub fn volume_for(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    hostname: &str,
    storage_dir: &str,
) -> PersistentVolume {
    let spec = pvc.spec.clone().unwrap_or_default();
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned();
    let mut capacity = BTreeMap::new();
    if let Some(request) = request {
        capacity.insert("storage".to_owned(), request);
    }
    let value = json!({
        "metadata": {
            "name": volume_name(pvc),
            "annotations": {
                ANN_DYNAMICALLY_PROVISIONED: PROVISIONER,
                ANN_PROVISIONER_SELECTED_NODE: node,
            },
        },
        "spec": {
            "capacity": capacity,
            "accessModes": spec.access_modes.clone().unwrap_or_default(),
            "persistentVolumeReclaimPolicy": class.reclaim_policy.as_deref().unwrap_or("Delete"),
            "storageClassName": class.metadata.name,
            "mountOptions": class.mount_options,
            "volumeMode": spec.volume_mode.as_deref().unwrap_or("Filesystem"),
            "claimRef": reference_to(pvc),
            "hostPath": {"path": volume_path(storage_dir, pvc), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}
            ]}]}},
        },
    });
    serde_json::from_value(value).expect("a valid PersistentVolume")
}

impl LocalPathProvisioner {
    pub fn new(ctx: &Context) -> Self {
        let queue = WorkQueue::new();
        let claims = ctx.informers.get::<PersistentVolumeClaim>();
        let volumes = ctx.informers.get::<PersistentVolume>();
        let classes = ctx.informers.get::<StorageClass>();
        let nodes = ctx.informers.get::<Node>();
        let q = queue.clone();
        claims.on_change(move |change| {
            let pvc = change.object();
            if !matches!(change, Change::Deleted(_))
                && provisioner_of(pvc) == Some(PROVISIONER)
                && claim_volume_name(pvc).is_none()
            {
                q.add(Work::Claim(claim_key(pvc)));
            }
        });
        let q = queue.clone();
        volumes.on_change(move |change| {
            if !matches!(change, Change::Deleted(_)) && deletable(change.object()) {
                q.add(Work::Volume(change.object().name_any()));
            }
        });
        LocalPathProvisioner {
            ctx: ctx.clone(),
            queue,
            claims,
            volumes,
            classes,
            nodes,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.ensure_class().await?;
        self.claims.wait_synced().await;
        self.volumes.wait_synced().await;
        self.classes.wait_synced().await;
        self.nodes.wait_synced().await;
        let queue = self.queue.clone();
        queue
            .run_workers("local-path-provisioner", 2, move |work: Work| {
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

    /// Creates the `local-path` class unless one exists (retrying until
    /// the API answers).
    async fn ensure_class(&self) -> anyhow::Result<()> {
        let api: Api<StorageClass> = Api::all(self.ctx.client.clone());
        let mut delay = Duration::from_millis(100);
        loop {
            match api.create(&PostParams::default(), &default_class()).await {
                Ok(_) => {
                    tracing::info!(class = CLASS_NAME, "created the default StorageClass");
                    return Ok(());
                }
                Err(err) if api_code(&err) == Some(409) => return Ok(()),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot create the local-path StorageClass; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn fail(&self, pvc: &PersistentVolumeClaim, class: &str, why: &str) {
        self.ctx.recorder.record(
            pvc,
            EventType::Warning,
            "ProvisioningFailed",
            &format!("failed to provision volume with StorageClass {class:?}: {why}"),
        );
    }

    async fn sync_claim(&self, key: &str) -> anyhow::Result<Option<Duration>> {
        let Some(pvc) = self.claims.get(key) else {
            return Ok(None);
        };
        if provisioner_of(&pvc) != Some(PROVISIONER)
            || claim_volume_name(&pvc).is_some()
            || pvc.metadata.deletion_timestamp.is_some()
        {
            return Ok(None);
        }
        let class_name = claim_class(&pvc).to_owned();
        let Some(class) = self.classes.get(&class_name) else {
            return Ok(None);
        };
        if class.provisioner != PROVISIONER {
            return Ok(None);
        }
        let name = volume_name(&pvc);
        if self.volumes.get(&name).is_some() {
            return Ok(None);
        }
        let Some(node_name) = annotation(&pvc.metadata, ANN_SELECTED_NODE) else {
            if !waits_for_first_consumer(&class) {
                self.fail(
                    &pvc,
                    &class_name,
                    "configuration error, no node was specified",
                );
            }
            // With WaitForFirstConsumer the scheduler sets the node.
            return Ok(None);
        };
        if let Some(why) = unsupported(&pvc) {
            self.fail(&pvc, &class_name, &why);
            return Ok(None);
        }
        let Some(node) = self.nodes.get(node_name) else {
            // The node may be too new for our cache, or gone (then the
            // scheduler re-picks one); look again without an event each
            // time.
            tracing::info!(
                claim = key,
                node = node_name,
                "the selected node is not known yet"
            );
            return Ok(Some(Duration::from_secs(5)));
        };
        let hostname = node
            .labels()
            .get("kubernetes.io/hostname")
            .cloned()
            .unwrap_or_else(|| node_name.to_owned());
        let storage_dir = node
            .annotations()
            .get(ANN_STORAGE_DIR)
            .cloned()
            .unwrap_or_else(|| DEFAULT_STORAGE_DIR.to_owned());
        self.ctx.recorder.record(
            &*pvc,
            EventType::Normal,
            "Provisioning",
            &format!("External provisioner is provisioning volume for claim {key:?}"),
        );
        let pv = volume_for(&pvc, &class, node_name, &hostname, &storage_dir);
        let api: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        match api.create(&PostParams::default(), &pv).await {
            Ok(created) => {
                tracing::info!(claim = key, volume = %name, node = node_name, "provisioned a local-path volume");
                self.volumes.apply(Arc::new(created));
                self.ctx.recorder.record(
                    &*pvc,
                    EventType::Normal,
                    "ProvisioningSucceeded",
                    &format!("Successfully provisioned volume {name}"),
                );
                Ok(None)
            }
            // Made already (our cache lags).
            Err(err) if api_code(&err) == Some(409) => Ok(None),
            Err(err) => {
                self.fail(&pvc, &class_name, &err.to_string());
                Err(err.into())
            }
        }
    }

    async fn sync_volume(&self, name: &str) -> anyhow::Result<Option<Duration>> {
        let Some(pv) = self.volumes.get(name) else {
            return Ok(None);
        };
        if !deletable(&pv) {
            return Ok(None);
        }
        let api: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pv.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                tracing::info!(volume = name, "deleted a released local-path volume");
                Ok(None)
            }
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => {
                self.ctx.recorder.record(
                    &*pv,
                    EventType::Warning,
                    "VolumeFailedDelete",
                    &err.to_string(),
                );
                Err(err.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_live_under_the_node_storage_dir() {
        let pvc = fixtures::pvc(
            "www-web-0",
            json!({"metadata": {"uid": "u1"}, "spec": {"storageClassName": CLASS_NAME}}),
        );
        let pv = volume_for(&pvc, &default_class(), "n1", "host-1", "/data/storage/");
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-u1"));
        let spec = pv.spec.unwrap();
        let host_path = spec.host_path.unwrap();
        assert_eq!(host_path.path, "/data/storage/pvc-u1_default_www-web-0");
        assert_eq!(host_path.type_.as_deref(), Some("DirectoryOrCreate"));
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(spec.claim_ref.unwrap().uid.as_deref(), Some("u1"));
        let term = &spec
            .node_affinity
            .unwrap()
            .required
            .unwrap()
            .node_selector_terms[0];
        assert_eq!(
            term.match_expressions.as_ref().unwrap()[0].values,
            Some(vec!["host-1".to_owned()])
        );
        let rwx = fixtures::pvc("x", json!({"spec": {"accessModes": ["ReadWriteMany"]}}));
        assert!(unsupported(&rwx).is_some());
        assert!(unsupported(&pvc).is_none());
    }
}
