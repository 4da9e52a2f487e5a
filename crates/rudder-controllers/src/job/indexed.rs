//! Indexed Jobs: completion indexes on pods and the interval sets
//! `status.completedIndexes` is written in ("1,3-5").

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec};

/// Annotation and label with a pod's completion index.
pub const COMPLETION_INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// The variable a container reads its index from.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// A pod's completion index, if it has a valid one.
pub fn completion_index(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX_KEY)?
        .parse::<i32>()
        .ok()
        .filter(|i| *i >= 0)
}

/// Marks a template with its index: annotation, label and hostname.
pub fn set_completion_index(template: &mut PodTemplateSpec, job_name: &str, index: i32) {
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(COMPLETION_INDEX_KEY.into(), index.to_string());
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .entry(COMPLETION_INDEX_KEY.into())
        .or_insert_with(|| index.to_string());
    if let Some(spec) = template.spec.as_mut() {
        spec.hostname = Some(format!("{job_name}-{index}"));
    }
}

/// Gives every container `JOB_COMPLETION_INDEX` from the annotation.
pub fn add_completion_index_env(template: &mut PodTemplateSpec) {
    let Some(spec) = template.spec.as_mut() else {
        return;
    };
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for container in containers {
        let env = container.env.get_or_insert_with(Vec::new);
        if env.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
            continue;
        }
        env.push(EnvVar {
            name: COMPLETION_INDEX_ENV.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX_KEY}']"),
                }),
                ..Default::default()
            }),
        });
    }
}

/// `<job>-<index>-`, shortened like Kubernetes' generated names.
pub fn generate_name_with_index(job_name: &str, index: i32) -> String {
    let suffix = format!("-{index}-");
    // Names are at most 63 characters including the 5 random ones.
    let max_prefix = 58usize.saturating_sub(suffix.len());
    let prefix: String = job_name.chars().take(max_prefix).collect();
    format!("{prefix}{suffix}")
}

/// Sorted, disjoint, non-adjacent inclusive intervals of indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intervals(pub Vec<(i32, i32)>);

impl Intervals {
    /// Reads "1,3-5", keeping only indexes below `completions`; bad
    /// parts are skipped.
    pub fn parse(text: &str, completions: i32) -> Intervals {
        let mut indexes = Vec::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
                None => (part.parse::<i32>(), part.parse::<i32>()),
            };
            let (Ok(first), Ok(last)) = (first, last) else {
                tracing::debug!(part, "ignoring a malformed index interval");
                continue;
            };
            let last = last.min(completions - 1);
            if first < 0 || first > last {
                continue;
            }
            indexes.push((first, last));
        }
        Intervals(Vec::new()).merge(indexes)
    }

    /// Adds sorted or unsorted single indexes.
    pub fn with_indexes(&self, indexes: &[i32]) -> Intervals {
        self.clone()
            .merge(indexes.iter().map(|i| (*i, *i)).collect())
    }

    fn merge(self, mut more: Vec<(i32, i32)>) -> Intervals {
        more.extend(self.0);
        more.sort();
        let mut out: Vec<(i32, i32)> = Vec::new();
        for (first, last) in more {
            match out.last_mut() {
                Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
                _ => out.push((first, last)),
            }
        }
        Intervals(out)
    }

    pub fn has(&self, index: i32) -> bool {
        self.0.iter().any(|(a, b)| *a <= index && index <= *b)
    }

    pub fn total(&self) -> i32 {
        self.0.iter().map(|(a, b)| b - a + 1).sum()
    }
}

impl std::fmt::Display for Intervals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match b - a {
                0 => write!(f, "{a}")?,
                1 => write!(f, "{a},{b}")?,
                _ => write!(f, "{a}-{b}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_merge_and_print_like_kubernetes() {
        let cases: &[(&str, i32, &[i32], &str, i32)] = &[
            ("", 10, &[], "", 0),
            ("", 10, &[3, 1, 4, 5], "1,3-5", 4),
            ("1,3-5", 10, &[2], "1-5", 5),
            ("0,1", 10, &[], "0,1", 2),
            ("0-2,7-9", 8, &[5], "0-2,5,7", 5),
            ("x,2", 10, &[], "2", 1),
        ];
        for (text, completions, add, want, total) in cases {
            let got = Intervals::parse(text, *completions).with_indexes(add);
            assert_eq!(got.to_string(), *want, "{text} + {add:?}");
            assert_eq!(got.total(), *total);
        }
        let i = Intervals::parse("1,3-5", 10);
        assert!(i.has(4) && !i.has(2) && !i.has(6));
    }

    #[test]
    fn indexed_names_stay_short() {
        assert_eq!(generate_name_with_index("work", 3), "work-3-");
        let long = "a".repeat(70);
        assert!(generate_name_with_index(&long, 12).len() <= 58);
    }
}
