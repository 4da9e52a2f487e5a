//! The restricted checks: current pod hardening best practice, on top of
//! baseline (Kubernetes' `policy/check_*.go`, restricted level). Each
//! returns `None` when the pod is allowed.

use std::collections::BTreeSet;

use serde_json::Value;

use super::baseline::{seccomp_violation, valid_seccomp_type, volumes};
use super::{
    containers, containers_phrase, in_user_namespace, is_set, is_windows, join_quote, name,
    pluralize, str_of, CheckResult,
};

/// Every container must set `allowPrivilegeEscalation: false` (unset
/// means true: setuid binaries could gain privileges).
pub(super) fn allow_privilege_escalation(_: &Value, spec: &Value) -> Option<CheckResult> {
    let bad: Vec<String> = containers(spec)
        .filter(|c| c["securityContext"]["allowPrivilegeEscalation"].as_bool() != Some(false))
        .map(name)
        .collect();
    (!bad.is_empty()).then(|| {
        CheckResult::new(
            "allowPrivilegeEscalation != false",
            format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                containers_phrase(&bad)
            ),
        )
    })
}

/// Since 1.25 Windows pods (`spec.os.name: windows`) are exempt: the
/// field does not exist there.
pub(super) fn allow_privilege_escalation_unless_windows(
    metadata: &Value,
    spec: &Value,
) -> Option<CheckResult> {
    if is_windows(spec) {
        return None;
    }
    allow_privilege_escalation(metadata, spec)
}

/// Containers drop `ALL` capabilities and add back only
/// `NET_BIND_SERVICE`.
pub(super) fn capabilities(_: &Value, spec: &Value) -> Option<CheckResult> {
    let mut missing_drop_all = Vec::new();
    let mut adding_forbidden = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in containers(spec) {
        let capabilities = &c["securityContext"]["capabilities"];
        if !is_set(capabilities) {
            missing_drop_all.push(name(c));
            continue;
        }
        let list = |field: &str| {
            capabilities[field]
                .as_array()
                .into_iter()
                .flatten()
                .map(str_of)
                .collect::<Vec<_>>()
        };
        if !list("drop").contains(&"ALL") {
            missing_drop_all.push(name(c));
        }
        let mut adds_forbidden = false;
        for capability in list("add") {
            if capability != "NET_BIND_SERVICE" {
                adds_forbidden = true;
                forbidden.insert(capability);
            }
        }
        if adds_forbidden {
            adding_forbidden.push(name(c));
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            r#"{} must set securityContext.capabilities.drop=["ALL"]"#,
            containers_phrase(&missing_drop_all)
        ));
    }
    if !adding_forbidden.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding_forbidden),
            join_quote(&forbidden)
        ));
    }
    (!details.is_empty()).then(|| CheckResult::new("unrestricted capabilities", details.join("; ")))
}

/// Since 1.25 Windows pods are exempt (no Linux capabilities there).
pub(super) fn capabilities_unless_windows(metadata: &Value, spec: &Value) -> Option<CheckResult> {
    if is_windows(spec) {
        return None;
    }
    capabilities(metadata, spec)
}

/// The inline volume sources restricted allows: those that expose no
/// node or network storage directly.
const ALLOWED_VOLUME_SOURCES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The other volume sources, in the order Kubernetes looks for them to
/// name a volume's type.
const RESTRICTED_VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

/// Only the allowed volume sources.
pub(super) fn volume_types(_: &Value, spec: &Value) -> Option<CheckResult> {
    let mut bad_volumes = Vec::new();
    let mut bad_types = BTreeSet::new();
    for volume in volumes(spec) {
        if ALLOWED_VOLUME_SOURCES
            .iter()
            .any(|source| is_set(&volume[*source]))
        {
            continue;
        }
        bad_volumes.push(name(volume));
        let source = RESTRICTED_VOLUME_SOURCES
            .iter()
            .find(|source| is_set(&volume[**source]))
            .copied()
            .unwrap_or("unknown");
        bad_types.insert(source);
    }
    (!bad_volumes.is_empty()).then(|| {
        CheckResult::new(
            "restricted volume types",
            format!(
                "{} {} {} {} {}",
                pluralize("volume", "volumes", bad_volumes.len()),
                join_quote(&bad_volumes),
                pluralize("uses", "use", bad_volumes.len()),
                pluralize(
                    "restricted volume type",
                    "restricted volume types",
                    bad_types.len()
                ),
                join_quote(&bad_types)
            ),
        )
    })
}

/// `runAsNonRoot: true` on the pod, or on every container; `false`
/// anywhere is forbidden.
pub(super) fn run_as_non_root(_: &Value, spec: &Value) -> Option<CheckResult> {
    let mut setters = Vec::new();
    let mut pod_run_as_non_root = false;
    match spec["securityContext"]["runAsNonRoot"].as_bool() {
        Some(false) => setters.push("pod".to_owned()),
        Some(true) => pod_run_as_non_root = true,
        None => {}
    }
    let mut explicitly_bad = Vec::new();
    let mut implicitly_bad = Vec::new();
    for c in containers(spec) {
        match c["securityContext"]["runAsNonRoot"].as_bool() {
            Some(false) => explicitly_bad.push(name(c)),
            Some(true) => {}
            None if !pod_run_as_non_root => implicitly_bad.push(name(c)),
            None => {}
        }
    }
    if !explicitly_bad.is_empty() {
        setters.push(containers_phrase(&explicitly_bad));
    }
    if !setters.is_empty() {
        return Some(CheckResult::new(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        ));
    }
    (!implicitly_bad.is_empty()).then(|| {
        CheckResult::new(
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&implicitly_bad)
            ),
        )
    })
}

/// Since 1.35 pods in a user namespace (`hostUsers: false`) may run as
/// root: it is not root on the node.
pub(super) fn run_as_non_root_unless_user_namespace(
    metadata: &Value,
    spec: &Value,
) -> Option<CheckResult> {
    if in_user_namespace(spec) {
        return None;
    }
    run_as_non_root(metadata, spec)
}

/// Since 1.23: `runAsUser: 0` nowhere.
pub(super) fn run_as_user(_: &Value, spec: &Value) -> Option<CheckResult> {
    let is_root = |security_context: &Value| security_context["runAsUser"].as_i64() == Some(0);
    let mut setters = Vec::new();
    if is_root(&spec["securityContext"]) {
        setters.push("pod".to_owned());
    }
    let bad: Vec<String> = containers(spec)
        .filter(|c| is_root(&c["securityContext"]))
        .map(name)
        .collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    (!setters.is_empty()).then(|| {
        CheckResult::new(
            "runAsUser=0",
            format!("{} must not set runAsUser=0", setters.join(" and ")),
        )
    })
}

/// Since 1.35 relaxed for user namespaces, like `runAsNonRoot`.
pub(super) fn run_as_user_unless_user_namespace(
    metadata: &Value,
    spec: &Value,
) -> Option<CheckResult> {
    if in_user_namespace(spec) {
        return None;
    }
    run_as_user(metadata, spec)
}

/// Since 1.19: a seccomp profile is required, `RuntimeDefault` or
/// `Localhost`, on the pod or on every container.
pub(super) fn seccomp_profile(_: &Value, spec: &Value) -> Option<CheckResult> {
    let mut setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    let mut pod_seccomp_set = false;
    let pod_profile = &spec["securityContext"]["seccompProfile"];
    if is_set(pod_profile) {
        let profile_type = str_of(&pod_profile["type"]);
        if valid_seccomp_type(profile_type) {
            pod_seccomp_set = true;
        } else {
            setters.push("pod".to_owned());
            bad_values.insert(profile_type);
        }
    }
    let mut explicitly_bad = Vec::new();
    let mut implicitly_bad = Vec::new();
    for c in containers(spec) {
        let profile = &c["securityContext"]["seccompProfile"];
        if is_set(profile) {
            let profile_type = str_of(&profile["type"]);
            if !valid_seccomp_type(profile_type) {
                explicitly_bad.push(name(c));
                bad_values.insert(profile_type);
            }
        } else if !pod_seccomp_set {
            implicitly_bad.push(name(c));
        }
    }
    if !explicitly_bad.is_empty() {
        setters.push(containers_phrase(&explicitly_bad));
    }
    if !setters.is_empty() {
        return Some(seccomp_violation(&setters, &bad_values));
    }
    (!implicitly_bad.is_empty()).then(|| {
        CheckResult::new(
            "seccompProfile",
            format!(
                r#"pod or {} must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#,
                containers_phrase(&implicitly_bad)
            ),
        )
    })
}

/// Since 1.25 Windows pods are exempt (no seccomp there).
pub(super) fn seccomp_profile_unless_windows(
    metadata: &Value,
    spec: &Value,
) -> Option<CheckResult> {
    if is_windows(spec) {
        return None;
    }
    seccomp_profile(metadata, spec)
}
