//! What the kubelet hands the runtime: a pod's sandbox config and each
//! container's config, derived from the Pod as Kubernetes defines.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use rudder_apimachinery::resources::Amount;
use rudder_cri::cri::{
    Capability, ContainerConfig, ContainerMetadata, DnsConfig, ImageSpec, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, Seccomp,
};

/// Annotation the agent keeps on its sandboxes: the pod's uid is a label
/// already; this records which pod object (resourceVersion-independent).
pub const LABEL_MANAGED: &str = "io.rudder.agent.managed";

fn quantity(
    list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    name: &str,
) -> Option<Amount> {
    list.and_then(|l| l.get(name))
        .and_then(|q| Amount::parse(&q.0))
}

/// CPU in millicores of a container's requests or limits.
pub fn cpu_millis(container: &Container, limits: bool) -> Option<i64> {
    let resources = container.resources.as_ref()?;
    let list = if limits {
        resources.limits.as_ref()
    } else {
        resources.requests.as_ref()
    };
    quantity(list, "cpu").map(|a| a.milli_value() as i64)
}

/// Memory in bytes of a container's requests or limits.
pub fn memory_bytes(container: &Container, limits: bool) -> Option<i64> {
    let resources = container.resources.as_ref()?;
    let list = if limits {
        resources.limits.as_ref()
    } else {
        resources.requests.as_ref()
    };
    quantity(list, "memory").map(|a| a.value() as i64)
}

/// The pod's QoS class as the API server computed it (status.qosClass).
pub fn qos_class(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.qos_class.as_deref())
        .unwrap_or("BestEffort")
}

/// The kubelet's cgroup settings for a container: shares from the CPU
/// request (at least 2), a CFS quota from the CPU limit over 100 ms, the
/// memory limit, and the OOM score by QoS class.
pub fn container_resources(
    pod: &Pod,
    container: &Container,
    node_memory: i64,
) -> LinuxContainerResources {
    let request = cpu_millis(container, false).or_else(|| cpu_millis(container, true));
    let shares = request.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2);
    let (quota, period) = match cpu_millis(container, true) {
        // The kubelet's minimum quota is 1 ms.
        Some(limit) => ((limit * 100_000 / 1000).max(1000), 100_000),
        None => (0, 0),
    };
    let oom_score_adj = match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let request = memory_bytes(container, false).unwrap_or(0);
            if node_memory <= 0 {
                999
            } else {
                (1000 - 1000 * request / node_memory).clamp(2, 999)
            }
        }
    };
    LinuxContainerResources {
        cpu_period: period,
        cpu_quota: quota,
        cpu_shares: shares,
        memory_limit_in_bytes: memory_bytes(container, true).unwrap_or(0),
        oom_score_adj,
        cpuset_cpus: String::new(),
    }
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn namespace(pod: &Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

pub fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// The pod's hostname: spec.hostname, else its name (at most 63 characters).
pub fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| name(pod));
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// The sandbox config of a pod; `dns` is its resolver configuration
/// ([`super::resolv::pod_dns`]).
pub fn sandbox_config(
    pod: &Pod,
    log_directory: &str,
    attempt: u32,
    dns: DnsConfig,
) -> PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let pid = if spec.host_pid == Some(true) {
        NamespaceMode::Node
    } else if spec.share_process_namespace == Some(true) {
        NamespaceMode::Pod
    } else {
        NamespaceMode::Container
    };
    // The kubelet labels every sandbox with the pod's identity, so that it
    // finds them again (after a restart too) by listing the runtime.
    let mut labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(rudder_cri::cri::LABEL_POD_NAME.into(), name(pod));
    labels.insert(rudder_cri::cri::LABEL_POD_NAMESPACE.into(), namespace(pod));
    labels.insert(rudder_cri::cri::LABEL_POD_UID.into(), uid(pod));
    let mut sysctls = BTreeMap::new();
    if let Some(sc) = &spec.security_context {
        for s in sc.sysctls.clone().unwrap_or_default() {
            sysctls.insert(s.name, s.value);
        }
    }
    let qos_resources = pod_resources_for_qos(pod);
    PodSandboxConfig {
        metadata: PodSandboxMetadata {
            name: name(pod),
            uid: uid(pod),
            namespace: namespace(pod),
            attempt,
        },
        hostname: hostname(pod),
        log_directory: log_directory.to_string(),
        dns_config: Some(dns),
        labels,
        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        linux: LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: LinuxSandboxSecurityContext {
                namespace_options: NamespaceOption {
                    network: if spec.host_network == Some(true) {
                        NamespaceMode::Node
                    } else {
                        NamespaceMode::Pod
                    },
                    pid,
                    ipc: if spec.host_ipc == Some(true) {
                        NamespaceMode::Node
                    } else {
                        NamespaceMode::Pod
                    },
                },
                privileged: spec
                    .containers
                    .iter()
                    .any(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true)),
            },
            sysctls,
            resources: Some(qos_resources),
        },
    }
}

/// Resources whose QoS class is the pod's, for the sandbox's cgroup parent.
fn pod_resources_for_qos(pod: &Pod) -> LinuxContainerResources {
    match qos_class(pod) {
        "Guaranteed" => LinuxContainerResources {
            cpu_shares: 1024,
            cpu_quota: 100_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 1,
            ..Default::default()
        },
        "Burstable" => LinuxContainerResources {
            cpu_shares: 1024,
            ..Default::default()
        },
        _ => LinuxContainerResources::default(),
    }
}

/// A container's config, given its resolved environment and mounts.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    envs: Vec<(String, String)>,
    mounts: Vec<Mount>,
    node_memory: i64,
) -> ContainerConfig {
    let pod_sc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let sc = container.security_context.clone().unwrap_or_default();
    let capabilities = sc.capabilities.clone().unwrap_or_default();
    let seccomp_profile = sc
        .seccomp_profile
        .clone()
        .or(pod_sc.seccomp_profile.clone());
    let seccomp = match seccomp_profile {
        Some(p) if p.type_ == "RuntimeDefault" => Seccomp::RuntimeDefault,
        Some(p) if p.type_ == "Localhost" => {
            Seccomp::Localhost(p.localhost_profile.unwrap_or_default())
        }
        // Kubernetes' default without --seccomp-default: Unconfined.
        _ => Seccomp::Unconfined,
    };
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_MANAGED.into(), "true".into());
    ContainerConfig {
        metadata: ContainerMetadata {
            name: container.name.clone(),
            attempt,
        },
        image: ImageSpec::new(container.image.clone().unwrap_or_default()),
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: envs
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect(),
        mounts,
        labels,
        annotations: BTreeMap::new(),
        log_path: format!("{}/{attempt}.log", container.name),
        stdin: container.stdin == Some(true),
        stdin_once: container.stdin_once == Some(true),
        linux: LinuxContainerConfig {
            resources: container_resources(pod, container, node_memory),
            security_context: LinuxContainerSecurityContext {
                capabilities: Capability {
                    add_capabilities: capabilities.add.unwrap_or_default(),
                    drop_capabilities: capabilities.drop.unwrap_or_default(),
                },
                privileged: sc.privileged == Some(true),
                run_as_user: sc.run_as_user.or(pod_sc.run_as_user),
                run_as_group: sc.run_as_group.or(pod_sc.run_as_group),
                supplemental_groups: pod_sc.supplemental_groups.clone().unwrap_or_default(),
                readonly_rootfs: sc.read_only_root_filesystem == Some(true),
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                seccomp,
            },
        },
    }
}

/// The kubelet-managed /etc/hosts of a pod.
pub fn etc_hosts(pod: &Pod, pod_ip: Option<&str>) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let spec = pod.spec.clone().unwrap_or_default();
    if let Some(ip) = pod_ip {
        let host = hostname(pod);
        match &spec.subdomain {
            Some(sub) if !sub.is_empty() => {
                out += &format!(
                    "{ip}\t{host}.{sub}.{}.svc.cluster.local\t{host}\n",
                    namespace(pod)
                );
            }
            _ => out += &format!("{ip}\t{host}\n"),
        }
    }
    let aliases = spec.host_aliases.clone().unwrap_or_default();
    if !aliases.is_empty() {
        out += "\n# Entries added by HostAliases.\n";
        for alias in aliases {
            out += &format!(
                "{}\t{}\n",
                alias.ip,
                alias.hostnames.unwrap_or_default().join("\t")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn cpu_and_memory_become_cgroup_settings() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}, "requests": {"cpu": "200m", "memory": "64Mi"}}}]},
            "status": {"qosClass": "Guaranteed"}
        }));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let r = container_resources(&p, c, 1 << 30);
        assert_eq!(
            (r.cpu_quota, r.cpu_period, r.cpu_shares),
            (20_000, 100_000, 204)
        );
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        assert_eq!(r.oom_score_adj, -997);
    }

    #[test]
    fn hosts_file_has_the_pod_and_its_aliases() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "config", "namespace": "node", "uid": "u"},
            "spec": {"containers": [], "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["db.internal"]}]}
        }));
        let hosts = etc_hosts(&p, Some("10.42.0.5"));
        assert!(hosts.contains("10.42.0.5\tconfig\n"));
        assert!(hosts.contains("10.1.2.3\tdb.internal\n"));
    }
}
