//! The baseline checks: they stop known privilege escalations while
//! admitting ordinary pods (Kubernetes' `policy/check_*.go`, baseline
//! level). Each returns `None` when the pod is allowed.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{
    containers, containers_phrase, in_user_namespace, is_set, is_true, join_quote, name, pluralize,
    str_of, CheckResult,
};

/// `securityContext.windowsOptions.hostProcess` must not be true, on the
/// pod or any container.
pub(super) fn windows_host_process(_: &Value, spec: &Value) -> Option<CheckResult> {
    let host_process =
        |security_context: &Value| is_true(&security_context["windowsOptions"]["hostProcess"]);
    let bad_containers: Vec<String> = containers(spec)
        .filter(|c| host_process(&c["securityContext"]))
        .map(name)
        .collect();
    let mut setters = Vec::new();
    if host_process(&spec["securityContext"]) {
        setters.push("pod".to_owned());
    }
    if !bad_containers.is_empty() {
        setters.push(containers_phrase(&bad_containers));
    }
    (!setters.is_empty()).then(|| {
        CheckResult::new(
            "hostProcess",
            format!(
                "{} must not set securityContext.windowsOptions.hostProcess=true",
                setters.join(" and ")
            ),
        )
    })
}

/// No host network, PID or IPC namespace.
pub(super) fn host_namespaces(_: &Value, spec: &Value) -> Option<CheckResult> {
    let shared: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|field| is_true(&spec[field]))
        .map(|field| format!("{field}=true"))
        .collect();
    (!shared.is_empty()).then(|| CheckResult::new("host namespaces", shared.join(", ")))
}

/// No privileged container.
pub(super) fn privileged(_: &Value, spec: &Value) -> Option<CheckResult> {
    let bad: Vec<String> = containers(spec)
        .filter(|c| is_true(&c["securityContext"]["privileged"]))
        .map(name)
        .collect();
    (!bad.is_empty()).then(|| {
        CheckResult::new(
            "privileged",
            format!(
                "{} must not set securityContext.privileged=true",
                containers_phrase(&bad)
            ),
        )
    })
}

/// The capabilities container runtimes grant by default: adding these
/// gains nothing, so baseline allows them.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// `capabilities.add` only from the runtime's default set.
pub(super) fn capabilities(_: &Value, spec: &Value) -> Option<CheckResult> {
    let mut bad_containers = Vec::new();
    let mut non_default = BTreeSet::new();
    for c in containers(spec) {
        let added = c["securityContext"]["capabilities"]["add"].as_array();
        let mut valid = true;
        for capability in added.into_iter().flatten().map(str_of) {
            if !DEFAULT_CAPABILITIES.contains(&capability) {
                valid = false;
                non_default.insert(capability);
            }
        }
        if !valid {
            bad_containers.push(name(c));
        }
    }
    (!bad_containers.is_empty()).then(|| {
        CheckResult::new(
            "non-default capabilities",
            format!(
                "{} must not include {} in securityContext.capabilities.add",
                containers_phrase(&bad_containers),
                join_quote(&non_default)
            ),
        )
    })
}

/// No hostPath volume.
pub(super) fn host_path_volumes(_: &Value, spec: &Value) -> Option<CheckResult> {
    let bad: Vec<String> = volumes(spec)
        .filter(|v| is_set(&v["hostPath"]))
        .map(name)
        .collect();
    (!bad.is_empty()).then(|| {
        CheckResult::new(
            "hostPath volumes",
            format!(
                "{} {}",
                pluralize("volume", "volumes", bad.len()),
                join_quote(&bad)
            ),
        )
    })
}

pub(super) fn volumes(spec: &Value) -> impl Iterator<Item = &Value> {
    spec["volumes"].as_array().into_iter().flatten()
}

/// No container port bound on the host.
pub(super) fn host_ports(_: &Value, spec: &Value) -> Option<CheckResult> {
    let mut bad_containers = Vec::new();
    // Kubernetes sorts the ports as strings.
    let mut ports = BTreeSet::new();
    for c in containers(spec) {
        let mut valid = true;
        for port in c["ports"].as_array().into_iter().flatten() {
            match port["hostPort"].as_i64() {
                Some(0) | None => {}
                Some(host_port) => {
                    valid = false;
                    ports.insert(host_port.to_string());
                }
            }
        }
        if !valid {
            bad_containers.push(name(c));
        }
    }
    (!bad_containers.is_empty()).then(|| {
        CheckResult::new(
            "hostPort",
            format!(
                "{} {} {} {}",
                containers_phrase(&bad_containers),
                pluralize("uses", "use", bad_containers.len()),
                pluralize("hostPort", "hostPorts", ports.len()),
                ports.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// Since 1.34: probes and lifecycle handlers must not name a host, which
/// would make the kubelet connect to arbitrary addresses.
pub(super) fn host_probes_and_lifecycle(_: &Value, spec: &Value) -> Option<CheckResult> {
    let mut bad_containers = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for c in containers(spec) {
        let handlers = [
            &c["livenessProbe"],
            &c["readinessProbe"],
            &c["startupProbe"],
            &c["lifecycle"]["postStart"],
            &c["lifecycle"]["preStop"],
        ];
        for handler in handlers {
            for action in ["httpGet", "tcpSocket"] {
                let host = str_of(&handler[action]["host"]);
                if !host.is_empty() {
                    bad_containers.insert(name(c));
                    hosts.insert(host.to_owned());
                }
            }
        }
    }
    (!bad_containers.is_empty()).then(|| {
        CheckResult::new(
            "probe or lifecycle host",
            format!(
                "{} {} {} {} {}",
                pluralize("container", "containers", bad_containers.len()),
                join_quote(&bad_containers),
                pluralize("uses", "use", bad_containers.len()),
                pluralize(
                    "probe or lifecycle host",
                    "probe or lifecycle hosts",
                    hosts.len()
                ),
                join_quote(&hosts)
            ),
        )
    })
}

/// AppArmor: the pod's and containers' `appArmorProfile.type` only
/// `RuntimeDefault` or `Localhost`, and the deprecated
/// `container.apparmor.security.beta.kubernetes.io/*` annotations only
/// `runtime/default`, `localhost/*` or empty.
pub(super) fn app_armor_profile(metadata: &Value, spec: &Value) -> Option<CheckResult> {
    const ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
    let allowed_type = |t: &str| matches!(t, "RuntimeDefault" | "Localhost");
    let mut setters = Vec::new();
    let mut bad_values = BTreeSet::new();

    let pod_profile = &spec["securityContext"]["appArmorProfile"];
    if is_set(pod_profile) && !allowed_type(str_of(&pod_profile["type"])) {
        setters.push("pod".to_owned());
        bad_values.insert(str_of(&pod_profile["type"]).to_owned());
    }
    let mut bad_containers = Vec::new();
    for c in containers(spec) {
        let profile = &c["securityContext"]["appArmorProfile"];
        if is_set(profile) && !allowed_type(str_of(&profile["type"])) {
            bad_containers.push(name(c));
            bad_values.insert(str_of(&profile["type"]).to_owned());
        }
    }
    if !bad_containers.is_empty() {
        setters.push(containers_phrase(&bad_containers));
    }

    let mut bad_annotations: Vec<String> = annotations(metadata)
        .filter(|(key, value)| {
            key.starts_with(ANNOTATION_PREFIX)
                && !(value.is_empty()
                    || *value == "runtime/default"
                    || value.starts_with("localhost/"))
        })
        .map(|(key, value)| format!("{key}={value:?}"))
        .collect();
    let mut bad_values: Vec<String> = bad_values.into_iter().collect();
    if !bad_annotations.is_empty() {
        bad_annotations.sort();
        setters.push(pluralize("annotation", "annotations", bad_annotations.len()).to_owned());
        bad_values.append(&mut bad_annotations);
    }
    (!setters.is_empty()).then(|| {
        CheckResult::new(
            pluralize(
                "forbidden AppArmor profile",
                "forbidden AppArmor profiles",
                bad_values.len(),
            ),
            format!(
                "{} must not set AppArmor profile type to {}",
                setters.join(" and "),
                join_quote(&bad_values)
            ),
        )
    })
}

fn annotations(metadata: &Value) -> impl Iterator<Item = (&str, &str)> {
    metadata["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| (key.as_str(), str_of(value)))
}

/// SELinux: no custom user or role, and only the container types.
pub(super) fn se_linux_options_1_0(_: &Value, spec: &Value) -> Option<CheckResult> {
    se_linux_options(
        spec,
        &["", "container_t", "container_init_t", "container_kvm_t"],
    )
}

/// 1.31 allows `container_engine_t` too (for container engines in pods).
pub(super) fn se_linux_options_1_31(_: &Value, spec: &Value) -> Option<CheckResult> {
    se_linux_options(
        spec,
        &[
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ],
    )
}

fn se_linux_options(spec: &Value, allowed_types: &[&str]) -> Option<CheckResult> {
    let mut bad_types = BTreeSet::new();
    let mut set_user = false;
    let mut set_role = false;
    let mut valid = |options: &Value| {
        if !is_set(options) {
            return true;
        }
        let mut valid = true;
        let selinux_type = str_of(&options["type"]);
        if !allowed_types.contains(&selinux_type) {
            valid = false;
            bad_types.insert(selinux_type.to_owned());
        }
        if !str_of(&options["user"]).is_empty() {
            valid = false;
            set_user = true;
        }
        if !str_of(&options["role"]).is_empty() {
            valid = false;
            set_role = true;
        }
        valid
    };

    let mut setters = Vec::new();
    if !valid(&spec["securityContext"]["seLinuxOptions"]) {
        setters.push("pod".to_owned());
    }
    let bad_containers: Vec<String> = containers(spec)
        .filter(|c| !valid(&c["securityContext"]["seLinuxOptions"]))
        .map(name)
        .collect();
    if !bad_containers.is_empty() {
        setters.push(containers_phrase(&bad_containers));
    }
    if setters.is_empty() {
        return None;
    }
    let mut bad_data = Vec::new();
    if !bad_types.is_empty() {
        bad_data.push(format!(
            "{} {}",
            pluralize("type", "types", bad_types.len()),
            join_quote(&bad_types)
        ));
    }
    if set_user {
        bad_data.push("user may not be set".to_owned());
    }
    if set_role {
        bad_data.push("role may not be set".to_owned());
    }
    Some(CheckResult::new(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            bad_data.join("; ")
        ),
    ))
}

/// `/proc` keeps its default masks: `procMount` unset or `Default`.
pub(super) fn proc_mount(_: &Value, spec: &Value) -> Option<CheckResult> {
    let mut bad_containers = Vec::new();
    let mut bad_types = BTreeSet::new();
    for c in containers(spec) {
        let proc_mount = &c["securityContext"]["procMount"];
        if is_set(proc_mount) && str_of(proc_mount) != "Default" {
            bad_containers.push(name(c));
            bad_types.insert(str_of(proc_mount));
        }
    }
    (!bad_containers.is_empty()).then(|| {
        CheckResult::new(
            "procMount",
            format!(
                "{} must not set securityContext.procMount to {}",
                containers_phrase(&bad_containers),
                join_quote(&bad_types)
            ),
        )
    })
}

/// Since 1.35 baseline allows any `procMount` in a user namespace
/// (restricted still does not).
pub(super) fn proc_mount_unless_user_namespace(
    metadata: &Value,
    spec: &Value,
) -> Option<CheckResult> {
    if in_user_namespace(spec) {
        return None;
    }
    proc_mount(metadata, spec)
}

/// Seccomp profile types baseline and restricted allow when set.
pub(super) fn valid_seccomp_type(profile_type: &str) -> bool {
    matches!(profile_type, "RuntimeDefault" | "Localhost")
}

/// Before 1.19 seccomp was set by annotations: `runtime/default`,
/// `docker/default` or `localhost/*` only.
pub(super) fn seccomp_annotations(metadata: &Value, spec: &Value) -> Option<CheckResult> {
    const POD_KEY: &str = "seccomp.security.alpha.kubernetes.io/pod";
    const CONTAINER_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";
    let valid =
        |v: &str| v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/");
    let annotations = &metadata["annotations"];
    let mut forbidden = BTreeSet::new();
    let mut check = |key: String| {
        if let Some(value) = annotations.get(&key) {
            let value = str_of(value);
            if !valid(value) {
                forbidden.insert(format!("{key}={value:?}"));
            }
        }
    };
    check(POD_KEY.to_owned());
    for c in containers(spec) {
        check(format!("{CONTAINER_PREFIX}{}", name(c)));
    }
    (!forbidden.is_empty()).then(|| {
        CheckResult::new(
            "seccompProfile",
            format!(
                "forbidden {} {}",
                pluralize("annotation", "annotations", forbidden.len()),
                forbidden.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// Since 1.19: `seccompProfile.type`, where set, only `RuntimeDefault`
/// or `Localhost` (not `Unconfined`).
pub(super) fn seccomp_profile(_: &Value, spec: &Value) -> Option<CheckResult> {
    let mut setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    let pod_profile = &spec["securityContext"]["seccompProfile"];
    if is_set(pod_profile) && !valid_seccomp_type(str_of(&pod_profile["type"])) {
        setters.push("pod".to_owned());
        bad_values.insert(str_of(&pod_profile["type"]));
    }
    let mut bad_containers = Vec::new();
    for c in containers(spec) {
        let profile = &c["securityContext"]["seccompProfile"];
        if is_set(profile) && !valid_seccomp_type(str_of(&profile["type"])) {
            bad_containers.push(name(c));
            bad_values.insert(str_of(&profile["type"]));
        }
    }
    if !bad_containers.is_empty() {
        setters.push(containers_phrase(&bad_containers));
    }
    (!setters.is_empty()).then(|| seccomp_violation(&setters, &bad_values))
}

pub(super) fn seccomp_violation(setters: &[String], bad_values: &BTreeSet<&str>) -> CheckResult {
    CheckResult::new(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters.join(" and "),
            join_quote(bad_values)
        ),
    )
}

/// The sysctls that are namespaced and isolated from other pods, as each
/// version widened the list.
const SAFE_SYSCTLS_1_0: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
];
const SAFE_SYSCTLS_1_27: &[&str] = &["net.ipv4.ip_local_reserved_ports"];
const SAFE_SYSCTLS_1_29: &[&str] = &[
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const SAFE_SYSCTLS_1_32: &[&str] = &["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"];
const SAFE_SYSCTLS_1_37: &[&str] = &[
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
];

pub(super) fn sysctls_1_0(_: &Value, spec: &Value) -> Option<CheckResult> {
    sysctls(spec, &[SAFE_SYSCTLS_1_0])
}

pub(super) fn sysctls_1_27(_: &Value, spec: &Value) -> Option<CheckResult> {
    sysctls(spec, &[SAFE_SYSCTLS_1_0, SAFE_SYSCTLS_1_27])
}

pub(super) fn sysctls_1_29(_: &Value, spec: &Value) -> Option<CheckResult> {
    sysctls(
        spec,
        &[SAFE_SYSCTLS_1_0, SAFE_SYSCTLS_1_27, SAFE_SYSCTLS_1_29],
    )
}

pub(super) fn sysctls_1_32(_: &Value, spec: &Value) -> Option<CheckResult> {
    sysctls(
        spec,
        &[
            SAFE_SYSCTLS_1_0,
            SAFE_SYSCTLS_1_27,
            SAFE_SYSCTLS_1_29,
            SAFE_SYSCTLS_1_32,
        ],
    )
}

pub(super) fn sysctls_1_37(_: &Value, spec: &Value) -> Option<CheckResult> {
    sysctls(
        spec,
        &[
            SAFE_SYSCTLS_1_0,
            SAFE_SYSCTLS_1_27,
            SAFE_SYSCTLS_1_29,
            SAFE_SYSCTLS_1_32,
            SAFE_SYSCTLS_1_37,
        ],
    )
}

fn sysctls(spec: &Value, safe: &[&[&str]]) -> Option<CheckResult> {
    let forbidden: Vec<&str> = spec["securityContext"]["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|sysctl| str_of(&sysctl["name"]))
        .filter(|name| !safe.iter().any(|set| set.contains(name)))
        .collect();
    (!forbidden.is_empty()).then(|| CheckResult::new("forbidden sysctls", forbidden.join(", ")))
}
