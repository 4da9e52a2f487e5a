//! Levels, policy versions and a namespace's policy as its
//! `pod-security.kubernetes.io/*` labels state it (Kubernetes'
//! `api.PolicyToEvaluate`).

use std::fmt;

use serde_json::Value;

/// The three Pod Security Standards, from the least to the most strict
/// (so `Ord` compares strictness, like Kubernetes' `CompareLevels`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }

    /// Parses a label value; the error is Kubernetes' field error detail.
    pub fn parse(value: &str) -> Result<Level, &'static str> {
        match value {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err("must be one of privileged, baseline, restricted"),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy version: `latest`, or the rules as of Kubernetes `v1.N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    Latest,
    /// The minor version of Kubernetes 1.x.
    V(u32),
}

impl Version {
    /// Parses `latest` or `v1.N` (no leading zeros), as Kubernetes does.
    /// A minor too large for `u32` saturates: it means "newer than any
    /// rule", which is what Kubernetes makes of it too.
    pub fn parse(value: &str) -> Result<Version, &'static str> {
        const DETAIL: &str = r#"must be "latest" or "v1.x""#;
        if value == "latest" {
            return Ok(Version::Latest);
        }
        let minor = value.strip_prefix("v1.").ok_or(DETAIL)?;
        let digits_only = !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit());
        if !digits_only || (minor.len() > 1 && minor.starts_with('0')) {
            return Err(DETAIL);
        }
        Ok(Version::V(minor.parse().unwrap_or(u32::MAX)))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::V(minor) => write!(f, "v1.{minor}"),
        }
    }
}

/// A level at a policy version; displays as `restricted:latest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LevelVersion {
    pub level: Level,
    pub version: Version,
}

impl LevelVersion {
    pub const PRIVILEGED_LATEST: LevelVersion = LevelVersion {
        level: Level::Privileged,
        version: Version::Latest,
    };

    pub fn new(level: Level, version: Version) -> Self {
        LevelVersion { level, version }
    }
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.version)
    }
}

pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";
pub const AUDIT_LABEL: &str = "pod-security.kubernetes.io/audit";
pub const AUDIT_VERSION_LABEL: &str = "pod-security.kubernetes.io/audit-version";
pub const WARN_LABEL: &str = "pod-security.kubernetes.io/warn";
pub const WARN_VERSION_LABEL: &str = "pod-security.kubernetes.io/warn-version";

/// The audit annotations Pod Security adds to the audit event
/// (`pod-security.kubernetes.io/enforce-policy`, `.../audit-violations`,
/// `.../exempt`).
pub const ENFORCE_POLICY_ANNOTATION: &str = "pod-security.kubernetes.io/enforce-policy";
pub const AUDIT_VIOLATIONS_ANNOTATION: &str = "pod-security.kubernetes.io/audit-violations";
pub const EXEMPT_ANNOTATION: &str = "pod-security.kubernetes.io/exempt";

/// An invalid Pod Security label on a namespace: Kubernetes rejects the
/// namespace with `field.Invalid` for each, so the namespace answers
/// `Namespace "n" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]:
/// Invalid value: "strict": must be one of privileged, baseline, restricted`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: Invalid value: {value:?}: {detail}")]
pub struct LabelError {
    /// `metadata.labels[pod-security.kubernetes.io/enforce]`.
    pub field: String,
    pub value: String,
    pub detail: &'static str,
}

impl LabelError {
    fn new(label: &str, value: &str, detail: &'static str) -> Self {
        LabelError {
            field: format!("metadata.labels[{label}]"),
            value: value.to_owned(),
            detail,
        }
    }
}

/// What a namespace asks of its pods, per mode: `enforce` rejects pods,
/// `audit` annotates the audit event, `warn` returns a warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub enforce: LevelVersion,
    pub audit: LevelVersion,
    pub warn: LevelVersion,
}

impl Default for NamespacePolicy {
    /// The defaults of the admission configuration: privileged:latest in
    /// every mode.
    fn default() -> Self {
        NamespacePolicy {
            enforce: LevelVersion::PRIVILEGED_LATEST,
            audit: LevelVersion::PRIVILEGED_LATEST,
            warn: LevelVersion::PRIVILEGED_LATEST,
        }
    }
}

impl NamespacePolicy {
    /// The policy of a namespace with these labels (`metadata.labels`, a
    /// JSON object, or null), or the label errors that make the namespace
    /// invalid.
    pub fn from_labels(labels: &Value) -> Result<Self, Vec<LabelError>> {
        let (policy, errors) = Self::evaluate_labels(labels, NamespacePolicy::default());
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors)
        }
    }

    /// Kubernetes' `PolicyToEvaluate`: always a policy, even with errors,
    /// since pods of a namespace labelled before Pod Security existed must
    /// still be judged. An invalid level fails closed for `enforce`
    /// (restricted) and open for `audit` and `warn` (privileged); an
    /// invalid version means `latest`. Unset labels take `defaults`, and
    /// an explicitly set enforce level stricter than the warn level raises
    /// `warn` to it, so that users see what enforce would reject.
    pub fn evaluate_labels(labels: &Value, defaults: NamespacePolicy) -> (Self, Vec<LabelError>) {
        let mut policy = defaults;
        let mut errors = Vec::new();
        let label = |key: &str| labels.get(key).and_then(Value::as_str);

        let mut parse_level = |key: &str, invalid: Level, target: &mut Level| -> Option<()> {
            let value = label(key)?;
            match Level::parse(value) {
                Ok(level) => {
                    *target = level;
                    Some(())
                }
                Err(detail) => {
                    errors.push(LabelError::new(key, value, detail));
                    *target = invalid;
                    None
                }
            }
        };
        let has_enforce_level =
            parse_level(ENFORCE_LABEL, Level::Restricted, &mut policy.enforce.level).is_some();
        parse_level(AUDIT_LABEL, Level::Privileged, &mut policy.audit.level);
        parse_level(WARN_LABEL, Level::Privileged, &mut policy.warn.level);

        let mut parse_version = |key: &str, target: &mut Version| {
            if let Some(value) = label(key) {
                *target = Version::parse(value).unwrap_or_else(|detail| {
                    errors.push(LabelError::new(key, value, detail));
                    Version::Latest
                });
            }
        };
        parse_version(ENFORCE_VERSION_LABEL, &mut policy.enforce.version);
        parse_version(AUDIT_VERSION_LABEL, &mut policy.audit.version);
        parse_version(WARN_VERSION_LABEL, &mut policy.warn.version);

        let has_warn_level = label(WARN_LABEL).is_some();
        let has_warn_version = label(WARN_VERSION_LABEL).is_some();
        if !has_warn_level && has_enforce_level && policy.enforce.level > policy.warn.level {
            policy.warn.level = policy.enforce.level;
            if !has_warn_version {
                policy.warn.version = policy.enforce.version;
            }
        }
        // Kubernetes reports errors in label order enforce, enforce-version,
        // audit, audit-version, warn, warn-version.
        errors.sort_by_key(|e| label_order(&e.field));
        (policy, errors)
    }

    /// Every mode privileged: nothing to check.
    pub fn fully_privileged(&self) -> bool {
        [self.enforce, self.audit, self.warn]
            .iter()
            .all(|lv| lv.level == Level::Privileged)
    }

    /// Whether a namespace update from `old` to `self` needs the existing
    /// pods checked against the new enforce level (Kubernetes then warns
    /// about the pods that violate it): only when enforcement got
    /// stricter: not privileged, and a changed version or a stricter level.
    pub fn enforce_tightened_from(&self, old: &NamespacePolicy) -> bool {
        if self.enforce == old.enforce || self.enforce.level == Level::Privileged {
            return false;
        }
        !(self.enforce.version == old.enforce.version && self.enforce.level <= old.enforce.level)
    }
}

fn label_order(field: &str) -> usize {
    [
        ENFORCE_LABEL,
        ENFORCE_VERSION_LABEL,
        AUDIT_LABEL,
        AUDIT_VERSION_LABEL,
        WARN_LABEL,
        WARN_VERSION_LABEL,
    ]
    .iter()
    .position(|label| field == format!("metadata.labels[{label}]"))
    .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lv(level: Level, version: Version) -> LevelVersion {
        LevelVersion::new(level, version)
    }

    #[test]
    fn level_version_display() {
        assert_eq!(
            lv(Level::Restricted, Version::Latest).to_string(),
            "restricted:latest"
        );
        assert_eq!(
            lv(Level::Baseline, Version::V(30)).to_string(),
            "baseline:v1.30"
        );
    }

    #[test]
    fn version_parsing() {
        let cases: &[(&str, Option<Version>)] = &[
            ("latest", Some(Version::Latest)),
            ("v1.0", Some(Version::V(0))),
            ("v1.25", Some(Version::V(25))),
            ("v1.99999999999", Some(Version::V(u32::MAX))),
            ("v1.05", None),
            ("v1.", None),
            ("v2.1", None),
            ("1.25", None),
            ("v1.2a", None),
            ("Latest", None),
            ("", None),
        ];
        for (value, expected) in cases {
            assert_eq!(Version::parse(value).ok(), *expected, "{value}");
        }
    }

    #[test]
    fn labels_to_policy() {
        use Level::*;
        use Version::*;
        let privileged = lv(Privileged, Latest);
        let cases = [
            (json!(null), [privileged, privileged, privileged]),
            (json!({"app": "x"}), [privileged, privileged, privileged]),
            (
                // Warn follows an explicit, stricter enforce level and its version.
                json!({ENFORCE_LABEL: "restricted", ENFORCE_VERSION_LABEL: "v1.30"}),
                [lv(Restricted, V(30)), privileged, lv(Restricted, V(30))],
            ),
            (
                // ... but not the version when warn-version is set.
                json!({ENFORCE_LABEL: "baseline", WARN_VERSION_LABEL: "v1.29"}),
                [lv(Baseline, Latest), privileged, lv(Baseline, V(29))],
            ),
            (
                // An explicit warn level wins.
                json!({ENFORCE_LABEL: "restricted", WARN_LABEL: "baseline", AUDIT_LABEL: "restricted", AUDIT_VERSION_LABEL: "v1.25"}),
                [
                    lv(Restricted, Latest),
                    lv(Restricted, V(25)),
                    lv(Baseline, Latest),
                ],
            ),
            (
                // An enforce version alone does not raise warn.
                json!({ENFORCE_VERSION_LABEL: "v1.28"}),
                [lv(Privileged, V(28)), privileged, privileged],
            ),
        ];
        for (labels, [enforce, audit, warn]) in cases {
            let policy = NamespacePolicy::from_labels(&labels).unwrap();
            assert_eq!(
                policy,
                NamespacePolicy {
                    enforce,
                    audit,
                    warn
                },
                "{labels}"
            );
        }
    }

    #[test]
    fn invalid_labels_are_reported_in_kubernetes_wording_and_fail_safe() {
        let labels = json!({
            WARN_LABEL: "loud",
            ENFORCE_VERSION_LABEL: "1.30",
            ENFORCE_LABEL: "strict",
            AUDIT_LABEL: "nope",
        });
        let messages: Vec<String> = NamespacePolicy::from_labels(&labels)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            messages,
            [
                r#"metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": must be one of privileged, baseline, restricted"#,
                r#"metadata.labels[pod-security.kubernetes.io/enforce-version]: Invalid value: "1.30": must be "latest" or "v1.x""#,
                r#"metadata.labels[pod-security.kubernetes.io/audit]: Invalid value: "nope": must be one of privileged, baseline, restricted"#,
                r#"metadata.labels[pod-security.kubernetes.io/warn]: Invalid value: "loud": must be one of privileged, baseline, restricted"#,
            ]
        );
        let (policy, _) = NamespacePolicy::evaluate_labels(&labels, NamespacePolicy::default());
        assert_eq!(policy.enforce, lv(Level::Restricted, Version::Latest));
        assert_eq!(policy.audit.level, Level::Privileged);
        assert_eq!(policy.warn.level, Level::Privileged);
    }

    #[test]
    fn enforce_tightening() {
        use Level::*;
        use Version::*;
        let policy = |enforce| NamespacePolicy {
            enforce,
            ..NamespacePolicy::default()
        };
        let cases = [
            (lv(Privileged, Latest), lv(Baseline, Latest), true),
            (lv(Baseline, Latest), lv(Restricted, Latest), true),
            (lv(Restricted, Latest), lv(Baseline, Latest), false),
            (lv(Restricted, Latest), lv(Restricted, Latest), false),
            (lv(Restricted, Latest), lv(Privileged, Latest), false),
            (lv(Restricted, Latest), lv(Restricted, V(30)), true),
            (lv(Restricted, V(30)), lv(Baseline, Latest), true),
        ];
        for (old, new, expected) in cases {
            assert_eq!(
                policy(new).enforce_tightened_from(&policy(old)),
                expected,
                "{old} -> {new}"
            );
        }
    }
}
