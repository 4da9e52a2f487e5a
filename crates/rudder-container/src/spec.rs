//! Building OCI runtime specs for containers the way Kubernetes and
//! containerd do: the default mounts, masked and read-only paths,
//! capabilities and seccomp profile, and the command line and environment
//! merged from the image and the container's own settings.

use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilities, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    LinuxSeccomp, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, User,
};

use crate::error::{ContainerError, Result};

/// The command Kubernetes runs: `command` replaces the image's Entrypoint
/// (and then its Cmd is ignored), `args` replace its Cmd.
pub fn command_line(
    entrypoint: &[String],
    cmd: &[String],
    command: &[String],
    args: &[String],
) -> Vec<String> {
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.iter().chain(args).cloned().collect(),
        (true, false) => entrypoint.iter().chain(args).cloned().collect(),
        (true, true) => entrypoint.iter().chain(cmd).cloned().collect(),
    }
}

/// The image's environment with the container's variables set over it
/// (same name: the container's wins, keeping the image's position).
pub fn merge_env(image: &[String], container: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<String> = image.to_vec();
    for (name, value) in container {
        let entry = format!("{name}={value}");
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(name.as_str()))
        {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={}", crate::init::DEFAULT_PATH));
    }
    env
}

/// Limits for the container's cgroup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// Everything that varies between containers.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    /// The rootfs, absolute or relative to the bundle.
    pub root: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub hostname: Option<String>,
    pub capabilities: LinuxCapabilities,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub no_new_privileges: bool,
    pub seccomp: Option<LinuxSeccomp>,
    /// Mounts added after the defaults (volumes, /etc/hosts, ...).
    pub mounts: Vec<Mount>,
    /// Namespaces: a path joins an existing one (the pod sandbox's).
    pub namespaces: Vec<LinuxNamespace>,
    pub cgroups_path: Option<PathBuf>,
    pub limits: Limits,
    pub oom_score_adj: Option<i32>,
}

impl ContainerConfig {
    /// A container with its own namespaces of every kind except user and
    /// time, the default capabilities and RuntimeDefault seccomp.
    pub fn new(args: Vec<String>) -> ContainerConfig {
        ContainerConfig {
            root: "rootfs".into(),
            args,
            env: vec![format!("PATH={}", crate::init::DEFAULT_PATH)],
            cwd: "/".into(),
            user: User::default(),
            hostname: None,
            capabilities: crate::process::capabilities::container_capabilities(&[], &[], false)
                .expect("the default capabilities are valid"),
            privileged: false,
            readonly_rootfs: false,
            no_new_privileges: false,
            seccomp: Some(crate::process::seccomp::runtime_default()),
            mounts: Vec::new(),
            namespaces: [
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Network,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Cgroup,
            ]
            .into_iter()
            .map(|typ| namespace(typ, None))
            .collect(),
            cgroups_path: None,
            limits: Limits::default(),
            oom_score_adj: None,
        }
    }
}

pub fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let builder = LinuxNamespaceBuilder::default().typ(typ);
    match path {
        Some(path) => builder.path(path),
        None => builder,
    }
    .build()
    .expect("a namespace has only a type and a path")
}

/// A bind mount of a host path (`ro` for read-only).
pub fn bind_mount(
    source: impl Into<PathBuf>,
    destination: impl Into<PathBuf>,
    readonly: bool,
) -> Mount {
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    if readonly {
        options.push("ro".into());
    }
    MountBuilder::default()
        .destination(destination.into())
        .typ("bind")
        .source(source.into())
        .options(options)
        .build()
        .expect("a bind mount has all its fields")
}

fn invalid(reason: impl std::fmt::Display) -> ContainerError {
    ContainerError::InvalidSpec {
        path: "config.json".into(),
        reason: reason.to_string(),
    }
}

/// The OCI spec for `config`.
pub fn build(config: &ContainerConfig) -> Result<Spec> {
    let defaults = Spec::default();
    let mut mounts: Vec<Mount> = defaults.mounts().clone().unwrap_or_default();
    // Kubernetes containers get a writable /dev/shm of 64 MiB, and
    // privileged ones a writable /sys.
    for m in &mut mounts {
        if m.destination() == &PathBuf::from("/sys") && config.privileged {
            let options = m
                .options()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|o| o != "ro")
                .collect();
            m.set_options(Some(options));
        }
    }
    let cgroup_mount = MountBuilder::default()
        .destination("/sys/fs/cgroup")
        .typ("cgroup")
        .source("cgroup")
        .options(
            [
                "nosuid",
                "noexec",
                "nodev",
                "relatime",
                if config.privileged { "rw" } else { "ro" },
            ]
            .map(String::from)
            .to_vec(),
        )
        .build()
        .map_err(invalid)?;
    mounts.retain(|m| m.destination() != &PathBuf::from("/sys/fs/cgroup"));
    mounts.push(cgroup_mount);
    mounts.extend(config.mounts.iter().cloned());

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(config.user.clone())
        .args(config.args.clone())
        .env(config.env.clone())
        .cwd(if config.cwd.is_empty() {
            "/".to_string()
        } else {
            config.cwd.clone()
        })
        .capabilities(config.capabilities.clone())
        .no_new_privileges(config.no_new_privileges)
        .build()
        .map_err(invalid)?;
    let mut process = process;
    process.set_rlimits(None);
    process.set_oom_score_adj(config.oom_score_adj);

    let mut resources = LinuxResourcesBuilder::default();
    let limits = &config.limits;
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(v) = limits.cpu_shares {
        cpu = cpu.shares(v);
    }
    if let Some(v) = limits.cpu_quota {
        cpu = cpu.quota(v);
    }
    if let Some(v) = limits.cpu_period {
        cpu = cpu.period(v);
    }
    if let Some(v) = &limits.cpuset_cpus {
        cpu = cpu.cpus(v.clone());
    }
    resources = resources.cpu(cpu.build().map_err(invalid)?);
    if let Some(limit) = limits.memory_limit {
        // No swap beyond the memory limit, as the kubelet configures.
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .map_err(invalid)?,
        );
    }
    if let Some(limit) = limits.pids_limit {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(invalid)?,
        );
    }

    let default_linux = defaults.linux().clone().unwrap_or_default();
    let mut linux = LinuxBuilder::default()
        .namespaces(config.namespaces.clone())
        .resources(resources.build().map_err(invalid)?)
        .build()
        .map_err(invalid)?;
    // The builder starts from the spec's defaults: set (or clear) the
    // confinement explicitly.
    if config.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
        linux.set_seccomp(None);
    } else {
        linux.set_masked_paths(default_linux.masked_paths().clone());
        linux.set_readonly_paths(default_linux.readonly_paths().clone());
        linux.set_seccomp(config.seccomp.clone());
    }
    linux.set_cgroups_path(config.cgroups_path.clone());

    let mut spec = Spec::default();
    spec.set_root(Some(
        RootBuilder::default()
            .path(config.root.clone())
            .readonly(config.readonly_rootfs)
            .build()
            .map_err(invalid)?,
    ));
    spec.set_hostname(config.hostname.clone());
    spec.set_mounts(Some(mounts));
    spec.set_process(Some(process));
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_and_args_merge_as_kubernetes_defines() {
        let (ep, cmd) = (v(&["/ep"]), v(&["cmd-arg"]));
        assert_eq!(command_line(&ep, &cmd, &[], &[]), v(&["/ep", "cmd-arg"]));
        assert_eq!(command_line(&ep, &cmd, &[], &v(&["a"])), v(&["/ep", "a"]));
        assert_eq!(command_line(&ep, &cmd, &v(&["/c"]), &[]), v(&["/c"]));
        assert_eq!(
            command_line(&ep, &cmd, &v(&["/c"]), &v(&["a"])),
            v(&["/c", "a"])
        );
        assert_eq!(command_line(&[], &cmd, &[], &[]), v(&["cmd-arg"]));
    }

    #[test]
    fn container_env_overrides_the_image_and_path_is_always_set() {
        let env = merge_env(
            &v(&["A=1", "B=2"]),
            &[("B".into(), "3".into()), ("C".into(), "4".into())],
        );
        assert_eq!(env[0], format!("PATH={}", crate::init::DEFAULT_PATH));
        assert_eq!(&env[1..], &v(&["A=1", "B=3", "C=4"])[..]);
        let with_path = merge_env(&v(&["PATH=/x"]), &[]);
        assert_eq!(with_path, v(&["PATH=/x"]));
    }

    #[test]
    fn specs_carry_limits_and_confinement_unless_privileged() {
        let mut config = ContainerConfig::new(v(&["/bin/true"]));
        config.limits.memory_limit = Some(64 << 20);
        config.limits.cpu_quota = Some(50_000);
        config.limits.cpu_period = Some(100_000);
        config.cgroups_path = Some("rudder/c1".into());
        let spec = build(&config).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert!(linux.seccomp().is_some());
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/kcore"));
        let json = serde_json::to_string(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);

        config.privileged = true;
        let privileged = build(&config).unwrap();
        let linux = privileged.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert!(linux.masked_paths().is_none());
        let sys = privileged
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/sys"))
            .unwrap();
        assert!(!sys.options().as_ref().unwrap().contains(&"ro".to_string()));
    }
}
