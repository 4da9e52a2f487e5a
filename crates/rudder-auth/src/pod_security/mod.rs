//! The Pod Security Standards, as Kubernetes' built-in PodSecurity
//! admission (`k8s.io/pod-security-admission`) defines and words them.
//!
//! A namespace chooses, by labels, a level (`privileged`, `baseline`,
//! `restricted`) and a policy version per mode ([`NamespacePolicy`]); a
//! pod is checked against a level at a version ([`Evaluator::check_pod`])
//! and the violations become Kubernetes' messages ([`forbidden_message`],
//! [`warning_message`]). Pods are enforced; the pod templates of workload
//! resources ([`pod_template`]) only warn and audit.
//!
//! Every check keeps its upstream version history (a policy version `v1.N`
//! runs each check as it was in Kubernetes 1.N), so pinned namespaces keep
//! their rules. `latest` means the newest rules this library knows
//! ([`NEWEST_POLICY_MINOR`]), or those of the Kubernetes version the
//! API server emulates ([`Evaluator::emulating`]), as upstream does.
//!
//! Objects are JSON (`serde_json::Value`): a field that is absent or null
//! counts as unset, as a nil pointer does in Kubernetes' typed structs.

mod admission;
mod baseline;
mod policy;
mod restricted;

use std::collections::BTreeSet;

use serde_json::Value;

pub use admission::{
    pod_template, pods_in_namespace_warnings, request_is_checked, update_needs_check,
};
pub use policy::{
    LabelError, Level, LevelVersion, NamespacePolicy, Version, AUDIT_LABEL, AUDIT_VERSION_LABEL,
    AUDIT_VIOLATIONS_ANNOTATION, ENFORCE_LABEL, ENFORCE_POLICY_ANNOTATION, ENFORCE_VERSION_LABEL,
    EXEMPT_ANNOTATION, LABEL_PREFIX, WARN_LABEL, WARN_VERSION_LABEL,
};

/// One violation: a short reason (`host namespaces`) and what exactly is
/// wrong (`hostNetwork=true`), which may be empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub forbidden_reason: String,
    pub forbidden_detail: String,
}

impl CheckResult {
    fn new(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        CheckResult {
            forbidden_reason: reason.into(),
            forbidden_detail: detail.into(),
        }
    }
}

/// The newest policy version any check below has a rule for (the `v1.37`
/// sysctls): `latest` and any newer `v1.N` evaluate as this one.
pub const NEWEST_POLICY_MINOR: u32 = 37;

/// A check: `None` allows the pod.
type CheckFn = fn(&Value, &Value) -> Option<CheckResult>;

/// One revision of a check, in force from `since` (a 1.x minor) until the
/// next revision.
struct Revision {
    since: u32,
    check: CheckFn,
    /// Baseline checks this restricted revision replaces with a stricter
    /// version of the same rule.
    overrides: &'static [&'static str],
}

struct Check {
    id: &'static str,
    level: Level,
    revisions: &'static [Revision],
}

const fn rev(since: u32, check: CheckFn) -> Revision {
    Revision {
        since,
        check,
        overrides: &[],
    }
}

const fn rev_overriding(
    since: u32,
    check: CheckFn,
    overrides: &'static [&'static str],
) -> Revision {
    Revision {
        since,
        check,
        overrides,
    }
}

/// All checks, baseline ones first, each level sorted by ID (byte order):
/// Kubernetes evaluates them in this order, which is the order of the
/// reasons in its messages.
static CHECKS: &[Check] = &[
    Check {
        id: "appArmorProfile",
        level: Level::Baseline,
        revisions: &[rev(0, baseline::app_armor_profile)],
    },
    Check {
        id: "capabilities_baseline",
        level: Level::Baseline,
        revisions: &[rev(0, baseline::capabilities)],
    },
    Check {
        id: "hostNamespaces",
        level: Level::Baseline,
        revisions: &[rev(0, baseline::host_namespaces)],
    },
    Check {
        id: "hostPathVolumes",
        level: Level::Baseline,
        revisions: &[rev(0, baseline::host_path_volumes)],
    },
    Check {
        id: "hostPorts",
        level: Level::Baseline,
        revisions: &[rev(0, baseline::host_ports)],
    },
    Check {
        id: "hostProbesAndHostLifecycle",
        level: Level::Baseline,
        revisions: &[rev(34, baseline::host_probes_and_lifecycle)],
    },
    Check {
        id: "privileged",
        level: Level::Baseline,
        revisions: &[rev(0, baseline::privileged)],
    },
    Check {
        id: "procMount",
        level: Level::Baseline,
        revisions: &[
            rev(0, baseline::proc_mount),
            rev(35, baseline::proc_mount_unless_user_namespace),
        ],
    },
    Check {
        id: "seLinuxOptions",
        level: Level::Baseline,
        revisions: &[
            rev(0, baseline::se_linux_options_1_0),
            rev(31, baseline::se_linux_options_1_31),
        ],
    },
    Check {
        id: "seccompProfile_baseline",
        level: Level::Baseline,
        revisions: &[
            rev(0, baseline::seccomp_annotations),
            rev(19, baseline::seccomp_profile),
        ],
    },
    Check {
        id: "sysctls",
        level: Level::Baseline,
        revisions: &[
            rev(0, baseline::sysctls_1_0),
            rev(27, baseline::sysctls_1_27),
            rev(29, baseline::sysctls_1_29),
            rev(32, baseline::sysctls_1_32),
            rev(37, baseline::sysctls_1_37),
        ],
    },
    Check {
        id: "windowsHostProcess",
        level: Level::Baseline,
        revisions: &[rev(0, baseline::windows_host_process)],
    },
    Check {
        id: "allowPrivilegeEscalation",
        level: Level::Restricted,
        revisions: &[
            rev(8, restricted::allow_privilege_escalation),
            rev(25, restricted::allow_privilege_escalation_unless_windows),
        ],
    },
    Check {
        id: "capabilities_restricted",
        level: Level::Restricted,
        revisions: &[
            rev_overriding(22, restricted::capabilities, &["capabilities_baseline"]),
            rev_overriding(
                25,
                restricted::capabilities_unless_windows,
                &["capabilities_baseline"],
            ),
        ],
    },
    Check {
        id: "procMount_restricted",
        level: Level::Restricted,
        revisions: &[rev_overriding(35, baseline::proc_mount, &["procMount"])],
    },
    Check {
        id: "restrictedVolumes",
        level: Level::Restricted,
        revisions: &[rev_overriding(
            0,
            restricted::volume_types,
            &["hostPathVolumes"],
        )],
    },
    Check {
        id: "runAsNonRoot",
        level: Level::Restricted,
        revisions: &[
            rev(0, restricted::run_as_non_root),
            rev(35, restricted::run_as_non_root_unless_user_namespace),
        ],
    },
    Check {
        id: "runAsUser",
        level: Level::Restricted,
        revisions: &[
            rev(23, restricted::run_as_user),
            rev(35, restricted::run_as_user_unless_user_namespace),
        ],
    },
    Check {
        id: "seccompProfile_restricted",
        level: Level::Restricted,
        revisions: &[
            rev_overriding(
                19,
                restricted::seccomp_profile,
                &["seccompProfile_baseline"],
            ),
            rev_overriding(
                25,
                restricted::seccomp_profile_unless_windows,
                &["seccompProfile_baseline"],
            ),
        ],
    },
];

/// Checks pods against a level and version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evaluator {
    max_minor: u32,
}

impl Default for Evaluator {
    fn default() -> Self {
        Evaluator::newest()
    }
}

impl Evaluator {
    /// `latest` is the newest rules known here.
    pub const fn newest() -> Self {
        Evaluator {
            max_minor: NEWEST_POLICY_MINOR,
        }
    }

    /// `latest` (and newer versions) are the rules of Kubernetes 1.`minor`,
    /// as for an API server emulating that version: an API server saying
    /// it is 1.32 checks `latest` by 1.32's rules.
    pub fn emulating(minor: u32) -> Self {
        Evaluator {
            max_minor: minor.min(NEWEST_POLICY_MINOR),
        }
    }

    /// The violations of `pod_spec` (with `pod_metadata`, for the
    /// annotations some checks read) at `lv`, in Kubernetes' order; empty
    /// when the pod is allowed.
    pub fn check_pod(
        &self,
        lv: &LevelVersion,
        pod_metadata: &Value,
        pod_spec: &Value,
    ) -> Vec<CheckResult> {
        if lv.level == Level::Privileged {
            return Vec::new();
        }
        let minor = match lv.version {
            Version::Latest => self.max_minor,
            Version::V(minor) => minor.min(self.max_minor),
        };
        let in_force = |check: &'static Check| {
            check
                .revisions
                .iter()
                .rev()
                .find(|revision| revision.since <= minor)
        };
        let overridden: BTreeSet<&str> = if lv.level == Level::Restricted {
            CHECKS
                .iter()
                .filter(|check| check.level == Level::Restricted)
                .filter_map(in_force)
                .flat_map(|revision| revision.overrides.iter().copied())
                .collect()
        } else {
            BTreeSet::new()
        };
        CHECKS
            .iter()
            .filter(|check| check.level <= lv.level && !overridden.contains(check.id))
            .filter_map(in_force)
            .filter_map(|revision| (revision.check)(pod_metadata, pod_spec))
            .collect()
    }
}

/// [`Evaluator::check_pod`] with the newest rules.
pub fn check_pod(lv: &LevelVersion, pod_metadata: &Value, pod_spec: &Value) -> Vec<CheckResult> {
    Evaluator::newest().check_pod(lv, pod_metadata, pod_spec)
}

/// The reasons with their details in parentheses:
/// `host namespaces (hostNetwork=true), privileged (container "c" must not
/// set securityContext.privileged=true)`.
pub fn forbidden_detail(results: &[CheckResult]) -> String {
    results
        .iter()
        .map(|result| {
            let reason = reason_or_unknown(result);
            if result.forbidden_detail.is_empty() {
                reason.to_owned()
            } else {
                format!("{reason} ({})", result.forbidden_detail)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reasons alone (`host namespaces, privileged`), as the warnings
/// about existing pods on a namespace update give them.
pub fn forbidden_reasons(results: &[CheckResult]) -> String {
    results
        .iter()
        .map(reason_or_unknown)
        .collect::<Vec<_>>()
        .join(", ")
}

fn reason_or_unknown(result: &CheckResult) -> &str {
    if result.forbidden_reason.is_empty() {
        "unknown forbidden reason"
    } else {
        &result.forbidden_reason
    }
}

/// The enforce rejection: `violates PodSecurity "restricted:latest": ...`;
/// the API server prefixes `pods "name" is forbidden: ` and answers 403.
pub fn forbidden_message(results: &[CheckResult], lv: &LevelVersion) -> String {
    format!(
        "violates PodSecurity {:?}: {}",
        lv.to_string(),
        forbidden_detail(results)
    )
}

/// The warn-mode warning and the audit-mode annotation value:
/// `would violate PodSecurity "baseline:latest": host namespaces (hostNetwork=true)`.
pub fn warning_message(results: &[CheckResult], lv: &LevelVersion) -> String {
    format!(
        "would violate PodSecurity {:?}: {}",
        lv.to_string(),
        forbidden_detail(results)
    )
}

// Helpers shared by the checks, after Kubernetes' `policy/helpers.go`.

static NULL: Value = Value::Null;

/// Every container of the pod (init containers, containers, ephemeral
/// containers), in that order.
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |field| spec[field].as_array().into_iter().flatten())
}

fn name(object: &Value) -> String {
    object["name"].as_str().unwrap_or_default().to_owned()
}

fn is_true(value: &Value) -> bool {
    value.as_bool() == Some(true)
}

fn is_set(value: &Value) -> bool {
    !value.is_null()
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// `"a", "b"`: Kubernetes quotes names without escaping them.
fn join_quote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let items: Vec<String> = items
        .into_iter()
        .map(|item| format!("\"{}\"", item.as_ref()))
        .collect();
    items.join(", ")
}

fn pluralize(singular: &'static str, plural: &'static str, count: usize) -> &'static str {
    if count == 1 {
        singular
    } else {
        plural
    }
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

/// Pods in a user namespace (`hostUsers: false`) are relaxed from some
/// checks since 1.35: root in them is not root on the node.
fn in_user_namespace(spec: &Value) -> bool {
    spec["hostUsers"].as_bool() == Some(false)
}

fn is_windows(spec: &Value) -> bool {
    spec["os"]["name"].as_str() == Some("windows")
}

#[cfg(test)]
mod tests;
