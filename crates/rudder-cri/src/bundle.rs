//! OCI bundles made from images: an overlayfs rootfs over the image's
//! unpacked layers with a writable upper dir per container, the "init
//! layer" files (`/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`) bound
//! in, and a `config.json` merging the image's defaults with the container's
//! settings as Kubernetes defines.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxSeccomp, Mount};
use rudder_container::spec::{self, ContainerConfig, Limits};

use crate::error::{io, CriError, Result};

/// How the container is confined by seccomp.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Seccomp {
    /// Rudder's RuntimeDefault profile (Kubernetes' `RuntimeDefault`).
    #[default]
    RuntimeDefault,
    Unconfined,
    /// A profile given in full (Kubernetes' `Localhost`, already read).
    Profile(LinuxSeccomp),
}

/// What a container is made of.
#[derive(Clone, Debug)]
pub struct BundleRequest {
    pub id: String,
    pub image: rudder_image::Image,
    /// Kubernetes' `command` and `args` (empty: the image's).
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    pub hostname: String,
    /// `/etc/resolv.conf` for the container (None: the host's).
    pub resolv_conf: Option<String>,
    /// `/etc/hosts` for the container (None: localhost and the hostname).
    pub hosts: Option<String>,
    pub mounts: Vec<Mount>,
    pub limits: Limits,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub no_new_privileges: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub seccomp: Seccomp,
    /// None: a namespace of each kind of its own.
    pub namespaces: Option<Vec<LinuxNamespace>>,
    pub cgroups_path: Option<PathBuf>,
    pub oom_score_adj: Option<i32>,
}

impl BundleRequest {
    /// A container of `image` with the image's defaults.
    pub fn new(id: impl Into<String>, image: rudder_image::Image) -> BundleRequest {
        let id = id.into();
        BundleRequest {
            hostname: id.chars().take(12).collect(),
            id,
            image,
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            run_as_user: None,
            run_as_group: None,
            supplemental_groups: Vec::new(),
            resolv_conf: None,
            hosts: None,
            mounts: Vec::new(),
            limits: Limits::default(),
            privileged: false,
            readonly_rootfs: false,
            no_new_privileges: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            seccomp: Seccomp::RuntimeDefault,
            namespaces: None,
            cgroups_path: None,
            oom_score_adj: None,
        }
    }
}

/// The bundles of a node, one directory each: `config.json`, `rootfs/`
/// (the overlay mount), `upper/` and `work/` (the container's writable
/// layer) and the init-layer files.
#[derive(Clone, Debug)]
pub struct Bundles {
    root: PathBuf,
}

impl Bundles {
    pub fn new(root: impl Into<PathBuf>) -> Bundles {
        Bundles { root: root.into() }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Builds the bundle; on failure nothing of it is left.
    pub fn prepare(&self, request: &BundleRequest) -> Result<PathBuf> {
        let dir = self.dir(&request.id);
        fs::create_dir_all(&self.root).map_err(io(format!("creating {}", self.root.display())))?;
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(CriError::Invalid(format!(
                    "a container named {:?} already exists",
                    request.id
                )))
            }
            Err(e) => return Err(io(format!("creating {}", dir.display()))(e)),
        }
        let result = self.fill(&dir, request);
        if result.is_err() {
            let _ = rudder_container::rootfs::unmount(&dir.join("rootfs"));
            let _ = fs::remove_dir_all(&dir);
        }
        result.map(|()| dir)
    }

    fn fill(&self, dir: &Path, request: &BundleRequest) -> Result<()> {
        let rootfs = dir.join("rootfs");
        rudder_container::rootfs::mount_overlay(
            &request.image.layer_dirs,
            &dir.join("upper"),
            &dir.join("work"),
            &rootfs,
        )?;
        let defaults = &request.image.config.config;

        let hostname_file = dir.join("hostname");
        write(&hostname_file, &format!("{}\n", request.hostname))?;
        let hosts_file = dir.join("hosts");
        let hosts = request
            .hosts
            .clone()
            .unwrap_or_else(|| default_hosts(&request.hostname));
        write(&hosts_file, &hosts)?;
        let resolv_file = dir.join("resolv.conf");
        let resolv = match &request.resolv_conf {
            Some(resolv) => resolv.clone(),
            None => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        write(&resolv_file, &resolv)?;

        let user = rudder_container::process::user::resolve_user(
            &rootfs,
            defaults.user.as_deref(),
            request.run_as_user,
            request.run_as_group,
            &request.supplemental_groups,
        )
        .map_err(|e| CriError::Invalid(format!("container {}: {e}", request.id)))?;

        let args = spec::command_line(
            defaults.entrypoint.as_deref().unwrap_or_default(),
            defaults.cmd.as_deref().unwrap_or_default(),
            &request.command,
            &request.args,
        );
        if args.is_empty() {
            return Err(CriError::Invalid(format!(
                "container {}: no command specified: the image {} has no Entrypoint or Cmd",
                request.id, request.image.record.name
            )));
        }
        let mut env_overrides = vec![("HOSTNAME".to_string(), request.hostname.clone())];
        env_overrides.extend(request.env.iter().cloned());
        let env = spec::merge_env(defaults.env.as_deref().unwrap_or_default(), &env_overrides);

        let mut config = ContainerConfig::new(args);
        config.root = rootfs.clone();
        config.env = env;
        config.cwd = request
            .working_dir
            .clone()
            .or_else(|| defaults.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        config.user = user;
        config.hostname = Some(request.hostname.clone());
        config.capabilities = rudder_container::process::capabilities::container_capabilities(
            &request.cap_add,
            &request.cap_drop,
            request.privileged,
        )
        .map_err(|e| CriError::Invalid(format!("container {}: {e}", request.id)))?;
        config.privileged = request.privileged;
        config.readonly_rootfs = request.readonly_rootfs;
        config.no_new_privileges = request.no_new_privileges;
        config.seccomp = match &request.seccomp {
            Seccomp::RuntimeDefault if !request.privileged => {
                Some(rudder_container::process::seccomp::runtime_default())
            }
            Seccomp::Profile(profile) => Some(profile.clone()),
            _ => None,
        };
        if let Some(namespaces) = &request.namespaces {
            config.namespaces = namespaces.clone();
        }
        config.cgroups_path = request.cgroups_path.clone();
        config.limits = request.limits.clone();
        config.oom_score_adj = request.oom_score_adj;
        config.mounts = vec![
            spec::bind_mount(&hostname_file, "/etc/hostname", request.readonly_rootfs),
            spec::bind_mount(&hosts_file, "/etc/hosts", request.readonly_rootfs),
            spec::bind_mount(&resolv_file, "/etc/resolv.conf", request.readonly_rootfs),
        ];
        config.mounts.extend(request.mounts.iter().cloned());

        let spec = spec::build(&config)?;
        spec.save(dir.join("config.json"))
            .map_err(|e| CriError::Invalid(format!("writing config.json: {e}")))?;
        Ok(())
    }

    /// Unmounts and removes a bundle (absent: nothing to do).
    pub fn remove(&self, id: &str) -> Result<()> {
        let dir = self.dir(id);
        if !dir.exists() {
            return Ok(());
        }
        rudder_container::rootfs::unmount(&dir.join("rootfs"))?;
        fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))
    }

    /// Ids of the bundles present.
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    }
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).map_err(io(format!("writing {}", path.display())))
}

/// `/etc/hosts` as the kubelet writes it for a pod without host aliases.
pub fn default_hosts(hostname: &str) -> String {
    format!(
        "# Managed by Rudder.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
         127.0.1.1\t{hostname}\n"
    )
}
