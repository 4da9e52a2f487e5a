//! Pod volumes as the kubelet lays them out: each under
//! `<pods_dir>/<pod uid>/volumes/<plugin>/<name>` (`kubernetes.io~empty-dir`,
//! `kubernetes.io~configmap`, `kubernetes.io~secret`,
//! `kubernetes.io~downward-api`, `kubernetes.io~projected`), except hostPath
//! volumes and hostPath/local PersistentVolumes, which are the host's own
//! path. [`VolumeManager::container_mounts`] turns a container's
//! `volumeMounts` into OCI bind mounts of those paths.

pub mod atomic_writer;
pub mod configmap;
pub mod downward_api;
pub mod empty_dir;
pub mod host_path;
pub mod mounts;
mod projected;
pub mod pvc;
pub mod secret;
pub mod subpath;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use kube::api::Api;
use oci_spec::runtime::Mount;

use crate::env::{expand, NodeAllocatable};
use atomic_writer::{AtomicWriter, Payload};
use empty_dir::Medium;

/// The plugin directory names the kubelet uses.
pub const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";
pub const CONFIG_MAP_PLUGIN: &str = "kubernetes.io~configmap";
pub const SECRET_PLUGIN: &str = "kubernetes.io~secret";
pub const DOWNWARD_API_PLUGIN: &str = "kubernetes.io~downward-api";
pub const PROJECTED_PLUGIN: &str = "kubernetes.io~projected";

/// The default `defaultMode` (0644).
const DEFAULT_MODE: u32 = 0o644;
/// A projected token's default lifetime.
const DEFAULT_TOKEN_EXPIRATION: i64 = 3600;

/// Why a pod's volumes or a container's mounts cannot be made. The pod
/// worker reports `SetUp` and `Unsupported` as `FailedMount` events and the
/// container-level ones as `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// `MountVolume.SetUp failed for volume "x" : configmap "x" not found`, …
    #[error("MountVolume.SetUp failed for volume {volume:?} : {reason}")]
    SetUp { volume: String, reason: String },
    /// A volume kind this node cannot provide (nfs, csi, iscsi, image, …).
    #[error("MountVolume.SetUp failed for volume {volume:?} : {reason}")]
    Unsupported { volume: String, reason: String },
    /// The pod has no `metadata.uid`.
    #[error("pod {0:?} has no uid")]
    NoPodUid(String),
    #[error("cannot find volume {volume:?} to mount into container {container:?}")]
    MissingVolume { volume: String, container: String },
    /// `subPathExpr` referring to variables the container does not have.
    #[error("missing value for {0}")]
    SubPathExpr(String),
    /// A `subPath` with `..` or an absolute path.
    #[error("{0}")]
    InvalidSubPath(subpath::SubPathError),
    /// A `subPath` that could not be made or leads outside its volume; the
    /// message is the kubelet's (which hides the details), `reason` has them.
    #[error(
        "failed to prepare subPath for volumeMount {volume_mount:?} of container {container:?}"
    )]
    SubPath {
        volume_mount: String,
        container: String,
        #[source]
        reason: subpath::SubPathError,
    },
    #[error("invalid MountPropagation mode: {0:?}")]
    MountPropagation(String),
    #[error("failed to resolve recursive read-only mode: {0}")]
    RecursiveReadOnly(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What kind of volume a name is, as set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeKind {
    EmptyDir {
        medium: Medium,
    },
    HostPath,
    ConfigMap,
    Secret,
    DownwardApi,
    Projected,
    /// A `persistentVolumeClaim` or generic `ephemeral` volume.
    PersistentVolume {
        claim: String,
        volume: String,
    },
}

/// One volume of a pod, ready to be bind-mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountedVolume {
    pub host_path: PathBuf,
    /// Mounted read-only into every container whatever its `readOnly`
    /// (configMap, secret, downward API and projected volumes; claims
    /// referenced with `readOnly: true`).
    pub read_only: bool,
    pub kind: VolumeKind,
}

/// A pod's volumes by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodVolumes {
    volumes: BTreeMap<String, MountedVolume>,
}

impl PodVolumes {
    pub fn get(&self, name: &str) -> Option<&MountedVolume> {
        self.volumes.get(name)
    }

    /// The host path of a volume.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.volumes.get(name).map(|v| v.host_path.as_path())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &MountedVolume)> {
        self.volumes.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.volumes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty()
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    pod_uid: String,
    account: String,
    audience: String,
    expiration: i64,
}

struct CachedToken {
    token: String,
    issued: Instant,
    ttl: Duration,
}

/// Sets up, refreshes and tears down pod volumes.
pub struct VolumeManager {
    pods_dir: PathBuf,
    client: kube::Client,
    node_allocatable: Option<NodeAllocatable>,
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
}

/// The node's allocatable resources, read from the Node at most once per
/// setup and only when a volume needs them.
pub(crate) struct LazyAllocatable<'a> {
    manager: &'a VolumeManager,
    pod: &'a Pod,
    value: Option<NodeAllocatable>,
}

impl LazyAllocatable<'_> {
    pub(crate) async fn get(&mut self) -> Result<NodeAllocatable, String> {
        if let Some(value) = &self.value {
            return Ok(value.clone());
        }
        let value = match &self.manager.node_allocatable {
            Some(value) => value.clone(),
            None => NodeAllocatable::read(&self.manager.client, self.pod)
                .await
                .map_err(|err| format!("failed to get node allocatable: {}", api_message(&err)))?,
        };
        self.value = Some(value.clone());
        Ok(value)
    }
}

fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

fn pod_uid(pod: &Pod) -> Result<String, VolumeError> {
    pod.metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty() && !u.contains('/') && u != "." && u != "..")
        .ok_or_else(|| VolumeError::NoPodUid(pod.metadata.name.clone().unwrap_or_default()))
}

fn mkdir_0750(path: &Path) -> Result<(), VolumeError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(path)
        .map_err(io_err("mkdir", path))
}

/// The kind name of a volume source the node does not support.
fn volume_source_name(volume: &Volume) -> String {
    serde_json::to_value(volume)
        .ok()
        .and_then(|v| {
            v.as_object()
                .and_then(|o| o.keys().find(|k| k.as_str() != "name").cloned())
        })
        .unwrap_or_else(|| "an empty".into())
}

impl VolumeManager {
    pub fn new(pods_dir: PathBuf, client: kube::Client) -> VolumeManager {
        VolumeManager {
            pods_dir,
            client,
            node_allocatable: None,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Uses these allocatable resources instead of reading the Node (for
    /// memory-backed emptyDir sizes and downward API resource defaults).
    pub fn with_node_allocatable(mut self, allocatable: NodeAllocatable) -> VolumeManager {
        self.node_allocatable = Some(allocatable);
        self
    }

    /// `<pods_dir>/<uid>`.
    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.pods_dir.join(pod_uid)
    }

    /// `<pods_dir>/<uid>/volumes`.
    pub fn pod_volumes_dir(&self, pod_uid: &str) -> PathBuf {
        self.pod_dir(pod_uid).join("volumes")
    }

    fn volume_dir(&self, pod_uid: &str, plugin: &str, name: &str) -> PathBuf {
        self.pod_volumes_dir(pod_uid).join(plugin).join(name)
    }

    /// Prepares every volume of the pod and returns them by name.
    pub async fn setup(&self, pod: &Pod) -> Result<PodVolumes, VolumeError> {
        let uid = pod_uid(pod)?;
        mkdir_0750(&self.pod_dir(&uid))?;
        mkdir_0750(&self.pod_volumes_dir(&uid))?;
        let mut allocatable = LazyAllocatable {
            manager: self,
            pod,
            value: None,
        };
        let mut out = PodVolumes::default();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(mounted) = self
                .setup_volume(pod, &uid, volume, &mut allocatable, false)
                .await?
            {
                out.volumes.insert(volume.name.clone(), mounted);
            }
        }
        Ok(out)
    }

    /// Re-projects the configMap, secret, downward API and projected volumes;
    /// only a changed payload swaps a volume's `..data`.
    pub async fn refresh(&self, pod: &Pod) -> Result<(), VolumeError> {
        let uid = pod_uid(pod)?;
        let mut allocatable = LazyAllocatable {
            manager: self,
            pod,
            value: None,
        };
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            self.setup_volume(pod, &uid, volume, &mut allocatable, true)
                .await?;
        }
        Ok(())
    }

    async fn setup_volume(
        &self,
        pod: &Pod,
        uid: &str,
        volume: &Volume,
        allocatable: &mut LazyAllocatable<'_>,
        refresh_only: bool,
    ) -> Result<Option<MountedVolume>, VolumeError> {
        let name = volume.name.clone();
        let set_up = |reason: String| VolumeError::SetUp {
            volume: name.clone(),
            reason,
        };
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
        let security = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let fs_group = security.and_then(|c| c.fs_group);
        let change_policy = security.and_then(|c| c.fs_group_change_policy.clone());

        // The projected kinds: a payload written atomically into a wrapped
        // emptyDir (tmpfs for secrets and projected volumes).
        let projection = if let Some(src) = &volume.config_map {
            let optional = src.optional.unwrap_or(false);
            let mode = src.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
            let payload = match self.get_config_map(namespace, &src.name, optional).await {
                Ok(cm) => configmap::payload(
                    src.items.as_deref(),
                    &cm.unwrap_or_default(),
                    mode,
                    optional,
                ),
                Err(err) => Err(err),
            };
            Some((
                CONFIG_MAP_PLUGIN,
                Medium::Disk,
                VolumeKind::ConfigMap,
                payload,
            ))
        } else if let Some(src) = &volume.secret {
            let optional = src.optional.unwrap_or(false);
            let mode = src.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
            let secret_name = src.secret_name.clone().unwrap_or_default();
            let payload = match self.get_secret(namespace, &secret_name, optional).await {
                Ok(secret) => secret::payload(
                    src.items.as_deref(),
                    &secret.unwrap_or_default(),
                    mode,
                    optional,
                ),
                Err(err) => Err(err),
            };
            Some((SECRET_PLUGIN, Medium::Memory, VolumeKind::Secret, payload))
        } else if let Some(src) = &volume.downward_api {
            let mode = src.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
            let items = src.items.as_deref().unwrap_or(&[]);
            let node = if downward_api::needs_allocatable(items) {
                allocatable.get().await
            } else {
                Ok(NodeAllocatable::default())
            };
            let payload = node.and_then(|node| downward_api::payload(items, pod, mode, &node));
            Some((
                DOWNWARD_API_PLUGIN,
                Medium::Disk,
                VolumeKind::DownwardApi,
                payload,
            ))
        } else if let Some(src) = &volume.projected {
            let payload = projected::payload(self, pod, src, allocatable).await;
            Some((
                PROJECTED_PLUGIN,
                Medium::Memory,
                VolumeKind::Projected,
                payload,
            ))
        } else {
            None
        };
        if let Some((plugin, medium, kind, payload)) = projection {
            let payload = payload.map_err(set_up)?;
            let dir = self.volume_dir(uid, plugin, &name);
            self.make_wrapped_dir(pod, &dir, medium, None, allocatable)
                .await
                .map_err(|err| set_up(err.to_string()))?;
            write_projection(&dir, &payload, fs_group, change_policy.as_deref()).map_err(set_up)?;
            return Ok(Some(MountedVolume {
                host_path: dir,
                read_only: true,
                kind,
            }));
        }
        if refresh_only {
            return Ok(None);
        }

        if let Some(src) = &volume.empty_dir {
            let medium = Medium::parse(src.medium.as_deref()).map_err(|reason| {
                VolumeError::Unsupported {
                    volume: name.clone(),
                    reason,
                }
            })?;
            let dir = self.volume_dir(uid, EMPTY_DIR_PLUGIN, &name);
            let size_limit = src.size_limit.as_ref().map(|q| q.0.as_str());
            self.make_wrapped_dir(pod, &dir, medium, size_limit, allocatable)
                .await
                .map_err(|err| set_up(err.to_string()))?;
            set_volume_ownership(&dir, fs_group, change_policy.as_deref(), false)
                .map_err(|err| set_up(err.to_string()))?;
            return Ok(Some(MountedVolume {
                host_path: dir,
                read_only: false,
                kind: VolumeKind::EmptyDir { medium },
            }));
        }
        if let Some(src) = &volume.host_path {
            host_path::check(&src.path, src.type_.as_deref()).map_err(set_up)?;
            return Ok(Some(MountedVolume {
                host_path: PathBuf::from(&src.path),
                read_only: false,
                kind: VolumeKind::HostPath,
            }));
        }
        let claim = if let Some(src) = &volume.persistent_volume_claim {
            Some((
                src.claim_name.clone(),
                src.read_only.unwrap_or(false),
                false,
            ))
        } else if volume.ephemeral.is_some() {
            // A generic ephemeral volume's claim is `<pod>-<volume>`.
            let pod_name = pod.metadata.name.as_deref().unwrap_or("");
            Some((format!("{pod_name}-{name}"), false, true))
        } else {
            None
        };
        if let Some((claim_name, read_only, ephemeral)) = claim {
            return match pvc::resolve(&self.client, pod, &claim_name, ephemeral).await {
                Ok(resolved) => Ok(Some(MountedVolume {
                    host_path: resolved.host_path,
                    read_only,
                    kind: VolumeKind::PersistentVolume {
                        claim: claim_name,
                        volume: resolved.pv_name,
                    },
                })),
                Err(pvc::ClaimError::Failed(reason)) => Err(set_up(reason)),
                Err(pvc::ClaimError::Unsupported(reason)) => Err(VolumeError::Unsupported {
                    volume: name,
                    reason,
                }),
            };
        }
        let kind = volume_source_name(volume);
        Err(VolumeError::Unsupported {
            reason: format!("{kind} volumes are not supported by this node"),
            volume: name,
        })
    }

    /// The directory a volume lives in: a 0777 directory, or a tmpfs.
    async fn make_wrapped_dir(
        &self,
        pod: &Pod,
        dir: &Path,
        medium: Medium,
        size_limit: Option<&str>,
        allocatable: &mut LazyAllocatable<'_>,
    ) -> io::Result<()> {
        if let Some(parent) = dir.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(parent)?;
        }
        match medium {
            Medium::Disk => empty_dir::setup_dir(dir),
            Medium::Memory => {
                if mounts::fs_type_at(dir).ok().flatten().as_deref() == Some("tmpfs") {
                    return Ok(());
                }
                let node_memory = match allocatable.get().await {
                    Ok(node) => node.memory,
                    Err(err) => {
                        tracing::warn!(error = %err, "sizing a memory-backed volume without the node's allocatable memory");
                        None
                    }
                };
                let size = empty_dir::memory_size(node_memory, pod, size_limit);
                empty_dir::setup_tmpfs(dir, size)
            }
        }
    }

    /// A ConfigMap of the pod's namespace; `None` when missing and optional.
    pub(crate) async fn get_config_map(
        &self,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<Option<ConfigMap>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        match api.get(name).await {
            Ok(object) => Ok(Some(object)),
            Err(err) if is_not_found(&err) && optional => Ok(None),
            Err(err) if is_not_found(&err) => Err(format!("configmap {name:?} not found")),
            Err(err) => Err(api_message(&err)),
        }
    }

    /// A Secret of the pod's namespace; `None` when missing and optional.
    pub(crate) async fn get_secret(
        &self,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<Option<Secret>, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match api.get(name).await {
            Ok(object) => Ok(Some(object)),
            Err(err) if is_not_found(&err) && optional => Ok(None),
            Err(err) if is_not_found(&err) => Err(format!("secret {name:?} not found")),
            Err(err) => Err(api_message(&err)),
        }
    }

    /// A token for the pod's service account, reused until 80% of its
    /// lifetime has passed (as the kubelet's token manager does).
    pub(crate) async fn service_account_token(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        expiration_seconds: Option<i64>,
    ) -> Result<String, String> {
        let expiration = expiration_seconds.unwrap_or(DEFAULT_TOKEN_EXPIRATION);
        let key = TokenKey {
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            audience: audience.unwrap_or("").to_string(),
            expiration,
        };
        {
            let tokens = self.tokens.lock().expect("token cache lock");
            if let Some(cached) = tokens.get(&key) {
                if cached.issued.elapsed() < cached.ttl.mul_f64(0.8) {
                    return Ok(cached.token.clone());
                }
            }
        }
        let (token, ttl) =
            projected::request_token(&self.client, pod, audience, expiration).await?;
        self.tokens.lock().expect("token cache lock").insert(
            key,
            CachedToken {
                token: token.clone(),
                issued: Instant::now(),
                ttl: Duration::from_secs(ttl.max(0) as u64),
            },
        );
        Ok(token)
    }

    /// Bind mounts for a container's `volumeMounts` (see
    /// [`VolumeManager::container_mounts_with_env`]); a `subPathExpr` can
    /// only use variables with this variant if it names none.
    pub fn container_mounts(
        &self,
        pod: &Pod,
        container: &Container,
        volumes: &PodVolumes,
    ) -> Result<Vec<Mount>, VolumeError> {
        self.container_mounts_with_env(pod, container, volumes, &[])
    }

    /// Bind mounts for a container's `volumeMounts`: read-only when the mount
    /// or the volume says so; `subPath` (or `subPathExpr` expanded with the
    /// container's environment `env`) is created inside the volume when
    /// missing and may not lead outside it; `mountPropagation` other than
    /// `None` is not supported and falls back to private with a warning.
    /// Mounts are ordered parents first.
    pub fn container_mounts_with_env(
        &self,
        pod: &Pod,
        container: &Container,
        volumes: &PodVolumes,
        env: &[(String, String)],
    ) -> Result<Vec<Mount>, VolumeError> {
        let pod_name = pod.metadata.name.as_deref().unwrap_or("");
        let mut out: Vec<(usize, Mount)> = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = volumes
                .get(&mount.name)
                .ok_or_else(|| VolumeError::MissingVolume {
                    volume: mount.name.clone(),
                    container: container.name.clone(),
                })?;
            let mut sub_path = mount.sub_path.clone().unwrap_or_default();
            if let Some(expr) = mount.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
                sub_path = expand_sub_path_expr(expr, env)?;
            }
            let mut source = volume.host_path.clone();
            if !sub_path.is_empty() {
                subpath::validate(&sub_path).map_err(VolumeError::InvalidSubPath)?;
                source = subpath::prepare(&volume.host_path, &sub_path).map_err(|reason| {
                    tracing::warn!(pod = pod_name, container = %container.name, volume_mount = %mount.name, error = %reason, "refusing a subPath");
                    VolumeError::SubPath {
                        volume_mount: mount.name.clone(),
                        container: container.name.clone(),
                        reason,
                    }
                })?;
            }
            match mount.mount_propagation.as_deref() {
                None | Some("None") => {}
                Some(mode @ ("HostToContainer" | "Bidirectional")) => {
                    tracing::warn!(pod = pod_name, container = %container.name, volume_mount = %mount.name, mode, "mount propagation is not supported; the mount is private");
                }
                Some(other) => return Err(VolumeError::MountPropagation(other.to_string())),
            }
            let read_only = mount.read_only.unwrap_or(false) || volume.read_only;
            match mount.recursive_read_only.as_deref() {
                None | Some("Disabled") => {}
                Some("IfPossible") if read_only => {}
                Some("Enabled") if read_only => {
                    return Err(VolumeError::RecursiveReadOnly(
                        "recursive read-only mounts are not supported by this runtime".into(),
                    ))
                }
                Some(mode @ ("IfPossible" | "Enabled")) => {
                    return Err(VolumeError::RecursiveReadOnly(format!(
                        "volumeMount {:?}: recursiveReadOnly {mode} needs readOnly",
                        mount.name
                    )))
                }
                Some(other) => {
                    return Err(VolumeError::RecursiveReadOnly(format!(
                        "unknown recursive read-only mode {other:?}"
                    )))
                }
            }
            let destination = if mount.mount_path.starts_with('/') {
                mount.mount_path.clone()
            } else {
                format!("/{}", mount.mount_path)
            };
            let depth = Path::new(&destination).components().count();
            out.push((
                depth,
                rudder_container::spec::bind_mount(source, destination, read_only),
            ));
        }
        // Parents before children, otherwise in declaration order.
        out.sort_by_key(|(depth, _)| *depth);
        Ok(out.into_iter().map(|(_, m)| m).collect())
    }

    /// Unmounts the pod's memory-backed volumes and removes its volume
    /// directories; hostPath and PersistentVolume contents are never touched
    /// (they live outside the pod directory).
    pub async fn teardown(&self, pod_uid: &str) -> Result<(), VolumeError> {
        if pod_uid.is_empty() || pod_uid.contains('/') || pod_uid == "." || pod_uid == ".." {
            return Err(VolumeError::NoPodUid(pod_uid.to_string()));
        }
        let dir = self.pod_volumes_dir(pod_uid);
        let subpaths = self.pod_dir(pod_uid).join("volume-subpaths");
        for root in [&dir, &subpaths] {
            mounts::unmount_all_under(root).map_err(io_err("unmount under", root))?;
            let left = mounts::mounts_under(root).map_err(io_err("read mounts under", root))?;
            if let Some(busy) = left.first() {
                return Err(VolumeError::Io {
                    op: "unmount",
                    path: busy.clone(),
                    source: io::Error::new(io::ErrorKind::ResourceBusy, "still mounted"),
                });
            }
            match fs::remove_dir_all(root) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err("remove", root)(err)),
            }
        }
        self.tokens
            .lock()
            .expect("token cache lock")
            .retain(|key, _| key.pod_uid != pod_uid);
        Ok(())
    }
}

/// `ExpandContainerVolumeMounts`: every referenced variable must have a
/// non-empty value.
fn expand_sub_path_expr(expr: &str, env: &[(String, String)]) -> Result<String, VolumeError> {
    let map: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let missing = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let expanded = expand(expr, |name| match map.get(name) {
        Some(value) if !value.is_empty() => Some((*value).to_string()),
        _ => {
            missing.borrow_mut().insert(name.to_string());
            Some(String::new())
        }
    });
    let missing = missing.into_inner();
    if !missing.is_empty() {
        return Err(VolumeError::SubPathExpr(
            missing.into_iter().collect::<Vec<_>>().join(", "),
        ));
    }
    Ok(expanded)
}

/// Writes a projected payload, applying fsGroup ownership before the swap.
fn write_projection(
    dir: &Path,
    payload: &Payload,
    fs_group: Option<i64>,
    change_policy: Option<&str>,
) -> Result<(), String> {
    let writer = AtomicWriter::new(dir);
    let set_perms = |target: &Path| set_volume_ownership(target, fs_group, change_policy, true);
    let hook: Option<atomic_writer::SetPerms<'_>> = if fs_group.is_some() {
        Some(&set_perms)
    } else {
        None
    };
    writer
        .write(payload, hook)
        .map(|_| ())
        .map_err(|err| err.to_string())
}

/// `SetVolumeOwnership`: with an fsGroup, everything in the volume gets that
/// group, files `g+r` (and `g+w` unless read-only), directories also `g+x`
/// and setgid. `OnRootMismatch` skips the walk when the root is already
/// right.
pub fn set_volume_ownership(
    dir: &Path,
    fs_group: Option<i64>,
    change_policy: Option<&str>,
    read_only: bool,
) -> io::Result<()> {
    let Some(group) = fs_group else {
        return Ok(());
    };
    let gid = u32::try_from(group)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "fsGroup out of range"))?;
    let file_mask: u32 = if read_only { 0o440 } else { 0o660 };
    let dir_mask = file_mask | 0o2000 | 0o110;
    if change_policy == Some("OnRootMismatch") {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(dir)?;
        if meta.gid() == gid && meta.mode() & dir_mask == dir_mask {
            return Ok(());
        }
    }
    fn walk(path: &Path, gid: u32, file_mask: u32, dir_mask: u32) -> io::Result<()> {
        let meta = fs::symlink_metadata(path)?;
        std::os::unix::fs::lchown(path, None, Some(gid))?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            fs::set_permissions(path, fs::Permissions::from_mode(mode | dir_mask))?;
            for entry in fs::read_dir(path)? {
                walk(&entry?.path(), gid, file_mask, dir_mask)?;
            }
        } else {
            fs::set_permissions(path, fs::Permissions::from_mode(mode | file_mask))?;
        }
        Ok(())
    }
    walk(dir, gid, file_mask, dir_mask)
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
