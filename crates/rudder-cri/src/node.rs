//! One node's runtime: its image store, its containers and their bundles,
//! all under one data directory (`/var/lib/rudder/agent` by default).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use rudder_container::{CreateOptions, Runtime, State, Status};
use rudder_image::ImageStore;

use crate::bundle::{BundleRequest, Bundles};
use crate::cri::{
    self, BoxFuture, FilesystemUsage, ImageFilter, ImageService, ImageSpec, RuntimeService,
};
use crate::error::{io, CriError, Result};
use crate::sandbox::{disk_usage, Sandboxes};
use rudder_image::{ImageRecord, RegistriesConfig};

/// Labels the runtime keeps on each container.
pub const LABEL_IMAGE: &str = "io.rudder.image";
pub const LABEL_IMAGE_ID: &str = "io.rudder.image-id";
pub const LABEL_STOP_SIGNAL: &str = "io.rudder.stop-signal";
pub const LABEL_COMMAND: &str = "io.rudder.command";

/// Where the node's logs go unless the caller says otherwise.
pub fn default_log_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("logs").join(format!("{id}.log"))
}

#[derive(Clone, Debug)]
pub struct NodeRuntime {
    data_dir: PathBuf,
    images: ImageStore,
    containers: Runtime,
    bundles: Bundles,
    sandboxes: Sandboxes,
    /// The `rudder` executable (shims, and the pod sandboxes' pause process).
    binary: PathBuf,
    /// Mirrors and credentials for [`ImageService::pull_image`].
    registries: RegistriesConfig,
}

/// How to run a container made from a [`BundleRequest`].
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub log_path: Option<PathBuf>,
    pub stdin: bool,
    /// See `rudder_container::runtime::RunOptions::stdin_keep_open`.
    pub stdin_keep_open: bool,
    pub labels: BTreeMap<String, String>,
}

impl NodeRuntime {
    /// `binary` is the `rudder` executable the shims run as.
    pub fn open(data_dir: &Path, binary: PathBuf) -> Result<NodeRuntime> {
        let images = ImageStore::open(&rudder_image::store_dir(data_dir))?;
        Ok(NodeRuntime {
            data_dir: data_dir.to_path_buf(),
            images,
            containers: Runtime::new(data_dir.join("containers"), binary.clone()),
            bundles: Bundles::new(data_dir.join("bundles")),
            sandboxes: Sandboxes::new(data_dir.join("sandboxes")),
            binary,
            registries: RegistriesConfig::default(),
        })
    }

    /// Pulls through [`ImageService::pull_image`] use these mirrors and
    /// credentials (default: none, anonymous).
    pub fn with_registries(mut self, registries: RegistriesConfig) -> NodeRuntime {
        self.registries = registries;
        self
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn sandboxes(&self) -> &Sandboxes {
        &self.sandboxes
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn containers(&self) -> &Runtime {
        &self.containers
    }

    pub fn bundles(&self) -> &Bundles {
        &self.bundles
    }

    /// Builds the bundle and records the container (not started).
    pub fn create_container(&self, request: &BundleRequest, options: RunOptions) -> Result<State> {
        let bundle = self.bundles.prepare(request)?;
        let mut labels = options.labels;
        labels.insert(LABEL_IMAGE.into(), request.image.record.name.clone());
        labels.insert(
            LABEL_IMAGE_ID.into(),
            request.image.record.config_digest.clone(),
        );
        if let Some(signal) = &request.image.config.config.stop_signal {
            labels.insert(LABEL_STOP_SIGNAL.into(), signal.clone());
        }
        let created = self.containers.create(
            &request.id,
            CreateOptions {
                bundle,
                log_path: Some(
                    options
                        .log_path
                        .unwrap_or_else(|| default_log_path(&self.data_dir, &request.id)),
                ),
                log_max_size: None,
                log_max_files: None,
                stdin: options.stdin,
                stdin_keep_open: options.stdin_keep_open,
                labels,
            },
        );
        if created.is_err() {
            let _ = self.bundles.remove(&request.id);
        }
        Ok(created?)
    }

    /// Stops a container with its image's stop signal (SIGTERM by
    /// default), then SIGKILL after `timeout`.
    pub fn stop_container(&self, id: &str, timeout: Duration) -> Result<State> {
        let state = self.containers.state(id)?;
        let signal = state
            .labels
            .get(LABEL_STOP_SIGNAL)
            .and_then(|s| parse_signal(s))
            .unwrap_or(Signal::SIGTERM);
        Ok(self.containers.stop(id, signal, timeout)?)
    }

    /// Removes a container, its cgroup, bundle (rootfs and writable layer)
    /// and log.
    pub fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        let state = self.containers.state(id)?;
        self.containers.delete(id, force)?;
        self.bundles.remove(id)?;
        if let Some(log) = state.log_path {
            if log.starts_with(self.data_dir.join("logs")) {
                let _ = fs::remove_file(&log);
            }
        }
        Ok(())
    }

    /// Removes the images `reference` names unless a container uses one.
    pub fn remove_image(
        &self,
        reference: &str,
    ) -> Result<(Vec<rudder_image::ImageRecord>, rudder_image::GcReport)> {
        let record = self.images.record(reference)?;
        let users: Vec<String> = self
            .containers
            .list()?
            .into_iter()
            .filter(|c| c.labels.get(LABEL_IMAGE_ID) == Some(&record.config_digest))
            .map(|c| c.id)
            .collect();
        if !users.is_empty() {
            return Err(CriError::Invalid(format!(
                "image {} is in use by container(s) {}: remove them first",
                record.name,
                users.join(", ")
            )));
        }
        Ok(self.images.remove(reference)?)
    }

    /// Ids of running containers.
    pub fn running(&self) -> Result<Vec<String>> {
        Ok(self
            .containers
            .list()?
            .into_iter()
            .filter(|c| c.status == Status::Running)
            .map(|c| c.id)
            .collect())
    }

    /// Kills and removes every container, unmounts what is mounted under
    /// the data directory and removes it, with the images: `rudder reset`.
    pub fn reset(&self) -> Result<ResetReport> {
        let mut report = ResetReport::default();
        // Pods first: removing them also removes their cgroups.
        for id in self.sandboxes.ids() {
            if let Err(e) = RuntimeService::remove_pod_sandbox(self, &id) {
                report.errors.push(format!("pod sandbox {id}: {e}"));
            }
        }
        for state in self.containers.list()? {
            match self.remove_container(&state.id, true) {
                Ok(()) => report.containers_removed += 1,
                Err(e) => report.errors.push(format!("container {}: {e}", state.id)),
            }
        }
        for id in self.bundles.list() {
            if let Err(e) = self.bundles.remove(&id) {
                report.errors.push(format!("bundle {id}: {e}"));
            }
        }
        // Anything still mounted below the data dir (a crashed run's
        // rootfs), deepest first.
        let mut mounts = mounts_under(&self.data_dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for mount in mounts {
            match rudder_container::rootfs::unmount(&mount) {
                Ok(()) => report.unmounted += 1,
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        if report.errors.is_empty() {
            fs::remove_dir_all(&self.data_dir)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(io(format!("removing {}", self.data_dir.display())))?;
        }
        Ok(report)
    }
}

/// `registry/repo:tag` -> `registry/repo` (a digest reference keeps its
/// repository too).
fn repository_of(name: &str) -> &str {
    if let Some((repo, _)) = name.split_once('@') {
        return repo;
    }
    match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    }
}

fn is_digest(name: &str) -> bool {
    name.starts_with("sha256:")
}

/// The CRI images of the store: one per image id (config digest), with
/// every name it has.
fn cri_images(records: Vec<ImageRecord>) -> Vec<cri::Image> {
    let mut by_id: BTreeMap<String, cri::Image> = BTreeMap::new();
    for record in records {
        let image = by_id
            .entry(record.config_digest.clone())
            .or_insert_with(|| cri::Image {
                id: record.config_digest.clone(),
                size: record.size,
                ..Default::default()
            });
        if !is_digest(&record.name) && !record.name.contains('@') {
            image.repo_tags.push(record.name.clone());
        }
        if !is_digest(&record.name) {
            let repo_digest = format!("{}@{}", repository_of(&record.name), record.digest);
            if !image.repo_digests.contains(&repo_digest) {
                image.repo_digests.push(repo_digest);
            }
        }
    }
    by_id.into_values().collect()
}

impl NodeRuntime {
    /// The store's names for `spec`: its own, or every name of the image
    /// whose id (config digest) it is.
    fn image_names(&self, spec: &ImageSpec) -> Result<Vec<String>> {
        let records = self.images.list()?;
        let by_id: Vec<String> = records
            .iter()
            .filter(|r| r.config_digest == spec.image)
            .map(|r| r.name.clone())
            .collect();
        if !by_id.is_empty() {
            return Ok(by_id);
        }
        match self.images.record(&spec.image) {
            Ok(record) => Ok(vec![record.name]),
            Err(rudder_image::Error::ImageNotPresent { .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

impl ImageService for NodeRuntime {
    fn list_images(&self, filter: &ImageFilter) -> Result<Vec<cri::Image>> {
        match &filter.image {
            None => Ok(cri_images(self.images.list()?)),
            Some(spec) => Ok(self.image_status(spec)?.into_iter().collect()),
        }
    }

    fn image_status(&self, spec: &ImageSpec) -> Result<Option<cri::Image>> {
        let names = self.image_names(spec)?;
        let Some(first) = names.first() else {
            return Ok(None);
        };
        let id = self.images.record(first)?.config_digest;
        Ok(cri_images(self.images.list()?)
            .into_iter()
            .find(|image| image.id == id))
    }

    fn pull_image<'a>(
        &'a self,
        spec: &'a ImageSpec,
        auth: Option<&'a cri::AuthConfig>,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let mut registries = self.registries.clone();
            if let Some(auth) = auth {
                // The credentials are for the image's registry (or the one
                // the agent names), over whatever the config says for it.
                let host = if auth.server_address.is_empty() {
                    rudder_image::ImageRef::parse(&spec.image)?
                        .registry()
                        .to_string()
                } else {
                    auth.server_address
                        .trim_start_matches("https://")
                        .trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_string()
                };
                let token = [&auth.identity_token, &auth.registry_token]
                    .into_iter()
                    .find(|t| !t.is_empty())
                    .cloned();
                let host_config = registries.configs.entry(host).or_default();
                let mut credentials = host_config.auth.take().unwrap_or_default();
                credentials.username = Some(auth.username.clone()).filter(|u| !u.is_empty());
                credentials.password = Some(auth.password.clone()).filter(|p| !p.is_empty());
                credentials.auth = Some(auth.auth.clone()).filter(|a| !a.is_empty());
                credentials.token = token;
                host_config.auth = Some(credentials);
            }
            let report = rudder_image::Puller::new(registries)
                .pull(&self.images, &spec.image)
                .await?;
            Ok(report.record.config_digest)
        })
    }

    fn remove_image(&self, spec: &ImageSpec) -> Result<()> {
        for name in self.image_names(spec)? {
            NodeRuntime::remove_image(self, &name)?;
        }
        Ok(())
    }

    fn image_fs_info(&self) -> Result<Vec<FilesystemUsage>> {
        let root = self.images.root();
        let (used_bytes, inodes_used) = disk_usage(root);
        Ok(vec![FilesystemUsage {
            timestamp: i64::try_from(rudder_container::state::now_nanos()).unwrap_or(i64::MAX),
            mountpoint: root.to_string_lossy().into_owned(),
            used_bytes,
            inodes_used,
        }])
    }
}

#[derive(Debug, Default)]
pub struct ResetReport {
    pub containers_removed: usize,
    pub unmounted: usize,
    pub errors: Vec<String>,
}

/// Mount points at or below `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(canonical) = fs::canonicalize(dir) else {
        return Vec::new();
    };
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(&canonical))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.clone().take(3).collect();
            if code.len() == 3 {
                if let Ok(v) = u8::from_str_radix(&code, 8) {
                    out.push(v as char);
                    for _ in 0..3 {
                        chars.next();
                    }
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// `SIGTERM`, `TERM`, `15` -> the signal.
pub fn parse_signal(name: &str) -> Option<Signal> {
    if let Ok(number) = name.parse::<i32>() {
        return Signal::try_from(number).ok();
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGQUIT"), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn repositories_drop_the_tag_but_not_the_port() {
        assert_eq!(
            repository_of("127.0.0.1:5000/busybox:1.35"),
            "127.0.0.1:5000/busybox"
        );
        assert_eq!(
            repository_of("127.0.0.1:5000/busybox"),
            "127.0.0.1:5000/busybox"
        );
        assert_eq!(
            repository_of("docker.io/library/a@sha256:00"),
            "docker.io/library/a"
        );
    }

    #[test]
    fn images_group_their_names_by_id() {
        let record = |name: &str, config: &str| ImageRecord {
            name: name.into(),
            digest: "sha256:m".into(),
            manifest_digest: "sha256:m".into(),
            config_digest: config.into(),
            layers: Vec::new(),
            size: 7,
        };
        let images = cri_images(vec![
            record("r/a:1", "sha256:c1"),
            record("r/a:latest", "sha256:c1"),
            record("r/b:1", "sha256:c2"),
        ]);
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].id, "sha256:c1");
        assert_eq!(images[0].repo_tags, ["r/a:1", "r/a:latest"]);
        assert_eq!(images[0].repo_digests, ["r/a@sha256:m"]);
        assert_eq!(images[0].size, 7);
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
